"""ONNX Runtime on the GPU: the TensorRT execution provider and the CUDA execution provider.

ONNX Runtime silently runs a session on the CPU when the CUDA or TensorRT libraries
fail to load. These backends ask for exactly one GPU provider (plus nothing else)
and check `get_providers()` afterwards: a session that did not get its GPU provider
is an error, which the fallback chain logs and the user can see.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import BackendError
from .base import BackendOptions
from .engine_cache import BatchProfile
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


def provider_unavailable_reason(provider: str) -> str | None:
    try:
        import onnxruntime as ort
    except ImportError as e:
        return f"onnxruntime cannot be imported ({e})"
    available = ort.get_available_providers()
    if provider not in available:
        return (f"this onnxruntime build ({ort.__version__}) has no {provider} (it has {available}); "
                "install the GPU build: pip install 'clipscan[gpu]'")
    return None


def tensorrt_ep_options(input_name: str, chw: tuple[int, int, int], precision: str, options: BackendOptions) -> dict:
    """TensorRT EP settings: caches under clipscan's cache folder, an explicit batch profile, precision from the graph."""
    cache = Path(options.cache_dir) / "ort-tensorrt"
    profile = BatchProfile.for_batch_size(options.batch_size, options.max_batch)
    shapes = {k: f"{input_name}:" + "x".join(str(d) for d in v) for k, v in profile.shapes(chw).items()}
    return {
        "device_id": options.device_id,
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(cache),
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": str(cache),
        "trt_max_workspace_size": options.workspace_bytes,
        # precision is in the graph: FP16 weights or Q/DQ nodes; never let TensorRT lower FP32 layers itself
        "trt_fp16_enable": False,
        "trt_int8_enable": precision == "int8",
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
        # the CPU threads and spinning of `options` are the CPU backend's; a GPU session keeps ORT's defaults
        super().__init__(model_path, provider, provider_options, name=name,
                         mismatch_hint=" (its CUDA/TensorRT libraries did not load: check the CUDA, cuDNN and "
                                       "TensorRT versions this onnxruntime-gpu needs)")


def create_cuda(model_path: Path, options: BackendOptions, manifest=None) -> OrtGpuBackend:
    return OrtGpuBackend(model_path, CUDA_EP, {"device_id": options.device_id}, "onnxruntime-cuda", options)


def create_tensorrt_ep(model_path: Path, options: BackendOptions, manifest=None) -> OrtGpuBackend:
    if manifest is None:
        raise BackendError("the ONNX Runtime TensorRT backend needs the model's manifest (input name and size)")
    chw = (3, *manifest.input.size)
    opts = tensorrt_ep_options(manifest.input.name, chw, manifest.precision, options)
    return OrtGpuBackend(model_path, TRT_EP, opts, "onnxruntime-tensorrt", options)
