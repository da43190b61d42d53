"""Backends behind one protocol, imported lazily, chosen by an explicit chain.

`auto` tries each backend of AUTO_CHAIN in order (TensorRT's own runtime, ONNX
Runtime's TensorRT EP, its CUDA EP, then the CPU) and logs why each one it skips was
skipped; OpenVINO is only used when named (`--backend openvino`); an explicitly
named backend that cannot start is an error, never a silent
fallback; `--no-fallback` makes `auto` stop at the first failure. The name a backend
reports is what actually ran (GPU sessions are checked with get_providers()).
"""
from __future__ import annotations

import logging
from pathlib import Path

from ..errors import BackendError
from .base import Backend, BackendEntry, BackendOptions

log = logging.getLogger("clipscan.backends")


def registry() -> dict[str, BackendEntry]:
    # the modules are cheap: onnxruntime, tensorrt and cuda-python are imported only when probed or created
    from . import gpu_libs, openvino_cpu, ort_cpu, ort_gpu, tensorrt_native

    entries = [
        BackendEntry("tensorrt", "TensorRT runtime, engine cache", f"{gpu_libs.TENSORRT_PIP} (and a CUDA GPU)",
                     tensorrt_native.unavailable_reason, tensorrt_native.create, runtime="tensorrt"),
        BackendEntry("ort-tensorrt", "ONNX Runtime, TensorrtExecutionProvider",
                     f"pip install 'clipscan[gpu]' and {gpu_libs.TENSORRT_10_PIP} (and a CUDA GPU)",
                     lambda: ort_gpu.provider_unavailable_reason(ort_gpu.TRT_EP), ort_gpu.create_tensorrt_ep),
        BackendEntry("cuda", "ONNX Runtime, CUDAExecutionProvider", "pip install 'clipscan[gpu]' (and a CUDA GPU)",
                     lambda: ort_gpu.provider_unavailable_reason(ort_gpu.CUDA_EP), ort_gpu.create_cuda),
        BackendEntry("cpu", "ONNX Runtime, CPUExecutionProvider",
                     "pip install clipscan (onnxruntime is a base dependency)",
                     ort_cpu.unavailable_reason, ort_cpu.create),
        BackendEntry("openvino", "OpenVINO CPU plugin, float parts in f32 (never chosen by auto)",
                     "pip install 'clipscan[openvino]'", openvino_cpu.unavailable_reason, openvino_cpu.create,
                     runtime="openvino"),
    ]
    return {e.name: e for e in entries}


AUTO_CHAIN = ("tensorrt", "ort-tensorrt", "cuda", "cpu")
AUTO_SUMMARY = f"tries {', '.join(AUTO_CHAIN)} in order, logging why it skips each (the others only when named)"


def backend_choices() -> dict[str, str]:
    """What `backend=` (and every --backend) takes, each with its one-line summary: auto, then registry()."""
    return {"auto": AUTO_SUMMARY, **{name: entry.summary for name, entry in registry().items()}}


def backend_status() -> list[tuple[str, str, str | None]]:
    """(name, summary, reason it is unavailable or None) for every known backend."""
    return [(e.name, e.summary, e.unavailable_reason()) for e in registry().values()]


def create_backend(model_path: Path, requested: str = "auto", *, fallback: bool = True,
                   options: BackendOptions | None = None, manifest=None) -> Backend:
    entries = registry()
    if requested != "auto" and requested not in entries:
        raise BackendError(f"unknown backend {requested!r}; known backends: {list(backend_choices())} "
                           "(`clipscan backends` lists them with their status)")
    options = options or BackendOptions()
    chain = AUTO_CHAIN if requested == "auto" else (requested,)
    if requested != "auto" and fallback:
        log.debug("backend %r requested explicitly: no fallback", requested)
    failures: list[str] = []
    for name in chain:
        entry = entries[name]
        reason = entry.unavailable_reason()
        absent = reason is not None  # not installed / no device: normal on a CPU machine
        if not absent:
            try:
                backend = entry.create(model_path, options, manifest)
            except BackendError as e:
                reason = str(e)
            else:
                log.info("backend: %s (%s)", backend.name, entry.summary)
                return backend
        if requested != "auto":
            raise BackendError(f"backend {name!r} was requested but cannot start: {reason}. "
                               f"Install with: {entry.install_hint}, or use --backend auto")
        failures.append(f"{name}: {reason}")
        # a GPU backend that is present but failed to start deserves a warning; an absent one a note
        log.log(logging.INFO if absent else logging.WARNING, "backend %s skipped: %s", name, reason)
        if not fallback:
            break
    raise BackendError("no backend could run the model; tried " + "; ".join(failures))


__all__ = ["Backend", "BackendOptions", "backend_choices", "backend_status", "create_backend", "registry",
           "AUTO_CHAIN", "AUTO_SUMMARY"]
