"""The evaluation as text for the terminal: one block per head, and the differences between models."""
from __future__ import annotations

from .metrics import FPR_POINTS

DECISION_KEYS = ("auc", "ap", "accuracy", "balanced_accuracy", *(f"tpr_at_fpr_{p:g}" for p in FPR_POINTS))
QUALITY_KEYS = ("srcc", "plcc")
TITLES = {"auc": "AUC", "ap": "average precision", "accuracy": "accuracy @ threshold",
          "balanced_accuracy": "balanced accuracy @ threshold", "srcc": "SRCC vs MOS", "plcc": "PLCC vs MOS",
          **{f"tpr_at_fpr_{p:g}": f"TPR @ FPR {100 * p:g}%" for p in FPR_POINTS}}


def num(v, digits: int = 4) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def _ci(ci: dict, key: str) -> str:
    span = (ci or {}).get(key)
    return f"  [{span[0]:.4f}, {span[1]:.4f}]" if span else ""


def _decision_block(name: str, h: dict) -> list[str]:
    t = "its rule" if h["threshold"] is None else f"{h['threshold']:.6g}"
    lines = [f"head {name} ({h['task']}): {h['files']} labelled files ({h['real']} real, {h['generated']} generated), "
             f"{h['failed']} failed; threshold {t}"]
    ci_note = f" (95% bootstrap CI, {h['bootstrap']} resamples)" if h.get("bootstrap") else ""
    lines.append(f"  {'metric':32}{'value':>8}{ci_note}")
    for k in DECISION_KEYS:
        lines.append(f"  {TITLES[k]:32}{num(h.get(k)):>8}{_ci(h.get('ci'), k)}")
    cm = h["confusion"]["matrix"]
    lines.append("  confusion (scanned files)        said real  said generated")
    lines.append(f"    true real      {cm[0][0]:>24}{cm[0][1]:>16}")
    lines.append(f"    true generated {cm[1][0]:>24}{cm[1][1]:>16}")
    if h["failed"]:
        lines.append(f"    failed: {h['failed_real']} real, {h['failed_generated']} generated (counted as wrong "
                     "answers in accuracy and detection rate)")
    for g, m in h.get("generators", {}).items():
        lines.append(f"  generator {g}: {m['files']} files ({m['failed']} failed), AUC {num(m['auc'])}, "
                     f"AP {num(m['ap'])}, detection rate @ threshold {num(m['detection_rate'])}")
    a = h.get("attribution")
    if a:
        lines.append(f"  attribution: top-1 {num(a['top1'])} over {a['files']} files ({a['failed']} failed; "
                     f"{a['unknown_to_head']} from generators the head does not know)")
        if a["confusion"]:
            width = max(len(x) for x in a["labels"]) + 2
            lines.append("    " + " " * width + "".join(f"{x:>{width}}" for x in a["labels"]))
            for label, row in zip(a["labels"], a["confusion"]):
                lines.append(f"    {label:<{width}}" + "".join(f"{v:>{width}}" for v in row))
    return lines


def _quality_block(name: str, h: dict) -> list[str]:
    lines = [f"head {name} (quality): {h['files']} files with MOS labels, {h['failed']} failed"]
    if not h["files"]:
        return [lines[0] + " (give a mos column in --labels to evaluate it)"]
    for k in QUALITY_KEYS:
        lines.append(f"  {TITLES[k]:32}{num(h.get(k)):>8}{_ci(h.get('ci'), k)}")
    return lines


def model_table(result: dict) -> str:
    ident = result["identity"]
    lines = [f"model {result['model']}: {ident.get('name', '')} ({ident.get('precision', '?')}, backend "
             f"{ident.get('backend', '?')}); {result['files']} files, {result['scanned']} scanned, "
             f"{len(result['failed'])} failed"]
    for name, h in result["heads"].items():
        lines += _quality_block(name, h) if h["task"] == "quality" else _decision_block(name, h)
    if result["failed"]:
        lines.append(f"failed files ({len(result['failed'])}):")
        lines += [f"  {f['path']}: {f['error']}" for f in result["failed"]]
    return "\n".join(lines)


def differences(results: list[dict]) -> list[dict]:
    """Per head and metric: each model's value and its difference from the first model's."""
    base = results[0]
    out = []
    for name, h in base["heads"].items():
        if h["task"] == "quality" and not h["files"]:
            continue  # no MOS labels: nothing to compare
        keys = QUALITY_KEYS if h["task"] == "quality" else DECISION_KEYS
        for k in keys:
            values = [r["heads"].get(name, {}).get(k) for r in results]
            deltas = [None if v is None or values[0] is None else v - values[0] for v in values]
            out.append({"head": name, "metric": k, "values": values, "minus_first": deltas})
    return out


def compare_table(results: list[dict]) -> str:
    """Metric by metric, every model's value and its difference from the first model."""
    names = [r["model"] for r in results]
    width = max(12, len(names[0]) + 4, *(len(n) + 2 for n in names))
    head = f"{'head':14}{'metric':32}" + "".join(f"{n:>{width}}" for n in names)
    head += "".join(f"{'- ' + names[0]:>{width}}" for _ in names[1:])
    lines = [f"every model on the same {results[0]['files']} files; failed: "
             + ", ".join(f"{r['model']} {len(r['failed'])}" for r in results), head]
    for d in differences(results):
        row = f"{d['head'][:13]:14}{TITLES[d['metric']]:32}" + "".join(f"{num(v):>{width}}" for v in d["values"])
        row += "".join(f"{'n/a' if x is None else f'{x:+.4f}':>{width}}" for x in d["minus_first"][1:])
        lines.append(row)
    return "\n".join(lines)
