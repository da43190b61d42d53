"""`clipscan threshold`: a threshold set for 5% false positives on N real images holds on a held-apart real set;
the new artifact's rows use it; its manifest records the choice; the input is never written; several heads."""
from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import binom

from clipscan.cli import main
from clipscan.evaluation.labels import content_hash
from clipscan.evaluation.onnx_write import write_with_manifest
from clipscan.runtime import Scanner, load_artifact
from clipscan.runtime.artifact import DEMO_MODEL, file_sha256
from clipscan.runtime.fidelity_metrics import sigmoid

from .test_evaluate import make_set

N = 120  # real images each side: 5% of them is 6 expected false positives


@pytest.fixture(scope="module")
def sets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("threshold")
    return {"pick": make_set(root / "pick", N, seed=21), "held": make_set(root / "held", N, seed=22)}


def scan_rows(model: Path, folder: Path, out: Path) -> list[dict]:
    assert main(["scan", str(folder), "--model", str(model), "--backend", "cpu", "-o", str(out), "-q"]) == 0
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_five_percent_on_one_real_set_holds_on_another(sets, tmp_path, capsys):
    out = tmp_path / "fpr5.onnx"
    before = file_sha256(DEMO_MODEL)
    pick = sets["pick"]
    rc = main(["threshold", str(DEMO_MODEL), "--real", str(pick / "real"), "--generated", str(pick / "renders"),
               "--fpr", "0.05", "-o", str(out), "--backend", "cpu", "-q"])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    assert file_sha256(DEMO_MODEL) == before, "the input artifact is never written"
    head = load_artifact(out).manifest.head("detection")
    t = head.threshold
    assert t != 0.5 and f"{t:.6g}" in printed and "Clopper-Pearson" in printed and "detection rate" in printed

    choice = head.details["threshold_choice"]
    assert choice["target_fpr"] == 0.05 and choice["real_files"] == N and choice["real_files_failed"] == 0
    assert choice["false_positives"] <= math.floor(0.05 * N) and choice["previous_threshold"] == 0.5
    assert choice["files_sha256"] == content_hash(sorted(str(p) for p in (pick / "real").iterdir()))
    assert choice["source_sha256"] == before and choice["chosen_utc"].endswith("Z")
    low, high = choice["ci95"]
    assert low <= choice["achieved_fpr"] <= high

    # the held-apart real set: its false-positive count lies in the binomial interval of 5% of its size
    rows = scan_rows(out, sets["held"] / "real", tmp_path / "held.jsonl")
    assert len(rows) == N and all(r["error"] is None for r in rows)
    false_positives = sum(r["verdict"] == "generated" for r in rows)
    lo, hi = binom.interval(0.99, N, 0.05)
    assert lo <= false_positives <= hi, (false_positives, (lo, hi))
    # the rows carry the new threshold: each states it, and every verdict is p_generated >= t
    for r in rows:
        assert abs(r["heads"]["detector"]["threshold"] - t) < 1e-6, r["heads"]  # rows keep 7 digits
        assert (r["verdict"] == "generated") == (float(sigmoid(r["logit"])) >= t) or abs(r["p_generated"] - t) < 1e-6
    with Scanner(out, backend="cpu") as s, Scanner(DEMO_MODEL, backend="cpu") as original:
        assert s.threshold == t and original.threshold == 0.5
        paths = sorted(str(p) for p in (sets["held"] / "real").iterdir())
        new = list(s.scan_many((p, p) for p in paths))
        old = list(original.scan_many((p, p) for p in paths))
    assert [a.logit for a in new] == [b.logit for b in old], "the graph is the same, byte for byte"
    assert [a.verdict for a in new] == ["generated" if a.p_generated >= t else "real" for a in new]


def test_too_few_real_images_for_the_rate_is_an_error(sets, tmp_path, capsys):
    rc = main(["threshold", str(DEMO_MODEL), "--real", str(sets["pick"] / "real"), "--fpr", "0.01",
               "-o", str(tmp_path / "x.onnx"), "--backend", "cpu", "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and "needs at least 300 real images" in err and f"holds {N}" in err
    assert not (tmp_path / "x.onnx").exists()


def test_the_input_is_never_overwritten_and_outputs_are_kept(sets, tmp_path, capsys):
    model = tmp_path / "m.onnx"
    model.write_bytes(DEMO_MODEL.read_bytes())
    args = ["threshold", str(model), "--real", str(sets["pick"] / "real"), "--fpr", "0.05", "--backend", "cpu", "-q"]
    assert main([*args, "-o", str(model), "--overwrite"]) == 2
    assert "never overwritten" in capsys.readouterr().err
    assert model.read_bytes() == DEMO_MODEL.read_bytes()
    kept = tmp_path / "kept.onnx"
    kept.write_text("mine")
    assert main([*args, "-o", str(kept)]) == 2 and kept.read_text() == "mine"
    assert "already exists" in capsys.readouterr().err
    assert main([*args]) == 0 and "nothing written" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.onnx", "m.onnx"], "no temporary file left"


def test_the_written_file_is_valid_onnx_with_one_manifest(tmp_path):
    onnx = pytest.importorskip("onnx")  # the check, not the writer, needs onnx
    manifest = load_artifact(DEMO_MODEL).manifest
    out = write_with_manifest(DEMO_MODEL, tmp_path / "copy.onnx", replace(manifest, name="renamed").to_json())
    model = onnx.load(str(out))
    onnx.checker.check_model(model)
    assert [p.key for p in model.metadata_props].count("clipscan.manifest") == 1
    original = onnx.load(str(DEMO_MODEL))
    assert model.graph.SerializeToString() == original.graph.SerializeToString()
    assert load_artifact(out).manifest.name == "renamed"


@pytest.mark.parametrize("rule", ["any", "all", "mean_logit"])
def test_several_heads_get_one_threshold_each_and_the_rule_is_reapplied(sets, tmp_path, rule):
    """Two detection heads on the same graph outputs (one shifted by a different threshold) and an ensemble rule."""
    manifest = load_artifact(DEMO_MODEL).manifest
    det = manifest.head("detection")
    heads = (det, replace(det, name="second", threshold=0.3), *[h for h in manifest.heads if h is not det])
    decision = {"ensemble": rule, "threshold": 0.5} if rule == "mean_logit" else {"ensemble": rule}
    two = write_with_manifest(DEMO_MODEL, tmp_path / "two.onnx",
                              replace(manifest, heads=heads, decision=decision).to_json())
    out = tmp_path / "two_fpr5.onnx"
    assert main(["threshold", str(two), "--real", str(sets["pick"] / "real"), "--fpr", "0.05", "-o", str(out),
                 "--backend", "cpu", "-q"]) == 0
    new = load_artifact(out).manifest
    thresholds = {h.name: h.threshold for h in new.decision_heads()}
    assert set(thresholds) == {"detector", "second"}
    record = new.decision["threshold_choice"]
    assert record["false_positives"] <= math.floor(0.05 * N) and record["real_files"] == N
    paths = sorted(str(p) for p in (sets["pick"] / "real").iterdir())
    with Scanner(out, backend="cpu") as s:
        rows = list(s.scan_many((p, p) for p in paths))
    said = sum(r.verdict == "generated" for r in rows)
    assert said == record["false_positives"], "the rule, re-applied by the runtime, gives the recorded count"
    for r in rows:
        for name, t in thresholds.items():
            assert (r.heads[name]["verdict"] == "generated") == (r.heads[name]["p_generated"] >= t)
    if rule == "mean_logit":
        assert new.decision["threshold"] != 0.5 and record["previous_threshold"] == 0.5
        assert thresholds["detector"] == thresholds["second"], "the same scores get the same threshold"
    else:  # any: each head flags no more than the rule does; all: no fewer
        assert said <= math.floor(0.05 * N)
        per_head = [h.details["threshold_choice"]["false_positives"] for h in new.decision_heads()]
        assert (max(per_head) <= said) if rule == "any" else (min(per_head) >= said)
    held = np.array([r.p_generated for r in rows])
    assert np.isfinite(held).all()


def test_threshold_and_evaluate_run_without_torch_or_onnx_and_say_when_scikit_learn_is_missing(sets, tmp_path):
    import subprocess
    import sys

    from .conftest import block_torch_env, blocked_env

    real = str(sets["pick"] / "real")
    cmd = [sys.executable, "-m", "clipscan", "threshold", str(DEMO_MODEL), "--real", real, "--fpr", "0.05",
           "--backend", "cpu", "-q", "-o", str(tmp_path / "t.onnx")]
    done = subprocess.run(cmd, env=block_torch_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert load_artifact(tmp_path / "t.onnx").manifest.head("detection").details["threshold_choice"]
    evaluate = [sys.executable, "-m", "clipscan", "evaluate", str(tmp_path / "t.onnx"), "--real", real,
                "--generated", str(sets["pick"] / "renders"), "--bootstrap", "20", "--backend", "cpu", "-q"]
    done = subprocess.run(evaluate, env=block_torch_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "AUC" in done.stdout, done.stderr
    no_extra = blocked_env(tmp_path, ("sklearn", "scipy"), "this process simulates an install without the extra")
    done = subprocess.run(evaluate, env=no_extra, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "pip install 'clipscan[evaluate]'" in done.stderr, done.stderr


def test_a_truncated_model_is_a_model_error_and_nothing_is_left(tmp_path):
    from clipscan.runtime.errors import ModelError

    cut = tmp_path / "cut.onnx"
    cut.write_bytes(DEMO_MODEL.read_bytes()[:5000])
    with pytest.raises(ModelError, match="truncated"):
        write_with_manifest(cut, tmp_path / "out.onnx", "{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.onnx"]
