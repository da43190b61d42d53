"""The manifest inside the artifact: written, read back without onnx, validated, versioned."""
from __future__ import annotations

import json
import time

import onnx
import pytest

from clipscan.cli import main
from clipscan.runtime import ManifestError, ModelError, Scanner, load_artifact
from clipscan.runtime.artifact import DEMO_MODEL
from clipscan.runtime.manifest import METADATA_KEY, Manifest
from clipscan.runtime.onnx_meta import read_onnx_header

from .triton_helpers import free_closed_port


def rewrite_manifest(src, dst, edit):
    model = onnx.load(str(src))
    props = {p.key: p for p in model.metadata_props}
    data = json.loads(props[METADATA_KEY].value)
    edit(data)
    props[METADATA_KEY].value = json.dumps(data)
    onnx.save(model, str(dst))
    return dst


def test_header_reader_agrees_with_onnx():
    header = read_onnx_header(DEMO_MODEL)
    model = onnx.load(str(DEMO_MODEL), load_external_data=False)
    assert header.metadata == {p.key: p.value for p in model.metadata_props}
    assert header.ir_version == model.ir_version
    assert header.opsets == {o.domain: o.version for o in model.opset_import}
    assert header.producer_name == "clipscan"


def test_manifest_round_trip_and_fields():
    m = load_artifact(DEMO_MODEL).manifest
    again = Manifest.from_json(m.to_json())
    assert again == m
    d = m.to_dict()
    for key in ("schema_version", "heads", "input", "preprocess", "backbone", "precision", "tools", "sources"):
        assert key in d
    assert d["input"]["layout"] == "NCHW" and d["input"]["dtype"] == "float32"
    assert d["preprocess"]["resize"] == {"mode": "shortest", "size": [224, 224], "interpolation": "bicubic"}
    assert d["backbone"]["activation"] in ("gelu", "quick_gelu")
    assert len(d["sources"]["backbone_weights"]["sha256"]) == 64
    assert {h["task"] for h in d["heads"]} == {"detection", "quality"}


def test_newer_schema_is_refused_with_what_to_do(tmp_path, capsys):
    path = rewrite_manifest(DEMO_MODEL, tmp_path / "future.onnx", lambda d: d.update(schema_version=99))
    with pytest.raises(ManifestError, match=r"schema version 99; this clipscan reads version\(s\) \[1\].*pip install -U clipscan"):
        Scanner(path)
    assert main(["info", str(path)]) == 2
    assert "pip install -U clipscan" in capsys.readouterr().err


def test_invalid_fields_are_named(tmp_path):
    def bad_threshold(d):
        d["heads"][0]["threshold"] = 3
    path = rewrite_manifest(DEMO_MODEL, tmp_path / "bad.onnx", bad_threshold)
    with pytest.raises(ManifestError, match=r"heads\[0\]\.threshold"):
        load_artifact(path)

    def bad_resize(d):
        d["preprocess"]["resize"]["mode"] = "stretchy"
    path = rewrite_manifest(DEMO_MODEL, tmp_path / "bad2.onnx", bad_resize)
    with pytest.raises(ManifestError, match=r"preprocess\.resize\.mode.*'stretchy'.*shortest"):
        load_artifact(path)


def test_not_an_artifact(tmp_path):
    plain = tmp_path / "plain.onnx"
    model = onnx.load(str(DEMO_MODEL))
    del model.metadata_props[:]
    onnx.save(model, str(plain))
    with pytest.raises(ModelError, match="carries no clipscan manifest.*clipscan export"):
        load_artifact(plain)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00\x01garbage" * 10)
    with pytest.raises(ModelError, match="not a readable ONNX file"):
        load_artifact(junk)
    with pytest.raises(ModelError, match="does not exist"):
        load_artifact(tmp_path / "nope.onnx")
    with pytest.raises(ModelError, match="is a directory"):
        load_artifact(tmp_path)


def test_manifest_output_names_must_exist_in_graph(tmp_path):
    def rename(d):
        d["heads"][0]["outputs"]["probability"] = "p_fake"
    path = rewrite_manifest(DEMO_MODEL, tmp_path / "renamed.onnx", rename)
    with pytest.raises(ModelError, match=r"outputs \['p_fake'\] that the graph lacks"):
        Scanner(path)


# ---- hostile manifests (#29.7): every size bounded, every field typed, one sentence everywhere ----

def _set(path: str, value):
    """An edit that sets the dotted `path` (list indices as numbers) of the manifest to `value`."""
    def edit(d):
        keys = [int(k) if k.isdigit() else k for k in path.split(".")]
        for k in keys[:-1]:
            d = d[k]
        d[keys[-1]] = value
    return edit


def _drop(path: str):
    def edit(d):
        keys = path.split(".")
        for k in keys[:-1]:
            d = d[k]
        del d[keys[-1]]
    return edit


def LIMIT(key: str) -> str:  # noqa: N802 - reads like the table it quotes
    from clipscan.runtime.manifest import MANIFEST_LIMITS
    return str(MANIFEST_LIMITS[key].value)


def _tiny_png(tmp_path):
    from PIL import Image
    path = tmp_path / "small.png"
    Image.new("RGB", (64, 48), (120, 30, 200)).save(path)
    return path


def test_a_huge_resize_is_refused_before_any_pixel_is_made(tmp_path, capsys):
    """[60000, 60000] took 69 s and 18.4 GB for a 64x48 PNG; now one sentence naming field, value and limit."""
    from clipscan.runtime.manifest import MANIFEST_LIMITS
    model = rewrite_manifest(DEMO_MODEL, tmp_path / "huge.onnx", _set("preprocess.resize.size", [60000, 60000]))
    png = _tiny_png(tmp_path)
    start = time.monotonic()
    assert main(["scan", "-m", str(model), str(png), "-o", str(tmp_path / "rows.jsonl")]) == 2
    assert time.monotonic() - start < 10
    err = capsys.readouterr().err.strip()
    limit = MANIFEST_LIMITS["image_side"].value
    assert "preprocess.resize.size" in err and "[60000, 60000]" in err and str(limit) in err, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "rows.jsonl").exists()
    with pytest.raises(ManifestError, match=rf"preprocess\.resize\.size' is \[60000, 60000\], over .* {LIMIT('image_side')}"):
        Scanner(model)


@pytest.mark.parametrize("edit, words", [
    (_set("preprocess.resize.size", 4097), ["preprocess.resize.size", "4097", LIMIT("image_side")]),
    (_set("preprocess.crop.size", [5000, 224]), ["preprocess.crop.size", "5000", LIMIT("image_side")]),
    (_set("input.size", [224, 99999]), ["input.size", "99999", LIMIT("image_side")]),
    (lambda d: (_set("input.size", [4096, 4096])(d), _set("preprocess.crop.size", [4096, 4096])(d),
                _set("preprocess.crop.mode", "sliding")(d), _set("preprocess.crop.stride", 64)(d),
                _set("preprocess.crop.max_per_axis", 2)(d), _set("preprocess.crop.aggregate", "mean")(d)),
     ["input.size", "model pixels per image", LIMIT("pixels_per_image")]),
    (lambda d: (_set("preprocess.crop.mode", "sliding")(d), _set("preprocess.crop.stride", 64)(d),
                _set("preprocess.crop.max_per_axis", 1000)(d), _set("preprocess.crop.aggregate", "mean")(d)),
     ["preprocess.crop.max_per_axis", "1000", LIMIT("windows_per_axis")]),
    (lambda d: (_set("preprocess.crop.mode", "sliding")(d), _set("preprocess.crop.stride", 10**6)(d),
                _set("preprocess.crop.max_per_axis", 2)(d), _set("preprocess.crop.aggregate", "mean")(d)),
     ["preprocess.crop.stride", "1000000", LIMIT("image_side")]),
    (_set("preprocess.graph_crops", {"size": [224, 224], "stride": 32, "origins": [[0, 0]] * 300,
                                     "aggregate": "mean_normalized_embedding"}),
     ["preprocess.graph_crops.origins", "300 entries", LIMIT("graph_crops")]),
    (_set("preprocess.graph_crops", {"size": [224, 224], "stride": 32, "origins": [[0, 0], [0, 32]],
                                     "aggregate": "mean_normalized_embedding"}),
     ["preprocess.graph_crops.origins", "[0, 32]", "inside the 224x224 input"]),
    (_set("preprocess.graph_crops", {"size": [224, 224], "stride": 32, "origins": [[0, 0]], "aggregate": "max"}),
     ["preprocess.graph_crops.aggregate", "'max'", "mean_normalized_embedding"]),
    (_set("embedding.dim", 10**9), ["embedding.dim", "1000000000", LIMIT("embedding_dim")]),
    (lambda d: d["heads"].extend(dict(d["heads"][1], name=f"q{i}") for i in range(70)),
     ["manifest field 'heads' has 72 entries", LIMIT("heads")]),
    (lambda d: d["heads"][0].update(task="attribution", labels=[f"g{i}" for i in range(2000)],
                                    outputs=dict(d["heads"][0]["outputs"], class_probs="p_generated")),
     ["heads[0].labels' has 2000 entries", LIMIT("labels")]),
    (_set("name", "n" * 300), ["manifest.name", "300 characters", LIMIT("name_chars")]),
    (_set("heads.0.labels", ["real", "x" * 1000]), ["heads[0].labels[1]", "1000 characters", LIMIT("name_chars")]),
    (_set("description", "d" * 100_000), ["description", "100000 characters", LIMIT("text_chars")]),
    (_set("opset", 10**6), ["opset", "1000000", LIMIT("opset")]),
    (_set("preprocess.crop.size", [200, 200]), ["preprocess.crop.size", "[200, 200]", "input.size"]),
    (_set("preprocess.crop.mode", "none"), ["preprocess.crop.mode", "'shortest'", "squash"]),
    (_set("backbone.config", json.loads("[" * 40 + "]" * 40)), ["nests", LIMIT("json_depth")]),
    (_set("input.normalize.std", [0.2, float("nan"), 0.3]), ["input.normalize.std[1]", "finite", "nan"]),
])
def test_every_size_and_count_is_bounded(tmp_path, edit, words):
    path = rewrite_manifest(DEMO_MODEL, tmp_path / "bounded.onnx", edit)
    with pytest.raises(ManifestError) as info:
        load_artifact(path)
    message = str(info.value)
    assert all(w in message for w in words), message
    assert "\n" not in message


def test_manifest_text_itself_is_bounded(tmp_path):
    text = load_artifact(DEMO_MODEL).header.metadata[METADATA_KEY]
    with pytest.raises(ManifestError, match=f"over clipscan's limit of {LIMIT('manifest_chars')}"):
        Manifest.from_json(text[:-1] + " " * int(LIMIT("manifest_chars")) + "}")
    with pytest.raises(ManifestError, match="nests too deeply"):
        Manifest.from_json("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ManifestError, match="not valid JSON"):
        Manifest.from_json('{"format": ' + "9" * 5000 + "}")


def test_limits_are_one_table():
    """The limits are data (the docs read them); the messages quote the same values."""
    from clipscan.runtime.manifest import MANIFEST_LIMITS
    for key, lim in MANIFEST_LIMITS.items():
        assert isinstance(lim.value, int) and lim.value > 0 and lim.applies_to, key


MALFORMED = {
    "tools_list": _set("tools", ["torch", "2.6"]),
    "sources_int": _set("sources", 7),
    "source_not_object": _set("sources.heads", "x.pt"),
    "embedding_without_dim": _drop("embedding.dim"),
    "embedding_dim_text": _set("embedding.dim", "128"),
    "embedding_list": _set("embedding", ["embedding", 128]),
    "heads_object": _set("heads", {"0": {}}),
    "head_not_object": _set("heads.0", "detector"),
    "outputs_list": _set("heads.0.outputs", ["p_generated"]),
    "scale_min_text": _set("heads.1.scale.min", "low"),
    "description_object": _set("description", {"x": 1}),
    "calibration_list": _set("calibration", [1]),
    "decoding_text": _set("decoding", "draft"),
    "threshold_bool": _set("heads.0.threshold", True),
    "input_not_object": _set("input", "pixels"),
    "normalize_short": _set("input.normalize.mean", [0.5]),
    "created_number": _set("created_utc", 20260101),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
@pytest.mark.parametrize("command", ["scan", "info", "serve", "triton"])
def test_malformed_manifests_end_in_one_sentence(tmp_path, capsys, case, command):
    model = str(rewrite_manifest(DEMO_MODEL, tmp_path / f"{case}.onnx", MALFORMED[case]))
    argv = {"scan": ["scan", "-m", model, str(_tiny_png(tmp_path))], "info": ["info", model],
            "serve": ["serve", model, "--port", str(free_closed_port())],
            "triton": ["triton", model, "--repo", str(tmp_path / "repo")]}
    assert main(argv[command]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"clipscan {command}: error: {model}: manifest field"), err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "repo").exists()
