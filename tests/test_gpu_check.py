"""tools/gpu_check.py end to end as a dry run: every stage runs or says why not, and the results land in the folder."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from .conftest import REPO


@pytest.mark.slow
def test_the_gpu_check_dry_run(tmp_path):
    out = tmp_path / "gpu_check"
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "gpu_check.py"), str(out), "--dry-run",
                           "--budget", "400"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    stages = results["stages"]
    assert list(stages) == ["environment", "cuda_devices", "precision", "gpu_tests", "bench"]
    env = stages["environment"]
    assert env["status"] == "ok" and env["dry_run"] is True
    assert set(env["backends"]) >= {"tensorrt", "ort-tensorrt", "cuda", "cpu"} and env["backends"]["cpu"] is None
    for name in ("cuda_devices", "precision", "bench"):
        assert stages[name]["status"] == "skipped" and "dry run" in stages[name]["reason"], stages[name]
    # the GPU tests ran, and skipped what needs a GPU, each with its reason
    assert stages["gpu_tests"]["status"] == "ok", stages["gpu_tests"]
    assert "skipped" in stages["gpu_tests"]["summary"] and stages["gpu_tests"]["skips"]
    assert set(results["not_run"]) == {"cuda_devices", "precision", "bench"}
    log = (out / "gpu_check.log").read_text()
    assert "== environment" in log and "bench: skipped (no GPU to benchmark on (dry run)" in log
