"""Accuracy-aware search: layer-wise error of a QDQ model against float, and greedy exclusion.

`layer_errors(float_model, qdq_path, tensors)` runs the float model and the quantized model with
the outputs of every quantized MatMul/Gemm/Conv exposed and gives, per node, the relative error
of its output against float and how much of it the node added (output error minus its input's).
`search(...)` starts from a recipe, and while the gates fail, acts on the nodes feeding the failing
outputs that add the most error and re-quantizes, stopping when a round does not help (see
search_targets for the shortfall it measures gains by).
"""
from __future__ import annotations

import copy
import logging
import os
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from clipscan.export.onnx_writer import rewrite_manifest
from clipscan.measure.machine import describe_cpu
from clipscan.measure.thresholds import INT8_STRICT, SEARCH_MIN_GAIN, meets
from clipscan.runtime.fidelity_metrics import compare_outputs

from . import int8
from . import search_targets as targets
from .calib_data import CalibrationSet

log = logging.getLogger("clipscan.calibrate")


def _expose(model, names: list[str]):
    import onnx

    m = copy.deepcopy(model)
    have = {o.name for o in m.graph.output}
    for n in names:
        if n not in have:
            m.graph.output.append(onnx.helper.make_empty_tensor_value_info(n))
    return m


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm((a - b).ravel()) / max(np.linalg.norm(b.ravel()), 1e-12))


def layer_errors(float_model, qdq_path, tensors: np.ndarray, input_name: str = "pixels",
                 max_rows: int = 16) -> list[dict]:
    """Per quantized weight node (in the float model's names): relative output error against float,
    and the part the node adds (its output error minus the error of its activation input)."""
    import onnx

    qdq = onnx.load(str(qdq_path))
    q_nodes = {n.name: n for n in qdq.graph.node}
    f_nodes = [n for n in float_model.graph.node if n.name in int8.weight_nodes(float_model)]
    produced_q = {o for n in qdq.graph.node for o in n.output}
    dq_out = {o for n in qdq.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    # only nodes the QDQ model really quantizes (an input comes from a DequantizeLinear)
    candidates = [n for n in f_nodes if n.name in q_nodes and n.output[0] in produced_q
                  and any(i in dq_out for i in q_nodes[n.name].input)]
    tensors_needed = sorted({n.output[0] for n in candidates} |
                            {n.input[0] for n in candidates if n.input[0] in produced_q and n.input[0] != input_name})
    x = tensors[:max_rows]
    with tempfile.TemporaryDirectory() as tmp:
        fp, qp = Path(tmp) / "f.onnx", Path(tmp) / "q.onnx"
        onnx.save(_expose(float_model, tensors_needed), str(fp))
        onnx.save(_expose(qdq, tensors_needed), str(qp))
        fs, qs = int8.session(fp), int8.session(qp)
        fo = dict(zip(tensors_needed, fs.run(tensors_needed, {input_name: x})))
        qo = dict(zip(tensors_needed, qs.run(tensors_needed, {input_name: x})))
    rows = []
    for n in candidates:
        out_err = _rel(qo[n.output[0]], fo[n.output[0]])
        in_err = _rel(qo[n.input[0]], fo[n.input[0]]) if n.input[0] in fo else 0.0
        rows.append({"node": n.name, "op": n.op_type, "output_error": out_err, "input_error": in_err,
                     "added_error": out_err - in_err})
    rows.sort(key=lambda r: -r["added_error"])
    return rows


def evaluate(fp32_path, int8_path, val_tensors: np.ndarray, manifest, input_name: str = "pixels",
             ref: dict | None = None) -> dict:
    ref = ref if ref is not None else int8.run_all(fp32_path, val_tensors, input_name)
    got = int8.run_all(int8_path, val_tensors, input_name)
    return compare_outputs(manifest, ref, got)


def search(fp32_path, out_path, cset: CalibrationSet, val_tensors: np.ndarray, recipe: int8.Recipe,
           target: str = "cpu", *, max_rounds: int = 4, per_round: int = 2, batch_size: int = 8,
           gates: dict = INT8_STRICT, progress: bool = False, rescale: bool = True,
           speed_batch: int | None = 8, speed_rounds: int = 5, min_gain: float | None = SEARCH_MIN_GAIN) -> dict:
    """Quantize with `recipe`; while the gates fail on `val_tensors` (against the FP32 ONNX model), act on
    the `per_round` nodes adding the most error among those that feed the failing outputs (a failing
    SRCC looks at the quality head's inputs, not the detector's): SmoothQuant rescaling if they read a
    LayerNorm (and the recipe has none), the float tail if they are after the last LayerNorm, else
    exclusion (nodes_to_exclude); then quantize again. `rescale=False`: exclusion only.

    Each round records its shortfall (search_targets.shortfall) and its gain (the fraction of the best
    shortfall so far that it removed). The search stops when the gates pass, after `max_rounds`, when
    no candidate is left, or when a round gains less than `min_gain` (None: never for that reason);
    it then keeps its best round (the smallest shortfall), not necessarily the last.

    Every round also records its cost in speed: median ONNX Runtime CPU latency of the round's INT8
    model and of the FP32 model on `speed_batch` validation rows, timed interleaved in the same run
    (`speedup_vs_fp32`); `speed_batch=None` skips it. A kept model slower than FP32 is recorded
    (`slower_than_fp32`) and logged as a warning.

    Rounds are written to hidden files next to `out_path`; only the kept model, with the history in
    its manifest (`calibration.search`), is renamed to `out_path`, so an interrupted search leaves
    nothing there."""
    out_path = Path(out_path)
    work = out_path.with_name(f".{out_path.name}.search-{os.getpid()}.onnx")
    best = out_path.with_name(f".{out_path.name}.search-best-{os.getpid()}.onnx")
    try:
        found = _search_rounds(fp32_path, work, best, cset, val_tensors, recipe, target, max_rounds=max_rounds,
                               per_round=per_round, batch_size=batch_size, gates=gates, progress=progress,
                               rescale=rescale, speed_batch=speed_batch, speed_rounds=speed_rounds,
                               min_gain=min_gain)
        res, kept = found["result"], found["final"]
        calibration = {**res.calibration, "search": found["history"], "search_kept_round": kept["round"],
                       "search_stopped": found["stopped"]}
        if "speedup_vs_fp32" in kept:
            calibration["search_speed_measured_on"] = describe_cpu()
            calibration["slower_than_fp32"] = kept["speedup_vs_fp32"] < 1.0
            if calibration["slower_than_fp32"]:
                log.warning("the kept INT8 model (search round %d) runs at %.2fx the FP32 graph's speed on this CPU "
                            "(ONNX Runtime, batch %d): it is slower than FP32; keep the FP32 artifact unless the "
                            "size matters more", kept["round"], kept["speedup_vs_fp32"], kept["speed_batch"])
        manifest = replace(res.manifest, calibration=calibration)
        rewrite_manifest(best, manifest, out=out_path)
        found["result"] = replace(res, path=out_path, manifest=manifest, calibration=calibration)
        return found
    finally:
        work.unlink(missing_ok=True)
        best.unlink(missing_ok=True)


def _prepared_float(fp32_path, current, cset, name, batch_size):
    """The float graph the quantizer saw (smoothing and ONNX Runtime's pre-processing included)."""
    import onnx
    from onnxruntime.quantization import quant_pre_process

    float_model = onnx.load(str(fp32_path))
    if current.smooth_alpha is not None:
        int8.smooth_quant(float_model, cset.tensors, name, current.smooth_alpha, batch_size)
    with tempfile.TemporaryDirectory() as tmp:
        src, pre = Path(tmp) / "f.onnx", Path(tmp) / "p.onnx"
        onnx.save(float_model, str(src))
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        return onnx.load(str(pre))


def _search_rounds(fp32_path, out_path, best_path, cset, val_tensors, recipe, target, *, max_rounds, per_round,
                   batch_size, gates, progress, rescale, speed_batch, speed_rounds, min_gain) -> dict:
    manifest = int8.manifest_of(fp32_path)
    name = manifest.input.name
    ref = int8.run_all(fp32_path, val_tensors, name)
    history: list[dict] = []
    current = recipe
    kept = kept_res = kept_recipe = None
    stopped = "max_rounds"
    for round_ in range(max_rounds + 1):
        res = int8.quantize_artifact(fp32_path, out_path, cset, current, target, batch_size=batch_size,
                                     progress=progress)
        metrics = evaluate(fp32_path, out_path, val_tensors, manifest, name, ref)
        short = targets.shortfall(metrics, gates)
        step = {"round": round_, "recipe": current.label(), "excluded": list(current.exclude), **metrics,
                "passed": meets(metrics, gates), "failing": targets.failing(metrics, gates), "shortfall": short}
        if kept is not None:
            step["gain"] = (kept["shortfall"] - short) / kept["shortfall"] if kept["shortfall"] > 0 else 0.0
        if speed_batch:
            batch = np.ascontiguousarray(val_tensors[:speed_batch])
            lat = int8.interleaved_latency({"fp32": fp32_path, "int8": out_path}, batch, name, rounds=speed_rounds)
            step.update(latency_ms_fp32=lat["fp32"] * 1e3, latency_ms_int8=lat["int8"] * 1e3,
                        speedup_vs_fp32=lat["fp32"] / lat["int8"], speed_batch=len(batch))
        history.append(step)
        log.info("search round %d (%s): shortfall %.3g%s, %s", round_, current.label(), short,
                 f", gain {step['gain']:+.1%}" if "gain" in step else "", metrics)
        if kept is None or short < kept["shortfall"]:
            kept, kept_res, kept_recipe = step, res, current
            shutil.copyfile(out_path, best_path)
        if step["passed"]:
            stopped = "passed"
            break
        if "gain" in step and min_gain is not None and step["gain"] < min_gain:
            stopped = f"round {round_} removed {step['gain']:.1%} of the shortfall (< {min_gain:.0%}): no further round"
            break
        if round_ == max_rounds:
            break
        float_model = _prepared_float(fp32_path, current, cset, name, batch_size)
        step["targets"] = targets.target_outputs(manifest, step["failing"])
        feeding = targets.ancestors(float_model, step["targets"]) if step["targets"] else None
        errors = [e for e in layer_errors(float_model, out_path, val_tensors, name)
                  if feeding is None or e["node"] in feeding]
        worst = [e["node"] for e in errors if e["node"] not in current.exclude][:per_round]
        step["worst_layers"] = errors[:5]
        if not worst:
            stopped = f"no quantized node feeding {step['targets']} is left to act on"
            break
        # act on the worst layers: rescale when they read a LayerNorm (outlier channels), keep the tail
        # (projection, heads) in float when they are in it, else keep them in float
        ln_fed = {t[0].name for _, pairs in int8._ln_matmul_pairs(float_model) for t in pairs}
        tail = set(int8.tail_nodes(float_model))
        if rescale and current.smooth_alpha is None and any(w in ln_fed for w in worst):
            step["action"] = f"rescale (SmoothQuant a=0.5): worst layers {worst} read LayerNorm outputs"
            current = replace(current, smooth_alpha=0.5, name="")
        elif rescale and not current.keep_tail_float and any(w in tail for w in worst):
            step["action"] = f"keep the tail after the last LayerNorm in float: worst layers {worst} are in it"
            current = replace(current, keep_tail_float=True, name="")
        else:
            step["action"] = f"exclude {worst}"
            current = replace(current, exclude=list(current.exclude) + worst, name="")
    return {"history": history, "final": kept, "recipe": kept_recipe, "result": kept_res, "stopped": stopped}
