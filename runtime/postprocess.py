"""From a batch's graph outputs to one image's values: the one place that decides what a row means.

An image is one or more rows of the batch (several for sliding-crop recipes). For a decision
head the rows' logits are averaged and p = sigmoid(mean logit); a single row of a detection
head keeps the graph's own probability output. Quality scores and class probabilities are
averaged; an embedding is averaged and, if the manifest says it is normalised, renormalised.
The verdict is the head's positive label when p >= threshold. `Scanner` results,
`clipscan verify` and the benchmark all go through these functions.
"""
from __future__ import annotations

import numpy as np

from .results import ScanResult

DECISION_TASKS = ("detection", "attribution")


def head_values(spec, outputs: dict, rows: slice) -> dict:
    """{"logit", "probability"[, "class_probs"]} for a decision head, {"score"} for a quality head."""
    several = rows.stop - rows.start > 1
    if spec.task in DECISION_TASKS:
        logit = float(np.asarray(outputs[spec.outputs["logit"]][rows], np.float64).mean())
        if several or spec.task == "attribution":   # sigmoid(logit), as the graph computes it per crop
            p = float(1.0 / (1.0 + np.exp(-logit)))
        else:
            p = float(outputs[spec.outputs["probability"]][rows][0])
        out = {"logit": logit, "probability": p}
        if "class_probs" in spec.outputs:
            out["class_probs"] = np.asarray(outputs[spec.outputs["class_probs"]][rows], np.float64).mean(0)
        return out
    if spec.task == "quality":
        return {"score": float(np.asarray(outputs[spec.outputs["score"]][rows], np.float64).mean())}
    return {}


def embedding_value(embedding: dict, outputs: dict, rows: slice) -> np.ndarray:
    """The image's embedding (float64): its row, or the rows' mean, renormalised if the manifest says so."""
    e = np.asarray(outputs[embedding["output"]][rows], np.float64)
    if len(e) == 1:
        return e[0]
    e = e.mean(0)
    if embedding.get("normalized"):
        e = e / max(float(np.linalg.norm(e)), 1e-12)
    return e


def verdict(spec, p: float, threshold: float, class_probs=None) -> tuple[str, str | None]:
    """(verdict, generator): the positive label when p >= threshold, else the first; an attribution head
    that says generated also names the most probable generator."""
    labels = spec.labels
    positive = labels[1] if spec.task == "detection" else "generated"
    if p < threshold:
        return labels[0], None
    if spec.task == "attribution" and class_probs is not None:
        return positive, labels[1 + int(np.argmax(np.asarray(class_probs)[1:]))]
    return positive, None


def image_result(manifest, outputs: dict, rows: slice, *, name: str, threshold: float | None,
                 backend: str | None) -> ScanResult:
    """One image's ScanResult from its rows of a batch's graph outputs (an error result when the model
    returned a non-finite value). `threshold` None: the decision head's own."""
    detector, quality = manifest.decision_head(), manifest.head("quality")
    if threshold is None and detector is not None:
        threshold = detector.threshold
    r = ScanResult(path=name, backend=backend)
    values = []
    det = head_values(detector, outputs, rows) if detector is not None else {}
    if det:
        r.logit, r.p_generated = det["logit"], det["probability"]
        values += [r.logit, r.p_generated]
    if quality is not None:
        r.quality = head_values(quality, outputs, rows)["score"]
        values.append(r.quality)
    emb = manifest.embedding
    if emb is not None:
        r.embedding = embedding_value(emb, outputs, rows).astype(outputs[emb["output"]].dtype)
    if not np.all(np.isfinite(values)):
        return ScanResult(path=name, backend=backend,
                          error="inference_failed: the model returned a non-finite value (NaN or inf)")
    if r.p_generated is not None:
        r.verdict, r.generator = verdict(detector, r.p_generated, threshold, det.get("class_probs"))
    return r
