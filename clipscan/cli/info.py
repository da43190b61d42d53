"""`clipscan info`: print the manifest of a model artifact, as readable lines or as raw JSON."""
from __future__ import annotations

import json

from . import EXIT_OK


def add_arguments(p) -> None:
    p.add_argument("model", nargs="?", help="exported .onnx artifact (default: the bundled demo model)")
    p.add_argument("--json", action="store_true", help="print the raw manifest JSON")


def describe_manifest(artifact) -> str:
    """The manifest of `artifact` (a `clipscan.runtime.Artifact`), one aspect per line."""
    from clipscan.runtime.manifest import DECISION_TASKS

    m = artifact.manifest
    lines = [
        f"model        {m.name}" + ("  [bundled demo model: not a real detector]" if artifact.is_demo else ""),
        f"file         {artifact.path}",
        f"sha256       {artifact.sha256()}",
        f"schema       {m.schema_version}    precision {m.precision}    opset {m.opset}",
        (f"backbone     {m.backbone.get('id')}  activation={m.backbone.get('activation')}  "
         f"embed_dim={m.backbone.get('embed_dim')}"),
    ]
    if m.description:
        lines.append(f"description  {m.description}")
    i = m.input
    norm = "folded into the graph" if i.folded else f"mean={list(i.mean)} std={list(i.std)}"
    hw = f"each image at its own size ({i.own_size.describe()})" if i.own_size else f"{i.size[0]}x{i.size[1]}"
    lines.append(f"input        {i.name} {i.layout} {i.dtype} {hw} {i.color}, {norm}")
    p = m.preprocess
    if i.own_size:
        lines.append(f"preprocess   exif={p.exif_orientation}; no resize, no crop (the image at its own size); "
                     f"RGB (alpha {p.alpha})")
    else:
        lines.append(f"preprocess   exif={p.exif_orientation}; resize {p.resize_mode} "
                     f"{p.resize_size[0]}x{p.resize_size[1]} {p.interpolation}; crop {p.crop_mode} "
                     f"{p.crop_size[0]}x{p.crop_size[1]} pad={p.pad_fill}"
                     f"{'' if p.crop_offsets == 'round' else ' offsets=' + p.crop_offsets}; "
                     f"RGB (alpha {p.alpha})")
    if p.graph_crops is not None:
        from clipscan.runtime.graph_crops import graph_crops_line

        lines.append(f"crops        {graph_crops_line(p.graph_crops)}")
    for h in m.heads:
        outs = ", ".join(f"{role}={name}" for role, name in h.outputs.items())
        extra = (f"labels={list(h.labels)} threshold={h.threshold}" if h.task in DECISION_TASKS
                 else f"scale={h.scale}")
        lines.append(f"head         {h.name} ({h.task}): {outs}; {extra}")
    if m.embedding:
        lines.append(f"embedding    {m.embedding['output']} dim={m.embedding.get('dim')} "
                     f"normalized={m.embedding.get('normalized')}")
    from .info_calibration import calibration_lines, source_lines

    lines.extend(source_lines(m))
    lines.append("tools        " + ", ".join(f"{k} {v}" for k, v in m.tools.items()))
    lines.extend(calibration_lines(m))
    draft = m.draft_decoding_record()
    lines.append("draft JPEG   " + ("no check recorded: scans decode exactly unless --decode draft" if not draft else
                                    f"{'passed' if draft.get('passed') else 'not passed'} on {draft.get('n_affected')} "
                                    f"images (agreement {draft.get('agreement')}, cosine mean "
                                    f"{draft.get('cosine_mean')}): --decode auto uses "
                                    f"{'draft' if draft.get('passed') else 'exact'}"))
    exported = (m.calibration or {}).get("source_model_created_utc")
    lines.append(f"created      {m.created_utc}" + (f" (calibrated; its FP32 export: {exported})" if exported else ""))
    return "\n".join(lines)


def run(args) -> int:
    from clipscan.runtime import load_artifact

    artifact = load_artifact(args.model)
    if args.json:
        print(json.dumps(artifact.manifest.to_dict(), indent=2))
    else:
        print(describe_manifest(artifact))
    return EXIT_OK
