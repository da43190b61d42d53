"""Expand the paths a user passes into the files to scan.

Files given explicitly are always scanned (a bad one gets an error row), and
folders given explicitly are always walked. Folders are walked recursively in
sorted order; inside them, files whose extension marks an image format of the
registry (runtime/image_formats.py: enabled or not, and camera formats no plugin
reads, so they are reported instead of silently ignored) are scanned and hidden
entries are skipped. A directory found inside a folder whose
name ends like an image ("x.jpg/") is reported, not entered: it is almost always
a broken upload or copy. Directory symlinks are followed once: a loop cannot make
the walk run forever.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Iterable, Iterator

from .image_formats import walk_extensions


def image_extensions() -> frozenset[str]:
    """The extensions a folder walk scans (derived from the image-format registry)."""
    return walk_extensions()


@dataclass
class WalkStats:
    skipped_non_image: int = 0
    skipped_hidden: int = 0
    skipped_loops: list[str] = field(default_factory=list)


def iter_files(paths: Iterable[str | os.PathLike], *, all_files: bool = False,
               stats: WalkStats | None = None) -> Iterator[str]:
    """Yield file paths (as given, joined with walked names) in a stable order."""
    stats = stats if stats is not None else WalkStats()
    exts = None if all_files else image_extensions()
    for p in paths:
        if not isinstance(p, (str, os.PathLike)):
            yield p  # not a path at all: the decoder says so in its row
            continue
        p = os.fspath(p)
        if os.path.isdir(p):
            yield from _walk(p, exts, stats, set())
        else:
            yield p  # missing or odd files are reported by the decoder


def _walk(top: str, exts, stats: WalkStats, seen: set) -> Iterator[str]:
    try:
        st = os.stat(top)
    except OSError:
        yield top
        return
    key = (st.st_dev, st.st_ino)
    if key in seen:
        stats.skipped_loops.append(top)
        return
    seen.add(key)
    try:
        with os.scandir(top) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError:
        yield top  # unreadable folder: the decoder turns it into an error row
        return
    for entry in entries:
        if entry.name.startswith("."):
            stats.skipped_hidden += 1
            continue
        try:
            is_dir = entry.is_dir(follow_symlinks=True)
        except OSError:
            is_dir = False
        ext = os.path.splitext(entry.name)[1].lower()
        if is_dir:
            if ext in image_extensions():
                yield entry.path  # the decoder reports it as a directory
            else:
                yield from _walk(entry.path, exts, stats, seen)
            continue
        if exts is None or ext in exts:
            yield entry.path
        else:
            stats.skipped_non_image += 1
