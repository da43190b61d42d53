"""What `clipscan verify` computes from the values it collected on both sides.

The collected stream of one image variant, the match of the manifest's heads with the reference's,
the recipe gate, per-image values from per-row outputs (the runtime's own postprocessing), the
gates and metrics of a stream, the per-image report rows and the data behind the plots.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from clipscan.runtime.manifest import DECISION_TASKS
from clipscan.runtime.postprocess import embedding_value, head_values

from . import fidelity_gates
from .fidelity_gates import Gate, HeadData


@dataclass
class Stream:
    """Per-image values collected for one variant (clean or a laundering)."""
    names: list = field(default_factory=list)
    pixel_error: list = field(default_factory=list)
    cosine: list = field(default_factory=list)
    ref: dict = field(default_factory=dict)    # head name -> role -> list
    exp: dict = field(default_factory=dict)
    reference_failed: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    pending: list = field(default_factory=list)   # (name, runtime rows, reference rows, raw rows)
    rows: int = 0


def match_heads(manifest, reference) -> tuple[list, Gate]:
    """Pair each manifest head with the reference head writing the same outputs."""
    pairs, problems = [], []
    free = list(reference.heads)
    for spec in manifest.heads:
        names = set(spec.outputs.values())
        match = next((h for h in free if set(h.output_names) == names and getattr(h, "task", None) == spec.task), None)
        if match is None:
            problems.append(f"the artifact's {spec.task} head {spec.name!r} (outputs {sorted(names)}) has no "
                            "counterpart in the reference heads")
            continue
        free.remove(match)
        pairs.append((spec, match))
    for h in free:
        problems.append(f"reference head {getattr(h, 'name', '?')!r} ({getattr(h, 'task', '?')}) is not in the artifact")
    gate = Gate("heads", f"{len(pairs)} matched", f"{len(manifest.heads)} in the manifest", not problems,
                "; ".join(problems) or "every manifest head has its reference head (same task and outputs)",
                "sources", "==")
    return pairs, gate


def recipe_gate(manifest, reference, mean=None, std=None) -> Gate:
    """The manifest's preprocessing and normalisation equal what the reference's config implies
    (mean/std: what export was given with --mean/--std, if anything)."""
    from clipscan.export.exporter import preprocess_spec

    want = preprocess_spec(reference.info).to_dict()
    got = manifest.preprocess.to_dict()
    diffs = [f"{k}: manifest {got.get(k)!r}, reference {want.get(k)!r}" for k in sorted(set(want) | set(got))
             if got.get(k) != want.get(k)]
    inp = manifest.input
    from clipscan.export.native_size import is_own_size

    native = is_own_size(reference.visual, reference.heads)
    if native != (inp.own_size is not None):
        diffs.append(f"input size: the artifact takes {'each image at its own size' if inp.own_size else 'one size'}, "
                     f"the reference {'each image at its own size' if native else 'one size'} (check --resize-mode: "
                     "it must be what export was given)")
    norm = manifest.backbone.get("normalization_folded") if inp.folded else {"mean": inp.mean, "std": inp.std}
    expected = {"mean": mean, "std": std}
    for key in ("mean", "std"):
        m = list((norm or {}).get(key) or [])
        r = list(expected[key] or reference.info.preprocess.get(key) or [])
        if len(m) != len(r) or any(abs(a - b) > 1e-7 for a, b in zip(m, r)):
            diffs.append(f"{key}: manifest {m}, reference {r}")
    exported_act, reference_act = manifest.backbone.get("activation"), reference.info.activation
    if exported_act and exported_act != reference_act:
        diffs.append(f"activation: the artifact was exported with {exported_act}, the reference runs "
                     f"{reference_act} (check --quick-gelu/--gelu: they must be what export was given)")
    return Gate("recipe", "equal" if not diffs else "differs", "equal", not diffs,
                "; ".join(diffs) or "manifest preprocessing, mean/std and activation equal the reference config's",
                "preprocessing", "==")


def aggregate(outputs: dict, counts: list[int], pairs, embedding: dict | None) -> tuple[dict, np.ndarray | None]:
    """Per-image values from per-row outputs, through the runtime's own postprocessing."""
    per_head: dict = {spec.name: {} for spec, _ in pairs}
    embs = []
    start = 0
    for k in counts:
        rows = slice(start, start + k)
        start += k
        for spec, _ in pairs:
            for role, value in head_values(spec, outputs, rows).items():
                per_head[spec.name].setdefault(role, []).append(value)
        if embedding is not None:
            embs.append(embedding_value(embedding, outputs, rows))
    return per_head, (np.stack(embs) if embs else None)


def head_data(stream: Stream, pairs) -> list[HeadData]:
    out = []
    for spec, ref_head in pairs:
        ref = {k: np.asarray(v) for k, v in stream.ref.get(spec.name, {}).items()}
        exp = {k: np.asarray(v) for k, v in stream.exp.get(spec.name, {}).items()}
        decision = spec.task in DECISION_TASKS
        out.append(HeadData(
            name=spec.name, task=spec.task, ref=ref, exp=exp,
            ref_threshold=float(getattr(ref_head, "threshold", spec.threshold)) if decision else None,
            deployed_threshold=spec.threshold, labels=tuple(spec.labels),
            ref_labels=tuple(getattr(ref_head, "labels", ()) or ()) if decision else ()))
    return out


def evaluate_stream(stream: Stream, pairs, precision: str, margin: float, prefix: str = ""):
    n = len(stream.names)
    errs = [e for e in stream.pixel_error if e is not None]
    metrics: dict = {"n_images": n, "preprocessing_max_error": max(errs) if errs else None,
                     "reference_failed": stream.reference_failed}
    feat_metrics, gates = fidelity_gates.feature_gates(stream.cosine, precision, prefix=prefix)
    metrics["features"] = feat_metrics
    heads = {}
    for data in head_data(stream, pairs):
        if not n:
            continue
        m, g = fidelity_gates.evaluate_head(data, precision, margin=margin, prefix=prefix)
        heads[data.name] = {"task": data.task, **m}
        gates.extend(g)
    metrics["heads"] = heads
    return metrics, gates


def report_rows(stream: Stream, pairs, margin: float, decision_head, quality_head) -> list[dict]:
    rows = []
    datas = {d.name: d for d in head_data(stream, pairs)}
    decisions = {name: fidelity_gates.head_decisions(d) for name, d in datas.items() if d.task in DECISION_TASKS}
    for i, name in enumerate(stream.names):
        row: dict = {"path": name, "cosine": stream.cosine[i] if i < len(stream.cosine) else None,
                     "pixel_error": stream.pixel_error[i], "heads": {}}
        flip_any = False
        for hname, d in datas.items():
            if d.task in DECISION_TASKS:
                ref_dec, exp_dec = decisions[hname]
                flip = bool(ref_dec[i] != exp_dec[i])
                flip_any |= flip
                distance = abs(float(d.ref["logit"][i]) - fidelity_gates.prob_to_logit(d.ref_threshold))
                row["heads"][hname] = {"ref_logit": float(d.ref["logit"][i]), "logit": float(d.exp["logit"][i]),
                                       "ref_p": float(d.ref["probability"][i]), "p": float(d.exp["probability"][i]),
                                       "flip": flip, "outside_margin": bool(flip and distance > margin)}
            elif d.task == "quality":
                row["heads"][hname] = {"ref_quality": float(d.ref["score"][i]), "quality": float(d.exp["score"][i])}
        if decision_head is not None and decision_head in row["heads"]:
            h = row["heads"][decision_head]
            row.update(ref_logit=h["ref_logit"], logit=h["logit"], ref_p=h["ref_p"], p=h["p"])
        if quality_head is not None and quality_head in row["heads"]:
            h = row["heads"][quality_head]
            row.update(ref_quality=h["ref_quality"], quality=h["quality"])
        row["flip"] = flip_any
        rows.append(row)
    return rows


def plot_data(stream: Stream, pairs) -> dict:
    data = {"cosine": list(stream.cosine), "heads": {}}
    for d in head_data(stream, pairs):
        if d.task in DECISION_TASKS and len(stream.names):
            ref_dec, exp_dec = fidelity_gates.head_decisions(d)
            data["heads"][d.name] = {"task": d.task, "ref": d.ref["logit"].tolist(), "exp": d.exp["logit"].tolist(),
                                     "flip": (ref_dec != exp_dec).tolist(),
                                     "ref_threshold_logit": fidelity_gates.prob_to_logit(d.ref_threshold),
                                     "deployed_threshold_logit": fidelity_gates.prob_to_logit(d.deployed_threshold)}
        elif d.task == "quality" and len(stream.names):
            data["heads"][d.name] = {"task": d.task, "ref": d.ref["score"].tolist(), "exp": d.exp["score"].tolist()}
    return data
