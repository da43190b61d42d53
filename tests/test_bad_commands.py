"""A battery of mistaken commands, run as a user runs them (the installed `clipscan` entry point, in a
subprocess): each ends with the documented exit code, one `clipscan ...: error:` sentence (or argparse's
usage message) on stderr, no traceback, and nothing written where a result would have gone."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO

SAMPLES = str(REPO / "samples")


def _setup(tmp: Path) -> dict:
    (tmp / "rows").mkdir()
    (tmp / "text.onnx").write_text("this is not a model\n")
    (tmp / "random.onnx").write_bytes(os.urandom(4096))
    (tmp / "empty").mkdir()
    (tmp / "list.txt").write_text(f"{tmp / 'nowhere.jpg'}\n")
    import zipfile

    with zipfile.ZipFile(tmp / "my_clip.pt", "w") as z:  # the layout torch.save writes: a zip of archive/...
        z.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
    return {"tmp": str(tmp)}


# (argv with {tmp} and {samples} placeholders, exit code, words the message must hold, a path that must not exist)
BATTERY = [
    (["scan", "-m", "{tmp}/missing.onnx", "{samples}"], 2, "missing.onnx", None),
    (["scan", "-m", "{tmp}/text.onnx", "{samples}"], 2, "text.onnx", None),
    (["scan", "-m", "{tmp}/random.onnx", "{samples}"], 2, "random.onnx", None),
    (["scan", "-m", "{tmp}/empty", "{samples}"], 2, "empty", None),
    (["scan", "{samples}", "-b", "0"], 2, "--batch-size", None),
    (["scan", "{samples}", "-b", "many"], 2, "--batch-size", None),
    (["scan", "{samples}", "--threshold", "1.5"], 2, "threshold", None),
    (["scan", "{samples}", "--max-pixels", "-3"], 2, "max-pixels", None),
    (["scan", "{samples}", "-o", "{tmp}/rows"], 2, "rows", None),
    (["scan", "{samples}", "-o", "{tmp}/rows", "--overwrite"], 2, "rows", None),
    (["scan", "{samples}", "-o", "{tmp}/no/such/dir/x.jsonl"], 2, "no/such/dir", "{tmp}/no"),
    (["scan", "{samples}", "-o", "{tmp}/r.csv", "-f", "jsonl"], 2, "csv", "{tmp}/r.csv"),
    (["scan", "{samples}", "--resume"], 2, "--resume", None),
    (["scan", "{samples}", "--backend", "nosuch"], 2, "nosuch", None),
    (["scan", "{samples}", "--backend", "tensorrt"], 2, "tensorrt", None),
    (["scan", "--from-list", "{tmp}/missing-list.txt"], 2, "missing-list.txt", None),
    (["scan", "{tmp}/empty"], 1, "", None),                     # nothing to scan: exit 1, documented
    (["scan", "--from-list", "{tmp}/list.txt"], 1, "", None),   # a listed file that does not exist: its row
    (["scan", "{samples}", "-o", "{tmp}/e.csv", "--with-embedding"], 2, "CSV output cannot hold embeddings",
     "{tmp}/e.csv"),
    (["scan", "-m", "{tmp}/my_clip.pt", "{samples}"], 2, ("is a PyTorch checkpoint (a zip archive, as torch.save "
                                                          "writes), not an exported model: export it first "
                                                          "(clipscan export"), None),
    (["info", "{tmp}/missing.onnx"], 2, "missing.onnx", None),
    (["info", "{tmp}/text.onnx"], 2, "text.onnx", None),
    (["nosuchcommand"], 2, "nosuchcommand", None),
    (["scan", "--nosuch-flag"], 2, "--nosuch-flag", None),
    (["bench", "{tmp}/missing.onnx"], 2, "missing.onnx", None),
    (["bench", "{tmp}/text.onnx", "--batch-sizes", "0"], 2, "batch", None),
    (["export"], 2, "--weights", None),   # --arch is optional: a Hugging Face folder brings its config
    (["verify", "{tmp}/missing.onnx"], 2, "required", None),
    (["calibrate", "{tmp}/missing.onnx", "--images", "{samples}", "-o", "{tmp}/i8.onnx"], 2, "missing.onnx",
     "{tmp}/i8.onnx"),
    (["calibrate", "{tmp}/text.onnx", "--images", "{samples}", "-o", "{tmp}/i8.onnx"], 2, "text.onnx",
     "{tmp}/i8.onnx"),
    (["calibrate", "{tmp}/text.onnx", "--images", "{samples}", "-o", "{tmp}/i8.onnx", "--target", "tensorrt",
      "--fuse-attention"], 2, "--fuse-attention is for --target cpu", "{tmp}/i8.onnx"),
]


@pytest.fixture(scope="module")
def place(tmp_path_factory):
    return _setup(tmp_path_factory.mktemp("battery"))


def _fill(item: str, place: dict) -> str:
    return item.replace("{tmp}", place["tmp"]).replace("{samples}", SAMPLES)


@pytest.mark.parametrize("argv, code, words, absent", BATTERY, ids=[" ".join(b[0])[:60] for b in BATTERY])
def test_a_bad_command_ends_in_one_clear_message(place, argv, code, words, absent):
    args = [_fill(a, place) for a in argv]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-m", "clipscan", *args], capture_output=True, text=True, timeout=120,
                          env=env, cwd=place["tmp"])
    err = proc.stderr
    assert "Traceback" not in err, err
    assert proc.returncode == code, (proc.returncode, err)
    if code == 2:
        lines = [ln for ln in err.splitlines() if ln.strip()]
        said = [ln for ln in lines if ": error:" in ln]
        assert len(said) == 1, err           # one sentence (argparse adds its usage line above it)
        assert _fill(words, place) in said[0] or words in said[0], err
    if absent:  # nothing where the result would have gone, nor its sidecar record
        assert not Path(_fill(absent, place)).exists()
        assert not Path(_fill(absent, place) + ".clipscan.json").exists()


@pytest.mark.slow  # a subprocess that imports torch and open_clip: seconds
def test_a_refused_export_leaves_nothing_in_tmpdir(tmp_path):
    """`export` with a weights file that is not there: exit 2, no output, and nothing left in $TMPDIR by the
    libraries it loaded (torch's compile cache folder, torchinductor_<user>, goes with the command; ONNX
    Runtime's telemetry record .ses, one small file rewritten on every import, is the one exception)."""
    import json

    from .conftest import TINY_CONFIG

    scratch = tmp_path / "tmpdir"
    scratch.mkdir()
    (tmp_path / "cfg.json").write_text(json.dumps(TINY_CONFIG))
    (tmp_path / "heads.pt").write_bytes(b"")
    proc = subprocess.run([sys.executable, "-m", "clipscan", "export", "--arch", str(tmp_path / "cfg.json"),
                           "--weights", str(tmp_path / "missing.pt"), "--heads", str(tmp_path / "heads.pt"),
                           "-o", str(tmp_path / "out.onnx")], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TMPDIR": str(scratch)}, cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "missing.pt" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not (tmp_path / "out.onnx").exists()
    assert sorted(p.name for p in scratch.iterdir()) in ([], [".ses"]), list(scratch.rglob("*"))[:10]
