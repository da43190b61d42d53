"""Shared fixtures: a tiny open_clip model with seeded weights, heads fitted by clipscan, its export."""
from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from . import workers

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "samples"


def pytest_configure(config):
    """CLIPSCAN_TEST_ORT_THREADS=N runs every ONNX Runtime session of the suite with N intra-op threads.

    Tolerances must hold whatever kernels and reduction orders ONNX Runtime picks; running the
    suite with N=1 (and OMP_NUM_THREADS=1 for torch) is one way to show it. Sessions that
    subprocesses create are not affected.

    Under pytest-xdist the files go to the workers in collection order (tests/workers.py).
    """
    workers.keep_collection_order(config)
    threads = os.environ.get("CLIPSCAN_TEST_ORT_THREADS")
    if not threads:
        return
    import onnxruntime as ort

    original = ort.InferenceSession.__init__

    def init(self, path_or_bytes, sess_options=None, *args, **kwargs):
        sess_options = sess_options or ort.SessionOptions()
        sess_options.intra_op_num_threads = int(threads)
        original(self, path_or_bytes, sess_options, *args, **kwargs)

    ort.InferenceSession.__init__ = init


def pytest_collection_modifyitems(config, items):
    workers.slow_files_first(items)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """Under pytest-xdist an `alone` test runs with no other test beside it (tests/workers.py)."""
    with workers.TURNS.around(item, nextitem):
        yield

# A small ViT in open_clip's config format; QuickGELU as in OpenAI checkpoints.
TINY_CONFIG = {
    "embed_dim": 48,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "head_width": 32, "patch_size": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 500, "width": 32, "heads": 2, "layers": 1},
}


def photo_images() -> list[tuple[str, Image.Image]]:
    from clipscan.export import demo_data

    return [(n, demo_data.photo(n)) for n in ("astronaut", "coffee", "chelsea", "rocket")]


@pytest.fixture(scope="session")
def tiny_model_files(tmp_path_factory):
    """(config.json, full open_clip checkpoint, heads file, torch CLIP model) written like a user's files."""
    import torch
    import open_clip

    from clipscan.export import demo_data
    from clipscan.export.fit import fit_detector, fit_quality
    from clipscan.export.heads import save_heads

    d = tmp_path_factory.mktemp("tiny_model")
    cfg_path = d / "tiny-vit.json"
    cfg_path.write_text(json.dumps(TINY_CONFIG))
    torch.manual_seed(7)
    cfg = {k: v for k, v in TINY_CONFIG.items() if k != "quick_gelu"}
    model = open_clip.model.CLIP(**cfg, quick_gelu=True).eval()
    ckpt = d / "tiny_clip.pt"
    # the layout open_clip's training script writes: {"epoch", "state_dict" with "module." prefixes}
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, str(ckpt))

    images, labels = demo_data.detector_set(24, seed=3)
    q_images, q_scores = demo_data.quality_set(40, seed=4)
    preprocess = open_clip.image_transform(224, is_train=False)
    with torch.no_grad():
        emb = torch.nn.functional.normalize(model.encode_image(torch.stack([preprocess(i) for i in images])), dim=-1)
        q_emb = torch.nn.functional.normalize(model.encode_image(torch.stack([preprocess(i) for i in q_images])), dim=-1)
    detector = fit_detector(emb, torch.tensor(labels))
    quality = fit_quality(q_emb, torch.tensor(q_scores), hidden=16, steps=300)
    heads = d / "heads.pt"
    save_heads(heads, detector, quality)
    return {"config": cfg_path, "weights": ckpt, "heads": heads, "model": model, "dir": d}


@pytest.fixture(scope="session")
def exported(tiny_model_files, tmp_path_factory):
    """The tiny model exported through the public API, plus the PyTorch module it came from."""
    from clipscan.export import export_model

    out = tmp_path_factory.mktemp("export") / "tiny.onnx"
    report = export_model(str(tiny_model_files["config"]), tiny_model_files["weights"], tiny_model_files["heads"], out,
                          name="tiny-test")
    return report


@pytest.fixture(scope="session")
def multi_head_model(tmp_path_factory) -> Path:
    """The demo graph under a three-decision-head manifest, as a univfd + cozzolino + captions export reads:
    `univfd` (detection, threshold 0.5) decides the row; `cozzolino` reads the same logit at 0.1, so it calls
    generated photos the row calls real; `captions` (attribution: the embedding's 128 values as its class
    probabilities, labels real, sdxl, midjourney, g3 ...) at 0.85 names a generator only for the most likely
    generated images; the quality head stays. Written in a few milliseconds: no export."""
    from dataclasses import replace

    from clipscan.evaluation.onnx_write import write_with_manifest
    from clipscan.runtime import load_artifact
    from clipscan.runtime.manifest import HeadSpec

    manifest = load_artifact(None).manifest
    det = manifest.head("detection")
    labels = ("real", "sdxl", "midjourney", *(f"g{i}" for i in range(3, manifest.embedding["dim"])))
    heads = (replace(det, name="univfd"), replace(det, name="cozzolino", threshold=0.1),
             HeadSpec("captions", "attribution", {**det.outputs, "class_probs": manifest.embedding["output"]},
                      labels, 0.85), manifest.head("quality"))
    out = tmp_path_factory.mktemp("multi_head") / "three-heads.onnx"
    return write_with_manifest(load_artifact(None).path, out,
                               replace(manifest, name="three-heads", heads=heads).to_json())


@pytest.fixture
def image_dir(tmp_path) -> Path:
    """A folder of real photos in several formats and sizes."""
    d = tmp_path / "images"
    (d / "nested" / "deeper").mkdir(parents=True)
    for i, (name, img) in enumerate(photo_images()):
        target = d / ("nested" if i % 2 else "") / f"{name}.jpg"
        img.save(target, "JPEG", quality=92)
    photo_images()[0][1].resize((100, 300)).save(d / "nested" / "deeper" / "tall.png")
    photo_images()[1][1].convert("L").save(d / "gray.png")
    return d


def jpeg_bytes(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", **kw)
    return buf.getvalue()


def blocked_env(tmp_path: Path, blocked: tuple[str, ...], why: str, folder: str = "blocked_site") -> dict:
    """Environment for a subprocess in which importing any of `blocked` (top-level names) fails, saying `why`."""
    site = tmp_path / folder
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(
        "import sys\n"
        f"BLOCKED = {tuple(blocked)!r}\n"
        "class _Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in BLOCKED:\n"
        f"            raise ImportError(f'{{name}} is blocked: {why}')\n"
        "        return None\n"
        "sys.meta_path.insert(0, _Block())\n"
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = str(site) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def block_torch_env(tmp_path: Path) -> dict:
    """Environment for a subprocess in which importing torch, torchvision, open_clip or onnx fails."""
    return blocked_env(tmp_path, ("torch", "torchvision", "open_clip", "onnx", "onnxscript"),
                       "this process simulates a base install without torch", "no_torch_site")


def cosine(a, b) -> np.ndarray:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def seeded_clip(folder: Path, config: dict, seed: int, *, heads_dim: int | None = None) -> dict:
    """An open_clip CLIP built from `config` with seeded random weights, written like a user's files:
    cfg.json, w.pt (state dict) and, with `heads_dim`, an unfitted clipscan heads file heads.pt."""
    import torch
    import open_clip

    folder = Path(folder)
    (folder / "cfg.json").write_text(json.dumps(config))
    torch.manual_seed(seed)
    model = open_clip.model.CLIP(**{k: v for k, v in config.items() if k != "quick_gelu"},
                                 quick_gelu=bool(config.get("quick_gelu", False)))
    torch.save(model.state_dict(), str(folder / "w.pt"))
    out = {"config": folder / "cfg.json", "weights": folder / "w.pt", "model": model, "dir": folder}
    if heads_dim:
        from clipscan.export.heads import DetectorHead, QualityHead, save_heads

        save_heads(folder / "heads.pt", DetectorHead(heads_dim), QualityHead([heads_dim, 8, 1]))
        out["heads"] = folder / "heads.pt"
    return out
