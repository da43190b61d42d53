"""Protocol-buffer text format (what Triton's `config.pbtxt` is) written from plain Python values.

A config is a dict: each key a field name, each value a number, a string, `Enum("KIND_GPU")`, a
nested dict (a message), or a list (a repeated field: numbers and strings inline, messages as one
block each). Map fields (`parameters`, `input_map`, `cc_model_filenames`) are dicts wrapped in
`Map(...)`: each entry becomes `{ key: ... value: ... }`, as the text format spells maps.
The tests parse every generated file with Triton's own schema (tritonclient's model_config_pb2).
"""
from __future__ import annotations

import json
from dataclasses import dataclass


@dataclass(frozen=True)
class Enum:
    """An enum value, written bare (KIND_GPU, TYPE_FP32), not as a string."""
    name: str


@dataclass(frozen=True)
class Map:
    """A protobuf map field: {key: value}, value a scalar or a message (dict)."""
    entries: dict


def _scalar(value) -> str:
    if isinstance(value, Enum):
        return value.name
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid text-format string (escapes included)
    # clipscan builds every config itself: another type here is a bug in clipscan, not a user mistake
    raise TypeError(f"cannot write {type(value).__name__} {value!r} in a pbtxt config")


def _is_message(value) -> bool:
    return isinstance(value, (dict, Map))


def _lines(message: dict, indent: int) -> list[str]:
    pad = "  " * indent
    out: list[str] = []
    for key, value in message.items():
        if value is None:
            continue
        if isinstance(value, Map):
            for k, v in value.entries.items():
                entry = {"key": k, "value": v}
                out += [f"{pad}{key} {{", *_lines(entry, indent + 1), f"{pad}}}"]
        elif isinstance(value, dict):
            out += [f"{pad}{key} {{", *_lines(value, indent + 1), f"{pad}}}"]
        elif isinstance(value, (list, tuple)):
            if value and all(_is_message(v) for v in value):
                out.append(f"{pad}{key} [")
                for i, v in enumerate(value):
                    out += [f"{pad}  {{", *_lines(v, indent + 2), f"{pad}  }}{',' if i < len(value) - 1 else ''}"]
                out.append(f"{pad}]")
            else:
                out.append(f"{pad}{key}: [ {', '.join(_scalar(v) for v in value)} ]")
        else:
            out.append(f"{pad}{key}: {_scalar(value)}")
    return out


def to_pbtxt(config: dict) -> str:
    """The text-format form of `config` (a ModelConfig as a dict), ending with a newline."""
    return "\n".join(_lines(config, 0)) + "\n"
