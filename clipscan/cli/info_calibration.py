"""`clipscan info`: the calibration of an INT8 artifact and its fidelity gates, as readable lines and a table.

A model whose recorded fidelity report failed says so first, in capitals, above the table of every gate.
"""
from __future__ import annotations

import json

# calibration facts worth a line of their own, in this order (the rest is in `clipscan info --json`)
_FACTS = ("recipe", "target", "method", "activations", "weights", "format", "quantized_ops", "fused_attention",
          "search_kept_round", "search_stopped")


def _value(v) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return "-" if v is None else str(v)


def gate_table(gates: list[dict], indent: str = "  ") -> list[str]:
    """One row per recorded gate: name, value, bar, PASS/FAIL/N/A."""
    rows = [("gate", "value", "bar", "result")]
    for g in gates:
        passed = g.get("passed")
        bar = (f"{g['op']} " if g.get("op") else "") + _value(g.get("threshold"))
        rows.append((str(g.get("name")), _value(g.get("value")), bar,
                     "PASS" if passed else ("FAIL" if passed is False else "N/A")))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return [indent + "  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[3] for r in rows]


def calibration_lines(manifest) -> list[str]:
    """The `calibration` and `fidelity` lines of `clipscan info` (no calibration: one line that says so)."""
    from clipscan.runtime.failed_gates import fidelity_label

    c = manifest.calibration
    if not c:
        return ["calibration  none (not quantized)"]
    facts = [f"{k}={_value(c[k])}" for k in _FACTS if k in c]
    cset = c.get("calibration_set") or {}
    if cset:
        facts.append(f"{cset.get('n_images')} calibration image(s) (sha256 {str(cset.get('sha256'))[:16]}...)")
    lines = ["calibration  " + "  ".join(facts)]
    fidelity = c.get("fidelity")
    if not isinstance(fidelity, dict):
        return lines + ["fidelity     not checked: calibrated without --val-images (run `clipscan verify` on it)"]
    label = fidelity_label(manifest)
    vset = fidelity.get("validation_set") or {}
    where = f" on {vset.get('n_images')} validation image(s)" if vset.get("n_images") else ""
    lines.append(f"fidelity     {'*** ' + label + ' ***' if label else 'passed'}{where}; report "
                 f"{fidelity.get('report')}")
    if label:
        lines.append("             its answers differ from its FP32 original's by more than the bars allow: use the "
                     "FP32 model, or calibrate again")
    gates = fidelity.get("gates")
    if isinstance(gates, list) and all(isinstance(g, dict) for g in gates):
        lines.extend(gate_table(gates, indent=" " * 13))
    return lines


def source_lines(manifest) -> list[str]:
    """The source files (name and sha256), then what export was given (sources.export), one line each."""
    from clipscan.export.recorded import RECORD_KEY

    lines = []
    for key, src in manifest.sources.items():
        if key != RECORD_KEY:
            # a heads file is named by the heads it gave (its key, heads_1..., only tells files apart)
            what = f"heads {', '.join(map(str, src['heads']))}" if isinstance(src.get("heads"), list) else key
            lines.append(f"source       {what}: {src.get('file')} sha256={src.get('sha256')}")
    rec = manifest.sources.get(RECORD_KEY)
    if isinstance(rec, dict):
        given = {k: v for k, v in rec.items() if v is not None and not k.endswith("sha256")}
        heads = given.pop("heads", None) or []
        text = " ".join(f"{k}={json.dumps(v) if isinstance(v, list) else v}" for k, v in given.items())
        lines.append(f"exported     from {text}")
        for h in heads:
            lines.append(f"             head {(h.get('name') or '') + '=' if h.get('name') else ''}"
                         f"{h.get('format')}:{h.get('path')}")
    return lines
