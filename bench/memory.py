"""Peak memory of one benchmark candidate.

The process's peak resident set size (VmHWM in /proc/self/status), reset through
/proc/self/clear_refs where the kernel allows it (flagged `peak_rss_reset`), read while one
candidate is created and run once on its own: `peak_rss_mb` is the whole process (Python, ONNX
Runtime, torch, candidates loaded before it), `peak_rss_added_mb` the part over the RSS before it.
"""
from __future__ import annotations

import gc
from typing import Callable


def _status_kb(field_name: str) -> float | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field_name + ":"):
                    return float(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter of this process (Linux >= 4.0); False if not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float | None:
    kb = _status_kb("VmHWM")
    if kb is None:
        try:
            import resource

            kb = float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
        except Exception:
            return None
    return kb / 1024.0


def current_rss_mb() -> float | None:
    kb = _status_kb("VmRSS")
    return None if kb is None else kb / 1024.0


def memory_probe(create: Callable[[], object] | None, run: Callable[[], object]) -> dict:
    """Peak RSS while one candidate is created (if `create`) and run once, alone: the process peak
    and the part added over the RSS before it (other candidates already loaded stay resident)."""
    gc.collect()
    reset_ok = reset_peak_rss()
    before = current_rss_mb()
    if create is not None:
        create()
    run()
    peak = peak_rss_mb()
    added = (peak - before) if (reset_ok and peak is not None and before is not None) else None
    return {"peak_rss_mb": peak, "peak_rss_added_mb": added, "peak_rss_reset": reset_ok}
