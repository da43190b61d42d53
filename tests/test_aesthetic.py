"""The LAION improved aesthetic predictor, written in its released layout, exported through the CLI, scanned with
the runtime and compared with its published inference (simple_inference.py) re-expressed here."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image
from scipy.stats import spearmanr

from clipscan.cli import main
from clipscan.runtime import Scanner

from .conftest import TINY_CONFIG, photo_images, seeded_clip

MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


class AestheticMLP(torch.nn.Module):
    """The predictor's layers as released (Linear layers with dropout between, no activation)."""

    def __init__(self, input_size):
        super().__init__()
        self.layers = torch.nn.Sequential(
            torch.nn.Linear(input_size, 1024), torch.nn.Dropout(0.2), torch.nn.Linear(1024, 128),
            torch.nn.Dropout(0.2), torch.nn.Linear(128, 64), torch.nn.Dropout(0.1), torch.nn.Linear(64, 16),
            torch.nn.Linear(16, 1))

    def forward(self, x):
        return self.layers(x)


def clip_preprocess():
    """clip.load's transform: Resize(224, bicubic), CenterCrop(224), RGB, ToTensor, Normalize."""
    return T.Compose([T.Resize(224, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(224),
                      lambda im: im.convert("RGB"), T.ToTensor(), T.Normalize(MEAN, STD)])


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("aesthetic")
    clip = seeded_clip(d, TINY_CONFIG, seed=41)
    torch.manual_seed(42)
    mlp = AestheticMLP(TINY_CONFIG["embed_dim"]).eval()
    with torch.no_grad():
        mlp.layers[7].bias += 5.0   # scores around the middle of the 1-10 scale
    torch.save(mlp.state_dict(), str(d / "sac+logos+ava1-l14-linearMSE.pth"))
    photos = d / "photos"
    photos.mkdir()
    for name, img in photo_images():
        img.save(photos / f"{name}.jpg", quality=92)
        img.crop((3, 17, img.width - 23, img.height // 2 + 5)).save(photos / f"{name}_wide.png")
    return {**clip, "mlp": mlp, "head": d / "sac+logos+ava1-l14-linearMSE.pth", "photos": sorted(photos.iterdir())}


def reference(setup) -> np.ndarray:
    x = torch.stack([clip_preprocess()(Image.open(p)) for p in setup["photos"]])
    with torch.no_grad():
        feats = setup["model"].encode_image(x).numpy()
    l2 = np.atleast_1d(np.linalg.norm(feats, 2, -1))
    l2[l2 == 0] = 1
    emb = feats / np.expand_dims(l2, -1)
    with torch.no_grad():
        return setup["mlp"](torch.from_numpy(emb).float()).squeeze(1).numpy()


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_laion_aesthetic_matches_its_published_inference(setup, tmp_path, precision):
    out = tmp_path / f"aes_{precision}.onnx"
    assert main(["export", "--arch", str(setup["config"]), "--weights", str(setup["weights"]),
                 "--head", f"laion-aesthetic:{setup['head']}", "--precision", precision, "-o", str(out)]) == 0
    with Scanner(out) as scanner:
        results = list(scanner.scan(setup["photos"]))
        head = scanner.manifest.heads[0]
    assert head.name == "laion_aesthetic" and head.scale == {"kind": "aesthetic", "min": 1.0, "max": 10.0}
    ref = reference(setup)
    got = np.array([r.quality for r in results])
    assert spearmanr(got, ref).statistic >= 0.9999
    np.testing.assert_allclose(got, ref, atol=1e-4 if precision == "fp32" else 5e-3)
    assert np.ptp(ref) > 1e-3, "the photos' scores differ, so the rank check means something"


def test_laion_aesthetic_of_another_width_is_refused(setup, tmp_path, capsys):
    sd = AestheticMLP(TINY_CONFIG["embed_dim"] + 2).state_dict()
    bad = tmp_path / "wide.pth"
    torch.save(sd, str(bad))
    rc = main(["export", "--arch", str(setup["config"]), "--weights", str(setup["weights"]),
               "--head", f"laion-aesthetic:{bad}", "-o", str(tmp_path / "x.onnx")])
    assert rc == 2 and "50 -> 1024 -> 128 -> 64 -> 16 -> 1" in capsys.readouterr().err
