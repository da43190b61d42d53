"""GPU check: every GPU backend, in a process without torch, against ONNX Runtime on the CPU.

Run it on a machine with an NVIDIA GPU and the GPU extras (docs/guides/backends.md), or through
tools/gpu_check.py, which runs it and the rest of the GPU check and writes the results to a folder:
    python -m pytest -m gpu -rs tests/test_gpu.py
Every GPU assertion is made in a subprocess where importing torch fails (torch loads the CUDA libraries
a torch-free install lacks, so an in-process check could pass where `clipscan scan` fails). Without a
visible NVIDIA GPU every test here is skipped with that reason; with one, a machine where no GPU backend
starts fails (it never skips to green).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from clipscan.runtime.backends.gpu_libs import visible_gpu

from .conftest import block_torch_env, cosine

GPU_BACKENDS = ("tensorrt", "ort-tensorrt", "cuda")
NAMES = {"tensorrt": "tensorrt[tf32=off]", "ort-tensorrt": "onnxruntime-tensorrt[tf32=off]",
         "cuda": "onnxruntime-cuda[tf32=off]"}
PROGRAM = Path(__file__).with_name("gpu_program.py")
BATCH, MAX_BATCH = 8, 16
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not visible_gpu(), reason="no NVIDIA GPU here (no /proc/driver/nvidia, no nvidia-smi)")]

GATES = {  # embedding cosine mean / worst and decision agreement, as in the fidelity protocol
    "fp32": (0.99999, 0.9999, 1.0),
    "fp16": (0.9995, 0.999, 0.999),
    "int8": (0.99, 0.98, 0.99),
}
STATUS_PROGRAM = ("import json; from clipscan.runtime.backends import backend_status; "
                  "print(json.dumps({n: r for n, _, r in backend_status()}))")


@pytest.fixture(scope="module")
def status(tmp_path_factory) -> dict:
    """Each backend's availability as a torch-free process sees it."""
    env = block_torch_env(tmp_path_factory.mktemp("status"))
    proc = subprocess.run([sys.executable, "-c", STATUS_PROGRAM], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.splitlines()[-1])


def test_a_visible_gpu_is_used_by_some_gpu_backend(status):
    """A GPU machine on which no GPU backend starts is a failure, with every backend's reason."""
    reasons = {name: status[name] for name in GPU_BACKENDS}
    assert any(r is None for r in reasons.values()), f"a GPU is visible but no GPU backend can run: {reasons}"


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    from clipscan.export import demo_data

    d = tmp_path_factory.mktemp("gpu_photos")
    images, _ = demo_data.detector_set(32, seed=13)
    for i, img in enumerate(images):
        img.save(d / f"img_{i:03d}.png")
    return d


@pytest.fixture(scope="module")
def artifacts(tiny_model_files, photos, tmp_path_factory):
    """fp32 and fp16 exports, INT8 calibrated for TensorRT, and INT8 calibrated for the CPU (to be refused)."""
    from clipscan.cli import main
    from clipscan.export import export_model

    d = tmp_path_factory.mktemp("gpu_artifacts")
    out = {}
    for precision in ("fp32", "fp16"):
        out[precision] = str(export_model(str(tiny_model_files["config"]), tiny_model_files["weights"],
                                          tiny_model_files["heads"], d / f"tiny_{precision}.onnx",
                                          precision=precision).path)
    for target in ("tensorrt", "cpu"):
        path = d / f"tiny_int8_{target}.onnx"
        assert main(["calibrate", out["fp32"], "--images", str(photos), "-o", str(path), "--target", target,
                     "--no-progress", "--no-cache"]) == 0
        out[f"int8_{target}"] = str(path)
    return out


def run_program(backend: str, artifacts: dict, photos: Path, tmp_path: Path) -> dict:
    spec = {"backend": backend, "photos": str(photos), "cache_dir": str(tmp_path / "cache"),
            "batch_size": BATCH, "max_batch": MAX_BATCH, "int8_cpu_target": artifacts["int8_cpu"],
            "models": {"fp32": artifacts["fp32"], "fp16": artifacts["fp16"], "int8": artifacts["int8_tensorrt"]}}
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    proc = subprocess.run([sys.executable, str(PROGRAM), str(path)], capture_output=True, text=True,
                          env=block_torch_env(tmp_path), timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, f"stdout holds more than the program's one JSON line: {lines[:-1]}"
    result = json.loads(lines[0])
    result["stderr"] = proc.stderr
    return result


def agree(got: dict, ref: dict, precision: str) -> None:
    assert got["errors"] == []
    cos = cosine(np.array(got["embeddings"]), np.array(ref["embeddings"]))
    agreement = np.mean([a == b for a, b in zip(got["verdicts"], ref["verdicts"])])
    mean_gate, worst_gate, agree_gate = GATES[precision]
    print(f"{got['backend']} {precision}: cosine mean {cos.mean():.6f} worst {cos.min():.6f}, agreement {agreement:.4f}")
    assert cos.mean() >= mean_gate and cos.min() >= worst_gate and agreement >= agree_gate


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_gpu_backend(backend, status, request, tmp_path):
    if status[backend] is not None:
        pytest.skip(f"{backend} cannot run here: {status[backend]}")
    artifacts, photos = request.getfixturevalue("artifacts"), request.getfixturevalue("photos")  # built only if needed
    r = run_program(backend, artifacts, photos, tmp_path)
    assert r["torch_loaded"] is False
    # what ran, and its TF32 and placement policy
    assert r["fp32"]["backend"] == NAMES[backend]
    s = r["settings"]
    if backend == "cuda":
        assert s["providers"][0] == "CUDAExecutionProvider"
        assert s["provider_options"]["CUDAExecutionProvider"]["use_tf32"] == "0"
    if backend == "ort-tensorrt":
        assert s["providers"][0] == "TensorrtExecutionProvider" and s["NVIDIA_TF32_OVERRIDE"] == "0"
    if backend == "ort-tensorrt":
        assert s["disable_cpu_ep_fallback"] == "1", "no node may run on the CPU"
    if backend == "cuda":   # started, so its profiled warm-up found no compute node on the CPU
        assert not any("run on the CPU" in m for m in r["first_log"]), r["first_log"]
    # fidelity per precision (INT8 only in its TensorRT-target form, and only on the TensorRT backends)
    for precision in ("fp32", "fp16") + (("int8",) if backend != "cuda" else ()):
        agree(r[precision], r["reference"], precision)
    # batch 1, the profile's opt, its max, and one over
    b = r["batches"]
    for n in (1, BATCH, MAX_BATCH):
        assert b[str(n)]["ok"] and set(b[str(n)]["rows"].values()) == {n}, b
    if backend == "tensorrt":
        assert not b[str(MAX_BATCH + 1)]["ok"] and "outside the engine's profile" in b[str(MAX_BATCH + 1)]["error"]
        assert s["plan_sidecar"]["key"]["tf32"] == "off" and s["plan_from_cache"] is False
        # the second start loads the plan the first built: the same file, named in the log
        second = r["second"]["settings"]
        assert second["plan_from_cache"] is True and second["plan"] == s["plan"]
        assert any(m.startswith("loaded the cached TensorRT engine") for m in r["second"]["log"])
        assert not any("building a TensorRT" in m for m in r["second"]["log"])
    if backend == "ort-tensorrt":
        engines = [f for f in r["cache_after_first"] if f.endswith(".engine")]
        assert engines, r["cache_after_first"]
        assert [f for f in r["second"]["cache"] if f.endswith(".engine")] == engines, "the second start rebuilt"
    np.testing.assert_allclose(r["second"]["p"], r["fp32"]["p"], atol=1e-6)
    assert "--target tensorrt" in r["int8_cpu_target"] if backend != "cuda" else True


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_torch_free_cli_scan_writes_only_rows(backend, status, request, tmp_path):
    if status[backend] is not None:
        pytest.skip(f"{backend} cannot run here: {status[backend]}")
    artifacts, photos = request.getfixturevalue("artifacts"), request.getfixturevalue("photos")
    proc = subprocess.run([sys.executable, "-m", "clipscan", "scan", "--backend", backend, "--model",
                           artifacts["fp32"], str(photos)], capture_output=True, text=True,
                          env=block_torch_env(tmp_path), timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines()]   # every stdout line is a row
    assert len(rows) == len(list(photos.iterdir())) and {r["backend"] for r in rows} == {NAMES[backend]}
    assert all(r["error"] is None for r in rows)
