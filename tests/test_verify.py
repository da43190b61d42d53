"""`clipscan verify`: the fidelity protocol run on an artifact and its PyTorch original."""
from __future__ import annotations

import json
import logging
from html.parser import HTMLParser

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from clipscan.calibration import fidelity_gates as F
from clipscan.calibration.verify import verify
from clipscan.cli import main
from clipscan.export import load_reference
from clipscan.measure.thresholds import VAL_MIN_IMAGES, VAL_TWO_FLIPS_IMAGES
from clipscan.report.html_kit import BASE_CSS
from clipscan.runtime import Scanner
from clipscan.runtime.manifest import METADATA_KEY

from .conftest import TINY_CONFIG


@pytest.fixture(scope="module")
def demo_images():
    from clipscan.export import demo_data

    return demo_data.detector_set(20, seed=9)[0]


@pytest.fixture
def verify_dir(image_dir, demo_images):
    """image_dir's 6 photos + 40 demo images (photo crops and renders) + one file that does not decode."""
    (image_dir / "demo").mkdir()
    for i, img in enumerate(demo_images):
        img.save(image_dir / "demo" / f"{i:02d}.png")
    (image_dir / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    return image_dir


@pytest.fixture(scope="module")
def reference(tiny_model_files):
    return load_reference(str(tiny_model_files["config"]), tiny_model_files["weights"], tiny_model_files["heads"])


def cli_args(model, files, images, report, *extra):
    return ["verify", str(model), "--arch", str(files["config"]), "--weights", str(files["weights"]),
            "--heads", str(files["heads"]), "--images", str(images), "--report", str(report), *extra]


def edited(src, dst, *, negate=(), manifest=None):
    """A copy of an artifact with some initializers negated and/or the manifest edited in place."""
    model = onnx.load(str(src))
    for init in model.graph.initializer:
        if init.name in negate:
            init.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(init), init.name))
    if manifest is not None:
        for prop in model.metadata_props:
            if prop.key == METADATA_KEY:
                prop.value = json.dumps(manifest(json.loads(prop.value)))
    onnx.save(model, str(dst))
    return dst


class _Html(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[str] = []
        self.images: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "img":
            self.images.append(dict(attrs)["src"])


def test_fp32_export_passes_and_reports(exported, tiny_model_files, verify_dir, tmp_path, capsys, caplog):
    """No --arch/--weights/--heads: the PyTorch original is what export recorded in the manifest."""
    caplog.set_level(logging.INFO, logger="clipscan")
    report_dir = tmp_path / "report"
    assert main(["verify", str(exported.path), "--images", str(verify_dir), "--report", str(report_dir)]) == 0
    out = capsys.readouterr().out
    assert "PASS: every gate passed" in out and "cosine_mean" in out
    said = caplog.text
    assert f"--weights {tiny_model_files['weights']}" in said and f"--arch {tiny_model_files['config']}" in said

    data = json.loads((report_dir / "report.json").read_text())
    assert data["passed"] is True and data["failed_gates"] == []
    gates = {g["name"]: g for g in data["gates"]}
    for name in ("sources", "heads", "recipe", "preprocessing", "cosine_mean", "threshold:detector",
                 "agreement:detector", "margin_flips:detector", "srcc:quality", "batch_invariance", "determinism",
                 "robust_agreement:jpeg75:detector", "robust_agreement:blur1:detector",
                 "robust_agreement:down0.5_jpeg85:detector"):
        assert gates[name]["passed"] is True, gates[name]
    assert gates["preprocessing"]["value"] <= 1.0
    assert gates["cosine_mean"]["value"] >= 0.99999
    assert gates["srcc:quality"]["value"] >= 0.99999
    assert gates["batch_invariance"]["value"] <= 1e-4
    assert data["model"]["precision"] == "fp32" and len(data["model"]["sha256"]) == 64
    assert [f["path"].endswith("broken.jpg") for f in data["failed_files"]] == [True]
    assert len(data["rows"]) == 46
    row = data["rows"][0]
    for key in ("path", "cosine", "ref_logit", "logit", "ref_p", "p", "ref_quality", "quality", "flip"):
        assert key in row
    assert set(data["robustness"]) == {"jpeg75", "blur1", "down0.5_jpeg85"}
    assert data["versions"]["onnxruntime"] and data["model"]["tools"]["torch"]

    page = (report_dir / "report.html").read_text()
    parser = _Html()
    parser.feed(page)
    assert "table" in parser.tags and len(parser.images) >= 3
    assert all(src.startswith("data:image/png;base64,") for src in parser.images), "one self-contained file"
    assert "Worst 10 images" in page and "Method" in page and "class=\"PASS\"" in page
    assert BASE_CSS in page, "built with the scan report's HTML toolkit"


def test_python_api_on_few_images(exported, reference, image_dir):
    report = verify(exported.path, reference, image_dir, launder=False)
    assert report.passed and report.json_path is None and report.robustness == {}
    srcc = report.gate("srcc:quality")
    assert srcc.passed is None and "not enough images" in srcc.note  # 6 images: SRCC is not gated
    assert report.metrics["heads"]["quality"]["max_abs_diff"] < 1e-3
    assert report.metrics["features"]["cosine_worst"] >= 0.99999
    assert len(report.rows) == 6 and not any(r["flip"] for r in report.rows)


def test_broken_head_weights_fail(exported, tiny_model_files, verify_dir, tmp_path, capsys):
    """The detector's and the quality head's last Linear negated in the graph; the manifest kept."""
    broken = edited(exported.path, tmp_path / "broken.onnx", negate=("heads.0.linear.weight", "heads.1.mlp.2.weight"))
    report_dir = tmp_path / "report"
    assert main(cli_args(broken, tiny_model_files, verify_dir, report_dir, "--no-launder")) == 1
    out = capsys.readouterr().out
    data = json.loads((report_dir / "report.json").read_text())
    failed = set(data["failed_gates"])
    assert {"agreement:detector", "margin_flips:detector", "srcc:quality"} <= failed
    assert "cosine_mean" not in failed and "sources" not in failed, "the backbone and sources are intact"
    assert "FAIL:" in out and "agreement:detector" in out
    assert any(r["flip"] for r in data["rows"])


def test_wrong_weights_fail_the_sources_gate(exported, tiny_model_files, image_dir, tmp_path):
    torch.manual_seed(8)  # the fixture's checkpoint is seed 7
    import open_clip

    cfg = {k: v for k, v in TINY_CONFIG.items() if k != "quick_gelu"}
    other = tmp_path / "other_seed.pt"
    torch.save(open_clip.model.CLIP(**cfg, quick_gelu=True).visual.state_dict(), str(other))
    ref = load_reference(str(tiny_model_files["config"]), other, tiny_model_files["heads"])
    report = verify(exported.path, ref, image_dir, launder=False)
    assert not report.passed
    sources = report.gate("sources")
    assert sources.passed is False and "other_seed.pt" in sources.note and "tiny_clip.pt" in sources.note
    assert report.gate("cosine_mean").passed is False


def test_edited_manifest_threshold(exported, reference, tiny_model_files, verify_dir, tmp_path):
    with Scanner(exported.path) as scanner:
        p = sorted(r.p_generated for r in scanner.scan([verify_dir]) if r.ok)
    positives = [x for x in p if x >= 0.5]
    assert len(positives) >= 2
    # a threshold above the least confident positive image: its decision changes
    t = (positives[0] + positives[1]) / 2

    def set_threshold(value):
        def edit(m):
            m["heads"][0]["threshold"] = value
            return m
        return edit

    moved = edited(exported.path, tmp_path / "moved.onnx", manifest=set_threshold(t))
    report = verify(moved, reference, verify_dir, launder=False)
    assert report.gate("threshold:detector").passed is False
    assert "differs from the reference's 0.5" in report.gate("threshold:detector").note
    agreement = report.gate("agreement:detector")
    assert agreement.passed is False and agreement.value == pytest.approx(1 - 1 / 46)
    # the reference told the deployed threshold (verify --threshold): everything agrees again
    told = load_reference(str(tiny_model_files["config"]), tiny_model_files["weights"], tiny_model_files["heads"],
                          threshold=t)
    assert verify(moved, told, verify_dir, launder=False).passed

    # a move no image straddles changes no decision: only the threshold gate sees it
    if positives[0] > 0.5 + 1e-3:
        quiet = edited(exported.path, tmp_path / "quiet.onnx", manifest=set_threshold((0.5 + positives[0]) / 2))
        report = verify(quiet, reference, verify_dir, launder=False)
        assert report.gate("agreement:detector").passed is True
        assert [g.name for g in report.failed_gates()] == ["threshold:detector"]


def test_cli_exit_2_when_it_cannot_run(exported, tiny_model_files, image_dir, tmp_path, capsys):
    files = tiny_model_files
    assert main(cli_args(exported.path, files, tmp_path / "missing", tmp_path / "r")) == 2
    assert main(cli_args(tmp_path / "missing.onnx", files, image_dir, tmp_path / "r")) == 2
    bad = dict(files, weights=tmp_path / "missing.pt")
    assert main(cli_args(exported.path, bad, image_dir, tmp_path / "r")) == 2
    (tmp_path / "empty").mkdir()
    assert main(cli_args(exported.path, files, tmp_path / "empty", tmp_path / "r")) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "no image files found" in err
    assert "Traceback" not in err


def test_a_moved_or_changed_source_is_one_sentence_naming_the_recorded_file(exported, tiny_model_files, image_dir,
                                                                             tmp_path, capsys):
    """The recorded checkpoint moved: its path, its sha256 and the flag to pass; changed: the new sha256 too.
    A flag overrides the record; an artifact that records nothing asks for the flags."""
    weights = tiny_model_files["weights"]
    sha = exported.manifest.sources["backbone_weights"]["sha256"]

    def record(**changes):
        return lambda m: {**m, "sources": {**m["sources"], "export": {**m["sources"]["export"], **changes}}}

    moved = edited(exported.path, tmp_path / "moved.onnx", manifest=record(weights=str(tmp_path / "gone.pt")))
    assert main(["verify", str(moved), "--images", str(image_dir)]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'gone.pt'} (sha256 {sha}), which no longer exists: pass --weights PATH" in err
    changed = edited(exported.path, tmp_path / "changed.onnx", manifest=record(weights=str(tiny_model_files["heads"])))
    assert main(["verify", str(changed), "--images", str(image_dir)]) == 2
    err = capsys.readouterr().err
    assert "which has changed since (sha256 now " in err and "pass --weights PATH" in err
    from clipscan.export.recorded import original_from_manifest
    from clipscan.runtime import load_artifact

    given = original_from_manifest(moved, load_artifact(moved).manifest, weights=str(weights))
    assert given.weights == str(weights) and given.heads == [str(tiny_model_files["heads"])]
    bare = edited(exported.path, tmp_path / "bare.onnx",
                  manifest=lambda m: {**m, "sources": {k: v for k, v in m["sources"].items() if k != "export"}})
    assert main(["verify", str(bare), "--images", str(image_dir)]) == 2
    assert "does not record what it was exported from" in capsys.readouterr().err


# -- metrics on synthetic numbers --------------------------------------------------------------------

def test_spearman_average_ranks():
    assert F.rankdata([10, 20, 20, 30]).tolist() == [1.0, 2.5, 2.5, 4.0]
    assert F.rankdata([3, 3, 3]).tolist() == [2.0, 2.0, 2.0]
    rng = np.random.default_rng(0)
    a = rng.integers(0, 6, 200).astype(float)   # many ties
    b = a + rng.normal(0, 1.5, 200)
    stats = pytest.importorskip("scipy.stats")
    assert F.spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic, abs=1e-12)
    assert F.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert np.isnan(F.spearman([1, 1, 1], [1, 2, 3]))


def test_gates_follow_the_precision():
    cos = np.full(100, 0.9997)
    cos[0] = 0.9985
    names = lambda gates: {g.name: g.passed for g in gates}  # noqa: E731
    assert names(F.feature_gates(cos, "fp16")[1]) == {"cosine_mean": True, "cosine_worst": False}
    assert names(F.feature_gates(cos, "int8")[1]) == {"cosine_mean": True, "cosine_worst": True}
    assert names(F.feature_gates(cos, "fp32")[1]) == {"cosine_mean": False}

    ref_logit = np.array([0.3, -2.0, 1.0] + [3.0] * 997)
    exp_logit = ref_logit.copy()
    exp_logit[0] = -0.1                      # a flip inside the margin
    data = F.HeadData("det", "detection", {"logit": ref_logit, "probability": F.sigmoid(ref_logit)},
                      {"logit": exp_logit, "probability": F.sigmoid(exp_logit)}, 0.5, 0.5, ("real", "generated"),
                      ("real", "generated"))
    metrics, gates = F.evaluate_decision(data, "fp16")
    assert metrics["flips"] == 1 and metrics["flips_outside_margin"] == 0
    assert names(gates) == {"threshold:det": True, "agreement:det": True, "margin_flips:det": True}
    assert names(F.evaluate_decision(data, "fp32")[1])["agreement:det"] is False
    exp_logit[1] = 0.2                       # a flip 2 logits away from the threshold
    data.exp = {"logit": exp_logit, "probability": F.sigmoid(exp_logit)}
    assert names(F.evaluate_decision(data, "int8")[1])["margin_flips:det"] is False

    q = F.HeadData("q", "quality", {"score": np.arange(5.0)}, {"score": np.arange(5.0)})
    (gate,) = F.evaluate_quality(q, "fp32")[1]
    assert gate.passed is None and "not enough images" in gate.note
    assert F.robustness_gate("jpeg75", "det", 1.0, 0.996).passed
    assert not F.robustness_gate("jpeg75", "det", 1.0, 0.99).passed


def test_head_tasks_are_pluggable():
    """Each manifest head task has an evaluator; attribution decides like a detector plus top-1 generator."""
    assert set(F.HEAD_EVALUATORS) >= {"detection", "quality"}
    probs = np.array([[0.1, 0.6, 0.3], [0.2, 0.3, 0.5], [0.9, 0.07, 0.03]])
    other = probs[:, [0, 2, 1]]             # generators swapped
    logit = np.log((1 - probs[:, 0]) / probs[:, 0])
    data = F.HeadData("captions", "attribution",
                      {"logit": logit, "probability": 1 - probs[:, 0], "class_probs": probs},
                      {"logit": logit, "probability": 1 - probs[:, 0], "class_probs": other},
                      0.5, 0.5, ("real", "sdxl", "mj"), ("real", "sdxl", "mj"))
    metrics, gates = F.evaluate_head(data, "fp32")
    assert metrics["agreement"] == 1.0 and metrics["generator_top1_agreement"] == 0.0
    assert {g.name: g.passed for g in gates}["generator_top1:captions"] is False
    unknown = F.HeadData("x", "segmentation", {}, {})
    assert F.evaluate_head(unknown, "fp32")[1][0].passed is False


def test_a_different_activation_fails_the_recipe_gate(exported, tiny_model_files, verify_dir):
    """verify --gelu on a QuickGELU artifact: the recipe gate names the activation (it passed before)."""
    wrong = load_reference(str(tiny_model_files["config"]), tiny_model_files["weights"], tiny_model_files["heads"],
                           quick_gelu=False)
    report = verify(exported.path, wrong, verify_dir, launder=False)
    recipe = report.gate("recipe")
    assert recipe.passed is False and "activation" in recipe.note and "quick_gelu" in recipe.note
    assert not report.passed
    for g in report.failed_gates():
        if g.name != "recipe" and g.group in ("features", "outputs"):
            assert "likely cause: the recipe differs" in g.note


def test_laundered_gates_suit_the_sample_size_and_the_margin():
    """One flip in 120 laundered images (0.83%) cannot fail a 0.5 pp slack; several do; flips beyond the margin fail."""
    one = F.robustness_gate("down0.5_jpeg85", "det", 1.0, 119 / 120, n=120, flipped=[("a/b.jpg", 0.12)])
    assert one.passed and "upper 95% bound" in one.note and "a/b.jpg (reference logit +0.120)" in one.note
    assert not F.robustness_gate("down0.5_jpeg85", "det", 1.0, 115 / 120, n=120).passed
    assert not F.robustness_gate("jpeg75", "det", 1.0, 0.99).passed  # without n: the plain comparison
    assert F.wilson_upper(1.0, 10) == 1.0 and 0.99 < F.wilson_upper(119 / 120, 120) < 1.0
    assert F.robust_margin_gate("jpeg75", "det", 0, 0.5).passed
    assert F.robust_margin_gate("jpeg75", "det", 1, 0.5).passed is False
    # on 25 images one flip 0.006 logit from the threshold fails, and the note says from how many images it passes
    few = F.robustness_gate("jpeg75", "det", 1.0, 24 / 25, n=25, flipped=[("c.jpg", 0.006)])
    assert not few.passed and "1 flip(s) pass this gate from 36 validation images on" in few.note
    assert F.robustness_gate("jpeg75", "det", 1.0, 35 / 36, n=36).passed
    assert F.images_to_tolerate(1, 1 - F.ROBUST_SLACK) == VAL_MIN_IMAGES
    assert F.images_to_tolerate(2, 1 - F.ROBUST_SLACK) == VAL_TWO_FLIPS_IMAGES


def test_two_heads_of_one_format_keep_their_own_names(tiny_model_files, verify_dir, tmp_path):
    """--head a=univfd:A --head b=univfd:B: gates, metrics, plots and worst-image tables per head, each over
    the images once (not pooled); without names the second head is univfd_2; a repeated name is refused."""
    from clipscan.export import export_model

    emb = torch.load(str(tiny_model_files["heads"]), weights_only=False)["detector"]["weight"].shape[1]
    files = []
    for seed in (1, 2):
        g = torch.Generator().manual_seed(seed)
        path = tmp_path / f"fc{seed}.pth"
        torch.save({"weight": torch.randn(1, emb, generator=g) * 3, "bias": torch.randn(1, generator=g)}, str(path))
        files.append(path)
    cfg, weights = str(tiny_model_files["config"]), tiny_model_files["weights"]
    named = [f"fake_a=univfd:{files[0]}", f"fake_b=univfd:{files[1]}"]
    out = tmp_path / "two.onnx"
    export_model(cfg, weights, named, out)
    m = Scanner(out).manifest
    assert [h.name for h in m.heads] == ["fake_a", "fake_b"]
    assert m.heads[1].outputs["logit"].startswith("fake_b_")

    report = tmp_path / "rep"
    args = ["verify", str(out), "--arch", cfg, "--weights", str(weights), "--images", str(verify_dir),
            "--report", str(report), "--no-launder"]
    for h in named:
        args += ["--head", h]
    assert main(args) == 0
    data = json.loads((report / "report.json").read_text())
    names = [g["name"] for g in data["gates"]]
    assert len(names) == len(set(names)), names
    assert any("fake_a" in n for n in names) and any("fake_b" in n for n in names)
    n_images = sum(1 for f in verify_dir.rglob("*") if f.is_file()) - 1  # all but broken.jpg
    heads = data["metrics"]["heads"]
    assert set(heads) >= {"fake_a", "fake_b"}
    assert heads["fake_a"]["n"] == heads["fake_b"]["n"] == n_images
    html = (report / "report.html").read_text()
    assert "Decision head fake_a:" in html and "Decision head fake_b:" in html   # a plot each

    plain = tmp_path / "plain.onnx"
    export_model(cfg, weights, [f"univfd:{f}" for f in files], plain)
    assert [h.name for h in Scanner(plain).manifest.heads] == ["univfd", "univfd_2"]
    with pytest.raises(ValueError, match="not a name"):
        export_model(cfg, weights, [f"1x=univfd:{files[0]}"], tmp_path / "bad.onnx")
