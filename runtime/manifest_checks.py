"""What a manifest may declare: its limits (one table, also read by the docs) and the typed field checks.

A manifest comes from a file anyone may hand to clipscan, so every size or count in it is bounded
before anything is allocated from it (a resize to 60000x60000 pixels would take tens of GB), every
field has the JSON type the runtime reads, and every string and the whole text have a length cap.
Each refusal is a ManifestError that names the field, the value found and what is accepted.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import ManifestError


@dataclass(frozen=True)
class Limit:
    value: int
    applies_to: str


# The one table of manifest bounds (key -> limit). Generous for every real CLIP model (input sides of
# 224-896 pixels, embeddings of 512-1280, a handful of heads) and small enough that preprocessing one
# image stays within a few hundred MB.
MANIFEST_LIMITS: dict[str, Limit] = {
    "image_side": Limit(4096, "pixels per side of input.size, preprocess.resize.size, preprocess.crop.size "
                              "preprocess.crop.stride and preprocess.graph_crops.size and stride"),
    "windows_per_axis": Limit(16, "preprocess.crop.max_per_axis (sliding crops per axis)"),
    "pixels_per_image": Limit(1 << 24, "model input pixels one image becomes: input height x width, times "
                                       "max_per_axis squared for sliding crops"),
    "graph_crops": Limit(256, "entries of preprocess.graph_crops.origins (crops the graph cuts from one input)"),
    "embedding_dim": Limit(65536, "embedding.dim"),
    "heads": Limit(64, "entries of heads"),
    "labels": Limit(1024, "entries of one head's labels"),
    "opset": Limit(64, "opset"),
    "name_chars": Limit(256, "characters of a name: the model, heads, labels, tensors, tools, sources, "
                             "roles, versions"),
    "text_chars": Limit(65536, "characters of free text (descriptions, created_utc)"),
    "manifest_chars": Limit(4 << 20, "characters of the manifest's JSON text"),
    "json_depth": Limit(32, "nesting of objects and arrays in the manifest"),
}


def limit(key: str) -> int:
    return MANIFEST_LIMITS[key].value


def _over(field: str, value, key: str) -> ManifestError:
    return ManifestError(f"manifest field '{field}' is {value!r}, over clipscan's limit of {limit(key)} "
                         f"({MANIFEST_LIMITS[key].applies_to}); re-export the model within it")


def _type_names(types) -> str:
    names = {"dict": "an object", "list": "an array", "str": "a string", "int": "an integer",
             "float": "a number", "bool": "true or false", "NoneType": "null"}
    return " or ".join(names.get(t.__name__, t.__name__) for t in (types if isinstance(types, tuple) else (types,)))


def _json_name(value) -> str:
    return _type_names(type(value)).removeprefix("an ").removeprefix("a ")


def check_type(value, where: str, types):
    """`value` if it is of `types` (bool is never taken for an int or a number), else a ManifestError."""
    types = types if isinstance(types, tuple) else (types,)
    if not isinstance(value, types) or isinstance(value, bool) and bool not in types:
        shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
        raise ManifestError(f"manifest field '{where}' should be {_type_names(types)}, found "
                            f"{_json_name(value)} {shown}")
    return value


def need(obj, key: str, where: str, types, choices=None):
    """The field `where.key` of the object `obj`, of `types` (and one of `choices` when given)."""
    if not isinstance(obj, dict):
        check_type(obj, where, dict)
    if key not in obj:
        raise ManifestError(f"manifest field '{where}.{key}' is missing")
    value = check_type(obj[key], f"{where}.{key}", types)
    if choices is not None and value not in choices:
        raise ManifestError(f"manifest field '{where}.{key}' is {value!r}; expected one of {list(choices)}")
    if isinstance(value, str):
        text(value, f"{where}.{key}", "name_chars")
    return value


def optional(obj: dict, key: str, where: str, types, default=None):
    """`obj[key]` checked against `types` (null allowed), or `default` when absent or null."""
    value = obj.get(key)
    return default if value is None else check_type(value, f"{where}.{key}", types)


def text(value, where: str, key: str = "text_chars") -> str:
    check_type(value, where, str)
    if len(value) > limit(key):
        raise _over(where, f"{value[:40]}... ({len(value)} characters)", key)
    return value


def bounded(value: int, where: str, key: str, low: int = 1) -> int:
    if value < low:
        raise ManifestError(f"manifest field '{where}' should be >= {low}, found {value}")
    if value > limit(key):
        raise _over(where, value, key)
    return value


def count(items: list, where: str, key: str) -> list:
    """A list of at most the `key` limit entries."""
    if len(items) > limit(key):
        raise ManifestError(f"manifest field '{where}' has {len(items)} entries, over clipscan's limit of {limit(key)} "
                            f"({MANIFEST_LIMITS[key].applies_to}); re-export the model within it")
    return items


def finite(value, where: str) -> float:
    check_type(value, where, (int, float))
    if not math.isfinite(value):
        raise ManifestError(f"manifest field '{where}' should be a finite number, found {value!r}")
    return float(value)


def size(value, where: str) -> tuple[int, int]:
    """[height, width] (or one integer for both) of positive integers within the image_side limit."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value, value]
    if (not isinstance(value, (list, tuple)) or len(value) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)):
        raise ManifestError(f"manifest field '{where}' should be [height, width] of positive integers, found {value!r}")
    if max(value) > limit("image_side"):
        raise _over(where, list(value), "image_side")
    return int(value[0]), int(value[1])


def names(value, where: str) -> dict[str, str]:
    """An object of short strings (tools' versions, a head's role -> graph output)."""
    check_type(value, where, dict)
    for k, v in value.items():
        text(k, f"{where} key", "name_chars")
        text(v, f"{where}.{k}", "name_chars")
    return dict(value)


def objects(value, where: str) -> dict[str, dict]:
    """An object whose every entry is an object (the manifest's sources)."""
    check_type(value, where, dict)
    for k, v in value.items():
        text(k, f"{where} key", "name_chars")
        check_type(v, f"{where}.{k}", dict)
    return dict(value)


def json_depth_ok(tree, where: str = "manifest") -> None:
    """Refuse JSON nested deeper than the json_depth limit (walked without recursion)."""
    stack = [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (dict, list)):
            if depth > limit("json_depth"):
                raise ManifestError(f"the manifest nests objects and arrays deeper than clipscan's limit of "
                                    f"{limit('json_depth')} levels; re-export the model")
            stack.extend((child, depth + 1) for child in (node.values() if isinstance(node, dict) else node))
