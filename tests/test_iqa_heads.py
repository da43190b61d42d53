"""IQA-PyTorch's CLIP quality scorers (CLIP-IQA, CLIP-IQA+, LIQE): seeded CLIPs in OpenAI's layout, the head files
in pyiqa's layouts, exported through the CLI, scanned with the runtime on real photos and compared with pyiqa's
inference re-expressed here (pyiqa itself imports OpenAI's `clip` package and downloads its weights, neither of
which this environment has: its clipiqa_arch.py, liqe_arch.py and clip_model.py are followed line by line)."""
from __future__ import annotations

from itertools import product

import numpy as np
import open_clip
import pytest
import torch
import torchvision.transforms as T
from PIL import Image
from scipy.stats import spearmanr

from clipscan.cli import main
from clipscan.runtime import Scanner

from .conftest import TINY_CONFIG, photo_images, seeded_clip

CONFIG = dict(TINY_CONFIG, text_cfg={"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2,
                                     "layers": 1})
MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
PAIRS = ["Good image", "bad image", "Sharp image", "blurry image", "sharp edges", "blurry edges",
         "High resolution image", "low resolution image", "Noise-free image", "noisy image"]
QUALITIES = ["bad", "poor", "fair", "good", "perfect"]
SCENES = ["animal", "cityscape", "human", "indoor", "landscape", "night", "plant", "still_life", "others"]
DISTS = ["jpeg2000 compression", "jpeg compression", "noise", "blur", "color", "contrast", "overexposure",
         "underexposure", "spatial", "quantization", "other"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("iqa")
    clip = seeded_clip(d, CONFIG, seed=51)
    with torch.no_grad():
        clip["model"].logit_scale.fill_(np.log(30.0))   # a trained CLIP's range, so softmaxes are not flat
    torch.save(clip["model"].state_dict(), str(clip["weights"]))
    photos = d / "photos"
    photos.mkdir()
    for name, img in photo_images():
        img.save(photos / f"{name}.jpg", quality=92)
        img.crop((3, 17, img.width - 23, img.height // 2 + 5)).save(photos / f"{name}_wide.png")
    return {**clip, "photos": sorted(photos.iterdir()), "dir": d}


def tokenize(texts):
    """clip.tokenize, at the tiny tower's context length."""
    return open_clip.tokenizer.SimpleTokenizer(context_length=CONFIG["text_cfg"]["context_length"])(texts)


def pyiqa_input(paths, size=224) -> torch.Tensor:
    """What clipscan feeds the tower, as pyiqa's input: the short side to `size` bicubic, centre crop, in [0, 1]."""
    tf = T.Compose([T.Resize(size, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(size),
                    lambda im: im.convert("RGB"), T.ToTensor()])
    return torch.stack([tf(Image.open(p)) for p in paths])


def pyiqa_encode_image(model, x, pos_embedding: bool):
    """pyiqa's clip_model.VisionTransformer.forward (OpenAI layout), positional embedding only when asked."""
    v = model.visual
    x = v.conv1(x)
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    x = torch.cat([v.class_embedding + torch.zeros(x.shape[0], 1, x.shape[-1]), x], dim=1)
    if pos_embedding:
        pe = torch.nn.functional.interpolate(v.positional_embedding[None, None], size=(x.size(1), x.size(2)),
                                             mode="bicubic")[0, 0]
        x = x + pe
    x = v.ln_pre(x)
    x = v.transformer(x)
    return v.ln_post(x[:, 0, :]) @ v.proj


def pyiqa_bottleneck(b, x):
    """clip_model.Bottleneck.forward: 1x1, 3x3, anti-aliasing avgpool, 1x1; avgpool + 1x1 on the shortcut."""
    out = torch.relu(b.bn1(b.conv1(x)))
    out = b.avgpool(torch.relu(b.bn2(b.conv2(out))))
    out = b.bn3(b.conv3(out))
    return torch.relu(out + (x if b.downsample is None else b.downsample(x)))


def pyiqa_encode_resnet(model, x, pos_embedding: bool):
    """clip_model.ModifiedResNet.forward: 3-conv stem, avgpool, four stages, then AttentionPool2d, whose
    positional embedding is added (bicubic-resized to the token count) only with pos_embedding=True."""
    v = model.visual
    for conv, bn in ((v.conv1, v.bn1), (v.conv2, v.bn2), (v.conv3, v.bn3)):
        x = torch.relu(bn(conv(x)))
    x = v.avgpool(x)
    for stage in (v.layer1, v.layer2, v.layer3, v.layer4):
        for block in stage:
            x = pyiqa_bottleneck(block, x)
    p = v.attnpool
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(2, 0, 1)
    x = torch.cat([x.mean(dim=0, keepdim=True), x], dim=0)
    if pos_embedding:
        pe = torch.nn.functional.interpolate(p.positional_embedding[None, None], size=(x.size(0), x.size(2)),
                                             mode="bicubic")[0, 0]
        x = x + pe[:, None, :]
    x, _ = torch.nn.functional.multi_head_attention_forward(
        query=x, key=x, value=x, embed_dim_to_check=x.shape[-1], num_heads=p.num_heads,
        q_proj_weight=p.q_proj.weight, k_proj_weight=p.k_proj.weight, v_proj_weight=p.v_proj.weight,
        in_proj_weight=None, in_proj_bias=torch.cat([p.q_proj.bias, p.k_proj.bias, p.v_proj.bias]), bias_k=None,
        bias_v=None, add_zero_attn=False, dropout_p=0, out_proj_weight=p.c_proj.weight, out_proj_bias=p.c_proj.bias,
        use_separate_proj_weight=True, training=False, need_weights=False)
    return x[0]


def pyiqa_logits(model, x, text_features, pos_embedding):
    x = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    resnet = isinstance(model.visual, open_clip.modified_resnet.ModifiedResNet)
    img = (pyiqa_encode_resnet if resnet else pyiqa_encode_image)(model, x, pos_embedding)
    img = img / img.norm(dim=-1, keepdim=True)
    text_features = text_features / text_features.norm(dim=-1, keepdim=True)
    return model.logit_scale.exp() * img @ text_features.t()


def pyiqa_clipiqa(model, x, text_features, pos_embedding=False) -> np.ndarray:
    """CLIPIQA.forward: softmax within each (good, bad) pair, mean of the good probabilities."""
    with torch.no_grad():
        logits = pyiqa_logits(model, x, text_features, pos_embedding)
        return logits.reshape(logits.shape[0], -1, 2).softmax(dim=-1)[..., 0].mean(dim=1).numpy()


def pyiqa_prompt_learner_features(model, ctx, prefix, suffix, tokens):
    """PromptLearner.forward: [SOS, ctx[:8], class (3 tokens), ctx[8:], rest] through the text transformer."""
    prompts = torch.cat([prefix, ctx[:, :8], suffix[:, :3], ctx[:, 8:], suffix[:, 3:]], dim=1)
    x = prompts + model.positional_embedding
    x = model.transformer(x, attn_mask=model.attn_mask)
    x = model.ln_final(x)
    return x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)] @ model.text_projection


def pyiqa_liqe(model, x, mix: bool, step=32, num_patch=15) -> np.ndarray:
    """LIQE.forward (eval): unfold 224 crops at `step`, pick num_patch evenly, mean logits, softmax, 1-5 levels."""
    if mix:
        texts = [f"a photo of a {c} with {d} artifacts, which is of {q} quality"
                 for q, c, d in product(QUALITIES, SCENES, DISTS)]
    else:
        texts = [f"a photo with {c} quality" for c in QUALITIES]
    with torch.no_grad():
        text = model.encode_text(tokenize(texts))
        bs = x.size(0)
        x = x.unfold(2, 224, step).unfold(3, 224, step).permute(0, 2, 3, 1, 4, 5).reshape(bs, -1, 3, 224, 224)
        n = min(x.size(1), num_patch)
        sel = torch.tensor([max(1, x.size(1) // n) * i for i in range(n)])
        x = x[:, sel].reshape(bs * n, 3, 224, 224)
        logits = pyiqa_logits(model, x, text, True).view(bs, n, -1).mean(1).softmax(dim=1)
        levels = logits.view(-1, 5, 9, 11).sum(3).sum(2) if mix else logits.view(-1, 5)
        return (levels * torch.arange(1, 6)).sum(1).numpy()


def export_and_scan(setup, tmp_path, heads: list[str], weights=None, config=None) -> dict[str, np.ndarray]:
    """Export `heads` into one artifact through the CLI and scan the photos: {head name: scores}."""
    out = setup["out"] = tmp_path / "iqa.onnx"
    assert main(["export", "--arch", str(config or setup["config"]), "--weights", str(weights or setup["weights"]),
                 *(a for h in heads for a in ("--head", h)), "-o", str(out)]) == 0
    with Scanner(out) as scanner:
        results = list(scanner.scan(setup["photos"]))
        setup["manifest"] = scanner.manifest
    assert all(r.ok for r in results)
    return {h.name: np.array([r.heads[h.name]["score"] for r in results]) for h in setup["manifest"].heads}


def assert_matches(got, ref):
    assert ref.std() > 1e-3, "the seeded model must tell the photos apart for the comparison to mean something"
    assert spearmanr(got, ref).statistic >= 0.9999, (got, ref)
    np.testing.assert_allclose(got, ref, rtol=1e-4)


def clipiqa_plus_file(model, path, layout: str):
    """A CLIP-IQA+ prompt file in one of pyiqa's layouts, and the (ctx, prefix, suffix, tokens) it means."""
    tokens = tokenize([" ".join(["X"] * 16) + " " + w for w in ("Good photo..", "Bad photo..")])
    with torch.no_grad():
        init = model.token_embedding(tokens)
    torch.manual_seed(52)
    ctx = init[:, 1:17] + 0.05 * torch.randn(2, 16, 32)    # learned: moved away from its "X" initialisation
    prefix, suffix = init[:, :1], init[:, 17:]
    # the RN50 release is the bare ctx tensor; the _512 ones BasicSR's {"params": state dict of the learner}
    torch.save(ctx if layout == "ctx" else {"params": {"prompt_learner.ctx": ctx, "prompt_learner.token_prefix":
                                                       prefix, "prompt_learner.token_suffix": suffix}}, str(path))
    with torch.no_grad():
        return pyiqa_prompt_learner_features(model, ctx, prefix, suffix, tokens)


@pytest.mark.slow
def test_clip_iqa_and_clip_iqa_plus_match_pyiqa(setup, tmp_path):
    """clip-iqa (no file) and clip-iqa+ (pyiqa's bare-ctx file) share one pass: neither adds a positional
    embedding, as pyiqa's CLIP with pos_embedding=False."""
    model = setup["model"]
    plus_text = clipiqa_plus_file(model, tmp_path / "CLIP-IQA+_learned_prompts.pth", "ctx")
    got = export_and_scan(setup, tmp_path, ["clip-iqa", f"clip-iqa+:{tmp_path / 'CLIP-IQA+_learned_prompts.pth'}"])
    heads = {h.name: h for h in setup["manifest"].heads}
    assert list(heads) == ["clip_iqa", "clip_iqa_plus"]
    assert heads["clip_iqa"].scale == {"kind": "probability", "min": 0.0, "max": 1.0}
    x = pyiqa_input(setup["photos"])
    with torch.no_grad():
        text = model.encode_text(tokenize(PAIRS))
    assert_matches(got["clip_iqa"], pyiqa_clipiqa(model, x, text))
    assert_matches(got["clip_iqa_plus"], pyiqa_clipiqa(model, x, plus_text))


def pyiqa_input_koniq(paths, size=(768, 1024)) -> torch.Tensor:
    """What clipscan feeds a LIQE artifact (a _512 CLIP-IQA+ one: size (384, 512)): the image scaled (bicubic, one
    ratio) to cover 1024x768, centre crop."""
    h, w = size
    out = []
    for p in paths:
        im = Image.open(p).convert("RGB")
        ratio = min(im.height / h, im.width / w)
        im = im.resize((round(im.width / ratio), round(im.height / ratio)), Image.Resampling.BICUBIC)
        out.append(T.ToTensor()(T.CenterCrop((h, w))(im)))
    return torch.stack(out)


@pytest.fixture(scope="module")
def liqe_file(setup):
    """A seeded ViT CLIP saved as pyiqa's liqe_koniq.pt ({"params": {"clip_model.*"}}), and that model."""
    torch.manual_seed(53)
    tuned = open_clip.model.CLIP(**{k: v for k, v in CONFIG.items() if k != "quick_gelu"}, quick_gelu=True).eval()
    with torch.no_grad():
        tuned.logit_scale.fill_(np.log(50.0))
    path = setup["dir"] / "liqe_koniq.pt"
    torch.save({"params": {f"clip_model.{k}": v for k, v in tuned.state_dict().items()}}, str(path))
    return path, tuned


@pytest.mark.slow
def test_liqe_test_time_crops_match_pyiqa(setup, liqe_file, tmp_path, capsys):
    """liqe and liqe-mix read pyiqa's checkpoint layout (also the backbone) and share one pass over pyiqa's 15
    crops of a 1024x768 input, cut in the graph; a photo of exactly that size is scored as pyiqa scores the file."""
    path, tuned = liqe_file
    exact = setup["dir"] / "koniq_frame.png"     # KonIQ's own frame: the runtime's resize and crop are identities
    Image.open(setup["photos"][0]).convert("RGB").resize((1024, 768), Image.Resampling.BILINEAR).save(exact)
    photos = setup["photos"]
    setup["photos"] = photos + [exact]
    try:
        got = export_and_scan(setup, tmp_path, [f"liqe:{path}", f"liqe-mix:{path}"], weights=path)
    finally:
        setup["photos"] = photos
    m = setup["manifest"]
    assert [h.name for h in m.heads] == ["liqe", "liqe_mix"]
    assert m.heads[0].scale == m.heads[1].scale == {"kind": "mos", "min": 1.0, "max": 5.0}
    assert m.input.size == m.preprocess.crop_size == (768, 1024) and m.preprocess.resize_mode == "shortest"
    crops = m.preprocess.graph_crops
    assert crops["size"] == [224, 224] and len(crops["origins"]) == 15
    assert crops["origins"][:3] == [[0, 0], [32, 160], [64, 320]]   # windows 0, 31, 62 of the 18 x 26 grid
    x = pyiqa_input_koniq(photos + [exact])
    assert_matches(got["liqe"], pyiqa_liqe(tuned, x, mix=False))
    assert_matches(got["liqe_mix"], pyiqa_liqe(tuned, x, mix=True))
    raw = T.ToTensor()(Image.open(exact))[None]   # pyiqa's imread2tensor of the file itself
    np.testing.assert_allclose(got["liqe"][-1], pyiqa_liqe(tuned, raw, mix=False)[0], rtol=1e-4)
    # the crops matter: one centre crop of the same input scores differently
    assert np.abs(got["liqe"][:-1] - pyiqa_liqe(tuned, T.CenterCrop(224)(x[:-1]), mix=False)).max() > 1e-3
    assert main(["info", str(setup["out"])]) == 0
    assert "15 crops of 224x224 (stride 32) cut in the graph" in capsys.readouterr().out


def koniq_512_frame(setup) -> list:
    """The photos plus one of exactly 512x384 (KonIQ-10k's 512x384 frame: the runtime's resize and crop are then
    identities, so pyiqa can be run on the file itself)."""
    exact = setup["dir"] / "koniq_512_frame.png"
    if not exact.exists():
        Image.open(setup["photos"][1]).convert("RGB").resize((512, 384), Image.Resampling.BILINEAR).save(exact)
    return setup["photos"] + [exact]


def check_clip_iqa_plus_512(setup, tmp_path, model, weights, config=None):
    """A _512 CLIP-IQA+ file through the CLI: a 384x512 input, scored as pyiqa scores that input with its
    positional embedding resized to the input's tokens; a 512x384 photo as pyiqa scores the file itself."""
    plus = tmp_path / "CLIPIQA+_512.pth"
    plus_text = clipiqa_plus_file(model, plus, "params")
    photos = setup["photos"]
    setup["photos"] = koniq_512_frame(setup)
    try:
        got = export_and_scan(setup, tmp_path, [f"clip-iqa+:{plus}"], weights=weights, config=config)["clip_iqa_plus"]
    finally:
        setup["photos"] = photos
    m = setup["manifest"]
    assert m.input.size == m.preprocess.crop_size == (384, 512) and m.preprocess.resize_mode == "shortest"
    x = pyiqa_input_koniq(koniq_512_frame(setup), (384, 512))
    assert_matches(got, pyiqa_clipiqa(model, x, plus_text, pos_embedding=True))
    raw = T.ToTensor()(Image.open(koniq_512_frame(setup)[-1]))[None]   # pyiqa's imread2tensor of the file itself
    np.testing.assert_allclose(got[-1], pyiqa_clipiqa(model, raw, plus_text, pos_embedding=True)[0], rtol=1e-4)
    # the resized embedding matters: without it the scores differ
    assert np.abs(got - pyiqa_clipiqa(model, x, plus_text)).max() > 1e-3
    return got


@pytest.mark.slow
def test_clip_iqa_plus_512_matches_pyiqa(setup, liqe_file, tmp_path):
    """clip-iqa+ in the layout of its _512 files (pos_embedding=True) on a ViT tower: its 50 positional embeddings
    resized to the 193 tokens of a 384x512 input (12 x 16 patches and the class token)."""
    path, tuned = liqe_file
    check_clip_iqa_plus_512(setup, tmp_path, tuned, path)


def test_iqa_heads_refuse_a_file_and_a_mixed_pass(setup, tmp_path):
    from clipscan.export import export_model
    from clipscan.runtime.errors import ClipscanError

    with pytest.raises(ClipscanError, match="reads no file"):
        export_model(str(setup["config"]), setup["weights"], "clip-iqa:x.pth", tmp_path / "x.onnx")
    with pytest.raises(ClipscanError, match="positional embedding"):
        export_model(str(setup["config"]), setup["weights"], ["clip-iqa", f"liqe:{setup['weights']}"],
                     tmp_path / "x.onnx")
    plus = tmp_path / "CLIPIQA+_ViTL14_512.pth"     # a head of one 384x512 view (with positional embedding)
    clipiqa_plus_file(setup["model"], plus, "params")
    with pytest.raises(ClipscanError, match=r"size: \[768, 1024\] vs \[384, 512\]\), so they cannot share one "
                                            r"backbone pass: export them as separate artifacts$"):
        export_model(str(setup["config"]), setup["weights"], [f"liqe:{setup['weights']}", f"clip-iqa+:{plus}"],
                     tmp_path / "x.onnx")
    with pytest.raises(ClipscanError, match="runs the tower with its positional embedding resampled to the input"):
        export_model(str(setup["config"]), setup["weights"], [f"clip-iqa+:{plus}", "clip-iqa"], tmp_path / "x.onnx")
    other = tmp_path / "liqe_koniq.pt"
    other.write_bytes(setup["weights"].read_bytes())
    with pytest.raises(ClipscanError, match="give the same file to both"):
        export_model(str(setup["config"]), setup["weights"], f"liqe:{other}", tmp_path / "x.onnx")


# OpenAI's ModifiedResNet at a tiny width (pyiqa's default clipiqa backbone is RN50): 1 bottleneck per stage,
# stem width 8, tokens of 256 into a 4-head attention pool (pyiqa's and open_clip's heads: 32 x width / 64)
RN_CONFIG = dict(CONFIG, vision_cfg={"image_size": 96, "layers": [1, 1, 1, 1], "width": 8, "patch_size": None})


@pytest.fixture(scope="module")
def rn_clip(setup):
    """A seeded tiny RN CLIP in OpenAI's state-dict layout; its BatchNorms hold the statistics of the photos
    (as trained ones would of their data: random ones leave every photo with nearly the same embedding)."""
    d = setup["dir"] / "rn"
    d.mkdir()
    clip = seeded_clip(d, RN_CONFIG, seed=54)
    model, gen = clip["model"], torch.Generator().manual_seed(55)
    x = pyiqa_input(setup["photos"], 96)
    with torch.no_grad():
        model.logit_scale.fill_(np.log(30.0))                   # a trained CLIP's range, not saturated
        for m in model.visual.modules():
            if isinstance(m, torch.nn.BatchNorm2d):              # bn3 not left at open_clip's zeros
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=gen))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))
                m.momentum = None                                # running statistics = this one batch's
        model.visual.train()(((x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)))
    model.eval()                                                 # from here on as pyiqa runs it
    torch.save(model.state_dict(), str(clip["weights"]))
    return clip


@pytest.mark.slow
def test_clip_iqa_on_a_resnet_tower_matches_pyiqa(setup, rn_clip, tmp_path):
    """clip-iqa and clip-iqa+ on an open_clip ModifiedResNet (pyiqa's default RN50 backbone, here tiny): the
    attention pool's positional embedding is dropped as pyiqa's pos_embedding=False does; at the tower's 96 px."""
    model = rn_clip["model"]
    plus_text = clipiqa_plus_file(model, tmp_path / "CLIP-IQA+_learned_prompts.pth", "ctx")
    got = export_and_scan(setup, tmp_path, ["clip-iqa", f"clip-iqa+:{tmp_path / 'CLIP-IQA+_learned_prompts.pth'}"],
                          weights=rn_clip["weights"], config=rn_clip["config"])
    backbone = setup["manifest"].backbone
    assert (backbone["tower"], backbone["graph"], backbone["width"]) == ("modified_resnet", "stock", 256)
    assert backbone["gflops_per_image"] > 0
    x = pyiqa_input(setup["photos"], 96)
    with torch.no_grad():
        text = model.encode_text(tokenize(PAIRS))
    assert_matches(got["clip_iqa"], pyiqa_clipiqa(model, x, text))
    assert_matches(got["clip_iqa_plus"], pyiqa_clipiqa(model, x, plus_text))
    # the dropped embedding matters: with it (pos_embedding=True, the _512 files) the scores differ
    assert np.abs(got["clip_iqa"] - pyiqa_clipiqa(model, x, text, pos_embedding=True)).max() > 1e-3
    # verify runs the recorded original (the same dropped embedding) against the file
    assert main(["verify", str(setup["out"]), "--images", str(setup["photos"][0].parent),
                 "--report", str(tmp_path / "report")]) == 0


@pytest.mark.slow
def test_clip_iqa_plus_512_on_a_resnet_tower_matches_pyiqa(setup, rn_clip, tmp_path):
    """clipiqa+_rn50_512 alone: the _512 layout on a ModifiedResNet, its attention pool's 10 positional embeddings
    (3 x 3 grid of the 96 px tower, mean token) resized along the token row to the 193 of a 384x512 input."""
    check_clip_iqa_plus_512(setup, tmp_path, rn_clip["model"], rn_clip["weights"], rn_clip["config"])
    assert "512x384 input" in setup["manifest"].heads[0].description
    # verify rebuilds the original from the record (the embedding resized again) and finds the file equal to it
    assert main(["verify", str(setup["out"]), "--images", str(setup["photos"][0].parent), "--no-launder",
                 "--report", str(tmp_path / "report")]) == 0


@pytest.fixture(scope="module")
def rn_images(setup):
    """Calibration (12) and validation (16) folders of photos, renders and distorted copies, disjoint by source."""
    from .outlier_vit import write_image_sets

    return write_image_sets(setup["dir"] / "rn_images", n_calib=12, n_val=16)


@pytest.fixture(scope="module")
def rn_photos(setup):
    """The 10 distinct photos of demo_data, each whole and as a wide crop: 20 real images."""
    from clipscan.export import demo_data

    d = setup["dir"] / "rn_photos"
    d.mkdir()
    for name in demo_data.TRAIN_PHOTOS + demo_data.SAMPLE_PHOTOS:
        img = demo_data.photo(name).convert("RGB")
        img.save(d / f"{name}.jpg", quality=92)
        img.crop((3, 17, img.width - 23, img.height // 2 + 5)).save(d / f"{name}_wide.png")
    return d


@pytest.mark.slow
def test_resnet_tower_fp16_verified_on_photos(setup, rn_clip, rn_photos, tmp_path):
    """FP16 on a ModifiedResNet: the stages (BatchNorms folded into the convolutions by the export) in float16, the
    attention pool float32 from its Softmax on (weighted values, c_proj) and the heads float32. clip-iqa and
    clip-iqa+ in one artifact pass the export's FP16 gate and, on 20 photos against the recorded original,
    verify's embedding gates and clip-iqa+'s SRCC gate. This 19-convolution seeded tower's float16 weights move
    its embedding by about 3e-3 relative (it grows stage by stage), which moves the 0-1 scores by up to 4e-4
    (clip-iqa) and 2.2e-3 (clip-iqa+): a clip-iqa pair of these photos scored 2.5e-4 apart swaps, and one swap in
    20 misses the 0.9999 SRCC bar (0.9985). The only gate allowed to fail is that one."""
    import json

    import onnx

    from clipscan.export.fp16 import tail_node_indices

    ctx = tmp_path / "CLIP-IQA+_learned_prompts.pth"
    clipiqa_plus_file(rn_clip["model"], ctx, "ctx")
    out = tmp_path / "rn16.onnx"
    assert main(["export", "--arch", str(rn_clip["config"]), "--weights", str(rn_clip["weights"]), "--head",
                 "clip-iqa", "--head", f"clip-iqa+:{ctx}", "--precision", "fp16", "-o", str(out)]) == 0
    model = onnx.load(str(out))
    g = model.graph
    types = {t.name: t.data_type for t in g.initializer}
    inferred = onnx.shape_inference.infer_shapes(model).graph
    types.update({v.name: v.type.tensor_type.elem_type for v in inferred.value_info})
    FLOAT, HALF = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    ops = [n.op_type for n in g.node]
    assert "BatchNormalization" not in ops and ops.count("Conv") == 19
    assert {types[n.input[1]] for n in g.node if n.op_type == "Conv"} == {HALF}
    assert {types[n.output[0]] for n in g.node if n.op_type in ("AveragePool", "Relu")} == {HALF}
    (softmax,) = [n for n in g.node if n.op_type == "Softmax"]
    (c_proj,) = [n for n in g.node if n.op_type == "Gemm"]
    assert types[softmax.input[0]] == FLOAT and types[c_proj.input[1]] == FLOAT
    assert "c_proj" in c_proj.input[1]
    # the tail starts at the pool's Softmax, found with or without the exporter's scope metadata
    tail = tail_node_indices(g, "modified_resnet")
    assert list(g.node).index(softmax) == min(tail)
    for node in g.node:
        del node.metadata_props[:]
    assert tail_node_indices(g, "modified_resnet") == tail
    with Scanner(out) as scanner:
        m = scanner.manifest
    assert m.precision == "fp16" and m.backbone["tower"] == "modified_resnet"
    assert m.backbone["fp16"]["kept_fp32_tail"].startswith("everything from the attention pool's Softmax on")
    rc = main(["verify", str(out), "--images", str(rn_photos), "--report", str(tmp_path / "report"), "--no-launder"])
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    gates = {g["name"]: g for g in report["gates"]}
    for name in ("cosine_mean", "cosine_worst", "srcc:clip_iqa_plus", "batch_invariance"):
        assert gates[name]["passed"] is True, gates[name]
    assert gates["cosine_worst"]["value"] > 0.99999
    assert rc == (0 if report["passed"] else 1) and set(report["failed_gates"]) <= {"srcc:clip_iqa"}
    assert gates["srcc:clip_iqa"]["value"] >= 0.998
    for head in ("clip_iqa", "clip_iqa_plus"):
        diff = [abs(r["heads"][head]["quality"] - r["heads"][head]["ref_quality"]) for r in report["rows"]]
        assert len(diff) == 20 and max(diff) < 5e-3, (head, max(diff))


@pytest.mark.slow
def test_resnet_tower_int8_calibration(setup, rn_clip, rn_images, tmp_path):
    """`clipscan calibrate` on a ModifiedResNet FP32 artifact: every convolution and the pool's query/key/value
    products are quantized, the tail from the pool's Softmax (c_proj) and the heads stay float as on a ViT, and
    verify's INT8 gates are recorded; exit 0 exactly when they all pass."""
    import onnx

    from clipscan.runtime import load_artifact

    out = tmp_path / "rn32.onnx"
    assert main(["export", "--arch", str(rn_clip["config"]), "--weights", str(rn_clip["weights"]), "--head",
                 "clip-iqa", "-o", str(out)]) == 0
    rc = main(["calibrate", str(out), "--images", str(rn_images[0]), "--val-images", str(rn_images[1]), "-o",
               str(tmp_path / "int8.onnx"), "--report", str(tmp_path / "report")])
    kept = tmp_path / ("int8.onnx" if rc == 0 else "int8.failed-gates.onnx")
    c = load_artifact(kept).manifest.calibration
    fp32 = onnx.load(str(out)).graph
    (softmax,) = [n.name for n in fp32.node if n.op_type == "Softmax"]
    (c_proj,) = [n.name for n in fp32.node if n.op_type == "Gemm"]
    assert c["quantized_ops"] == "matmul" and {softmax, c_proj} <= set(c["excluded_nodes"])
    q = onnx.load(str(kept)).graph
    dequantized = {o for n in q.node if n.op_type == "DequantizeLinear" for o in n.output}
    weight_read = {n.op_type: [] for n in q.node}
    for n in q.node:
        if n.op_type in ("Conv", "MatMul", "Gemm") and len(n.input) > 1:
            weight_read[n.op_type].append(n.input[1] in dequantized)
    # 19 convolutions and the pool's q, k, v take int8 weights; c_proj, the attention products and the head do not
    assert weight_read["Conv"] == [True] * 19 and sorted(weight_read["MatMul"]).count(True) == 3
    assert weight_read["Gemm"] == [False]
    fid = c["fidelity"]
    assert rc == (0 if fid["passed"] else 1)
    gates = {g["name"]: g for g in fid["gates"]}
    assert gates["cosine_mean"]["passed"], gates["cosine_mean"]


def test_resnet_tower_refuses_what_is_vit_only(setup, rn_clip, tmp_path):
    from clipscan.export import export_model
    from clipscan.runtime.errors import ClipscanError

    args = (str(rn_clip["config"]), rn_clip["weights"], "clip-iqa", tmp_path / "x.onnx")
    for kwargs, said in (({"graph": "lean"}, "lean graph is written for ViT towers only"),
                         ({"uint8_input": True}, "ResNet stem's first convolution: it pads"),
                         ({"uint8_input": True, "precision": "fp16"}, "ResNet stem's first convolution: it pads")):
        with pytest.raises(ClipscanError, match=said):
            export_model(*args, **kwargs)
    cozzolino = tmp_path / "clf.pth"
    torch.save({"weight": torch.zeros(1, 256), "bias": torch.zeros(1)}, str(cozzolino))
    with pytest.raises(ClipscanError, match="token before the projection"):
        export_model(str(rn_clip["config"]), rn_clip["weights"], f"cozzolino:{cozzolino}", tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()
