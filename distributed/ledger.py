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

The ledger and shards are files anyone can edit, so `resume` checks they describe exactly such a kill before
it cuts or deletes anything: the bytes past "size" must be the start of shard last+1, a shard at or below
"last" must be shard "last" itself and already end the output, and no shard may lie beyond last+1. Anything
else is refused in one sentence (RowsError) with the output and the state folder untouched.
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
LEDGER_MARK = "clipscan_ray_ledger"


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

    def _refuse(self, why: str) -> RowsError:
        return RowsError(f"{self.state_file} (the ledger of the Ray scan writing {self.output}) {why}; "
                                "nothing was changed: start again with --overwrite")

    def _read_state(self) -> dict | None:
        try:
            text = self.state_file.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise self._refuse(f"cannot be read ({e})") from None
        try:
            data = json.loads(text)
        except (ValueError, RecursionError):
            data = None
        if not isinstance(data, dict) or data.get(LEDGER_MARK) != 1:
            raise self._refuse(f"is not a clipscan Ray-scan ledger (it holds {text[:60]!r})")
        for key in ("size", "last"):
            value = data.get(key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise self._refuse(f"has {key} {value!r} where a count of {'bytes' if key == 'size' else 'blocks'} "
                                   "(an integer >= 0) belongs")
        return data

    def _write_state(self) -> None:
        write_text(self.state_file, json.dumps({LEDGER_MARK: 1, "size": self.size, "last": self.last}))

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
        if state is not None:
            self.size, self.last = state["size"], state["last"]
            self._check_recoverable()      # before anything is created, cut or deleted
        elif self._pending():              # a run writes its ledger before its first shard
            raise self._refuse(f"is missing while {len(self._pending())} committed shard(s) wait in {self.shards}")
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
        self.recover()

    def _check_recoverable(self) -> None:
        """Refuse a ledger that does not describe a kill in the middle of a commit (see the module docstring)."""
        actual = self.output.stat().st_size if self.output.exists() else -1
        if actual < self.size:
            raise RowsError(f"{self.output} holds {max(actual, 0)} bytes, fewer than the {self.size} its Ray "
                            f"scan recorded in {self.state_file}: it was changed since; nothing was changed: "
                            "start again with --overwrite")
        pending = dict(self._pending())
        stray = sorted(seq for seq in pending if seq < self.last or seq > self.last + 1)
        if stray:
            raise self._refuse(f"records {self.last} block(s) appended, but shard(s) {stray[:5]} lie outside the "
                               f"one block a killed commit can leave ({self.last} or {self.last + 1})")
        if self.last in pending:      # recorded as appended: it must be the output's last bytes
            shard = pending[self.last]
            length = shard.stat().st_size
            if length > self.size or self._output_bytes(self.size - length, self.size) != shard.read_bytes():
                raise self._refuse(f"records block {self.last} as appended, but the output does not end with it")
        if actual > self.size:        # a torn append: the extra bytes must be the start of the next shard
            nxt = pending.get(self.last + 1)
            if (nxt is None or nxt.stat().st_size < actual - self.size
                    or not nxt.read_bytes().startswith(self._output_bytes(self.size, actual))):
                raise self._refuse(f"accounts for {self.size} of the output's {actual} bytes, and the other "
                                   f"{actual - self.size} are not the start of the block being committed")

    def _output_bytes(self, start: int, end: int) -> bytes:
        with open(self.output, "rb") as f:
            f.seek(start)
            return f.read(end - start)

    def recover(self) -> None:
        self._check_recoverable()
        actual = self.output.stat().st_size
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
