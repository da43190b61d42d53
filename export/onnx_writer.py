"""Write a torch module to one self-contained ONNX file with the manifest inside, check it, and rewrite
the manifest of an existing artifact (the one place that does)."""
from __future__ import annotations

import io
import logging
import warnings
from contextlib import redirect_stdout
from pathlib import Path

from clipscan.runtime.atomic import replacing
from clipscan.runtime.errors import InvalidArgumentError
from clipscan.runtime.manifest import METADATA_KEY, Manifest

from .deps import require

log = logging.getLogger("clipscan.export")
MIN_OPSET = 17


def to_onnx(module, example, input_name: str, output_names: list[str], opset: int, own_size=None):
    """Export with the dynamo exporter; the batch axis is dynamic, and with `own_size` (min side, max side)
    height and width too (input.own_size). Returns an onnx.ModelProto."""
    torch = require("torch")
    if opset < MIN_OPSET:
        raise InvalidArgumentError(f"opset {opset} is too old: clipscan needs >= {MIN_OPSET} so LayerNorm stays one "
                                   "node; pass --opset 18 (the default)")
    newest = require("onnx").defs.onnx_opset_version()
    if opset > newest:
        raise InvalidArgumentError(f"--opset {opset} is newer than the installed onnx {require('onnx').__version__} "
                                   f"knows (up to {newest}); use {MIN_OPSET}..{newest} (18, the default, runs "
                                   "everywhere)")
    batch = torch.export.Dim("batch", min=1, max=4096)
    dynamic = {0: batch}
    if own_size is not None:
        dynamic.update({2: torch.export.Dim("height", min=own_size[0], max=own_size[1]),
                        3: torch.export.Dim("width", min=own_size[0], max=own_size[1])})
    for noisy in ("onnx_ir", "onnxscript"):  # their optimisers log every pass at INFO
        logging.getLogger(noisy).setLevel(logging.WARNING)
    with warnings.catch_warnings(), redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module, (example,), None, input_names=[input_name], output_names=output_names,
            opset_version=opset, dynamo=True, external_data=False,
            dynamic_shapes=(dynamic,),
            optimize=True, verbose=False,
        )
    model = program.model_proto
    # name the batch axis the same everywhere, for readers of the graph
    for value in list(model.graph.input) + list(model.graph.output):
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_param = "batch"
    return model


def validate_manifest(manifest: Manifest, what: str = "the manifest clipscan was about to write") -> Manifest:
    """Check a manifest with the runtime's own reader, so no artifact is written that `scan` would refuse."""
    return Manifest.from_json(manifest.to_json(), origin=what)


def attach_manifest(model, manifest: Manifest) -> None:
    validate_manifest(manifest)
    for prop in list(model.metadata_props):
        if prop.key == METADATA_KEY:
            model.metadata_props.remove(prop)
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, manifest.to_json()
    model.producer_name = "clipscan"
    from clipscan.version import __version__

    model.producer_version = __version__


def save_checked(model, path: str | Path) -> Path:
    """onnx.checker full check (with shape inference), then save as one file."""
    onnx = require("onnx")
    onnx.checker.check_model(model, full_check=True)
    return save_model(model, path)


def save_model(model, path: str | Path) -> Path:
    """Save as one file, atomically: written next to `path` and renamed over it only when complete."""
    onnx = require("onnx")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp:
        onnx.save_model(model, str(tmp), save_as_external_data=False)
    return path


def rewrite_manifest(path: str | Path, manifest: Manifest, out: str | Path | None = None) -> Path:
    """Replace the manifest inside the ONNX file at `path` (written to `out`, default in place, atomically)."""
    onnx = require("onnx")
    model = onnx.load(str(path))
    attach_manifest(model, manifest)
    return save_model(model, out or path)
