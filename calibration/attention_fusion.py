"""Explicit attention products -> one ONNX `Attention` node (opset 23), for CPU-target INT8 graphs.

The lean export (export.lean_blocks) writes attention below opset 23 as plain products, because
TensorRT 10 before 10.14 (JetPack's among them) cannot read the `Attention` operator:

    q, k, v (batch, heads, tokens, head_dim) -> Mul(q, scale) -> MatMul(., Transpose(k, 0,1,3,2))
      -> Softmax(axis=-1) -> MatMul(., v)

ONNX Runtime's CPU kernel for `Attention` (onnxruntime >= 1.23) runs the same function without the
key transpose and the separate score tensors. A CPU-target INT8 graph (uint8 asymmetric activations)
is never read by TensorRT, so `quantize_model` rewrites its attention into that node before
quantizing (`Recipe.fuse_attention`, by default wherever it fits: `fusion_applies`), and then
into the node's 3-D form (`heads_in_channels`), which needs no head-split transposes; the attention
products stay float either way (they are not weight products), and only the order of float operations
changes. The 3-D form is the point: the head-split and head-merge transposes it removes are pure data
movement, and where the integer products run fast (AMX) they are a real share of the graph's time.
A layer whose intermediate products are read by anything else (a tap, a graph output) keeps its
explicit products.
"""
from __future__ import annotations

import numpy as np

from clipscan.runtime.errors import InvalidArgumentError

from .graph_index import consumers, initializers, producers

ATTENTION_OPSET = 23


# -- when (recipe: an int8.Recipe; target: "cpu" or "tensorrt") ------------------------------------------

def fusion_fits(recipe, target: str) -> bool:
    """Fused attention fits where TensorRT never reads the graph and attention stays float: the cpu target
    with a recipe that quantizes only weight products."""
    return target == "cpu" and recipe.ops == "matmul"


def fusion_applies(recipe, target: str) -> tuple[bool, str]:
    """(whether this quantization fuses attention, why). By default (`fuse_attention` None) it does
    wherever it fits and the installed onnxruntime runs the Attention node (>= 1.23): the fused node computes
    the same function with fewer tensors and no transposes, so the gates do not move; `--no-fuse-attention`
    keeps the explicit products (e.g. to compare both on a given machine with `clipscan bench`)."""
    if recipe.fuse_attention is not None:
        return bool(recipe.fuse_attention), "asked for" if recipe.fuse_attention else "turned off"
    if not fusion_fits(recipe, target):
        return False, f"--target {target} with {recipe.label()} keeps explicit attention products"
    import onnxruntime as ort

    from clipscan.runtime.backends.ort_cpu import ATTENTION_ONNXRUNTIME_TEXT, runs_attention

    if not runs_attention(ort.__version__):
        return False, (f"onnxruntime {ort.__version__} cannot run the Attention node ({ATTENTION_ONNXRUNTIME_TEXT} "
                       "and newer can)")
    return True, "default for the cpu target"


def check_fusion_target(recipe, target: str) -> None:
    """Fused attention asked for where it does not fit (`fusion_fits`): an InvalidArgumentError that says so."""
    if recipe.fuse_attention and not fusion_fits(recipe, target):
        raise InvalidArgumentError(f"--fuse-attention is for --target cpu: fused attention runs only in a cpu "
                                   "target graph with a recipe that quantizes only weight products (smooth, matmul, "
                                   f"dynamic), not --target {target} with {recipe.label()} (TensorRT before 10.14 "
                                   "cannot read the Attention node); drop --fuse-attention or change the "
                                   "target/recipe")


def _single(readers: dict, name: str, outputs: set) -> bool:
    return len(readers.get(name, [])) == 1 and name not in outputs


def _constant(model, name: str, inits: dict) -> np.ndarray | None:
    """The value of `name` when it is an initializer or a Constant node's output, else None."""
    from onnx import numpy_helper

    if name in inits:
        return numpy_helper.to_array(inits[name])
    for n in model.graph.node:
        if n.op_type == "Constant" and n.output[0] == name:
            for attr in n.attribute:
                if attr.name == "value":
                    return numpy_helper.to_array(attr.t)
    return None


def _scalar(model, name: str, inits: dict) -> float | None:
    a = _constant(model, name, inits)
    return float(a.reshape(-1)[0]) if a is not None and a.size == 1 else None


def _ints(model, name: str, inits: dict) -> list[int] | None:
    a = _constant(model, name, inits)
    return None if a is None else [int(v) for v in a.reshape(-1)]


def _rewrite(graph, replace: dict, drop: set) -> None:
    """Rebuild `graph`'s nodes: node k (by position) becomes the nodes `replace[k]`, or goes if k is in
    `drop`; then drop the initializers no node reads any more."""
    rebuilt = []
    for k, n in enumerate(graph.node):
        if k not in drop:
            rebuilt.extend(replace.get(k, [n]))
    del graph.node[:]
    graph.node.extend(rebuilt)
    used = {i for n in graph.node for i in n.input}
    for i in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(i)


def _perm(node) -> list[int]:
    for a in node.attribute:
        if a.name == "perm":
            return list(a.ints)
    return []


def fuse_attention(model) -> int:
    """Rewrite every explicit scaled-dot-product attention of `model` (in place) into an `Attention`
    node and raise the default-domain opset to 23 when one was rewritten. Returns how many."""
    import onnx

    graph = model.graph
    nodes = list(graph.node)
    inits = initializers(graph)
    producer = {o: k for k, n in enumerate(nodes) for o in n.output}
    readers = consumers(graph)
    outputs = {o.name for o in graph.output}

    def made(name):
        k = producer.get(name)
        return (k, nodes[k]) if k is not None else (None, None)

    drop, replace = set(), {}
    for at, pv in enumerate(nodes):
        if pv.op_type != "MatMul" or len(pv.input) != 2:
            continue
        k_sm, sm = made(pv.input[0])
        if sm is None or sm.op_type != "Softmax" or not _single(readers, sm.output[0], outputs):
            continue
        axis = next((a.i for a in sm.attribute if a.name == "axis"), -1)
        k_qk, qk = made(sm.input[0])
        if axis not in (-1, 3) or qk is None or qk.op_type != "MatMul" or not _single(readers, qk.output[0], outputs):
            continue
        (k_mul, mul), (k_kt, kt) = made(qk.input[0]), made(qk.input[1])
        if (mul is None or mul.op_type != "Mul" or kt is None or kt.op_type != "Transpose"
                or _perm(kt) != [0, 1, 3, 2] or not _single(readers, mul.output[0], outputs)
                or not _single(readers, kt.output[0], outputs)):
            continue
        scale = _scalar(model, mul.input[1], inits)
        q = mul.input[0]
        if scale is None:
            scale, q = _scalar(model, mul.input[0], inits), mul.input[1]
        if scale is None:
            continue
        replace[at] = [onnx.helper.make_node("Attention", [q, kt.input[0], pv.input[1]], [pv.output[0]],
                                             name=f"{pv.name or 'matmul'}/fused_attention_{len(replace)}",
                                             scale=float(np.float32(scale)))]
        drop.update((k_mul, k_kt, k_qk, k_sm))
    if not replace:
        return 0
    _rewrite(graph, replace, drop)
    for op in model.opset_import:
        if op.domain in ("", "ai.onnx") and op.version < ATTENTION_OPSET:
            op.version = ATTENTION_OPSET
    return len(replace)


def heads_in_channels(model) -> int:
    """Rewrite (in place) each fused `Attention` whose query, key and value are head-split views of one
    packed projection into the 3-D form (q_num_heads): the packed (tokens, 3*C) product is reshaped to
    (batch, tokens, 3*C) and split on its last axis, and the output goes on as (batch, tokens, C), so
    no head-split or head-merge transpose is left. The pattern, as the lean export writes it:

        X -> Reshape(-1, T, 3, H, D) -> Transpose(2, 0, 3, 1, 4) -> Gather(axis 0, index 0 / 1 / 2)
          -> Attention(q, k, v) -> Transpose(0, 2, 1, 3) -> ...

    The function is the same (the Attention kernel splits heads itself), and the two transposes per layer,
    pure data movement, are gone. Returns how many were rewritten."""
    import onnx

    graph = model.graph
    inits = initializers(graph)
    readers = consumers(graph)
    outputs = {o.name for o in graph.output}
    producer = producers(graph)
    plans = []
    for att in graph.node:
        if att.op_type != "Attention" or len(att.input) != 3 or any(a.name.endswith("num_heads") for a in att.attribute):
            continue
        gathers = [producer.get(x) for x in att.input]
        if any(g is None or g.op_type != "Gather" or not _single(readers, g.output[0], outputs) for g in gathers):
            continue
        if len({g.input[0] for g in gathers}) != 1 or any(next((a.i for a in g.attribute if a.name == "axis"), 0) != 0
                                                         for g in gathers):
            continue
        index = [_ints(model, g.input[1], inits) for g in gathers]
        split = producer.get(gathers[0].input[0])
        if index != [[0], [1], [2]] or split is None or split.op_type != "Transpose" or _perm(split) != [2, 0, 3, 1, 4]:
            continue
        if len(readers.get(split.output[0], [])) != 3 or split.output[0] in outputs:
            continue
        reshape = producer.get(split.input[0])
        shape = _ints(model, reshape.input[1], inits) if reshape is not None and reshape.op_type == "Reshape" else None
        if (shape is None or len(shape) != 5 or shape[2] != 3 or min(shape[3:]) <= 0 or 0 in shape[:2]
                or not _single(readers, reshape.output[0], outputs)):
            continue
        merge = readers.get(att.output[0], [])
        if len(merge) != 1 or att.output[0] in outputs or merge[0].op_type != "Transpose" or _perm(merge[0]) != [0, 2, 1, 3]:
            continue
        plans.append((att, gathers, split, reshape, shape, merge[0]))
    if not plans:
        return 0
    from onnx import numpy_helper

    at = {id(n): k for k, n in enumerate(graph.node)}
    swap, drop = {}, set()
    for att, gathers, split, reshape, shape, merge in plans:
        heads, width = shape[3], shape[3] * shape[4]
        base = f"{att.name or 'attention'}/heads_in_channels"
        packed, bthd = f"{base}/packed_shape", f"{base}/bthd_shape"
        graph.initializer.extend([numpy_helper.from_array(np.array(shape[:2] + [3 * width], np.int64), packed),
                                  numpy_helper.from_array(np.array([0, 0, heads, shape[4]], np.int64), bthd)])
        qkv = [f"{base}/{part}" for part in ("q", "k", "v")]
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in att.attribute}
        swap[at[id(reshape)]] = [
            onnx.helper.make_node("Reshape", [reshape.input[0], packed], [f"{base}/packed"], name=f"{base}/reshape"),
            onnx.helper.make_node("Split", [f"{base}/packed"], qkv, name=f"{base}/split", axis=2, num_outputs=3)]
        swap[at[id(att)]] = [
            onnx.helper.make_node("Attention", qkv, [f"{base}/out"], name=att.name, q_num_heads=heads,
                                  kv_num_heads=heads, **attrs),
            # (batch, tokens, C) viewed as (batch, tokens, heads, D): what the merge transpose gave
            onnx.helper.make_node("Reshape", [f"{base}/out", bthd], [merge.output[0]], name=f"{base}/merge")]
        drop.update(at[id(n)] for n in (*gathers, split, merge))
    _rewrite(graph, swap, drop)
    return len(plans)
