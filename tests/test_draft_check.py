"""Per-artifact evidence for draft JPEG decoding: check, record in the manifest, `--decode auto` uses it."""
from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
from PIL import Image

from clipscan.calibration.draft_check import check_draft, record_draft
from clipscan.cli import main
from clipscan.runtime import Scanner, load_artifact


@pytest.fixture(scope="module")
def draft_images(tmp_path_factory):
    """5 JPEGs that draft decoding reduces (>= 2x the 224 target), plus a small JPEG and a large PNG it does not."""
    from clipscan.export import demo_data

    d = tmp_path_factory.mktemp("draft_images")
    names = list(demo_data.TRAIN_PHOTOS)[:5]
    for i, name in enumerate(names):
        demo_data.photo(name).convert("RGB").resize((1000 + 40 * i, 750), Image.Resampling.BICUBIC) \
            .save(d / f"big_{i}.jpg", quality=90)
    demo_data.photo("chelsea").convert("RGB").resize((300, 200)).save(d / "small.jpg", quality=90)
    demo_data.photo("coffee").convert("RGB").resize((1200, 900)).save(d / "large.png")
    return d


@pytest.fixture()
def artifact_copy(exported, tmp_path):
    out = tmp_path / "model.onnx"
    shutil.copy(exported.path, out)
    return out


def test_check_counts_only_the_files_draft_decoding_changes(exported, draft_images):
    res = check_draft(exported.path, [draft_images], min_images=3)
    assert res["n_images"] == 7 and res["n_affected"] == 5 and res["n_compared"] == 5
    assert res["agreement"] >= 0.995 and res["cosine_mean"] >= 0.999, res
    assert res["passed"] and "why" not in res and len(res["images_sha256"]) == 64
    # too few affected images to show agreement to 0.5%: not passed, and it says why
    strict = check_draft(exported.path, [draft_images])
    assert not strict["passed"] and "at least 200" in strict["why"]


def test_recorded_check_switches_auto_decoding_per_artifact(exported, artifact_copy, draft_images, capsys):
    record_draft(artifact_copy, check_draft(artifact_copy, [draft_images], min_images=3))
    m = load_artifact(artifact_copy).manifest
    assert m.draft_decoding_record()["passed"] is True
    with Scanner(artifact_copy, backend="cpu") as recorded, Scanner(exported.path, backend="cpu") as plain, \
            Scanner(artifact_copy, backend="cpu", decode="exact") as forced:
        assert recorded.decode == "draft" and "records draft decoding passing" in recorded.decode_reason
        assert plain.decode == "exact" and "no passing" in plain.decode_reason
        assert forced.decode == "exact"
    assert main(["info", str(artifact_copy)]) == 0
    assert "--decode auto uses draft" in capsys.readouterr().out
    # a failing record keeps auto on exact decoding
    record_draft(artifact_copy, {**m.draft_decoding_record(), "passed": False})
    with Scanner(artifact_copy, backend="cpu") as sc:
        assert sc.decode == "exact" and "did not pass" in sc.decode_reason


def test_check_on_a_model_that_needs_full_resolution(tmp_path, draft_images):
    """A recipe without resize (UnivFD's centre crop) never uses drafts: nothing to check, nothing passes."""
    from clipscan.export.onnx_writer import rewrite_manifest
    from clipscan.runtime.artifact import DEMO_MODEL

    model = tmp_path / "noresize.onnx"
    shutil.copy(DEMO_MODEL, model)
    m = load_artifact(model).manifest
    rewrite_manifest(model, dataclasses.replace(m, preprocess=dataclasses.replace(m.preprocess, resize_mode="none")))
    res = check_draft(model, [draft_images], min_images=1)
    assert not res["passed"] and res["n_affected"] == 0 and "full-resolution" in res["why"]


def test_cli_verify_records_the_draft_check(artifact_copy, tiny_model_files, draft_images, tmp_path, capsys):
    t = tiny_model_files
    rc = main(["verify", str(artifact_copy), "--images", str(draft_images), "--arch", str(t["config"]),
               "--weights", str(t["weights"]), "--heads", str(t["heads"]), "--no-launder", "--record-draft",
               "--draft-min-images", "3", "--report", str(tmp_path / "rep")])
    out = capsys.readouterr().out
    assert rc in (0, 1)  # the fidelity gates' verdict; the draft check does not change the exit code
    assert "draft JPEG decoding vs exact on 5 images" in out and "recorded in" in out
    saved = json.loads((tmp_path / "rep" / "draft_check.json").read_text())
    assert saved == load_artifact(artifact_copy).manifest.draft_decoding_record()
    assert saved["passed"] is True
    # the manifest was rewritten before the comparison: the report's sha256 is the file's as it is left
    from clipscan.runtime.artifact import file_sha256

    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert report["model"]["sha256"] == file_sha256(artifact_copy)


def test_quantized_model_does_not_inherit_the_record(artifact_copy, draft_images, tmp_path):
    """INT8 changes how the model reacts to decoding differences: its artifact starts without a record."""
    from clipscan.calibration import int8
    from clipscan.calibration.calib_data import load_calibration_set

    record_draft(artifact_copy, check_draft(artifact_copy, [draft_images], min_images=3))
    art = int8.load_artifact(artifact_copy)
    cset = load_calibration_set(art.manifest, art.sha256(), [draft_images], progress=False)
    res = int8.quantize_artifact(artifact_copy, tmp_path / "q.onnx", cset, int8.RECIPES["smooth"], progress=False)
    assert load_artifact(res.path).manifest.draft_decoding_record() is None
    with Scanner(res.path, backend="cpu") as sc:
        assert sc.decode == "exact"
