"""Fidelity metrics and gates: does an exported artifact reproduce its PyTorch original?

The bars are the fidelity protocol's (numbers in clipscan.measure.thresholds):

- preprocessing parity: max error <= 1 in 0..255 pixel units;
- features: per-image embedding cosine, mean (and worst for FP16/INT8) above a bar per precision;
- outputs, per decision head: decision agreement at the deployed threshold, no flip of an image
  whose reference logit lies farther than a margin from the threshold's logit; per quality head:
  SRCC(exported, reference) when there are enough images;
- invariants: batch 1 vs batch N, run-to-run determinism;
- robustness: decision agreement on laundered copies no worse than on clean images minus a slack.

Only numpy here (no scipy, no torch): these functions work on arrays that `verify` collects.
Per-head metrics go through HEAD_EVALUATORS, keyed by the manifest's head task, so a new task
adds one function.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np

from clipscan.measure.thresholds import (  # noqa: F401
    BARS,
    DEFAULT_MARGIN,
    MIN_SRCC_IMAGES,
    PIXEL_MAX_ERROR,
    ROBUST_CONFIDENCE_Z,
    ROBUST_SLACK,
    THRESHOLD_TOLERANCE,
    Bars,
    bars_for,
)
from clipscan.runtime.fidelity_metrics import (  # noqa: F401
    cosine_rows,
    decisions,
    prob_to_logit,
    rankdata,
    sigmoid,
    spearman,
)


@dataclass
class Gate:
    """One pass/fail check. `passed` is None when the gate could not be evaluated (see `note`)."""
    name: str
    value: float | int | str | None
    threshold: float | int | str | None
    passed: bool | None
    note: str = ""
    group: str = ""
    op: str = ">="

    @property
    def status(self) -> str:
        return "PASS" if self.passed else ("FAIL" if self.passed is False else "N/A")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["status"] = self.status
        return clean_json(d)


def check(name: str, value, threshold, *, op: str = ">=", group: str = "", note: str = "") -> Gate:
    """A gate comparing a number with a bar; NaN fails."""
    if value is None or isinstance(value, float) and math.isnan(value):
        return Gate(name, None, threshold, False, note or "value could not be computed", group, op)
    ok = {">=": value >= threshold, "<=": value <= threshold, "==": value == threshold}[op]
    return Gate(name, value, threshold, bool(ok), note, group, op)


def clean_json(obj):
    """NaN/inf -> None and numpy scalars -> Python, recursively, so the result is strict JSON."""
    if isinstance(obj, dict):
        return {str(k): clean_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean_json(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return clean_json(obj.tolist())
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return v if math.isfinite(v) else None
    return obj


# -- gates ----------------------------------------------------------------------------------

def preprocessing_gate(max_error: float | None, n_images: int, *, reference_failed: int = 0,
                       note: str = "", name: str = "preprocessing") -> Gate:
    if max_error is None:
        return Gate(name, None, PIXEL_MAX_ERROR, None, note or "no independent reference transform", "preprocessing", "<=")
    extra = f"{reference_failed} image(s) the reference transform could not process; " if reference_failed else ""
    gate = check(name, float(max_error), PIXEL_MAX_ERROR, op="<=", group="preprocessing",
                 note=f"{extra}max |runtime - reference| over {n_images} image(s), in 0..255 pixel units"
                      + (f"; {note}" if note else ""))
    if reference_failed:
        gate.passed = False
    return gate


def feature_gates(cosines, precision: str, prefix: str = "") -> tuple[dict, list[Gate]]:
    bars = bars_for(precision)
    c = np.asarray(cosines, dtype=np.float64)
    metrics = {"n": int(len(c)), "cosine_mean": float(c.mean()) if len(c) else None,
               "cosine_worst": float(c.min()) if len(c) else None,
               "cosine_median": float(np.median(c)) if len(c) else None}
    if not len(c):
        return metrics, [Gate(prefix + "cosine_mean", None, bars.cosine_mean, False, "no image was compared", "features")]
    gates = [check(prefix + "cosine_mean", metrics["cosine_mean"], bars.cosine_mean, group="features",
                   note=f"mean embedding cosine over {len(c)} image(s) ({precision} bar)")]
    if bars.cosine_worst is not None:
        gates.append(check(prefix + "cosine_worst", metrics["cosine_worst"], bars.cosine_worst, group="features",
                           note=f"worst image ({precision} bar)"))
    return metrics, gates


@dataclass
class HeadData:
    """What verify collected for one head, per image (reference = PyTorch FP32, exported = the artifact)."""
    name: str
    task: str
    ref: dict[str, np.ndarray]            # role -> per-image values ("logit", "probability", "score", "class_probs")
    exp: dict[str, np.ndarray]
    ref_threshold: float | None = None     # the reference's own threshold (heads file or --threshold)
    deployed_threshold: float | None = None  # the manifest's
    labels: tuple = ()
    ref_labels: tuple = ()


def head_decisions(data: HeadData) -> tuple[np.ndarray, np.ndarray]:
    """(reference decision, exported decision): positive when probability >= threshold.

    The reference decides at its own threshold, the export at the manifest's: an edited
    manifest threshold shows up as flips.
    """
    return decisions(data.ref["probability"], data.ref_threshold), decisions(data.exp["probability"],
                                                                             data.deployed_threshold)


def evaluate_decision(data: HeadData, precision: str, *, margin: float = DEFAULT_MARGIN,
                      prefix: str = "") -> tuple[dict, list[Gate]]:
    """Decision agreement, flips outside the margin, threshold/labels match, logit and p errors."""
    bars = bars_for(precision)
    ref_dec, exp_dec = head_decisions(data)
    n = len(ref_dec)
    flips = ref_dec != exp_dec
    agreement = float(1.0 - flips.mean()) if n else float("nan")
    t_logit = prob_to_logit(data.ref_threshold)
    ref_logit = np.asarray(data.ref["logit"], dtype=np.float64)
    exp_logit = np.asarray(data.exp["logit"], dtype=np.float64)
    distance = np.abs(ref_logit - t_logit)
    outside = flips & (distance > margin)
    metrics = {
        "n": n, "agreement": agreement, "flips": int(flips.sum()), "flips_outside_margin": int(outside.sum()),
        "margin": margin, "threshold_logit": t_logit,
        "ref_threshold": data.ref_threshold, "deployed_threshold": data.deployed_threshold,
        "logit_max_abs_diff": float(np.abs(ref_logit - exp_logit).max()) if n else None,
        "p_max_abs_diff": float(np.abs(np.asarray(data.ref["probability"], np.float64)
                                       - np.asarray(data.exp["probability"], np.float64)).max()) if n else None,
        "ref_positive_rate": float(ref_dec.mean()) if n else None,
        "exp_positive_rate": float(exp_dec.mean()) if n else None,
    }
    h = data.name
    same_threshold = (data.ref_threshold is not None and data.deployed_threshold is not None
                      and abs(data.ref_threshold - data.deployed_threshold) <= THRESHOLD_TOLERANCE)
    same_labels = not data.ref_labels or tuple(data.labels) == tuple(data.ref_labels)
    notes = []
    if not same_threshold:
        notes.append(f"the manifest's threshold {data.deployed_threshold} differs from the reference's "
                     f"{data.ref_threshold} (the heads file, or verify --threshold)")
    if not same_labels:
        notes.append(f"labels {list(data.labels)} in the manifest, {list(data.ref_labels)} in the reference")
    gates = [
        Gate(f"{prefix}threshold:{h}", data.deployed_threshold, data.ref_threshold, same_threshold and same_labels,
             "; ".join(notes) or "manifest threshold and labels equal the reference's", "outputs", "=="),
        check(f"{prefix}agreement:{h}", agreement, bars.agreement, group="outputs",
              note=f"{int(flips.sum())} of {n} decision(s) differ at the deployed threshold"),
        check(f"{prefix}margin_flips:{h}", int(outside.sum()), 0, op="<=", group="outputs",
              note=f"flips of images whose reference logit is more than {margin} from the threshold's logit"),
    ]
    return metrics, gates


def evaluate_attribution(data: HeadData, precision: str, *, margin: float = DEFAULT_MARGIN,
                         prefix: str = "") -> tuple[dict, list[Gate]]:
    """An attribution head decides like a detector (probability = 1 - p(real) vs threshold);
    its generator top-1 agreement is reported, gated at the decision-agreement bar."""
    metrics, gates = evaluate_decision(data, precision, margin=margin, prefix=prefix)
    ref_cp, exp_cp = data.ref.get("class_probs"), data.exp.get("class_probs")
    if ref_cp is not None and exp_cp is not None and np.ndim(ref_cp) == 2 and np.shape(ref_cp)[1] > 2:
        ref_gen = np.argmax(np.asarray(ref_cp)[:, 1:], axis=1)
        exp_gen = np.argmax(np.asarray(exp_cp)[:, 1:], axis=1)
        top1 = float((ref_gen == exp_gen).mean()) if len(ref_gen) else float("nan")
        metrics["generator_top1_agreement"] = top1
        gates.append(check(f"{prefix}generator_top1:{data.name}", top1, bars_for(precision).agreement,
                           group="outputs", note="most probable generator, reference vs export (all images); "
                                                 "bar: the decision-agreement bar"))
    return metrics, gates


def evaluate_quality(data: HeadData, precision: str, *, margin: float = DEFAULT_MARGIN,
                     prefix: str = "") -> tuple[dict, list[Gate]]:
    bars = bars_for(precision)
    ref = np.asarray(data.ref["score"], dtype=np.float64)
    exp = np.asarray(data.exp["score"], dtype=np.float64)
    n = len(ref)
    max_abs = float(np.abs(ref - exp).max()) if n else None
    metrics = {"n": n, "max_abs_diff": max_abs, "mean_abs_diff": float(np.abs(ref - exp).mean()) if n else None}
    name = f"{prefix}srcc:{data.name}"
    if n < MIN_SRCC_IMAGES:
        metrics["srcc"] = None
        gate = Gate(name, None, bars.srcc, None,
                    f"not enough images ({n} < {MIN_SRCC_IMAGES}) for a rank correlation; max |diff| = {max_abs}",
                    "outputs")
        return metrics, [gate]
    rho = spearman(exp, ref)
    metrics["srcc"] = rho
    if math.isnan(rho):
        return metrics, [Gate(name, None, bars.srcc, None,
                              f"SRCC undefined: the scores are constant; max |diff| = {max_abs}", "outputs")]
    return metrics, [check(name, rho, bars.srcc, group="outputs",
                           note=f"Spearman(exported, reference) over {n} images; max |diff| = {max_abs:.3g}")]


# task -> evaluator(HeadData, precision, margin=, prefix=) -> (metrics, gates)
HEAD_EVALUATORS: dict[str, Callable] = {
    "detection": evaluate_decision,
    "attribution": evaluate_attribution,
    "quality": evaluate_quality,
}


def evaluate_head(data: HeadData, precision: str, *, margin: float = DEFAULT_MARGIN,
                  prefix: str = "") -> tuple[dict, list[Gate]]:
    evaluator = HEAD_EVALUATORS.get(data.task)
    if evaluator is None:
        return {}, [Gate(f"{prefix}head:{data.name}", data.task, None, False,
                         f"verify has no fidelity metrics for head task {data.task!r}: this head is not verified",
                         "outputs", "")]
    return evaluator(data, precision, margin=margin, prefix=prefix)


def invariance_gates(batch_max_abs: float | None, batch_n: int, rerun_max_abs: float | None, n_rows: int,
                     precision: str) -> list[Gate]:
    bars = bars_for(precision)
    if batch_max_abs is None:
        return [Gate("batch_invariance", None, bars.batch_abs, None, "no image to check", "invariants", "<="),
                Gate("determinism", None, 0.0, None, "no image to check", "invariants", "<=")]
    return [
        check("batch_invariance", batch_max_abs, bars.batch_abs, op="<=", group="invariants",
              note=f"max |batch 1 - batch {batch_n}| over every output, {n_rows} input row(s)"
                   + (f"; {bars.batch_note}" if bars.batch_note else "")),
        check("determinism", rerun_max_abs, 0.0, op="<=", group="invariants",
              note=f"two runs of the same batches must give bit-identical outputs ({n_rows} row(s))"),
    ]


def wilson_upper(p: float, n: int, z: float = ROBUST_CONFIDENCE_Z) -> float:
    """Upper end of the Wilson score interval of a proportion p observed on n trials."""
    if n <= 0:
        return 1.0
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return min(1.0, (centre + spread) / (1 + z * z / n))


def images_to_tolerate(flips: int, bar: float, z: float = ROBUST_CONFIDENCE_Z, most: int = 1_000_000) -> int | None:
    """The fewest images on which `flips` changed decisions still meet `bar` by the upper 95% bound (None:
    no number up to `most` does, e.g. a bar of 1)."""
    if flips <= 0:
        return 1
    low, high = flips, flips
    while wilson_upper(1 - flips / high, high, z) < bar:
        if high >= most:
            return None
        low, high = high, min(most, high * 2)
    while low < high:   # the bound grows with the number of images at a fixed count of flips
        mid = (low + high) // 2
        low, high = (mid + 1, high) if wilson_upper(1 - flips / mid, mid, z) < bar else (low, mid)
    return high


def robustness_gate(variant: str, head: str, clean_agreement: float, laundered_agreement: float,
                    slack: float = ROBUST_SLACK, *, n: int | None = None, flipped: list | None = None) -> Gate:
    """Laundered copies may agree `slack` less than clean ones. With `n` (images compared) the bar is met when
    the agreement's 95% upper confidence bound reaches it: on 120 images one flip is 0.83%, more than a 0.5 pp
    slack, and says nothing either way; several flips do fail. `flipped`: (image, reference logit) of the flips."""
    bar = clean_agreement - slack
    note = f"decision agreement on {variant} copies vs clean {clean_agreement:.4f} minus {slack * 100:.1f} pp"
    if n:
        upper = wilson_upper(laundered_agreement, n)
        note += f"; {n} images, upper 95% bound {upper:.4f}"
        gate = Gate(f"robust_agreement:{variant}:{head}", laundered_agreement, bar, bool(upper >= bar), "",
                    "robustness", ">=")
        flips = round(n * (1 - laundered_agreement))
        if not gate.passed and flips:
            enough = images_to_tolerate(flips, bar)
            note += (f"; {flips} flip(s) pass this gate from {enough} validation images on" if enough else "")
            if flips == 1:
                note += " (a single flip near the threshold, which the margin gate allows, fails below that)"
    else:
        gate = check(f"robust_agreement:{variant}:{head}", laundered_agreement, bar, group="robustness")
    if flipped:
        note += "; changed: " + ", ".join(f"{name} (reference logit {logit:+.3f})" for name, logit in flipped[:5])
        if len(flipped) > 5:
            note += f" and {len(flipped) - 5} more"
    gate.note = note
    return gate


def robust_margin_gate(variant: str, head: str, flips_outside: int, margin: float) -> Gate:
    return check(f"robust_margin_flips:{variant}:{head}", int(flips_outside), 0, op="<=", group="robustness",
                 note=f"flips on {variant} copies of images whose reference logit is more than {margin} from the "
                      "threshold's logit")


def sources_gate(manifest_sources: dict, weights: tuple[str, str] | None,
                 heads: list[tuple[str, str]]) -> Gate:
    """The files given to verify must be the files the artifact was exported from (by sha256).

    `weights` is (path, sha256); `heads` a list of (path, sha256) for head files.
    """
    if not manifest_sources:
        return Gate("sources", None, "sha256 match", None, "the manifest records no source files", "sources", "==")
    problems, checked = [], 0
    if weights is not None:
        recorded = (manifest_sources.get("backbone_weights") or {})
        if not recorded.get("sha256"):
            problems.append("the manifest records no backbone_weights sha256")
        elif recorded["sha256"] != weights[1]:
            problems.append(f"backbone weights {weights[0]} (sha256 {weights[1][:12]}...) differ from the file the "
                            f"artifact was exported from ({recorded.get('file')}, sha256 {recorded['sha256'][:12]}...)")
        checked += 1
    recorded_heads = {k: v for k, v in manifest_sources.items() if k == "heads" or k.startswith("heads_")}
    recorded_shas = {v.get("sha256"): v.get("file") for v in recorded_heads.values() if isinstance(v, dict)}
    given_shas = set()
    for path, sha in heads:
        given_shas.add(sha)
        checked += 1
        if sha not in recorded_shas:
            files = ", ".join(f"{f} ({s[:12]}...)" for s, f in recorded_shas.items()) or "none"
            problems.append(f"heads file {path} (sha256 {sha[:12]}...) is not one the artifact was exported from "
                            f"(recorded: {files})")
    for sha, file in recorded_shas.items():
        if sha not in given_shas:
            problems.append(f"the artifact was exported with heads file {file} (sha256 {sha[:12]}...), "
                            "which was not given to verify")
    if problems:
        return Gate("sources", "mismatch", "sha256 match", False, "; ".join(problems), "sources", "==")
    return Gate("sources", "match", "sha256 match", True,
                f"{checked} file(s) match the sha256 recorded in the manifest", "sources", "==")
