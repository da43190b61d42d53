"""The models Triton's python backend runs (each generated model.py imports one of these as TritonPythonModel).

- ScanModel: the whole scan inside Triton (decode, preprocess, the runtime's backend chain, postprocess),
  through `clipscan.runtime.Scanner`; it exposes the tensor contract (runtime.contract).
- PreprocessModel / PostprocessModel: the two python steps of the GPU ensemble around the ONNX or TensorRT
  graph: bytes -> the artifact's input tensor (and a per-image error), graph outputs -> the contract.

Triton hands `execute` a list of requests (dynamic batching gathers them): their images are scanned
together, and each request gets its own response. One bad image is an `error` element for that image;
a request without an `image` input gets an error response of its own; nothing fails the whole call.
Per-image tensors carry a trailing axis of 1 on Triton ([N, 1]): a batching model's tensors need one.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from clipscan.runtime.contract import INPUT_IMAGE, output_specs, results_to_tensors
from clipscan.runtime.errors import InvalidArgumentError

from .numpy_check import check_numpy

log = logging.getLogger("clipscan.triton")


def parameters(config: dict) -> dict[str, str]:
    """A Triton model config's `parameters` as {key: string_value}."""
    return {k: (v or {}).get("string_value", "") for k, v in (config.get("parameters") or {}).items()}


def _pb_utils():
    import triton_python_backend_utils as pb_utils  # provided by Triton's python backend stub

    return pb_utils


def as_triton(arr: np.ndarray) -> np.ndarray:
    """A per-image tensor in Triton's shape: [N] -> [N, 1]; [N, D] stays."""
    return arr.reshape(len(arr), 1) if arr.ndim == 1 else arr


def request_images(pb_utils, request) -> list[bytes]:
    tensor = pb_utils.get_input_tensor_by_name(request, INPUT_IMAGE)
    if tensor is None:
        raise InvalidArgumentError(f"the request has no '{INPUT_IMAGE}' input (BYTES, one encoded image file per "
                                   "element)")
    return [bytes(b) for b in tensor.as_numpy().reshape(-1)]


class _Model:
    """What every clipscan python model does on load: read its parameters, check numpy, find its artifact."""

    def initialize(self, args: dict) -> None:
        self.config = json.loads(args["model_config"])
        self.params = parameters(self.config)
        check_numpy(self.params.get("allow_numpy2") == "true")
        self.version_dir = Path(args["model_repository"]) / args["model_version"]
        self.pb_utils = _pb_utils()

    def respond(self, tensors: dict[str, np.ndarray]):
        pb = self.pb_utils
        return pb.InferenceResponse([pb.Tensor(name, as_triton(arr)) for name, arr in tensors.items()])

    def fail(self, error: Exception):
        pb = self.pb_utils
        return pb.InferenceResponse(output_tensors=[], error=pb.TritonError(f"{type(error).__name__}: {error}"))

    def execute(self, requests):
        images: list[list[bytes] | Exception] = []
        for request in requests:
            try:
                images.append(request_images(self.pb_utils, request))
            except Exception as e:  # noqa: BLE001 -- this request only
                images.append(e)
        flat = [b for imgs in images if not isinstance(imgs, Exception) for b in imgs]
        try:
            tensors = self.run(flat)
        except Exception as e:  # should not happen (per-image errors are rows); fail these requests, not the server
            log.exception("clipscan model failed on a batch of %d images", len(flat))
            return [self.fail(e) for _ in requests]
        responses, start = [], 0
        for imgs in images:
            if isinstance(imgs, Exception):
                responses.append(self.fail(imgs))
                continue
            part = slice(start, start + len(imgs))
            responses.append(self.respond({k: v[part] for k, v in tensors.items()}))
            start += len(imgs)
        return responses

    def run(self, images: list[bytes]) -> dict[str, np.ndarray]:
        raise NotImplementedError


class ScanModel(_Model):
    """The `python` kind: clipscan.runtime.Scanner inside Triton, exposing the tensor contract."""

    def initialize(self, args: dict) -> None:
        super().initialize(args)
        from clipscan.runtime import Scanner

        p = self.params
        kind = args.get("model_instance_kind", "CPU")
        device = int(args.get("model_instance_device_id") or 0)
        backend = p.get("backend") or ("cpu" if kind == "CPU" else "auto")
        self.scanner = Scanner(self.version_dir / p["artifact"], backend=backend,
                               fallback=p.get("fallback", "true") == "true",
                               batch_size=int(p.get("batch_size") or 16), threads=int(p["threads"]) if p.get(
                                   "threads") else None, workers=int(p["workers"]) if p.get("workers") else None,
                               decode=p.get("decode") or "auto", device_id=device)
        self.specs = output_specs(self.scanner.manifest)
        log.info("clipscan model %s on %s (%s instance, device %d)", self.scanner.manifest.name,
                 self.scanner.backend_name, kind, device)

    def run(self, images: list[bytes]) -> dict[str, np.ndarray]:
        scanner = self.scanner
        if scanner.workers == 1:  # decode here, then one inference: no thread pool per execution
            results = scanner.scan_prepared([(str(i), scanner.prepare(b)) for i, b in enumerate(images)])
        else:                     # the Scanner's pipeline: decoding threads ahead of inference
            results = list(scanner.scan_many((str(i), b) for i, b in enumerate(images)))
        return results_to_tensors(results, self.specs)

    def finalize(self) -> None:
        self.scanner.close()


class PreprocessModel(_Model):
    """Ensemble step 1: encoded images -> the artifact's input tensor `pixels` [N, 3, H, W] and `error` [N]
    (an image that fails gets zero pixels and its error text; the postprocess step reports it)."""

    def initialize(self, args: dict) -> None:
        super().initialize(args)
        from .ensemble_steps import Preparer

        self.preparer = Preparer.from_artifact(self.version_dir / self.params["artifact"],
                                               decode=self.params.get("decode") or "auto")

    def run(self, images: list[bytes]) -> dict[str, np.ndarray]:
        return self.preparer.prepare(images)


class GraphModel:
    """Ensemble step 2 in a python model (--graph python): the artifact's graph through the runtime's backend chain
    (ONNX Runtime CPU, CUDA, TensorRT), one request at a time; its outputs are the graph's, per-row."""

    def initialize(self, args: dict) -> None:
        from clipscan.runtime.artifact import load_artifact
        from clipscan.runtime.backends import BackendOptions, create_backend

        self.config = json.loads(args["model_config"])
        p = parameters(self.config)
        check_numpy(p.get("allow_numpy2") == "true")
        self.pb_utils = _pb_utils()
        artifact = load_artifact(Path(args["model_repository"]) / args["model_version"] / p["artifact"])
        self.manifest = artifact.manifest
        options = BackendOptions(threads=int(p["threads"]) if p.get("threads") else None,
                                 batch_size=int(p.get("batch_size") or 16),
                                 device_id=int(args.get("model_instance_device_id") or 0))
        self.backend = create_backend(artifact.path, p.get("backend") or "cpu", options=options, manifest=self.manifest)
        self.outputs = [o["name"] for o in self.config["output"]]

    def execute(self, requests):
        pb = self.pb_utils
        responses = []
        for request in requests:
            try:
                pixels = pb.get_input_tensor_by_name(request, self.manifest.input.name).as_numpy()
                out = self.backend.run({self.manifest.input.name: pixels})
                responses.append(pb.InferenceResponse([pb.Tensor(n, as_triton(np.asarray(out[n])))
                                                       for n in self.outputs]))
            except Exception as e:  # noqa: BLE001 -- this request fails, the others go on
                responses.append(pb.InferenceResponse(output_tensors=[], error=pb.TritonError(
                    f"{type(e).__name__}: {e}")))
        return responses

    def finalize(self) -> None:
        self.backend.close()


class PostprocessModel(_Model):
    """Ensemble step 3: the graph's outputs and the preprocess step's `error` -> the tensor contract."""

    def initialize(self, args: dict) -> None:
        super().initialize(args)
        from .ensemble_steps import Finisher

        self.finisher = Finisher.from_artifact(self.version_dir / self.params["artifact"],
                                               backend=self.params.get("graph_backend", "triton"),
                                               graph_dims=json.loads(self.params.get("graph_dims") or "{}"))

    def execute(self, requests):
        pb = self.pb_utils
        responses = []
        for request in requests:  # each request is one batch of the ensemble: outputs stay with their request
            try:
                graph = {name: pb.get_input_tensor_by_name(request, name).as_numpy()
                         for name in self.finisher.graph_outputs}
                errors = pb.get_input_tensor_by_name(request, "error").as_numpy().reshape(-1)
                responses.append(self.respond(self.finisher.finish(graph, list(errors))))
            except Exception as e:  # noqa: BLE001 -- this request fails, the others go on
                responses.append(self.fail(e))
        return responses

