"""The labelled files an evaluation runs on: folders of real and generated images, or a CSV/JSONL list.

Label 0 is real (the negative class), 1 generated (the positive class); `generator` names the source of a
generated image (the --generated NAME, or its folder's name), "real" for real images; `mos` is a quality
label (mean opinion score) where one is given. The list is in a fixed order (sorted paths within each
folder, the file's own order for a list), so bootstrap draws and hashes are reproducible.
"""
from __future__ import annotations

import csv
import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from clipscan.runtime.discover import iter_files
from clipscan.runtime.errors import InvalidArgumentError

REAL, GENERATED = 0, 1
REAL_NAME = "real"
LABEL_WORDS = {"0": REAL, "real": REAL, "1": GENERATED, "generated": GENERATED, "fake": GENERATED}
LIST_COLUMNS = ("path", "label", "generator", "mos")


class LabelsError(InvalidArgumentError):
    """A labelled set that cannot be read or is not usable as given."""


@dataclass(frozen=True)
class Item:
    path: str
    label: int | None        # REAL, GENERATED, or None (a file with a MOS label only)
    generator: str | None    # "real" for real images; the generator's name for generated ones
    mos: float | None = None


@dataclass
class LabelledSet:
    items: list[Item]
    source: str              # how the set was given, for the report

    @property
    def paths(self) -> list[str]:
        return [i.path for i in self.items]

    def counts(self) -> dict[str, int]:
        return {"files": len(self.items), "real": sum(i.label == REAL for i in self.items),
                "generated": sum(i.label == GENERATED for i in self.items),
                "with_mos": sum(i.mos is not None for i in self.items)}

    def generators(self) -> list[str]:
        return sorted({i.generator for i in self.items if i.label == GENERATED and i.generator})


def _folder_files(folder: str, flag: str) -> list[str]:
    if not os.path.exists(folder):
        raise LabelsError(f"{flag} {folder} does not exist; pass a folder (walked recursively) or an image file")
    files = sorted(str(p) for p in iter_files([folder]))
    if not files:
        raise LabelsError(f"{flag} {folder} holds no image files (extensions clipscan scans); pass the folder of "
                          "the images themselves")
    return files


def parse_generated(spec: str) -> tuple[str, str]:
    """'NAME=DIR' or 'DIR' (the generator is then the folder's name) -> (name, dir)."""
    name, sep, folder = spec.partition("=")
    if sep and name and not os.path.exists(spec):
        return name, folder
    return Path(spec.rstrip("/\\")).name or spec, spec


def from_folders(real: list[str], generated: list[str]) -> LabelledSet:
    """--real DIR (repeatable) and --generated [NAME=]DIR (repeatable)."""
    if not real and not generated:
        raise LabelsError("no labelled images: pass --real DIR and --generated [NAME=]DIR, or --labels FILE")
    items = [Item(p, REAL, REAL_NAME) for d in real for p in _folder_files(d, "--real")]
    for spec in generated:
        name, folder = parse_generated(spec)
        if name == REAL_NAME:
            raise LabelsError(f"--generated {spec}: the generator name 'real' is kept for real images; name it "
                              "otherwise, e.g. --generated sdxl=DIR")
        items += [Item(p, GENERATED, name) for p in _folder_files(folder, "--generated")]
    seen: dict[str, int] = {}
    for i in items:
        seen[i.path] = seen.get(i.path, 0) + 1
    twice = sorted(p for p, n in seen.items() if n > 1)
    if twice:
        raise LabelsError(f"{len(twice)} file(s) are given more than once (e.g. {twice[0]}): a file has one label; "
                          "pass folders that do not overlap")
    given = [f"--real {d}" for d in real] + [f"--generated {g}" for g in generated]
    return LabelledSet(items, " ".join(given))


def _label(value, where: str) -> int | None:
    if value is None or str(value).strip() == "":
        return None
    word = str(value).strip().lower()
    if word not in LABEL_WORDS:
        raise LabelsError(f"{where}: label {value!r} is not one of {sorted(LABEL_WORDS)} (0/real, 1/generated/fake)")
    return LABEL_WORDS[word]


def _mos(value, where: str) -> float | None:
    if value is None or str(value).strip() == "":
        return None
    try:
        mos = float(value)
    except (TypeError, ValueError):
        raise LabelsError(f"{where}: mos {value!r} is not a number") from None
    if not math.isfinite(mos):
        raise LabelsError(f"{where}: mos {value!r} is not a finite number")
    return mos


def _records(path: Path):
    """(where, dict) for every row of a CSV (with a header naming its columns) or JSONL file."""
    if path.suffix.lower() == ".jsonl":
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise LabelsError(f"{path} line {n} is not JSON ({e})") from None
                if not isinstance(row, dict):
                    raise LabelsError(f"{path} line {n} is not a JSON object with {', '.join(LIST_COLUMNS)}")
                yield f"{path} line {n}", row
        return
    if path.suffix.lower() != ".csv":
        raise LabelsError(f"--labels {path}: expected a .csv or .jsonl file with columns {', '.join(LIST_COLUMNS)}")
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or "path" not in reader.fieldnames:
            raise LabelsError(f"{path}: the first line must name the columns, e.g. 'path,label,generator,mos' "
                              f"(found {reader.fieldnames})")
        for n, row in enumerate(reader, 2):
            yield f"{path} line {n}", row


def from_list(file: str) -> LabelledSet:
    """--labels FILE.csv|FILE.jsonl: path,label[,generator][,mos]; relative paths are relative to the file."""
    path = Path(file)
    if not path.is_file():
        raise LabelsError(f"--labels {file} does not exist; pass a .csv or .jsonl file with columns "
                          f"{', '.join(LIST_COLUMNS)}")
    items, seen = [], set()
    for where, row in _records(path):
        name = row.get("path")
        if not isinstance(name, str) or not name:
            raise LabelsError(f"{where}: no path")
        full = name if os.path.isabs(name) else str(path.parent / name)
        label, mos = _label(row.get("label"), where), _mos(row.get("mos"), where)
        if label is None and mos is None:
            raise LabelsError(f"{where}: neither a label (0/real, 1/generated) nor a mos for {name}")
        generator = str(row.get("generator") or "").strip() or None
        if label == REAL:
            generator = REAL_NAME
        elif label == GENERATED and generator is None:
            generator = "generated"
        if full in seen:
            raise LabelsError(f"{where}: {name} is listed twice; a file has one label")
        seen.add(full)
        items.append(Item(full, label, generator, mos))
    if not items:
        raise LabelsError(f"--labels {file} lists no files")
    return LabelledSet(items, f"--labels {file}")


def content_hash(paths: list[str]) -> str:
    """sha256 over the sorted sha256s of the files' bytes: the same images give the same hash wherever they
    lie and whatever they are called; unreadable files count by their path."""
    digests = []
    for p in paths:
        h = hashlib.sha256()
        try:
            with open(p, "rb") as f:
                while block := f.read(1 << 20):
                    h.update(block)
            digests.append(h.hexdigest())
        except OSError:
            digests.append("unreadable:" + os.path.abspath(p))
    return hashlib.sha256("\n".join(sorted(digests)).encode("utf-8", "surrogateescape")).hexdigest()
