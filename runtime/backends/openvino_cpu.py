"""OpenVINO on the CPU (`--backend openvino`, the [openvino] extra): the same ONNX file, read and compiled
by OpenVINO's own CPU plugin, with float parts kept in float32.

OpenVINO's CPU plugin would run float layers in bfloat16 by default on CPUs with AVX-512 BF16 or AMX;
that is another arithmetic than the artifact was verified with, so this backend asks for f32
(`INFERENCE_PRECISION_HINT`); INT8 (QDQ) artifacts keep their integer layers. It is never chosen by
`auto`: whether it beats ONNX Runtime depends on the CPU kind, so it is there for users who choose it
and for `clipscan bench` to compare on the machine at hand.
"""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from ..errors import BackendError
from .base import BackendOptions

PRECISION = "f32"


def unavailable_reason() -> str | None:
    try:
        import openvino as ov
    except ImportError as e:
        return f"openvino is not installed ({e})"
    try:
        devices = ov.Core().available_devices
    except Exception as e:  # noqa: BLE001 -- OpenVINO raises its own exception types
        return f"OpenVINO cannot list its devices ({type(e).__name__}: {e})"
    if "CPU" not in devices:
        return f"OpenVINO has no CPU device here (devices: {devices})"
    return None


class OpenVinoCpuBackend:
    name = "openvino-cpu"

    def __init__(self, model_path: Path, options: BackendOptions = BackendOptions()):
        import openvino as ov

        config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": PRECISION}
        if options.threads:
            config["INFERENCE_NUM_THREADS"] = int(options.threads)
        try:
            core = ov.Core()
            model = core.read_model(str(model_path))
            # the ONNX names, read before compiling: a compiled port may carry other tensor names merged into it
            self.input_names = [p.get_any_name() for p in model.inputs]
            self.output_names = [p.get_any_name() for p in model.outputs]
            self.compiled = core.compile_model(model, "CPU", config)
        except Exception as e:
            raise BackendError(f"OpenVINO could not compile {model_path} for its CPU plugin: "
                               f"{type(e).__name__}: {e}") from e
        got = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        if got != ov.Type.f32:
            raise BackendError(f"asked OpenVINO for {PRECISION} inference precision, it compiled for {got}")
        self._request = self.compiled.create_infer_request()
        self._lock = threading.Lock()
        self.openvino_version = ov.__version__

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._lock:
            result = self._request.infer({self.input_names.index(k): np.ascontiguousarray(v)
                                          for k, v in feeds.items()})
            # the request reuses its output tensors on the next call: copy them out
            return {name: np.array(result[port]) for name, port in zip(self.output_names, self.compiled.outputs)}

    def close(self) -> None:
        self._request = self.compiled = None


def create(model_path: Path, options: BackendOptions, manifest=None) -> OpenVinoCpuBackend:
    return OpenVinoCpuBackend(model_path, options)
