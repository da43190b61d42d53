"""`clipscan evaluate`: metrics equal scikit-learn's on the scores a plain Scanner scan gives, failed files are
counted, the page opens in a browser with its curves, artifacts and the PyTorch original side by side."""
from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import average_precision_score, balanced_accuracy_score, roc_auc_score

from clipscan.cli import main
from clipscan.runtime import Scanner
from clipscan.runtime.artifact import DEMO_MODEL

from .browser import browser_page

BROKEN = b"\xff\xd8\xff\xe0 not really a JPEG"


def launder(img: Image.Image, quality: int = 70) -> Image.Image:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def make_set(root: Path, n: int, seed: int, *, generated: bool = True, laundered: bool = True) -> Path:
    """root/real: scikit-image photo crops; root/renders and root/renders_jpeg70: procedural renders, clean
    and JPEG-laundered (laundered real crops join root/real). Seeded: the same call gives the same files."""
    from clipscan.export import demo_data

    rng = np.random.default_rng(seed)
    photos = [demo_data.photo(p) for p in (*demo_data.TRAIN_PHOTOS, *demo_data.SAMPLE_PHOTOS)]
    for d in ("real", "renders", "renders_jpeg70"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        real = demo_data.augment(photos[i % len(photos)], rng)
        (launder(real) if laundered and i % 3 == 2 else real).save(root / "real" / f"photo_{i:03d}.png")
        if generated:
            render = demo_data.render(seed * 10_000 + i)
            target = ("renders_jpeg70" if laundered and i % 2 else "renders")
            (launder(render) if target == "renders_jpeg70" else render).save(root / target / f"render_{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> Path:
    root = make_set(tmp_path_factory.mktemp("labelled"), 40, seed=5)
    (root / "real" / "broken.jpg").write_bytes(BROKEN)
    return root


def folder_args(root: Path) -> list[str]:
    return ["--real", str(root / "real"), "--generated", f"render={root / 'renders'}",
            "--generated", str(root / "renders_jpeg70")]


def plain_scores(model, paths: list[str]) -> dict[str, object]:
    with Scanner(model, backend="cpu") as s:
        return {r.path: r for r in s.scan_many((p, p) for p in paths)}


def run_evaluate(tmp_path, *args) -> tuple[int, dict]:
    out = tmp_path / "eval.json"
    rc = main(["evaluate", *args, "--json", str(out), "--overwrite", "--bootstrap", "50", "--backend", "cpu", "-q"])
    return rc, json.loads(out.read_text()) if out.exists() else {}


def test_auc_and_ap_equal_scikit_learn_and_failed_files_count(labelled, tmp_path, capsys):
    rc, doc = run_evaluate(tmp_path, str(DEMO_MODEL), *folder_args(labelled))
    assert rc == 1, "a failed file makes the exit code 1"
    printed = capsys.readouterr().out
    result = doc["models"][0]
    real = sorted(str(p) for p in (labelled / "real").iterdir())
    gen = {g: sorted(str(p) for p in (labelled / d).iterdir()) for g, d in (("render", "renders"),
                                                                           ("renders_jpeg70", "renders_jpeg70"))}
    scored = plain_scores(DEMO_MODEL, real + gen["render"] + gen["renders_jpeg70"])
    broken = str(labelled / "real" / "broken.jpg")
    assert not scored[broken].ok
    assert result["files"] == len(scored) == 81 and result["scanned"] == 80
    assert [f["path"] for f in result["failed"]] == [broken] and broken in printed

    ok = [p for p in scored if scored[p].ok]
    y = np.array([0 if p in real else 1 for p in ok])
    logit = np.array([scored[p].logit for p in ok])
    head = result["heads"]["detector"]
    assert head["auc"] == pytest.approx(roc_auc_score(y, logit), abs=1e-12)
    assert head["ap"] == pytest.approx(average_precision_score(y, logit), abs=1e-12)
    assert f"{head['auc']:.4f}" in printed and f"{head['ap']:.4f}" in printed
    assert 0.5 < head["auc"] <= 1.0
    # the failed real file is in the denominator as a wrong answer, never dropped
    y_all = np.array([0 if p in real else 1 for p in scored])
    said = np.array([(scored[p].verdict == "generated") if scored[p].ok else 1 - y_all[i]
                     for i, p in enumerate(scored)], int)
    assert head["files"] == 81 and head["failed"] == head["failed_real"] == 1
    assert head["accuracy"] == pytest.approx(float((said == y_all).mean()))
    assert head["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y_all, said))
    assert np.array(head["confusion"]["matrix"]).sum() == 80
    for g, paths in gen.items():  # per generator: real against that generator only
        sel = [p for p in ok if p in real or p in paths]
        yg = np.array([0 if p in real else 1 for p in sel])
        assert head["generators"][g]["auc"] == pytest.approx(roc_auc_score(yg, [scored[p].logit for p in sel]))
        assert head["generators"][g]["files"] == len(paths)
    for key in ("auc", "ap", "accuracy", "tpr_at_fpr_0.05"):
        low, high = head["ci"][key]
        assert low <= head[key] + 1e-12 and head[key] <= high + 1e-12 or key == "tpr_at_fpr_0.05"
    # seeded: the same run gives the same intervals
    rc2, again = run_evaluate(tmp_path, str(DEMO_MODEL), *folder_args(labelled))
    assert again["models"][0]["heads"]["detector"]["ci"] == head["ci"]


def test_a_labels_file_with_mos_gives_quality_correlations(labelled, tmp_path):
    rows = ["path,label,generator,mos"]
    files = sorted((labelled / "real").glob("photo_*.png"))[:12] + sorted((labelled / "renders").glob("*.png"))[:6]
    for i, p in enumerate(files):
        label = "real" if "photo" in p.name else "generated"
        rows.append(f"{p.relative_to(labelled)},{label},{'' if label == 'real' else 'render'},{1 + i % 5}")
    (labelled / "labels.csv").write_text("\n".join(rows) + "\n")
    rc, doc = run_evaluate(tmp_path, str(DEMO_MODEL), "--labels", str(labelled / "labels.csv"))
    assert rc == 0
    scored = plain_scores(DEMO_MODEL, [str(p) for p in files])
    mos = [1 + i % 5 for i in range(len(files))]
    quality = [scored[str(p)].quality for p in files]
    q = doc["models"][0]["heads"]["quality"]
    assert q["files"] == len(files) and q["failed"] == 0
    assert q["srcc"] == pytest.approx(spearmanr(mos, quality).statistic)
    assert q["plcc"] == pytest.approx(pearsonr(mos, quality).statistic)
    assert doc["counts"] == {"files": 18, "real": 12, "generated": 6, "with_mos": 18}


def test_user_mistakes_are_one_line_errors(labelled, tmp_path, capsys):
    assert main(["evaluate", str(DEMO_MODEL), "--labels", "x.csv", "--real", str(labelled / "real")]) == 2
    assert "either --labels" in capsys.readouterr().err
    assert main(["evaluate", str(DEMO_MODEL), "--real", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err
    bad = tmp_path / "bad.csv"
    bad.write_text("path,label\nx.png,maybe\n")
    assert main(["evaluate", str(DEMO_MODEL), "--labels", str(bad)]) == 2
    assert "label 'maybe'" in capsys.readouterr().err
    assert main(["evaluate", str(DEMO_MODEL), "--real", str(labelled / "real"), "--reference"]) == 2
    assert "--reference needs" in capsys.readouterr().err
    kept = tmp_path / "kept.html"
    kept.write_text("mine")
    assert main(["evaluate", str(DEMO_MODEL), "--real", str(labelled / "real"), "--html", str(kept)]) == 2
    assert "already exists" in capsys.readouterr().err and kept.read_text() == "mine"


def test_compare_prints_the_differences_and_the_page_has_its_curves(labelled, tmp_path, capsys):
    from clipscan.evaluation import set_threshold

    strict = tmp_path / "strict.onnx"  # same graph, a threshold for 5% FPR on other real images
    other = make_set(tmp_path / "other", 70, seed=11, generated=False)
    set_threshold(str(DEMO_MODEL), [str(other / "real")], 0.05, output=strict, backend="cpu")
    copy = tmp_path / "copy.onnx"
    shutil.copyfile(DEMO_MODEL, copy)
    page = tmp_path / "eval.html"
    rc, doc = run_evaluate(tmp_path, str(DEMO_MODEL), *folder_args(labelled), "--compare", str(copy), str(strict),
                           "--html", str(page))
    printed = capsys.readouterr().out
    assert [m["model"] for m in doc["models"]] == ["demo.onnx", "copy.onnx", "strict.onnx"]
    diffs = {(d["head"], d["metric"]): d["minus_first"] for d in doc["differences"]}
    assert diffs[("detector", "auc")] == [0.0, 0.0, 0.0], "the same graph ranks the same"
    assert diffs[("detector", "accuracy")][1] == 0.0
    t_strict = doc["models"][2]["heads"]["detector"]["threshold"]
    assert t_strict != 0.5
    assert "every model on the same 81 files" in printed and "- demo.onnx" in printed

    with browser_page() as tab:
        tab.goto(page.as_uri())
        assert tab.title().startswith("clipscan evaluate")
        for kind in ("roc", "pr"):
            lines = tab.locator(f"svg.curve.{kind} polyline")
            assert lines.count() == 3
            points = lines.first.get_attribute("points").split()
            assert len(points) >= 4, f"{kind} curve has its points"
            if kind == "roc":  # from (0, 0) to (1, 1) in the plot's pixels
                assert (points[0], points[-1]) == ("36.0,264.0", "304.0,36.0")
        assert tab.locator("svg.hist line.threshold").count() == 1
        bars = tab.locator("svg.hist rect.bar")
        assert bars.count() == 40 and sum(int(b.get_attribute("data-count")) for b in bars.all()) == 80
        assert tab.locator("#metrics-table tbody tr").count() == len(doc["differences"])
        assert "broken.jpg" in tab.locator("#failures").inner_text()


def test_the_guide_and_the_help_name_every_metric(capsys):
    from clipscan.evaluation.metrics import FPR_POINTS
    from clipscan.evaluation.tables import DECISION_KEYS, QUALITY_KEYS, TITLES

    from .conftest import REPO

    guide = (REPO / "docs" / "guides" / "evaluate.md").read_text()
    table = {line.split("|")[1].strip() for line in guide.splitlines() if line.startswith("| ")}
    assert {TITLES[k] for k in DECISION_KEYS} <= table
    assert all(k.upper() in guide for k in QUALITY_KEYS)
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert all(f"{100 * r:g}%" in help_text for r in FPR_POINTS) and "%%" not in help_text


def test_jsonl_labels_and_an_unknown_model_file(labelled, tmp_path, capsys):
    lines = [json.dumps({"path": str(p), "label": 0}) for p in sorted((labelled / "real").glob("photo_00*.png"))]
    lines += [json.dumps({"path": str(p), "label": "fake", "generator": "r"})
              for p in sorted((labelled / "renders").glob("*.png"))[:5]]
    (tmp_path / "l.jsonl").write_text("\n".join(lines))
    rc, doc = run_evaluate(tmp_path, str(DEMO_MODEL), "--labels", str(tmp_path / "l.jsonl"))
    assert rc == 0 and doc["models"][0]["heads"]["detector"]["generators"]["r"]["files"] == 5
    assert main(["evaluate", str(tmp_path / "none.onnx"), "--labels", str(tmp_path / "l.jsonl")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_every_decision_head_the_ensemble_row_and_an_attribution_head(labelled, tmp_path):
    """The demo graph read as two decision heads under the "any" rule: its detector, and an attribution head
    whose class probabilities are the embedding's 128 values (labels real, g0 .. g126): every head is
    evaluated, the row's decision too, and top-1 is the head's own answer against the true source."""
    from dataclasses import replace

    from sklearn.metrics import accuracy_score

    from clipscan.evaluation.onnx_write import write_with_manifest
    from clipscan.runtime import load_artifact
    from clipscan.runtime.manifest import HeadSpec

    manifest = load_artifact(DEMO_MODEL).manifest
    det = manifest.head("detection")
    labels = ("real", *(f"g{i}" for i in range(manifest.embedding["dim"] - 1)))
    attr = HeadSpec("attr", "attribution", {**det.outputs, "class_probs": manifest.embedding["output"]}, labels, 0.4)
    model = write_with_manifest(DEMO_MODEL, tmp_path / "two.onnx",
                                replace(manifest, heads=(*manifest.heads, attr),
                                        decision={"ensemble": "any"}).to_json())
    real = sorted(str(p) for p in (labelled / "real").iterdir())
    renders = sorted(str(p) for p in (labelled / "renders").iterdir())
    rc, doc = run_evaluate(tmp_path, str(model), "--real", str(labelled / "real"), "--generated",
                           f"g3={labelled / 'renders'}", "--generated", str(labelled / "renders_jpeg70"))
    heads = doc["models"][0]["heads"]
    assert set(heads) == {"detector", "quality", "attr", "decision"} and heads["decision"]["task"] == "ensemble (any)"
    scored = plain_scores(model, real + renders)
    truth, said = [], []
    for p, r in scored.items():
        truth.append("real" if p in real else "g3")
        said.append("(failed)" if not r.ok else r.heads["attr"]["generator"] if r.heads["attr"]["verdict"] ==
                    "generated" else "real")
    a = heads["attr"]["attribution"]
    assert a["top1"] == pytest.approx(accuracy_score(truth, said)) and a["failed"] == 1
    assert a["unknown_to_head"] == len(list((labelled / "renders_jpeg70").iterdir()))
    assert np.array(a["confusion"]).sum() == len(truth) and a["labels"][-1] == "(failed)"
    laundered = sorted(str(p) for p in (labelled / "renders_jpeg70").iterdir())
    every = {**scored, **plain_scores(model, laundered)}
    y = np.array([0 if p in real else 1 for p in every])
    rows = np.array([r.verdict == "generated" if r.ok else 1 - y[i] for i, r in enumerate(every.values())], int)
    assert heads["decision"]["accuracy"] == pytest.approx(float((rows == y).mean()))
    ok = np.array([r.ok for r in every.values()])
    assert heads["decision"]["auc"] == pytest.approx(roc_auc_score(y[ok], [r.logit for r in every.values() if r.ok]))
    assert heads["attr"]["threshold"] == 0.4 and heads["decision"]["threshold"] is None


@pytest.mark.slow
def test_the_pytorch_reference_and_the_fp32_artifact_agree_and_int8_differences_show(exported, tiny_model_files,
                                                                                     labelled, tmp_path, capsys):
    int8 = tmp_path / "int8.onnx"
    assert main(["calibrate", str(exported.path), "--images", str(labelled / "real"), "-o", str(int8), "-q"]) in (0, 1)
    capsys.readouterr()
    rc, doc = run_evaluate(tmp_path, str(exported.path), *folder_args(labelled), "--compare", str(int8), "--reference",
                           "--arch", str(tiny_model_files["config"]), "--weights", str(tiny_model_files["weights"]),
                           "--heads", str(tiny_model_files["heads"]))
    printed = capsys.readouterr().out
    fp32, quantized, torch_ = doc["models"]
    assert quantized["identity"]["precision"] == "int8" and torch_["model"] == "pytorch"
    assert [f["path"] for f in torch_["failed"]] == [f["path"] for f in fp32["failed"]]
    decision = [n for n, h in fp32["heads"].items() if h["task"] != "quality"]
    assert decision
    for name in decision:
        assert abs(fp32["heads"][name]["auc"] - torch_["heads"][name]["auc"]) <= 1e-4
        assert abs(fp32["heads"][name]["ap"] - torch_["heads"][name]["ap"]) <= 1e-4
    diffs = {(d["head"], d["metric"]): d for d in doc["differences"]}
    auc, head = diffs[(decision[0], "auc")], decision[0]
    assert auc["minus_first"][1] == pytest.approx(quantized["heads"][head]["auc"] - fp32["heads"][head]["auc"])
    assert f"{auc['minus_first'][1]:+.4f}" in printed and "int8.onnx" in printed and "pytorch" in printed
