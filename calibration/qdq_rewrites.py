"""Rewrites of a quantized (QDQ) graph that keep its function and save work at run time."""
from __future__ import annotations

from .graph_index import producers


def shape_reads_source(model) -> int:
    """Point each Shape node that reads DequantizeLinear(QuantizeLinear(x)) at x (in place): the shape is
    the same, and the dequantized copy is then no longer read by anything else. The quantizer rewires
    every reader of the quantized pixels, the Shape that sizes the class token among them, and without
    this ONNX Runtime would dequantize the whole input batch only to read its shape. Returns how many
    were rewired."""
    producer = producers(model.graph)
    moved = 0
    for node in model.graph.node:
        if node.op_type != "Shape":
            continue
        dq = producer.get(node.input[0])
        q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        if q is not None and q.op_type == "QuantizeLinear":
            node.input[0] = q.input[0]
            moved += 1
    return moved
