"""Backends behind one protocol, imported lazily, chosen by an explicit chain.

`auto` tries each backend of AUTO_CHAIN in order and logs why each one it skips was
skipped; an explicitly named backend that cannot start is an error, never a silent
fallback. GPU backends (TensorRT, ONNX Runtime CUDA/TensorRT EPs) join the chain
in a later release; today the chain is the CPU.
"""
from __future__ import annotations

import logging
from pathlib import Path

from ..errors import BackendError
from .base import Backend, BackendEntry, BackendOptions

log = logging.getLogger("clipscan.backends")


def _ort_cpu_entry() -> BackendEntry:
    from . import ort_cpu  # cheap: onnxruntime itself is imported only when probed or created

    return BackendEntry(
        name="cpu",
        summary="ONNX Runtime, CPUExecutionProvider",
        install_hint="pip install clipscan (onnxruntime is a base dependency)",
        unavailable_reason=ort_cpu.unavailable_reason,
        create=ort_cpu.create,
    )


def registry() -> dict[str, BackendEntry]:
    entries = [_ort_cpu_entry()]
    return {e.name: e for e in entries}


AUTO_CHAIN = ("cpu",)


def backend_status() -> list[tuple[str, str, str | None]]:
    """(name, summary, reason it is unavailable or None) for every known backend."""
    return [(e.name, e.summary, e.unavailable_reason()) for e in registry().values()]


def create_backend(model_path: Path, requested: str = "auto", *, fallback: bool = True,
                   options: BackendOptions = BackendOptions()) -> Backend:
    entries = registry()
    if requested != "auto" and requested not in entries:
        raise BackendError(f"unknown backend {requested!r}; known backends: {['auto', *entries]} "
                           "(`clipscan backends` lists them with their status)")
    chain = AUTO_CHAIN if requested == "auto" else (requested,)
    if requested != "auto" and fallback:
        log.debug("backend %r requested explicitly: no fallback", requested)
    failures: list[str] = []
    for name in chain:
        entry = entries[name]
        reason = entry.unavailable_reason()
        if reason is None:
            try:
                backend = entry.create(model_path, options)
            except BackendError as e:
                reason = str(e)
            else:
                log.info("backend: %s (%s)", backend.name, entry.summary)
                return backend
        if requested != "auto":
            raise BackendError(f"backend {name!r} was requested but cannot start: {reason}. "
                               f"Install with: {entry.install_hint}, or use --backend auto")
        failures.append(f"{name}: {reason}")
        log.warning("backend %s skipped: %s", name, reason)
        if not fallback:
            break
    raise BackendError("no backend could run the model; tried " + "; ".join(failures))


__all__ = ["Backend", "BackendOptions", "backend_status", "create_backend", "registry", "AUTO_CHAIN"]
