"""`export_model`: open_clip backbone + heads from local files -> one checked ONNX artifact."""
from __future__ import annotations

import datetime as _dt
import logging
import platform
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from clipscan.runtime.artifact import file_sha256
from clipscan.runtime.manifest import HeadSpec, InputSpec, Manifest, PreprocessSpec

from ._deps import require
from .backbone import BackboneInfo, load_backbone
from .graph import INPUT_NAME, OUT_EMBEDDING, OUT_LOGIT, OUT_PROB, OUT_QUALITY, ScanGraph
from .heads import load_heads
from .onnx_writer import attach_manifest, cosine_rows, save_checked, to_onnx

log = logging.getLogger("clipscan.export")
torch = require("torch")

FP32_MIN_COSINE = 0.99999


class ExportCheckError(RuntimeError):
    """The written graph does not reproduce the PyTorch model."""


@dataclass
class ExportReport:
    path: Path
    manifest: Manifest
    checks: dict = field(default_factory=dict)


def preprocess_spec(info: BackboneInfo) -> PreprocessSpec:
    """The manifest recipe equal to open_clip's inference transform for this backbone's config."""
    pp = info.preprocess
    size = tuple(info.image_size)
    mode = pp.get("resize_mode", "shortest")
    if mode not in ("shortest", "longest", "squash"):
        raise ValueError(f"unsupported open_clip resize_mode {mode!r}")
    return PreprocessSpec(
        resize_mode=mode, resize_size=size, interpolation=pp.get("interpolation", "bicubic"),
        crop_mode="none" if mode == "squash" else "center", crop_size=size,
        pad_fill=int(pp.get("fill_color", 0)), exif_orientation="apply",
    )


def tool_versions() -> dict:
    import onnx
    import open_clip

    from clipscan import __version__

    versions = {"clipscan": __version__, "torch": torch.__version__, "open_clip": open_clip.__version__,
                "onnx": onnx.__version__, "python": platform.python_version()}
    try:
        import onnxruntime

        versions["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    try:
        import onnxscript

        versions["onnxscript"] = onnxscript.__version__
    except ImportError:
        pass
    return versions


def build_manifest(info: BackboneInfo, graph: ScanGraph, *, name: str, description: str, opset: int,
                   heads_file: Path | None, mean=None, std=None) -> Manifest:
    heads = []
    if graph.detector is not None:
        heads.append(HeadSpec(
            name="detector", task="detection", outputs={"logit": OUT_LOGIT, "probability": OUT_PROB},
            labels=tuple(graph.detector.labels), threshold=graph.detector.threshold,
            description="linear probe on the L2-normalised image embedding; probability = sigmoid(logit) "
                        f"that the image is {graph.detector.labels[1]!r}"))
    if graph.quality is not None:
        heads.append(HeadSpec(
            name="quality", task="quality", outputs={"score": OUT_QUALITY}, scale=dict(graph.quality.scale),
            description=f"MLP on the L2-normalised image embedding ({graph.quality.activation})"
                        + ("; output squashed into the scale by a sigmoid" if graph.quality.bounded else "")))
    sources = {"backbone_weights": {"file": info.weights_file, "sha256": info.weights_sha256,
                                    "bytes": info.weights_bytes}}
    if heads_file is not None:
        sources["heads"] = {"file": heads_file.name, "sha256": file_sha256(heads_file),
                            "bytes": heads_file.stat().st_size}
    return Manifest(
        name=name, description=description,
        input=InputSpec(name=INPUT_NAME, size=tuple(info.image_size),
                        mean=tuple(mean or info.preprocess["mean"]), std=tuple(std or info.preprocess["std"])),
        preprocess=preprocess_spec(info), heads=tuple(heads),
        backbone={"id": info.id, "activation": info.activation, "embed_dim": info.embed_dim,
                  "feature": "projected CLS token (encode_image), L2-normalised",
                  "config": info.config, **info.extra},
        embedding={"output": OUT_EMBEDDING, "dim": info.embed_dim, "normalized": True},
        precision="fp32", opset=opset, tools=tool_versions(), sources=sources,
        created_utc=_dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
    )


def check_against_torch(path: Path, graph: ScanGraph, image_size, seed: int = 0) -> dict:
    """Run the written file in ONNX Runtime and the module in PyTorch on the same inputs (batch 1 and 3)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    gen = torch.Generator().manual_seed(seed)
    worst = 1.0
    max_abs = {}
    for batch in (1, 3):
        x = torch.randn(batch, 3, *image_size, generator=gen)
        with torch.no_grad():
            ref = [t.numpy() for t in graph(x)]
        got = session.run(names, {INPUT_NAME: x.numpy()})
        for name, r, g in zip(names, ref, got):
            if r.shape != g.shape:
                raise ExportCheckError(f"output {name}: ONNX shape {g.shape} != PyTorch {r.shape} at batch {batch}")
            max_abs[name] = max(max_abs.get(name, 0.0), float(np.abs(r - g).max()))
        emb_i = names.index(OUT_EMBEDDING)
        worst = min(worst, float(cosine_rows(ref[emb_i], got[emb_i]).min()))
    if worst < FP32_MIN_COSINE:
        raise ExportCheckError(f"embedding cosine {worst:.7f} < {FP32_MIN_COSINE} between ONNX Runtime and PyTorch")
    return {"embedding_cosine_min": worst, "max_abs_diff": max_abs, "batches": [1, 3]}


def export_model(arch: str, weights: str | Path, heads: str | Path, out: str | Path, *,
                 name: str | None = None, description: str = "", quick_gelu: bool | None = None,
                 opset: int = 18, mean=None, std=None, threshold: float | None = None) -> ExportReport:
    """Export an open_clip image tower plus clipscan heads to one ONNX file with its manifest."""
    visual, info = load_backbone(arch, weights, quick_gelu=quick_gelu)
    heads = Path(heads)
    detector, quality = load_heads(heads, info.embed_dim)
    if threshold is not None and detector is not None:
        detector.threshold = float(threshold)
    graph = ScanGraph(visual, detector, quality).eval()
    return export_graph(graph, info, out, name=name or Path(out).stem, description=description, opset=opset,
                        heads_file=heads, mean=mean, std=std)


def export_graph(graph: ScanGraph, info: BackboneInfo, out: str | Path, *, name: str, description: str = "",
                 opset: int = 18, heads_file: Path | None = None, mean=None, std=None) -> ExportReport:
    manifest = build_manifest(info, graph, name=name, description=description, opset=opset,
                              heads_file=heads_file, mean=mean, std=std)
    example = torch.zeros(2, 3, *info.image_size)
    log.info("exporting %s (%s) to ONNX opset %d", name, info.id, opset)
    model = to_onnx(graph, example, INPUT_NAME, graph.output_names(), opset)
    attach_manifest(model, manifest)
    path = save_checked(model, out)
    checks = check_against_torch(path, graph, info.image_size)
    log.info("wrote %s: embedding cosine vs PyTorch >= %.7f", path, checks["embedding_cosine_min"])
    return ExportReport(path=path, manifest=manifest, checks=checks)
