"""What each GPU backend needs on this machine, as data, and the probes that check it.

A GPU provider compiled into onnxruntime-gpu says nothing about whether it can run: it needs an
NVIDIA driver with a device, a driver new enough for the CUDA major the build targets, and the
shared libraries its provider library links. `BACKEND_LIBRARIES` lists those libraries per
backend (checked against the real provider libraries of the onnxruntime-gpu wheel by the tests),
each with the pip command that installs it; `missing_pieces` reports every piece that is absent,
so `clipscan backends` and the fallback chain name it instead of calling a backend available.
The GPU is found through the driver API (libcuda.so.1) with ctypes: no CUDA package is needed to
ask, and nothing here imports torch.
"""
from __future__ import annotations

import ctypes
import functools
import os
from dataclasses import dataclass

from .quiet import stdout_to_stderr

# What installs each piece from the package index. The CUDA EP's libraries (cuBLAS, cuRAND, the CUDA
# runtime, cuDNN 9) come with onnxruntime-gpu's own extras; the ONNX Runtime TensorRT EP links TensorRT 10.
ORT_GPU_LIBS_PIP = "pip install 'onnxruntime-gpu[cuda,cudnn]'"
TENSORRT_10_PIP = "pip install 'tensorrt-cu13>=10.13,<11'"
TENSORRT_PIP = "pip install 'clipscan[tensorrt]'"
DRIVER_HINT = "install the NVIDIA driver (https://www.nvidia.com/drivers; on a container, run it with --gpus)"

# The TensorRT major the ONNX Runtime TensorRT EP links (libnvinfer.so.10 in onnxruntime-gpu 1.2x-1.31).
ORT_TRT_EP_TENSORRT_MAJOR = 10

# backend -> (library soname, pip command that ships it); "{cuda}" is the CUDA major the build targets.
# The driver library libcuda.so.1 is not listed: it comes with the driver, checked by `nvidia_gpu`.
BACKEND_LIBRARIES: dict[str, tuple[tuple[str, str], ...]] = {
    "cuda": (
        ("libcublasLt.so.{cuda}", ORT_GPU_LIBS_PIP),
        ("libcublas.so.{cuda}", ORT_GPU_LIBS_PIP),
        ("libcurand.so.10", ORT_GPU_LIBS_PIP),
        ("libcudart.so.{cuda}", ORT_GPU_LIBS_PIP),
        ("libcudnn.so.9", ORT_GPU_LIBS_PIP),   # not linked: the CUDA EP opens it at run time, and needs it
    ),
    "ort-tensorrt": (
        ("libcublas.so.{cuda}", ORT_GPU_LIBS_PIP),
        ("libcudart.so.{cuda}", ORT_GPU_LIBS_PIP),
        ("libcudnn.so.9", ORT_GPU_LIBS_PIP),
        (f"libnvinfer.so.{ORT_TRT_EP_TENSORRT_MAJOR}", TENSORRT_10_PIP),
        (f"libnvonnxparser.so.{ORT_TRT_EP_TENSORRT_MAJOR}", TENSORRT_10_PIP),
    ),
    # TensorRT's own runtime: the tensorrt module brings its libraries (checked by importing it) and
    # cuda-python links the CUDA runtime statically; only the driver is needed besides.
    "tensorrt": (),
}

# The lowest Linux driver branch that runs each CUDA major (CUDA's release notes, "minimum required driver").
MIN_DRIVER = {12: "525", 13: "580"}


def libraries_for(backend: str, cuda_major: int) -> list[tuple[str, str]]:
    """The (soname, pip command) pairs `backend` needs for a build that targets CUDA `cuda_major`."""
    return [(soname.format(cuda=cuda_major), pip) for soname, pip in BACKEND_LIBRARIES[backend]]


@dataclass(frozen=True)
class GpuProbe:
    devices: int                 # CUDA devices the driver reports (0 when there is no usable driver)
    driver_cuda: int | None      # the newest CUDA version the driver supports, as 1000*major + 10*minor
    problem: str | None          # why no GPU can be used here, or None

    def driver_problem(self, cuda_major: int, what: str) -> str | None:
        """Why `what`, built for CUDA `cuda_major`, cannot run on this driver, or None."""
        if self.driver_cuda is None or self.driver_cuda // 1000 >= cuda_major:
            return None
        have = f"{self.driver_cuda // 1000}.{(self.driver_cuda % 1000) // 10}"
        return (f"the NVIDIA driver supports CUDA up to {have}; {what} is built for CUDA {cuda_major}, which needs "
                f"driver {MIN_DRIVER.get(cuda_major, 'newer')} or later: update the driver")


@functools.lru_cache(maxsize=None)
def nvidia_gpu() -> GpuProbe:
    """Ask the NVIDIA driver (libcuda.so.1, through ctypes) how many CUDA devices there are."""
    driver_dir = os.path.isdir("/proc/driver/nvidia")
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError as e:
        where = "" if driver_dir else "/proc/driver/nvidia is absent and "
        return GpuProbe(0, None, f"no NVIDIA GPU driver ({where}libcuda.so.1 cannot be loaded: {e}); {DRIVER_HINT}")
    err = cuda.cuInit(0)
    if err != 0:
        return GpuProbe(0, None, f"the NVIDIA driver has no usable GPU (cuInit returned CUDA error {err}: "
                                 "100 is no device, 999 an unknown driver state); check nvidia-smi")
    version, count = ctypes.c_int(0), ctypes.c_int(0)
    driver_cuda = version.value if cuda.cuDriverGetVersion(ctypes.byref(version)) == 0 else None
    err = cuda.cuDeviceGetCount(ctypes.byref(count))
    if err != 0 or count.value == 0:
        return GpuProbe(0, driver_cuda, f"the NVIDIA driver reports no CUDA device (cuDeviceGetCount: error {err}, "
                                        f"{count.value} devices); check nvidia-smi and CUDA_VISIBLE_DEVICES")
    return GpuProbe(count.value, driver_cuda, None)


def visible_gpu() -> bool:
    """Whether this machine shows an NVIDIA GPU at all (driver files or the tool), whatever the libraries say."""
    import shutil

    return os.path.isdir("/proc/driver/nvidia") or shutil.which("nvidia-smi") is not None


def loadable(soname: str) -> bool:
    try:
        ctypes.CDLL(soname)
    except OSError:
        return False
    return True


def missing_libraries(needed: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The (soname, pip command) pairs the dynamic loader cannot load in this process."""
    return [(soname, pip) for soname, pip in needed if not loadable(soname)]


def describe_missing(missing: list[tuple[str, str]]) -> str:
    """'missing libcublas.so.13, libcudnn.so.9: install with pip install ...', one group per install command."""
    by_pip: dict[str, list[str]] = {}
    for soname, pip in missing:
        by_pip.setdefault(pip, []).append(soname)
    return "; ".join(f"missing {', '.join(names)}: install with {pip}" for pip, names in by_pip.items())


@functools.lru_cache(maxsize=None)
def preload_onnxruntime_libraries() -> None:
    """Load the CUDA and cuDNN libraries that pip installed (NVIDIA's wheels are not on the loader path),
    once per process, before a CUDA or TensorRT EP session or a library probe. What it prints about
    libraries it cannot find is dropped: `missing_libraries` reports them, by name, with the fix."""
    import onnxruntime as ort

    preload = getattr(ort, "preload_dlls", None)   # onnxruntime-gpu >= 1.21
    if preload is None:
        return
    with stdout_to_stderr(discard=True):
        try:
            preload()
        except Exception:  # noqa: BLE001 - a probe: whatever did not load is reported by missing_libraries
            pass


def onnxruntime_cuda_major() -> int | None:
    """The CUDA major this onnxruntime build targets (onnxruntime-gpu records it; None for a CPU build)."""
    try:
        from onnxruntime.capi import build_and_package_info as info
    except ImportError:
        return None
    version = getattr(info, "cuda_version", None)
    try:
        return int(str(version).split(".")[0]) if version else None
    except ValueError:
        return None


def tensorrt_module() -> tuple[object | None, str | None]:
    """(the imported tensorrt module, None) or (None, why it cannot be imported). Importing it loads the
    TensorRT libraries that pip installed, which the ONNX Runtime TensorRT EP then finds."""
    try:
        with stdout_to_stderr():
            import tensorrt
    except ImportError as e:
        return None, f"the tensorrt package is not installed ({e})"
    except Exception as e:  # noqa: BLE001 - its shared libraries can fail to load in many ways
        return None, f"tensorrt cannot be imported ({type(e).__name__}: {e})"
    return tensorrt, None


def major(version: str) -> int | None:
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        return None


def tensorrt_cuda_major(trt_version: str) -> int | None:
    """The CUDA major of the installed TensorRT, from its pip distribution's name (tensorrt-cu13-libs,
    tensorrt_cu12_bindings, ...). None for a TensorRT that did not come from pip (a system or Jetson install)."""
    import re
    from importlib import metadata

    for dist in metadata.distributions():
        name = (dist.metadata.get("Name") or "").lower().replace("_", "-")
        m = re.fullmatch(r"tensorrt-cu(\d+)(-libs|-bindings)?", name)
        if m and dist.version.split(".")[:3] == str(trt_version).split(".")[:3]:
            return int(m.group(1))
    return None
