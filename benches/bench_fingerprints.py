"""Fingerprint throughput: attnfast's Rust core against the numpy reference, side by side.

    make bench            # or: .venv/bin/python benches/bench_fingerprints.py [--quick]

For each shape and dtype it times, in this one run: the numpy implementation of the spec
(``tests/fingerprint_reference.py``, computing in float32 so the baseline is not slowed by
float64), attnfast on one thread (a subprocess with ``ATTNFAST_NUM_THREADS=1``) and attnfast
on every core. Throughput is GB/s of attention input (its own dtype's bytes). It also checks
that attnfast and numpy agree, so the two sides compute the same thing. Results go to
``benches/results/fingerprints.json`` and a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

import attnfast  # noqa: E402
from fingerprint_reference import reference_fingerprints  # noqa: E402
from timing import best_time  # noqa: E402

SHAPES = [(64, 32, 32, 4096), (512, 12, 12, 512)]
QUICK_SHAPES = [(8, 32, 32, 4096), (64, 12, 12, 512)]
DTYPES = {"float32": np.float32, "float16": np.float16}


def attention(shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """Unnormalised random rows: speed does not depend on the values, and each row is
    normalised by both sides anyway."""
    a = np.random.default_rng(0).random(shape, dtype=np.float32)
    return a if dtype == "float32" else a.astype(DTYPES[dtype])


def time_attnfast(shape: tuple[int, ...], dtype: str, repeats: int) -> float:
    attn = attention(shape, dtype)
    attnfast.compute_fingerprints(attn[:1])  # warm the pool and the page cache
    return best_time(lambda: attnfast.compute_fingerprints(attn), repeats)


def one_thread(shape: tuple[int, ...], dtype: str, repeats: int) -> float:
    """Seconds on one thread, measured in a fresh process (the pool size is per process)."""
    code = (
        "import sys, json; sys.argv = ['x']; "
        f"sys.path.insert(0, {str(HERE)!r}); import bench_fingerprints as b; "
        f"print(json.dumps(b.time_attnfast({shape!r}, {dtype!r}, {repeats})))"
    )
    env = {**os.environ, "ATTNFAST_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return float(out.stdout.strip().splitlines()[-1])


def numpy_time(attn: np.ndarray, repeats: int) -> tuple[float, np.ndarray]:
    result: list[np.ndarray] = []

    def run() -> None:
        result.append(reference_fingerprints(attn, dtype=np.float32))

    return best_time(run, repeats), result[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller shapes, for a smoke run")
    args = parser.parse_args()
    shapes = QUICK_SHAPES if args.quick else SHAPES
    info = attnfast.build_info()
    rows = []
    for shape in shapes:
        for dtype in DTYPES:
            attn = attention(shape, dtype)
            gb = attn.nbytes / 1e9
            t_np, fp_np = numpy_time(attn, 2 if attn.nbytes > 2**28 else 3)
            fp_rs = attnfast.compute_fingerprints(attn)
            max_diff = float(np.abs(fp_rs - fp_np).max())
            t_all = time_attnfast(shape, dtype, 7)
            t_one = one_thread(shape, dtype, 7)
            rows.append(
                {
                    "shape": list(shape),
                    "dtype": dtype,
                    "input_gb": round(gb, 3),
                    "numpy_gbps": gb / t_np,
                    "attnfast_1thread_gbps": gb / t_one,
                    "attnfast_gbps": gb / t_all,
                    "speedup_1thread": t_np / t_one,
                    "speedup": t_np / t_all,
                    "max_abs_diff_vs_numpy": max_diff,
                }
            )
            del attn
            print(f"done {shape} {dtype}", file=sys.stderr, flush=True)
    machine = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "simd": info["simd"],
        "threads": info["threads"],
        "attnfast": info["version"],
        "numpy": np.__version__,
    }
    out_dir = HERE / "results"
    out_dir.mkdir(exist_ok=True)
    report = json.dumps({"machine": machine, "rows": rows}, indent=2)
    (out_dir / "fingerprints.json").write_text(report)
    print(f"machine: {machine}\n")
    threads = info["threads"]
    print(
        "| (T, L, H, N) | dtype | input | numpy GB/s | attnfast 1 thread GB/s | "
        f"attnfast {threads} threads GB/s | x numpy (1 thread) | x numpy (all) | max diff |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        cells = [
            str(tuple(r["shape"])),
            r["dtype"],
            f"{r['input_gb']:.2f} GB",
            f"{r['numpy_gbps']:.2f}",
            f"{r['attnfast_1thread_gbps']:.2f}",
            f"{r['attnfast_gbps']:.2f}",
            f"{r['speedup_1thread']:.0f}x",
            f"{r['speedup']:.0f}x",
            f"{r['max_abs_diff_vs_numpy']:.1e}",
        ]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
