"""What the INT8 search aims at: the gates that fail, the graph outputs they read, the nodes that feed
those outputs, and how far the failing gates are from their bars (so a round's gain can be measured).

The shortfall of a metric m with bar b is (b - m) / (1 - b) when m < b: its distance to the bar in units
of the error the bar allows (a cosine mean of 0.990 under a bar of 0.995 is 1.0; an SRCC of 0.85 under
0.995 is 29). The search sums it over the failing gates.
"""
from __future__ import annotations

from .graph_index import producers


def failing(metrics: dict, gates: dict) -> list[str]:
    """The gated metrics below their bar (a metric that is absent does not count)."""
    return [k for k, bar in gates.items() if k in metrics and metrics[k] < bar]


def shortfall(metrics: dict, gates: dict) -> float:
    return float(sum((bar - metrics[k]) / max(1.0 - bar, 1e-6) for k, bar in gates.items()
                     if k in metrics and metrics[k] < bar))


def target_outputs(manifest, metrics: list[str]) -> list[str]:
    """The graph outputs the failing metrics are computed on: the embedding for cosines, the decision
    head's outputs for agreement, the quality head's score for SRCC."""
    out: list[str] = []
    for k in metrics:
        if k.startswith("cosine") and manifest.embedding:
            out.append(manifest.embedding["output"])
        elif k in ("agreement", "flips") and manifest.decision_head() is not None:
            out += list(manifest.decision_head().outputs.values())
        elif k in ("srcc", "quality_max_abs_diff") and manifest.head("quality") is not None:
            out += list(manifest.head("quality").outputs.values())
    return sorted(set(out))


def ancestors(model, outputs: list[str]) -> set[str]:
    """Names of every node the given graph outputs depend on."""
    producer = producers(model.graph)
    seen: set[str] = set()
    stack = [producer[o] for o in outputs if o in producer]
    while stack:
        node = stack.pop()
        if node.name in seen:
            continue
        seen.add(node.name)
        stack += [producer[i] for i in node.input if i in producer]
    return seen
