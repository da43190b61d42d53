"""`clipscan bench --profile`: ONNX Runtime's profiler by op kind, the GEMM ceilings of the same run, and the
integer path (VNNI or AMX) those ceilings show."""
from __future__ import annotations

import json

import numpy as np

from clipscan.bench.ceilings import gemm_ceilings, integer_path
from clipscan.bench.profile import op_profile
from clipscan.cli import main
from clipscan.measure.machine import cpu_info
from clipscan.runtime.artifact import load_artifact


def test_profile_sums_node_time_by_kind_and_the_ceilings_are_measured(tmp_path, capsys):
    demo = load_artifact(None).path
    x = np.random.default_rng(0).standard_normal((2, 3, 224, 224), dtype=np.float32)
    prof = op_profile(demo, {"pixels": x}, runs=2)
    assert prof["node_ms"] > 0 and abs(sum(prof["by_kind"].values()) - prof["node_ms"]) < 1e-6
    assert abs(sum(prof["by_op"].values()) - prof["node_ms"]) < 1e-6
    assert 0.0 < prof["matrix_share"] <= 1.0, prof   # (its size depends on the machine and its load)
    assert {"Gemm", "MatMul"} & set(prof["by_op"]) and "float matrix products" in prof["by_kind"]
    c = gemm_ceilings(256, seconds=0.2)
    assert c["int8_gops"] > 0 and c["fp32_gops"] > 0 and set(c["runtimes"]) == {"onnxruntime"}
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


def test_the_integer_path_is_read_from_the_int8_over_fp32_rate():
    # per cycle on x86-64: multiply-add pairs 2x the fp32 FMA rate, VNNI 4x, AMX-INT8 32x
    assert "without int8 dot products" in integer_path(300, 200, "x86_64")["path"]
    assert "VNNI" in integer_path(740, 200, "x86_64")["path"]       # 3.7x: what the Zen 4 EPYC measured
    assert "AMX" in integer_path(3000, 200, "x86_64")["path"]
    assert "VNNI 4x" in integer_path(740, 200, "x86_64")["why"] and "3.7x" in integer_path(740, 200, "x86_64")["why"]
    # an Arm core's dot-product and matrix instructions have other ratios: reported, not read as x86 paths
    arm = integer_path(1600, 200, "aarch64")
    assert arm["path"] == "not read" and "aarch64" in arm["why"] and "8.0x" in arm["why"]


def test_openvino_ceilings_run_in_the_same_rounds_and_each_runtime_gets_its_share(tmp_path, capsys):
    """With --backends cpu,openvino both runtimes time their own int8 and fp32 products beside the artifact;
    each artifact row is set against the ceilings of the runtime it ran on."""
    demo = load_artifact(None).path
    c = gemm_ceilings(256, seconds=0.2, runtimes=("onnxruntime", "openvino"))
    assert c["runtimes"]["openvino"]["int8_gops"] > 0 and c["runtimes"]["openvino"]["fp32_gops"] > 0
    out = tmp_path / "b.json"
    assert main(["bench", str(demo), "--profile", "--mode", "model", "--batch-sizes", "2", "--no-cold-start",
                 "--backends", "cpu,openvino", "--min-seconds", "0.2", "--min-iters", "2", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    report = json.loads(out.read_text())
    ceilings = report["profile"]["ceilings"]
    assert set(ceilings["runtimes"]) == {"onnxruntime", "openvino"}
    assert ceilings["interleaved_with"] == len(report["results"]) == 2   # the artifact on both backends
    assert {r["backend"] for r in report["results"]} == {"onnxruntime-cpu", "openvino-cpu"}
    assert "on onnxruntime: achieved" in text and "on openvino: achieved" in text
    for runtime in ("onnxruntime", "openvino"):
        verdict = report["profile"]["integer_path"][runtime]
        assert f"integer path on {runtime}: {verdict['path']}" in text
        if not report["profile"]["amx"]["usable"]:
            # more than 5.5x the float rate is more than any vector unit gives: without AMX it cannot be
            assert "AMX" not in verdict["path"], verdict


def test_an_amx_machine_whose_runtime_runs_vnni_is_told_so():
    """The table's reading of a profile where AMX is usable: a runtime at VNNI's rate is named, one at AMX's is not
    (the profile is data: this is what an AMX machine's run prints, here without one)."""
    from clipscan.bench.profile import profile_table

    prof = {"batch_size": 8, "cpu": "a CPU", "artifacts": {},
            "ceilings": {"n": 1536, "interleaved": True,
                         "runtimes": {"onnxruntime": {"int8_gops": 1259, "fp32_gops": 330},
                                      "openvino": {"int8_gops": 6000, "fp32_gops": 320}}},
            "amx": {"usable": True, "why": "the CPU reports AMX-INT8 and the kernel grants tile state"},
            "integer_path": {"onnxruntime": integer_path(1259, 330, "x86_64"),
                             "openvino": integer_path(6000, 320, "x86_64")}}
    text = "\n".join(profile_table({"profile": prof, "results": []}))
    assert "AMX: usable" in text and "onnxruntime int8 1259 GOP/s, fp32 330 GOP/s" in text
    assert "integer path on onnxruntime: VNNI-class" in text and "integer path on openvino: a matrix engine" in text
    assert "but onnxruntime's integer products do not run at its rate" in text
    assert "openvino's integer products do not" not in text


def test_a_vnni_cpu_whose_ceiling_reads_below_vnni_is_told_to_look_again():
    from clipscan.bench.profile import profile_table

    prof = {"batch_size": 8, "cpu": "a CPU", "artifacts": {}, "isa": ["AVX2", "AVX-512", "AVX-512 VNNI"],
            "ceilings": {"n": 1536, "runtimes": {"onnxruntime": {"int8_gops": 420, "fp32_gops": 200}}},
            "amx": {"usable": False, "why": "the CPU reports no AMX-INT8"},
            "integer_path": {"onnxruntime": integer_path(420, 200, "x86_64")}}
    text = "\n".join(profile_table({"profile": prof, "results": []}))
    assert "integer path on onnxruntime: vector kernels without int8 dot products" in text
    assert "below what this CPU's VNNI gives: onnxruntime does not use it" in text
    prof["isa"] = ["AVX2"]   # a CPU without VNNI: 2x is what it has, nothing to look at
    assert "below what" not in "\n".join(profile_table({"profile": prof, "results": []}))
