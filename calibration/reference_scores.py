"""The PyTorch original's answers on a list of files, in the form the runtime's rows take, for
`clipscan evaluate --reference`: the same metrics are then computed for it as for every artifact.

Each file is decoded by the runtime's decoder (both sides see the same pixels) and turned into the
reference's input by `ReferenceTransform` (open_clip/torchvision, built from the manifest apart from the
runtime's preprocessing, as `clipscan verify` feeds it); the reference's outputs go through the runtime's
own postprocessing (`head_answers`, `decide`), so a row of the reference means what a row of the artifact
means. A file that cannot be decoded or transformed is an error for that file, never for the run.

Needs `clipscan[export]` (torch, open_clip, torchvision); nothing in the runtime or in clipscan.evaluation
imports this module.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from clipscan.export.deps import require
from clipscan.runtime.artifact import load_artifact
from clipscan.runtime.decode import DEFAULT_MAX_PIXELS, load_image
from clipscan.runtime.errors import ImageReadError
from clipscan.runtime.postprocess import decide, head_answers
from clipscan.runtime.progress import Progress

from .reference_input import ReferenceTransform

torch = require("torch", "clipscan evaluate --reference")


@dataclass
class ReferenceScores:
    manifest: object
    heads: list     # per file: {head: answer} or None
    rows: list      # per file: {"p_generated", "logit", "verdict"} or None
    errors: list    # per file: the error message or None
    note: str       # how the reference's input was built


def reference_scores(model_path, reference, paths: list[str], *, batch_size: int = 16, progress: bool = False,
                     max_pixels: int = DEFAULT_MAX_PIXELS) -> ReferenceScores:
    """The answers of `reference` (export.Reference) on `paths`, read with the artifact's manifest (its heads,
    thresholds, decision rule and preprocessing recipe)."""
    manifest = load_artifact(model_path).manifest
    transform = ReferenceTransform(manifest)
    graph = reference.graph()
    names = graph.output_names()
    missing = [n for n in manifest.output_names() if n not in names]
    if missing:
        from clipscan.runtime.errors import ModelError

        raise ModelError(f"the PyTorch reference writes outputs {names}, the artifact's manifest names {missing} "
                         "as well: pass the --arch/--weights/--heads/--head the artifact was exported from")
    n = len(paths)
    out = ReferenceScores(manifest, [None] * n, [None] * n, [None] * n, transform.note or transform.describe)
    pending: list[tuple[int, np.ndarray]] = []

    def flush() -> None:
        if not pending:
            return
        x = np.concatenate([a for _, a in pending])
        with torch.inference_mode():
            outputs = {name: o.float().numpy() for name, o in zip(names, graph(torch.from_numpy(x)))}
        start = 0
        for i, a in pending:
            rows = slice(start, start + len(a))
            start += len(a)
            answers = head_answers(manifest, outputs, rows)
            values = [v for h in answers.values() for k, v in h.items() if k in ("logit", "score")]
            if not np.all(np.isfinite(values)):
                out.errors[i] = "inference_failed: the reference returned a non-finite value"
                continue
            out.heads[i] = answers
            d = decide(manifest, answers)
            out.rows[i] = None if d is None else {k: d[k] for k in ("p_generated", "logit", "verdict")}
        pending.clear()

    with Progress("evaluate", n, unit="img", note="PyTorch reference", enabled=progress) as bar:
        for i, path in enumerate(paths):
            try:
                img = load_image(path, max_pixels=max_pixels, exif_orientation=manifest.preprocess.exif_orientation)
                if manifest.input.own_size is not None:   # the artifact's bounds, the same error as a scan's
                    _preprocessor(manifest).check_own_size(img.width, img.height)
                a = transform(img)[0] if transform.available else transform.from_runtime(_runtime_input(manifest, img))
                if pending and pending[-1][1].shape[1:] != a.shape[1:]:
                    flush()     # an artifact at each image's own size: one batch per stretch of one size
                pending.append((i, a))
            except ImageReadError as e:
                out.errors[i] = str(e)
            except Exception as e:  # the reference transform could not make this image
                out.errors[i] = f"preprocess_failed: {type(e).__name__}: {e}"
            bar.update(errors=0 if out.errors[i] is None else 1)
            if sum(len(a) for _, a in pending) >= batch_size:
                flush()
        flush()
    return out


def _preprocessor(manifest):
    from clipscan.runtime.preprocess import Preprocessor

    return Preprocessor(manifest.preprocess, manifest.input)


def _runtime_input(manifest, img) -> np.ndarray:
    return _preprocessor(manifest).batch(img)
