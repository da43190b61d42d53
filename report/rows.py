"""Read a results file (the JSONL or CSV rows of `clipscan scan`, the service, Triton or Ray) for a report.

Rows keep the scan's keys (path, p_generated, verdict, generator, quality, error_kind, error, backend) and
every head's own answer (JSONL `heads`, CSV `<head>_<field>` columns); other keys are ignored, missing
ones are empty, and a head's field that is not what the scan writes is left empty. A line that is not a row (not JSON, not an object,
no path, a score that is not a number) is skipped and counted with its line number and reason, never fatal;
a file without a single row is an error that says what the file looks like. The model that wrote the rows
is read from the sidecar `<rows>.clipscan.json` when there is one.
"""
from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass, field

from clipscan.runtime.errors import InputNotFoundError, RowsError
from clipscan.runtime.manifest_checks import limit
from clipscan.runtime.results import HEAD_FIELDS, OUTPUT_ERRORS, SIDECAR_SUFFIX, error_kind, read_sidecar, sidecar_path

FIELDS = ("path", "p_generated", "logit", "verdict", "generator", "quality", "error_kind", "error", "backend")
NUMBERS = ("p_generated", "logit", "quality")
MAX_LISTED_PROBLEMS = 20
HEAD_TEXT = ("verdict", "generator")
# every field a head's answer has (results.HEAD_FIELDS), longest first: a CSV column `<head>_<field>`
# is split at the longest field it ends with (`x_p_generated` is head x, not head x_p)
ANSWER_FIELDS = tuple(sorted({f for fs in HEAD_FIELDS.values() for f in fs}, key=len, reverse=True))


@dataclass
class Row:
    path: str
    p_generated: float | None = None
    logit: float | None = None          # orders images where p_generated, at 7 digits, saturates at 1.0
    verdict: str | None = None
    generator: str | None = None
    quality: float | None = None
    error_kind: str | None = None
    error: str | None = None
    backend: str | None = None
    # every head's own answer: {name: {"p_generated", "logit", "verdict", "threshold", "generator"} or {"score"}}
    heads: dict[str, dict] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class RowsFile:
    path: str
    rows: list[Row]
    lines: int                                  # non-blank lines (CSV: data rows) read
    skipped: int = 0                            # lines that were not rows
    problems: list[tuple[int, str]] = field(default_factory=list)  # (line, why) of the first skipped ones
    sidecar: dict | None = None                 # the record of the model that wrote the rows
    sidecar_note: str = ""                      # why there is none, or why it could not be read


class NotARow(RowsError):
    """One line or record is not a clipscan row; its message says why (the line is skipped and counted)."""


def _number(value, name: str):
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise NotARow(f"{name} is {type(value).__name__}, not a number")
    try:
        v = float(value)
    except OverflowError:  # an integer of hundreds of digits
        raise NotARow(f"{name} is an integer of {len(str(value))} digits, not a score") from None
    except ValueError:
        raise NotARow(f"{name} {str(value)[:40]!r} is not a number") from None
    if not math.isfinite(v):
        return None  # the writers write non-finite values as null; treat any that slipped through alike
    if name == "p_generated" and not 0.0 <= v <= 1.0:
        raise NotARow(f"p_generated {v} is not a probability in [0, 1]")
    return v


def to_row(record) -> Row:
    """One row from a decoded JSON object or CSV record; NotARow says why it is not one."""
    try:
        return _to_row(record)
    except RecursionError:  # a field holding JSON nested hundreds deep
        raise NotARow("a field holds JSON nested too deeply") from None


def _text(value):
    if value is None or value == "":
        return None
    if isinstance(value, (dict, list)):
        raise NotARow(f"a text field holds a JSON {'object' if isinstance(value, dict) else 'list'}")
    return str(value)


def _answer(value) -> dict:
    """One head's answer as the report reads it: known fields of the right type, the rest left out."""
    out = {}
    for f, v in (value.items() if isinstance(value, dict) else ()):
        if f in HEAD_TEXT and isinstance(v, (str, int, float)) and not isinstance(v, bool) and v != "":
            out[f] = str(v)
        elif f in ANSWER_FIELDS and f not in HEAD_TEXT:
            try:
                number = _number(v, f)
            except NotARow:
                continue
            if number is not None:
                out[f] = number
    return out


def _heads(record: dict) -> dict[str, dict]:
    """The heads' answers of a JSONL row (`heads`) or a CSV record (`<head>_<field>` columns); at most as
    many heads as a manifest may have."""
    if isinstance(record.get("heads"), dict):
        pairs = [(name, a) for name, a in record["heads"].items() if isinstance(name, str) and name]
    else:
        grouped: dict[str, dict] = {}
        for key, v in record.items():
            if not isinstance(key, str) or key in FIELDS:
                continue
            f = next((f for f in ANSWER_FIELDS if key.endswith("_" + f) and len(key) > len(f) + 1), None)
            if f is not None:
                grouped.setdefault(key[:-len(f) - 1], {})[f] = v
        pairs = list(grouped.items())
    answers = {name: _answer(a) for name, a in pairs[:limit("heads")]}
    return {name: a for name, a in answers.items() if a}  # a failed row's empty CSV cells answer nothing


def _to_row(record) -> Row:
    if not isinstance(record, dict):
        raise NotARow(f"a JSON {type(record).__name__}, not an object")
    path = record.get("path")
    if not isinstance(path, str) or not path:
        raise NotARow("no \"path\" (every clipscan row names its input)")
    row = Row(path=path, **{k: _number(record.get(k), k) for k in NUMBERS},
              **{k: _text(record.get(k)) for k in ("verdict", "generator", "error", "backend")})
    row.error_kind = _text(record.get("error_kind")) or error_kind(row.error)
    row.heads = _heads(record)
    return row


def _jsonl_records(f):
    """JSONL rows, streamed; a line holding a JSON list (the service's `/v1/scan` answer, saved or appended
    one answer per line) gives each of its rows, and so does a whole file that is one indented JSON list."""
    if f.read(4096).lstrip().startswith("["):
        f.seek(0)
        try:
            whole = json.load(f)
        except (ValueError, RecursionError):
            whole = None  # one list per line, or a damaged file: read line by line below
        if isinstance(whole, list):
            for n, record in enumerate(whole, 1):  # an indented list: its items are counted as lines
                yield n, record, None
            return
    f.seek(0)
    for n, line in enumerate(f, 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except RecursionError:
            yield n, None, "JSON nested too deeply to be a row"
            continue
        except ValueError as e:  # not JSON, or an integer of thousands of digits
            yield n, None, f"not JSON ({e.msg if isinstance(e, json.JSONDecodeError) else str(e).split(';')[0]})"
            continue
        for record in value if isinstance(value, list) else [value]:
            yield n, record, None


def _csv_records(f):
    reader = csv.DictReader(f)
    if not reader.fieldnames or "path" not in reader.fieldnames:
        raise RowsError(f"the CSV header is {reader.fieldnames}, without a path column: not clipscan rows")
    for record in reader:
        yield reader.line_num, record, None


def _looks_like_csv(path: str) -> bool:
    if path.lower().endswith(".csv"):
        return True
    with open(path, encoding="utf-8", errors=OUTPUT_ERRORS) as f:
        return f.readline().startswith("path,")


def read_rows(path: str | os.PathLike) -> RowsFile:
    """Every row of a results file, with the lines that were not rows counted (see the module doc)."""
    path = os.fspath(path)
    if path.endswith(SIDECAR_SUFFIX):
        raise RowsError(f"{path} is the record of which model wrote a results file, not the rows; pass the rows "
                        f"file itself ({path[:-len(SIDECAR_SUFFIX)]})")
    if os.path.isdir(path):
        raise RowsError(f"{path} is a folder; pass the JSONL (or CSV) file that `clipscan scan -o` wrote")
    if not os.path.exists(path):
        raise InputNotFoundError(f"rows file {path} does not exist; pass the file that `clipscan scan -o` wrote")
    out = RowsFile(path=path, rows=[], lines=0)
    with open(path, encoding="utf-8", errors=OUTPUT_ERRORS, newline="") as f:
        records = _csv_records(f) if _looks_like_csv(path) else _jsonl_records(f)
        seen = bad = 0  # the last line counted, and the last one counted as skipped (a line may hold a list)
        for n, record, problem in records:
            if n != seen:
                out.lines, seen = out.lines + 1, n
            if problem is None:
                try:
                    out.rows.append(to_row(record))
                    continue
                except NotARow as e:
                    problem = str(e)
            if n == bad:
                continue
            out.skipped, bad = out.skipped + 1, n
            if len(out.problems) < MAX_LISTED_PROBLEMS:
                out.problems.append((n, problem))
    if not out.rows:
        first = f"; line {out.problems[0][0]}: {out.problems[0][1]}" if out.problems else ""
        raise RowsError(f"{path} holds no clipscan rows ({out.lines} non-blank line(s), none a row with a path"
                        f"{first}); pass the JSONL or CSV file that `clipscan scan -o` (or the service) wrote")
    _attach_sidecar(out)
    return out


def _attach_sidecar(out: RowsFile) -> None:
    try:
        out.sidecar = read_sidecar(out.path)
    except ValueError as e:
        out.sidecar_note = str(e)
        return
    if out.sidecar is None:
        out.sidecar_note = (f"no model record ({os.path.basename(sidecar_path(out.path))}) next to the rows: "
                            "rows from the service, Triton or Ray, or a copied file, carry none")
    elif not isinstance(out.sidecar.get("model"), dict):
        out.sidecar, out.sidecar_note = None, f"{sidecar_path(out.path)} names no model"
