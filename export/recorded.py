"""What export records about the PyTorch original (the manifest's `sources.export`), and reading it back.

`clipscan verify`, `calibrate` and `bench` compare an artifact with the PyTorch model it was exported
from. Export writes down what it was given (absolute paths of the checkpoint, the heads, the
architecture file; --resize-mode, --quick-gelu/--gelu, --threshold, --mean, --std), so those commands
need none of it again: `original_from_manifest` fills in every argument a flag did not give from the
record, after checking that each recorded file is still there with the sha256 the manifest records.
A file that moved or changed is one sentence naming the recorded path, its sha256 and the flag to pass.

No torch here (the record is plain data; the runtime's manifest carries it in `sources`).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from clipscan.runtime.artifact import file_sha256
from clipscan.runtime.errors import InputNotFoundError, InvalidArgumentError

log = logging.getLogger("clipscan")

RECORD_KEY = "export"   # manifest.sources[RECORD_KEY]: what export was given


def _absolute(path) -> str:
    return str(Path(path).expanduser().resolve())


def record(arch, weights, heads, *, quick_gelu=None, threshold=None, resize_mode=None, mean=None, std=None,
           weights_format: str = "auto") -> dict:
    """The manifest's `sources.export` for an export of these arguments (heads given as Python modules
    are not files: the record then has no `heads`, and verify needs --heads/--head again)."""
    from .importers import parse_named_head_arg

    items = heads if isinstance(heads, (list, tuple)) else [heads]
    specs: list[dict] | None = []
    for item in items:
        if not isinstance(item, (str, os.PathLike)):
            specs = None
            break
        name, fmt, path = parse_named_head_arg(item)
        specs.append({"name": name, "format": fmt, "path": None if path is None else _absolute(path)})
    arch_file = arch is not None and Path(arch).is_file()
    rec = {"arch": _absolute(arch) if arch_file else arch,
           "weights": _absolute(weights), "weights_format": weights_format, "heads": specs,
           "resize_mode": resize_mode, "quick_gelu": quick_gelu, "threshold": threshold,
           "mean": list(mean) if mean else None, "std": list(std) if std else None}
    if arch_file:
        rec["arch_sha256"] = file_sha256(arch)
    return rec


@dataclass
class Original:
    """The PyTorch original's arguments, each from a flag or from the manifest's record."""
    arch: str | None
    weights: str | None
    heads: list[str]
    resize_mode: str | None = None
    quick_gelu: bool | None = None
    threshold: float | None = None
    mean: list | None = None
    std: list | None = None
    from_manifest: list[str] = field(default_factory=list)   # the flags filled in from the record

    def describe(self) -> str:
        return ", ".join(self.from_manifest)


def _head_spec(h: dict) -> str:
    if h.get("path") is None:                    # a head that reads no file (export.choices.FILELESS_HEAD_FORMATS)
        spec = h["format"]
    else:
        spec = h["path"] if h.get("format") in (None, "clipscan") else f"{h['format']}:{h['path']}"
    return f"{h['name']}={spec}" if h.get("name") else spec


def _check_file(model, what: str, path: str, sha: str | None, flag: str) -> None:
    """A recorded file must still be there with its recorded content: else one sentence and the flag."""
    p = Path(path)
    sha_text = f" (sha256 {sha})" if sha else ""
    if not p.exists():
        raise InputNotFoundError(f"{model} was exported from {what} {path}{sha_text}, which no longer exists: pass "
                                 f"{flag} with the file it was exported from")
    if sha and p.is_file():
        now = file_sha256(p)
        if now != sha:
            raise InvalidArgumentError(f"{model} was exported from {what} {path}{sha_text}, which has changed since "
                                       f"(sha256 now {now}): pass {flag} with the file it was exported from")


def _recorded_heads(model, manifest, rec: dict, prefix: str) -> list[str]:
    heads = rec.get("heads")
    if not heads:
        raise InvalidArgumentError(f"{model} records no head files (exported with heads given as Python modules): "
                                   f"pass {prefix}heads/{prefix}head as given to export")
    files = [h for h in heads if h.get("path") is not None]   # sources.heads, heads_1...: the files only
    for i, h in enumerate(files):
        src = manifest.sources.get("heads" if i == 0 else f"heads_{i}") or {}
        if prefix != "--" or (h.get("format") == "clipscan" and not h.get("name")):
            flag = f"{prefix}heads PATH"
        else:
            flag = "--head " + (f"{h['name']}=" if h.get("name") else "") + f"{h['format']}:PATH"
        if len(heads) > 1:
            flag += " and every other head (heads given replace all the recorded ones)"
        _check_file(model, "heads file", h["path"], src.get("sha256"), flag)
    return [_head_spec(h) for h in heads]


def original_from_manifest(model, manifest, *, arch=None, weights=None, heads=(), resize_mode=None,
                           quick_gelu=None, threshold=None, mean=None, std=None, prefix: str = "--") -> Original:
    """The PyTorch original of the artifact `model` (its `manifest`): every argument given wins, every other one
    comes from the manifest's `sources.export`. The resize mode defaults to the one the artifact runs with.
    `prefix`: how the command's flags start (bench: "--torch-"), for the messages."""
    heads = list(heads or [])
    rec = manifest.sources.get(RECORD_KEY)
    taken: list[str] = []
    if weights is None or not heads or arch is None:
        if not isinstance(rec, dict):
            if weights is None or not heads:
                raise InvalidArgumentError(
                    f"{model} does not record what it was exported from (exported by an older clipscan, or not by "
                    f"`clipscan export`): pass {prefix}weights, {prefix}heads/{prefix}head and {prefix}arch as "
                    "given to export")
            rec = {}
        if weights is None:
            weights = rec["weights"]
            recorded = manifest.sources.get("backbone_weights") or {}
            _check_file(model, "backbone weights", weights, recorded.get("sha256"), f"{prefix}weights PATH")
            taken.append(f"{prefix}weights {weights}")
        if not heads:
            heads = _recorded_heads(model, manifest, rec, prefix)
            taken.append("heads " + " ".join(heads))
        if arch is None and rec.get("arch"):
            arch = rec["arch"]
            if rec.get("arch_sha256"):
                _check_file(model, "architecture config", arch, rec["arch_sha256"], f"{prefix}arch PATH")
            taken.append(f"{prefix}arch {arch}")
    rec = rec if isinstance(rec, dict) else {}
    if resize_mode is None:
        resize_mode = rec.get("resize_mode") or manifest.preprocess.resize_mode
    picked = {}
    for key, value in (("quick_gelu", quick_gelu), ("threshold", threshold), ("mean", mean), ("std", std)):
        picked[key] = value if value is not None else rec.get(key)
        if value is None and rec.get(key) is not None:
            taken.append({True: "--quick-gelu", False: "--gelu"}[rec[key]] if key == "quick_gelu"
                         else f"--{key} {rec[key]}")
    original = Original(arch, str(weights), heads, resize_mode, from_manifest=taken, **picked)
    if taken:
        log.log(25, "the PyTorch original, from the manifest of %s: %s", model, original.describe())
    return original
