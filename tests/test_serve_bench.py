"""`clipscan bench --serve`, small: both modes, malformed uploads mixed in, every answer checked."""
from __future__ import annotations

import subprocess
import sys

import pytest

from clipscan.bench.serve_bench import ServeBenchConfig, format_serve_table, run_serve_bench

from .conftest import REPO

pytestmark = pytest.mark.slow


def test_serve_bench_checks_every_answer(tmp_path):
    report = run_serve_bench(ServeBenchConfig(concurrency=(1, 4), requests=30, bad_every=5, max_seconds=30,
                                              offline_passes=1), progress=lambda *_: None)
    assert [(lv["mode"], lv["concurrency"]) for lv in report["levels"]] == [
        ("batching", 1), ("batching", 4), ("batch-1", 1), ("batch-1", 4)]
    for lv in report["levels"]:
        assert lv["sent"] == 30 and lv["good_ok"] == 24 and lv["bad_4xx"] == 6, lv
        assert lv["good_wrong"] == lv["bad_wrong"] == lv["status_5xx"] == lv["connection_errors"] == 0, lv
        assert lv["images_per_s"] > 0 and lv["p50_ms"] <= lv["p95_ms"] <= lv["p99_ms"]
    assert report["server_exit_codes"] == [0, 0]
    table = format_serve_table(report)
    assert "x offline" in table and report["cpu"] in table


def test_bench_serve_refuses_two_models():
    r = subprocess.run([sys.executable, "-c", "import sys; from clipscan.cli import main; sys.exit(main())",
                        "bench", "--serve", "a.onnx", "b.onnx"], check=False, cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 2 and "one model at a time" in r.stderr and "Traceback" not in r.stderr
