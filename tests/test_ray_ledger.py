"""The Ray scan's commit protocol and its usage errors, without starting Ray.

A kill is simulated at every step of a commit (the shard written, the append torn or whole, the ledger
written or not, the shard deleted or not); `Ledger.resume` must then leave every committed block in the
output exactly once. The command's usage errors are one sentence and exit 2, before Ray would start.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from clipscan.distributed import Ledger, state_folder
from clipscan.distributed.cluster import parse_address
from clipscan.runtime.errors import RowsError

HEADER = b"path,p_generated\n"


def block(i: int, n: int = 3) -> bytes:
    return b"".join(f"f{i}_{k}.jpg,0.{i}{k}\n".encode() for k in range(n))


class Killed(Exception):
    pass


def committed(ledger: Ledger, blocks: int) -> None:
    for i in range(blocks):
        ledger.commit(block(i))


@pytest.mark.parametrize("step", ["after_shard", "torn_append", "after_append", "after_state"])
def test_a_kill_at_any_step_of_a_commit_loses_nothing_and_repeats_nothing(tmp_path, monkeypatch, step):
    out = tmp_path / "rows.csv"
    ledger = Ledger(out)
    ledger.start_new(HEADER)
    committed(ledger, 2)
    real_append, real_state = Ledger._append, Ledger._write_state

    def append(self, seq, path):  # the steps of Ledger._append, interrupted where `step` says
        if step == "after_shard":
            raise Killed
        data = path.read_bytes()
        with open(self.output, "ab") as f:
            f.write(data[: len(data) // 2] if step == "torn_append" else data)
        if step in ("torn_append", "after_append"):
            raise Killed
        self.size += len(data)
        self.last = seq
        real_state(self)
        raise Killed  # after_state: the shard is still there

    monkeypatch.setattr(Ledger, "_append", append)
    with pytest.raises(Killed):
        ledger.commit(block(2))
    monkeypatch.setattr(Ledger, "_append", real_append)

    again = Ledger(out)  # a new process: everything from disk
    again.resume()
    assert out.read_bytes() == HEADER + block(0) + block(1) + block(2)
    assert again.recovered_blocks == (0 if step == "after_state" else 1)
    again.commit(block(3))
    again.finish()
    assert out.read_bytes() == HEADER + block(0) + block(1) + block(2) + block(3)
    assert not state_folder(out).exists()


def test_a_kill_while_the_shard_is_written_leaves_no_trace(tmp_path):
    out = tmp_path / "rows.jsonl"
    ledger = Ledger(out)
    ledger.start_new(b"")
    committed(ledger, 1)
    # a temporary shard file that was never renamed: not committed, so not in the output
    (ledger.shards / f".{2:012d}.rows.999.tmp").write_bytes(block(1))
    again = Ledger(out)
    again.resume()
    assert out.read_bytes() == block(0) and again.recovered_blocks == 0


def test_an_output_shorter_than_its_ledger_is_refused(tmp_path):
    out = tmp_path / "rows.jsonl"
    ledger = Ledger(out)
    ledger.start_new(b"")
    committed(ledger, 2)
    out.write_bytes(block(0))
    with pytest.raises(ValueError, match="fewer than the .* start again with --overwrite"):
        Ledger(out).resume()


def test_an_output_of_a_local_scan_is_adopted(tmp_path):
    out = tmp_path / "rows.jsonl"
    out.write_bytes(block(0) + b'{"path": "half')  # a local scan killed mid-line
    ledger = Ledger(out)
    ledger.resume()
    ledger.commit(block(1))
    assert out.read_bytes() == block(0) + block(1)
    assert json.loads((state_folder(out) / "state.json").read_text())["size"] == len(block(0) + block(1))


@pytest.mark.parametrize("text", ["foo", "10.0.0.1", "10.0.0.1:0", "10.0.0.1:99999", "ray://:10001",
                                  "bad host:6379", "http://x:1/"])
def test_bad_ray_addresses_are_refused(text):
    with pytest.raises(ValueError, match="--ray-address"):
        parse_address(text)


@pytest.mark.parametrize("text", ["auto", "127.0.0.1:6379", "ray://head.example.com:10001", "[::1]:6379", "local"])
def test_good_ray_addresses_are_accepted(text):
    parse_address(text)


def _clipscan(args, **kw):
    return subprocess.run([sys.executable, "-m", "clipscan", "scan", *args], check=False, capture_output=True,
                          text=True,
                          timeout=120, **kw)


@pytest.mark.parametrize("args, says", [
    (["--engine", "ray", "--actors", "0", "-o", "{out}"], "argument --actors: 0 is not an integer >= 1"),
    (["--engine", "ray"], "--engine ray needs --output FILE"),
    (["--engine", "ray", "--ray-address", "nowhere", "-o", "{out}"], "is not an address Ray can join"),
    (["--engine", "ray", "--ray-address", "127.0.0.1:1", "-o", "{out}"], "nothing answers at 127.0.0.1:1"),
    (["--engine", "ray", "--with-embedding", "-o", "{csv}"], "CSV output cannot hold embeddings"),
    (["--engine", "ray", "--gpus-per-actor", "-1", "-o", "{out}"], "argument --gpus-per-actor: -1 is not a number >= 0"),
    (["--engine", "ray", "-o", "{missing}"], "does not exist; create it first"),
    (["--actors", "2", "--ray-address", "auto", "-o", "{out}"], "--ray-address, --actors only apply to --engine ray"),
])
def test_usage_errors_are_one_sentence_and_exit_2(tmp_path, args, says):
    from .conftest import SAMPLES

    names = {"out": str(tmp_path / "o.jsonl"), "csv": str(tmp_path / "o.csv"),
             "missing": str(tmp_path / "no" / "o.jsonl")}
    proc = _clipscan([str(SAMPLES), *[a.format(**names) for a in args]])
    assert proc.returncode == 2, proc.stderr
    assert says in proc.stderr and "Traceback" not in proc.stderr
    assert not os.path.exists(names["out"]) and not state_folder(names["out"]).exists()


def test_without_ray_the_engine_names_the_extra(tmp_path):
    from .conftest import blocked_env

    env = blocked_env(tmp_path, ("ray",), "this process simulates an install without clipscan[ray]", "no_ray_site")
    from .conftest import SAMPLES

    proc = _clipscan([str(SAMPLES), "--engine", "ray", "-o", str(tmp_path / "o.jsonl")], env=env)
    assert proc.returncode == 2, proc.stderr
    assert "pip install 'clipscan[ray]'" in proc.stderr and "Traceback" not in proc.stderr


def test_a_backend_that_cannot_run_here_is_refused_before_ray_starts(tmp_path):
    from clipscan.runtime.backends import registry

    from .conftest import SAMPLES

    absent = next((name for name, e in registry().items() if name != "cpu" and e.unavailable_reason()), None)
    if absent is None:
        pytest.skip("every GPU backend can run on this machine: none to refuse")
    out = tmp_path / "o.jsonl"
    proc = _clipscan([str(SAMPLES), "--engine", "ray", "--backend", absent, "-o", str(out)])
    assert proc.returncode == 2 and f"backend {absent!r} was requested but cannot start" in proc.stderr
    assert "Traceback" not in proc.stderr and not out.exists() and not state_folder(out).exists()


def _snapshot(out) -> dict:
    """Every file of the output and its state folder, with its bytes."""
    files = {out: out.read_bytes()} if out.exists() else {}
    folder = state_folder(out)
    if folder.exists():
        files.update({p: p.read_bytes() for p in folder.rglob("*") if p.is_file()})
    return files


def _tampered_runs(tmp_path):
    """(name, output, edit of the ledger folder) for ledgers a resume must refuse."""
    def killed_after_state(out):
        # a run killed after block 2's ledger update: shard 2 is still there, and the output ends with it
        ledger = Ledger(out)
        ledger.start_new(HEADER)
        committed(ledger, 2)
        (ledger.shards / f"{2:012d}.rows").write_bytes(block(1))
        return ledger

    def state(out, text):
        (state_folder(out) / "state.json").write_text(text)

    return [
        ("size_only", lambda out: state(out, '{"size": 0}')),
        ("true", lambda out: state(out, "true")),
        ("size_zero", lambda out: state(out, '{"clipscan_ray_ledger": 1, "size": 0, "last": 2}')),
        ("size_bool", lambda out: state(out, '{"clipscan_ray_ledger": 1, "size": true, "last": 2}')),
        ("last_negative", lambda out: state(out, '{"clipscan_ray_ledger": 1, "size": 5, "last": -1}')),
        ("size_header", lambda out: state(out, '{"clipscan_ray_ledger": 1, "size": %d, "last": 2}' % len(HEADER))),
        ("last_huge", lambda out: state(out, '{"clipscan_ray_ledger": 1, "size": %d, "last": 999999999}'
                                        % out.stat().st_size)),
        ("last_low", lambda out: state(out, '{"clipscan_ray_ledger": 1, "size": %d, "last": 0}'
                                       % out.stat().st_size)),
        ("nested", lambda out: state(out, "[" * 100000 + "]" * 100000)),
        ("not_json", lambda out: state(out, "{size: 3")),
    ], killed_after_state


@pytest.mark.parametrize("case", ["size_only", "true", "size_zero", "size_bool", "last_negative", "size_header",
                                  "last_huge", "last_low", "nested", "not_json"])
def test_a_tampered_ledger_is_refused_and_nothing_is_cut_or_deleted(tmp_path, case):
    out = tmp_path / "rows.csv"
    edits, killed_after_state = _tampered_runs(tmp_path)
    killed_after_state(out)
    dict(edits)[case](out)
    before = _snapshot(out)
    assert len([p for p in before if p.name.endswith(".rows")]) == 1
    with pytest.raises(RowsError) as info:
        Ledger(out).resume()
    message = str(info.value)
    assert "start again with --overwrite" in message and "\n" not in message, message
    assert _snapshot(out) == before, "a refused resume must not change any file"


def test_bytes_past_the_ledger_that_are_not_the_next_block_are_not_cut(tmp_path):
    out = tmp_path / "rows.jsonl"
    ledger = Ledger(out)
    ledger.start_new(b"")
    committed(ledger, 2)
    with open(out, "ab") as f:       # something else appended to the output since: not a torn commit
        f.write(b'{"path": "added by hand"}\n')
    before = _snapshot(out)
    with pytest.raises(RowsError, match="not the start of the block being committed"):
        Ledger(out).resume()
    assert _snapshot(out) == before


def test_the_ray_scan_refuses_a_tampered_ledger_in_one_sentence(tmp_path):
    """Through the command: scan --engine ray --resume with a ledger of `true` exits 2 before Ray starts."""
    out = tmp_path / "rows.csv"
    ledger = Ledger(out)
    ledger.start_new(HEADER)
    committed(ledger, 2)
    (state_folder(out) / "state.json").write_text("true")
    before = _snapshot(out)
    proc = subprocess.run([sys.executable, "-m", "clipscan", "scan", "-q", "--engine", "ray", "--resume", "-o", str(out),
                           str(tmp_path)], capture_output=True, text=True, timeout=300)
    err = proc.stderr.strip()
    assert proc.returncode == 2, err
    errors = [line for line in err.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith("clipscan scan: error: ") and "Traceback" not in err, err
    assert "is not a clipscan Ray-scan ledger (it holds 'true')" in errors[0]
    assert _snapshot(out) == before


def test_shards_without_a_ledger_are_not_appended(tmp_path):
    out = tmp_path / "rows.jsonl"
    ledger = Ledger(out)
    ledger.start_new(b"")
    committed(ledger, 1)
    (state_folder(out) / "state.json").unlink()
    (ledger.shards / f"{7:012d}.rows").write_bytes(b'{"path": "planted"}\n')
    before = _snapshot(out)
    with pytest.raises(RowsError, match="is missing while 1 committed shard"):
        Ledger(out).resume()
    assert _snapshot(out) == before
