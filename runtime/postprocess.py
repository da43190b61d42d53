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

from .fidelity_metrics import sigmoid
from .manifest import DECISION_TASKS
from .results import ScanResult


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
    positive = positive_label(spec)
    if p < threshold:
        return labels[0], None
    if spec.task == "attribution" and class_probs is not None:
        return positive, labels[1 + int(np.argmax(np.asarray(class_probs)[1:]))]
    return positive, None


def head_answers(manifest, outputs: dict, rows: slice, threshold: float | None = None) -> dict[str, dict]:
    """Every head's own answer for one image: {name: {"p_generated", "logit", "verdict", "threshold"
    [, "generator"]}} for decision heads (at `threshold` if given, else each head's own, which the row states),
    {name: {"score"}} for quality heads."""
    out: dict[str, dict] = {}
    for spec in manifest.heads:
        values = head_values(spec, outputs, rows)
        if spec.task in DECISION_TASKS:
            t = spec.threshold if threshold is None else threshold
            v, generator = verdict(spec, values["probability"], t, values.get("class_probs"))
            entry = {"p_generated": values["probability"], "logit": values["logit"], "verdict": v, "threshold": t}
            if spec.task == "attribution":
                entry["generator"] = generator
            out[spec.name] = entry
        elif spec.task == "quality":
            out[spec.name] = {"score": values["score"]}
    return out


def positive_label(spec) -> str:
    """The label a decision head's verdict takes when it says generated."""
    return spec.labels[1] if spec.task == "detection" else "generated"


def row_generator(manifest, answers: dict[str, dict], generated: bool) -> str | None:
    """The row's `generator`, the one rule for every row (local, `clipscan serve`, Triton, Ray): when the row
    says generated, the generator named by the first head that names one, the deciding head first (the
    primary; under an ensemble rule none is first) and then every attribution head in manifest order; None
    when the row does not say generated or no head names a generator. A head names a generator only when
    it says generated itself, so a row never names one that every head calls real."""
    if not generated:
        return None
    primary = None if manifest.ensemble else manifest.decision_head()
    order = ([primary] if primary is not None else []) + [h for h in manifest.heads if h.task == "attribution"]
    return next((answers[h.name]["generator"] for h in order if answers.get(h.name, {}).get("generator")), None)


def decide(manifest, answers: dict[str, dict], threshold: float | None = None) -> dict | None:
    """The row's decision {"p_generated", "logit", "verdict", "generator"} from the heads' answers: the
    primary head's, or the manifest's ensemble rule over every decision head:
    mean_logit: p = sigmoid(mean logit), generated when p >= the ensemble threshold;
    any / all: generated when any / all heads say so (each at its threshold); p and logit are the
    heads' max / min. The generator follows `row_generator`. None for a model without a decision head."""
    heads = manifest.decision_heads()
    if not heads:
        return None
    rule = manifest.ensemble
    if rule is None:
        primary = manifest.decision_head()
        a = answers[primary.name]
        generated = a["verdict"] == positive_label(primary)
        return {"p_generated": a["p_generated"], "logit": a["logit"], "verdict": a["verdict"],
                "generator": row_generator(manifest, answers, generated)}
    mine = [answers[h.name] for h in heads]
    positive = [a["verdict"] == positive_label(h) for h, a in zip(heads, mine)]
    first = heads[0]
    labels = (first.labels[0], positive_label(first))
    logits = [a["logit"] for a in mine]
    if rule == "mean_logit":
        logit = float(np.mean(logits))
        p = float(sigmoid(logit))
        t = manifest.decision.get("threshold", 0.5) if threshold is None else threshold
        generated = p >= t
    else:
        pick = max if rule == "any" else min
        logit, p = pick(logits), pick(a["p_generated"] for a in mine)
        generated = any(positive) if rule == "any" else all(positive)
    return {"p_generated": p, "logit": logit, "verdict": labels[1] if generated else labels[0],
            "generator": row_generator(manifest, answers, generated)}


def image_result(manifest, outputs: dict, rows: slice, *, name: str, threshold: float | None,
                 backend: str | None) -> ScanResult:
    """One image's ScanResult from its rows of a batch's graph outputs: every head's own answer in
    `heads`, the row's decision from the primary head or the manifest's ensemble rule (`threshold`:
    an override of the heads' own, or None), or an error result when the model returned a non-finite
    value. Every Scanner result, and Triton's postprocess step, come from here."""
    r = ScanResult(path=name, backend=backend)
    r.heads = head_answers(manifest, outputs, rows, threshold)
    values = [v for a in r.heads.values() for k, v in a.items() if k in ("logit", "p_generated", "score")]
    if not np.all(np.isfinite(values)):
        return ScanResult(path=name, backend=backend,
                          error="inference_failed: the model returned a non-finite value (NaN or inf)")
    decision = decide(manifest, r.heads, threshold)
    if decision is not None:
        r.p_generated, r.logit = decision["p_generated"], decision["logit"]
        r.verdict, r.generator = decision["verdict"], decision["generator"]
    quality = manifest.head("quality")
    if quality is not None:
        r.quality = r.heads[quality.name]["score"]
    emb = manifest.embedding
    if emb is not None:
        r.embedding = embedding_value(emb, outputs, rows).astype(outputs[emb["output"]].dtype)
    return r
