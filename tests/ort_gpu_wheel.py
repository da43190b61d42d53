"""onnxruntime-gpu installed beside this environment (not into it), once per test session.

The GPU build of ONNX Runtime installs the same `onnxruntime` module as the CPU build, so it goes into a
target folder that a subprocess puts first on PYTHONPATH. $CLIPSCAN_ORT_GPU_DIR names a folder that
already holds it (or where to put it), so a developer downloads the ~300 MB wheel once.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def ort_gpu_dir(tmp_path_factory) -> Path:
    target = Path(os.environ.get("CLIPSCAN_ORT_GPU_DIR") or tmp_path_factory.getbasetemp() / "ort_gpu")
    if not (target / "onnxruntime").is_dir():
        proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                               "onnxruntime-gpu"], capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stderr[-2000:]
    return target


def with_ort_gpu(target: Path, **extra: str) -> dict:
    """The environment of a subprocess that imports onnxruntime-gpu instead of this environment's onnxruntime."""
    return dict(os.environ, PYTHONPATH=str(target), **extra)
