"""The comparison metrics every fidelity check uses, numpy only.

Cosine per row, Spearman rank correlation (average ranks for ties, as scipy), decisions and
their agreement, flips beyond a margin, and `compare_outputs`, which measures one set of model
outputs against a reference set the same way for verify, calibrate, the draft check and the
benchmark. The decision rule is the runtime's own: p >= threshold (see `postprocess`).
"""
from __future__ import annotations

import math

import numpy as np


def cosine_rows(a, b) -> np.ndarray:
    """Cosine similarity of each row of `a` with the same row of `b`, in float64."""
    a = np.asarray(a, dtype=np.float64).reshape(len(a), -1)
    b = np.asarray(b, dtype=np.float64).reshape(len(b), -1)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-30)


def rankdata(x) -> np.ndarray:
    """Ranks 1..n, ties get the average of the ranks they span (scipy.stats.rankdata's 'average')."""
    x = np.asarray(x, dtype=np.float64).ravel()
    n = len(x)
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    new_run = np.concatenate(([True], sorted_x[1:] != sorted_x[:-1]))
    run_id = np.cumsum(new_run) - 1
    starts = np.flatnonzero(new_run)
    ends = np.concatenate((starts[1:], [n]))
    avg = (starts + ends - 1) / 2.0 + 1.0      # average of 1-based ranks start+1 .. end
    ranks = np.empty(n, dtype=np.float64)
    ranks[order] = avg[run_id]
    return ranks


def spearman(a, b) -> float:
    """Spearman rank correlation (average ranks for ties); NaN when either side is constant."""
    ra, rb = rankdata(a), rankdata(b)
    if len(ra) != len(rb):
        raise AssertionError(f"spearman needs equal lengths, got {len(ra)} and {len(rb)}")  # callers pair rows
    if len(ra) < 2:
        return float("nan")
    ra -= ra.mean()
    rb -= rb.mean()
    den = math.sqrt(float((ra * ra).sum()) * float((rb * rb).sum()))
    return float((ra * rb).sum() / den) if den > 0 else float("nan")


def sigmoid(x) -> np.ndarray:
    """The logistic function in float64, without overflow: strictly monotone, and never exactly 0 or 1
    for |x| < 36 (float32's Sigmoid saturates to 0 near x = -17 and steps by 2**-24 below that)."""
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def prob_to_logit(p: float) -> float:
    """The logit of a probability threshold (+-inf at 0 and 1)."""
    if p <= 0.0:
        return -math.inf
    if p >= 1.0:
        return math.inf
    return math.log(p / (1.0 - p))


def decisions(p, threshold: float) -> np.ndarray:
    """The runtime's decision rule: positive (the head's second label) when p >= threshold."""
    return np.asarray(p, dtype=np.float64).ravel() >= float(threshold)


def _column(outputs: dict, name: str | None):
    if name is None or name not in outputs:
        return None
    v = np.asarray(outputs[name], dtype=np.float64)
    return v.reshape(len(v), -1)[:, 0]


def compare_outputs(manifest, ref: dict, got: dict, threshold: float | None = None) -> dict:
    """`got` against `ref` (output name -> array, same rows): embedding cosine mean and worst, the first
    decision head's agreement, flips and max |dp| at its threshold (or `threshold`), the first quality
    head's SRCC and max |difference|, and n. Metrics whose outputs are missing are left out."""
    out: dict = {"n": int(len(next(iter(got.values())))) if got else 0}
    emb = manifest.embedding["output"] if manifest.embedding else None
    if emb in got and emb in ref:
        c = cosine_rows(got[emb], ref[emb])
        out.update(cosine_mean=float(c.mean()), cosine_worst=float(c.min()))
    det = manifest.decision_head()
    if det is not None:
        t = det.threshold if threshold is None else float(threshold)
        pr, pg = _column(ref, det.outputs.get("probability")), _column(got, det.outputs.get("probability"))
        if pr is None or pg is None:   # a head that exposes only its logit
            lr, lg = _column(ref, det.outputs.get("logit")), _column(got, det.outputs.get("logit"))
            pr, pg = (None, None) if lr is None or lg is None else (sigmoid(lr), sigmoid(lg))
        if pr is not None:
            agree = decisions(pr, t) == decisions(pg, t)
            out.update(agreement=float(agree.mean()), flips=int((~agree).sum()),
                       max_abs_p_diff=float(np.abs(pg - pr).max()))
    q = manifest.head("quality")
    if q is not None:
        qr, qg = _column(ref, q.outputs.get("score")), _column(got, q.outputs.get("score"))
        if qr is not None and qg is not None:
            out["srcc"] = spearman(qr, qg)
            out["quality_max_abs_diff"] = float(np.abs(qg - qr).max())
    heads = {h.name: m for h in manifest.heads if (m := _head_metrics(h, ref, got, threshold))}
    if len(heads) > 1:   # every head's own figures (the flat ones above are the primary heads')
        out["heads"] = heads
    return out


def _head_metrics(spec, ref: dict, got: dict, threshold: float | None) -> dict:
    if spec.task == "quality":
        qr, qg = _column(ref, spec.outputs.get("score")), _column(got, spec.outputs.get("score"))
        return {} if qr is None or qg is None else {"srcc": spearman(qr, qg),
                                                     "max_abs_diff": float(np.abs(qg - qr).max())}
    lr, lg = _column(ref, spec.outputs.get("logit")), _column(got, spec.outputs.get("logit"))
    if lr is None or lg is None:
        return {}
    t = spec.threshold if threshold is None else float(threshold)
    agree = decisions(sigmoid(lr), t) == decisions(sigmoid(lg), t)
    return {"agreement": float(agree.mean()), "flips": int((~agree).sum()),
            "max_abs_logit_diff": float(np.abs(lg - lr).max())}
