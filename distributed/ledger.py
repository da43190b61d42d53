"""The output of a Ray scan, exactly once: committed shards, a ledger, and appends that can be undone.

Only the driver writes. For every block the actors finish, it
1. writes the block's rows (already formatted by the runtime's writers) to `shards/<seq>.rows` in the
   hidden state folder next to -o, through a temporary file renamed into place (the commit: from then on
   the block is done and never scanned again);
2. appends those bytes to the output and fsyncs it;
3. rewrites `state.json` ({"size": bytes of the output that are accounted for, "last": seq}) by rename;
4. deletes the shard.
A SIGKILL between any two steps leaves a state that `recover` completes: output bytes beyond "size" (a torn
or unrecorded append) are cut off, shards up to "last" are already in the output and are deleted, later
shards are appended in order. So every committed block is in the output once, and nothing else is.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from clipscan.runtime.atomic import replacing, write_text
from clipscan.runtime.errors import RowsError
from clipscan.runtime.results import drop_partial_line

from .defaults import STATE_SUFFIX

SHARD_SUFFIX = ".rows"


def state_folder(output: str | os.PathLike) -> Path:
    """The hidden folder next to `output` that holds a Ray scan's shards and ledger."""
    out = Path(os.path.abspath(output))
    return out.with_name(f".{out.name}{STATE_SUFFIX}")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Ledger:
    """The state folder of one output file (see the module docstring for the protocol)."""

    def __init__(self, output: str | os.PathLike):
        self.output = Path(output)
        self.folder = state_folder(output)
        self.shards = self.folder / "shards"
        self.state_file = self.folder / "state.json"
        self.size = 0
        self.last = 0
        self.recovered_blocks = 0

    # -- state ------------------------------------------------------------------------------------
    def exists(self) -> bool:
        return self.folder.exists()

    def _read_state(self) -> dict | None:
        try:
            data = json.loads(self.state_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise RowsError(f"{self.state_file} (the ledger of the Ray scan writing {self.output}) cannot be "
                            f"read: {e}; start again with --overwrite") from None
        if not (isinstance(data, dict) and isinstance(data.get("size"), int) and isinstance(data.get("last"), int)):
            raise RowsError(f"{self.state_file} is not a clipscan Ray-scan ledger; "  # noqa: TRY004
                            "start again with --overwrite")
        return data

    def _write_state(self) -> None:
        write_text(self.state_file, json.dumps({"clipscan_ray_ledger": 1, "size": self.size, "last": self.last}))

    def _pending(self) -> list[tuple[int, Path]]:
        if not self.shards.is_dir():
            return []
        found = []
        for p in self.shards.iterdir():
            if p.name.endswith(SHARD_SUFFIX) and p.name[:-len(SHARD_SUFFIX)].isdigit():
                found.append((int(p.name[:-len(SHARD_SUFFIX)]), p))
        return sorted(found)

    def has_work(self) -> bool:
        """Whether a previous run left committed shards or a ledger here."""
        return self.state_file.exists() or bool(self._pending())

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    # -- starting ---------------------------------------------------------------------------------
    def start_new(self, header: bytes) -> None:
        """A new output: the header (CSV) or nothing, written whole; then the ledger."""
        self.clear()
        self.shards.mkdir(parents=True)
        with replacing(self.output) as tmp, open(tmp, "wb") as f:
            f.write(header)
            f.flush()
            os.fsync(f.fileno())
        self.size, self.last = len(header), 0
        self._write_state()

    def resume(self) -> None:
        """An existing output: finish what a killed run left (see `recover`), or adopt a file with no ledger
        (one a local scan wrote: its last half-written line is dropped, as the local --resume does)."""
        state = self._read_state()
        self.shards.mkdir(parents=True, exist_ok=True)
        if state is None:
            if self.output.exists():
                drop_partial_line(str(self.output))
            else:
                self.output.touch()
            self.size, self.last = self.output.stat().st_size, 0
            self._write_state()
            self._append_pending(after=0)
            return
        self.size, self.last = state["size"], state["last"]
        self.recover()

    def recover(self) -> None:
        actual = self.output.stat().st_size if self.output.exists() else -1
        if actual < self.size:
            raise RowsError(f"{self.output} holds {max(actual, 0)} bytes, fewer than the {self.size} its Ray scan "
                            f"recorded in {self.state_file}: it was changed since; start again with --overwrite")
        if actual > self.size:  # an append the ledger does not account for: it is redone from its shard
            with open(self.output, "rb+") as f:
                f.truncate(self.size)
                os.fsync(f.fileno())
        self._append_pending(after=self.last)

    def _append_pending(self, after: int) -> None:
        for seq, path in self._pending():
            if seq <= after:
                path.unlink()  # its rows were appended and recorded before the kill
                continue
            self._append(seq, path)
            self.recovered_blocks += 1

    # -- committing -------------------------------------------------------------------------------
    def commit(self, rows: bytes) -> None:
        """Commit one finished block's rows, then append them to the output."""
        seq = self.last + 1
        path = self.shards / f"{seq:012d}{SHARD_SUFFIX}"
        with replacing(path) as tmp, open(tmp, "wb") as f:
            f.write(rows)
            f.flush()
            os.fsync(f.fileno())
        self._append(seq, path)

    def _append(self, seq: int, path: Path) -> None:
        data = path.read_bytes()
        with open(self.output, "ab") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        self.size += len(data)
        self.last = seq
        self._write_state()
        path.unlink()

    def finish(self) -> None:
        """Every input has its row: the state folder goes (the output alone says what is done)."""
        _fsync(self.output)
        self.clear()
