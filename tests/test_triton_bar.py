"""Issue 15's bar: a real tritonserver on the repository `clipscan triton` writes for a ViT-B/32 artifact, and 500
real and broken files scanned through it with `clipscan scan --server` give a local scan's rows (same verdicts,
p_generated within 1e-5, the same error kinds)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from clipscan.triton.launch import start_tritonserver

from .conftest import seeded_clip
from .corpus import build_corpus
from .triton_helpers import need_tritonserver, parse_config

pytestmark = pytest.mark.slow
N_FILES = 500


def _clipscan(*args):
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "clipscan", *args], capture_output=True, text=True, timeout=900,
                          check=False)
    return proc, time.perf_counter() - start


def test_500_files_through_triton_equal_a_local_scan(tmp_path):
    import open_clip

    from clipscan.export import export_model

    dist = need_tritonserver()
    config = open_clip.get_model_config("ViT-B-32")
    (tmp_path / "b32").mkdir()
    files = seeded_clip(tmp_path / "b32", config, 3, heads_dim=config["embed_dim"])
    artifact = tmp_path / "vit-b32.onnx"
    export_model(str(files["config"]), files["weights"], files["heads"], artifact, name="vit-b32-test")

    entries = build_corpus(tmp_path / "corpus", seed=15)
    # files only (a folder is walked, not one row), and --from-list takes one path per line
    entries = [e for e in entries if "\n" not in str(e.path) and not e.path.is_dir()]
    chosen = entries[:: max(1, len(entries) // N_FILES)][:N_FILES]
    assert len(chosen) == N_FILES
    assert {e.expect for e in chosen} >= {"ok", "error"}
    listing = tmp_path / "list.txt"
    listing.write_bytes(b"".join(os.fsencode(e.path) + b"\n" for e in chosen))  # names need not be UTF-8

    repo = tmp_path / "repo"
    proc, _ = _clipscan("triton", str(artifact), "--repo", str(repo), "--max-batch", "16", "--instances", "1")
    assert proc.returncode == 0, proc.stderr
    for path in repo.rglob("config.pbtxt"):
        parse_config(path.read_text())
    server = start_tritonserver(repo, tmp_path / "work", dist=dist)
    try:
        server.wait_ready(timeout=180)
        remote, remote_s = _clipscan("scan", "--server", server.url, "--from-list", str(listing),
                                     "-o", str(tmp_path / "remote.jsonl"), "-b", "16", "--concurrency", "2")
    finally:
        server.stop()
    local, local_s = _clipscan("scan", "-m", str(artifact), "--from-list", str(listing), "-o",
                               str(tmp_path / "local.jsonl"), "-b", "16")
    assert remote.returncode == local.returncode == 1, (remote.stderr, local.stderr)
    rows = {name: [json.loads(line) for line in (tmp_path / f"{name}.jsonl").read_text().splitlines()]
            for name in ("local", "remote")}
    assert len(rows["local"]) == len(rows["remote"]) == N_FILES
    worst = 0.0
    for a, b in zip(rows["remote"], rows["local"]):
        assert (a["path"], a["verdict"], a["error_kind"], a["backend"]) == (b["path"], b["verdict"], b["error_kind"],
                                                                            b["backend"])
        if b["p_generated"] is not None:
            worst = max(worst, abs(a["p_generated"] - b["p_generated"]))
        else:
            assert a["p_generated"] is None
    assert worst <= 1e-5
    errors = sum(r["error"] is not None for r in rows["local"])
    assert 0 < errors < N_FILES
    print(f"\n{N_FILES} files ({errors} error rows): local scan {local_s:.1f} s, through Triton {remote_s:.1f} s "
          f"(both including process start), max |dp| {worst:.2e}")
