"""A copy of an ONNX file with a new clipscan manifest, without the `onnx` package.

A ModelProto is a sequence of (field number, wire type, value) records whose order does not matter to a
protobuf reader. The copy keeps every top-level record byte for byte (the graph, opsets, producer, other
metadata) except the metadata entry under the manifest key, and appends one new metadata_props entry
(field 14, a StringStringEntryProto {1: key, 2: value}) holding the new manifest. It is written next to
the target and renamed over it only when complete; the source is never written.
"""
from __future__ import annotations

import mmap
import os
from pathlib import Path

from clipscan.runtime.atomic import replacing
from clipscan.runtime.errors import InvalidArgumentError
from clipscan.runtime.manifest import METADATA_KEY
from clipscan.runtime.onnx_meta import records

METADATA_PROPS = 14   # ModelProto.metadata_props (onnx/onnx.proto3)
LENGTH_DELIMITED = 2


def encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _bytes_field(number: int, data: bytes) -> bytes:
    return encode_varint(number << 3 | LENGTH_DELIMITED) + encode_varint(len(data)) + data


def metadata_entry(key: str, value: str) -> bytes:
    entry = _bytes_field(1, key.encode("utf-8")) + _bytes_field(2, value.encode("utf-8"))
    return _bytes_field(METADATA_PROPS, entry)


def _is_manifest(buf, value: int, end: int) -> bool:
    for n, w, _, v, e in records(buf, value, end):
        if n == 1 and w == LENGTH_DELIMITED:
            return bytes(buf[v:e]) == METADATA_KEY.encode("utf-8")
    return False


def write_with_manifest(source: str | os.PathLike, target: str | os.PathLike, manifest_json: str) -> Path:
    """Copy the ONNX file `source` to `target` with `manifest_json` as its clipscan manifest."""
    source, target = Path(source), Path(target)
    if source.resolve() == target.resolve():
        raise InvalidArgumentError(f"the new artifact would overwrite its source {source}; write it to another file")
    with open(source, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf, replacing(target) as tmp:
        with open(tmp, "wb") as out:
            for number, wire, first, value, end in records(buf, 0, len(buf)):
                if number == METADATA_PROPS and wire == LENGTH_DELIMITED and _is_manifest(buf, value, end):
                    continue
                out.write(buf[first:end])
            out.write(metadata_entry(METADATA_KEY, manifest_json))
    return target
