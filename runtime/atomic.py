"""Files that appear whole or not at all: write next to the target, rename over it only when complete.

Every artifact and report clipscan writes goes through `replacing`, so an interrupted command (Ctrl-C, a
crash, a full disk) leaves the previous file, or nothing, at the path the user asked for.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def replacing(path: str | os.PathLike):
    """Yield a hidden temporary path in the target's folder; on success it is renamed to `path`,
    on any error (KeyboardInterrupt included) it is removed and `path` is left as it was."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | os.PathLike, text: str) -> Path:
    with replacing(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)
