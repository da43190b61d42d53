"""Build the bundled demo model (and the README's sample images) from scratch, offline.

    python -m clipscan.export.demo            # rewrites runtime/models/demo.onnx and samples/

The demo is a tiny open_clip ViT (3 layers, width 128, patch 32, 224 px) with
seeded random weights (the patch embedding seeded with a DCT basis), and heads fitted by clipscan's own code on images made
offline (see demo_data). It exists so `clipscan scan` works right after
`pip install clipscan`; its scores mean nothing about real generators.
"""
from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path

import numpy as np

from clipscan.runtime.fidelity_metrics import spearman
from clipscan.runtime.manifest import PreprocessSpec

from . import demo_data
from .backbone import build_visual
from .deps import require
from .exporter import ExportReport, export_model
from .fit import fit_detector, fit_quality_ridge
from .heads import save_heads

torch = require("torch")
log = logging.getLogger("clipscan.export.demo")

DEMO_CONFIG = {
    "embed_dim": 128,
    "quick_gelu": False,
    "vision_cfg": {"image_size": 224, "layers": 3, "width": 128, "head_width": 32, "patch_size": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 1000, "width": 64, "heads": 2, "layers": 1},
}
DEMO_SEED = 20261123
DESCRIPTION = ("DEMO ONLY: a tiny open_clip ViT with seeded random weights and heads fitted by clipscan on "
               "offline images (scikit-image photos vs procedural renders; a blur/JPEG/noise ladder for quality). "
               "It shows the pipeline works; it is not a detector of real generators.")


def dct_patch_embedding(visual) -> None:
    """Seed the patch embedding with a 2-D DCT basis (in luma and two chroma directions).

    A randomly initialised tower barely responds to sharpness or noise; with DCT
    filters its tokens carry the frequency content of each patch, which gives the
    demo's quality head something to fit. Deterministic, like the rest of the tower.
    """
    w = visual.conv1.weight
    channels, _, p, _ = w.shape
    n = np.arange(p)

    def basis(u):
        b = np.cos(np.pi * (2 * n + 1) * u / (2 * p))
        return b / np.linalg.norm(b)

    freqs = sorted(((u, v) for u in range(p) for v in range(p)), key=lambda t: (t[0] + t[1], t[0]))
    colours = np.array([[1, 1, 1], [1, -1, 0], [0.5, 0.5, -1]], np.float64)
    colours /= np.linalg.norm(colours, axis=1, keepdims=True)
    filters = np.zeros(w.shape)
    for c in range(channels):
        u, v = freqs[c // 3]
        filters[c] = colours[c % 3][:, None, None] * np.outer(basis(u), basis(v))[None] * 4.0
    with torch.no_grad():
        w.copy_(torch.from_numpy(filters).float())


def embed(visual, images, spec: PreprocessSpec, mean, std, batch: int = 32):
    """L2-normalised float64 embeddings, with clipscan's own (torch-free) preprocessing.

    The tower runs in float64 on one thread: float32 kernels (oneDNN, MKL) pick different
    instruction paths on different CPUs and round differently, and the heads fitted on these
    embeddings must come out the same on every machine that rebuilds the demo.
    """
    import copy

    from clipscan.runtime.manifest import InputSpec
    from clipscan.runtime.preprocess import Preprocessor

    pre = Preprocessor(spec, InputSpec("pixels", spec.crop_size, mean=tuple(mean), std=tuple(std)))
    tower = copy.deepcopy(visual).double()
    out = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            for i in range(0, len(images), batch):
                x = torch.from_numpy(np.stack([pre(im) for im in images[i:i + batch]])).double()
                out.append(torch.nn.functional.normalize(tower(x), dim=-1))
    finally:
        torch.set_num_threads(threads)
    return torch.cat(out)


def build_demo(out: Path, samples_dir: Path | None = None, *, n_per_class: int = 160, n_quality: int = 300) -> ExportReport:
    from .backbone import BackboneInfo, _preprocess_cfg
    from .exporter import preprocess_spec

    torch.manual_seed(DEMO_SEED)
    visual = build_visual(DEMO_CONFIG, quick_gelu=False).eval()
    dct_patch_embedding(visual)
    size = (224, 224)
    pp = _preprocess_cfg(DEMO_CONFIG, size)
    spec = preprocess_spec(BackboneInfo("demo", DEMO_CONFIG, "gelu", 128, size, pp))

    images, labels = demo_data.detector_set(n_per_class, seed=0)
    emb = embed(visual, images, spec, pp["mean"], pp["std"])
    detector = fit_detector(emb, torch.tensor(labels), label_names=("real", "generated"))
    q_images, q_scores = demo_data.quality_set(n_quality, seed=1)
    q_emb = embed(visual, q_images, spec, pp["mean"], pp["std"])
    quality = fit_quality_ridge(q_emb, torch.tensor(q_scores), hidden=1024, ridge=1e-3,
                                scale={"kind": "mos", "min": 1.0, "max": 5.0}, bounded=True)

    # held-out check, reported in the manifest description: other photos' crops, other render seeds
    val_images, val_labels = demo_data.detector_set(40, seed=7)
    with torch.no_grad():
        emb = emb.float()
        train_acc = float(((detector(emb)[1] > 0).long() == torch.tensor(labels)).float().mean())
        val_acc = float(((detector(embed(visual, val_images, spec, pp["mean"], pp["std"]).float())[1] > 0).long()
                         == torch.tensor(val_labels)).float().mean())
        v_images, v_scores = demo_data.quality_set(100, seed=5)
        val_srcc = spearman(quality(embed(visual, v_images, spec, pp["mean"], pp["std"]).float())[0].numpy(), v_scores)
    log.info("demo detector accuracy: train %.3f, held-out %.3f; quality SRCC held-out %.3f",
             train_acc, val_acc, val_srcc)

    with tempfile.TemporaryDirectory() as tmp:
        cfg_path = Path(tmp) / "clipscan-demo-vit.json"
        cfg_path.write_text(json.dumps(DEMO_CONFIG))
        weights = Path(tmp) / "demo_backbone.pt"
        torch.save({f"visual.{k}": v for k, v in visual.state_dict().items()}, str(weights))
        heads = Path(tmp) / "demo_heads.pt"
        save_heads(heads, detector, quality)
        report = export_model(str(cfg_path), weights, heads, out, name="clipscan-demo",
                              description=f"{DESCRIPTION} On its own offline data: detector accuracy "
                                          f"train {train_acc:.3f}, held-out {val_acc:.3f}; quality SRCC "
                                          f"held-out {val_srcc:.2f} (weak: random features).")
    if samples_dir is not None:
        write_samples(samples_dir)
    return report


def write_samples(folder: Path) -> list[Path]:
    """A few held-out images for the quickstart: two photos, two renders."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name in demo_data.SAMPLE_PHOTOS:
        p = folder / f"photo_{name}.jpg"
        demo_data.photo(name).save(p, "JPEG", quality=90)
        written.append(p)
    for seed in (900_001, 900_002):
        p = folder / f"render_{seed % 1000:03d}.png"
        demo_data.render(seed).save(p, "PNG")
        written.append(p)
    return written


def main(argv=None) -> int:
    here = Path(__file__).resolve().parent.parent
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=here / "runtime" / "models" / "demo.onnx")
    parser.add_argument("--samples", type=Path, default=here / "samples")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    report = build_demo(args.out, args.samples)
    print(f"wrote {report.path}: {report.checks}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
