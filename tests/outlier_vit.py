"""A small CLIP ViT that quantizes like a trained one, and image folders to calibrate and validate it on.

Used by the INT8 tests and by tools/int8_study.py.

A randomly initialised CLIP has no outlier channels, so INT8 looks far better on it than on a
trained one. `inject_outliers` multiplies a few channels of every LayerNorm's gamma and beta that
feeds a Linear (ln_1 -> attention in-projection, ln_2 -> MLP c_fc, ln_post -> proj) by `factor`
and divides the matching input columns of that Linear by `factor`: the FP32 function is
unchanged, but the LayerNorm outputs now carry channels `factor` times larger than the rest,
as trained CLIPs do. `build_outlier_model` builds such a model, fits heads on it and exports it
to FP32 ONNX; `write_image_sets` writes calibration and validation folders split by source photo.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from clipscan.export.deps import require

torch = require("torch")


def _channels(width: int, n: int, rng: np.random.Generator) -> "torch.Tensor":
    return torch.as_tensor(np.sort(rng.choice(width, size=n, replace=False)))


@torch.no_grad()
def inject_outliers(visual, n_channels: int = 6, factor: float = 40.0, seed: int = 0) -> dict:
    """Inject outliers in place into an open_clip VisionTransformer; returns {layer: channels}."""
    rng = np.random.default_rng(seed)
    width = visual.transformer.width
    done: dict[str, list[int]] = {}

    def scale_ln(ln, ch):
        ln.weight[ch] *= factor
        ln.bias[ch] *= factor

    for i, block in enumerate(visual.transformer.resblocks):
        ch = _channels(width, n_channels, rng)
        scale_ln(block.ln_1, ch)
        attn = block.attn
        if getattr(attn, "in_proj_weight", None) is not None:
            attn.in_proj_weight[:, ch] /= factor       # Linear(width, 3 width): weight (out, in)
        else:  # separate q/k/v projections
            for name in ("q_proj_weight", "k_proj_weight", "v_proj_weight"):
                getattr(attn, name)[:, ch] /= factor
        done[f"resblocks.{i}.ln_1"] = ch.tolist()
        ch = _channels(width, n_channels, rng)
        scale_ln(block.ln_2, ch)
        block.mlp.c_fc.weight[:, ch] /= factor
        done[f"resblocks.{i}.ln_2"] = ch.tolist()
    if visual.proj is not None and getattr(visual, "ln_post", None) is not None:
        ch = _channels(width, n_channels, rng)
        scale_ln(visual.ln_post, ch)
        visual.proj[ch, :] /= factor                   # pooled @ proj: proj is (width, embed_dim)
        done["ln_post"] = ch.tolist()
    return done


CALIB_PHOTOS = ("astronaut", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry")
VAL_PHOTOS = ("retina", "camera", "coins", "chelsea", "motorcycle_left")


def build_outlier_model(workdir, cfg: dict, *, n_channels: int = 6, factor: float = 40.0,
                        seed: int = 7, fit_images: int = 24) -> dict:
    """Config, checkpoint, heads and FP32 ONNX export of a seeded open_clip ViT (open_clip config `cfg`)
    with injected outliers."""
    import open_clip

    from clipscan.export import demo_data, export_model
    from clipscan.export.fit import fit_detector, fit_quality
    from clipscan.export.heads import save_heads

    d = Path(workdir)
    d.mkdir(parents=True, exist_ok=True)
    cfg = dict(cfg)
    (d / "config.json").write_text(json.dumps(cfg))
    torch.manual_seed(seed)
    quick = bool(cfg.get("quick_gelu", False))
    model = open_clip.model.CLIP(**{k: v for k, v in cfg.items() if k not in ("quick_gelu", "custom_text")},
                                 quick_gelu=quick).eval()
    injected = inject_outliers(model.visual, n_channels=n_channels, factor=factor, seed=seed)
    torch.save({"state_dict": model.state_dict()}, str(d / "weights.pt"))
    images, labels = demo_data.detector_set(fit_images // 2, seed=3)
    q_images, q_scores = demo_data.quality_set(fit_images, seed=4)
    pp = open_clip.image_transform(cfg["vision_cfg"]["image_size"], is_train=False)
    with torch.no_grad():
        emb = torch.nn.functional.normalize(model.encode_image(torch.stack([pp(i) for i in images])), dim=-1)
        q_emb = torch.nn.functional.normalize(model.encode_image(torch.stack([pp(i) for i in q_images])), dim=-1)
    detector = fit_detector(emb, torch.tensor(labels))
    quality = fit_quality(q_emb, torch.tensor(q_scores), hidden=32, steps=300)
    save_heads(d / "heads.pt", detector, quality)
    report = export_model(str(d / "config.json"), d / "weights.pt", d / "heads.pt", d / "fp32.onnx",
                          name="outlier-vit")
    return {"config": d / "config.json", "weights": d / "weights.pt", "heads": d / "heads.pt",
            "onnx": report.path, "injected": injected}


def write_image_sets(workdir, n_calib: int = 32, n_val: int = 48, seed: int = 0) -> tuple[Path, Path]:
    """Calibration and validation folders, disjoint by source photo and render seed; photos, renders
    and distorted copies (so the detector and the quality head see a spread)."""
    from clipscan.export import demo_data

    rng = np.random.default_rng(seed)
    out = []
    for kind, photos, n, seed_base in (("calib", CALIB_PHOTOS, n_calib, 200_000), ("val", VAL_PHOTOS, n_val, 300_000)):
        folder = Path(workdir) / kind
        (folder / "sub").mkdir(parents=True, exist_ok=True)
        srcs = [demo_data.photo(p) for p in photos]
        for i in range(n):
            if i % 3 == 2:
                img = demo_data.render(seed_base + i)
            else:
                img = demo_data.augment(srcs[i % len(srcs)], rng)
            if i % 4 == 3:
                img = demo_data.distort(img, ("blur", "jpeg", "noise")[i % 3], 1 + i % 4)
            target = folder / ("sub" if i % 2 else "") / f"{kind}_{i:03d}.{'png' if i % 5 == 0 else 'jpg'}"
            img.convert("RGB").save(target)
        out.append(folder)
    return out[0], out[1]
