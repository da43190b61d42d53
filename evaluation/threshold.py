"""Thresholds set for a target false-positive rate on the operator's own real images.

Thresholds are probabilities (the runtime says "generated" when p_generated >= threshold, p being the
float64 sigmoid of the head's logit), so they are chosen on exactly those p values: with n real images
and a target rate a, at most k = floor(a * n) of them may reach the threshold; it is put halfway between
the k-th and (k+1)-th highest p (just above the (k+1)-th when they are equal), and the achieved count is
then counted with the runtime's own comparison. The Clopper-Pearson interval (scipy) of the achieved
rate says how well n images pin it down. A set with fewer than MIN_EXPECTED / a images is refused: it
cannot tell the rate asked for from zero.

Several decision heads: each gets its own threshold at the target. When the manifest's ensemble rule
makes the row's verdict, the rule is re-applied: "mean_logit" gets its own threshold on the mean-logit
p; "any" and "all" get per-head thresholds chosen together (the same number of real images above each
head's threshold) so that the rule's verdicts meet the target.
"""
from __future__ import annotations

import math
import time
from dataclasses import replace

import numpy as np

from clipscan.runtime.errors import InvalidArgumentError

MIN_EXPECTED = 3          # false positives the target rate must expect on the real set, at least
CONFIDENCE = 0.95
METHOD = ("the threshold between the k-th and (k+1)-th highest p_generated of the real files, "
          "k = floor(target rate x files); Clopper-Pearson interval of the achieved rate")


class ThresholdError(InvalidArgumentError):
    """A threshold cannot be chosen as asked (too few real images, saturated scores)."""


def clopper_pearson(k: int, n: int, confidence: float = CONFIDENCE) -> list[float]:
    from .metrics import scipy_stats

    ci = scipy_stats().binomtest(k, n).proportion_ci(confidence, method="exact")
    return [float(ci.low), float(ci.high)]


def check_size(n: int, fpr: float) -> None:
    need = math.ceil(MIN_EXPECTED / fpr - 1e-9)
    if n < need:
        lowest = f", or ask for a rate of at least {MIN_EXPECTED / n:.3g}" if n else ""
        raise ThresholdError(f"a false-positive rate of {fpr:g} needs at least {need} real images (so that "
                             f"{MIN_EXPECTED} false positives are expected); --real holds {n} that scanned. Add real "
                             f"images{lowest}")


def cut(p_desc: np.ndarray, k: int) -> float:
    """The threshold with at most k of `p_desc` (sorted high to low) at or above it."""
    if k >= len(p_desc):
        return 0.0
    below = float(p_desc[k])
    above = float(p_desc[k - 1]) if k > 0 else 1.0
    t = (above + below) / 2 if above > below else float(np.nextafter(below, 2.0))
    if t > 1.0 or t <= below:
        raise ThresholdError(f"the real images' scores saturate at p_generated {below!r}: no probability "
                             "threshold separates them; the model is certain they are generated")
    return t


def _rate(k: int, n: int) -> dict:
    return {"false_positives": int(k), "real_files": int(n), "achieved_fpr": k / n if n else None,
            "ci95": clopper_pearson(k, n) if n else None}


def choose(heads: dict[str, np.ndarray], rows: np.ndarray | None, rule: str | None, fpr: float) -> dict:
    """Thresholds for the target rate. `heads`: {name: p of each real file}; `rows`: the mean-logit p of each
    real file (rule "mean_logit" only); `rule`: the manifest's ensemble rule or None.
    -> {"heads": {name: {"threshold", ...rate}}, "decision": {...} or None}."""
    n = len(next(iter(heads.values())))
    check_size(n, fpr)
    k = int(math.floor(fpr * n + 1e-9))
    ordered = {h: np.sort(p)[::-1] for h, p in heads.items()}
    if rule in ("any", "all"):
        def combined(j: int) -> tuple[dict, int]:
            ts = {h: cut(p, j) for h, p in ordered.items()}
            said = np.array([heads[h] >= ts[h] for h in heads])
            return ts, int((said.any(0) if rule == "any" else said.all(0)).sum())

        best = None
        for j in range(0, n):  # the rule's count grows with j: keep the largest j within the budget
            ts, count = combined(j)
            if count > k:
                break
            best = (ts, count)
        if best is None:
            raise ThresholdError(f"no thresholds keep the '{rule}' rule within {k} false positives")
        ts, count = best
        out = {h: {"threshold": t, **_rate(int((heads[h] >= t).sum()), n)} for h, t in ts.items()}
        return {"heads": out, "decision": {"rule": rule, **_rate(count, n)}}
    out = {}
    for h, p in ordered.items():
        t = cut(p, k)
        out[h] = {"threshold": t, **_rate(int((heads[h] >= t).sum()), n)}
    decision = None
    if rule == "mean_logit":
        t = cut(np.sort(rows)[::-1], k)
        decision = {"rule": rule, "threshold": t, **_rate(int((rows >= t).sum()), n)}
    return {"heads": out, "decision": decision}


def detection_rates(chosen: dict, generated: dict[str, np.ndarray], rows: np.ndarray | None, rule: str | None,
                    failed: int) -> dict:
    """The share of generated files each new threshold catches (failed files count as missed)."""
    out = {}
    for h, p in generated.items():
        n = len(p) + failed
        out[h] = {"detected": int((p >= chosen["heads"][h]["threshold"]).sum()), "generated_files": n}
    if rule is not None:
        if rule == "mean_logit":
            said = rows >= chosen["decision"]["threshold"]
        else:
            said = np.array([generated[h] >= chosen["heads"][h]["threshold"] for h in generated])
            said = said.any(0) if rule == "any" else said.all(0)
        out["decision"] = {"detected": int(said.sum()), "generated_files": len(said) + failed}
    for v in out.values():
        v["detection_rate"] = v["detected"] / v["generated_files"] if v["generated_files"] else None
    return out


def new_manifest(manifest, chosen: dict, record: dict):
    """The manifest with the chosen thresholds, each head's choice (and the rule's) recorded next to it:
    heads[].details.threshold_choice and decision.threshold_choice."""
    heads = []
    for spec in manifest.heads:
        c = chosen["heads"].get(spec.name)
        if c is None:
            heads.append(spec)
            continue
        choice = {**record, **{k: v for k, v in c.items() if k != "threshold"}, "previous_threshold": spec.threshold}
        heads.append(replace(spec, threshold=c["threshold"], details={**(spec.details or {}),
                                                                      "threshold_choice": choice}))
    decision = manifest.decision
    if chosen.get("decision") is not None:
        d = {k: v for k, v in chosen["decision"].items() if k not in ("rule", "threshold")}
        decision = dict(decision)
        if "threshold" in chosen["decision"]:
            d["previous_threshold"] = decision.get("threshold", 0.5)
            decision["threshold"] = chosen["decision"]["threshold"]
        decision["threshold_choice"] = {**record, **d}
    return replace(manifest, heads=tuple(heads), decision=decision)


def choice_record(fpr: float, files_sha256: str, counts: dict, source_sha256: str) -> dict:
    from clipscan.version import __version__

    return {"target_fpr": fpr, "method": METHOD, "files_sha256": files_sha256, **counts,
            "chosen_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "source_sha256": source_sha256,
            "clipscan": __version__}
