"""What the CUDA device is, through cuda-python (imported lazily), for cache keys and availability."""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import BackendError, MissingExtraError


@dataclass(frozen=True)
class CudaDevice:
    index: int
    name: str
    compute_capability: str
    cuda_runtime: str
    driver: str


def _cudart():
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError as e:
            raise MissingExtraError("TensorRT's native backend", "cuda-python", "tensorrt") from e
    return cudart


def check(result):
    """cuda-python returns (error, value...): raise on error, give the value(s)."""
    err, *values = result
    if int(err) != 0:
        raise BackendError(f"a CUDA call failed: {err}; check the NVIDIA driver (nvidia-smi) and CUDA_VISIBLE_DEVICES")
    return values[0] if len(values) == 1 else tuple(values)


def cuda_device(index: int = 0) -> CudaDevice:
    cudart = _cudart()
    count = check(cudart.cudaGetDeviceCount())
    if count <= index:
        fix = f"pick one of 0..{count - 1}" if count else "run on a machine with an NVIDIA GPU, or choose a CPU backend"
        raise BackendError(f"CUDA device {index} was asked for, but {count} CUDA device(s) are visible; {fix}")
    props = check(cudart.cudaGetDeviceProperties(index))
    name = props.name.decode(errors="replace").rstrip("\x00") if isinstance(props.name, bytes) else str(props.name)
    return CudaDevice(index, name, f"{props.major}.{props.minor}", _version(check(cudart.cudaRuntimeGetVersion())),
                      _version(check(cudart.cudaDriverGetVersion())))


def _version(v: int) -> str:
    return f"{v // 1000}.{(v % 1000) // 10}"


def cuda_unavailable_reason(index: int = 0) -> str | None:
    try:
        cuda_device(index)
    except Exception as e:
        return f"no usable CUDA device ({e})"
    return None
