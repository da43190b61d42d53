"""The FP16 variant of an exported graph, and the checks that say how close it stays to FP32.

`convert_to_fp16` rewrites the FP32 ONNX graph that `to_onnx` writes:

- weights and compute in float16: Conv, MatMul, Gemm, the elementwise ops and the
  activations of the image tower, and the data-movement ops between them;
- kept in float32: LayerNormalization and Softmax (and any op not known to be safe in
  float16: reductions, Pow, Sqrt, Exp, ...), plus the whole tail of the tower (`TAILS`): for a
  ViT, everything after its final LayerNorm (ln_post): CLS selection, projection, L2
  normalisation and every head; for OpenAI's ModifiedResNet (RN50, ...), everything from its
  attention pool's Softmax on: the attention-weighted sum of the values, the output projection
  (c_proj, which gives the embedding), the pooled token, normalisation and every head. The tail
  is a small part of the compute and decides the verdict at a threshold, so it is not worth its
  float16 rounding. A ResNet's BatchNorms are already folded into its convolutions by the ONNX
  export (eval mode), so the stages are Conv, Relu, AveragePool and Add, all in float16;
- graph inputs and outputs keep their types (float32 or uint8 in, float32 out), as
  onnxconverter-common's `keep_io_types` does: Casts are inserted at the boundaries.

It is written with `onnx` alone rather than onnxconverter-common's
`convert_float_to_float16`: on this graph that function (1.16.0 with onnx 1.23) rounds the
initializers of blocked nodes too (the 1e-12 clamp of the L2 normalisation became 1e-7)
and writes a Gemm whose inputs disagree in type, which `onnx.checker` refuses.

The checks that say how close the result stays to FP32 are in `clipscan.export.fp16_check`.
"""
from __future__ import annotations

import ast
import copy
import logging
from collections import Counter
from dataclasses import dataclass

import numpy as np

from clipscan.runtime.errors import CheckpointError, InvalidArgumentError

from .deps import require
from .tower_kind import MODIFIED_RESNET, VIT

log = logging.getLogger("clipscan.export")
onnx = require("onnx")
TensorProto = onnx.TensorProto
FLOAT, FLOAT16 = TensorProto.FLOAT, TensorProto.FLOAT16
FP16_MAX = float(np.finfo(np.float16).max)


# Ops that compute in float16 in the converted tower.
FP16_OPS = frozenset({
    "Conv", "MatMul", "Gemm", "Add", "Sub", "Mul", "Div", "Neg", "Abs", "Max", "Min", "Where", "AveragePool",
    "Sigmoid", "Relu", "Tanh", "Erf", "Gelu", "LeakyRelu", "HardSigmoid", "HardSwish",
})
# Ops that move data without arithmetic: they take the type of their data inputs.
FOLLOW_OPS = frozenset({
    "Reshape", "Transpose", "Gather", "GatherElements", "GatherND", "Squeeze", "Unsqueeze", "Expand",
    "Concat", "Slice", "Identity", "Flatten", "Split", "Tile", "Pad",
})
# Ops whose float inputs may have any type (their outputs are not float).
SHAPE_OPS = frozenset({"Shape", "Size"})
# Ops kept in float32 on purpose (the rest of the unknown ops are kept too, and logged).
KEEP_FP32_OPS = ("LayerNormalization", "Softmax", "ReduceL2", "ReduceMean", "ReduceSum", "ReduceSumSquare",
                 "ReduceMax", "LpNormalization", "Pow", "Sqrt", "Exp", "Log", "Clip")
SUFFIX16 = "__fp16"
# tower kind (export.tower_kind) -> where its float32 tail starts, as the manifest says it
TAILS = {
    VIT: "everything after the tower's final LayerNorm: CLS selection, projection, L2 normalisation, heads",
    MODIFIED_RESNET: "everything from the attention pool's Softmax on: the attention-weighted values, the output "
                     "projection (c_proj), the pooled token, L2 normalisation, heads",
}


@dataclass
class Fp16Conversion:
    """The converted model and what was kept in float32."""
    model: object
    kept_fp32_ops: dict[str, int]            # op type -> nodes of the tower kept in float32
    tail_ops: dict[str, int]                 # op type -> nodes of the tail (TAILS) kept in float32
    casts_inserted: int
    fp16_weights: int                        # numbers stored in float16
    fp32_weights: int                        # numbers stored in float32
    weights_flushed_to_zero: int             # nonzero float32 weights that are 0 in float16
    weights_subnormal: int                   # weights that are subnormal in float16 (fewer significant bits)
    tower: str = VIT                         # whose tail (TAILS) stayed float32

    def manifest_facts(self) -> dict:
        """What `backbone["fp16"]` of the manifest records."""
        return {
            "compute": "float16 (Conv, MatMul, Gemm, pooling, elementwise ops and activations of the image "
                       "tower)",
            "kept_fp32_ops": sorted(self.kept_fp32_ops),
            "kept_fp32_tail": TAILS[self.tower],
            "kept_fp32_tail_ops": sorted(self.tail_ops),
            "io_types": "kept (inputs as exported, outputs float32)",
            "casts_inserted": self.casts_inserted,
            "weights_fp16": self.fp16_weights,
            "weights_fp32": self.fp32_weights,
            "weights_flushed_to_zero": self.weights_flushed_to_zero,
            "weights_subnormal_in_fp16": self.weights_subnormal,
            "converter": "clipscan.export.fp16",
        }


def _name_scopes(node) -> list[str] | None:
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            try:
                value = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                return None
            return [str(v) for v in value] if isinstance(value, list) else None
    return None


def tail_node_indices(graph, tower: str = VIT) -> set[int]:
    """Indices of the nodes of the tower's tail (`TAILS`), and of every head, which stay float32.

    A ViT's tail starts after its final LayerNorm (ln_post): the last one inside the tower's
    name scope (the dynamo exporter records module scopes in node metadata), so a head with a
    LayerNorm of its own does not move the boundary; without that metadata, the last LayerNorm of
    the graph. A ModifiedResNet's starts at its attention pool's Softmax, the only one in the tower;
    without the metadata, the first Softmax of the graph (a head's Softmax reads the embedding, so
    it comes after the pool's in the graph's order).
    """
    if tower not in TAILS:
        raise InvalidArgumentError(f"no FP16 tail is defined for a tower of kind {tower!r}; known: {sorted(TAILS)}")
    op = "LayerNormalization" if tower == VIT else "Softmax"
    found = [i for i, n in enumerate(graph.node) if n.op_type == op]
    scoped = [i for i in found if (_name_scopes(graph.node[i]) or ["", ""])[1:2] == ["tower"]]
    if tower == VIT:
        last = (scoped or found or [None])[-1]
    else:
        last = (scoped[-1:] or found[:1] or [None])[0]
    # a head that reads a feature from inside the tower (RINE's ln_2 tap) is not reached from ln_post: the
    # nodes in a head's own scope are tail nodes too
    tail = {i for i, n in enumerate(graph.node) if "".join((_name_scopes(n) or [])[1:2]).startswith("heads.")}
    if last is None:
        return tail
    if tower != VIT:        # the Softmax itself is in the tail (a ViT's final LayerNorm is kept float32 anyway)
        tail.add(last)
    reached = set(graph.node[last].output)
    for i in range(last + 1, len(graph.node)):
        node = graph.node[i]
        if i in tail or any(name in reached for name in node.input):
            tail.add(i)
            reached.update(node.output)
    return tail


def _lift_constants(graph) -> None:
    """Float Constant nodes become initializers, so they are converted like weights."""
    keep = []
    for node in graph.node:
        value = next((a for a in node.attribute if a.name == "value"), None) if node.op_type == "Constant" else None
        if value is not None and len(node.attribute) == 1 and value.t.data_type == FLOAT:
            tensor = copy.deepcopy(value.t)
            tensor.name = node.output[0]
            graph.initializer.append(tensor)
        else:
            keep.append(node)
    del graph.node[:]
    graph.node.extend(keep)


def _unique(base: str, taken: set[str]) -> str:
    name, i = base, 1
    while name in taken:
        name, i = f"{base}_{i}", i + 1
    taken.add(name)
    return name


def convert_to_fp16(model, *, keep_tail_fp32: bool = True, keep_ops=KEEP_FP32_OPS, tower: str = VIT) -> Fp16Conversion:
    """The FP16 variant of an FP32 ONNX model (see the module docstring); the input is not modified.
    `tower`: the image tower's kind (export.tower_kind), which says where its float32 tail starts."""
    from onnx import helper, numpy_helper

    model = copy.deepcopy(model)
    g = model.graph
    for node in g.node:
        for attr in node.attribute:
            if attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
                raise InvalidArgumentError(f"cannot convert {node.op_type} node {node.name!r} to FP16: graphs with "
                                           "subgraphs (If/Loop/Scan) are not supported")
    _lift_constants(g)
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    elem = {v.name: v.type.tensor_type.elem_type
            for v in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)}
    inits = {t.name: t for t in g.initializer}
    elem.update({name: t.data_type for name, t in inits.items()})
    is_float = lambda name: elem.get(name) in (FLOAT, FLOAT16)  # noqa: E731

    taken = {n.name for n in g.node} | set(elem) | {o for n in g.node for o in n.output}
    for node in g.node:
        if not node.name:
            node.name = _unique(f"node_{node.op_type}", taken)
    tail = tail_node_indices(g, tower) if keep_tail_fp32 else set()
    keep_ops = frozenset(keep_ops)

    dtype = {name: elem[name] for name in elem if is_float(name)}  # dtype in the converted graph
    wanted16: set[str] = set()      # initializers some node reads in float16
    wanted32: set[str] = set()      # initializers some node reads in float32
    casts: dict[tuple[str, int], str] = {}
    new_nodes, kept, tail_ops = [], Counter(), Counter()

    def cast(name: str, to: int) -> str:
        key = (name, to)
        if key not in casts:
            out = _unique(f"{name}__to_{'fp16' if to == FLOAT16 else 'fp32'}", taken)
            new_nodes.append(helper.make_node("Cast", [name], [out], name=_unique(f"cast_{out}", taken), to=to))
            dtype[out] = to
            casts[key] = out
        return casts[key]

    for index, node in enumerate(g.node):
        op = node.op_type
        in_tail = index in tail
        if node.domain not in ("", "ai.onnx"):
            raise InvalidArgumentError(f"cannot convert node {node.name!r} of domain {node.domain!r} to FP16")
        if op in SHAPE_OPS:
            new_nodes.append(node)
            continue
        if op == "Cast":
            to = next(a for a in node.attribute if a.name == "to")
            if to.i == FLOAT and not in_tail:
                to.i = FLOAT16
            if to.i in (FLOAT, FLOAT16):
                dtype[node.output[0]] = to.i
            new_nodes.append(node)
            continue
        floats = [i for i, name in enumerate(node.input) if name and is_float(name)]
        if in_tail:
            want = FLOAT
            tail_ops[op] += 1
        elif op in FP16_OPS and op not in keep_ops:
            want = FLOAT16
        elif op in FOLLOW_OPS:
            want = FLOAT16 if any(dtype[node.input[i]] == FLOAT16 or node.input[i] in inits for i in floats) else FLOAT
        else:
            want = FLOAT
            if floats:
                kept[op] += 1
                if op not in keep_ops:
                    log.info("FP16: %s has no float16 rule here; node %s stays float32", op, node.name)
        for i in floats:
            name = node.input[i]
            if name in inits and inits[name].data_type == FLOAT:
                (wanted16 if want == FLOAT16 else wanted32).add(name)
                if want == FLOAT16:
                    node.input[i] = name + SUFFIX16
            elif dtype[name] != want:
                node.input[i] = cast(name, want)
        for name in node.output:
            if name and is_float(name):
                dtype[name] = want
        new_nodes.append(node)

    # weights: float16 copies for the fp16 readers; renamed back when nothing reads the float32 one
    graph_outputs = {o.name for o in g.output}
    flushed = subnormal = 0
    rename: dict[str, str] = {}
    new_inits = []
    for t in g.initializer:
        name = t.name
        if name not in wanted16:
            new_inits.append(t)
            continue
        arr = numpy_helper.to_array(t)
        big = np.isfinite(arr) & (np.abs(arr) > FP16_MAX)
        if big.any():
            raise CheckpointError(f"weight {name!r} has {int(big.sum())} values beyond float16's range "
                                  f"(max |x| = {float(np.abs(arr[big]).max()):.4g} > {FP16_MAX:.0f}); "
                                  "this model cannot be exported as FP16 as it is")
        half = arr.astype(np.float16)
        flushed += int(((arr != 0) & (half == 0)).sum())
        subnormal += int(((half != 0) & (np.abs(half) < np.finfo(np.float16).tiny)).sum())
        keep32 = name in wanted32 or name in graph_outputs
        new_name = name + SUFFIX16 if keep32 else name
        if keep32:
            new_inits.append(t)
        else:
            rename[name + SUFFIX16] = name
        new_inits.append(numpy_helper.from_array(half, new_name))
        dtype[new_name] = FLOAT16
    del g.initializer[:]
    g.initializer.extend(new_inits)
    for node in new_nodes:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]

    # outputs keep float32: a float16 result gets a Cast under the output's own name
    for out in g.output:
        if dtype.get(out.name) == FLOAT16:
            inner = _unique(out.name + SUFFIX16, taken)
            for node in new_nodes:
                node.input[:] = [inner if n == out.name else n for n in node.input]
                node.output[:] = [inner if n == out.name else n for n in node.output]
            new_nodes.append(helper.make_node("Cast", [inner], [out.name], name=_unique(f"cast_{out.name}", taken),
                                              to=FLOAT))
            dtype[inner], dtype[out.name] = FLOAT16, FLOAT
            casts[(inner, FLOAT)] = out.name
    del g.node[:]
    g.node.extend(new_nodes)
    for vi in g.value_info:
        if vi.name in dtype:
            vi.type.tensor_type.elem_type = dtype[vi.name]

    n16 = sum(int(np.prod(t.dims)) for t in g.initializer if t.data_type == FLOAT16)
    n32 = sum(int(np.prod(t.dims)) for t in g.initializer if t.data_type == FLOAT)
    return Fp16Conversion(model=model, kept_fp32_ops=dict(kept), tail_ops=dict(tail_ops), casts_inserted=len(casts),
                          fp16_weights=n16, fp32_weights=n32, weights_flushed_to_zero=flushed,
                          weights_subnormal=subnormal, tower=tower)
