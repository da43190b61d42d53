"""The metrics of one model's scores on a labelled set, computed with scikit-learn and scipy.

Decision heads (detection and attribution, and the row's decision when an ensemble rule makes it):
ranking metrics (AUC, average precision, the true-positive rate at 1% and 5% false-positive rate, the
ROC and precision-recall curves) are computed from each head's logit on the files that were scanned;
decision metrics (accuracy, balanced accuracy, detection rate) are at the artifact's own threshold over
every labelled file, a file that failed counting as a wrong answer (what a deployment would give: no
answer), so failures are never dropped from a denominator. Confidence intervals are percentile
bootstraps, resampling real and generated files separately, seeded. Attribution heads add top-1 accuracy
(the head's answer: its real label below the threshold, its most probable generator above it) and the
confusion between generators; quality heads the Spearman and Pearson correlations with MOS labels.
"""
from __future__ import annotations

import numpy as np

from .collect import Scored
from .labels import GENERATED, REAL, LabelledSet

FPR_POINTS = (0.01, 0.05)
CONFIDENCE = 0.95
CURVE_POINTS = 300       # at most this many points of each curve are kept for the page
HIST_BINS = 20
DECISION_ROW = "decision"  # the entry for the row's verdict when the manifest's ensemble rule makes it


def sklearn_metrics():
    """scikit-learn's metrics, or the error naming the extra that brings them."""
    try:
        from sklearn import metrics
    except ImportError:
        from clipscan.runtime.errors import MissingExtraError

        raise MissingExtraError("clipscan evaluate", "scikit-learn", "evaluate") from None
    return metrics


def scipy_stats():
    try:
        from scipy import stats
    except ImportError:
        from clipscan.runtime.errors import MissingExtraError

        raise MissingExtraError("clipscan evaluate", "scipy", "evaluate") from None
    return stats


def _f(v) -> float | None:
    return None if v is None or not np.isfinite(v) else float(v)


def _ranking(y: np.ndarray, score: np.ndarray) -> dict:
    """AUC, average precision, and at each FPR_POINTS rate the highest true-positive rate of any threshold
    whose false-positive rate is at most that (sklearn's ROC curve, every threshold kept)."""
    if len(set(y.tolist())) < 2:
        return {"auc": None, "ap": None, **{f"tpr_at_fpr_{p:g}": None for p in FPR_POINTS}}
    m = sklearn_metrics()
    fpr, tpr, _ = m.roc_curve(y, score, drop_intermediate=False)
    return {"auc": float(m.roc_auc_score(y, score)), "ap": float(m.average_precision_score(y, score)),
            **{f"tpr_at_fpr_{p:g}": float(tpr[fpr <= p + 1e-12].max()) for p in FPR_POINTS}}


def _decided(y_all: np.ndarray, pred_all: np.ndarray) -> dict:
    """Accuracy and balanced accuracy over every labelled file (failed files carry the wrong answer)."""
    m = sklearn_metrics()
    out = {"accuracy": float(m.accuracy_score(y_all, pred_all))}
    out["balanced_accuracy"] = (float(m.balanced_accuracy_score(y_all, pred_all)) if len(set(y_all.tolist())) > 1
                                else None)
    return out


def bootstrap(fn, strata: list[np.ndarray], n: int, seed: int) -> list[dict]:
    """fn(indices) for `n` resamples drawn with replacement within each stratum (seeded)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        idx = np.concatenate([rng.choice(s, len(s), replace=True) for s in strata if len(s)])
        out.append(fn(idx))
    return out


def intervals(draws: list[dict], keys) -> dict:
    """{key: [low, high]}: the central CONFIDENCE percentile interval of each metric over the draws."""
    lo, hi = 100 * (1 - CONFIDENCE) / 2, 100 * (1 + CONFIDENCE) / 2
    out = {}
    for k in keys:
        values = np.array([d[k] for d in draws if d.get(k) is not None], np.float64)
        out[k] = [float(np.percentile(values, lo)), float(np.percentile(values, hi))] if len(values) else None
    return out


def _thin(xs, ys) -> list[list[float]]:
    """Curve points (x, y), thinned to about CURVE_POINTS keeping the first and last."""
    n = len(xs)
    keep = np.unique(np.linspace(0, n - 1, min(n, CURVE_POINTS)).round().astype(int))
    return [[round(float(xs[i]), 6), round(float(ys[i]), 6)] for i in keep]


def _curves(y: np.ndarray, score: np.ndarray, p: np.ndarray) -> dict:
    out: dict = {"roc": [], "pr": []}
    if len(set(y.tolist())) == 2:
        m = sklearn_metrics()
        fpr, tpr, _ = m.roc_curve(y, score)
        precision, recall, _ = m.precision_recall_curve(y, score)
        out = {"roc": _thin(fpr, tpr), "pr": _thin(recall[::-1], precision[::-1])}
    edges = np.linspace(0.0, 1.0, HIST_BINS + 1)
    out["hist"] = {"edges": edges.tolist(),
                   **{name: np.histogram(p[y == c], edges)[0].tolist() for name, c in (("real", REAL),
                                                                                     ("generated", GENERATED))}}
    return out


def decision_metrics(labelled: LabelledSet, answers: list, negative: str, threshold: float,
                     *, n_boot: int, seed: int) -> dict:
    """Metrics of one decision head (or the row's decision). `answers`: per file {"logit", "p_generated",
    "verdict"} or None (failed); `negative`: the verdict that means real."""
    idx = np.array([i for i, it in enumerate(labelled.items) if it.label is not None], int)
    y = np.array([labelled.items[i].label for i in idx], int)
    ok = np.array([answers[i] is not None for i in idx], bool)
    logit = np.array([answers[i]["logit"] if answers[i] else np.nan for i in idx], np.float64)
    prob = np.array([answers[i]["p_generated"] if answers[i] else np.nan for i in idx], np.float64)
    said = np.array([answers[i]["verdict"] != negative if answers[i] else False for i in idx], int)
    pred = np.where(ok, said, 1 - y)  # a failed file counts as the wrong answer

    def one(sel: np.ndarray) -> dict:
        good = sel[ok[sel]]
        return {**_ranking(y[good], logit[good]), **_decided(y[sel], pred[sel])}

    out = {"threshold": threshold, "files": int(len(idx)), "real": int((y == REAL).sum()),
           "generated": int((y == GENERATED).sum()), "failed": int((~ok).sum()),
           "failed_real": int((~ok & (y == REAL)).sum()), "failed_generated": int((~ok & (y == GENERATED)).sum())}
    everything = np.arange(len(idx))
    out.update(one(everything))
    cm = (sklearn_metrics().confusion_matrix(y[ok], said[ok], labels=[REAL, GENERATED]) if ok.any()
          else np.zeros((2, 2), int))
    out["confusion"] = {"rows": "true real, true generated", "columns": "said real, said generated",
                        "matrix": cm.tolist()}
    out["detection_rate"] = _f(said[ok & (y == GENERATED)].sum() / max(1, (y == GENERATED).sum()))
    out["false_positive_rate"] = _f(said[ok & (y == REAL)].sum() / max(1, (y == REAL).sum()))
    keys = ("auc", "ap", "accuracy", "balanced_accuracy", *(f"tpr_at_fpr_{p:g}" for p in FPR_POINTS))
    out["bootstrap"] = n_boot
    out["ci"] = (intervals(bootstrap(one, [everything[y == REAL], everything[y == GENERATED]], n_boot, seed), keys)
                 if n_boot else {})
    gens = {}
    for g in labelled.generators():
        sel = np.array([j for j, i in enumerate(idx) if labelled.items[i].label == REAL
                        or labelled.items[i].generator == g], int)
        good = sel[ok[sel]]
        mine = sel[y[sel] == GENERATED]
        gens[g] = {"files": int(len(mine)), "failed": int((~ok[mine]).sum()), **_ranking(y[good], logit[good]),
                   "detection_rate": _f(said[mine][ok[mine]].sum() / max(1, len(mine)))}
    out["generators"] = gens
    out["curves"] = _curves(y[ok], logit[ok], prob[ok])
    return out


def attribution_metrics(labelled: LabelledSet, answers: list, labels: tuple[str, ...]) -> dict:
    """Top-1 accuracy of the head's answer (its real label, or its generator) against the true source, over
    the files whose source the head knows; and the confusion between sources (sklearn)."""
    truth, said, failed, unknown = [], [], 0, 0
    for item, a in zip(labelled.items, answers):
        if item.label is None:
            continue
        true = labels[0] if item.label == REAL else item.generator
        if true not in labels:
            unknown += 1
            continue
        if a is None:
            failed += 1
            truth.append(true)
            said.append("(failed)")
            continue
        truth.append(true)
        said.append(a.get("generator") or labels[0] if a["verdict"] == "generated" else labels[0])
    names = list(labels) + (["(failed)"] if failed else [])
    m = sklearn_metrics()
    out = {"files": len(truth), "failed": failed, "unknown_to_head": unknown, "labels": names}
    if truth:
        out["top1"] = float(m.accuracy_score(truth, said))
        out["confusion"] = m.confusion_matrix(truth, said, labels=names).tolist()
    else:
        out["top1"], out["confusion"] = None, []
    return out


def quality_metrics(labelled: LabelledSet, answers: list, *, n_boot: int, seed: int) -> dict:
    """SRCC and PLCC of the head's score against the MOS labels (scipy), over the files that were scanned."""
    idx = [i for i, it in enumerate(labelled.items) if it.mos is not None]
    ok = [i for i in idx if answers[i] is not None]
    out = {"files": len(idx), "failed": len(idx) - len(ok), "srcc": None, "plcc": None, "ci": {}}
    if len(ok) < 3:
        return out
    mos = np.array([labelled.items[i].mos for i in ok], np.float64)
    score = np.array([answers[i]["score"] for i in ok], np.float64)
    st = scipy_stats()

    def one(sel):
        if np.ptp(mos[sel]) == 0 or np.ptp(score[sel]) == 0:
            return {"srcc": None, "plcc": None}
        return {"srcc": float(st.spearmanr(mos[sel], score[sel]).statistic),
                "plcc": float(st.pearsonr(mos[sel], score[sel]).statistic)}

    out.update(one(np.arange(len(ok))))
    out["bootstrap"] = n_boot
    if n_boot:
        out["ci"] = intervals(bootstrap(one, [np.arange(len(ok))], n_boot, seed), ("srcc", "plcc"))
    return out


def evaluate_scores(labelled: LabelledSet, scored: Scored, *, n_boot: int = 1000, seed: int = 0) -> dict:
    """Every head's metrics for one model: {"model", "identity", "heads": {name: {...}}, "failed": [...]}."""
    manifest = scored.manifest
    heads: dict[str, dict] = {}
    for spec in manifest.heads:
        answers = [h[spec.name] if h is not None else None for h in scored.heads]
        if spec.task in ("detection", "attribution"):
            entry = {"task": spec.task, **decision_metrics(labelled, answers, spec.labels[0], spec.threshold,
                                                           n_boot=n_boot, seed=seed)}
            if spec.task == "attribution":
                entry["attribution"] = attribution_metrics(labelled, answers, spec.labels)
            heads[spec.name] = entry
        elif spec.task == "quality":
            heads[spec.name] = {"task": "quality", **quality_metrics(labelled, answers, n_boot=n_boot, seed=seed)}
    if manifest.ensemble and DECISION_ROW not in heads:
        first = manifest.decision_heads()[0]
        t = manifest.decision.get("threshold", 0.5) if manifest.ensemble == "mean_logit" else None
        heads[DECISION_ROW] = {"task": f"ensemble ({manifest.ensemble})",
                               **decision_metrics(labelled, scored.rows, first.labels[0], t, n_boot=n_boot,
                                                  seed=seed)}
    failed = [{"path": labelled.items[i].path, "error": e} for i, e in scored.failed]
    return {"model": scored.name, "identity": scored.identity, "files": len(labelled.items),
            "scanned": len(labelled.items) - len(failed), "failed": failed, "heads": heads}
