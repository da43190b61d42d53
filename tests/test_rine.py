"""RINE (mever-team/rine): a checkpoint written in the authors' layout, exported through the CLI (lean FP32 from
a .safetensors, FP16 on the stock graph from their .pth pickle), scanned with the runtime and compared with
the authors' model (src/models.py) and test transform (src/utils.py) re-expressed here on the tiny tower."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image

from clipscan.cli import main
from clipscan.export.graph import TappedVisual
from clipscan.runtime import Scanner

from .conftest import cosine, photo_images

nn = torch.nn
MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
NPROJ, PROJ_DIM = 2, 16


class Hook:
    def __init__(self, module):
        self.hook = module.register_forward_hook(self.keep)

    def keep(self, module, args, output):
        self.output = output


class RineReference(nn.Module):
    """src/models.py's Model with the tiny open_clip CLIP in place of clip.load("ViT-L/14")."""

    def __init__(self, clip, width):
        super().__init__()
        self.clip = clip
        self.hooks = [Hook(m) for name, m in self.clip.visual.named_modules() if "ln_2" in name]
        self.alpha = nn.Parameter(torch.randn([1, len(self.hooks), PROJ_DIM]))
        proj1, proj2 = [nn.Dropout()], [nn.Dropout()]
        for i in range(NPROJ):
            proj1 += [nn.Linear(width if i == 0 else PROJ_DIM, PROJ_DIM), nn.ReLU(), nn.Dropout()]
            proj2 += [nn.Linear(PROJ_DIM, PROJ_DIM), nn.ReLU(), nn.Dropout()]
        self.proj1, self.proj2 = nn.Sequential(*proj1), nn.Sequential(*proj2)
        self.head = nn.Sequential(nn.Linear(PROJ_DIM, PROJ_DIM), nn.ReLU(), nn.Dropout(),
                                  nn.Linear(PROJ_DIM, PROJ_DIM), nn.ReLU(), nn.Dropout(), nn.Linear(PROJ_DIM, 1))

    def forward(self, x):
        with torch.no_grad():
            self.clip.encode_image(x)
            # OpenAI CLIP's blocks run sequence-first (tokens, batch, width), open_clip's batch-first: the
            # hooked outputs are put in OpenAI's layout before the authors' stack(dim=2)[0] picks the CLS token
            g = torch.stack([h.output.transpose(0, 1) for h in self.hooks], dim=2)[0, :, :, :]
        g = self.proj1(g.float())
        z = torch.sum(torch.softmax(self.alpha, dim=1) * g, dim=1)
        z = self.proj2(z)
        return self.head(z), z


def rine_transform():
    """src/utils.py transforms_test_1: CenterCrop(224) (no resize), ToTensor, CLIP Normalize."""
    return T.Compose([T.CenterCrop(224), T.ToTensor(), T.Normalize(MEAN, STD)])


def load_rgb(path):
    return Image.open(path).convert("RGB")          # demo/demo.py


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Real photos: sides with odd and even margins around the crop, and one smaller than the crop (padded)."""
    d = tmp_path_factory.mktemp("rine_photos")
    for name, img in photo_images():
        img.save(d / f"{name}.jpg", quality=92)
    photo_images()[2][1].crop((10, 20, 190, 281)).save(d / "small.png")
    return sorted(d.iterdir())


@pytest.fixture(scope="module")
def rine(tiny_model_files, photos, tmp_path_factory):
    """The trainable part saved as their train_one_experiment(store=True) does, as .pth and .safetensors."""
    from safetensors.torch import save_file

    d = tmp_path_factory.mktemp("rine")
    torch.manual_seed(41)
    clip = copy.deepcopy(tiny_model_files["model"])        # its hooks stay off the session's model
    model = RineReference(clip, clip.visual.transformer.width).eval()
    x = torch.stack([rine_transform()(load_rgb(p)) for p in photos])
    with torch.no_grad():
        nn.init.normal_(model.head[6].weight, 0.0, 3.0)
        logit = model(x)[0].flatten()
        mid = logit.sort().values[len(photos) // 2 - 1: len(photos) // 2 + 1].mean()
        model.head[6].bias.sub_(mid)               # half the photos each side, none on the threshold
    trainable = {k: v.clone() for k, v in model.state_dict().items() if "clip" not in k}
    assert sorted({k.split(".")[0] for k in trainable}) == ["alpha", "head", "proj1", "proj2"]
    torch.save(trainable, str(d / "model_1class_trainable.pth"))
    save_file(trainable, str(d / "model_1class_trainable.safetensors"))
    return {"pth": d / "model_1class_trainable.pth", "safetensors": d / "model_1class_trainable.safetensors",
            "model": model}


def reference(model, photos):
    x = torch.stack([rine_transform()(load_rgb(p)) for p in photos])
    with torch.no_grad():
        logit, _ = model(x)
        emb = torch.nn.functional.normalize(model.clip.encode_image(x), dim=-1)
    return torch.sigmoid(logit).squeeze(1).numpy(), emb.numpy()


@pytest.mark.parametrize("lean", [False, True])
def test_ln2_tap_matches_hooks_on_open_clips_forward(tiny_model_files, photos, lean):
    visual = tiny_model_files["model"].visual.eval()
    x = torch.stack([rine_transform()(load_rgb(p)) for p in photos[:3]])
    hooks = [Hook(b.ln_2) for b in visual.transformer.resblocks]
    try:
        with torch.no_grad():
            want = visual(x)
    finally:
        for h in hooks:
            h.hook.remove()
    got = []
    with torch.no_grad():
        _, projected, _, _ = TappedVisual(visual, lean=lean).forward_with_taps(x, set(), got)
    assert torch.allclose(projected, want, atol=1e-5) and len(got) == len(hooks)
    for tap, hook in zip(got, hooks):
        assert torch.allclose(tap, hook.output[:, 0], atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("precision,file", [("fp32", "safetensors"), ("fp16", "pth")])
def test_rine_export_matches_the_authors_model(tiny_model_files, rine, photos, tmp_path, precision, file):
    out = tmp_path / f"rine_{precision}.onnx"
    assert main(["export", "--weights", str(tiny_model_files["weights"]), "--arch", str(tiny_model_files["config"]),
                 "--head", f"rine:{rine[file]}", "--precision", precision, "-o", str(out)]) == 0
    with Scanner(out) as scanner:
        results = list(scanner.scan(photos))
        manifest = scanner.manifest
    pp = manifest.preprocess
    assert (pp.resize_mode, pp.crop_mode, pp.crop_offsets) == ("none", "center", "round")
    assert tuple(manifest.input.mean) == MEAN and manifest.heads[0].name == "rine"
    assert manifest.heads[0].details == {"blocks": 2, "proj_dim": PROJ_DIM, "nproj": NPROJ}
    p_ref, emb_ref = reference(rine["model"], photos)
    p = np.array([r.p_generated for r in results])
    emb = np.stack([r.embedding for r in results])
    cos = cosine(emb, emb_ref)
    if precision == "fp32":
        assert cos.min() >= 0.99999
        np.testing.assert_allclose(p, p_ref, atol=1e-5)
        # INT8 calibration quantizes the graph with the tap (its own gates need --val-images: not run here)
        int8 = tmp_path / "rine_int8.onnx"
        assert main(["calibrate", str(out), "--images", str(photos[0].parent), "-o", str(int8), "--no-cache",
                     "--no-progress", "-q"]) == 0
        with Scanner(int8) as scanner:
            assert scanner.manifest.precision == "int8"
            p8 = np.array([r.p_generated for r in scanner.scan(photos)])
        assert np.abs(p8 - p).max() < 0.05
    else:   # the export refused an FP16 file failing its gates; here: against the authors' model
        assert cos.min() >= 0.999
        np.testing.assert_allclose(p, p_ref, atol=1e-3)
    assert [r.verdict == "generated" for r in results] == list(p_ref > 0.5)
    assert 0 < (p_ref > 0.5).sum() < len(photos)


def test_rine_files_that_do_not_fit_are_refused(tiny_model_files, rine, tmp_path, capsys):
    sd = torch.load(str(rine["pth"]), weights_only=True)
    cases = {"extra": {**sd, "clip.visual.proj": torch.zeros(2)},
             "blocks": {**sd, "alpha": torch.zeros(1, 24, PROJ_DIM)},
             "layout": {k.replace("proj1.4.", "proj1.5."): v for k, v in sd.items()}}
    expect = {"extra": "tensor 'clip.visual.proj' is not part of RINE's trainable model",
              "blocks": "alpha weighs 24 blocks; this tower has 2",
              "layout": "proj1 Linear layers sit at Sequential indices [1, 4]"}
    for name, state in cases.items():
        bad = tmp_path / f"{name}.pth"
        torch.save(state, str(bad))
        rc = main(["export", "--weights", str(tiny_model_files["weights"]), "--arch", str(tiny_model_files["config"]),
                   "--head", f"rine:{bad}", "-o", str(tmp_path / "x.onnx")])
        assert rc == 2 and expect[name] in capsys.readouterr().err, name
