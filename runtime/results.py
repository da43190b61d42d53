"""Scan results and the writers that stream them (JSONL, CSV), one flushed line per input."""
from __future__ import annotations

import csv
import json
import math
import os
import re
from dataclasses import dataclass, field
from typing import IO, Any

import numpy as np

from .errors import InvalidArgumentError, RowsError

# `logit` is the decision head's logit (p_generated = sigmoid(logit), in float64): it orders images
# exactly where p_generated, written with 7 significant digits, saturates at 1.0 (logit above ~16)
COLUMNS = ("path", "p_generated", "logit", "verdict", "quality", "error_kind", "error", "backend")
ATTRIBUTION_COLUMNS = ("path", "p_generated", "logit", "verdict", "generator", "quality", "error_kind", "error",
                       "backend")
# Floats are written with 7 significant digits: float32, which every model output is, holds about 7.2
# decimal digits, so more digits are noise (a 512-d embedding row shrinks from ~11 KB to ~6 KB).
FLOAT_DIGITS = 7
_KIND = re.compile(r"^([a-z_]+):")


def round_float(v):
    """A float rounded to FLOAT_DIGITS significant digits (None, NaN and inf become None)."""
    if v is None:
        return None
    v = float(v)
    return float(f"{v:.{FLOAT_DIGITS}g}") if math.isfinite(v) else None


def error_kind(error: str | None) -> str | None:
    """The stable code an error message starts with ("truncated: ..." -> "truncated"); "error" when it has none."""
    if not error:
        return None
    m = _KIND.match(error)
    return m.group(1) if m else "error"


# what each head answers (ScanResult.heads[name]); CSV has one column per head field, `<head>_<field>`
# a decision head's answer states the threshold it was decided at (the manifest's, or --threshold's)
HEAD_FIELDS = {"detection": ("p_generated", "logit", "verdict", "threshold"),
               "attribution": ("p_generated", "logit", "verdict", "threshold", "generator"),
               "quality": ("score",)}


def columns_for(manifest, fmt: str = "jsonl") -> tuple[str, ...]:
    """Row columns for a model: a generator column only for models that attribute generators; then every
    head's own answer: a nested `heads` object in JSONL, `<head>_<field>` columns in CSV."""
    base = ATTRIBUTION_COLUMNS if any(h.task == "attribution" for h in manifest.heads) else COLUMNS
    if fmt == "csv":
        return base + tuple(f"{h.name}_{f}" for h in manifest.heads for f in HEAD_FIELDS.get(h.task, ()))
    return base + ("heads",)


@dataclass
class ScanResult:
    path: str
    p_generated: float | None = None
    verdict: str | None = None
    quality: float | None = None
    error: str | None = None
    logit: float | None = None
    generator: str | None = None          # models with an attribution head: postprocess.row_generator
    backend: str | None = None
    embedding: np.ndarray | None = field(default=None, repr=False)
    # every head's own answer: {name: {"p_generated", "logit", "verdict", "threshold"[, "generator"]} or {"score"}}
    heads: dict[str, dict[str, Any]] | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def error_kind(self) -> str | None:
        """The stable code an error message starts with (`truncated`, `corrupt`, `not_found`, ...)."""
        return error_kind(self.error)

    def to_row(self, *, with_embedding: bool = False, columns: tuple[str, ...] = COLUMNS) -> dict[str, Any]:
        """The row as written: floats rounded to FLOAT_DIGITS significant digits."""
        row: dict[str, Any] = {}
        flat = None
        for k in columns:
            if k == "heads":
                row[k] = None if self.heads is None else {
                    name: {f: round_float(v) if isinstance(v, (float, np.floating)) else v for f, v in a.items()}
                    for name, a in self.heads.items()}
                continue
            if hasattr(self, k):
                v = getattr(self, k)
            else:  # a CSV head column, <head>_<field>
                if flat is None:
                    flat = {f"{name}_{f}": v for name, a in (self.heads or {}).items() for f, v in a.items()}
                v = flat.get(k)
            row[k] = round_float(v) if isinstance(v, (float, np.floating)) else v
        if with_embedding:
            row["embedding"] = None if self.embedding is None else [round_float(v) for v in self.embedding]
        return row


# File names need not be valid UTF-8 (Python maps the bad bytes to lone surrogates).
# JSONL escapes such a row to ASCII (json.loads gives the same str back, os.fsencode
# the original bytes); files are opened with errors="surrogateescape" so CSV and
# resumed files round-trip the raw name.
OUTPUT_ERRORS = "surrogateescape"


def _finite(v):
    return v if v is None or not isinstance(v, float) or math.isfinite(v) else None


def _has_surrogates(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


class JsonlWriter:
    def __init__(self, stream: IO[str], *, with_embedding: bool = False, header: bool = True,
                 columns: tuple[str, ...] = COLUMNS):
        self.stream, self.with_embedding, self.columns = stream, with_embedding, columns

    def write(self, result: ScanResult) -> None:
        row = {k: _finite(v) for k, v in result.to_row(with_embedding=self.with_embedding, columns=self.columns).items()}
        ascii_only = _has_surrogates(result.path) or bool(result.error and _has_surrogates(result.error))
        self.stream.write(json.dumps(row, ensure_ascii=ascii_only) + "\n")
        self.stream.flush()


def check_output_format(fmt: str, with_embedding: bool) -> None:
    """Refuse a format that cannot hold what was asked for: a command calls this before it creates its output."""
    if with_embedding and fmt == "csv":
        raise InvalidArgumentError("CSV output cannot hold embeddings; use --format jsonl with --with-embedding")


class CsvWriter:
    def __init__(self, stream: IO[str], *, with_embedding: bool = False, header: bool = True,
                 columns: tuple[str, ...] = COLUMNS):
        check_output_format("csv", with_embedding)
        self.stream, self.columns = stream, columns
        self._writer = csv.DictWriter(stream, fieldnames=list(columns), lineterminator="\n", extrasaction="ignore")
        if header:  # not when appending to a resumed file
            self._writer.writeheader()
            stream.flush()

    def write(self, result: ScanResult) -> None:
        row = {k: ("" if v is None else v) for k, v in result.to_row(columns=self.columns).items()}
        self._writer.writerow(row)
        self.stream.flush()


WRITERS = {"jsonl": JsonlWriter, "csv": CsvWriter}


def drop_partial_line(path: str) -> int:
    """Cut a last line that a killed scan left half-written; returns the bytes removed."""
    with open(path, "rb+") as f:
        size = f.seek(0, 2)
        if size == 0:
            return 0
        f.seek(max(0, size - 1))
        if f.read(1) == b"\n":
            return 0
        # scan back for the last newline
        pos = size
        while pos > 0:
            step = min(65536, pos)
            f.seek(pos - step)
            chunk = f.read(step)
            i = chunk.rfind(b"\n")
            if i >= 0:
                keep = pos - step + i + 1
                break
            pos -= step
        else:
            keep = 0
        f.truncate(keep)
        return size - keep


def csv_columns(path: str) -> tuple[str, ...] | None:
    """The header of an existing clipscan CSV (a resumed file keeps the columns it was started with)."""
    with open(path, encoding="utf-8", errors=OUTPUT_ERRORS, newline="") as f:
        header = next(csv.reader(f), None)
    return tuple(header) if header and header[0] == "path" else None


def _complete_lines(f):
    """The lines of a results file that end with a newline: a half-written last line is not a row yet."""
    for line in f:
        if line.endswith("\n"):
            yield line


def completed_paths(path: str, fmt: str) -> set[str]:
    """Paths that already have a row in a results file (any row: result or error).

    Every complete line is read and checked first (RowsError, the file untouched, when one cannot be
    read); only then is a half-written last line removed, so that appending goes on cleanly.
    """
    done: set[str] = set()
    fix = "the file is left as it was: resume with the --format it was written in, or write to a new file (-o)"
    with open(path, encoding="utf-8", errors=OUTPUT_ERRORS, newline="") as f:
        if fmt == "csv":
            rows = csv.DictReader(_complete_lines(f))
            try:
                if rows.fieldnames and "path" not in rows.fieldnames:
                    raise RowsError(f"{path} is not a clipscan CSV (its header is {rows.fieldnames}); {fix}")
                done.update(r["path"] for r in rows if isinstance(r.get("path"), str) and r["path"])
            except csv.Error as e:
                raise RowsError(f"{path} line {rows.line_num} is not a CSV row clipscan can read ({e}); "
                                f"{fix}") from None
        else:
            for n, line in enumerate(_complete_lines(f), 1):
                try:
                    row = json.loads(line)
                except RecursionError:
                    raise RowsError(f"{path} line {n} is JSON nested too deeply to be a clipscan row; "
                                    f"{fix}") from None
                except ValueError as e:  # not JSON, or an integer of thousands of digits
                    why = e.msg if isinstance(e, json.JSONDecodeError) else str(e).split(";")[0]
                    raise RowsError(f"{path} line {n} is not a clipscan JSONL row ({why}); {fix}") from None
                if isinstance(row, dict) and isinstance(row.get("path"), str):
                    done.add(row["path"])
    drop_partial_line(path)
    return done


# -- which model wrote a results file ------------------------------------------------------------
# Rows stay plain (one per input, nothing else), so a results file is read by any JSONL/CSV reader;
# the model that wrote them is recorded once, in a sidecar next to the file: <output>.clipscan.json.

SIDECAR_SUFFIX = ".clipscan.json"


def sidecar_path(output: str | os.PathLike) -> str:
    return os.fspath(output) + SIDECAR_SUFFIX


def model_identity(artifact) -> dict:
    from .failed_gates import fidelity_label

    m = artifact.manifest
    identity = {"name": m.name, "sha256": artifact.sha256(), "precision": m.precision, "file": artifact.path.name}
    if fidelity_label(m):   # an INT8 model whose fidelity gates failed says so wherever its identity goes
        identity["fidelity"] = fidelity_label(m)
    return identity


def write_sidecar(output: str | os.PathLike, identity: dict, fmt: str, settings: dict | None = None) -> None:
    """Record which model wrote `output`, and with which row settings (runtime.resume.row_settings),
    atomically: a temp file renamed over the sidecar."""
    from clipscan.version import __version__

    from .atomic import write_text

    record = {"clipscan_results": 1, "format": fmt, "model": identity, "clipscan": __version__}
    if settings is not None:
        record["settings"] = settings
    write_text(sidecar_path(output), json.dumps(record, indent=1))


def read_sidecar(output: str | os.PathLike) -> dict | None:
    try:
        with open(sidecar_path(output), encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, RecursionError) as e:  # ValueError: not JSON, or an integer of 4,300+ digits
        why = "JSON nested too deeply" if isinstance(e, RecursionError) else str(e).split(";")[0]
        raise RowsError(f"{sidecar_path(output)} (the record of which model wrote {output}) cannot be "
                        f"read: {why}; delete it to resume anyway") from None
    return data if isinstance(data, dict) else None
