"""Timing several candidates fairly on a shared machine: interleaved rounds.

Per batch size every candidate is loaded, warmed up and then timed in rounds with the order
rotated every round, so load from other processes falls on all of them alike. Each turn first
runs untimed for `settle_seconds`, because ONNX Runtime's and OpenMP's worker threads keep
spinning for tens of milliseconds after a call returns and would slow whichever candidate ran
next, then timed for `block_seconds` (`clipscan.measure.timing.timed_turn`).
"""
from __future__ import annotations

import time
from typing import Iterator

import numpy as np

from clipscan.measure.timing import percentiles, timed_turn

from .candidates import Candidate
from .config import BenchConfig


def _done(samples: list[list[float]], rounds: int, elapsed: float, cfg: BenchConfig, min_iters: int) -> bool:
    """At least `min_iters` timed calls each and `min_seconds` x candidates (after 2 rounds), or the
    time box `max_seconds` x candidates after 3 rounds."""
    n = len(samples)
    if rounds >= 3 and elapsed >= cfg.max_seconds * n:
        return True
    return min(len(s) for s in samples) >= min_iters and elapsed >= cfg.min_seconds * n and rounds >= 2


def time_interleaved(cands: list[Candidate], cfg: BenchConfig, min_iters: int) -> Iterator[tuple[Candidate, dict]]:
    """Time every candidate in rotating rounds; yields (candidate, measurement) in the candidates' order.

    A call that lasts over 5x the settle time (a whole e2e pass) skips the settle after its first turn:
    it already outlasts the spinning the settle waits out."""
    if not cands:
        return
    for c in cands:
        for _ in range(cfg.warmup):
            c.run()
    samples: list[list[float]] = [[] for _ in cands]
    n = len(cands)
    start = time.perf_counter()
    rounds = 0
    while True:
        for i in [(rounds + k) % n for k in range(n)]:
            xs = samples[i]
            settle = not xs or float(np.median(xs)) < 5 * cfg.settle_seconds
            xs += timed_turn(cands[i].run, cfg.settle_seconds, cfg.block_seconds, settle=settle)
        rounds += 1
        if _done(samples, rounds, time.perf_counter() - start, cfg, min_iters):
            break
    for c, xs in zip(cands, samples):
        yield c, {"iterations": len(xs), "latency_ms": percentiles(xs), **c.memory,
                  "median_s": float(np.median(xs)), "interleaved_with": n - 1, "rounds": rounds}
