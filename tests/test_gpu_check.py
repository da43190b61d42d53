"""tools/gpu_check.py end to end as a dry run, in an interpreter where clipscan is not installed (as on a GPU
machine's stock image): every stage runs or says why not, and the results land in the folder."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from .conftest import REPO


def bare_python(folder: Path) -> tuple[Path, Path]:
    """A virtual environment that sees this environment's packages except clipscan: no clipscan distribution,
    no editable-install finder (its .pth file is not processed there). Its interpreter and site-packages."""
    venv, deps = folder / "venv", folder / "deps"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    deps.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if not entry.name.startswith(("clipscan-", "__editable__")) and entry.suffix != ".pth":
            (deps / entry.name).symlink_to(entry)
    python = venv / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    Path(purelib, "deps.pth").write_text(f"{deps}\n")
    return python, Path(purelib)


def gpu_check(python: Path, out: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    proc = subprocess.run([str(python), str(REPO / "tools" / "gpu_check.py"), str(out), "--dry-run", *args],
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    return proc, json.loads((out / "results.json").read_text())


@pytest.mark.slow
def test_the_gpu_check_dry_run_where_clipscan_is_not_installed(tmp_path):
    python, purelib = bare_python(tmp_path)
    # the checkout's root holds a `clipscan/` folder: without an install, it is all that imports
    probe = subprocess.run([str(python), "-c", "import clipscan.runtime"], capture_output=True, text=True, cwd=REPO)
    assert probe.returncode != 0 and "No module named 'clipscan.runtime'" in probe.stderr

    # --no-install: it says what to run, and every stage that needs clipscan says why it did not run
    proc, results = gpu_check(python, tmp_path / "refused", "--no-install", "--budget", "120")
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    stages = results["stages"]
    assert stages["clipscan"]["status"] == "failed"
    assert "pip install --no-index --no-deps --no-build-isolation -e" in stages["clipscan"]["reason"]
    assert stages["environment"]["status"] == "failed" and "torch" in stages["environment"]
    for name in ("gpu_tests", "bench"):
        assert stages[name]["status"] == "skipped" and "does not import from this checkout" in stages[name]["reason"]

    # another clipscan installed (here: its metadata alone) is not replaced: the check says what to do
    other = purelib / "clipscan-0.0.9.dist-info"
    other.mkdir()
    (other / "METADATA").write_text("Metadata-Version: 2.1\nName: clipscan\nVersion: 0.0.9\n")
    proc, results = gpu_check(python, tmp_path / "other", "--budget", "120")
    assert proc.returncode == 1
    reason = results["stages"]["clipscan"]["reason"]
    assert f"clipscan 0.0.9 at {purelib.resolve()} is installed" in reason and "install this checkout instead" in reason
    shutil.rmtree(other)

    # by default it installs this checkout (editable, from no index) and runs everything a dry run runs
    out = tmp_path / "gpu_check"
    proc, results = gpu_check(python, out, "--budget", "400")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    stages = results["stages"]
    assert list(stages) == ["clipscan", "environment", "cuda_devices", "precision", "gpu_tests", "bench"]
    assert stages["clipscan"]["status"] == "ok" and stages["clipscan"]["how"].startswith("installed from this checkout")
    env = stages["environment"]
    assert env["status"] == "ok" and env["dry_run"] is True
    assert set(env["backends"]) >= {"tensorrt", "ort-tensorrt", "cuda", "cpu"} and env["backends"]["cpu"] is None
    for name in ("cuda_devices", "precision"):
        assert stages[name]["status"] == "skipped" and "dry run" in stages[name]["reason"], stages[name]
    # the GPU tests ran, and skipped what needs a GPU, each with its reason
    assert stages["gpu_tests"]["status"] == "ok", stages["gpu_tests"]
    assert "skipped" in stages["gpu_tests"]["summary"] and stages["gpu_tests"]["skips"]
    assert stages["gpu_tests"]["failures"] == []
    # the bench commands ran on the CPU reference, FP32 and the INT8 calibrated for TensorRT; no GPU backend
    bench = stages["bench"]
    assert bench["status"] == "ok" and list(bench["backends"]) == ["cpu"], bench
    assert bench["precisions"]["int8"].startswith("the demo model calibrated here for TensorRT")
    measured = json.loads((out / bench["backends"]["cpu"]["json"]).read_text())
    assert measured["errors"] == []
    assert {(r["backend"], r["precision"], r["batch_size"]) for r in measured["results"]} == \
        {("onnxruntime-cpu", p, b) for p in ("fp32", "int8") for b in (1, 8, 32)}
    assert set(results["not_run"]) == {"cuda_devices", "precision", "bench on the GPU backends"}
    assert sorted(p.name for p in out.iterdir()) == ["bench_cpu.json", "gpu_check.log", "gpu_tests.txt",
                                                     "gpu_tests.xml", "results.json"]
    log = (out / "gpu_check.log").read_text()
    assert "== environment" in log and "bench: ok" in log
