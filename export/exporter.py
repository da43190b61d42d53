"""`export_model`: open_clip backbone + heads from local files -> one checked ONNX artifact."""
from __future__ import annotations

import datetime as _dt
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from clipscan.measure.machine import EXPORT_TOOLS, tool_versions
from clipscan.measure.thresholds import EXPORT_FP32_MIN_COSINE as FP32_MIN_COSINE
from clipscan.runtime.artifact import file_sha256
from clipscan.runtime.atomic import replacing
from clipscan.runtime.errors import CheckpointError, InvalidArgumentError
from clipscan.runtime.fidelity_metrics import cosine_rows
from clipscan.runtime.manifest import NATIVE, OWN_SIZE_MAX_PIXELS, RESIZE_MODES, InputSpec, Manifest, PreprocessSpec

from .backbone import BackboneInfo
from .choices import EXPORT_PRECISIONS, GRAPH_STYLES
from .deps import require
from .errors import ExportCheckError
from .fp16 import convert_to_fp16
from .fp16_check import check_fp16
from .graph import (INPUT_NAME, OUT_EMBEDDING, ScanGraph, drop_positional_embedding, fold_normalization,
                    follow_image_size, resample_positional_embedding, set_visual_prompts)
from .hf_clip import load_tower
from .importers import import_heads, parse_head_arg
from .iqa import NO_POSITIONAL_EMBEDDING, RESAMPLED_POSITIONAL_EMBEDDING, VIEW_CROPS
from .onnx_writer import attach_manifest, save_checked, to_onnx, validate_manifest
from .tower_kind import tower_kind, vit_only_reason

log = logging.getLogger("clipscan.export")
torch = require("torch")


@dataclass
class ExportReport:
    path: Path
    manifest: Manifest
    checks: dict = field(default_factory=dict)


def preprocess_spec(info: BackboneInfo) -> PreprocessSpec:
    """The manifest recipe equal to the reference transform for this backbone's preprocess cfg."""
    pp = info.preprocess
    size = tuple(info.image_size)
    mode = pp.get("resize_mode", "shortest")
    if mode == NATIVE:   # no resize, no crop: the graph takes the image as it is (input.own_size)
        return PreprocessSpec(resize_mode="none", resize_size=size, interpolation=pp.get("interpolation", "bicubic"),
                              crop_mode="none", crop_size=size, exif_orientation="apply",
                              graph_crops=pp.get("graph_crops"))
    if mode not in RESIZE_MODES:
        raise CheckpointError(f"the architecture's preprocess_cfg has resize_mode {mode!r}; clipscan supports "
                              f"{', '.join(RESIZE_MODES)}")
    crop = pp.get("crop_mode", "none" if mode == "squash" else "center")
    sliding = {"stride": int(pp.get("stride", 64)), "max_per_axis": int(pp.get("max_per_axis", 8))}
    return PreprocessSpec(
        resize_mode=mode, resize_size=size, interpolation=pp.get("interpolation", "bicubic"),
        crop_mode=crop, crop_size=size, pad_fill=int(pp.get("fill_color", 0)), exif_orientation="apply",
        crop_offsets=pp.get("crop_offsets", "round"),
        graph_crops=pp.get("graph_crops"), **(sliding if crop == "sliding" else {}),
    )



def _source(path: Path) -> dict:
    return {"file": path.name, "sha256": file_sha256(path), "bytes": path.stat().st_size}


def build_manifest(info: BackboneInfo, graph: ScanGraph, *, name: str, description: str, opset: int,
                   head_files: list[Path] = (), mean=None, std=None, precision: str = "fp32",
                   head_names: list = (), own_size=None) -> Manifest:
    sources = {"backbone_weights": {"file": info.weights_file, "sha256": info.weights_sha256,
                                    "bytes": info.weights_bytes}}
    for i, path in enumerate(head_files):
        # the key stays heads, heads_1... (what verify matches); "heads" names the heads this file gave
        names = list(head_names[i]) if i < len(head_names) and head_names[i] else None
        sources["heads" if i == 0 else f"heads_{i}"] = {**_source(path), **({"heads": names} if names else {})}
    mean = tuple(mean or info.preprocess["mean"])
    std = tuple(std or info.preprocess["std"])
    if graph.takes_uint8:
        input_spec = InputSpec(name=INPUT_NAME, size=tuple(info.image_size), dtype="uint8", mean=None, std=None,
                               own_size=own_size)
    else:
        input_spec = InputSpec(name=INPUT_NAME, size=tuple(info.image_size), mean=mean, std=std, own_size=own_size)
    backbone = {"id": info.id, "tower": tower_kind(graph.visual), "activation": info.activation,
                "embed_dim": info.embed_dim, "width": info.width,
                "features": sorted({h.feature for h in graph.heads} | {"embedding"}),
                "config": info.config, **info.extra}
    if graph.takes_uint8:
        backbone["normalization_folded"] = {"mean": list(mean), "std": list(std)}
    return Manifest(
        name=name, description=description, input=input_spec, preprocess=preprocess_spec(info),
        heads=tuple(h.spec() for h in graph.heads), backbone=backbone,
        embedding={"output": OUT_EMBEDDING, "dim": info.embed_dim, "normalized": True},
        precision=precision, opset=opset, tools=tool_versions(EXPORT_TOOLS), sources=sources,
        created_utc=_dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
    )


def check_against_torch(path: Path, graph: ScanGraph, reference: ScanGraph, image_size, mean, std,
                        seed: int = 0, own_size=None) -> dict:
    """Run the written file in ONNX Runtime and the unfolded PyTorch model on the same pixels (batch 1 and 3;
    with `own_size`, also one image at two other sizes: the smallest side, and one that is no multiple of it)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    gen = torch.Generator().manual_seed(seed)
    worst = 1.0
    max_abs: dict[str, float] = {}
    mean = torch.tensor(mean).view(1, 3, 1, 1)
    std = torch.tensor(std).view(1, 3, 1, 1)
    shapes = [(1, *image_size), (3, *image_size)]
    if own_size is not None:
        from .native_size import check_sizes

        shapes += [(1, *hw) for hw in check_sizes(own_size, image_size)]
    for batch, *hw in shapes:
        pixels = torch.randint(0, 256, (batch, 3, *hw), generator=gen, dtype=torch.uint8)
        normalised = (pixels.float() / 255 - mean) / std
        with torch.no_grad():
            ref = [t.numpy() for t in reference(normalised)]
        feed = pixels.numpy() if graph.takes_uint8 else normalised.numpy()
        got = session.run(names, {INPUT_NAME: feed})
        for name, r, g in zip(names, ref, got):
            if r.shape != g.shape:
                raise ExportCheckError(f"output {name}: ONNX shape {g.shape} != PyTorch {r.shape} at batch {batch}")
            max_abs[name] = max(max_abs.get(name, 0.0), float(np.abs(r - g).max()))
        emb_i = names.index(OUT_EMBEDDING)
        worst = min(worst, float(cosine_rows(ref[emb_i], got[emb_i]).min()))
    if worst < FP32_MIN_COSINE:
        raise ExportCheckError(f"embedding cosine {worst:.7f} < {FP32_MIN_COSINE} between ONNX Runtime and PyTorch")
    return {"embedding_cosine_min": worst, "max_abs_diff": max_abs, "batches": [1, 3],
            **({"sizes": [list(s[1:]) for s in shapes]} if own_size is not None else {})}


@dataclass
class Reference:
    """The PyTorch original of an artifact: image tower, heads, and what was read to build them."""
    visual: object
    heads: list
    info: BackboneInfo
    head_files: list[Path]
    head_names: list = field(default_factory=list)   # the names of the heads each head file gave

    def graph(self) -> ScanGraph:
        """The float32 PyTorch model (taking normalised pixels) that an export must reproduce."""
        return ScanGraph(self.visual, self.heads).eval()


def load_reference(arch: str | None, weights: str | Path, heads, *, quick_gelu: bool | None = None,
                   threshold: float | None = None, resize_mode: str | None = None,
                   weights_format: str = "auto") -> Reference:
    """Load backbone and heads from local files as `export_model` does (used by export and verify).
    `resize_mode`: one resize for every head, instead of each published head's own (see import_heads).
    `weights_format`: one of export.weights_formats (auto: detected from the file or folder)."""
    visual, info = load_tower(arch, weights, quick_gelu=quick_gelu, weights_format=weights_format)
    items = heads if isinstance(heads, (list, tuple)) else [heads]
    imported = import_heads(items, info, resize_mode)
    if imported.preprocess:
        info = replace(info, preprocess={**info.preprocess, **imported.preprocess})
    if imported.tower_change in (VIEW_CROPS, RESAMPLED_POSITIONAL_EMBEDDING):   # an input of the heads' size
        info = replace(info, image_size=tuple(info.preprocess["size"]))
    if imported.visual_prompts is not None:
        set_visual_prompts(visual, imported.visual_prompts)
    if resize_mode == NATIVE:
        from .native_size import native_heads

        info = native_heads(imported.tower_change, imported.heads, info)
    if imported.tower_change == NO_POSITIONAL_EMBEDDING:
        drop_positional_embedding(visual, own_size=resize_mode == NATIVE)
    if imported.tower_change == RESAMPLED_POSITIONAL_EMBEDDING:
        if resize_mode == NATIVE:   # resampled in the graph, from the tower's own embedding, to each input's tokens
            follow_image_size(visual)
        else:
            resample_positional_embedding(visual, info.image_size)
    if threshold is not None:
        for h in imported.heads:
            if h.task == "detection":
                h.threshold = float(threshold)
    head_files = [p for i in items if not isinstance(i, torch.nn.Module) and (p := parse_head_arg(i)[1]) is not None]
    names = {str(path): tuple(h.name for h in got) for path, got in imported.files}  # final names (deduplicated)
    return Reference(visual, imported.heads, info, head_files, [names.get(str(Path(p)), ()) for p in head_files])


def export_model(arch: str | None, weights: str | Path, heads, out: str | Path, *,
                 name: str | None = None, description: str = "", quick_gelu: bool | None = None,
                 opset: int = 18, mean=None, std=None, threshold: float | None = None,
                 uint8_input: bool = False, precision: str = "fp32", graph: str = "auto",
                 primary: str | None = None, ensemble: str | None = None,
                 ensemble_threshold: float = 0.5, resize_mode: str | None = None,
                 weights_format: str = "auto", max_input_pixels: int = OWN_SIZE_MAX_PIXELS,
                 progress=None) -> ExportReport:
    """Export an open_clip image tower plus heads to one ONNX file with its manifest.

    `heads`: a clipscan heads file, "FORMAT:PATH" (univfd, cozzolino, ...), a head module,
    or a list of these; all heads share one backbone pass. `uint8_input` folds the mean/std
    normalisation into the patch embedding so the graph takes uint8 RGB. `precision` "fp16"
    writes float16 weights and compute with LayerNorm, Softmax and the tail after the tower
    (projection, normalisation, heads) in float32 and float32 outputs (see `clipscan.export.fp16`);
    it must pass the FP16 gates against the PyTorch FP32 model or ExportCheckError is raised.
    `graph`: "lean" writes the transformer blocks in the export-friendly form of
    `clipscan.export.lean_blocks` (same function, less glue, faster in ONNX Runtime), "stock" traces
    open_clip's own forward, "auto" (default) is lean when every block supports it. `primary` names
    the decision head a row's p_generated/logit/verdict come from (default: the first); `ensemble`
    (a rule of `clipscan.runtime.manifest.ENSEMBLE_RULES`) decides from every decision head instead (either
    recorded as manifest.decision, the default primary too; every head's own answer is in every row either way).
 `weights_format` (see
    `clipscan.export.weights_formats`): "hf" reads a Hugging Face transformers CLIP checkpoint, whose own
    config gives the architecture (`arch` then only for a single weights file); "auto" detects it.
    `resize_mode` "native" (runtime.manifest.NATIVE; clip-iqa, clip-iqa+ and LIQE only, see
    `clipscan.export.native_size`) writes a graph taking each image at its own height and width,
    images of more than `max_input_pixels` pixels refused at scan time.
    `progress`: a `clipscan.runtime.progress.Progress` that gets one step per stage of `export_stages`.
    """
    stage = _stages(progress)
    stage("loading the checkpoint and heads")
    ref = load_reference(arch, weights, heads, quick_gelu=quick_gelu, threshold=threshold, resize_mode=resize_mode,
                         weights_format=weights_format)
    from .recorded import record

    recorded = record(arch, weights, heads, quick_gelu=quick_gelu, threshold=threshold, resize_mode=resize_mode,
                      mean=mean, std=std, weights_format=weights_format)
    return export_graph(ref.visual, ref.heads, ref.info, out, name=name or Path(out).stem, description=description,
                        opset=opset, head_files=ref.head_files, head_names=ref.head_names, mean=mean, std=std,
                        uint8_input=uint8_input,
                        precision=precision, graph=graph, primary=primary, ensemble=ensemble,
                        ensemble_threshold=ensemble_threshold, stage=stage, recorded=recorded,
                        max_input_pixels=max_input_pixels)


def export_stages(precision: str = "fp32") -> tuple[str, ...]:
    """What export_model reports to its progress bar, in order (export_graph: all but the first)."""
    return ("loading the checkpoint and heads", "building the graph and counting its FLOPs", "tracing to ONNX",
            *(("converting to FP16",) if precision == "fp16" else ()), "checking the ONNX file against PyTorch")


def _stages(progress):
    """A `stage(note)` call: the previous stage is done (one step of `progress`), `note` runs now."""
    started = []

    def stage(note: str | None) -> None:
        if progress is None:
            return
        if started:
            progress.update()
        started.append(note)
        if note is not None:
            progress.set_note(note)
    return stage


def resolve_graph_style(visual, style: str, precision: str = "fp32") -> tuple[bool, str]:
    """(lean?, why) for a requested graph style; 'lean' on a tower it cannot express is an error.

    "auto" is lean for FP32 (the graph ONNX Runtime CPU and INT8 calibration start from) and stock
    for FP16: FP16 targets GPUs, whose compilers fuse that glue themselves, and the lean graph's
    reordered float16 operations round slightly differently from the PyTorch original (near-tied
    quality scores can swap ranks), so FP16 keeps open_clip's own forward."""
    from .lean_blocks import lean_unsupported_reason

    if style not in GRAPH_STYLES:
        raise InvalidArgumentError(f"graph style {style!r} is not one of {list(GRAPH_STYLES)}")
    if style == "stock":
        return False, "asked for open_clip's own block forward"
    if style == "auto" and precision != "fp32":
        return False, f"auto picks open_clip's own block forward for {precision}"
    why = vit_only_reason(visual, "the lean graph") or lean_unsupported_reason(visual.transformer)
    if why is None:
        return True, "every block is open_clip's standard ResidualAttentionBlock"
    if style == "lean":
        raise InvalidArgumentError(f"--graph lean was asked for, but {why}; use --graph stock (or auto)")
    return False, f"lean graph not possible: {why}"


def flops_per_image(module, image_size, dtype) -> int | None:
    """Floating-point operations of one image through the graph (matrix products and convolutions,
    2 per multiply-add), counted by PyTorch's FlopCounterMode; None when counting fails."""
    try:
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            module(torch.zeros(1, 3, *image_size, dtype=dtype))
        return int(counter.get_total_flops())
    except Exception as e:  # a count is a nice-to-have; never fail an export over it
        log.debug("FLOP count failed: %s", e)
        return None


def export_graph(visual, heads: list, info: BackboneInfo, out: str | Path, *, name: str, description: str = "",
                 opset: int = 18, head_files: list[Path] = (), head_names: list = (), mean=None, std=None,
                 uint8_input: bool = False, precision: str = "fp32", graph: str = "auto",
                 primary: str | None = None, ensemble: str | None = None,
                 ensemble_threshold: float = 0.5, stage=None, recorded: dict | None = None,
                 max_input_pixels: int = OWN_SIZE_MAX_PIXELS) -> ExportReport:
    """`recorded`: what export was given (`recorded.record`), kept as the manifest's sources.export. A tower
    marked by `drop_positional_embedding(own_size=True)` or `follow_image_size` is written with dynamic height
    and width, its input.own_size bounded by `max_input_pixels` (export.native_size)."""
    import copy

    stage = stage or _stages(None)
    stage("building the graph and counting its FLOPs")
    if precision not in EXPORT_PRECISIONS:
        hint = " (INT8 artifacts come from clipscan.calibration, not from export)" if precision == "int8" else ""
        raise InvalidArgumentError(f"precision {precision!r} is not one export writes; choose one of "
                                   f"{list(EXPORT_PRECISIONS)}{hint}")

    own = None
    from .native_size import is_own_size

    if is_own_size(visual, heads):
        from .native_size import WHAT, own_size

        crops = getattr(heads[0], "crops", None)
        if crops is None:   # the tower itself at any size (LIQE's crops keep it at its own 224)
            if graph == "lean":
                raise InvalidArgumentError(f"{WHAT} is written with open_clip's own block forward for this head (the "
                                           "lean graph fixes the token count); use --graph auto or stock")
            graph = "stock"
        own = own_size(visual, max_input_pixels, crops)
    mean = tuple(mean or info.preprocess["mean"])
    std = tuple(std or info.preprocess["std"])
    reference = ScanGraph(visual, heads).eval()   # open_clip's own forward: what the checks compare with
    lean, why = resolve_graph_style(visual, graph, precision)
    log.info("graph: %s (%s)", "lean" if lean else "stock", why)
    if uint8_input:
        folded_visual = copy.deepcopy(visual)
        fold_normalization(folded_visual, mean, std)
        graph = ScanGraph(folded_visual, heads, takes_uint8=True, lean=lean, fused_attention=opset >= 23).eval()
    else:
        graph = ScanGraph(visual, heads, lean=lean, fused_attention=opset >= 23).eval()
    manifest = build_manifest(info, graph, name=name, description=description, opset=opset,
                              head_files=list(head_files), mean=mean, std=std, precision=precision,
                              head_names=list(head_names), own_size=own)
    manifest.backbone["graph"] = "lean" if lean else "stock"
    if recorded is not None:
        from .recorded import RECORD_KEY

        manifest.sources[RECORD_KEY] = recorded
    if primary is not None and ensemble is not None:
        raise InvalidArgumentError("--primary and --ensemble are alternatives: the row's verdict comes from one head "
                                   "or from a rule over all of them")
    if primary is not None:
        manifest = replace(manifest, decision={"primary": primary})
    elif ensemble is not None:
        manifest = replace(manifest, decision={"ensemble": ensemble, "threshold": float(ensemble_threshold)})
    elif manifest.decision_head() is not None:  # the default, recorded too: the manifest says who decides
        manifest = replace(manifest, decision={"primary": manifest.decision_head().name})
    validate_manifest(manifest, "the manifest of this export (check --threshold, --mean, --std, --primary, "
                                "--ensemble)")
    # counted on the lean form when possible: PyTorch's FLOP counter misses the fused attention kernel
    # that open_clip's own blocks call on the CPU
    from .lean_blocks import lean_unsupported_reason

    counted = reference if (vit_only_reason(visual, "lean") or lean_unsupported_reason(visual.transformer)) else \
        ScanGraph(visual, heads, lean=True)
    flops = flops_per_image(counted.eval(), info.image_size, torch.float32)
    if flops:
        manifest.backbone["gflops_per_image"] = round(flops / 1e9, 4)
    example = torch.zeros(2, 3, *info.image_size, dtype=torch.uint8 if uint8_input else torch.float32)
    log.info("exporting %s (%s) to ONNX opset %d", name, info.id, opset)
    stage("tracing to ONNX")
    model = to_onnx(graph, example, INPUT_NAME, graph.output_names(), opset,
                    own_size=(own.min_side, own.max_pixels // own.min_side) if own else None)
    if precision == "fp16":
        stage("converting to FP16")
        converted = convert_to_fp16(model, tower=tower_kind(visual))
        model = converted.model
        manifest.backbone["fp16"] = converted.manifest_facts()
    attach_manifest(model, manifest)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    stage("checking the ONNX file against PyTorch")
    with replacing(path) as work:  # checked under a hidden name; renamed to `out` only when it passed
        save_checked(model, work)
        if precision == "fp16":
            checks = check_fp16(work, graph, reference, info.image_size, mean, std, own_size=own)
        else:
            checks = check_against_torch(work, graph, reference, info.image_size, mean, std, own_size=own)
    stage(None)
    if precision == "fp16":
        half = checks.get("torch_half_cpu", {})
        log.info("wrote %s (FP16): embedding cosine vs PyTorch FP32: ONNX Runtime CPU mean %.7f worst %.7f; "
                 "PyTorch float16 mean %.7f worst %.7f", path, checks["onnxruntime_cpu"]["embedding_cosine_mean"],
                 checks["embedding_cosine_min"], half.get("embedding_cosine_mean", float("nan")),
                 half.get("embedding_cosine_min", float("nan")))
    else:
        log.info("wrote %s: embedding cosine vs PyTorch >= %.7f", path, checks["embedding_cosine_min"])
    return ExportReport(path=path, manifest=manifest, checks=checks)
