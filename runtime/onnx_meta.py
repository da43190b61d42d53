"""Read the top-level fields of an ONNX file, and where its tensors keep external data, without onnx.

`clipscan info` and the manifest check must be fast even for a 1 GB model and must
not need the `onnx` package: the file is memory-mapped and only the ModelProto
fields we need are decoded from the protobuf wire format; the header skips the graph,
and the external-data walk skips every tensor's bytes.
"""
from __future__ import annotations

import mmap
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ModelError

# ModelProto field numbers (onnx/onnx.proto3)
_IR_VERSION, _PRODUCER_NAME, _PRODUCER_VERSION, _OPSET_IMPORT, _METADATA_PROPS = 1, 2, 3, 8, 14
_MODEL_GRAPH, _MODEL_FUNCTIONS = 7, 25
# Where tensors live in a model, as (message kind -> {field number: kind of the message it holds}).
# A "tensor" is a TensorProto: its name is field 8 and its external_data entries field 13.
_HOLDS = {
    "model": {_MODEL_GRAPH: "graph", _MODEL_FUNCTIONS: "function"},
    "function": {7: "node"},
    "graph": {1: "node", 5: "tensor", 15: "sparse"},              # node, initializer, sparse_initializer
    "node": {5: "attribute"},
    "attribute": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"},
    "sparse": {1: "tensor", 2: "tensor"},                          # values, indices
}
_TENSOR_NAME, _TENSOR_EXTERNAL_DATA = 8, 13


@dataclass
class OnnxHeader:
    ir_version: int = 0
    producer_name: str = ""
    producer_version: str = ""
    opsets: dict[str, int] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)


def decode_varint(buf, pos: int) -> tuple[int, int]:
    """(value, position after it) of the protobuf varint at buf[pos]."""
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ModelError("a malformed varint in the ONNX file: it is damaged (or not an ONNX file); export it "
                             "again")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def records(buf, start: int, end: int):
    """(field number, wire type, record start, value start, record end) of every protobuf record in
    buf[start:end]: what a reader (below) and a writer that copies records (evaluation.onnx_write) share."""
    pos = start
    while pos < end:
        first = pos
        key, pos = decode_varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value = pos
            _, pos = decode_varint(buf, pos)
        elif wire == 1:
            value, pos = pos, pos + 8
        elif wire == 2:
            length, value = decode_varint(buf, pos)
            pos = value + length
        elif wire == 5:
            value, pos = pos, pos + 4
        else:
            raise ModelError(f"an unsupported protobuf wire type {wire} in the file: it is damaged, or not an ONNX "
                             "file (a PyTorch checkpoint is turned into one by `clipscan export`)")
        if pos > end:
            raise ModelError("a protobuf record runs past the end of the ONNX file: it is truncated; export it again")
        yield number, wire, first, value, pos


def _fields(buf, start: int, end: int):
    """Yield (field_number, wire_type, value) for one message: varints decoded, bytes fields as (start, end),
    fixed-size fields as None."""
    for number, wire, _, value, stop in records(buf, start, end):
        if wire == 0:
            yield number, wire, decode_varint(buf, value)[0]
        elif wire == 2:
            yield number, wire, (value, stop)
        else:
            yield number, wire, None


def _text(buf, span) -> str:
    return bytes(buf[span[0]:span[1]]).decode("utf-8")


def read_onnx_header(path: str | Path) -> OnnxHeader:
    """Decode ir_version, producer, opsets and metadata_props of an ONNX file."""
    header = OnnxHeader()
    with open(path, "rb") as f:
        if f.seek(0, 2) == 0:
            raise ModelError("the file is empty (0 bytes)")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            for number, wire, value in _fields(buf, 0, len(buf)):
                if number == _IR_VERSION and wire == 0:
                    header.ir_version = value
                elif number == _PRODUCER_NAME and wire == 2:
                    header.producer_name = _text(buf, value)
                elif number == _PRODUCER_VERSION and wire == 2:
                    header.producer_version = _text(buf, value)
                elif number in (_OPSET_IMPORT, _METADATA_PROPS) and wire == 2:
                    pair: dict[int, object] = {}
                    for n, w, v in _fields(buf, *value):
                        pair[n] = _text(buf, v) if w == 2 else v
                    if number == _OPSET_IMPORT:
                        header.opsets[str(pair.get(1, ""))] = int(pair.get(2, 0))
                    else:
                        header.metadata[str(pair.get(1, ""))] = str(pair.get(2, ""))
    return header


def external_data_locations(path: str | Path) -> list[tuple[str, str]]:
    """(tensor name, `location`) of every tensor in the model that keeps its data in another file:
    initializers, sparse initializers and attribute tensors, in the main graph, subgraphs and functions.
    An explicit stack, not recursion, so a deeply nested file cannot exhaust Python's stack."""
    found: list[tuple[str, str]] = []
    with open(path, "rb") as f:
        if f.seek(0, 2) == 0:
            raise ModelError("the file is empty")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            stack = [("model", 0, len(buf))]
            while stack:
                kind, start, end = stack.pop()
                if kind == "tensor":
                    name, locations = "", []   # every `location` entry: a reader may take the first or the last
                    for number, wire, value in _fields(buf, start, end):
                        if number == _TENSOR_NAME and wire == 2:
                            name = _text(buf, value)
                        elif number == _TENSOR_EXTERNAL_DATA and wire == 2:
                            entry = {n: _text(buf, v) for n, w, v in _fields(buf, *value) if w == 2}
                            if entry.get(1) == "location":
                                locations.append(entry.get(2, ""))
                    found += [(name, location) for location in locations]
                    continue
                holds = _HOLDS[kind]
                for number, wire, value in _fields(buf, start, end):
                    if wire == 2 and number in holds:
                        stack.append((holds[number], *value))
    return found
