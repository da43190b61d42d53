"""ONNX Runtime on the GPU: the TensorRT execution provider and the CUDA execution provider.

ONNX Runtime silently runs a session on the CPU when the CUDA or TensorRT libraries
fail to load. These backends ask for exactly one GPU provider (plus nothing else)
and check `get_providers()` afterwards: a session that did not get its GPU provider
is an error, which the fallback chain logs and the user can see.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..errors import BackendError
from . import gpu_libs, placement
from .base import BackendOptions, tf32_tag
from .engine_cache import BatchProfile
from .quiet import stdout_to_stderr
from .ort_cpu import OrtSessionBackend

TRT_EP, CUDA_EP = "TensorrtExecutionProvider", "CUDAExecutionProvider"


def onnxruntime_flavour_problem() -> str | None:
    """onnxruntime and onnxruntime-gpu install the same module: both at once is a broken mix."""
    from importlib import metadata

    installed = []
    for dist in ("onnxruntime", "onnxruntime-gpu"):
        try:
            installed.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            pass
    if len(installed) == 2:
        return (f"both {installed[0]} and {installed[1]} are installed and share one 'onnxruntime' module; keep "
                "one: pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu")
    return None


BACKEND_OF = {TRT_EP: "ort-tensorrt", CUDA_EP: "cuda"}


def provider_unavailable_reason(provider: str) -> str | None:
    """Why `provider` cannot run here, naming every missing piece (provider, GPU, driver, library) with its fix;
    None when it can be tried. A provider compiled into onnxruntime-gpu is not enough."""
    try:
        import onnxruntime as ort
    except ImportError as e:
        return f"onnxruntime cannot be imported ({e})"
    available = ort.get_available_providers()
    if provider not in available:
        return (f"this onnxruntime build ({ort.__version__}) has no {provider} (it has {available}); "
                "install the GPU build: pip install 'clipscan[gpu]'")
    pieces = []
    gpu = gpu_libs.nvidia_gpu()
    cuda = gpu_libs.onnxruntime_cuda_major() or DEFAULT_CUDA_MAJOR
    pieces.append(gpu.problem or gpu.driver_problem(cuda, f"onnxruntime-gpu {ort.__version__}"))
    gpu_libs.preload_onnxruntime_libraries()
    needed = gpu_libs.libraries_for(BACKEND_OF[provider], cuda)
    if provider == TRT_EP:
        mismatch = tensorrt_major_problem(ort.__version__)
        if mismatch:
            pieces.append(mismatch)
            needed = [(lib, pip) for lib, pip in needed if pip != gpu_libs.TENSORRT_10_PIP]
    pieces.append(gpu_libs.describe_missing(gpu_libs.missing_libraries(needed)))
    return "; ".join(p for p in pieces if p) or None


DEFAULT_CUDA_MAJOR = 13   # what onnxruntime-gpu targets when its build information does not say


def tensorrt_major_problem(ort_version: str) -> str | None:
    """The ONNX Runtime TensorRT EP links one TensorRT major; a pip-installed tensorrt of another major is
    refused in one sentence naming what to install (importing the right one puts its libraries in reach)."""
    trt, _ = gpu_libs.tensorrt_module()
    want = gpu_libs.ORT_TRT_EP_TENSORRT_MAJOR
    if trt is None or gpu_libs.major(trt.__version__) == want:
        return None
    return (f"onnxruntime-gpu {ort_version}'s TensorRT EP links TensorRT {want} (libnvinfer.so.{want}) but the "
            f"installed tensorrt is {trt.__version__}: {gpu_libs.TENSORRT_10_PIP} for this backend, or use "
            f"--backend tensorrt, which runs TensorRT {gpu_libs.major(trt.__version__)} itself")


def tensorrt_ep_precision(precision: str) -> dict:
    """The TensorRT EP's precision switches for an artifact of `precision`, here and in Triton's configs.
    Precision is in the graph (FP16 weights, or Q/DQ nodes for INT8): FP16 is never switched on, so TensorRT
    does not lower the LayerNorm, Softmax and tail an FP16 export kept in FP32; INT8 is on for Q/DQ graphs."""
    return {"trt_fp16_enable": False, "trt_int8_enable": precision == "int8"}


def tensorrt_ep_options(input_name: str, chw: tuple[int, int, int], precision: str, options: BackendOptions) -> dict:
    """TensorRT EP settings: caches under clipscan's cache folder, an explicit batch profile, precision from the graph."""
    # engines built with and without TF32 differ: they never share a cache folder
    cache = Path(options.cache_dir) / "ort-tensorrt" / f"tf32-{'on' if options.tf32 else 'off'}"
    profile = BatchProfile.for_batch_size(options.batch_size, options.max_batch)
    shapes = {k: f"{input_name}:" + "x".join(str(d) for d in v) for k, v in profile.shapes(chw).items()}
    return {
        "device_id": options.device_id,
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(cache),
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": str(cache),
        "trt_max_workspace_size": options.workspace_bytes,
        **tensorrt_ep_precision(precision),
        "trt_profile_min_shapes": shapes["min"],
        "trt_profile_opt_shapes": shapes["opt"],
        "trt_profile_max_shapes": shapes["max"],
    }


class OrtGpuBackend(OrtSessionBackend):
    """One ONNX Runtime session on one GPU provider; refuses to run if ORT put it on the CPU."""

    def __init__(self, model_path: Path, provider: str, provider_options: dict, name: str,
                 options: BackendOptions = BackendOptions()):
        if provider_options.get("trt_engine_cache_path"):
            Path(provider_options["trt_engine_cache_path"]).mkdir(parents=True, exist_ok=True)
        self._allow_cpu_placement = bool(options.allow_cpu_placement)
        self._profile_dir = None
        gpu_libs.preload_onnxruntime_libraries()
        try:
            # the CPU threads and spinning of `options` are the CPU backend's; a GPU session keeps ORT's defaults
            super().__init__(model_path, provider, provider_options, name=name,
                             mismatch_hint=" (its CUDA/TensorRT libraries did not load: `clipscan backends` names "
                                           "what is missing)")
        finally:
            if self._profile_dir is not None:
                shutil.rmtree(self._profile_dir, ignore_errors=True)

    def _configure(self, so, provider: str) -> None:
        if provider == TRT_EP:   # nodes TensorRT cannot take must not go to the CPU quietly
            placement.forbid_cpu_fallback(so, provider, self._allow_cpu_placement)
        else:                    # the CUDA EP: a profiled warm-up says where each node ran
            self._profile_dir = placement.start_profile(so)

    def _create_session(self, ort, model_path: str, so, providers: list):
        # ONNX Runtime prints its "EP Error ... Falling back" banner on stdout: keep stdout for rows
        with stdout_to_stderr():
            return ort.InferenceSession(model_path, so, providers=providers)

    def _check_session(self, provider: str) -> None:
        if self._profile_dir is not None:
            placement.check_compute_placement(self.session, provider, self._allow_cpu_placement)


def cuda_ep_options(options: BackendOptions) -> dict:
    return {"device_id": options.device_id, "use_tf32": int(bool(options.tf32))}


TF32_OVERRIDE_ENV = "NVIDIA_TF32_OVERRIDE"


def tensorrt_ep_tf32(options: BackendOptions) -> None:
    """The ONNX Runtime TensorRT EP has no TF32 option; NVIDIA's libraries (TensorRT, cuBLAS, cuDNN) read
    NVIDIA_TF32_OVERRIDE=0 and then never use TF32. It is process-wide, so it is set only to turn TF32 off,
    and an existing setting of the user's is refused when it contradicts the asked policy."""
    current = os.environ.get(TF32_OVERRIDE_ENV)
    if options.tf32:
        if current == "0":
            raise BackendError(f"TF32 was asked for, but {TF32_OVERRIDE_ENV}=0 is set in the environment and "
                               "forbids it: unset it, or leave TF32 off")
        return
    os.environ[TF32_OVERRIDE_ENV] = "0"


def create_cuda(model_path: Path, options: BackendOptions, manifest=None) -> OrtGpuBackend:
    return OrtGpuBackend(model_path, CUDA_EP, cuda_ep_options(options), "onnxruntime-cuda" + tf32_tag(options),
                         options)


def create_tensorrt_ep(model_path: Path, options: BackendOptions, manifest=None) -> OrtGpuBackend:
    if manifest is None:
        raise BackendError("the ONNX Runtime TensorRT backend needs the model's manifest (input name and size)")
    from .int8_target import refuse_cpu_target_int8, refuse_own_size

    refuse_cpu_target_int8(manifest, "ort-tensorrt")
    refuse_own_size(manifest, "ort-tensorrt")
    gpu_libs.tensorrt_module()   # a pip-installed TensorRT 10 puts its libraries in reach when imported
    chw = (3, *manifest.input.size)
    opts = tensorrt_ep_options(manifest.input.name, chw, manifest.precision, options)
    tensorrt_ep_tf32(options)
    return OrtGpuBackend(model_path, TRT_EP, opts, "onnxruntime-tensorrt" + tf32_tag(options), options)
