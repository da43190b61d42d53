"""Timing loops and latency statistics, shared by `clipscan bench` and the INT8 search.

`time_loop` times a callable until a count and a duration are both reached (inside a time
box); `timed_turn` is one candidate's turn when several are timed in interleaved rounds: it
first runs untimed for a moment, because ONNX Runtime's and OpenMP's worker threads keep
spinning for tens of milliseconds after a call and would slow whichever candidate runs next.
"""
from __future__ import annotations

import math
import time
from typing import Callable

import numpy as np


def percentiles(samples_s: list[float]) -> dict:
    """Latency statistics in milliseconds (nearest-rank on the sorted samples, so p50 <= p95 <= p99)."""
    xs = sorted(samples_s)
    if not xs:
        return {"p50": None, "p95": None, "p99": None, "mean": None, "min": None, "max": None}

    def rank(q):
        return xs[min(len(xs) - 1, max(0, math.ceil(q * len(xs)) - 1))] * 1e3

    return {"p50": rank(0.50), "p95": rank(0.95), "p99": rank(0.99), "mean": float(np.mean(xs)) * 1e3,
            "min": xs[0] * 1e3, "max": xs[-1] * 1e3}


def time_loop(fn: Callable[[], object], *, warmup: int = 2, min_iters: int = 10, min_seconds: float = 2.0,
              max_seconds: float = 30.0, max_iters: int = 10_000) -> list[float]:
    """Warm up, then time `fn` until at least `min_iters` runs and `min_seconds` passed (capped by
    `max_seconds`, but never fewer than min(3, min_iters) runs). Returns the per-call seconds."""
    for _ in range(warmup):
        fn()
    samples: list[float] = []
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
        elapsed = time.perf_counter() - start
        if len(samples) >= max_iters:
            break
        if len(samples) >= min(3, min_iters) and elapsed >= max_seconds:
            break
        if len(samples) >= min_iters and elapsed >= min_seconds:
            break
    return samples


def timed_turn(fn: Callable[[], object], settle_s: float, block_s: float, *, settle: bool = True) -> list[float]:
    """One candidate's turn in interleaved timing: untimed calls for `settle_s` (at least one when
    `settle`), so worker threads another candidate left spinning are gone, then timed calls for
    `block_s` (at least one). Returns the timed durations in seconds."""
    if settle:
        settle_end = time.perf_counter() + settle_s
        fn()
        while time.perf_counter() < settle_end:
            fn()
    return time_loop(fn, warmup=0, min_iters=1, min_seconds=block_s, max_seconds=math.inf)
