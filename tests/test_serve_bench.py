"""`clipscan bench --serve` and `--triton`, small: every mode, malformed uploads mixed in, every answer checked."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from clipscan.bench.serve_bench import ServeBenchConfig, format_serve_table, run_serve_bench
from clipscan.cli import main

from .conftest import REPO
from .triton_helpers import need_tritonserver

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


def test_bench_triton_rows_next_to_the_offline_scanner(tmp_path, capsys):
    """`clipscan bench --triton`: the real tritonserver on the repository `clipscan triton` writes, under the
    closed-loop load generator; every answer checked against the offline rows, tritonserver's statistics read."""
    need_tritonserver()
    out = tmp_path / "bench.json"
    assert main(["bench", "--triton", "--serve-modes", "triton", "--concurrency", "1,4", "--requests", "20",
                 "--bad-every", "5", "--offline-images", "32", "--json", str(out)]) == 0
    table = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert [(lv["mode"], lv["concurrency"]) for lv in report["levels"]] == [("triton", 1), ("triton", 4)]
    for lv in report["levels"]:
        assert lv["sent"] == 20 and lv["good_ok"] == 16 and lv["bad_4xx"] == 4, lv  # bad: the image's error element
        assert lv["good_wrong"] == lv["bad_wrong"] == lv["status_5xx"] == lv["connection_errors"] == 0, lv
        assert lv["images_per_s"] > 0 and 0 < lv["p50_ms"] <= lv["p95_ms"] <= lv["p99_ms"]
        assert lv["ratio_vs_offline"] == pytest.approx(lv["images_per_s"] / report["offline_images_per_s"])
        stats = lv["triton_stats"]
        assert stats["requests"] == 20 and 1 <= stats["images_per_execution"] <= 16, stats
        assert stats["executions"] <= 20 and stats["compute_infer_ms_per_request"] > 0 <= stats["queue_ms_per_request"]
    assert report["server_exit_codes"] == [0] and "instances" in report["triton_knobs"]
    assert re.search(r"^triton +4 +[\d.]+ +[\d.]+ ", table, re.M) and "queue" in table and report["cpu"] in table
