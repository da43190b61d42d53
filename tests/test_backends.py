"""Backend choice and fallback, engine-cache keys, profiles and buffer sizing: everything a CPU can check.

GPU execution itself is checked by tests/test_gpu.py, which runs only where a CUDA GPU is present.
"""
from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from clipscan.cli import main
from clipscan.runtime import BackendError, Scanner
from clipscan.runtime.backends import AUTO_CHAIN, BackendOptions, backend_status
from clipscan.runtime.backends.engine_cache import BatchProfile, EngineCache, EngineKey
from clipscan.runtime.backends.ort_gpu import tensorrt_ep_options
from clipscan.runtime.backends.tensorrt_native import IoTensor, legacy_precision_flags, network_flags

from .conftest import SAMPLES
from .ort_gpu_wheel import ort_gpu_dir, with_ort_gpu  # noqa: F401 - ort_gpu_dir is a fixture


def test_cpu_backend_is_available_and_named_in_results():
    status = {name: reason for name, _, reason in backend_status()}
    assert status["cpu"] is None
    with Scanner(backend="cpu") as scanner:
        assert scanner.backend_name == "onnxruntime-cpu"
        assert scanner.backend.session.get_providers() == ["CPUExecutionProvider"]
        assert {r.backend for r in scanner.scan([SAMPLES])} == {"onnxruntime-cpu"}


def test_auto_chain_logs_why_each_gpu_backend_was_skipped(caplog):
    """On this machine: no tensorrt package, a CPU-only onnxruntime. Real import and provider failures."""
    caplog.set_level(logging.INFO, logger="clipscan.backends")
    with Scanner(backend="auto") as scanner:
        assert scanner.backend_name == "onnxruntime-cpu"
    skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert [m.split(" skipped")[0] for m in skipped] == ["backend tensorrt", "backend ort-tensorrt", "backend cuda"]
    assert "No module named 'tensorrt'" in skipped[0] and "pip install 'clipscan[tensorrt]'" in skipped[0]
    assert "has no TensorrtExecutionProvider" in skipped[1] and "has no CUDAExecutionProvider" in skipped[2]
    assert AUTO_CHAIN == ("tensorrt", "ort-tensorrt", "cuda", "cpu")


@pytest.mark.parametrize("name", ["tensorrt", "ort-tensorrt", "cuda"])
def test_an_explicit_backend_that_cannot_start_is_an_error(name, capsys):
    with pytest.raises(BackendError, match=f"backend '{name}' was requested but cannot start: .*Install with"):
        Scanner(backend=name)
    assert main(["scan", "--backend", name, str(SAMPLES)]) == 2
    assert "cannot start" in capsys.readouterr().err


def test_no_fallback_stops_at_the_first_failure():
    with pytest.raises(BackendError, match=r"no backend could run the model; tried tensorrt: "):
        Scanner(backend="auto", fallback=False)


def test_unknown_backend_lists_what_exists(capsys):
    with pytest.raises(BackendError, match=r"unknown backend 'tensorrt-x'; known backends: \['auto', 'tensorrt', "):
        Scanner(backend="tensorrt-x")
    with pytest.raises(SystemExit):
        main(["scan", "--backend", "nope", "samples"])
    assert "invalid choice" in capsys.readouterr().err


def test_backends_command(capsys):
    assert main(["backends"]) == 0
    out = capsys.readouterr().out
    assert "auto tries, in order: tensorrt -> ort-tensorrt -> cuda -> cpu" in out
    assert out.count("unavailable") == 3 and "cpu" in out


def key(**changes) -> EngineKey:
    base = dict(onnx_sha256="a" * 64, precision="fp16", profile=BatchProfile(1, 16, 32), tensorrt_version="10.9.0",
                gpu_name="NVIDIA Jetson Orin", compute_capability="8.7", cuda_version="12.6")
    base.update(changes)
    return EngineKey(**base)


def test_engine_key_changes_with_everything_that_invalidates_a_plan():
    variants = [key(onnx_sha256="b" * 64), key(precision="int8"), key(profile=BatchProfile(1, 8, 32)),
                key(tensorrt_version="11.4.0"), key(gpu_name="NVIDIA A100"), key(compute_capability="8.0"),
                key(cuda_version="13.0")]
    digests = {key().digest()} | {k.digest() for k in variants}
    assert len(digests) == 1 + len(variants)
    assert key().digest() == key().digest()


def test_engine_cache_round_trip_and_rebuild_on_mismatch(tmp_path):
    cache = EngineCache(tmp_path)
    k = key()
    assert cache.load("model", k) is None
    path = cache.store("model", k, b"PLAN-BYTES")
    assert path.read_bytes() == b"PLAN-BYTES", "the plan file is exactly what TensorRT serialised"
    assert cache.load("model", k) == b"PLAN-BYTES"
    assert cache.load("model", key(tensorrt_version="11.0.0")) is None, "another TensorRT: rebuild"
    assert cache.load("model", key(gpu_name="Tesla T4", compute_capability="7.5")) is None, "another GPU: rebuild"
    path.write_bytes(b"PLAN-BYTEZ")  # damaged on disk
    assert cache.load("model", k) is None
    sidecar = path.with_suffix(".json")
    cache.store("model", k, b"PLAN-BYTES")
    sidecar.write_text(sidecar.read_text().replace('"fp16"', '"fp32"'))  # a sidecar that disagrees
    assert cache.load("model", k) is None
    assert cache.timing_cache_path(k) == cache.timing_cache_path(key(onnx_sha256="c" * 64)), \
        "one timing cache per TensorRT version and GPU, shared across models"


def test_batch_profiles():
    assert BatchProfile.for_batch_size(16) == BatchProfile(1, 16, 16)
    assert BatchProfile.for_batch_size(16, 64) == BatchProfile(1, 16, 64)
    assert BatchProfile.for_batch_size(16, 4) == BatchProfile(1, 16, 16), "max never below the batch size used"
    assert BatchProfile(1, 8, 32).shapes((3, 224, 224)) == {"min": (1, 3, 224, 224), "opt": (8, 3, 224, 224),
                                                            "max": (32, 3, 224, 224)}
    with pytest.raises(ValueError, match="1 <= min <= opt <= max"):
        BatchProfile(0, 8, 4)


def test_tensorrt_ep_options(tmp_path):
    opts = tensorrt_ep_options("pixels", (3, 224, 224), "fp16",
                               BackendOptions(batch_size=8, max_batch=32, cache_dir=str(tmp_path)))
    assert opts["trt_profile_min_shapes"] == "pixels:1x3x224x224"
    assert opts["trt_profile_opt_shapes"] == "pixels:8x3x224x224"
    assert opts["trt_profile_max_shapes"] == "pixels:32x3x224x224"
    assert opts["trt_engine_cache_path"] == opts["trt_timing_cache_path"] == str(tmp_path / "ort-tensorrt" / "tf32-off")
    tf32 = tensorrt_ep_options("pixels", (3, 224, 224), "fp16", BackendOptions(tf32=True, cache_dir=str(tmp_path)))
    assert tf32["trt_engine_cache_path"] == str(tmp_path / "ort-tensorrt" / "tf32-on"), "TF32 engines kept apart"
    assert opts["trt_fp16_enable"] is False, "precision comes from the graph; TensorRT must not lower FP32 layers"
    assert tensorrt_ep_options("pixels", (3, 224, 224), "int8", BackendOptions())["trt_int8_enable"] is True


def test_buffer_sizing():
    t = IoTensor("pixels", True, (-1, 3, 224, 224), np.dtype(np.float16))
    assert t.shape_for(8) == (8, 3, 224, 224)
    assert t.nbytes(32) == 32 * 3 * 224 * 224 * 2
    assert IoTensor("class_probs", False, (-1, 5), np.dtype(np.float32)).nbytes(16) == 16 * 5 * 4
    with pytest.raises(BackendError, match="only the batch axis may be dynamic"):
        IoTensor("x", True, (-1, 3, -1, 224), np.dtype(np.float32)).nbytes(1)


class _Flags:
    """Stand-ins for the two TensorRT generations' enums (the package is not installable here)."""

    def __init__(self, strongly_typed: bool, explicit_batch: bool, fp16: bool):
        class NetworkDefinitionCreationFlag:
            pass

        class BuilderFlag:
            pass

        if explicit_batch:
            NetworkDefinitionCreationFlag.EXPLICIT_BATCH = 0
        if strongly_typed:
            NetworkDefinitionCreationFlag.STRONGLY_TYPED = 1
        if fp16:
            BuilderFlag.FP16, BuilderFlag.INT8 = "FP16", "INT8"
        self.NetworkDefinitionCreationFlag, self.BuilderFlag = NetworkDefinitionCreationFlag, BuilderFlag


def test_network_flags_for_tensorrt_10_and_11():
    trt10 = _Flags(strongly_typed=True, explicit_batch=True, fp16=True)
    trt11 = _Flags(strongly_typed=True, explicit_batch=False, fp16=False)  # 11 removed EXPLICIT_BATCH and FP16/INT8
    trt8 = _Flags(strongly_typed=False, explicit_batch=True, fp16=True)
    assert network_flags(trt10) == network_flags(trt11) == 1 << 1
    assert legacy_precision_flags(trt10, "fp16") == legacy_precision_flags(trt11, "int8") == []
    assert network_flags(trt8) == 1 << 0
    assert legacy_precision_flags(trt8, "fp16") == ["FP16"] and legacy_precision_flags(trt8, "int8") == ["INT8", "FP16"]


GPU_ORT_PROGRAM = r"""
import json, logging, sys
logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
import onnxruntime as ort
from clipscan.runtime import Scanner, BackendError
from clipscan.runtime.artifact import DEMO_MODEL
from clipscan.runtime.backends import ort_gpu
from clipscan.runtime.backends.base import BackendOptions
out = {"ort": ort.__version__, "available": ort.get_available_providers(),
       "flavour": ort_gpu.onnxruntime_flavour_problem()}
try:  # past the availability check, straight to ONNX Runtime: the session it would hand back runs on the CPU
    ort_gpu.create_cuda(DEMO_MODEL, BackendOptions())
except BackendError as e:
    out["cuda_error"] = str(e)
with Scanner(backend="auto") as s:
    out["auto"] = s.backend_name
    out["rows"] = [r.backend for r in s.scan([sys.argv[1]])]
print(json.dumps(out))
"""


@pytest.mark.slow
def test_silent_cpu_fallback_of_onnxruntime_gpu_is_caught(ort_gpu_dir):
    """With onnxruntime-gpu on a machine without a GPU, ORT would hand back CPU sessions; clipscan must not."""
    proc = subprocess.run([sys.executable, "-c", GPU_ORT_PROGRAM, str(SAMPLES)], capture_output=True, text=True,
                          env=with_ort_gpu(ort_gpu_dir), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "CUDAExecutionProvider" in out["available"], out  # ORT claims it could use the GPU...
    assert "the session came back on ['CPUExecutionProvider']" in out["cuda_error"], out  # ...clipscan sees it did not
    assert out["auto"] == "onnxruntime-cpu" and set(out["rows"]) == {"onnxruntime-cpu"}
    assert "backend cuda skipped: " in proc.stderr and "missing libcublasLt.so.13" in proc.stderr
    assert "share one 'onnxruntime' module" in out["flavour"], "the broken onnxruntime + onnxruntime-gpu mix is named"


def test_stream_handle_is_the_cuda_handle_value():
    from cuda.bindings import runtime as cudart

    from clipscan.runtime.backends.tensorrt_native import _handle

    assert _handle(cudart.cudaStream_t(0)) == 0 and _handle(1234) == 1234


def test_spin_option_reaches_the_onnxruntime_session():
    """Scanner(spin=False) turns off ONNX Runtime's spin-waiting worker threads (for pipelines that decode
    on the same cores); the default keeps ONNX Runtime's own behaviour. Results are identical either way."""
    from clipscan.runtime.artifact import DEMO_MODEL

    files = sorted(str(p) for p in Path(SAMPLES).iterdir() if p.is_file())
    with Scanner(DEMO_MODEL, backend="cpu", spin=False) as quiet, Scanner(DEMO_MODEL, backend="cpu") as default:
        q_opts = quiet.backend.session.get_session_options()
        d_opts = default.backend.session.get_session_options()
        assert q_opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
        with pytest.raises(Exception, match="does not have configuration"):
            d_opts.get_session_config_entry("session.intra_op.allow_spinning")
        a, b = list(quiet.scan(files)), list(default.scan(files))
    assert [r.p_generated for r in a] == [r.p_generated for r in b]


def test_cli_no_spin_scans(capsys):
    assert main(["scan", "--no-spin", "--decode", "draft", str(SAMPLES)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert len(rows) == len(list(Path(SAMPLES).iterdir())) and all(r["error"] is None for r in rows)


def test_an_opset_23_artifact_on_an_old_onnxruntime_says_what_to_install():
    from clipscan.runtime.backends.ort_cpu import too_old_hint

    assert "pip install -U onnxruntime" in too_old_hint(23, "1.20.1") and "1.20.1" in too_old_hint(23, "1.20.1")
    assert too_old_hint(23, "1.23.0") == "" and too_old_hint(18, "1.17.0") == "" and too_old_hint(None, "1.17") == ""
