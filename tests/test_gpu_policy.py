"""The GPU policy that a CPU can decide: library lists per backend, the GPU probe, TF32 and placement,
the INT8 target TensorRT takes, engine-cache writes, and stdout purity with onnxruntime-gpu installed.

The onnxruntime-gpu tests run the real wheel (its provider libraries, its fallback banner) in a
subprocess, on this machine that has no GPU: every GPU backend must be reported unavailable with its
missing pieces, and `clipscan scan` must write nothing but rows on stdout.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
import types
from pathlib import Path

import numpy as np
import pytest

from clipscan.runtime import BackendError
from clipscan.runtime.artifact import load_artifact
from clipscan.runtime.backends import gpu_libs, ort_gpu, placement
from clipscan.runtime.backends.base import BackendOptions, tf32_tag
from clipscan.runtime.backends.engine_cache import BatchProfile, EngineCache, EngineKey, write_atomic
from clipscan.runtime.backends.int8_target import refuse_cpu_target_int8
from clipscan.runtime.backends.tensorrt_native import tf32_flags

from .conftest import SAMPLES
from .ort_gpu_wheel import ort_gpu_dir, with_ort_gpu  # noqa: F401 - ort_gpu_dir is a fixture

GPU_HERE = gpu_libs.visible_gpu()
no_gpu_here = pytest.mark.skipif(GPU_HERE, reason="this machine shows an NVIDIA GPU: the no-GPU answers do not apply")
SYSTEM_LIBS = {"libdl.so.2", "librt.so.1", "libpthread.so.0", "libstdc++.so.6", "libm.so.6", "libgcc_s.so.1",
               "libc.so.6", "ld-linux-x86-64.so.2"}


# -- library lists and the GPU probe --------------------------------------------------------------------

def _wheel_cuda_major(target: Path) -> int:
    info = (target / "onnxruntime" / "capi" / "build_and_package_info.py").read_text()
    return int(re.search(r"cuda_version = '(\d+)", info).group(1))


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("readelf") is None, reason="readelf (binutils) is needed to read the wheel's links")
def test_library_lists_are_what_the_provider_libraries_link(ort_gpu_dir):
    """The table is data; this holds it to the real onnxruntime-gpu wheel's provider libraries."""
    capi = ort_gpu_dir / "onnxruntime" / "capi"
    cuda = _wheel_cuda_major(ort_gpu_dir)
    for backend, lib in (("cuda", "libonnxruntime_providers_cuda.so"),
                         ("ort-tensorrt", "libonnxruntime_providers_tensorrt.so")):
        out = subprocess.run(["readelf", "-d", str(capi / lib)], capture_output=True, text=True, check=True).stdout
        needed = set(re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", out)) - SYSTEM_LIBS - {"libcuda.so.1"}
        listed = {soname for soname, _ in gpu_libs.libraries_for(backend, cuda)}
        # cuDNN is linked by the TensorRT EP and opened at run time by the CUDA EP: listed for both
        assert needed <= listed and listed - needed <= {"libcudnn.so.9"}, (backend, needed, listed)
    assert {pip for _, pip in gpu_libs.libraries_for("cuda", cuda)} == {gpu_libs.ORT_GPU_LIBS_PIP}


def test_missing_libraries_are_named_with_their_install_command():
    needed = [("libc.so.6", "pip install libc"), ("libclipscan-absent.so.7", "pip install a"),
              ("libclipscan-absent.so.8", "pip install a"), ("libclipscan-other.so.1", "pip install b")]
    missing = gpu_libs.missing_libraries(needed)
    assert [s for s, _ in missing] == ["libclipscan-absent.so.7", "libclipscan-absent.so.8", "libclipscan-other.so.1"]
    assert gpu_libs.describe_missing(missing) == ("missing libclipscan-absent.so.7, libclipscan-absent.so.8: install "
                                                  "with pip install a; missing libclipscan-other.so.1: install with "
                                                  "pip install b")
    assert gpu_libs.libraries_for("cuda", 12)[0] == ("libcublasLt.so.12", gpu_libs.ORT_GPU_LIBS_PIP)


@no_gpu_here
def test_the_gpu_probe_says_there_is_no_driver_here():
    probe = gpu_libs.nvidia_gpu()
    assert probe.devices == 0 and "no NVIDIA GPU driver" in probe.problem and "libcuda.so.1" in probe.problem


def test_an_old_driver_is_named_with_the_version_it_needs():
    probe = gpu_libs.GpuProbe(1, 12080, None)
    assert probe.driver_problem(13, "onnxruntime-gpu 1.31.1") == (
        "the NVIDIA driver supports CUDA up to 12.8; onnxruntime-gpu 1.31.1 is built for CUDA 13, which needs "
        "driver 580 or later: update the driver")
    assert probe.driver_problem(12, "x") is None and gpu_libs.GpuProbe(1, 13000, None).driver_problem(13, "x") is None


# -- precision and placement policy ------------------------------------------------------------------------

def test_tf32_is_off_unless_asked(monkeypatch):
    monkeypatch.delenv("CLIPSCAN_TF32", raising=False)
    off = BackendOptions()
    assert off.tf32 is False and tf32_tag(off) == "[tf32=off]"
    assert ort_gpu.cuda_ep_options(off) == {"device_id": 0, "use_tf32": 0}
    assert ort_gpu.cuda_ep_options(BackendOptions(tf32=True, device_id=1)) == {"device_id": 1, "use_tf32": 1}
    monkeypatch.setenv("CLIPSCAN_TF32", "1")
    assert BackendOptions().tf32 is True and tf32_tag(BackendOptions()) == "[tf32=on]"

    class BuilderFlag:   # TensorRT 10 and 11 both have it, on by default
        TF32 = "TF32"

    trt = types.SimpleNamespace(BuilderFlag=BuilderFlag)
    assert tf32_flags(trt, tf32=False) == ["TF32"] and tf32_flags(trt, tf32=True) == []
    assert tf32_flags(types.SimpleNamespace(BuilderFlag=type("Old", (), {})), tf32=False) == []


def test_the_tensorrt_ep_turns_tf32_off_through_nvidias_override(monkeypatch):
    monkeypatch.delenv(ort_gpu.TF32_OVERRIDE_ENV, raising=False)
    ort_gpu.tensorrt_ep_tf32(BackendOptions(tf32=False))
    assert os.environ[ort_gpu.TF32_OVERRIDE_ENV] == "0"
    with pytest.raises(BackendError, match="NVIDIA_TF32_OVERRIDE=0 is set"):
        ort_gpu.tensorrt_ep_tf32(BackendOptions(tf32=True))


def test_the_tensorrt_ep_session_forbids_cpu_fallback_unless_opted_in(monkeypatch, caplog):
    import onnxruntime as ort

    monkeypatch.delenv("CLIPSCAN_ALLOW_CPU_PLACEMENT", raising=False)
    so = ort.SessionOptions()
    placement.forbid_cpu_fallback(so, ort_gpu.TRT_EP, BackendOptions().allow_cpu_placement)
    assert so.get_session_config_entry(placement.PLACEMENT_KEY) == "1"
    caplog.set_level(logging.WARNING, logger="clipscan.backends")
    monkeypatch.setenv("CLIPSCAN_ALLOW_CPU_PLACEMENT", "1")
    opted = ort.SessionOptions()
    placement.forbid_cpu_fallback(opted, ort_gpu.TRT_EP, BackendOptions().allow_cpu_placement)
    with pytest.raises(Exception, match="does not have configuration"):
        opted.get_session_config_entry(placement.PLACEMENT_KEY)
    assert "may run on the CPU (allow_cpu_placement is on)" in caplog.text


def _profiled_cpu_session():
    """A real session whose profile says every node ran on the CPU: what a CUDA EP session that left its
    compute to the CPU would report."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    folder = placement.start_profile(so)
    session = ort.InferenceSession(str(load_artifact(None).path), so, providers=["CPUExecutionProvider"])
    return session, folder


def test_compute_left_on_the_cpu_is_refused_but_shape_computations_are_not(caplog):
    session, folder = _profiled_cpu_session()
    try:
        with pytest.raises(BackendError, match=r"CUDAExecutionProvider left \d+ compute node\(s\) of this graph to "
                                               r"the CPU \(.*Conv .*CLIPSCAN_ALLOW_CPU_PLACEMENT=1"):
            placement.check_compute_placement(session, ort_gpu.CUDA_EP, allow=False)
    finally:
        shutil.rmtree(folder)
    session, folder = _profiled_cpu_session()
    try:
        session.run(None, placement.warmup_feeds(session))
        events = json.loads(Path(session.end_profiling()).read_text())
    finally:
        shutil.rmtree(folder)
    flagged = placement.cpu_compute_nodes(events, ort_gpu.CUDA_EP)
    ops = {n.split()[0] for n in flagged}
    assert {"Conv", "Gemm", "LayerNormalization", "Softmax"} <= ops
    assert "Shape" not in ops, "int64 shape computations stay on the CPU on purpose"
    assert placement.cpu_compute_nodes(events, "CPUExecutionProvider") == []
    caplog.set_level(logging.WARNING, logger="clipscan.backends")
    session, folder = _profiled_cpu_session()
    try:
        placement.check_compute_placement(session, ort_gpu.CUDA_EP, allow=True)
    finally:
        shutil.rmtree(folder)
    assert "node(s) run on the CPU (allow_cpu_placement is on)" in caplog.text


# -- INT8: what TensorRT gets -----------------------------------------------------------------------------

def _int8_manifest(target):
    manifest = load_artifact(None).manifest
    return dataclasses.replace(manifest, precision="int8", calibration={"target": target} if target else None)


@pytest.mark.parametrize("target", ["cpu", None])
def test_a_cpu_target_int8_artifact_is_refused_for_tensorrt(target, tmp_path):
    from clipscan.runtime.backends import tensorrt_native

    manifest = _int8_manifest(target)
    for backend, create in (("tensorrt", tensorrt_native.create), ("ort-tensorrt", ort_gpu.create_tensorrt_ep)):
        with pytest.raises(BackendError, match=f"backend '{backend}' runs TensorRT.*--target tensorrt"):
            create(tmp_path / "model.onnx", BackendOptions(cache_dir=str(tmp_path)), manifest)
    refuse_cpu_target_int8(_int8_manifest("tensorrt"), "tensorrt")   # the TensorRT target passes
    refuse_cpu_target_int8(load_artifact(None).manifest, "tensorrt")  # and so does a float artifact


@pytest.mark.slow
def test_the_calibration_target_is_read_from_real_int8_artifacts(tmp_path):
    """`clipscan calibrate --target X` writes what the refusal reads (the demo model, 32 images)."""
    from clipscan.cli import main
    from clipscan.export import demo_data
    from clipscan.runtime.backends import tensorrt_native

    images, _ = demo_data.detector_set(32, seed=13)
    (tmp_path / "images").mkdir()
    for i, img in enumerate(images):
        img.save(tmp_path / "images" / f"{i:03d}.png")
    made = {}
    for target in ("cpu", "tensorrt"):
        made[target] = tmp_path / f"int8_{target}.onnx"
        assert main(["calibrate", str(load_artifact(None).path), "--images", str(tmp_path / "images"), "-o",
                     str(made[target]), "--target", target, "--no-progress", "--no-cache"]) == 0
    cpu_target = load_artifact(made["cpu"])
    with pytest.raises(BackendError, match="calibrated for target 'cpu'.*--target tensorrt"):
        tensorrt_native.create(cpu_target.path, BackendOptions(cache_dir=str(tmp_path)), cpu_target.manifest)
    refuse_cpu_target_int8(load_artifact(made["tensorrt"]).manifest, "tensorrt")


# -- engine cache ------------------------------------------------------------------------------------------

def _key(**changes) -> EngineKey:
    base = dict(onnx_sha256="a" * 64, precision="fp32", profile=BatchProfile(1, 8, 16), tensorrt_version="10.13.3",
                gpu_name="NVIDIA H100", compute_capability="9.0", cuda_version="13")
    return EngineKey(**{**base, **changes})


def test_tf32_and_tensorrts_cuda_are_part_of_the_engine_key():
    assert _key().digest() != _key(tf32="on").digest() != _key(cuda_version="12").digest()
    assert _key().to_dict()["tf32"] == "off"


def test_concurrent_cold_builders_never_share_a_temporary_file(tmp_path):
    cache, key = EngineCache(tmp_path), _key()
    plans = [bytes([i]) * 200_000 for i in range(8)]
    threads = [threading.Thread(target=cache.store, args=("model", key, p)) for p in plans]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in cache.paths("model", key))
    loaded = cache.load("model", key)
    assert loaded is None or loaded in plans, "a plan and its sidecar match, or the plan is rebuilt"
    cache.store("model", key, plans[3])
    assert cache.load("model", key) == plans[3]
    assert json.loads(cache.paths("model", key)[1].read_text())["version_compatible"] is False


def test_an_interrupted_write_leaves_the_previous_file(tmp_path, monkeypatch):
    target = tmp_path / "timing-abc.cache"
    write_atomic(target, b"old")

    def fail(*_):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(KeyboardInterrupt):
        write_atomic(target, b"new")
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == [target.name]


def test_plans_of_two_tensorrt_versions_are_refused(tmp_path):
    from clipscan.triton.plans import Plan, plans_by_generation

    plans = []
    for cc, version in (("8.9", "10.13.3"), ("9.0", "11.4.0")):
        path = tmp_path / f"m-{cc}.plan"
        path.write_bytes(b"plan")
        key = {**_key(compute_capability=cc, tensorrt_version=version).to_dict()}
        path.with_suffix(".json").write_text(json.dumps({"key": key}))
        plans.append(Plan.from_file(path))
    with pytest.raises(ValueError, match="TensorRT 10.13.3.*11.4.0.*one TensorRT"):
        plans_by_generation(plans)


# -- stdout purity ---------------------------------------------------------------------------------------

QUIET_PROGRAM = r"""
import os, sys
from clipscan.runtime.backends.quiet import stdout_to_stderr
print("row 1")
with stdout_to_stderr():
    print("python noise")
    os.write(1, b"native noise\n")
print("row 2")
with stdout_to_stderr(discard=True):
    os.write(1, b"dropped\n")
print("row 3")
"""


def test_stdout_to_stderr_moves_python_and_native_writes():
    proc = subprocess.run([sys.executable, "-c", QUIET_PROGRAM], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["row 1", "row 2", "row 3"]
    assert proc.stderr.splitlines() == ["python noise", "native noise"]


SCAN_WITH_GPU_SESSIONS = r"""
import sys
from clipscan.cli import main
from clipscan.runtime.backends import ort_gpu
ort_gpu.provider_unavailable_reason = lambda provider: None   # make auto create both GPU EP sessions for real
sys.exit(main(["scan", sys.argv[1]]))
"""


@pytest.mark.slow
def test_onnxruntime_gpu_on_a_cpu_machine(ort_gpu_dir):
    """The bar, with the real onnxruntime-gpu wheel: no GPU backend is called available, each names what it
    lacks with the install command; a scan writes only rows on stdout even when ORT prints its banner."""
    env = with_ort_gpu(ort_gpu_dir)
    backends = subprocess.run([sys.executable, "-m", "clipscan", "backends"], capture_output=True, text=True,
                              env=env, timeout=300)
    assert backends.returncode == 0, backends.stderr[-3000:]
    lines = {line.split()[0]: line for line in backends.stdout.splitlines() if line.startswith("  ")}
    for name in ("tensorrt", "ort-tensorrt", "cuda"):
        assert "unavailable:" in lines[name], lines[name]
        if not GPU_HERE:
            assert "no NVIDIA GPU driver" in lines[name], lines[name]
    cuda = _wheel_cuda_major(ort_gpu_dir)
    assert f"missing libcublasLt.so.{cuda}, libcublas.so.{cuda}, libcurand.so.10" in lines["cuda"]
    assert "install with pip install 'onnxruntime-gpu[cuda,cudnn]'" in lines["cuda"]
    assert "libnvinfer.so.10, libnvonnxparser.so.10: install with pip install 'tensorrt-cu13>=10.13,<11'" \
        in lines["ort-tensorrt"]
    assert "pip install 'clipscan[tensorrt]'" in lines["tensorrt"]

    scan = subprocess.run([sys.executable, "-m", "clipscan", "scan", str(SAMPLES)], capture_output=True,
                          text=True, env=env, timeout=300)
    assert scan.returncode == 0, scan.stderr[-3000:]
    rows = [json.loads(line) for line in scan.stdout.splitlines()]
    assert len(rows) == len(list(SAMPLES.iterdir())) and {r["backend"] for r in rows} == {"onnxruntime-cpu"}

    forced = subprocess.run([sys.executable, "-c", SCAN_WITH_GPU_SESSIONS, str(SAMPLES)], capture_output=True,
                            text=True, env=env, timeout=300)
    assert forced.returncode == 0, forced.stderr[-3000:]
    assert "EP Error" in forced.stderr, "ORT printed its fallback banner (on stderr, where it was sent)"
    rows = [json.loads(line) for line in forced.stdout.splitlines()]   # every stdout line is a row
    assert len(rows) == len(list(SAMPLES.iterdir())) and {r["backend"] for r in rows} == {"onnxruntime-cpu"}
    # the CPU fallback ORT attempted is an error, never a session that quietly runs on the CPU
    assert "backend ort-tensorrt skipped" in forced.stderr and "but also disabled fallback to" in forced.stderr
    assert "backend cuda skipped: asked ONNX Runtime for CUDAExecutionProvider; the session came back on " \
        "['CPUExecutionProvider']" in forced.stderr


FAKE_TENSORRT = "__version__ = '11.4.0.106'\n"


@pytest.mark.slow
def test_the_tensorrt_ep_refuses_another_tensorrt_major(ort_gpu_dir, tmp_path):
    """onnxruntime-gpu's TensorRT EP links TensorRT 10: an installed TensorRT 11 is refused in one sentence that
    names what to install. (A stand-in `tensorrt` module with TensorRT 11's version: the real one needs a GPU.)"""
    fake = tmp_path / "fake_trt"
    (fake / "tensorrt").mkdir(parents=True)
    (fake / "tensorrt" / "__init__.py").write_text(FAKE_TENSORRT)
    env = with_ort_gpu(ort_gpu_dir)
    env["PYTHONPATH"] = f"{ort_gpu_dir}{os.pathsep}{fake}"
    proc = subprocess.run([sys.executable, "-m", "clipscan", "backends"], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("  ort-tensorrt"))
    assert ("TensorRT EP links TensorRT 10 (libnvinfer.so.10) but the installed tensorrt is 11.4.0.106: "
            "pip install 'tensorrt-cu13>=10.13,<11' for this backend, or use --backend tensorrt") in line
    assert "missing libnvinfer.so.10" not in line, "the mismatch is said once"


# -- the extras and the docs say what the tables say ------------------------------------------------------

def test_extras_and_docs_state_the_gpu_facts_of_the_tables():
    import tomllib

    from .conftest import REPO

    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    requirement = re.compile(r"'([^']+)'")
    assert requirement.search(gpu_libs.ORT_GPU_LIBS_PIP).group(1) in " ".join(extras["gpu"]).replace(">=1.31", "")
    assert requirement.search(gpu_libs.TENSORRT_10_PIP).group(1) in extras["tensorrt"]
    page = (REPO / "docs" / "guides" / "backends.md").read_text()
    cuda = ort_gpu.DEFAULT_CUDA_MAJOR
    assert f"**CUDA {cuda}**" in page and f"**{gpu_libs.MIN_DRIVER[cuda]}** branch" in page
    for backend in ("cuda", "ort-tensorrt"):
        for soname, _ in gpu_libs.libraries_for(backend, cuda):
            assert f"`{soname}`" in page, soname
    assert f"TensorRT **{gpu_libs.ORT_TRT_EP_TENSORRT_MAJOR}**" in page


# -- TensorRT's own runtime: device and memory handling (stand-ins for tensorrt and the CUDA runtime) -------

class _FakeCudart:
    """Records the CUDA runtime calls TensorrtBackend makes; host allocations are real memory (the backend
    views them with numpy); the device allocation number `fail_malloc_at` fails."""

    def __init__(self, fail_malloc_at: int | None = None):
        import ctypes

        self.ctypes, self.calls, self.buffers, self.mallocs, self.fail_at = ctypes, [], {}, 0, fail_malloc_at

    def cudaSetDevice(self, i):
        self.calls.append(("setdevice", i))
        return (0,)

    def cudaStreamCreate(self):
        self.calls.append(("stream",))
        return (0, 77)

    def cudaMallocHost(self, n):
        buf = self.ctypes.create_string_buffer(n)
        ptr = self.ctypes.addressof(buf)
        self.buffers[ptr] = buf
        self.calls.append(("mallochost", ptr))
        return (0, ptr)

    def cudaMalloc(self, n):
        self.mallocs += 1
        if self.mallocs == self.fail_at:
            return (2, None)   # cudaErrorMemoryAllocation
        self.calls.append(("malloc", 1000 + self.mallocs))
        return (0, 1000 + self.mallocs)

    def cudaFreeHost(self, ptr):
        self.calls.append(("freehost", ptr))

    def cudaFree(self, ptr):
        self.calls.append(("free", ptr))

    def cudaStreamDestroy(self, s):
        self.calls.append(("streamdestroy", s))


def _fake_tensorrt():
    class Engine:
        num_io_tensors = 2
        names = ["pixels", "p_generated"]

        def get_tensor_name(self, i):
            return self.names[i]

        def get_tensor_mode(self, name):
            return "in" if name == "pixels" else "out"

        def get_tensor_shape(self, name):
            return (-1, 3, 224, 224) if name == "pixels" else (-1,)

        def get_tensor_dtype(self, name):
            return "f32"

        def create_execution_context(self):
            return types.SimpleNamespace(set_tensor_address=lambda name, ptr: None)

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, plan):
            return Engine()

    return types.SimpleNamespace(__version__="10.13.3.9", Logger=type("L", (), {"WARNING": 1, "__init__":
                                 lambda self, level: None}), Runtime=Runtime,
                                 TensorIOMode=types.SimpleNamespace(INPUT="in"), nptype=lambda dtype: np.float32)


@pytest.mark.parametrize("fail_malloc_at", [None, 2])
def test_the_tensorrt_backend_uses_its_device_and_frees_a_failed_start(fail_malloc_at, tmp_path, monkeypatch, caplog):
    from clipscan.runtime.artifact import file_sha256
    from clipscan.runtime.backends import cuda_device, tensorrt_native

    artifact = load_artifact(None)
    fake_trt, cudart = _fake_tensorrt(), _FakeCudart(fail_malloc_at)
    monkeypatch.setitem(sys.modules, "tensorrt", fake_trt)
    monkeypatch.setattr(cuda_device, "_cudart", lambda: cudart)
    monkeypatch.setattr(cuda_device, "cuda_device", lambda i: cuda_device.CudaDevice(i, "NVIDIA H100", "9.0", "13.0",
                                                                                      "13.0"))
    options = BackendOptions(batch_size=8, max_batch=16, device_id=1, cache_dir=str(tmp_path))
    key = EngineKey(onnx_sha256=file_sha256(artifact.path), precision=artifact.manifest.precision,
                    profile=BatchProfile(1, 8, 16), tensorrt_version="10.13.3.9", gpu_name="NVIDIA H100",
                    compute_capability="9.0", cuda_version="not-from-pip", tf32="off")
    EngineCache(tmp_path / "tensorrt").store(artifact.path.stem, key, b"a cached plan")
    caplog.set_level(logging.INFO, logger="clipscan.backends")
    if fail_malloc_at is None:
        backend = tensorrt_native.create(artifact.path, options, artifact.manifest)
        assert backend.plan_from_cache and backend.name == "tensorrt[tf32=off]"
        assert "loaded the cached TensorRT engine" in caplog.text, "the cached plan was used, not rebuilt"
        backend.close()
    else:
        with pytest.raises(BackendError, match="a CUDA call failed"):
            tensorrt_native.create(artifact.path, options, artifact.manifest)
    calls = cudart.calls
    assert calls[0] == ("setdevice", 1), "device 1 is made current before anything is created"
    allocated = {c[1] for c in calls if c[0] in ("mallochost", "malloc")}
    freed = {c[1] for c in calls if c[0] in ("freehost", "free")}
    assert allocated and freed == allocated, "every host and device buffer is freed (on close, or a failed start)"
    assert ("streamdestroy", 77) in calls
