"""The tensor contract of clipscan's services: what `clipscan serve`, the Triton repository that
`clipscan triton` writes, and the client (`clipscan scan --server`, `RemoteScanner`) all speak.

Both servers present it as one Triton model configuration (`max_batch_size` > 0, no `reshape`): each tensor's
`dims` are per image, a per-image value has dims [1] (a batching model's tensors need at least one), and the
metadata shape is the batch dimension first, -1, then the dims, as Triton reports it (`model_metadata`).

Model `<name>` takes one input:
- `image`  BYTES `[-1, 1]`: each element one encoded image file as uploaded (JPEG, PNG, WebP, ...).
`clipscan serve` also serves model `<name>_pixels` (`pixels_model_name`), whose one input is
- `pixels` the artifact's own input dtype and shape `[-1, 3, H, W]`, for clients that preprocess (`[-1, 3, -1,
  -1]` for an artifact that takes each image at its own size, input.own_size: one request's images then share
  one height and width, and each image must lie within the recorded bounds);
its outputs are `<name>`'s. (Two models, not two optional inputs: a generic client such as perf_analyzer
sends every input that is not optional, and exactly one form must be sent.)

Outputs, one row per image (a model without the head has no such output), each `[-1, 1]` unless said:
- `p_generated` FP32, `logit` FP32, `verdict` BYTES                 (the decision head)
- `generator` BYTES                                                  (a model with an attribution head)
- `quality` FP32                                                     (a quality head)
- `embedding` FP32 `[-1, D]`                                         (models that export one)
- `error` BYTES: b"" when the image scanned, else the same text `clipscan scan` writes
  (`kind: message`); `backend` BYTES: the backend that really ran;
- every head's own answer, `<head>.<field>` (ScanResult.heads; fields per task in results.HEAD_FIELDS):
  `<head>.p_generated` / `<head>.logit` FP32, `<head>.verdict` / `<head>.generator` BYTES, `<head>.score` FP32.
An image that failed has NaN in its numeric outputs and b"" in `verdict` and `generator`.

`results_to_tensors` and `tensors_to_results` are inverse: a ScanResult goes through the contract and
comes back with the same row (floats are FP32 on the wire: equal to what `clipscan scan` writes within
float32 rounding). `results_to_tensors` gives [N] for per-image values; `on_the_wire` adds the axis of 1.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import InvalidArgumentError
from .model_name import MODEL_NAME_MAX
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
    dims: tuple[int, ...]    # per image, without the batch axis: () for one value per image; -1: any length
    most: int | None = None  # with a -1 in dims: the most elements one image may have

    @property
    def config_dims(self) -> list[int]:
        """The model configuration's `dims`: a per-image value is [1] (a batching model's tensors need one)."""
        return list(self.dims) or [1]

    @property
    def elements(self) -> int:
        """The most elements of one image of this tensor."""
        return self.most if -1 in self.dims and self.most is not None else math.prod(self.dims)

    def fits(self, shape) -> bool:
        """Whether a per-image shape (without the batch axis) is one this tensor takes (-1 takes any length)."""
        return len(shape) == len(self.dims) and all(d in (-1, n) for d, n in zip(self.dims, shape))

    def shape(self, batch: int = -1) -> list[int]:
        """The tensor's shape on the wire, the batch first: what Triton's model metadata reports."""
        return [batch, *self.config_dims]


PIXELS_SUFFIX = "_pixels"


def pixels_model_name(name: str) -> str:
    """The name of the model that takes `pixels` next to model `name` (`clipscan serve` serves both)."""
    return name[:MODEL_NAME_MAX - len(PIXELS_SUFFIX)] + PIXELS_SUFFIX


def input_specs(manifest) -> list[TensorSpec]:
    """The inputs of model `<name>`: encoded image files."""
    return [TensorSpec(INPUT_IMAGE, "BYTES", ())]


def pixels_specs(manifest) -> list[TensorSpec]:
    """The inputs of model `<name>_pixels`: the artifact's input tensor, preprocessed by the client."""
    h, w = manifest.input.spatial()
    own = manifest.input.own_size
    return [TensorSpec(INPUT_PIXELS, DATATYPES[manifest.input.dtype], (3, h, w),
                       3 * own.max_pixels if own is not None else None)]


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


def config_tensor(spec: TensorSpec, *, output: bool = False) -> dict:
    """A model configuration's input or output entry in the JSON form Triton's `/config` answers (every field
    of model_config.proto's ModelInput / ModelOutput that Triton prints, at its value for a clipscan model)."""
    entry = {"name": spec.name, "data_type": "TYPE_STRING" if spec.datatype == "BYTES" else f"TYPE_{spec.datatype}"}
    if output:
        return {**entry, "dims": spec.config_dims, "label_filename": "", "is_shape_tensor": False,
                "is_non_linear_format_io": False}
    return {**entry, "format": "FORMAT_NONE", "dims": spec.config_dims, "is_shape_tensor": False,
            "allow_ragged_batch": False, "optional": False, "is_non_linear_format_io": False}


def model_metadata(name: str, platform: str, inputs: list[TensorSpec], outputs: list[TensorSpec],
                   version: str = "1") -> dict:
    """The model metadata (`GET /v2/models/{name}`) Triton reports for a batching model with these tensors:
    name, versions, platform, and each tensor's name, datatype and shape with -1 for the batch first."""
    def tensor(s: TensorSpec) -> dict:
        return {"name": s.name, "datatype": s.datatype, "shape": s.shape(-1)}

    return {"name": name, "versions": [version], "platform": platform, "inputs": [tensor(s) for s in inputs],
            "outputs": [tensor(s) for s in outputs]}


def on_the_wire(arr: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """An output of `results_to_tensors` in its wire shape: [N] -> [N, 1] for a per-image value."""
    return arr.reshape(len(arr), *spec.config_dims)


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
