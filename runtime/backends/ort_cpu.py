"""ONNX Runtime on the CPU: the backend that is always there."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import BackendError
from .base import BackendOptions

PROVIDER = "CPUExecutionProvider"


def unavailable_reason() -> str | None:
    try:
        import onnxruntime as ort
    except ImportError as e:
        return f"onnxruntime cannot be imported ({e})"
    if PROVIDER not in ort.get_available_providers():
        return f"this onnxruntime build has no {PROVIDER} (providers: {ort.get_available_providers()})"
    return None


class OrtSessionBackend:
    """One ONNX Runtime session on exactly one execution provider, checked with get_providers() afterwards:
    ONNX Runtime moves a session to the CPU when a GPU provider's libraries fail to load, and a session on
    another provider than the one asked for is an error. The CPU backend below and ort_gpu's CUDA and
    TensorRT-EP backends are this class with their provider."""

    def __init__(self, model_path: Path, provider: str, provider_options: dict | None = None, *, name: str,
                 threads: int | None = None, spin: bool = True, opset: int | None = None,
                 mismatch_hint: str = ""):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        if threads:
            so.intra_op_num_threads = int(threads)
        if not spin:
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._configure(so, provider)
        providers = [provider] if provider_options is None else [(provider, provider_options)]
        try:
            self.session = self._create_session(ort, str(model_path), so, providers)
        except Exception as e:  # onnxruntime raises its own exception types
            hint = too_old_hint(opset, ort.__version__)
            raise BackendError(f"ONNX Runtime could not create a {provider} session for {model_path}: {e}{hint}") from e
        actual = self.session.get_providers()
        if actual[:1] != [provider]:
            raise BackendError(f"asked ONNX Runtime for {provider}; the session came back on {actual}{mismatch_hint}")
        self._check_session(provider)
        self.name = name
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.ort_version = ort.__version__

    # hooks for the GPU backends (ort_gpu): session options, how the session is created, a check once it runs
    def _configure(self, so, provider: str) -> None:
        pass

    def _create_session(self, ort, model_path: str, so, providers: list):
        return ort.InferenceSession(model_path, so, providers=providers)

    def _check_session(self, provider: str) -> None:
        pass

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self.output_names, self.session.run(self.output_names, feeds)))

    def close(self) -> None:
        self.session = None


class OrtCpuBackend(OrtSessionBackend):
    name = "onnxruntime-cpu"

    def __init__(self, model_path: Path, options: BackendOptions = BackendOptions(), opset: int | None = None):
        super().__init__(model_path, PROVIDER, name=self.name, threads=options.threads, spin=options.spin,
                         opset=opset)


ATTENTION_ONNXRUNTIME = (1, 23)   # the first onnxruntime that runs ONNX's Attention node (opset 23)
ATTENTION_ONNXRUNTIME_TEXT = ".".join(map(str, ATTENTION_ONNXRUNTIME))


def runs_attention(ort_version: str) -> bool | None:
    """Whether this onnxruntime version runs ONNX's Attention node; None when the version cannot be read."""
    try:
        return tuple(int(p) for p in ort_version.split(".")[:2]) >= ATTENTION_ONNXRUNTIME
    except ValueError:
        return None


def too_old_hint(opset: int | None, ort_version: str) -> str:
    """What to do when an artifact's opset is newer than this onnxruntime reads (a cpu-target INT8 artifact
    with fused attention, `calibrate`'s default, is opset 23: ONNX's Attention node)."""
    if opset and opset >= 23 and runs_attention(ort_version) is False:
        return (f" (the artifact is ONNX opset {opset}; onnxruntime {ort_version} is older than "
                f"{ATTENTION_ONNXRUNTIME_TEXT}, the first to run it: pip install -U onnxruntime)")
    return ""


def create(model_path: Path, options: BackendOptions, manifest=None) -> OrtCpuBackend:
    return OrtCpuBackend(model_path, options, getattr(manifest, "opset", None))
