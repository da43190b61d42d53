"""The program tests/test_gpu.py runs for each GPU backend, run here on the CPU backend so that it is itself
tested on machines without a GPU (same process setup: torch blocked, stdout holding one JSON line)."""
from __future__ import annotations

import json
import subprocess
import sys

from clipscan.runtime.artifact import DEMO_MODEL

from .conftest import SAMPLES, block_torch_env
from .test_gpu import PROGRAM


def test_the_gpu_program_runs_on_the_cpu_backend(tmp_path):
    spec = {"backend": "cpu", "photos": str(SAMPLES), "cache_dir": str(tmp_path / "cache"), "batch_size": 2,
            "max_batch": 3, "int8_cpu_target": None, "models": {"fp32": str(DEMO_MODEL)}}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    proc = subprocess.run([sys.executable, str(PROGRAM), str(tmp_path / "spec.json")], capture_output=True, text=True,
                          env=block_torch_env(tmp_path), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (line,) = proc.stdout.splitlines()
    r = json.loads(line)
    assert r["torch_loaded"] is False and r["fp32"]["backend"] == "onnxruntime-cpu" and r["fp32"]["errors"] == []
    assert r["fp32"]["p"] == r["reference"]["p"] == r["second"]["p"] and len(r["fp32"]["embeddings"]) == 4
    assert r["settings"]["providers"] == ["CPUExecutionProvider"]
    assert r["settings"]["disable_cpu_ep_fallback"] is None, "the CPU backend has no GPU placement policy"
    assert {n: b["ok"] for n, b in r["batches"].items()} == {"1": True, "2": True, "3": True, "4": True}
    assert r["batches"]["4"]["rows"]["p_generated"] == 4
