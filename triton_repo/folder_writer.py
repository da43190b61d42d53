"""Model folders of a Triton repository written under temporary names and renamed into place only when all
are complete; a folder that already holds exactly what would be written is kept as it is (reused).

Rewriting the repository of the same model with the same settings (`clipscan triton`, then `clipscan triton
--start` on it) copies nothing: the big files (the artifact, TensorRT plans) are hard-linked from the folder
in place when their bytes are the same, and when every file then equals the one in place, the folder in
place stays and the temporary one goes. A folder of another model, or of the same model with other settings,
is replaced only with --overwrite.
"""
from __future__ import annotations

import filecmp
import os
import shutil
from pathlib import Path

from clipscan.runtime.artifact import file_sha256
from clipscan.runtime.errors import InvalidArgumentError

from .pbtxt import to_pbtxt


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def same_tree(a: Path, b: Path) -> bool:
    """Whether folders `a` and `b` hold the same files with the same bytes (a hard link counts as the same)."""
    names = _files(a)
    if names != _files(b):
        return False
    return all(os.path.samefile(a / n, b / n) or filecmp.cmp(a / n, b / n, shallow=False) for n in names)


class FolderWriter:
    """Writes the model folders of one repository; `commit` puts them in place, `abort` removes them."""

    def __init__(self, root: Path, overwrite: bool, sha256: str):
        self.root, self.overwrite, self.sha256 = root, overwrite, sha256
        self.pending: list[tuple[Path, Path]] = []
        self.reused = False

    def folder(self, name: str) -> Path:
        final = self.root / name
        if final.exists() and not self.overwrite and not self._of_this_model(final):
            raise InvalidArgumentError(f"{final} already exists (for another model); pass --overwrite to replace "
                                       "it, or choose another --name or --repo")
        tmp = self.root / f".{name}.{os.getpid()}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "1").mkdir(parents=True)
        self.pending.append((tmp, final))
        return tmp

    def _of_this_model(self, final: Path) -> bool:
        """The folder's config.pbtxt records this artifact's sha256 (clipscan triton wrote it for this model)."""
        try:
            return self.sha256 in (final / "config.pbtxt").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return False

    def copy(self, source: Path, target: Path, sha256: str | None = None) -> None:
        """Put `source` at `target` (inside a folder of this writer): a hard link to the same file in the
        folder in place when it has the same bytes (nothing copied), else a copy."""
        final = next((f / target.relative_to(t) for t, f in self.pending if target.is_relative_to(t)), None)
        if final is not None and final.is_file() and final.stat().st_size == source.stat().st_size \
                and file_sha256(final) == (sha256 or file_sha256(source)):
            try:
                os.link(final, target)
                return
            except OSError:  # a file system without hard links: copy
                pass
        shutil.copy2(source, target)

    def config(self, folder: Path, config: dict) -> None:
        (folder / "config.pbtxt").write_text(to_pbtxt(config), encoding="utf-8")

    def commit(self) -> list[Path]:
        """Put every folder in place; one in place that holds the same files is kept (`reused`). A folder in
        place that differs is replaced only with --overwrite: otherwise nothing is changed."""
        same = {final for tmp, final in self.pending if final.exists() and same_tree(tmp, final)}
        differ = [final for _, final in self.pending if final.exists() and final not in same]
        if differ and not self.overwrite:
            raise InvalidArgumentError(f"{differ[0]} already exists for this model with other settings (its files "
                                       "differ from what these options write); pass --overwrite to replace it, or "
                                       "choose another --name or --repo")
        for tmp, final in self.pending:
            if final in same:
                shutil.rmtree(tmp)
                continue
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        self.reused = len(same) == len(self.pending)
        return [final / "config.pbtxt" for _, final in self.pending]

    def abort(self) -> None:
        for tmp, _ in self.pending:
            shutil.rmtree(tmp, ignore_errors=True)
