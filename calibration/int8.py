"""Post-training INT8 (QDQ) of a clipscan artifact with ONNX Runtime's quantization tools.

`quantize_artifact(model, out, calib, recipe, target)` writes a QDQ ONNX file that keeps the
manifest, with precision "int8" and the calibration facts. Targets:

- "cpu": uint8 activations, int8 per-channel weights (VNNI-friendly; ORT CPU fuses QDQ pairs).
- "tensorrt": int8 symmetric activations and weights, dedicated Q/DQ pairs (explicit quantization,
  as TensorRT 10/11 need).

A `Recipe` picks the calibration method (minmax, percentile, entropy; or dynamic = weights only),
which ops get quantized ("all" or "matmul": MatMul/Gemm with a constant weight and every Conv: a
ViT's patch embedding, a ResNet's stem and stages), whether the tail (projection, normalisation, heads:
after a ViT's final LayerNorm, from a ResNet's attention-pool Softmax on) stays float,
SmoothQuant-style rescaling of LayerNorm -> MatMul pairs (`smooth_alpha`), and extra excluded nodes.
"""
from __future__ import annotations

import contextlib
import copy
import datetime as _dt
import logging
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from clipscan.export.onnx_writer import attach_manifest, save_model
from clipscan.measure.machine import RUNTIME_TOOLS, tool_versions
from clipscan.measure.timing import timed_turn
from clipscan.runtime.artifact import file_sha256, load_artifact
from clipscan.runtime.errors import CalibrationError, InvalidArgumentError
from clipscan.runtime.manifest import METADATA_KEY, Manifest

from .attention_fusion import ATTENTION_OPSET, check_fusion_target, fuse_attention, fusion_applies, heads_in_channels
from .calib_data import HISTOGRAM_METHODS, BatchReader, CalibrationSet, calibration_batches
from .graph_index import consumers, initializers
from .qdq_rewrites import shape_reads_source
from .recipes import METHODS, RECIPES, TARGETS, Recipe

log = logging.getLogger("clipscan.calibrate")

def _onnx():
    import onnx

    return onnx


# -- graph helpers ------------------------------------------------------------------------------

def tail_nodes(model) -> list[str]:
    """Names of the nodes at and after the tower's last LayerNormalization (ln_post onwards; on a ModifiedResNet,
    which has none, its attention pool's Softmax onwards: the weighted values and the c_proj projection, as the
    FP16 export keeps them), and of every node the embedding output does not depend on (heads, and taps such
    as export.head_tap's attention-head contributions, which branch off inside the tower)."""
    names = _after_last_ln(model)
    seen = set(names)
    return names + [n for n in _head_only_nodes(model) if n not in seen]


def _head_only_nodes(model) -> list[str]:
    from .search_targets import ancestors

    outputs = [o.name for o in model.graph.output]
    if "embedding" not in outputs:
        return []
    backbone = ancestors(model, ["embedding"])
    return [n.name for n in model.graph.node if n.name not in backbone]


def _after_last_ln(model) -> list[str]:
    """The tower's last LayerNorm (on the embedding's path, not a tap's) and everything after it; in a tower
    without LayerNorm (ModifiedResNet), its last Softmax on that path (the attention pool's) and what follows."""
    from .search_targets import ancestors

    graph = model.graph
    on_path = ancestors(model, ["embedding"]) if any(o.name == "embedding" for o in graph.output) else None
    lns = [n for n in graph.node if n.op_type == "LayerNormalization" and (on_path is None or n.name in on_path)]
    if not lns:
        lns = [n for n in graph.node if n.op_type == "Softmax" and on_path is not None and n.name in on_path]
    if not lns:
        return []
    cons = consumers(graph)
    seen, stack = set(), list(lns[-1].output)
    names = [lns[-1].name]
    while stack:
        t = stack.pop()
        for n in cons.get(t, []):
            if n.name not in seen:
                seen.add(n.name)
                names.append(n.name)
                stack.extend(n.output)
    return names


def weight_nodes(model) -> list[str]:
    """MatMul/Gemm nodes with a constant weight input, and Conv: what 'matmul' quantizes."""
    inits = initializers(model.graph)
    out = []
    for n in model.graph.node:
        if n.op_type in ("MatMul", "Gemm") and len(n.input) > 1 and n.input[1] in inits:
            out.append(n.name)
        elif n.op_type == "Conv":
            out.append(n.name)
    return out


def _ln_matmul_pairs(model) -> list[tuple]:
    """(LayerNorm node, [(MatMul/Gemm node, weight initializer name, in-axis)]) where every consumer
    path of the LN output reaches a constant-weight MatMul/Gemm through ops that keep the last axis."""
    graph = model.graph
    inits = initializers(graph)
    cons = consumers(graph)
    pairs = []
    for ln in (n for n in graph.node if n.op_type == "LayerNormalization"):
        if len(ln.input) < 3 or ln.input[1] not in inits or ln.input[2] not in inits:
            continue
        targets, ok, stack = [], True, [ln.output[0]]
        while stack and ok:
            t = stack.pop()
            users = cons.get(t, [])
            if not users:
                ok = False  # a graph output: its values must not change
            for n in users:
                if n.op_type == "MatMul" and n.input[0] == t and n.input[1] in inits:
                    targets.append((n, n.input[1], 0))
                elif n.op_type == "Gemm" and n.input[0] == t and n.input[1] in inits:
                    attrs = {a.name: a for a in n.attribute}
                    if "transA" in attrs and attrs["transA"].i:
                        ok = False
                    trans_b = int(attrs["transB"].i) if "transB" in attrs else 0
                    targets.append((n, n.input[1], 1 if trans_b else 0))
                elif n.op_type == "Transpose":
                    perm = [a for a in n.attribute if a.name == "perm"]
                    p = list(perm[0].ints) if perm else []
                    if not p or p[-1] != len(p) - 1:
                        ok = False
                    stack.extend(n.output)
                elif n.op_type in ("Gather", "Slice", "Squeeze", "Unsqueeze", "Identity"):
                    # selecting tokens (CLS) keeps the channel axis last; reject anything that indexes it
                    if n.op_type == "Gather":
                        ax = [a.i for a in n.attribute if a.name == "axis"]
                        if ax and ax[0] == -1:
                            ok = False
                    stack.extend(n.output)
                else:
                    ok = False
        if ok and targets:
            pairs.append((ln, targets))
    return pairs


def smooth_quant(model, tensors: np.ndarray, input_name: str, alpha: float = 0.5, batch_size: int = 8) -> dict:
    """SmoothQuant-style rescaling folded into LayerNorm gamma/beta and the next MatMul's weights (in place).

    For each LN -> MatMul pair, s_c = max|x_c|^alpha / max|W_c|^(1-alpha) over the calibration
    activations x (the LN output) and the rows W_c of every consuming weight; gamma_c, beta_c /= s_c
    and W_c *= s_c. The float function is unchanged; the outlier channels shrink before quantization.
    """
    import onnxruntime as ort

    onnx = _onnx()
    from onnx import numpy_helper

    pairs = _ln_matmul_pairs(model)
    if not pairs:
        return {"smoothed": []}
    probe = copy.deepcopy(model)
    names = [ln.output[0] for ln, _ in pairs]
    have = {o.name for o in probe.graph.output}
    for name in names:
        if name not in have:
            probe.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    sess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    amax = {n: None for n in names}
    for batch in calibration_batches(tensors, batch_size):
        outs = sess.run(names, {input_name: batch})
        for n, o in zip(names, outs):
            m = np.abs(o.reshape(-1, o.shape[-1])).max(0)
            amax[n] = m if amax[n] is None else np.maximum(amax[n], m)
    inits = initializers(model.graph)
    uses: dict = {}
    for _, targets in pairs:
        for _, w, _axis in targets:
            uses[w] = uses.get(w, 0) + 1
    done = []
    for ln, targets in pairs:
        if any(uses[w] > 1 for _, w, _ in targets):
            continue  # a weight shared with another LN: scaling it would change the other path
        x_max = np.maximum(amax[ln.output[0]].astype(np.float64), 1e-5)
        w_rows = []
        for _, w, axis in targets:
            W = numpy_helper.to_array(inits[w]).astype(np.float64)
            w_rows.append(np.abs(W).max(axis=1 if axis == 0 else 0))
        w_max = np.maximum(np.max(np.stack(w_rows), 0), 1e-5)
        s = (x_max ** alpha) / (w_max ** (1 - alpha))
        s = np.clip(s / np.exp(np.mean(np.log(s))), 1e-2, 1e4)  # geometric mean 1: keep magnitudes sane
        for k, suffix in ((1, "gamma"), (2, "beta")):
            src = numpy_helper.to_array(inits[ln.input[k]]).astype(np.float64)
            new_name = f"{ln.name}_smoothed_{suffix}"
            model.graph.initializer.append(numpy_helper.from_array((src / s).astype(np.float32), new_name))
            ln.input[k] = new_name  # own copy: dynamo shares identical LN initializers between layers
        for _, w, axis in targets:
            W = numpy_helper.to_array(inits[w]).astype(np.float64)
            W = W * (s[:, None] if axis == 0 else s[None, :])
            inits[w].CopyFrom(numpy_helper.from_array(W.astype(np.float32), w))
        done.append({"layernorm": ln.name, "matmuls": [t[0].name for t in targets],
                     "max_scale": float(s.max()), "x_max_ratio": float(x_max.max() / np.median(x_max))})
    # drop initializers nobody reads any more
    used = {i for n in model.graph.node for i in n.input}
    keep = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    return {"smoothed": done, "alpha": alpha}


# -- quantization ---------------------------------------------------------------------------------


@dataclass
class QuantResult:
    path: Path
    manifest: Manifest
    calibration: dict


def _calib_method(name: str):
    from onnxruntime.quantization import CalibrationMethod

    return {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
            "entropy": CalibrationMethod.Entropy}[name]


def quantize_model(src_model, cset: CalibrationSet, recipe: Recipe, target: str = "cpu", *,
                   input_name: str = "pixels", batch_size: int = 8, progress: bool = True) -> tuple:
    """Quantize an ONNX ModelProto (float); returns (the quantized ModelProto, facts: excluded nodes,
    smoothing, Q/DQ counts). Nothing is written where the caller will look: that is the caller's."""
    from onnxruntime.quantization import QuantFormat, QuantType, quant_pre_process, quantize_dynamic, quantize_static

    onnx = _onnx()
    if target not in TARGETS:
        raise InvalidArgumentError(f"unknown target {target!r}; choose one of {list(TARGETS)}")
    if recipe.method not in METHODS:
        raise InvalidArgumentError(f"unknown method {recipe.method!r}; choose one of {list(METHODS)}")
    if recipe.method == "dynamic" and target == "tensorrt":
        raise CalibrationError("dynamic quantization has no Q/DQ activations: TensorRT needs a static (calibrated) "
                               "method")
    if cset.own_size and recipe.method in HISTOGRAM_METHODS:
        raise CalibrationError(f"the {recipe.method} calibrator of ONNX Runtime stacks the activations of every "
                               "calibration sample into one array, and the images of this set each have their own "
                               f"size ({len(cset.sizes())} sizes); calibrate it with --method minmax")
    model = copy.deepcopy(src_model)
    facts: dict = {"recipe": asdict(recipe), "label": recipe.label()}
    if recipe.smooth_alpha is not None:
        facts["smoothquant"] = smooth_quant(model, cset.tensors, input_name, recipe.smooth_alpha, batch_size)
    if recipe.ops not in ("all", "matmul"):
        raise InvalidArgumentError(f"ops must be 'all' or 'matmul', got {recipe.ops!r}")
    check_fusion_target(recipe, target)
    # uint8 CPU graphs are never TensorRT's: ONNX Runtime's Attention kernel may run their attention
    fuse, why = fusion_applies(recipe, target)
    log.debug("fused attention: %s (%s)", "yes" if fuse else "no", why)
    facts["fused_attention"] = fuse_attention(model) if fuse else 0
    facts["attention_heads_in_channels"] = heads_in_channels(model) if fuse else 0
    with tempfile.TemporaryDirectory(prefix="clipscan-int8-") as tmp:
        src = Path(tmp) / "float.onnx"
        pre = Path(tmp) / "pre.onnx"
        onnx.save(model, str(src))
        # open_clip's ViT trips symbolic shape inference (an assertion in Reshape): skip it
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        pre_model = onnx.load(str(pre))
        exclude = list(recipe.exclude)
        if recipe.keep_tail_float:
            exclude += [n for n in tail_nodes(pre_model) if n not in exclude]
        op_types = None
        nodes_to_quantize = None
        if recipe.ops == "matmul":
            op_types = ["MatMul", "Gemm", "Conv"]
            nodes_to_quantize = [n for n in weight_nodes(pre_model) if n not in exclude]
        facts["nodes_to_exclude"] = exclude
        qout = Path(tmp) / "int8.onnx"
        if recipe.method == "dynamic":
            quantize_dynamic(str(pre), str(qout), per_channel=True, weight_type=QuantType.QInt8,
                             op_types_to_quantize=["MatMul", "Gemm"], nodes_to_exclude=exclude or None,
                             nodes_to_quantize=nodes_to_quantize)
        else:
            extra = {"CalibPercentile": recipe.percentile} if recipe.method == "percentile" else {}
            if recipe.ops == "matmul":
                # float outputs for MatMul/Gemm: else the quantizer puts Q/DQ after each Gemm (the lean graph's
                # linears), which costs a requantization, adds error and hides the GELU from ONNX Runtime's
                # fusion. Conv keeps its output Q/DQ: ORT's QLinearConv needs it.
                extra["OpTypesToExcludeOutputQuantization"] = ["MatMul", "Gemm"]
            if target == "tensorrt":
                extra.update(ActivationSymmetric=True, WeightSymmetric=True, DedicatedQDQPair=True)
                act_type = QuantType.QInt8
            else:
                act_type = QuantType.QUInt8
            reader = BatchReader(input_name, calibration_batches(cset.tensors, batch_size), progress=progress,
                                 label=f"calibrating ({recipe.method})")
            # ONNX Runtime prints its calibration chatter ("Collecting tensor data...", "Percentile : (...)")
            # on stdout: shown on stderr with clipscan -v, dropped otherwise
            verbose = logging.getLogger("clipscan").getEffectiveLevel() <= logging.INFO
            sink = contextlib.nullcontext(sys.stderr) if verbose else open(os.devnull, "w")
            with sink as chatter, contextlib.redirect_stdout(chatter):
                quantize_static(str(pre), str(qout), reader, quant_format=QuantFormat.QDQ,
                                op_types_to_quantize=op_types, nodes_to_quantize=nodes_to_quantize,
                                nodes_to_exclude=exclude or None, per_channel=True, activation_type=act_type,
                                weight_type=QuantType.QInt8, calibrate_method=_calib_method(recipe.method),
                                extra_options=extra)
        q = onnx.load(str(qout))
    facts["shape_reads_source"] = shape_reads_source(q)
    counts: dict = {}
    for n in q.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear", "MatMulInteger", "DynamicQuantizeLinear"):
            counts[n.op_type] = counts.get(n.op_type, 0) + 1
    facts["quant_nodes"] = counts
    return q, facts


def quantize_artifact(model_path, out_path, cset: CalibrationSet, recipe: Recipe, target: str = "cpu", *,
                      batch_size: int = 8, progress: bool = True) -> QuantResult:
    """Quantize a clipscan artifact; the output keeps its manifest with precision int8 and `calibration` facts."""
    import dataclasses

    onnx = _onnx()
    artifact = load_artifact(model_path)
    if artifact.manifest.precision != "fp32":
        raise CalibrationError(f"{model_path} is {artifact.manifest.precision}; INT8 calibration starts from an FP32 "
                               "export: pass the model `clipscan export --precision fp32` wrote")
    out_path = Path(out_path)
    if out_path.resolve() == artifact.path:
        raise InvalidArgumentError(f"the output {out_path} is the FP32 model itself; write the INT8 model to another "
                                   "file")
    model = onnx.load(str(artifact.path))
    start = time.perf_counter()
    quantized, facts = quantize_model(model, cset, recipe, target, input_name=artifact.manifest.input.name,
                                      batch_size=batch_size, progress=progress)
    calibration = {
        "method": recipe.method, "recipe": recipe.label(), "target": target,
        "activations": "int8 symmetric" if target == "tensorrt" else "uint8 asymmetric",
        "weights": "int8 symmetric per-channel", "format": "QDQ" if recipe.method != "dynamic" else "dynamic",
        "dedicated_qdq_pairs": target == "tensorrt",
        "calibration_set": {"sha256": cset.images_hash, "n_images": len(cset), "n_failed": len(cset.failed),
                            "batch_size": 1 if cset.own_size else min(batch_size, len(cset)),
                            **({"own_size": {"samples": "one per image, at its own size",
                                             "sizes": len(cset.sizes())}} if cset.own_size else {})},
        "source_model_sha256": artifact.sha256(), "source_model_created_utc": artifact.manifest.created_utc,
        "excluded_nodes": facts["nodes_to_exclude"],
        "quantized_ops": recipe.ops, "smoothquant": facts.get("smoothquant"), "quant_nodes": facts["quant_nodes"],
        "fused_attention": facts["fused_attention"],
        "attention_heads_in_channels": facts["attention_heads_in_channels"],
        "shape_reads_source": facts["shape_reads_source"],
        "seconds": round(time.perf_counter() - start, 2), "tools": tool_versions(RUNTIME_TOOLS + ("onnx",)),
    }
    # a draft-decoding record belongs to the model it was measured on: the INT8 model needs its own
    opset = max(artifact.manifest.opset, ATTENTION_OPSET) if facts["fused_attention"] else artifact.manifest.opset
    created = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()  # this file's, not the FP32's
    manifest = dataclasses.replace(artifact.manifest, precision="int8", calibration=calibration, decoding=None,
                                   opset=opset, created_utc=created)
    attach_manifest(quantized, manifest)
    save_model(quantized, out_path)  # atomic: an interrupted run leaves nothing at out_path
    return QuantResult(out_path, manifest, calibration)


# -- quick comparisons (ONNX FP32 vs INT8, no torch) ---------------------------------------------------

def session(path, threads: int | None = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
    src = path if isinstance(path, (str, Path)) else path.SerializeToString()
    return ort.InferenceSession(str(src) if isinstance(src, Path) else src, so, providers=["CPUExecutionProvider"])


def run_all(path, tensors: np.ndarray, input_name: str = "pixels", batch_size: int = 16) -> dict:
    sess = session(path)
    names = [o.name for o in sess.get_outputs()]
    outs: dict = {n: [] for n in names}
    for i in range(0, len(tensors), batch_size):
        for n, o in zip(names, sess.run(names, {input_name: tensors[i:i + batch_size]})):
            outs[n].append(o)
    return {n: np.concatenate(v) for n, v in outs.items()}


def manifest_of(path) -> Manifest:
    return load_artifact(path).manifest


__all__ = ["Recipe", "RECIPES", "TARGETS", "METHODS", "quantize_artifact", "quantize_model", "smooth_quant",
           "run_all", "METADATA_KEY",
           "file_sha256"]


def interleaved_latency(paths: dict, batch: np.ndarray, input_name: str = "pixels", rounds: int = 10,
                        warmup: int = 2, settle_s: float = 0.2, block_s: float = 0.3) -> dict:
    """Median latency (s) of each model, timed in round-robin turns so a change in machine load hits
    every model alike (FP32 and INT8 measured in the same run). Each turn first runs untimed for
    `settle_s` (the previous model's ONNX Runtime worker threads keep spinning for tens of ms after
    its call and would slow this one), then timed for `block_s` (at least one call)."""
    sessions = {k: session(p) for k, p in paths.items()}
    names = {k: [o.name for o in s.get_outputs()] for k, s in sessions.items()}
    times: dict = {k: [] for k in sessions}
    feed = {input_name: batch}
    for k, s in sessions.items():
        for _ in range(warmup):
            s.run(names[k], feed)
    for _ in range(rounds):
        for k, s in sessions.items():
            times[k] += timed_turn(lambda s=s, k=k: s.run(names[k], feed), settle_s, block_s)
    return {k: float(np.median(v)) for k, v in times.items()}
