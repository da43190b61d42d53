"""Explicit attention products -> one ONNX `Attention` node (opset 23), for CPU-target INT8 graphs.

The lean export (export.lean_blocks) writes attention below opset 23 as plain products, because
TensorRT 10 before 10.14 (JetPack's among them) cannot read the `Attention` operator:

    q, k, v (batch, heads, tokens, head_dim) -> Mul(q, scale) -> MatMul(., Transpose(k, 0,1,3,2))
      -> Softmax(axis=-1) -> MatMul(., v)

ONNX Runtime's CPU kernel for `Attention` (onnxruntime >= 1.23) runs the same function without the
key transpose and the separate score tensors. A CPU-target INT8 graph (uint8 asymmetric activations)
is never read by TensorRT, so `quantize_model` can rewrite its attention into that node before
quantizing (`Recipe.fuse_attention`, `clipscan calibrate --fuse-attention`); the attention products
stay float either way (they are not weight products), and only the order of float operations
changes. Not the default: on the outlier-injected ViT-B/32 it measured between 5% slower and 6%
faster per run on a 2-core AMD EPYC (Zen 4), about 3% faster at batch 1 and 1% at batch 8 on average
(README, "Benchmark"), so whether it pays is the machine's to say. A layer whose intermediate
products are read by anything else (a tap, a graph output) keeps its explicit products.
"""
from __future__ import annotations

import numpy as np

from .graph_index import consumers, initializers

ATTENTION_OPSET = 23


def _single(readers: dict, name: str, outputs: set) -> bool:
    return len(readers.get(name, [])) == 1 and name not in outputs


def _scalar(model, name: str, inits: dict) -> float | None:
    from onnx import numpy_helper

    if name in inits:
        a = numpy_helper.to_array(inits[name])
        return float(a.reshape(-1)[0]) if a.size == 1 else None
    for n in model.graph.node:   # a Constant node
        if n.op_type == "Constant" and n.output[0] == name:
            for attr in n.attribute:
                if attr.name == "value":
                    a = numpy_helper.to_array(attr.t)
                    return float(a.reshape(-1)[0]) if a.size == 1 else None
    return None


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
        replace[at] = onnx.helper.make_node("Attention", [q, kt.input[0], pv.input[1]], [pv.output[0]],
                                            name=f"{pv.name or 'matmul'}/fused_attention_{len(replace)}",
                                            scale=float(np.float32(scale)))
        drop.update((k_mul, k_kt, k_qk, k_sm))
    if not replace:
        return 0
    rebuilt = [replace.get(k, n) for k, n in enumerate(nodes) if k not in drop]
    del graph.node[:]
    graph.node.extend(rebuilt)
    for op in model.opset_import:
        if op.domain in ("", "ai.onnx") and op.version < ATTENTION_OPSET:
            op.version = ATTENTION_OPSET
    used = {i for n in graph.node for i in n.input}
    for i in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(i)
    return len(replace)
