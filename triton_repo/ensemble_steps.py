"""The numpy work of the ensemble's two python steps, outside Triton (so it is tested against a local scan).

Preparer: encoded images -> {"pixels": [N, 3, H, W] in the artifact's input dtype, "error": [N] BYTES}
          (decoding and preprocessing exactly as `Scanner.prepare`; a failed image gets zero pixels).
Finisher: the graph's outputs for those N rows + the errors -> the tensor contract's outputs, through
          runtime.postprocess.image_result (the function every Scanner result comes from).
Sliding-crop recipes (several rows per image) cannot travel as one row per image: the ensemble refuses
them, and the `python` kind (the whole Scanner inside Triton) serves them.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from clipscan.runtime.artifact import load_artifact
from clipscan.runtime.contract import output_specs, results_to_tensors
from clipscan.runtime.decode import DEFAULT_MAX_PIXELS, draft_request, load_image
from clipscan.runtime.errors import ImageReadError, InvalidArgumentError
from clipscan.runtime.postprocess import image_result
from clipscan.runtime.preprocess import Preprocessor
from clipscan.runtime.results import ScanResult
from clipscan.runtime.scanner import resolve_decode


def check_one_row_per_image(manifest) -> None:
    own = manifest.input.own_size
    if own is not None:
        raise InvalidArgumentError(f"model {manifest.name!r} takes each image at its own size ({own.describe()}), "
                                   "and an ensemble passes one batch tensor of one height and width from its "
                                   "preprocess step to the graph; use --layout python (the whole scan inside "
                                   "Triton's python backend, which runs each size apart)")
    if manifest.preprocess.crop_mode == "sliding":
        raise InvalidArgumentError(f"model {manifest.name!r} cuts several sliding crops per image, which an "
                                   "ensemble cannot pass as one row per image; use --kind cpu or gpu with "
                                   "--layout python (the whole scan inside Triton's python backend)")


class Preparer:
    def __init__(self, manifest, decode: str = "auto", max_pixels: int = DEFAULT_MAX_PIXELS):
        check_one_row_per_image(manifest)
        self.manifest = manifest
        self.preprocessor = Preprocessor(manifest.preprocess, manifest.input)
        pre = manifest.preprocess
        self.draft_size = (draft_request(pre.resize_mode, pre.resize_size)
                           if resolve_decode(manifest, decode)[0] == "draft" else None)
        self.max_pixels = max_pixels

    @classmethod
    def from_artifact(cls, path: str | Path, decode: str = "auto") -> Preparer:
        return cls(load_artifact(path).manifest, decode)

    def one(self, data: bytes) -> np.ndarray:
        try:
            image = load_image(data, max_pixels=self.max_pixels, exif_orientation=self.manifest.preprocess.exif_orientation,
                               draft_size=self.draft_size)
            return self.preprocessor.batch(image)[0]
        except ImageReadError:
            raise
        except MemoryError:
            raise ImageReadError("too_large", "ran out of memory preprocessing the image") from None
        except Exception as e:  # noqa: BLE001 -- as Scanner.prepare: one image's error
            raise ImageReadError("preprocess_failed", f"{type(e).__name__}: {e}") from None

    def prepare(self, images: list[bytes]) -> dict[str, np.ndarray]:
        h, w = self.manifest.input.size
        pixels = np.zeros((len(images), 3, h, w), self.manifest.input.dtype)
        errors = np.empty(len(images), dtype=object)
        for i, data in enumerate(images):
            try:
                pixels[i] = self.one(data)
                errors[i] = b""
            except ImageReadError as e:
                errors[i] = str(e).encode("utf-8", "surrogateescape")
        return {"pixels": pixels, "error": errors}


class Finisher:
    def __init__(self, manifest, backend: str, graph_dims: dict[str, list[int]] | None = None):
        check_one_row_per_image(manifest)
        self.manifest = manifest
        self.backend = backend
        self.graph_outputs = manifest.output_names()
        self.graph_dims = graph_dims or {}
        self.specs = output_specs(manifest)

    @classmethod
    def from_artifact(cls, path: str | Path, backend: str, graph_dims: dict | None = None) -> Finisher:
        return cls(load_artifact(path).manifest, backend, graph_dims)

    def finish(self, graph: dict[str, np.ndarray], errors: list) -> dict[str, np.ndarray]:
        n = len(errors)
        outputs = {}
        for name in self.graph_outputs:
            arr = np.asarray(graph[name])
            dims = self.graph_dims.get(name)
            outputs[name] = arr.reshape(n, *dims) if dims is not None else arr
        results = []
        for i, err in enumerate(errors):
            text = bytes(err).decode("utf-8", "surrogateescape") if err is not None else ""
            if text:
                results.append(ScanResult(path=str(i), error=text, backend=self.backend))
            else:
                results.append(image_result(self.manifest, outputs, slice(i, i + 1), name=str(i), threshold=None,
                                            backend=self.backend))
        return results_to_tensors(results, self.specs)
