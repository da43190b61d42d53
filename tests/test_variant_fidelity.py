"""The bar of the export stage: every variant's FP32 export passes the FP32 gates and its FP16 export
the FP16 gates, measured by `verify` against the PyTorch original on real images.

All variants sit on one small CLIP with a text tower (seeded weights); their head files are written
in each format by the test.
"""
from __future__ import annotations

import json

import pytest
import torch

from clipscan.calibration.verify import verify
from clipscan.export import export_model, load_reference
from clipscan.export.heads import CustomHead, DetectorHead, QualityHead, save_heads
from clipscan.runtime import load_artifact

from .test_prompt_heads import TEXT_CONFIG

EMBED, WIDTH = TEXT_CONFIG["embed_dim"], TEXT_CONFIG["vision_cfg"]["width"]
LAYERS = TEXT_CONFIG["vision_cfg"]["layers"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    import open_clip

    from clipscan.export import demo_data

    d = tmp_path_factory.mktemp("variants")
    (d / "cfg.json").write_text(json.dumps(TEXT_CONFIG))
    torch.manual_seed(31)
    model = open_clip.model.CLIP(**{k: v for k, v in TEXT_CONFIG.items() if k != "quick_gelu"}, quick_gelu=True)
    with torch.no_grad():
        model.logit_scale.fill_(float(torch.log(torch.tensor(100.0))))  # what trained CLIPs end with
    torch.save(model.state_dict(), str(d / "clip.pt"))
    gen = torch.Generator().manual_seed(32)

    def randn(*shape, scale=1.0):
        return torch.randn(*shape, generator=gen) * scale

    heads = {}
    detector, quality = DetectorHead(EMBED), QualityHead([EMBED, 16, 1])
    save_heads(d / "clipscan_heads.pt", detector, quality)
    heads["clipscan"] = str(d / "clipscan_heads.pt")
    torch.save({"weight": randn(1, EMBED, scale=3), "bias": randn(1)}, str(d / "univfd.pth"))
    heads["univfd"] = f"univfd:{d / 'univfd.pth'}"
    torch.save({"fc.weight": randn(1, WIDTH, scale=4), "fc.bias": randn(1)}, str(d / "cozzolino.pth"))
    heads["cozzolino"] = f"cozzolino:{d / 'cozzolino.pth'}"
    torch.save({"prompt_learner.ctx": randn(16, 32, scale=0.02), "mlp.0.weight": randn(24, EMBED * 7, scale=0.3),
                "mlp.0.bias": randn(24), "mlp.2.weight": randn(1, 24), "mlp.2.bias": randn(1)}, str(d / "tang.pth"))
    heads["agiqa-tang"] = f"agiqa-tang:{d / 'tang.pth'}"
    torch.save({"visual_prompt": randn(LAYERS, 4, WIDTH, scale=0.5), "prompt_learner.ctx": randn(8, 32, scale=0.02)},
               str(d / "fu.pth"))
    heads["agiqa-fu"] = f"agiqa-fu:{d / 'fu.pth'}"
    (d / "captions.json").write_text(json.dumps({"classes": [
        {"label": "real", "caption": "a real photograph"}, {"label": "sdxl", "caption": "made by stable diffusion"},
        {"label": "midjourney", "caption": "an image made with midjourney"}], "logit_scale": 40.0}))
    heads["captions"] = f"captions:{d / 'captions.json'}"
    torch.manual_seed(33)
    heads["in-house"] = CustomHead(torch.nn.Sequential(torch.nn.Linear(EMBED, 8), torch.nn.Tanh(),
                                                       torch.nn.Linear(8, 1)), "detection", feature="proj")

    images = d / "images"
    images.mkdir()
    pictures, _ = demo_data.detector_set(20, seed=9)
    for i, img in enumerate(pictures):
        img.save(images / f"img_{i:03d}.png")
    demo_data.photo("chelsea").resize((150, 100)).save(images / "small_photo.jpg")  # smaller than the crop
    return {"dir": d, "heads": heads, "images": images}


# Heads with one preprocessing recipe share one export (one backbone pass, as users ship them); UnivFD's own
# recipe is a centre crop without resize, and agiqa-fu's visual prompts and sliding crops change the tower's
# forward, so each of those is exported alone, as it was published.
GROUPS = {"shortest-side": ["clipscan", "cozzolino", "agiqa-tang", "captions", "in-house"],
          "univfd": ["univfd"], "agiqa-fu": ["agiqa-fu"]}


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("group", list(GROUPS))
def test_variant_passes_its_precision_gates(setup, group, precision, tmp_path):
    cfg, weights = str(setup["dir"] / "cfg.json"), setup["dir"] / "clip.pt"
    heads = [setup["heads"][variant] for variant in GROUPS[group]]
    out = tmp_path / f"{group}_{precision}.onnx"
    export_model(cfg, weights, heads, out, precision=precision)
    report = verify(out, load_reference(cfg, weights, heads), setup["images"], tmp_path / "report",
                    launder=["jpeg75"])
    print(f"\n{group} {precision}:\n{report.summary()}")
    assert report.passed, [f"{g.name}: {g.value} vs {g.threshold} ({g.note})" for g in report.failed_gates()]
    # every head of every variant was held to its own gate, not only the embedding
    gated = {g.name.split(":", 1)[1] for g in report.gates if ":" in g.name}
    named = {h.name for h in load_artifact(out).manifest.heads}
    assert named <= gated, (named, gated)
    assert len(named) >= len(GROUPS[group]), named
    assert (tmp_path / "report" / "report.html").is_file()
