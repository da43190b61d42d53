"""Lookups over an ONNX graph that the INT8 passes share: who reads a tensor, who writes it, the initializers
by name."""
from __future__ import annotations


def consumers(graph) -> dict:
    """tensor name -> the nodes that read it, in graph order."""
    out: dict = {}
    for n in graph.node:
        for i in n.input:
            out.setdefault(i, []).append(n)
    return out


def producers(graph) -> dict:
    """tensor name -> the node that writes it."""
    return {o: n for n in graph.node for o in n.output}


def initializers(graph) -> dict:
    """initializer name -> the initializer."""
    return {i.name: i for i in graph.initializer}
