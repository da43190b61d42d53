"""`clipscan bench --profile`: ONNX Runtime's profiler by op kind, and the GEMM ceilings of the same run."""
from __future__ import annotations

import json

import numpy as np

from clipscan.bench.profile import gemm_ceilings, op_profile
from clipscan.cli import main
from clipscan.runtime.artifact import load_artifact
from clipscan.runtime.machine import cpu_info


def test_profile_sums_node_time_by_kind_and_the_ceilings_are_measured(tmp_path, capsys):
    demo = load_artifact(None).path
    x = np.random.default_rng(0).standard_normal((2, 3, 224, 224), dtype=np.float32)
    prof = op_profile(demo, {"pixels": x}, runs=2)
    assert prof["node_ms"] > 0 and abs(sum(prof["by_kind"].values()) - prof["node_ms"]) < 1e-6
    assert abs(sum(prof["by_op"].values()) - prof["node_ms"]) < 1e-6
    assert 0.0 < prof["matrix_share"] <= 1.0, prof   # (its size depends on the machine and its load)
    assert {"Gemm", "MatMul"} & set(prof["by_op"]) and "float matrix products" in prof["by_kind"]
    c = gemm_ceilings(256, seconds=0.2)
    assert c["int8_gops"] > 0 and c["fp32_gops"] > 0
    out = tmp_path / "b.json"
    assert main(["bench", str(demo), "--profile", "--mode", "model", "--batch-sizes", "2", "--no-cold-start",
                 "--min-seconds", "0.2", "--min-iters", "2", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "in matrix products" in text and "GEMM ceilings" in text and "achieved" in text
    assert "timed in the model rounds of this batch size" in text
    report = json.loads(out.read_text())
    assert report["profile"]["artifacts"]["demo.onnx"]["matrix_share"] > 0.0
    ceilings = report["profile"]["ceilings"]
    # the ceilings ran in the artifact's interleaved rounds, and are not rows of the results table
    assert ceilings["interleaved"] and ceilings["int8_gops"] > 0 and ceilings["fp32_gops"] > 0
    assert ceilings["interleaved_with"] == len(report["results"])   # every backend row of batch 2
    assert {r["artifact"] for r in report["results"]} == {"demo.onnx"}
    assert "gemm-ceiling" not in text.split("profile (")[0]
    # whether AMX could run is said, and agrees with what the CPU reports
    amx = report["profile"]["amx"]
    assert f"AMX: {'usable' if amx['usable'] else 'not usable'}: {amx['why']}" in text
    if "AMX-INT8" not in cpu_info()["isa"]:
        assert not amx["usable"]
