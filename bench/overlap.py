"""How much of a scan's inference time had a decode running at the same time.

One Scanner pass is traced through the Scanner's `observer` hook, which reports the interval of
every "prepare" (decode + preprocess of one file, in the worker threads) and every "inference"
(one batch's predict); the overlap is the part of each inference interval covered by the union
of the prepare intervals.
"""
from __future__ import annotations

import threading
import time

from clipscan.runtime import Scanner

NOTE = ("decode_busy sums the worker threads' decode+preprocess time (can exceed wall); "
        "inference_overlapped_fraction = share of inference time during which a decode was running")


def covered(interval: tuple[float, float], others: list[tuple[float, float]]) -> float:
    """Length of `interval` covered by the union of `others`."""
    a, b = interval
    cuts = sorted((max(a, c), min(b, d)) for c, d in others if d > a and c < b)
    total, end = 0.0, a
    for c, d in cuts:
        if d > end:
            total += d - max(c, end)
            end = d
    return total


def overlap_trace(scanner: Scanner, files: list[str]) -> dict:
    """One traced pass of `scanner` over `files`: wall time, decode busy time, inference time and overlap."""
    lock = threading.Lock()
    spans: dict[str, list[tuple[float, float]]] = {"prepare": [], "inference": []}

    def observe(stage: str, start: float, end: float) -> None:
        with lock:
            spans.setdefault(stage, []).append((start, end))

    previous, scanner.observer = scanner.observer, observe
    try:
        t0 = time.perf_counter()
        for _ in scanner.scan(files):
            pass
        wall = time.perf_counter() - t0
    finally:
        scanner.observer = previous
    dec, inf = spans["prepare"], spans["inference"]
    inf_total = sum(b - a for a, b in inf)
    overlapped = sum(covered(span, dec) for span in inf)
    return {"wall_seconds": wall, "decode_busy_seconds": sum(b - a for a, b in dec), "inference_seconds": inf_total,
            "inference_overlapped_fraction": overlapped / inf_total if inf_total else None, "note": NOTE}
