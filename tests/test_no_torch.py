"""The runtime imports and scans with torch (and onnx, open_clip) impossible to import."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from .conftest import SAMPLES, block_torch_env

PROGRAM = r"""
import json, sys
try:
    import torch
except ImportError:
    pass
else:
    raise SystemExit("the torch blocker did not work")
import clipscan.runtime
from clipscan.cli import main
code = main(["scan", "-q", *sys.argv[1:]])
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision", "open_clip", "onnx"))
print(json.dumps({"code": code, "heavy": heavy}), file=sys.stderr)
"""


def test_runtime_scans_without_torch(tmp_path):
    env = block_torch_env(tmp_path)
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    proc = subprocess.run([sys.executable, "-c", PROGRAM, str(SAMPLES), str(bad)], env=env, capture_output=True,
                          text=True, timeout=120)
    status = json.loads(proc.stderr.strip().splitlines()[-1])
    assert status["heavy"] == [], "the runtime must not import torch, open_clip or onnx"
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(rows) == 5
    assert sum(r["error"] is None for r in rows) == 4
    assert status["code"] == 1, "one file failed, so the exit code says so"


def test_export_without_torch_says_what_to_install(tmp_path):
    env = block_torch_env(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "clipscan", "export", "--arch", "ViT-B-32", "--weights", "w.pt",
                           "--heads", "h.pt", "-o", str(tmp_path / "x.onnx")], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert "pip install 'clipscan[export]'" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("command, needs", [
    (["calibrate", "m.onnx", "--images", "d", "-o", "int8.onnx"], "clipscan calibrate needs the Python package 'onnx'"),
    (["verify", "m.onnx", "--arch", "a", "--weights", "w", "--heads", "h", "--images", "d"],
     "clipscan verify needs the Python package 'torch'"),
])
def test_build_commands_without_their_extra_say_what_to_install(tmp_path, command, needs):
    env = block_torch_env(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "clipscan", *command], env=env, capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert needs in proc.stderr and "pip install 'clipscan[export]'" in proc.stderr
    assert "Traceback" not in proc.stderr
