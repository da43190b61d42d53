"""`verify`: compare an exported artifact with its PyTorch original on a folder of images.

The reference is the PyTorch FP32 model (`Reference.graph()`) fed by a transform built
independently from the manifest's recipe with open_clip/torchvision, on the same decoded
pixels; the export is the artifact run by `clipscan.runtime.Scanner` on the CPU backend.
Images are found and decoded by the runtime's own discovery and decoder; files that do not
decode are listed, not fatal. Everything is streamed in batches, so memory does not grow
with the folder.

Needs `clipscan[export]` (torch, open_clip); the runtime never imports this module.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image

from clipscan.export.deps import require
from clipscan.measure.machine import EXPORT_TOOLS, tool_versions
from clipscan.measure.thresholds import VAL_MIN_IMAGES, VAL_TWO_FLIPS_IMAGES
from clipscan.runtime import Scanner
from clipscan.runtime.artifact import file_sha256
from clipscan.runtime.decode import DEFAULT_MAX_PIXELS, load_image
from clipscan.runtime.discover import iter_files
from clipscan.runtime.errors import (
    CalibrationError,
    ImageReadError,
    InputNotFoundError,
    InvalidArgumentError,
    ModelError,
)
from clipscan.runtime.manifest import DECISION_TASKS
from clipscan.runtime.progress import Progress

from . import fidelity_gates
from .fidelity_gates import Gate
from .reference_input import LAUNDERINGS, ReferenceTransform
from .verify_compare import Stream, aggregate, evaluate_stream, match_heads, plot_data, recipe_gate, report_rows

torch = require("torch", "clipscan verify")
log = logging.getLogger("clipscan.verify")

INVARIANCE_ROWS = 32   # batch-1 and rerun checks on the first rows of the clean images


# -- collected data -------------------------------------------------------------------------------

@dataclass
class VerifyReport:
    model: str
    sha256: str
    manifest_name: str
    precision: str
    passed: bool
    gates: list
    metrics: dict
    rows: list
    failed_files: list
    robustness: dict
    versions: dict
    settings: dict
    method: list
    manifest_tools: dict = field(default_factory=dict)
    plots_data: dict = field(default_factory=dict, repr=False)
    json_path: Path | None = None
    html_path: Path | None = None

    def failed_gates(self) -> list[Gate]:
        return [g for g in self.gates if g.passed is False]

    def gate(self, name: str) -> Gate:
        for g in self.gates:
            if g.name == name:
                return g
        raise KeyError(f"no gate {name!r}; gates: {[g.name for g in self.gates]}")

    def to_dict(self) -> dict:
        return fidelity_gates.clean_json({
            "format": "clipscan.verify", "version": 1, "passed": self.passed,
            "model": {"path": self.model, "sha256": self.sha256, "name": self.manifest_name,
                      "precision": self.precision, "tools": self.manifest_tools},
            "gates": [g.to_dict() for g in self.gates],
            "failed_gates": [g.name for g in self.failed_gates()],
            "metrics": self.metrics, "robustness": self.robustness, "rows": self.rows,
            "failed_files": self.failed_files, "versions": self.versions, "settings": self.settings,
            "method": self.method,
        })

    def summary(self) -> str:
        from .fidelity_report import summary_table

        return summary_table(self)


# -- the run ----------------------------------------------------------------------------------------

class _Runner:
    def __init__(self, scanner: Scanner, reference, transform: ReferenceTransform, pairs, batch_size: int):
        self.scanner = scanner
        self.manifest = scanner.manifest
        self.graph = reference.graph()
        self.names = self.graph.output_names()
        self.transform = transform
        self.pairs = pairs
        self.batch_size = batch_size
        self.embedding = self.manifest.embedding
        if self.embedding is not None and self.embedding["output"] not in self.names:
            self.embedding = None
        # invariants
        self.inv_rows = 0
        self.inv_batch_n = 0
        self.batch_max_abs: float | None = None
        self.rerun_max_abs: float | None = None

    def reference_outputs(self, x: np.ndarray) -> dict:
        with torch.inference_mode():
            outs = self.graph(torch.from_numpy(np.ascontiguousarray(x)))
        return {n: o.float().numpy() for n, o in zip(self.names, outs)}

    def add(self, stream: Stream, name: str, img: Image.Image) -> None:
        """Queue one image: the runtime's tensor and the reference's. A runtime preprocessing error
        propagates (the caller lists the file); a reference transform error is recorded here."""
        rt = self.scanner.preprocess(img)
        try:
            if self.transform.available:
                ref_in, raw = self.transform(img)
                if ref_in.shape[1:] != rt.shape[1:]:
                    raise CalibrationError(f"the PyTorch reference makes a tensor of {ref_in.shape}, the artifact "
                                           f"{rt.shape}: pass the --arch the artifact was exported from")
                err = self.transform.pixel_error(rt, ref_in, raw)
            else:
                ref_in, err = self.transform.from_runtime(rt), None
        except Exception as e:  # the reference transform could not make this image
            stream.reference_failed.append({"path": name, "error": f"{type(e).__name__}: {e}"})
            return
        stream.pending.append((name, rt, ref_in, err))
        stream.rows += len(rt)

    def flush(self, stream: Stream, *, check_invariants: bool = False) -> None:
        if not stream.pending:
            return
        pending, stream.pending, stream.rows = stream.pending, [], 0
        # an artifact taking each image at its own size (input.own_size): one run per stretch of one size, in order
        runs: list[list] = []
        for p in pending:
            if runs and runs[-1][0][1].shape[1:] == p[1].shape[1:]:
                runs[-1].append(p)
            else:
                runs.append([p])
        for run in runs:
            self._flush(stream, run, check_invariants)

    def _flush(self, stream: Stream, pending: list, check_invariants: bool) -> None:
        counts = [len(p[1]) for p in pending]
        x_rt = np.concatenate([p[1] for p in pending])
        x_ref = np.concatenate([p[2] for p in pending])
        try:
            exp_out = self.scanner.predict(x_rt)
        except Exception as e:
            raise ModelError(f"the artifact failed to run on a batch of {len(x_rt)} row(s): {type(e).__name__}: {e}") from e
        try:
            ref_out = self.reference_outputs(x_ref)
        except Exception as e:
            # not a mistake clipscan can name (the checkpoints loaded and fit): a bug, shown with its cause
            raise RuntimeError(f"the PyTorch reference failed on a batch of {len(x_ref)} row(s): "
                               f"{type(e).__name__}: {e}") from e
        if check_invariants and self.inv_rows < INVARIANCE_ROWS:
            self._invariants(x_rt, exp_out)
        exp_heads, exp_emb = aggregate(exp_out, counts, self.pairs, self.embedding)
        ref_heads, ref_emb = aggregate(ref_out, counts, self.pairs, self.embedding)
        stream.names.extend(p[0] for p in pending)
        stream.pixel_error.extend(p[3] for p in pending)
        if exp_emb is not None:
            stream.cosine.extend(fidelity_gates.cosine_rows(exp_emb, ref_emb).tolist())
        for target, src in ((stream.exp, exp_heads), (stream.ref, ref_heads)):
            for head, roles in src.items():
                for role, values in roles.items():
                    target.setdefault(head, {}).setdefault(role, []).extend(values)

    def _invariants(self, x: np.ndarray, batched: dict) -> None:
        n = min(len(x), INVARIANCE_ROWS - self.inv_rows)
        batch_diff = rerun_diff = 0.0
        for i in range(n):
            single = self.scanner.predict(x[i:i + 1])
            for name, value in single.items():
                d = np.abs(np.asarray(value, np.float64) - np.asarray(batched[name][i:i + 1], np.float64))
                batch_diff = max(batch_diff, float(d.max()) if d.size else 0.0)
        again = self.scanner.predict(x)
        for name, value in again.items():
            d = np.abs(np.asarray(value, np.float64) - np.asarray(batched[name], np.float64))
            rerun_diff = max(rerun_diff, float(d.max()) if d.size else 0.0)
        self.inv_rows += n
        self.inv_batch_n = max(self.inv_batch_n, len(x))
        self.batch_max_abs = max(self.batch_max_abs or 0.0, batch_diff)
        self.rerun_max_abs = max(self.rerun_max_abs or 0.0, rerun_diff)


METHOD = [
    "Reference: the PyTorch FP32 model rebuilt from the backbone weights and heads files given to verify, "
    "fed by the preprocessing recipe in the artifact's manifest rebuilt independently with open_clip's "
    "image_transform (or torchvision's CenterCrop when the recipe has no resize).",
    "Export: the artifact run by clipscan's own runtime (Scanner, ONNX Runtime on the CPU), on the same "
    "decoded pixels: every image is decoded once with the runtime's decoder and given to both.",
    "Sources: the sha256 of the weights and heads files must equal the ones recorded in the manifest at export.",
    "Preprocessing: the runtime's input tensor against the reference transform's, in 0..255 pixel units "
    "(at most 1 apart).",
    "Features: the cosine between the exported and the reference embedding of each image; the mean "
    "(and, for FP16/INT8, the worst) must reach the bar of the artifact's precision.",
    "Outputs: for every detection head, the decision (probability >= threshold) of the export at the "
    "manifest's threshold against the reference's at its own threshold; the share of equal decisions must "
    "reach the precision's bar, and no image whose reference logit is farther than the margin from the "
    "threshold's logit may change side. For every quality head, the Spearman rank correlation between "
    "exported and reference scores (with at least 10 images).",
    "Invariants: the first rows run one at a time must give the batched outputs, and running the same "
    "batch twice must give identical outputs.",
    "Robustness: the same comparison on laundered copies (JPEG 75; Gaussian blur radius 1; half-size "
    "then JPEG 85); decision agreement there may not fall more than 0.5 percentage points below the "
    "clean images'.",
]


def _given_sources(reference) -> tuple[tuple[str, str] | None, list[tuple[str, str]]]:
    info = reference.info
    weights = None
    if info.weights_sha256:
        weights = (info.weights_path or info.weights_file, info.weights_sha256)
    heads = []
    for path in reference.head_files:
        path = Path(path)
        if path.is_file():
            heads.append((str(path), file_sha256(path)))
    return weights, heads


def verify(model_path, reference, images, report_dir=None, *, margin: float = fidelity_gates.DEFAULT_MARGIN,
           batch_size: int = 16, launder: bool | Iterable[str] = True, max_pixels: int = DEFAULT_MAX_PIXELS,
           all_files: bool = False, mean=None, std=None, progress: bool = False) -> VerifyReport:
    """Compare the artifact at `model_path` with `reference` (an `export.exporter.Reference`).

    `images`: a folder, a file, or a list of them (folders are walked as `clipscan scan` walks
    them). `report_dir`: where report.json and report.html go (None: nothing written).
    `launder`: True for every laundering in LAUNDERINGS, False for none, or their names.
    `mean`/`std`: the normalisation export was given (--mean/--std), if not the config's.
    `progress`: a progress bar on stderr when it is a terminal.
    """
    if batch_size < 1:
        raise InvalidArgumentError(f"batch_size must be >= 1, got {batch_size}")
    if margin < 0:
        raise InvalidArgumentError(f"margin must be >= 0, got {margin}")
    variants = list(LAUNDERINGS) if launder is True else ([] if launder is False else list(launder))
    unknown = [v for v in variants if v not in LAUNDERINGS]
    if unknown:
        raise InvalidArgumentError(f"unknown laundering {unknown}; known: {list(LAUNDERINGS)}")
    paths = [images] if isinstance(images, (str, Path)) else list(images)
    missing = [str(p) for p in paths if not Path(p).exists()]
    if missing:
        raise InputNotFoundError(f"image folder/file {', '.join(missing)} does not exist; pass existing image "
                                 "folders or files")

    scanner = Scanner(model_path, backend="cpu", fallback=False, batch_size=batch_size, max_pixels=max_pixels,
                      decode="exact")
    try:
        return _verify(scanner, reference, paths, report_dir, margin=margin, batch_size=batch_size,
                       variants=variants, max_pixels=max_pixels, all_files=all_files, mean=mean, std=std,
                       progress=progress)
    finally:
        scanner.close()


def _add_image(runner, clean, laundered, failed, path, manifest, max_pixels, batch_size) -> None:
    """Decode one file and queue it (and its laundered copies) for both models; a file that fails joins `failed`."""
    name = str(path)
    try:
        img = load_image(path, max_pixels=max_pixels, exif_orientation=manifest.preprocess.exif_orientation)
        runner.add(clean, name, img)
    except ImageReadError as e:
        failed.append({"path": name, "error": str(e)})
        return
    except Exception as e:  # the runtime's preprocessing failed on a decoded image
        failed.append({"path": name, "error": f"preprocess_failed: {type(e).__name__}: {e}"})
        return
    if clean.rows >= batch_size:
        runner.flush(clean, check_invariants=True)
    for v, stream in laundered.items():
        try:
            runner.add(stream, f"{name}#{v}", LAUNDERINGS[v][1](img))
        except Exception as e:
            stream.skipped.append({"path": name, "error": f"{type(e).__name__}: {e}"})
        if stream.rows >= batch_size:
            runner.flush(stream)


def _verify(scanner, reference, paths, report_dir, *, margin, batch_size, variants, max_pixels, all_files,
            mean=None, std=None, progress=False):
    manifest = scanner.manifest
    precision = manifest.precision
    fidelity_gates.bars_for(precision)
    weights, heads = _given_sources(reference)
    gates: list[Gate] = [fidelity_gates.sources_gate(manifest.sources, weights, heads)]
    pairs, heads_gate = match_heads(manifest, reference)
    gates.append(heads_gate)
    gates.append(recipe_gate(manifest, reference, mean, std))
    transform = ReferenceTransform(manifest)
    runner = _Runner(scanner, reference, transform, pairs, batch_size)

    clean = Stream()
    laundered = {v: Stream() for v in variants}
    failed: list[dict] = []
    files = list(iter_files(paths, all_files=all_files))
    found = len(files)
    if variants and 0 < found < VAL_MIN_IMAGES and manifest.decision_heads():
        log.warning("%d validation image(s): below %d, a single laundered copy whose decision flips (however near "
                    "the threshold) fails the robustness gates; use %d or more (%d tolerate two flips), or "
                    "--no-launder", found, VAL_MIN_IMAGES, VAL_MIN_IMAGES, VAL_TWO_FLIPS_IMAGES)
    with Progress("verify", found, unit="img", note=f"{scanner.backend_name} vs PyTorch", enabled=progress) as bar:
        for path in files:
            errors_before = len(failed)
            _add_image(runner, clean, laundered, failed, path, manifest, max_pixels, batch_size)
            bar.update(errors=len(failed) - errors_before)
    runner.flush(clean, check_invariants=True)
    for s in laundered.values():
        runner.flush(s)
    if found == 0:
        raise CalibrationError(f"no image files found under {[str(p) for p in paths]}; pass folders that hold "
                               "JPEG/PNG/WebP images")
    if not clean.names:
        raise CalibrationError(f"none of the {found} file(s) under {[str(p) for p in paths]} could be compared: "
                               f"{(failed + clean.reference_failed)[:3]}")

    metrics, clean_gates = evaluate_stream(clean, pairs, precision, margin)
    prep = fidelity_gates.preprocessing_gate(metrics["preprocessing_max_error"], len(clean.names),
                                reference_failed=len(clean.reference_failed), note=transform.note)
    gates.append(prep)
    gates.extend(clean_gates)
    gates.extend(fidelity_gates.invariance_gates(runner.batch_max_abs, runner.inv_batch_n, runner.rerun_max_abs,
                                    runner.inv_rows, precision))
    metrics["invariants"] = {"batch_max_abs_diff": runner.batch_max_abs, "batch_n": runner.inv_batch_n,
                             "rerun_max_abs_diff": runner.rerun_max_abs, "rows_checked": runner.inv_rows}
    metrics["n_files_found"] = found
    metrics["n_failed_files"] = len(failed)

    robustness: dict = {}
    for v, stream in laundered.items():
        m, _ = evaluate_stream(stream, pairs, precision, margin, prefix=f"{v}:")
        m["description"] = LAUNDERINGS[v][0]
        m["skipped"] = stream.skipped
        m["rows"] = report_rows(stream, pairs, margin, _primary(manifest, "decision"), _primary(manifest, "quality"))
        robustness[v] = m
        for hname, hm in m["heads"].items():
            if hm["task"] in DECISION_TASKS and hname in metrics["heads"]:
                flipped = [(r["path"], r["heads"][hname]["ref_logit"]) for r in m["rows"]
                           if r["heads"].get(hname, {}).get("flip")]
                gates.append(fidelity_gates.robustness_gate(v, hname, metrics["heads"][hname]["agreement"],
                                                            hm["agreement"], n=hm["n"], flipped=flipped))
                gates.append(fidelity_gates.robust_margin_gate(v, hname, hm["flips_outside_margin"], margin))

    recipe = next((g for g in gates if g.name == "recipe"), None)
    if recipe is not None and recipe.passed is False:
        for g in gates:
            if g.group in ("features", "outputs") and g.passed is False:
                g.note += f"; likely cause: the recipe differs ({recipe.note})"
    rows = report_rows(clean, pairs, margin, _primary(manifest, "decision"), _primary(manifest, "quality"))
    plots = {"clean": plot_data(clean, pairs),
             "laundered": {v: {"cosine": list(s.cosine)} for v, s in laundered.items()}}
    report = VerifyReport(
        model=str(scanner.artifact.path), sha256=scanner.artifact.sha256(), manifest_name=manifest.name,
        precision=precision, passed=all(g.passed is not False for g in gates), gates=gates, metrics=metrics,
        rows=rows, failed_files=failed, robustness=robustness, versions=tool_versions(EXPORT_TOOLS + ("matplotlib",)),
        settings={"margin": margin, "batch_size": batch_size, "launderings": variants,
                  "images": [str(p) for p in paths], "backend": scanner.backend_name,
                  "reference_transform": getattr(transform, "describe", transform.note),
                  "reference": {"arch": reference.info.arch or reference.info.id,
                                "weights": reference.info.weights_path or reference.info.weights_file,
                                "heads": [str(p) for p in reference.head_files],
                                "activation": reference.info.activation},
                  "bars": fidelity_gates.bars_for(precision).__dict__},
        method=METHOD, manifest_tools=dict(manifest.tools), plots_data=plots,
    )
    if report_dir is not None:
        from .fidelity_report import write_report

        write_report(report, report_dir)
    return report


def _primary(manifest, kind: str) -> str | None:
    tasks = DECISION_TASKS if kind == "decision" else ("quality",)
    head = next((h for h in manifest.heads if h.task in tasks), None)
    return head.name if head is not None else None
