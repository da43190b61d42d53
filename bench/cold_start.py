"""Cold start: wall time from launching `python -m clipscan scan` on one image to its first result line.

That covers interpreter start, imports, session creation and one scan, as a user meets them.
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path


def cold_start(model: str, backend: str, image: str, timeout: float = 300.0) -> dict:
    """Seconds from launching `python -m clipscan scan` on one image to its first result line."""
    cmd = [sys.executable, "-m", "clipscan", "scan", "-q", "--model", model, "--backend", backend, image]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        first = time.perf_counter() - t0
        proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return {"seconds": None, "error": "timeout"}
    total = time.perf_counter() - t0
    ok = bool(line.strip())
    return {"seconds": first if ok else None, "process_seconds": total, "exit_code": proc.returncode,
            "error": None if ok else "no result line", "command": " ".join(cmd[1:])}


def cold_starts(models: list[str], backends: list[str], image: str) -> list[dict]:
    """One cold start per artifact and backend, on `image`."""
    out = []
    for model in models:
        for backend in backends:
            cs = cold_start(model, backend, image)
            cs.update(artifact=Path(model).name, backend=backend)
            out.append(cs)
    return out
