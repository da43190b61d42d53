"""Heads published on Hugging Face CLIP towers, written in their authors' checkpoint layout, exported through
the CLI, scanned with the runtime and compared with the authors' inference re-expressed here."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image

from clipscan.cli import main
from clipscan.runtime import Scanner

from .conftest import cosine, photo_images

transformers = pytest.importorskip("transformers", reason="transformers is the reference of these tests (test extra)")

MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
VISION = {"hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 2,
          "image_size": 224, "patch_size": 32, "hidden_act": "quick_gelu"}
TEXT = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
        "vocab_size": 49408, "max_position_embeddings": 16}
PROJ = 48


class C2PReference(torch.nn.Module):
    """C2P-CLIP's model as its inference.py builds it: a CLIPModel without its text side, plus model.fc."""

    def __init__(self, clip):
        super().__init__()
        self.model = clip
        del self.model.text_model, self.model.text_projection, self.model.logit_scale
        self.model.fc = torch.nn.Linear(PROJ, 1)

    def forward(self, img):
        pooled = self.model.vision_model(pixel_values=img).pooler_output
        emb = self.model.visual_projection(pooled)
        emb = emb / emb.norm(p=2, dim=-1, keepdim=True)
        return self.model.fc(emb), emb


def c2p_transform():
    """data.py: Resize(loadSize) (torchvision's default bilinear), CenterCrop(cropSize), ToTensor, Normalize."""
    return T.Compose([T.Resize(224), T.CenterCrop(224), T.ToTensor(), T.Normalize(MEAN, STD)])


def load_rgb(path):
    with open(path, "rb") as f:   # their pil_loader: convert("RGB"), no EXIF handling (the photos have none)
        return Image.open(f).convert("RGB")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    d = tmp_path_factory.mktemp("c2p_photos")
    for name, img in photo_images():
        img.save(d / f"{name}.jpg", quality=92)
        img.crop((5, 9, img.width - 41, img.height // 2 + 3)).save(d / f"{name}_wide.png")
    return sorted(d.iterdir())


@pytest.fixture(scope="module")
def c2p(tmp_path_factory, photos):
    """A C2P-CLIP checkpoint in the released layout (torch.save of the whole state dict), its config, reference."""
    d = tmp_path_factory.mktemp("c2p")
    torch.manual_seed(31)
    clip = transformers.CLIPModel(transformers.CLIPConfig(text_config=TEXT, vision_config=VISION,
                                                          projection_dim=PROJ)).eval()
    clip.config.save_pretrained(str(d))          # the tower's config, as --arch
    model = C2PReference(clip).eval()
    torch.nn.init.normal_(model.model.fc.weight, 0.0, 3.0)
    x = torch.stack([c2p_transform()(load_rgb(p)) for p in photos])
    with torch.no_grad():
        logit, _ = model(x)
        mid = logit.flatten().sort().values[len(photos) // 2 - 1: len(photos) // 2 + 1].mean()
        model.model.fc.bias.copy_(model.model.fc.bias - mid)   # half the photos each side, none on the threshold
    torch.save(model.state_dict(), str(d / "C2P_CLIP_release.pth"))
    assert {k.split(".")[1] for k in model.state_dict()} == {"vision_model", "visual_projection", "fc"}
    return {"file": d / "C2P_CLIP_release.pth", "config": d / "config.json", "model": model}


def reference(model, photos):
    x = torch.stack([c2p_transform()(load_rgb(p)) for p in photos])
    with torch.no_grad():
        logit, emb = model(x)
    return torch.sigmoid(logit).squeeze(1).numpy(), emb.numpy()


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_c2p_clip_export_matches_the_authors_inference(c2p, photos, tmp_path, precision):
    out = tmp_path / f"c2p_{precision}.onnx"
    assert main(["export", "--weights", str(c2p["file"]), "--arch", str(c2p["config"]),
                 "--head", f"c2p-clip:{c2p['file']}", "--precision", precision, "-o", str(out)]) == 0
    with Scanner(out) as scanner:
        results = list(scanner.scan(photos))
        manifest = scanner.manifest
    assert manifest.preprocess.interpolation == "bilinear" and manifest.preprocess.resize_mode == "shortest"
    assert manifest.heads[0].name == "c2p_clip" and manifest.backbone["activation"] == "quick_gelu"
    p_ref, emb_ref = reference(c2p["model"], photos)
    p = np.array([r.p_generated for r in results])
    emb = np.stack([r.embedding for r in results])
    if precision == "fp32":
        assert cosine(emb, emb_ref).min() >= 0.99999
        np.testing.assert_allclose(p, p_ref, atol=1e-4)
    else:   # the export itself refuses an FP16 file that fails the FP16 gates; here: against the authors' code
        assert cosine(emb, emb_ref).min() >= 0.999
    assert [r.verdict == "generated" for r in results] == list(p_ref > 0.5)
    assert 0 < (p_ref > 0.5).sum() < len(photos)


def test_c2p_clip_head_of_another_width_is_refused(c2p, tmp_path, capsys):
    sd = torch.load(str(c2p["file"]), weights_only=True)
    sd["model.fc.weight"] = torch.zeros(1, PROJ + 1)
    bad = tmp_path / "bad.pth"
    torch.save(sd, str(bad))
    rc = main(["export", "--weights", str(c2p["file"]), "--arch", str(c2p["config"]),
               "--head", f"c2p-clip:{bad}", "-o", str(tmp_path / "x.onnx")])
    assert rc == 2 and "model.fc.weight is [1, 49]" in capsys.readouterr().err


class SVDResidual(torch.nn.Module):
    """Effort's SVDResidualLinear, re-expressed: a fixed main weight (top singular components) plus a trained
    residual U diag(S) V built from the remaining ones."""

    def __init__(self, linear, keep):
        super().__init__()
        u, s, vh = torch.linalg.svd(linear.weight.data, full_matrices=False)
        self.weight_main = torch.nn.Parameter(u[:, :keep] @ torch.diag(s[:keep]) @ vh[:keep], requires_grad=False)
        self.bias = torch.nn.Parameter(linear.bias.data.clone())
        self.U_residual = torch.nn.Parameter(u[:, keep:].clone())
        self.S_residual = torch.nn.Parameter(s[keep:].clone())
        self.V_residual = torch.nn.Parameter(vh[keep:].clone())
        self.U_r = torch.nn.Parameter(u[:, :keep].clone(), requires_grad=False)
        self.S_r = torch.nn.Parameter(s[:keep].clone(), requires_grad=False)
        self.V_r = torch.nn.Parameter(vh[:keep].clone(), requires_grad=False)

    def forward(self, x):
        weight = self.weight_main + self.U_residual @ torch.diag(self.S_residual) @ self.V_residual
        return torch.nn.functional.linear(x, weight, self.bias)


class EffortReference(torch.nn.Module):
    """Effort's detector: the CLIP vision transformer with SVD attention projections, pooled output, head."""

    def __init__(self, vision_model, width):
        super().__init__()
        for layer in vision_model.encoder.layers:
            for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
                setattr(layer.self_attn, name, SVDResidual(getattr(layer.self_attn, name), width - 1))
        self.backbone = vision_model
        self.head = torch.nn.Linear(width, 2)

    def forward(self, img):
        logits = self.head(self.backbone(pixel_values=img).pooler_output)
        return torch.softmax(logits, dim=1)[:, 1]


def effort_transform():
    """The demo: the RGB image resized to 224x224 (bilinear), ToTensor, CLIP Normalize. (Its OpenCV resize
    does not antialias; PIL's bilinear filter, which clipscan applies, does.)"""
    return T.Compose([lambda im: im.resize((224, 224), Image.Resampling.BILINEAR), T.ToTensor(),
                      T.Normalize(MEAN, STD)])


@pytest.fixture(scope="module")
def effort(tmp_path_factory, photos):
    d = tmp_path_factory.mktemp("effort")
    torch.manual_seed(51)
    clip = transformers.CLIPModel(transformers.CLIPConfig(text_config=TEXT, vision_config=VISION,
                                                          projection_dim=PROJ)).eval()
    clip.config.save_pretrained(str(d))
    width = VISION["hidden_size"]
    model = EffortReference(clip.vision_model, width).eval()
    gen = torch.Generator().manual_seed(52)
    with torch.no_grad():   # what fine-tuning changes: the residual factors
        for m in model.modules():
            if isinstance(m, SVDResidual):
                m.S_residual.add_(0.5)
                m.U_residual.add_(torch.randn(m.U_residual.shape, generator=gen) * 0.3)
                m.V_residual.add_(torch.randn(m.V_residual.shape, generator=gen) * 0.3)
        model.head.weight.normal_(0.0, 3.0, generator=gen)
        x = torch.stack([effort_transform()(load_rgb(p)) for p in photos])
        margin = model.head(model.backbone(pixel_values=x).pooler_output)
        margin = (margin[:, 1] - margin[:, 0]).sort().values
        model.head.bias[1] -= margin[len(photos) // 2 - 1: len(photos) // 2 + 1].mean()
    state = {f"module.{k}": v for k, v in model.state_dict().items()}   # DataParallel's prefix, as released
    assert any(k.endswith("self_attn.q_proj.U_residual") for k in state) and "module.head.weight" in state
    torch.save(state, str(d / "effort_clip_L14.pth"))
    return {"file": d / "effort_clip_L14.pth", "config": d / "config.json", "model": model}


@pytest.mark.slow
def test_effort_export_matches_the_authors_inference(effort, photos, tmp_path):
    out = tmp_path / "effort.onnx"
    assert main(["export", "--weights", str(effort["file"]), "--arch", str(effort["config"]),
                 "--head", f"effort:{effort['file']}", "-o", str(out)]) == 0
    with Scanner(out) as scanner:
        results = list(scanner.scan(photos))
        manifest = scanner.manifest
    assert manifest.preprocess.resize_mode == "squash" and manifest.preprocess.interpolation == "bilinear"
    x = torch.stack([effort_transform()(load_rgb(p)) for p in photos])
    with torch.no_grad():
        p_ref = effort["model"](x).numpy()
        pooled = effort["model"].backbone(pixel_values=x).pooler_output.numpy()
    assert cosine(np.stack([r.embedding for r in results]), pooled).min() >= 0.99999
    np.testing.assert_allclose([r.p_generated for r in results], p_ref, atol=1e-4)
    assert [r.verdict == "generated" for r in results] == list(p_ref > 0.5)
    assert 0 < (p_ref > 0.5).sum() < len(photos)


@pytest.mark.slow
@pytest.mark.parametrize("head", ["c2p-clip", "laion-aesthetic"])
def test_int8_on_a_hf_tower_passes_the_gates(c2p, tmp_path, monkeypatch, head):
    """The INT8 (and FP16) path on a Hugging Face tower: calibrate reads the original through the same loader."""
    from clipscan.runtime import load_artifact

    from .outlier_vit import write_image_sets
    from .test_aesthetic import AestheticMLP

    monkeypatch.setenv("CLIPSCAN_CACHE_DIR", str(tmp_path / "cache"))
    calib, val = write_image_sets(tmp_path, n_calib=16, n_val=32)
    fp32 = tmp_path / "fp32.onnx"
    head_file = c2p["file"]
    if head == "laion-aesthetic":
        torch.manual_seed(61)
        head_file = tmp_path / "aesthetic.pth"
        torch.save(AestheticMLP(PROJ).state_dict(), str(head_file))
    original = ["--weights", str(c2p["file"]), "--arch", str(c2p["config"]), "--head", f"{head}:{head_file}"]
    assert main(["export", *original, "-o", str(fp32)]) == 0
    if head == "laion-aesthetic":   # FP16 on the HF tower too (c2p-clip's is above): export refuses a failing file
        assert main(["export", *original, "--precision", "fp16", "-o", str(tmp_path / "fp16.onnx")]) == 0
    out = tmp_path / "c2p_int8.onnx"
    rc = main(["calibrate", str(fp32), "--images", str(calib), "-o", str(out), "--val-images", str(val),
               *original, "--no-launder", "--report", str(tmp_path / "report")])
    fid = load_artifact(out).manifest.calibration["fidelity"]
    gates = {g["name"]: g for g in fid["gates"]}
    assert rc == 0 and fid["passed"], fid["failed_gates"]
    gate = "agreement:c2p_clip" if head == "c2p-clip" else "srcc:laion_aesthetic"
    assert {"cosine_mean", "cosine_worst", gate} <= set(gates) and gates[gate]["passed"]


def test_every_head_format_is_named_in_the_help_and_the_docs():
    from pathlib import Path

    from clipscan.export.choices import HEAD_FORMATS
    from clipscan.export.importers import IMPORTERS

    # the --help side is tests/test_one_source.py's (the help is built from HEAD_FORMATS)
    assert {"c2p-clip", "effort", "laion-aesthetic"} <= set(IMPORTERS) == set(HEAD_FORMATS)
    table = (Path(__file__).resolve().parent.parent / "docs" / "guides" / "export.md").read_text()
    for fmt in IMPORTERS:
        assert f"| `{fmt}` |" in table, fmt
