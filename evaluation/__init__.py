"""clipscan.evaluation: is an artifact accurate on my data, and where does its threshold go?

`evaluate` scans a labelled set (folders of real and generated images, or a CSV/JSONL list) with the runtime
and computes every head's metrics with scikit-learn and scipy (`clipscan evaluate`); several artifacts, and
scores from elsewhere (the PyTorch original, scored in clipscan.calibration), are compared on the same
files. `set_threshold` picks thresholds for a target false-positive rate on real images and writes a new
artifact that records them (`clipscan threshold`), without onnx or torch.

Needs the `evaluate` extra (scikit-learn, which brings scipy) besides the runtime; never torch or onnx.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clipscan.runtime.artifact import load_artifact
from clipscan.runtime.atomic import write_text

from .collect import Scored, scan_set
from .labels import GENERATED, REAL, Item, LabelledSet, LabelsError, content_hash, from_folders, from_list
from .metrics import evaluate_scores
from .onnx_write import write_with_manifest
from .page import render
from .tables import compare_table, differences, model_table
from .threshold import ThresholdError, choice_record, choose, detection_rates, new_manifest


def evaluate(models: list, labelled: LabelledSet, *, scored: list[Scored] = (), backend: str = "auto",
             batch_size: int = 16, decode: str = "auto", n_boot: int = 1000, seed: int = 0,
             progress: bool = False) -> list[dict]:
    """Every model in `models` (artifact paths, None for the demo model) scanned on `labelled`, then the
    already scored `scored` (e.g. the PyTorch original): one metrics dict per model, in that order."""
    runs = [scan_set(m, labelled, backend=backend, batch_size=batch_size, decode=decode, progress=progress)
            for m in models]
    names = [r.name for r in runs]
    for r in runs:  # two files of the same name in different folders: tell them apart in tables
        if names.count(r.name) > 1:
            r.name = r.identity["file"]
    return [evaluate_scores(labelled, r, n_boot=n_boot, seed=seed) for r in [*runs, *scored]]


def write_outputs(results: list[dict], labelled: LabelledSet, *, json_path=None, html_path=None) -> None:
    if json_path:
        doc = {"clipscan_evaluate": 1, "source": labelled.source, "counts": labelled.counts(), "models": results,
               "differences": differences(results) if len(results) > 1 else []}
        write_text(json_path, json.dumps(doc, indent=1))
    if html_path:
        write_text(html_path, render(results, labelled.source, labelled.counts()))


def text_report(results: list[dict]) -> str:
    parts = [model_table(r) for r in results]
    if len(results) > 1:
        parts.append(compare_table(results))
    return "\n\n".join(parts)


@dataclass
class ThresholdResult:
    output: str | None
    fpr: float
    chosen: dict
    detection: dict | None
    failed: list          # {"path", "error"} of every file that did not scan
    record: dict
    previous: dict        # {head: threshold before}


def _p(scored: Scored, head: str | None) -> np.ndarray:
    if head is None:  # the row's p (the mean-logit rule's), as the runtime compares it with the threshold
        return np.array([r["p_generated"] for r in scored.rows if r is not None], np.float64)
    return np.array([h[head]["p_generated"] for h in scored.heads if h is not None], np.float64)


def set_threshold(model, real: list[str], fpr: float, *, generated: list[str] = (), output=None,
                  backend: str = "auto", batch_size: int = 16, progress: bool = False) -> ThresholdResult:
    """Thresholds for false-positive rate `fpr` on the images under `real`; detection rates on `generated`;
    the new artifact written to `output` (never over `model`) when given."""
    if not 0.0 < fpr < 1.0:
        raise ThresholdError(f"--fpr is a false-positive rate in (0, 1), e.g. 0.01; got {fpr}")
    if output is not None and Path(output).resolve() == load_artifact(model).path:
        raise ThresholdError(f"-o {output} is the model itself; the input is never overwritten: name a new file")
    real_set = from_folders(list(real), [])
    real_scored = scan_set(model, real_set, backend=backend, batch_size=batch_size, progress=progress)
    manifest = real_scored.manifest
    decision_heads = manifest.decision_heads()
    if not decision_heads:
        raise ThresholdError(f"{real_scored.name} has no detection or attribution head (heads: "
                             f"{[h.name for h in manifest.heads]}): there is no threshold to set")
    rule = manifest.ensemble
    heads = {h.name: _p(real_scored, h.name) for h in decision_heads}
    rows = _p(real_scored, None) if rule == "mean_logit" else None
    chosen = choose(heads, rows, rule, fpr)
    failed = [{"path": real_set.items[i].path, "error": e} for i, e in real_scored.failed]
    detection = None
    if generated:
        gen_set = from_folders([], list(generated))
        gen_scored = scan_set(model, gen_set, backend=backend, batch_size=batch_size, progress=progress)
        gfailed = [{"path": gen_set.items[i].path, "error": e} for i, e in gen_scored.failed]
        failed += gfailed
        detection = detection_rates(chosen, {h: _p(gen_scored, h) for h in heads},
                                    _p(gen_scored, None) if rule == "mean_logit" else None, rule, len(gfailed))
    counts = {"real_files_given": len(real_set.items), "real_files_failed": len(real_scored.failed)}
    record = choice_record(fpr, content_hash(real_set.paths), counts, real_scored.identity["sha256"])
    previous = {h.name: h.threshold for h in decision_heads}
    if output is not None:
        source = real_scored.identity["file"]
        updated = new_manifest(manifest, chosen, record)
        write_with_manifest(source, output, updated.to_json())
    return ThresholdResult(None if output is None else os.fspath(output), fpr, chosen, detection, failed, record,
                           previous)


def threshold_text(r: ThresholdResult) -> str:
    lines = [f"target false-positive rate {r.fpr:g} on {r.record['real_files_given']} real files "
             f"({r.record['real_files_failed']} failed and are not counted; content hash "
             f"{r.record['files_sha256'][:16]})"]
    for name, c in r.chosen["heads"].items():
        lo, hi = c["ci95"]
        lines.append(f"  head {name}: threshold {r.previous[name]:.6g} -> {c['threshold']:.6g}; "
                     f"{c['false_positives']} of {c['real_files']} real files at or above it: false-positive rate "
                     f"{c['achieved_fpr']:.4f} (95% Clopper-Pearson {lo:.4f} to {hi:.4f})")
    d = r.chosen.get("decision")
    if d:
        t = f"threshold {d['threshold']:.6g}; " if "threshold" in d else "per-head thresholds above; "
        lo, hi = d["ci95"]
        lines.append(f"  row decision ({d['rule']} rule re-applied): {t}{d['false_positives']} of {d['real_files']} "
                     f"real files said generated: {d['achieved_fpr']:.4f} ({lo:.4f} to {hi:.4f})")
    for name, v in (r.detection or {}).items():
        lines.append(f"  detection rate on --generated ({name}): {v['detected']} of {v['generated_files']} = "
                     f"{v['detection_rate']:.4f}" if v["detection_rate"] is not None else f"  {name}: no files")
    if r.failed:
        lines.append(f"failed files ({len(r.failed)}):")
        lines += [f"  {f['path']}: {f['error']}" for f in r.failed]
    lines.append(f"written: {r.output} (its manifest records the thresholds and how they were chosen)" if r.output
                 else "nothing written: pass -o OUT.onnx to write an artifact with these thresholds")
    return "\n".join(lines)


__all__ = ["GENERATED", "REAL", "Item", "LabelledSet", "LabelsError", "Scored", "ThresholdError", "ThresholdResult",
           "evaluate", "evaluate_scores", "from_folders", "from_list", "scan_set", "set_threshold", "text_report",
           "threshold_text", "write_outputs"]
