"""The core releases the interpreter while it computes, so other Python threads keep running."""

from __future__ import annotations

import sys
import threading
import time

import numpy as np

import attnfast


def test_other_threads_run_during_a_long_computation():
    attn = np.random.default_rng(0).random((256, 16, 16, 1024), dtype=np.float32)  # 268 MB
    attnfast.compute_fingerprints(attn[:1])

    # How fast this thread counts when nothing else runs.
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < 0.05:
        n += 1
    rate = n / 0.05

    inside = threading.Event()
    done = threading.Event()

    def compute() -> None:
        inside.set()
        for _ in range(10):
            attnfast.compute_fingerprints(attn)
        done.set()

    # A short switch interval hands the GIL over quickly whenever it is free, so a call that
    # held it (tens of ms each) would leave this loop ~1% of the time; released, the loop only
    # shares the CPU with the core's worker threads.
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-4)
    try:
        worker = threading.Thread(target=compute)
        worker.start()
        inside.wait()
        counted, start = 0, time.perf_counter()
        while not done.is_set():
            counted += 1
        elapsed = time.perf_counter() - start
        worker.join()
    finally:
        sys.setswitchinterval(interval)
    assert elapsed > 0.05
    assert counted > 0.15 * rate * elapsed
