"""The Open Inference Protocol's (KServe v2) HTTP body, both ways: JSON tensors and the binary tensor
data extension. The server (`clipscan serve`) and the client (`clipscan scan --server`) both use it.

A message is a JSON header, optionally followed by raw tensor bytes; the header's length is then
given by the `Inference-Header-Content-Length` HTTP header, and each binary tensor's entry carries
`parameters.binary_data_size`, in order. A BYTES element, in binary form, is a little-endian uint32
length followed by that many bytes. Malformed messages raise WireError saying what is wrong.
"""
from __future__ import annotations

import json
import math
import struct

import numpy as np

from .contract import DATATYPES, NUMPY_DTYPES
from .errors import InvalidArgumentError

HEADER_LENGTH = "Inference-Header-Content-Length"
MAX_RANK = 32  # numpy's limit on an array's dimensions


class WireError(InvalidArgumentError):
    """A request or response body that does not follow the protocol (a client's mistake: HTTP 400)."""


class WireTooLarge(WireError):
    """A tensor whose declared shape holds more elements than the reader accepts (HTTP 413)."""


def encode_bytes_elements(elements) -> bytes:
    parts = []
    for e in elements:
        b = e.encode("utf-8") if isinstance(e, str) else bytes(e)
        parts += [struct.pack("<I", len(b)), b]
    return b"".join(parts)


def decode_bytes_elements(buf: memoryview | bytes, where: str, count: int | None = None) -> list[bytes]:
    """The elements of binary BYTES data; with `count`, more than `count` elements is an error (found after
    element count + 1, not after reading them all)."""
    buf = memoryview(buf)
    out, i = [], 0
    while i < len(buf):
        if count is not None and len(out) == count:
            raise WireError(f"{where}: the binary BYTES data holds more than the {count} elements its shape says")
        if i + 4 > len(buf):
            raise WireError(f"{where}: BYTES data ends inside an element's 4-byte length")
        (n,) = struct.unpack_from("<I", buf, i)
        i += 4
        if i + n > len(buf):
            raise WireError(f"{where}: a BYTES element says {n} bytes but only {len(buf) - i} follow")
        out.append(bytes(buf[i:i + n]))
        i += n
    return out


def _count(shape) -> int:
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in shape):
        raise WireError(f"shape must be a list of non-negative integers, got {shape!r:.80}")
    if len(shape) > MAX_RANK:
        raise WireError(f"shape has {len(shape)} dimensions; a tensor has at most {MAX_RANK}")
    return math.prod(shape)  # Python ints: no wrap-around


def _flatten(data, depth: int, where: str) -> list:
    """`data` as a flat list; nested at most `depth` lists deep (the tensor's rank)."""
    if not isinstance(data, list):
        return [data]
    out, stack = [], [(iter(data), 1)]
    while stack:
        items, level = stack[-1]
        for d in items:
            if isinstance(d, list):
                if level >= max(depth, 1):
                    raise WireError(f"{where}: data is nested deeper than its shape's {depth} dimensions")
                stack.append((iter(d), level + 1))
                break
            out.append(d)
        else:
            stack.pop()
    return out


def tensor_from_entry(entry: dict, raw: memoryview | None, max_elements: int | None = None) -> np.ndarray:
    """One tensor from its header entry (name, shape, datatype, data) and its binary part, if any; a shape of
    more than `max_elements` elements is refused (WireTooLarge) before its data is read."""
    if not isinstance(entry, dict):
        raise WireError(f"each tensor must be a JSON object, got {type(entry).__name__}")
    name = entry.get("name")
    where = f"tensor {name!r}"
    if not isinstance(name, str):
        raise WireError("a tensor has no 'name'")
    datatype, shape = entry.get("datatype"), entry.get("shape")
    if not isinstance(datatype, str):
        raise WireError(f"{where} has no 'datatype' string (got {datatype!r:.40})")
    n = _count(shape)
    if max_elements is not None and n > max_elements:
        raise WireTooLarge(f"{where} has shape {shape}: {n} elements, over the {max_elements} accepted")
    if datatype == "BYTES":
        if raw is not None:
            elements = decode_bytes_elements(raw, where, n)
        else:
            data = entry.get("data")
            if data is None:
                raise WireError(f"{where} has neither 'data' nor parameters.binary_data_size")
            elements = [d.encode("utf-8") if isinstance(d, str) else d for d in _flatten(data, len(shape), where)]
            if not all(isinstance(e, bytes) for e in elements):
                raise WireError(f"{where}: BYTES data in JSON must be strings")
        if len(elements) != n:
            raise WireError(f"{where} has shape {shape} ({n} elements) but {len(elements)} elements of data")
        arr = np.empty(n, dtype=object)
        arr[:] = elements
        return arr.reshape(shape)
    if datatype not in NUMPY_DTYPES:
        raise WireError(f"{where} has datatype {datatype!r}; expected BYTES or one of {sorted(NUMPY_DTYPES)}")
    dtype = np.dtype(NUMPY_DTYPES[datatype])
    if raw is not None:
        if len(raw) != n * dtype.itemsize:
            raise WireError(f"{where} has shape {shape} and datatype {datatype} ({n * dtype.itemsize} bytes) "
                            f"but {len(raw)} bytes of binary data")
        return np.frombuffer(raw, dtype.newbyteorder("<")).astype(dtype, copy=False).reshape(shape)
    data = entry.get("data")
    if data is None:
        raise WireError(f"{where} has neither 'data' nor parameters.binary_data_size")
    flat = _flatten(data, len(shape), where)
    if len(flat) != n:
        raise WireError(f"{where} has shape {shape} ({n} elements) but {len(flat)} values of data")
    try:
        return np.asarray(flat, dtype=dtype).reshape(shape)
    except (TypeError, ValueError) as e:
        raise WireError(f"{where}: data is not {datatype}: {e}") from None


def decode_message(body: bytes, header_length: int | None, key: str, max_elements: int | None = None
                   ) -> tuple[dict, dict[str, np.ndarray]]:
    """(header, {name: array}) of a request (key "inputs") or response (key "outputs") body; a tensor of more
    than `max_elements` elements is refused from its declared shape (WireTooLarge)."""
    body = memoryview(body)
    if header_length is None:
        header_length = len(body)
    if not 0 <= header_length <= len(body):
        raise WireError(f"{HEADER_LENGTH} is {header_length} but the body has {len(body)} bytes")
    try:
        header = json.loads(bytes(body[:header_length]))
    except RecursionError:
        raise WireError("the JSON header is not valid JSON: it is nested too deeply") from None
    except ValueError as e:  # JSONDecodeError, bad UTF-8, an integer of more digits than Python converts
        raise WireError(f"the JSON header is not valid JSON: {e}") from None
    if not isinstance(header, dict):
        raise WireError(f"the JSON header must be an object, got {type(header).__name__}")
    entries = header.get(key)
    if not isinstance(entries, list):
        raise WireError(f"the JSON header has no '{key}' list")
    tensors, offset = {}, header_length
    for entry in entries:
        params = entry.get("parameters") if isinstance(entry, dict) else None
        params = {} if params is None else params
        if not isinstance(params, dict):
            raise WireError(f"tensor {entry.get('name')!r}: 'parameters' must be an object, got {params!r:.40}")
        size = params.get("binary_data_size")
        raw = None
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0 or offset + size > len(body):
                raise WireError(f"tensor {entry.get('name')!r}: binary_data_size {size!r} runs past the body's "
                                f"{len(body) - offset} remaining bytes")
            raw, offset = body[offset:offset + size], offset + size
        if isinstance(entry, dict) and isinstance(entry.get("name"), str) and entry["name"] in tensors:
            raise WireError(f"tensor {entry['name']!r} appears more than once in '{key}'")
        arr = tensor_from_entry(entry, raw, max_elements)
        tensors[entry["name"]] = arr
    if offset != len(body):
        raise WireError(f"{len(body) - offset} bytes follow the last binary tensor")
    return header, tensors


def tensor_bytes(arr: np.ndarray, datatype: str) -> bytes:
    """A tensor's raw bytes as the protocol sends them: the binary tensor extension's data over HTTP, and
    `raw_input_contents` / `raw_output_contents` over gRPC (BYTES: length-prefixed elements; numbers
    little-endian, row-major)."""
    if datatype == "BYTES":
        return encode_bytes_elements(arr.reshape(-1))
    flat = np.ascontiguousarray(arr.reshape(-1))
    return flat.astype(flat.dtype.newbyteorder("<"), copy=False).tobytes()


def entry_for(name: str, arr: np.ndarray, datatype: str | None = None) -> dict:
    if datatype is None:
        datatype = "BYTES" if arr.dtype == object else DATATYPES[arr.dtype.name]
    return {"name": name, "datatype": datatype, "shape": list(arr.shape)}


def encode_message(header: dict, key: str, tensors: list[tuple[dict, np.ndarray]], binary: set[str] | bool
                   ) -> tuple[bytes, int | None]:
    """(body, header_length): `header` with `key` set to the tensors' entries; tensors named in `binary`
    (or all, when True) go as binary data after the JSON header. header_length is None when none does."""
    entries, parts = [], []
    for entry, arr in tensors:
        entry = dict(entry)
        is_binary = binary is True or (binary and entry["name"] in binary)
        raw = tensor_bytes(arr, entry["datatype"]) if is_binary else None
        if not is_binary and entry["datatype"] == "BYTES":
            entry["data"] = [bytes(e).decode("utf-8", "surrogateescape") for e in arr.reshape(-1)]
        elif not is_binary:
            entry["data"] = [None if isinstance(v, float) and math.isnan(v) else v for v in arr.reshape(-1).tolist()]
        if raw is not None:
            entry["parameters"] = {**entry.get("parameters", {}), "binary_data_size": len(raw)}
            parts.append(raw)
        entries.append(entry)
    head = json.dumps({**header, key: entries}, separators=(",", ":")).encode("utf-8")
    if not parts:
        return head, None
    return head + b"".join(parts), len(head)
