"""DRCT (beibuwandeluori/DRCT): a checkpoint written as the authors' train.py saves ContrastiveModels over
clip-ViT-L-14 (the tiny tower in its place), given as published to --weights and --head drct:, scanned with the
runtime and compared with their model (network/models.py) and test transform (data/transform.py,
create_val_transforms with is_crop) re-expressed here."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from clipscan.cli import main
from clipscan.export.hf_clip import load_tower
from clipscan.export.importers import import_heads
from clipscan.runtime import Scanner

from .conftest import cosine, photo_images

nn = torch.nn
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
EMBEDDING_SIZE = 32


class CLIPModelV2(nn.Module):
    """network/models.py CLIPModelV2: `model` the whole CLIP (clip.load), `fc` Linear(CHANNELS, num_classes)."""

    def __init__(self, clip, num_classes):
        super().__init__()
        self.model = clip
        self.fc = nn.Linear(clip.visual.output_dim, num_classes)

    def forward(self, x):
        return self.fc(self.model.encode_image(x))


class ContrastiveModels(nn.Module):
    """network/models.py ContrastiveModels(embedding_size=E): `model` -> E features, `fc` Linear(E, 2)."""

    def __init__(self, clip):
        super().__init__()
        self.model = CLIPModelV2(clip, EMBEDDING_SIZE)
        self.fc = nn.Linear(EMBEDDING_SIZE, 2)

    def forward(self, x):
        return self.fc(self.model(x))


def drct_input(path) -> torch.Tensor:
    """create_val_transforms(224, is_crop=True): PadIfNeeded (zeros, centred), CenterCrop (offsets rounded down),
    Normalize (ImageNet, pixels / 255), ToTensorV2. cv2.imread + BGR2RGB decoding is PIL's here (no cv2 in the
    test environment; the photos are written by PIL)."""
    img = np.asarray(Image.open(path).convert("RGB"))
    h, w = img.shape[:2]
    top, left = max(224 - h, 0) // 2, max(224 - w, 0) // 2
    img = np.pad(img, ((top, max(224 - h, 0) - top), (left, max(224 - w, 0) - left), (0, 0)))
    h, w = img.shape[:2]
    y, x = (h - 224) // 2, (w - 224) // 2
    img = img[y:y + 224, x:x + 224].astype(np.float32)
    img = (img - np.float32(IMAGENET_MEAN) * 255) / (np.float32(IMAGENET_STD) * 255)
    return torch.from_numpy(img.transpose(2, 0, 1).copy())


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Real photos: margins around the crop of 3 (mod 4) pixels, where torchvision's rounding would differ, and a
    picture smaller than the crop (padded)."""
    d = tmp_path_factory.mktemp("drct_photos")
    for name, img in photo_images():
        img.save(d / f"{name}.png")
    photo_images()[0][1].crop((7, 3, 210, 400)).save(d / "narrow.png")
    return sorted(d.iterdir())


@pytest.fixture(scope="module")
def drct(tiny_model_files, photos, tmp_path_factory):
    """train.py's torch.save(model.state_dict()) of ContrastiveModels, and the same tensors as .safetensors."""
    from safetensors.torch import save_file

    d = tmp_path_factory.mktemp("drct")
    torch.manual_seed(43)
    model = ContrastiveModels(tiny_model_files["model"]).eval()
    x = torch.stack([drct_input(p) for p in photos])
    with torch.no_grad():
        nn.init.normal_(model.fc.weight, 0.0, 2.0)
        logits = model(x)
        margin = (logits[:, 1] - logits[:, 0]).sort().values
        model.fc.bias[1] -= margin[len(photos) // 2 - 1: len(photos) // 2 + 1].mean()   # photos on both sides
    state = model.state_dict()
    assert {k.split(".")[2] for k in state if k.startswith("model.model.")} >= {"visual", "transformer"}
    torch.save(state, str(d / "13_acc0.9664.pth"))
    save_file({k: v.contiguous() for k, v in state.items()}, str(d / "13_acc0.9664.safetensors"))
    return {"pth": d / "13_acc0.9664.pth", "safetensors": d / "13_acc0.9664.safetensors", "model": model}


@pytest.mark.slow
def test_drct_export_matches_the_authors_model(tiny_model_files, drct, photos, tmp_path):
    out = tmp_path / "drct.onnx"
    assert main(["export", "--weights", str(drct["pth"]), "--arch", str(tiny_model_files["config"]),
                 "--head", f"drct:{drct['pth']}", "-o", str(out)]) == 0
    with Scanner(out) as scanner:
        results = list(scanner.scan(photos))
        manifest = scanner.manifest
    pp = manifest.preprocess
    assert (pp.resize_mode, pp.crop_mode, pp.crop_offsets, pp.pad_fill) == ("none", "center", "floor", 0)
    assert tuple(manifest.input.mean) == IMAGENET_MEAN and manifest.heads[0].name == "drct"
    sides = [s for p in photos for s in Image.open(p).size if s > 224]
    assert any(round((s - 224) / 2.0) != (s - 224) // 2 for s in sides)   # torchvision's crop would differ
    x = torch.stack([drct_input(p) for p in photos])
    with torch.no_grad():
        p_ref = torch.softmax(drct["model"](x), dim=1)[:, 1].numpy()
        emb_ref = torch.nn.functional.normalize(drct["model"].model.model.encode_image(x), dim=-1).numpy()
    p = np.array([r.p_generated for r in results])
    assert cosine(np.stack([r.embedding for r in results]), emb_ref).min() >= 0.99999
    np.testing.assert_allclose(p, p_ref, atol=1e-5)
    assert [r.verdict == "generated" for r in results] == list(p_ref > 0.5)
    assert 0 < (p_ref > 0.5).sum() < len(photos)


def test_drct_file_loads_as_published_wrapped_or_as_safetensors(tiny_model_files, drct, tmp_path):
    """The same head from the .pth, the .safetensors and a {"state_dict": {"module." ...}} wrapping; the tower
    from the .safetensors equals the open_clip checkpoint's."""
    sd = torch.load(str(drct["pth"]), weights_only=True)
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"epoch": 13, "state_dict": {f"module.{k}": v for k, v in sd.items()}}, str(wrapped))
    visual, info = load_tower(str(tiny_model_files["config"]), drct["safetensors"])
    own = tiny_model_files["model"].visual.state_dict()
    assert all(torch.equal(v, own[k]) for k, v in visual.state_dict().items())
    heads = [import_heads([f"drct:{f}"], info).heads[0] for f in (drct["pth"], drct["safetensors"], wrapped)]
    for head in heads[1:]:
        assert torch.equal(head.linear.weight, heads[0].linear.weight)
        assert torch.equal(head.linear.bias, heads[0].linear.bias)
    # the folded Linear is the two Linears and the softmax's fake class
    emb = torch.randn(5, info.embed_dim)
    with torch.no_grad():
        want = torch.softmax(drct["model"].fc(drct["model"].model.fc(emb)), dim=1)[:, 1]
        got = heads[0](emb)[0]
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


def test_drct_tensor_that_maps_nowhere_is_refused_by_name(tiny_model_files, drct, tmp_path, capsys):
    sd = torch.load(str(drct["pth"]), weights_only=True)
    cases = {"extra": ({**sd, "model.fc2.weight": torch.zeros(2, 2)}, "tensor 'model.fc2.weight' is not part of"),
             "width": ({**sd, "model.fc.weight": torch.zeros(EMBEDDING_SIZE, 7)}, "model.fc.weight is [32, 7]"),
             "no head": ({k: v for k, v in sd.items() if not k.startswith("fc.")}, "missing ['fc.weight', 'fc.bias']")}
    for name, (state, message) in cases.items():
        bad = tmp_path / f"{name.replace(' ', '_')}.pth"
        torch.save(state, str(bad))
        rc = main(["export", "--weights", str(drct["pth"]), "--arch", str(tiny_model_files["config"]),
                   "--head", f"drct:{bad}", "-o", str(tmp_path / "x.onnx")])
        assert rc == 2 and message in capsys.readouterr().err, name


def test_crop_offsets_round_trip_through_the_manifest():
    from clipscan.runtime.errors import ManifestError
    from clipscan.runtime.manifest import PreprocessSpec

    assert "offsets" not in PreprocessSpec().to_dict()["crop"]           # manifests written before read the same
    floor = PreprocessSpec(resize_mode="none", crop_offsets="floor")
    assert PreprocessSpec.from_dict(floor.to_dict()) == floor
    bad = floor.to_dict()
    bad["crop"]["offsets"] = "ceil"
    with pytest.raises(ManifestError, match="offsets"):
        PreprocessSpec.from_dict(bad)
