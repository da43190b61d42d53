"""Heads in published formats, written by the tests in those exact formats, exported and checked."""
from __future__ import annotations

import copy
import json
from contextlib import contextmanager

import numpy as np
import onnx
import pytest
import torch
import torchvision.transforms as T
from PIL import Image, ImageOps

from clipscan.cli import main
from clipscan.export import export_model
from clipscan.export.heads import CustomHead
from clipscan.runtime import Scanner

from .conftest import TINY_CONFIG, cosine

MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
EMBED, WIDTH = TINY_CONFIG["embed_dim"], TINY_CONFIG["vision_cfg"]["width"]


@contextmanager
def saved_as_if_on_cuda():
    """torch.save records each tensor's device; released heads were saved from cuda:0."""
    original = torch.serialization.location_tag
    torch.serialization.location_tag = lambda storage: "cuda:0"
    try:
        yield
    finally:
        torch.serialization.location_tag = original


def images(folder):
    return sorted(p for p in folder.rglob("*") if p.is_file())


def decoded(path):
    with Image.open(path) as im:
        return ImageOps.exif_transpose(im).convert("RGB")


def scan(model, paths, **kw):
    with Scanner(model, **kw) as scanner:
        return list(scanner.scan(paths))


@pytest.fixture(scope="module")
def univfd_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("univfd") / "fc_weights.pth"
    gen = torch.Generator().manual_seed(11)
    with saved_as_if_on_cuda():
        torch.save({"weight": torch.randn(1, EMBED, generator=gen) * 3, "bias": torch.randn(1, generator=gen)},
                   str(path))
    return path


def test_univfd_file_is_really_a_cuda_file(univfd_file):
    if torch.cuda.is_available():
        pytest.fail("this check needs a machine without CUDA")
    with pytest.raises(RuntimeError, match="CUDA"):
        torch.load(str(univfd_file), weights_only=True)


def test_univfd_export_matches_its_reference_pipeline(tiny_model_files, univfd_file, image_dir, tmp_path):
    out = tmp_path / "univfd.onnx"
    assert main(["export", "--arch", str(tiny_model_files["config"]), "--weights", str(tiny_model_files["weights"]),
                 "--head", f"univfd:{univfd_file}", "-o", str(out)]) == 0
    paths = images(image_dir)
    results = scan(out, paths)
    manifest = json.loads({p.key: p.value for p in onnx.load(str(out)).metadata_props}["clipscan.manifest"])
    assert manifest["preprocess"]["resize"]["mode"] == "none" and manifest["preprocess"]["crop"]["mode"] == "center"
    # UnivFD's test pipeline: CenterCrop(224) on the RGB image, CLIP normalisation, projected CLS, fc, sigmoid
    sd = torch.load(str(univfd_file), map_location="cpu", weights_only=True)
    tf = T.Compose([T.CenterCrop(224), T.ToTensor(), T.Normalize(MEAN, STD)])
    x = torch.stack([tf(decoded(p)) for p in paths])
    with torch.no_grad():
        feats = tiny_model_files["model"].visual(x)
        p_ref = torch.sigmoid(feats @ sd["weight"].T + sd["bias"]).squeeze(1).numpy()
    assert [r.error for r in results] == [None] * len(paths)
    np.testing.assert_allclose([r.p_generated for r in results], p_ref, atol=2e-5)
    assert [r.verdict == "generated" for r in results] == list(p_ref >= 0.5)
    emb = np.stack([r.embedding for r in results])
    assert cosine(emb, torch.nn.functional.normalize(feats, dim=-1).numpy()).min() >= 0.99999


@pytest.fixture(scope="module")
def cozzolino_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cozzolino") / "synthbuster_clip.pth"
    gen = torch.Generator().manual_seed(12)
    torch.save({"fc.weight": torch.randn(1, WIDTH, generator=gen) * 4, "fc.bias": torch.tensor([0.1])}, str(path))
    return path


def cozzolino_reference(model, path_or_sd, paths):
    sd = torch.load(str(path_or_sd), map_location="cpu", weights_only=True)
    visual = copy.deepcopy(model.visual)
    visual.proj = None  # open_clip's own forward then returns the pooled token before the projection
    import open_clip

    tf = open_clip.image_transform(224, is_train=False, mean=MEAN, std=STD)
    x = torch.stack([tf(decoded(p)) for p in paths])
    with torch.no_grad():
        pre = torch.nn.functional.normalize(visual(x), dim=-1)
        return (pre @ sd["fc.weight"].T + sd["fc.bias"]).squeeze(1).numpy()


def test_cozzolino_export_gives_the_llr(tiny_model_files, cozzolino_file, image_dir, tmp_path):
    out = tmp_path / "cozzolino.onnx"
    report = export_model(str(tiny_model_files["config"]), tiny_model_files["weights"], f"cozzolino:{cozzolino_file}",
                          out)
    head = report.manifest.head("detection")
    assert "log-likelihood ratio" in head.description and head.threshold == 0.5
    paths = images(image_dir)
    llr = cozzolino_reference(tiny_model_files["model"], cozzolino_file, paths)
    results = scan(out, paths)
    np.testing.assert_allclose([r.logit for r in results], llr, atol=2e-5)
    assert [r.verdict == "generated" for r in results] == list(llr > 0)


def test_several_heads_share_one_backbone_pass(tiny_model_files, cozzolino_file, image_dir, tmp_path):
    out = tmp_path / "two_heads.onnx"
    export_model(str(tiny_model_files["config"]), tiny_model_files["weights"],
                 [tiny_model_files["heads"], f"cozzolino:{cozzolino_file}"], out)
    model = onnx.load(str(out))
    assert [n.op_type for n in model.graph.node].count("Conv") == 1
    assert [o.name for o in model.graph.output] == ["p_generated", "logit_generated", "quality",
                                                   "cozzolino_p_generated", "cozzolino_logit_generated", "embedding"]
    paths = images(image_dir)
    with Scanner(out) as scanner:
        outputs = scanner.predict(np.concatenate([scanner.preprocess(decoded(p)) for p in paths]))
    np.testing.assert_allclose(outputs["cozzolino_logit_generated"],
                               cozzolino_reference(tiny_model_files["model"], cozzolino_file, paths), atol=2e-5)


def test_heads_with_different_preprocessing_are_refused(tiny_model_files, univfd_file, tmp_path):
    with pytest.raises(ValueError, match="different preprocessing.*separate artifacts"):
        export_model(str(tiny_model_files["config"]), tiny_model_files["weights"],
                     [tiny_model_files["heads"], f"univfd:{univfd_file}"], tmp_path / "x.onnx")


def test_head_that_does_not_fit_the_backbone(tiny_model_files, cozzolino_file, tmp_path):
    with pytest.raises(ValueError, match=r"expected one UnivFD fc Linear\(48, 1\).*Check that the backbone"):
        export_model(str(tiny_model_files["config"]), tiny_model_files["weights"], f"univfd:{cozzolino_file}",
                     tmp_path / "x.onnx")
    with pytest.raises(ValueError, match="unknown head format 'unifd'"):
        export_model(str(tiny_model_files["config"]), tiny_model_files["weights"], "unifd:x.pth", tmp_path / "x.onnx")


def test_uint8_input_folds_normalisation(tiny_model_files, image_dir, tmp_path, exported):
    out = tmp_path / "uint8.onnx"
    report = export_model(str(tiny_model_files["config"]), tiny_model_files["weights"], tiny_model_files["heads"],
                          out, uint8_input=True)
    graph = onnx.load(str(out)).graph
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert report.manifest.input.folded and report.manifest.input.dtype == "uint8"
    paths = images(image_dir)
    folded, plain = scan(out, paths), scan(exported.path, paths)
    assert cosine(np.stack([r.embedding for r in folded]), np.stack([r.embedding for r in plain])).min() >= 0.99999
    assert [r.verdict for r in folded] == [r.verdict for r in plain]
    np.testing.assert_allclose([r.quality for r in folded], [r.quality for r in plain], atol=1e-3)


def test_in_house_torch_head(tiny_model_files, image_dir, tmp_path):
    torch.manual_seed(5)
    mlp = torch.nn.Sequential(torch.nn.Linear(EMBED, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    head = CustomHead(mlp, "detection", feature="proj", name="inhouse", threshold=0.4)
    out = tmp_path / "inhouse.onnx"
    export_model(str(tiny_model_files["config"]), tiny_model_files["weights"], [head], out)
    paths = images(image_dir)
    import open_clip

    tf = open_clip.image_transform(224, is_train=False, mean=MEAN, std=STD)
    with torch.no_grad():
        logit = mlp(tiny_model_files["model"].visual(torch.stack([tf(decoded(p)) for p in paths]))).squeeze(1).numpy()
    results = scan(out, paths)
    np.testing.assert_allclose([r.logit for r in results], logit, atol=2e-5)
    assert [r.verdict == "generated" for r in results] == list(1 / (1 + np.exp(-logit)) >= 0.4)
