"""Export a small open_clip model and check the ONNX graph against the PyTorch model."""
from __future__ import annotations

import io
import json
import sys

import numpy as np
import onnx
import pytest
import torch
from PIL import Image, ImageOps

from clipscan.cli import main
from clipscan.runtime import Scanner, load_artifact

from .conftest import TINY_CONFIG, cosine


def reference_outputs(model_files, paths, manifest):
    """PyTorch model + open_clip's own transform, on the same decoded pixels."""
    import open_clip

    from clipscan.export.heads import load_heads

    model = model_files["model"]
    detector, quality = load_heads(model_files["heads"], TINY_CONFIG["embed_dim"])
    tf = open_clip.image_transform(224, is_train=False, mean=manifest.input.mean, std=manifest.input.std)
    pixels = []
    for p in paths:
        with Image.open(p) as im:
            pixels.append(tf(ImageOps.exif_transpose(im)))
    x = torch.stack(pixels)
    with torch.no_grad():
        emb = torch.nn.functional.normalize(model.encode_image(x), dim=-1)
        p, _ = detector(emb)
        return {"pixels": x.numpy(), "embedding": emb.numpy(), "p": p.numpy(), "quality": quality(emb)[0].numpy()}


def test_graph_structure(exported):
    model = onnx.load(str(exported.path))
    onnx.checker.check_model(model, full_check=True)
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("Conv") == 1, "one backbone pass: exactly one patch-embedding convolution"
    assert ops.count("LayerNormalization") == 2 * TINY_CONFIG["vision_cfg"]["layers"] + 2
    assert [i.name for i in model.graph.input] == ["pixels"]
    assert [o.name for o in model.graph.output] == ["p_generated", "logit_generated", "quality", "embedding"]
    for value in list(model.graph.input) + list(model.graph.output):
        assert value.type.tensor_type.shape.dim[0].dim_param == "batch"
        assert value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert not list(exported.path.parent.glob("*.data")), "weights must live inside the one .onnx file"
    manifest = json.loads({p.key: p.value for p in model.metadata_props}["clipscan.manifest"])
    assert manifest["precision"] == "fp32" and manifest["backbone"]["activation"] == "quick_gelu"
    assert manifest["decision"] == {"primary": "detector"}  # the default primary is recorded too, as documented
    assert manifest["sources"]["backbone_weights"]["sha256"] == load_artifact(exported.path).manifest.sources[
        "backbone_weights"]["sha256"]


def test_scan_matches_pytorch(exported, tiny_model_files, image_dir):
    """Runtime (PIL/numpy preprocessing + ONNX Runtime) against PyTorch + open_clip's transform."""
    paths = sorted(p for p in image_dir.rglob("*") if p.is_file())
    assert len(paths) == 6
    with Scanner(exported.path, batch_size=4) as scanner:
        results = list(scanner.scan(paths))
        ref = reference_outputs(tiny_model_files, paths, scanner.manifest)
        ours = np.concatenate([scanner.preprocess(ImageOps.exif_transpose(Image.open(p))) for p in paths])
    assert [r.error for r in results] == [None] * len(paths)
    assert [r.path for r in results] == [str(p) for p in paths], "results come back in input order"
    # preprocessing: bit-identical to open_clip's transform on these inputs
    assert np.array_equal(ours, ref["pixels"])
    emb = np.stack([r.embedding for r in results])
    cos = cosine(emb, ref["embedding"])
    assert cos.min() >= 0.99999, cos
    threshold = scanner.manifest.head("detection").threshold
    assert [r.verdict == "generated" for r in results] == list(ref["p"] >= threshold)
    np.testing.assert_allclose([r.p_generated for r in results], ref["p"], atol=1e-5)
    np.testing.assert_allclose([r.quality for r in results], ref["quality"], atol=1e-4, rtol=1e-5)


def test_dynamic_batch_gives_same_answers(exported, image_dir):
    paths = sorted(p for p in image_dir.rglob("*") if p.is_file())
    with Scanner(exported.path, batch_size=1) as one, Scanner(exported.path, batch_size=5) as five:
        a = [r.p_generated for r in one.scan(paths)]
        b = [r.p_generated for r in five.scan(paths)]
    np.testing.assert_allclose(a, b, atol=1e-6)


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_export_cli_and_info(tiny_model_files, tmp_path, capsys, monkeypatch):
    out = tmp_path / "cli.onnx"
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)  # stderr on a terminal: export shows its stages as a bar
    monkeypatch.setenv("COLUMNS", "200")  # wide enough for every stage's name, whatever terminal pytest runs in
    code = main(["export", "--arch", str(tiny_model_files["config"]), "--weights", str(tiny_model_files["weights"]),
                 "--heads", str(tiny_model_files["heads"]), "-o", str(out), "--name", "cli-model", "--threshold", "0.7"])
    monkeypatch.undo()
    assert code == 0 and out.is_file()
    assert "embedding cosine" in capsys.readouterr().out
    bar = terminal.getvalue()
    for stage in ("importing torch and open_clip", "loading the checkpoint and heads", "tracing to ONNX",
                  "checking the ONNX file against PyTorch"):
        assert stage in bar, bar
    assert "5/5" in bar and "errors" not in bar
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "cli-model" in text and "threshold=0.7" in text and "quick_gelu" in text
    # a heads file's source line names the heads it gave
    assert f"source       heads detector, quality: {tiny_model_files['heads'].name} sha256=" in text, text
    assert main(["info", str(out), "--json"]) == 0
    manifest = json.loads(capsys.readouterr().out)
    assert manifest["heads"][0]["threshold"] == 0.7
    assert manifest["input"]["normalize"]["mean"] == pytest.approx([0.48145466, 0.4578275, 0.40821073])


def test_visual_only_checkpoint_and_gelu_override(tiny_model_files, tmp_path):
    from clipscan.export import export_model

    model = tiny_model_files["model"]
    weights = tmp_path / "visual_only.pt"
    torch.save(model.visual.state_dict(), str(weights))
    report = export_model(str(tiny_model_files["config"]), weights, tiny_model_files["heads"], tmp_path / "g.onnx",
                          quick_gelu=False)
    assert report.manifest.backbone["activation"] == "gelu"
    assert report.checks["embedding_cosine_min"] >= 0.99999


def test_wrong_architecture_is_refused_with_a_useful_message(tiny_model_files, tmp_path):
    from clipscan.export import export_model

    bigger = dict(TINY_CONFIG, vision_cfg=dict(TINY_CONFIG["vision_cfg"], layers=3))
    cfg = tmp_path / "bigger.json"
    cfg.write_text(json.dumps(bigger))
    with pytest.raises(ValueError, match="does not match architecture"):
        export_model(str(cfg), tiny_model_files["weights"], tiny_model_files["heads"], tmp_path / "x.onnx")
    with pytest.raises(ValueError, match="unknown open_clip architecture 'ViT-B-33'"):
        export_model("ViT-B-33", tiny_model_files["weights"], tiny_model_files["heads"], tmp_path / "x.onnx")
    with pytest.raises(FileNotFoundError, match="never downloads"):
        export_model(str(tiny_model_files["config"]), tmp_path / "missing.pt", tiny_model_files["heads"],
                     tmp_path / "x.onnx")


def test_heads_that_do_not_fit_the_backbone_are_refused(tiny_model_files, tmp_path):
    from clipscan.export.heads import DetectorHead, load_heads, save_heads

    path = tmp_path / "wide_heads.pt"
    save_heads(path, DetectorHead(128), None)
    with pytest.raises(ValueError, match=r"do not fit an embedding of 48"):
        load_heads(path, 48)
    torch.save({"weight": torch.zeros(1, 64)}, str(tmp_path / "plain.pt"))
    with pytest.raises(ValueError, match="not a clipscan heads file"):
        load_heads(tmp_path / "plain.pt", 64)


def test_opset_23_fuses_attention(tiny_model_files, exported, image_dir, tmp_path):
    """At opset 23 the exporter writes ONNX's fused Attention op, which ONNX Runtime runs."""
    from clipscan.export import export_model

    out = tmp_path / "fused.onnx"
    export_model(str(tiny_model_files["config"]), tiny_model_files["weights"], tiny_model_files["heads"], out,
                 opset=23)
    ops = [n.op_type for n in onnx.load(str(out)).graph.node]
    assert ops.count("Attention") == TINY_CONFIG["vision_cfg"]["layers"] and "Softmax" not in ops
    paths = sorted(p for p in image_dir.rglob("*") if p.is_file())
    with Scanner(out) as fused, Scanner(exported.path) as plain:
        a, b = list(fused.scan(paths)), list(plain.scan(paths))
    assert cosine(np.stack([r.embedding for r in a]), np.stack([r.embedding for r in b])).min() >= 0.99999
    assert [r.verdict for r in a] == [r.verdict for r in b]


@pytest.mark.parametrize("flag", [["--threshold", "2.0"], ["--std", "0", "0.5", "0.5"]])
def test_export_refuses_a_manifest_the_runtime_would_refuse(tiny_model_files, tmp_path, capsys, flag):
    """The runtime's own manifest validator runs before anything is written."""
    out = tmp_path / "bad.onnx"
    code = main(["export", "--arch", str(tiny_model_files["config"]), "--weights", str(tiny_model_files["weights"]),
                 "--heads", str(tiny_model_files["heads"]), "-o", str(out), *flag])
    err = capsys.readouterr().err
    assert code == 2, err
    assert not out.exists() and list(tmp_path.iterdir()) == []
    assert ("threshold" if flag[0] == "--threshold" else "std") in err and "Traceback" not in err


def test_files_of_the_wrong_kind_get_one_sentence(tiny_model_files, tmp_path, capsys):
    """Wrong shapes name the tensor and the architectures that fit; non-checkpoints and unknown config keys say so."""
    import open_clip

    b32 = tmp_path / "b32.pt"
    torch.save(open_clip.create_model("ViT-B-32", pretrained=None).state_dict(), str(b32))
    text = tmp_path / "captions.json"
    text.write_text('{"classes": []}')
    bad_cfg = tmp_path / "cfg.json"
    bad_cfg.write_text(json.dumps({**TINY_CONFIG, "vision_cfg": {**TINY_CONFIG["vision_cfg"], "colour": 3}}))
    files = tiny_model_files
    cases = [
        (["--arch", "ViT-B-16", "--weights", str(b32), "--heads", str(files["heads"])],
         ["tensor 'positional_embedding' is [50, 768] in the weights but [197, 768]", "ViT-B-32"]),
        (["--arch", str(files["config"]), "--weights", str(text), "--heads", str(files["heads"])],
         ["captions.json is not a backbone checkpoint PyTorch can load"]),
        (["--arch", str(files["config"]), "--weights", str(files["weights"]), "--head", f"univfd:{text}"],
         ["captions.json is not a head checkpoint PyTorch can load"]),
        (["--arch", str(files["config"]), "--weights", str(files["weights"]), "--heads", str(text)],
         ["captions.json is not a clipscan heads file PyTorch can load"]),
        (["--arch", str(bad_cfg), "--weights", str(files["weights"]), "--heads", str(files["heads"])],
         ["vision_cfg has key(s) ['colour']", "known keys"]),
    ]
    for argv, says in cases:
        assert main(["export", *argv, "-o", str(tmp_path / "out.onnx")]) == 2
        err = capsys.readouterr().err
        assert all(s in err for s in says) and "Traceback" not in err, err
        assert not (tmp_path / "out.onnx").exists()


def test_an_opset_onnx_does_not_know_is_refused(tiny_model_files, tmp_path, capsys):
    files = tiny_model_files
    assert main(["export", "--arch", str(files["config"]), "--weights", str(files["weights"]), "--heads",
                 str(files["heads"]), "-o", str(tmp_path / "o.onnx"), "--opset", "30"]) == 2
    err = capsys.readouterr().err
    assert "--opset 30 is newer than the installed onnx" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []
