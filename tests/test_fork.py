"""The core's thread pool does not survive fork; a forked child must still compute."""

from __future__ import annotations

import os
import signal

import numpy as np

import attnfast
from attention_cases import causal_attention


def test_child_forked_after_parallel_work_computes_the_same(rng):
    attn = causal_attention(rng, 128, 4, 4, 512)  # big enough to use the pool
    want = attnfast.compute_fingerprints(attn)
    assert attnfast.build_info()["threads"] >= 1
    pid = os.fork()
    if pid == 0:  # child: a deadlock here would hang, so the alarm ends it with a failure
        signal.alarm(60)
        ok = np.array_equal(attnfast.compute_fingerprints(attn), want)
        os._exit(0 if ok else 3)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
