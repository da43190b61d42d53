"""Hugging Face transformers CLIP towers: written by transformers itself, exported through the CLI, scanned
with the runtime and compared with transformers' own forward on the same preprocessed pixels."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from clipscan.cli import main
from clipscan.export.hf_clip import detect_format, load_hf_backbone
from clipscan.runtime import Scanner

from .conftest import TINY_CONFIG, cosine, photo_images, seeded_clip

transformers = pytest.importorskip("transformers", reason="transformers is the reference of these tests (test extra)")
from safetensors.torch import load_file, save_file  # noqa: E402

# quick_gelu (OpenAI-style) and gelu (LAION-style) towers; sizes kept tiny so an export takes seconds
OPENAI = {"hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 2,
          "image_size": 224, "patch_size": 32, "hidden_act": "quick_gelu"}
LAION = {"hidden_size": 96, "intermediate_size": 384, "num_hidden_layers": 3, "num_attention_heads": 3,
         "image_size": 160, "patch_size": 32, "hidden_act": "gelu"}
TEXT = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
        "vocab_size": 49408, "max_position_embeddings": 16}


def _processor(folder, size: int, **kw) -> None:
    transformers.CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                                    **kw).save_pretrained(str(folder))


@pytest.fixture(scope="module")
def towers(tmp_path_factory):
    """Three checkpoints as users hold them: safetensors, a pickle, and sharded safetensors."""
    root = tmp_path_factory.mktemp("hf")
    out = {}
    torch.manual_seed(21)
    m = transformers.CLIPVisionModelWithProjection(transformers.CLIPVisionConfig(**OPENAI, projection_dim=48)).eval()
    m.save_pretrained(str(root / "openai"))
    _processor(root / "openai", 224)
    out["openai"] = (root / "openai", m)
    torch.manual_seed(22)
    m = transformers.CLIPModel(transformers.CLIPConfig(text_config=TEXT, vision_config=LAION, projection_dim=40)).eval()
    m.config.save_pretrained(str(root / "laion"))
    # transformers 4's save_pretrained(safe_serialization=False) layout: one pickled state dict
    torch.save(m.state_dict(), str(root / "laion" / "pytorch_model.bin"))
    _processor(root / "laion", 160, image_mean=[0.5] * 3, image_std=[0.5] * 3, resample=2)
    out["laion"] = (root / "laion", m)
    torch.manual_seed(23)
    m = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**OPENAI)).eval()
    m.save_pretrained(str(root / "sharded"), max_shard_size="60KB")
    _processor(root / "sharded", 224)
    out["sharded"] = (root / "sharded", m)
    return out


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    d = tmp_path_factory.mktemp("hf_photos")
    for name, img in photo_images():
        img.save(d / f"{name}.jpg", quality=92)
        img.crop((7, 3, img.width - 30, img.height // 2 + 11)).save(d / f"{name}_wide.png")
    return sorted(d.iterdir())


def hf_features(model, pixels) -> tuple[np.ndarray, np.ndarray]:
    """(embedding after the projection or None, pooled output before it) by transformers' own forward."""
    x = torch.from_numpy(np.ascontiguousarray(pixels))
    with torch.no_grad():
        if isinstance(model, transformers.CLIPModel):
            pooled = model.vision_model(pixel_values=x).pooler_output
            return model.visual_projection(pooled).numpy(), pooled.numpy()
        out = model(pixel_values=x)
        proj = out.image_embeds.numpy() if hasattr(out, "image_embeds") else None
        pooled = out.pooler_output if hasattr(out, "pooler_output") else None
        if pooled is None:   # CLIPVisionModelWithProjection: the pooled output through its vision_model
            pooled = model.vision_model(pixel_values=x).pooler_output
        return proj, pooled.numpy()


def decoded(path):
    with Image.open(path) as im:
        return ImageOps.exif_transpose(im).convert("RGB")


def cozzolino_file(folder, model, width: int, photos):
    """Linear(width, 1) on the L2-normalised pooled output, its bias at the median over the photos (as the
    checkpoint's own image processor prepares them) so both verdicts occur."""
    gen = torch.Generator().manual_seed(5)
    w = torch.randn(1, width, generator=gen) * 4
    processor = transformers.CLIPImageProcessor.from_pretrained(str(folder))
    probe = processor(images=[decoded(p) for p in photos], return_tensors="np")["pixel_values"]
    _, pooled = hf_features(model, probe)
    llr = torch.nn.functional.normalize(torch.from_numpy(pooled), dim=-1) @ w.T
    path = folder.parent / f"{folder.name}_head.pth"
    mid = llr.flatten().sort().values[len(photos) // 2 - 1: len(photos) // 2 + 1].mean()   # none on the threshold
    torch.save({"fc.weight": w, "fc.bias": -mid.reshape(1)}, str(path))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("name", ["openai", "laion", "sharded"])
def test_hf_tower_matches_transformers(towers, photos, tmp_path, name):
    folder, model = towers[name]
    vision = model.config.vision_config if isinstance(model, transformers.CLIPModel) else model.config
    head = cozzolino_file(folder, model, vision.hidden_size, photos)
    out = tmp_path / f"{name}.onnx"
    fmt = ["--weights-format", "hf"] if name == "laion" else []   # the others are detected
    assert main(["export", "--weights", str(folder), *fmt, "--head", f"cozzolino:{head}", "-o", str(out)]) == 0
    with Scanner(out) as scanner:
        results = list(scanner.scan(photos))
        manifest = scanner.manifest
        pixels = np.stack([scanner.preprocessor(decoded(p)) for p in photos])
    assert [r.error for r in results] == [None] * len(photos)
    assert manifest.backbone["activation"] == vision.hidden_act
    assert manifest.backbone["weights_format"] == "hf"
    pp = json.loads((folder / "preprocessor_config.json").read_text())
    assert list(manifest.input.mean) == pytest.approx(pp["image_mean"])
    assert manifest.input.size == (vision.image_size,) * 2
    assert manifest.preprocess.interpolation == {2: "bilinear", 3: "bicubic"}[pp["resample"]]
    proj, pooled = hf_features(model, pixels)
    emb = np.stack([r.embedding for r in results])
    # CLIPVisionModel has no projection: its embedding is the pooled output itself
    assert cosine(emb, pooled if proj is None else proj).min() >= 0.99999
    sd = torch.load(str(head), weights_only=True)
    normed = torch.nn.functional.normalize(torch.from_numpy(pooled), dim=-1)
    llr = (normed @ sd["fc.weight"].T + sd["fc.bias"]).squeeze(1).numpy()
    logits = np.array([r.logit for r in results])
    np.testing.assert_allclose(logits, llr, atol=2e-4)
    assert [r.verdict == "generated" for r in results] == list(llr > 0)
    assert 0 < (llr > 0).sum() < len(photos), "the head's bias puts photos on both sides"


@pytest.mark.slow
def test_single_file_with_arch_gives_the_folder_tower(towers, tmp_path):
    folder, model = towers["openai"]
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(folder / "model.safetensors", alone / "tower.safetensors")
    assert detect_format(alone / "tower.safetensors") == "hf"
    x = torch.rand(2, 3, 224, 224) * 4 - 2
    visual, info = load_hf_backbone(alone / "tower.safetensors", str(folder / "config.json"))
    with torch.no_grad():
        assert cosine(visual(x).numpy(), model(pixel_values=x).image_embeds.numpy()).min() >= 0.99999
    assert info.activation == "quick_gelu" and info.preprocess["resize_mode"] == "shortest"
    # an open_clip config of the same shape works as --arch too (OpenAI preprocessing by default)
    cfg = {"embed_dim": 48, "quick_gelu": True,
           "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "head_width": 32, "patch_size": 32}}
    (alone / "oc.json").write_text(json.dumps(cfg))
    visual, _ = load_hf_backbone(alone / "tower.safetensors", str(alone / "oc.json"))
    with torch.no_grad():
        assert cosine(visual(x).numpy(), model(pixel_values=x).image_embeds.numpy()).min() >= 0.99999
    with pytest.raises(ValueError, match="single weights file: pass --arch"):
        load_hf_backbone(alone / "tower.safetensors")
    with pytest.raises(ValueError, match="leave --arch out"):   # a folder's own config is the one fact
        load_hf_backbone(folder, str(alone / "oc.json"))


def _copy_with(towers, tmp_path, change):
    folder, _ = towers["openai"]
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    state = load_file(str(bad / "model.safetensors"))
    change(state)
    save_file(state, str(bad / "model.safetensors"))
    return bad


def test_an_unknown_tensor_is_refused_by_name(towers, tmp_path, capsys):
    bad = _copy_with(towers, tmp_path, lambda s: s.update({"vision_model.encoder.layers.1.adapter.weight":
                                                            torch.zeros(4, 64)}))
    rc = main(["export", "--weights", str(bad), "--head", "cozzolino:unused.pth", "-o", str(tmp_path / "x.onnx")])
    assert rc == 2
    assert "'vision_model.encoder.layers.1.adapter.weight' is not one clipscan maps" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()


def test_a_missing_tensor_is_refused_by_name(towers, tmp_path):
    bad = _copy_with(towers, tmp_path, lambda s: s.pop("vision_model.encoder.layers.1.mlp.fc2.bias"))
    with pytest.raises(ValueError, match=r"'vision_model\.encoder\.layers\.1\.mlp\.fc2\.bias' is missing"):
        load_hf_backbone(bad)


def test_a_layer_beyond_the_config_is_refused_by_name(towers, tmp_path):
    bad = _copy_with(towers, tmp_path, lambda s: s.update(
        {"vision_model.encoder.layers.2.layer_norm1.weight": torch.ones(64)}))
    with pytest.raises(ValueError, match=r"'vision_model\.encoder\.layers\.2\.layer_norm1\.weight'.*2-layer"):
        load_hf_backbone(bad)


def test_preprocessing_it_cannot_express_is_refused(towers, tmp_path):
    folder, _ = towers["openai"]
    bad = tmp_path / "crop"
    shutil.copytree(folder, bad)
    _processor(bad, 256)   # resize to 256, crop 256: not the tower's 224
    with pytest.raises(ValueError, match="crop_size .* differs from the tower's image_size"):
        load_hf_backbone(bad)


def clip_tokenizer_files(folder) -> None:
    """vocab.json and merges.txt of CLIP's BPE (as the openai/clip-vit-* repositories ship them), from open_clip's."""
    import open_clip

    bpe = open_clip.tokenizer.SimpleTokenizer()
    special = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}   # open_clip's: OpenAI's
    (folder / "vocab.json").write_text(json.dumps({special.get(k, k): v for k, v in bpe.encoder.items()}),
                                       encoding="utf-8")
    merges = sorted(bpe.bpe_ranks, key=bpe.bpe_ranks.get)
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n",
                                       encoding="utf-8")


@pytest.mark.slow
def test_prompt_heads_use_the_text_tower_of_a_hf_clipmodel(towers, photos, tmp_path):
    """Captions encoded with a transformers CLIPModel's own text tower and tokenizer: the exported class
    probabilities are transformers' get_text_features / get_image_features softmax, and a vocabulary other than
    CLIP's BPE is refused."""
    from clipscan.export import load_reference
    from clipscan.runtime.errors import ClipscanError

    source, model = towers["laion"]
    folder = tmp_path / "laion"
    shutil.copytree(source, folder)
    clip_tokenizer_files(folder)
    classes = [{"label": "real", "caption": "a real photograph of a cat"},
               {"label": "sdxl", "caption": "an image generated by stable diffusion xl"},
               {"label": "mj", "caption": "a Midjourney render, highly detailed!"}]
    captions = tmp_path / "captions.json"
    captions.write_text(json.dumps({"classes": classes}))
    out = tmp_path / "hf_captions.onnx"
    assert main(["export", "--weights", str(folder), "--head", f"captions:{captions}", "-o", str(out)]) == 0
    with Scanner(out) as scanner:
        raw = scanner.predict(np.stack([scanner.preprocessor(decoded(p)) for p in photos]))
        pixels = np.stack([scanner.preprocessor(decoded(p)) for p in photos])
    tokenizer = transformers.CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    with torch.no_grad():
        text = model.get_text_features(**tokenizer([c["caption"] for c in classes], padding=True,
                                                   return_tensors="pt"))
        image = model.get_image_features(pixel_values=torch.from_numpy(pixels))
        text, image = (getattr(t, "pooler_output", t) for t in (text, image))
        text, image = (torch.nn.functional.normalize(t, dim=-1) for t in (text, image))
        probs = torch.softmax(model.logit_scale.exp() * image @ text.T, dim=-1).numpy()
    assert probs.std(axis=0).max() > 1e-3, "the seeded model must tell the photos apart"
    np.testing.assert_allclose(raw["class_probs"], probs, rtol=1e-4, atol=1e-6)
    vocab = json.loads((folder / "vocab.json").read_text())
    vocab["hello</w>"], vocab["world</w>"] = vocab["world</w>"], vocab["hello</w>"]
    (folder / "vocab.json").write_text(json.dumps(vocab))
    with pytest.raises(ClipscanError, match="not CLIP's BPE vocabulary"):
        load_reference(None, folder, [f"captions:{captions}"])


def test_formats_are_detected(towers, tmp_path):
    oc = seeded_clip(tmp_path, TINY_CONFIG, seed=1)
    assert detect_format(oc["weights"]) == "open_clip"
    for name in towers:
        assert detect_format(towers[name][0]) == "hf"
    assert detect_format(towers["laion"][0] / "pytorch_model.bin") == "hf"
    assert detect_format(towers["sharded"][0] / "model.safetensors.index.json") == "hf"


class _Payload:
    """Unpickling this calls open(marker, "w"): a stand-in for any code a pickle can run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def test_a_malicious_pickle_runs_nothing(towers, tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil"
    evil.mkdir()
    shutil.copy(towers["openai"][0] / "config.json", evil / "config.json")
    state = dict(load_file(str(towers["openai"][0] / "model.safetensors")))
    torch.save({**state, "extra": _Payload(marker)}, str(evil / "pytorch_model.bin"))
    runs = [["--weights", str(evil), "--head", "cozzolino:x.pth"],
            ["--weights", str(evil / "pytorch_model.bin"), "--weights-format", "hf", "--arch",
             str(evil / "config.json"), "--head", "cozzolino:x.pth"]]
    # each head on a tower it fits (Effort's reads a tower without projection)
    runs += [["--weights", str(towers[tower][0]), "--head", f"{fmt}:{evil / 'pytorch_model.bin'}"]
             for fmt, tower in (("c2p-clip", "openai"), ("effort", "sharded"), ("laion-aesthetic", "openai"))]
    for args in runs:
        assert main(["export", *args, "-o", str(tmp_path / "x.onnx")]) == 2, args
        assert "weights_only=True" in capsys.readouterr().err, args
        assert not marker.exists(), args
    assert not (tmp_path / "x.onnx").exists()


def test_an_open_clip_checkpoint_without_arch_is_refused(tmp_path, capsys):
    oc = seeded_clip(tmp_path, TINY_CONFIG, seed=2, heads_dim=TINY_CONFIG["embed_dim"])
    rc = main(["export", "--weights", str(oc["weights"]), "--heads", str(oc["heads"]), "-o", str(tmp_path / "x.onnx")])
    assert rc == 2 and "needs --arch" in capsys.readouterr().err


@pytest.mark.slow
def test_verify_reads_a_hf_folder_without_arch(towers, photos, tmp_path):
    folder, model = towers["laion"]
    head = cozzolino_file(folder, model, LAION["hidden_size"], photos)
    out = tmp_path / "laion.onnx"
    original = ["--weights", str(folder), "--head", f"cozzolino:{head}"]
    assert main(["export", *original, "-o", str(out)]) == 0
    images = tmp_path / "images"
    images.mkdir()
    for p in photos:
        shutil.copy(p, images / p.name)
    report = tmp_path / "verify"
    assert main(["verify", str(out), *original, "--images", str(images), "--report", str(report), "--no-launder"]) == 0
    gates = {g["name"]: g for g in json.loads((report / "report.json").read_text())["gates"]}
    assert gates["sources"]["passed"] and gates["preprocessing"]["passed"]
