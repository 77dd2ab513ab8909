"""Capture benchmarks (issue 4), each side by side with its baseline in one run:

1. Generation wall time with fingerprint capture against without, on the built-in model and on
   a config-built model of GPT-2-small shape (12 layers, 12 heads, 768 wide), on CPU.
   Goal: at most 10% overhead.
2. Full capture of 512 generated tokens of the built-in model: peak memory against the
   attention it captured, file size against the seed's JSON and gzipped JSON, and write and
   read speed.
3. With a CUDA GPU: capture overhead on the device and bytes moved to the host per step.

Run: ``.venv/bin/python benches/bench_capture.py [--quick]``.
"""

from __future__ import annotations

import argparse
import gzip
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import attnfast
from attnfast import CaptureFile
from attnfast.models import ByteTokenizer, load_builtin
from timing import best_time

PROMPT = (
    "Please analyze the following data. First, consider the primary factors: X, Y, and Z. "
    "These are critical to understanding the outcome. By the way, it's a nice day today. "
    "Secondary factors include A and B. Finally, summarize your findings."
)


def overhead(name: str, model: Any, ids: torch.Tensor, new: int, repeats: int, **gen: Any) -> None:
    def plain() -> None:
        with torch.no_grad():
            model.generate(ids, max_new_tokens=new, **gen)

    def captured() -> None:
        with attnfast.capture(model, sink=lambda records: None), torch.no_grad():
            model.generate(ids, max_new_tokens=new, **gen)

    plain()  # warm up
    captured()
    # Runs alternate, so the machine's drift (this VM's speed wanders by 20% over minutes)
    # hits both sides alike. The overhead is the median of the pairs' ratios; the times are
    # the best of each side.
    base, cap, ratios = [], [], []
    for _ in range(repeats):
        base.append(best_time(plain, 1))
        cap.append(best_time(captured, 1))
        ratios.append(cap[-1] / base[-1])
    median = statistics.median(ratios)
    print(
        f"{name}: {new} tokens, without capture {min(base):.3f} s ({new / min(base):.0f} "
        f"tok/s), with fingerprint capture {min(cap):.3f} s: overhead {100 * (median - 1):+.1f}% "
        f"(median of {repeats} pairs; best against best {100 * (min(cap) / min(base) - 1):+.1f}%)"
    )


def bench_overhead(quick: bool) -> None:
    torch.set_num_threads(os.cpu_count() or 1)
    model = load_builtin()
    ids = torch.tensor([ByteTokenizer().encode(PROMPT)])
    overhead(
        "built-in model (4 layers, d=64, GQA)", model, ids, 64 if quick else 256, 5 if quick else 41
    )
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(attn_implementation="sdpa")).eval()
    assert gpt2.config._attn_implementation == "sdpa"
    ids = torch.randint(0, 50000, (1, 128), generator=torch.Generator().manual_seed(0))
    overhead(
        "GPT-2-small shape, SDPA, 128-token prompt",
        gpt2,
        ids,
        16 if quick else 64,
        2 if quick else 4,
        do_sample=False,
        pad_token_id=0,
        attention_mask=torch.ones_like(ids),
    )


def peak_rss_reset() -> None:
    with open("/proc/self/clear_refs", "w") as f:  # resets VmHWM (Linux)
        f.write("5")


def peak_rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def current_rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def bench_full(quick: bool) -> None:
    new = 128 if quick else 512
    model = load_builtin()
    ids = torch.tensor([ByteTokenizer().encode(PROMPT)])
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "run.attn"
        with torch.no_grad():
            model.generate(ids, max_new_tokens=new)  # warm up
        start = time.perf_counter()
        with torch.no_grad():
            model.generate(ids, max_new_tokens=new)
        gen_only = time.perf_counter() - start
        peak_rss_reset()
        before = current_rss()
        start = time.perf_counter()
        with attnfast.capture(model, "full", sink=str(path)), torch.no_grad():
            model.generate(ids, max_new_tokens=new)
        with_file = time.perf_counter() - start
        peak = peak_rss() - before
        f = CaptureFile(path)
        raw = sum(
            int(f.steps["layers"][i] * f.steps["heads"][i] * f.steps["context_len"][i]) * 4
            for i in range(len(f))
        )
        start = time.perf_counter()
        for i in range(len(f)):
            f.attention(i)
        read = time.perf_counter() - start
        js = f.to_json(Path(d) / "run.json")
        gz = Path(d) / "run.json.gz"
        gz.write_bytes(gzip.compress(js.read_bytes(), 6))
        size = path.stat().st_size
        mb = raw / 1e6
        js_size, gz_size = js.stat().st_size, gz.stat().st_size
        extra = max(with_file - gen_only, 1e-9)
        print(f"full capture of {new} tokens ({len(f)} steps, {mb:.1f} MB of float32 attention):")
        print(f"  peak memory growth during capture: {peak / 1e6:.1f} MB (attention: {mb:.1f} MB)")
        print(
            f"  .attn {size / 1e6:.2f} MB; JSON {js_size / 1e6:.1f} MB ({js_size / size:.1f}x); "
            f"gzipped JSON {gz_size / 1e6:.2f} MB ({gz_size / size:.1f}x)"
        )
        print(
            f"  generation {gen_only:.2f} s alone, {with_file:.2f} s writing the capture: "
            f"{mb / extra:.0f} MB/s of float32 beyond generation, "
            f"overhead {100 * (with_file / gen_only - 1):+.0f}%"
        )
        print(f"  read all steps: {read:.3f} s ({raw / 1e6 / read:.0f} MB/s of float32)")


def bench_cuda() -> None:
    if not torch.cuda.is_available():
        print("CUDA: no GPU on this machine, skipped")
        return
    model = load_builtin().cuda()
    ids = torch.tensor([ByteTokenizer().encode(PROMPT)], device="cuda")
    overhead("built-in model on CUDA", model, ids, 256, 5)
    moved = []
    orig = torch.Tensor.cpu

    def counting_cpu(self: torch.Tensor, *a: Any, **k: Any) -> torch.Tensor:
        if self.is_cuda:
            moved.append(self.numel() * self.element_size())
        return orig(self, *a, **k)

    torch.Tensor.cpu = counting_cpu  # type: ignore[method-assign]
    try:
        with attnfast.capture(model, sink=lambda records: None), torch.no_grad():
            model.generate(ids, max_new_tokens=64)
    finally:
        torch.Tensor.cpu = orig  # type: ignore[method-assign]
    per_step = sum(moved) / 64
    print(f"CUDA: bytes moved to the host per step: {per_step:.0f} (fingerprint 80, sink mass 4)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", default="overhead,full,cuda")
    args = parser.parse_args()
    only = args.only.split(",")
    if "overhead" in only:
        bench_overhead(args.quick)
    if "full" in only:
        bench_full(args.quick)
    if "cuda" in only:
        bench_cuda()


if __name__ == "__main__":
    main()
