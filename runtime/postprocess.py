"""From a batch's graph outputs to one image's values: the one place that decides what a row means.

An image is one or more rows of the batch (several for sliding-crop recipes). For a decision
head the rows' logits are averaged and p = sigmoid(mean logit), computed in float64 from the
graph's logit (not the graph's float32 probability, which saturates to exactly 0.0 near logit -17
and ties strongly-real images below that): p is monotone in the logit, which rows also carry. Quality scores and class probabilities are
averaged; an embedding is averaged and, if the manifest says it is normalised, renormalised.
The verdict is the head's positive label when p >= threshold. `Scanner` results,
`clipscan verify` and the benchmark all go through these functions.
"""
from __future__ import annotations

import numpy as np

from .metrics import sigmoid

DECISION_TASKS = ("detection", "attribution")


def head_values(spec, outputs: dict, rows: slice) -> dict:
    """{"logit", "probability"[, "class_probs"]} for a decision head, {"score"} for a quality head."""
    if spec.task in DECISION_TASKS:
        logit = float(np.asarray(outputs[spec.outputs["logit"]][rows], np.float64).mean())
        out = {"logit": logit, "probability": float(sigmoid(logit))}
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
