"""The manifest inside the artifact: written, read back without onnx, validated, versioned."""
from __future__ import annotations

import json

import onnx
import pytest

from clipscan.cli import main
from clipscan.runtime import ManifestError, ModelError, Scanner, load_artifact
from clipscan.runtime.artifact import DEMO_MODEL
from clipscan.runtime.manifest import METADATA_KEY, Manifest
from clipscan.runtime.onnx_meta import read_onnx_header


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
