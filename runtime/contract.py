"""The tensor contract of clipscan's services: what `clipscan serve`, the Triton repository that
`clipscan triton` writes, and the client (`clipscan scan --server`, `RemoteScanner`) all speak.

Inputs (one of them per request):
- `image`  BYTES `[N]`: each element one encoded image file as uploaded (JPEG, PNG, WebP, ...);
- `pixels` the artifact's own input dtype and shape `[N, 3, H, W]`, for clients that preprocess.

Outputs, one element per image (a model without the head has no such output):
- `p_generated` FP32 `[N]`, `logit` FP32 `[N]`, `verdict` BYTES `[N]`   (the decision head)
- `generator` BYTES `[N]`                                    (a model with an attribution head)
- `quality` FP32 `[N]`                                                   (a quality head)
- `embedding` FP32 `[N, D]`                                              (models that export one)
- `error` BYTES `[N]`: b"" when the image scanned, else the same text `clipscan scan` writes
  (`kind: message`); `backend` BYTES `[N]`: the backend that really ran;
- every head's own answer, `<head>.<field>` (ScanResult.heads; fields per task in results.HEAD_FIELDS):
  `<head>.p_generated` / `<head>.logit` FP32, `<head>.verdict` / `<head>.generator` BYTES, `<head>.score` FP32.
An image that failed has NaN in its numeric outputs and b"" in `verdict` and `generator`.

`results_to_tensors` and `tensors_to_results` are inverse: a ScanResult goes through the contract and
comes back with the same row (floats are FP32 on the wire: equal to what `clipscan scan` writes within
float32 rounding).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import InvalidArgumentError
from .results import HEAD_FIELDS, ScanResult

INPUT_IMAGE = "image"
INPUT_PIXELS = "pixels"

# numpy dtype name <-> Open Inference Protocol datatype
DATATYPES = {"bool": "BOOL", "uint8": "UINT8", "uint16": "UINT16", "uint32": "UINT32", "uint64": "UINT64",
             "int8": "INT8", "int16": "INT16", "int32": "INT32", "int64": "INT64", "float16": "FP16",
             "float32": "FP32", "float64": "FP64"}
NUMPY_DTYPES = {v: k for k, v in DATATYPES.items()}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str            # Open Inference Protocol datatype: FP32, BYTES, UINT8, ...
    dims: tuple[int, ...]    # per image, without the batch axis: () for one value per image

    def shape(self, batch: int = -1) -> list[int]:
        return [batch, *self.dims]


def input_specs(manifest) -> list[TensorSpec]:
    h, w = manifest.input.size
    return [TensorSpec(INPUT_IMAGE, "BYTES", ()),
            TensorSpec(INPUT_PIXELS, DATATYPES[manifest.input.dtype], (3, h, w))]


def output_specs(manifest) -> list[TensorSpec]:
    specs = []
    decision = manifest.decision_head()
    if decision is not None:
        specs += [TensorSpec("p_generated", "FP32", ()), TensorSpec("logit", "FP32", ()),
                  TensorSpec("verdict", "BYTES", ())]
        if any(h.task == "attribution" for h in manifest.heads):  # the row's generator: postprocess.row_generator
            specs.append(TensorSpec("generator", "BYTES", ()))
    if manifest.head("quality") is not None:
        specs.append(TensorSpec("quality", "FP32", ()))
    if manifest.embedding:
        specs.append(TensorSpec("embedding", "FP32", (int(manifest.embedding["dim"]),)))
    specs += [TensorSpec("error", "BYTES", ()), TensorSpec("backend", "BYTES", ())]
    for h in manifest.heads:
        specs += [TensorSpec(f"{h.name}.{f}", "BYTES" if f in ("verdict", "generator") else "FP32", ())
                  for f in HEAD_FIELDS.get(h.task, ())]
    return specs


def _field(r: ScanResult, name: str):
    if "." in name:                      # <head>.<field>
        head, _, f = name.rpartition(".")
        return (r.heads or {}).get(head, {}).get(f)
    return getattr(r, name)


def _text(value: str | None) -> bytes:
    return b"" if value is None else value.encode("utf-8", "surrogateescape")


def _number(value) -> float:
    return np.nan if value is None else float(value)


def results_to_tensors(results: list[ScanResult], specs: list[TensorSpec]) -> dict[str, np.ndarray]:
    """The output tensors for `results` (in order): FP32 arrays and BYTES as object arrays of bytes."""
    out: dict[str, np.ndarray] = {}
    for spec in specs:
        if spec.name == "embedding":
            arr = np.full((len(results), *spec.dims), np.nan, np.float32)
            for i, r in enumerate(results):
                if r.embedding is not None:
                    arr[i] = r.embedding
        elif spec.datatype == "BYTES":
            arr = np.array([_text(_field(r, spec.name)) for r in results] or [], dtype=object)
        else:
            arr = np.array([_number(_field(r, spec.name)) for r in results], np.float32)
        out[spec.name] = arr
    return out


def _str(value) -> str | None:
    if isinstance(value, (bytes, bytearray, np.bytes_)):
        value = bytes(value).decode("utf-8", "surrogateescape")
    return None if value in ("", None) else str(value)


def _float(value) -> float | None:
    v = float(value)
    return v if np.isfinite(v) else None


def tensors_to_results(tensors: dict[str, np.ndarray], paths: list[str]) -> list[ScanResult]:
    """ScanResults from the contract's output tensors (names missing from `tensors` stay None)."""
    n = len(paths)
    for name, arr in tensors.items():
        if len(arr) != n:
            raise InvalidArgumentError(f"output {name!r} has {len(arr)} elements for {n} images: the model (or the "
                                       "server) does not follow clipscan's tensor contract of one row per image")
    results = []
    for i, path in enumerate(paths):
        r = ScanResult(path=path)
        error = _str(tensors["error"][i]) if "error" in tensors else None
        r.error = error
        r.backend = _str(tensors["backend"][i]) if "backend" in tensors else None
        if error is None:
            for name in ("p_generated", "logit", "quality"):
                if name in tensors:
                    setattr(r, name, _float(tensors[name][i]))
            for name in ("verdict", "generator"):
                if name in tensors:
                    setattr(r, name, _str(tensors[name][i]))
            if "embedding" in tensors:
                r.embedding = np.asarray(tensors["embedding"][i], np.float32)
            heads: dict[str, dict] = {}
            for name, arr in tensors.items():
                if "." in name:
                    head, _, f = name.rpartition(".")
                    v = arr[i]
                    heads.setdefault(head, {})[f] = _str(v) if f in ("verdict", "generator") else _float(v)
            r.heads = heads or None
        results.append(r)
    return results
