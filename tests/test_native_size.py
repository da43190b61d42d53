"""CLIP-IQA, CLIP-IQA+ and LIQE at each image's own size (`export --resize-mode native`), as IQA-PyTorch runs them:
the whole image, only normalised, through a CLIP that adds no positional embedding (or, for the _512 CLIP-IQA+
files, one resampled to that image's token count). Exported through the CLI on the seeded tiny ViT and the tiny
ModifiedResNet of test_iqa_heads, scanned with the runtime on photos of many sizes (some no multiple of the patch
size), and compared with pyiqa's forward re-expressed there, fed one image at a time at its own size. Images
outside the recorded bounds get their own error while the others are answered."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
import torchvision.transforms as T
from PIL import Image

from clipscan.cli import main
from clipscan.runtime import Scanner
from clipscan.runtime.errors import BackendError, ClipscanError, ManifestError
from clipscan.runtime.manifest import Manifest

from .test_iqa_heads import (PAIRS, assert_matches, clipiqa_plus_file, liqe_file, pyiqa_clipiqa,  # noqa: F401
                             pyiqa_liqe, rn_clip, setup, tokenize)

MAX_PIXELS = 300_000     # --max-input-pixels of these exports: the 600x520 image below is over it


@pytest.fixture(scope="module")
def odd_photos(setup):
    """The photos of test_iqa_heads (four JPEGs, four wide PNG strips) plus sizes that are no multiple of 32,
    one at the ViT's smallest side, one under the RN's and ViT's smallest side and one over MAX_PIXELS."""
    d = setup["dir"] / "odd"
    d.mkdir()
    base = Image.open(setup["photos"][0]).convert("RGB")
    sizes = {"odd_97x333": (97, 333), "odd_45x61": (45, 61), "odd_259x131": (259, 131), "min_32x40": (32, 40)}
    for name, size in sizes.items():
        base.resize(size, Image.Resampling.BICUBIC).save(d / f"{name}.png")
    base.resize((20, 300), Image.Resampling.BICUBIC).save(d / "small_20x300.png")
    base.resize((600, 520), Image.Resampling.BICUBIC).save(d / "large_600x520.png")
    good = list(setup["photos"]) + [d / f"{n}.png" for n in sizes]
    return good, [d / "small_20x300.png", d / "large_600x520.png"]


def export_native(out, config, weights, heads):
    assert main(["export", "--arch", str(config), "--weights", str(weights), *(a for h in heads for a in ("--head", h)),
                 "--resize-mode", "native", "--max-input-pixels", str(MAX_PIXELS), "-o", str(out), "-q"]) == 0


def scan_native(out, good, bad):
    """Scan good and bad images interleaved in batches of 4 (mixed sizes): {head: scores of `good`}, manifest."""
    order = [good[0], bad[0], *good[1:5], bad[1], *good[5:]]
    with Scanner(out, batch_size=4) as scanner:
        results = list(scanner.scan(order))
        manifest = scanner.manifest
    assert [r.path for r in results] == [str(p) for p in order]
    by_path = {r.path: r for r in results}
    small, large = by_path[str(bad[0])], by_path[str(bad[1])]
    assert small.error.startswith("too_small: this 20x300 image has a side under"), small.error
    assert large.error.startswith("too_large: this 600x520 image has 312000 pixels, over the 300000"), large.error
    assert "--max-input-pixels" in large.error
    assert all(by_path[str(p)].ok for p in good), [by_path[str(p)].error for p in good]
    return {h.name: np.array([by_path[str(p)].heads[h.name]["score"] for p in good]) for h in manifest.heads}, manifest


def pyiqa_own_size(model, paths, text, pos_embedding=False) -> np.ndarray:
    """pyiqa's CLIPIQA on each file as its imread2tensor reads it: the whole image in [0, 1], batch 1 (with
    `pos_embedding`, the tower's embedding resampled to that image's token count, as for the _512 files)."""
    return np.concatenate([pyiqa_clipiqa(model, T.ToTensor()(Image.open(p).convert("RGB"))[None], text,
                                         pos_embedding=pos_embedding) for p in paths])


def check_artifact(out, manifest, min_side):
    assert manifest.input.own_size.min_side == min_side and manifest.input.own_size.max_pixels == MAX_PIXELS
    assert (manifest.preprocess.resize_mode, manifest.preprocess.crop_mode) == ("none", "none")
    assert manifest.sources["export"]["resize_mode"] == "native"
    dims = onnx.load(str(out)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["batch", 3, "height", "width"]


@pytest.fixture(scope="module")
def native_vit(setup, tmp_path_factory):
    """clip-iqa and clip-iqa+ (pyiqa's bare-context file) on the seeded tiny ViT, at each image's own size."""
    d = tmp_path_factory.mktemp("native")
    plus_file = d / "CLIP-IQA+_learned_prompts.pth"
    plus_text = clipiqa_plus_file(setup["model"], plus_file, "ctx")
    out = d / "native-iqa.onnx"
    export_native(out, setup["config"], setup["weights"], ["clip-iqa", f"clip-iqa+:{plus_file}"])
    return out, plus_text


@pytest.mark.slow
def test_clip_iqa_at_own_size_on_a_vit_matches_pyiqa(setup, native_vit, odd_photos, tmp_path, capsys):
    model = setup["model"]
    out, plus_text = native_vit
    good, bad = odd_photos
    got, manifest = scan_native(out, good, bad)
    check_artifact(out, manifest, 32)
    with torch.no_grad():
        text = model.encode_text(tokenize(PAIRS))
    ref = pyiqa_own_size(model, good, text)
    assert_matches(got["clip_iqa"], ref)
    assert_matches(got["clip_iqa_plus"], pyiqa_own_size(model, good, plus_text))
    # the image's own size matters: the same photos at the tower's centre crop score differently
    from .test_iqa_heads import pyiqa_input

    assert np.abs(ref - pyiqa_clipiqa(model, pyiqa_input(good), text)).max() > 1e-3
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    assert "each image at its own size (sides >= 32, at most 300000 pixels)" in capsys.readouterr().out
    # verify runs the PyTorch original at each image's own size too (recorded: --resize-mode native)
    photos = tmp_path / "verify"
    photos.mkdir()
    for p in good[4:]:
        (photos / p.name).write_bytes(p.read_bytes())
    report = tmp_path / "report"
    assert main(["verify", str(out), "--images", str(photos), "--report", str(report), "--no-launder", "-q"]) == 0
    data = json.loads((report / "report.json").read_text())
    assert data["passed"] and data["metrics"]["n_images"] == len(good) - 4


@pytest.mark.slow
def test_clip_iqa_at_own_size_on_a_resnet_matches_pyiqa(setup, rn_clip, odd_photos, tmp_path):
    """The tiny ModifiedResNet: its smallest side is 31 (stride-2 stem, 2x2 pool, three stride-2 stages)."""
    model = rn_clip["model"]
    plus_file = tmp_path / "CLIP-IQA+_learned_prompts.pth"
    plus_text = clipiqa_plus_file(model, plus_file, "ctx")
    out = tmp_path / "native_rn.onnx"
    export_native(out, rn_clip["config"], rn_clip["weights"], ["clip-iqa", f"clip-iqa+:{plus_file}"])
    good, bad = odd_photos
    got, manifest = scan_native(out, good, bad)
    check_artifact(out, manifest, 31)
    with torch.no_grad():
        text = model.encode_text(tokenize(PAIRS))
    assert_matches(got["clip_iqa"], pyiqa_own_size(model, good, text))
    assert_matches(got["clip_iqa_plus"], pyiqa_own_size(model, good, plus_text))


@pytest.mark.slow
def test_liqe_at_own_size_matches_pyiqa(setup, liqe_file, odd_photos, tmp_path, capsys):
    """LIQE keeps its tower at 224 (with its positional embedding) and picks pyiqa's crops from each image's own
    grid of windows in the graph: min(15, windows) at 0, s, 2s, ... (s = max(1, windows // n)), logits averaged.
    An image with a side under 224 (which pyiqa asserts against) is a too_small error."""
    path, tuned = liqe_file
    out = tmp_path / "liqe_native.onnx"
    assert main(["export", "--arch", str(setup["config"]), "--weights", str(path), "--head", f"liqe:{path}",
                 "--head", f"liqe-mix:{path}", "--resize-mode", "native", "-o", str(out), "-q"]) == 0
    base = Image.open(setup["photos"][0]).convert("RGB")
    extra = []      # 1 window; 3 x 1; 1 x 15 (all); 21 x 15 (every 21st of 315, past the first row)
    for w, h in ((224, 224), (230, 300), (700, 250), (700, 900)):
        extra.append(tmp_path / f"liqe_{w}x{h}.png")
        base.resize((w, h), Image.Resampling.BICUBIC).save(extra[-1])
    big = [p for p in odd_photos[0][:5] if min(Image.open(p).size) >= 224] + extra   # JPEGs and a strip
    small = [p for p in odd_photos[0] if min(Image.open(p).size) < 224][:2]
    assert len(big) >= 8 and len(small) == 2
    with Scanner(out, batch_size=3) as scanner:
        results = list(scanner.scan(big + small))
        manifest = scanner.manifest
    assert all(r.ok for r in results[:len(big)]) and all(r.error.startswith("too_small") for r in results[len(big):])
    assert manifest.input.own_size.min_side == 224
    assert manifest.preprocess.graph_crops == {"size": [224, 224], "stride": 32, "count": 15,
                                               "aggregate": "mean_normalized_embedding"}
    files = [T.ToTensor()(Image.open(p).convert("RGB"))[None] for p in big]   # pyiqa's imread2tensor
    for head, mix in (("liqe", False), ("liqe_mix", True)):
        got = np.array([r.heads[head]["score"] for r in results[:len(big)]])
        assert_matches(got, np.concatenate([pyiqa_liqe(tuned, x, mix=mix) for x in files]))
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    assert "up to 15 crops of 224x224, evenly spaced over each image's own grid" in capsys.readouterr().out


def check_clip_iqa_plus_512_at_own_size(model, config, weights, odd_photos, tmp_path, min_side):
    """A _512 CLIP-IQA+ file exported with --resize-mode native through the CLI and scanned at each image's own
    size: pyiqa's forward with pos_embedding=True on each file (the tower's embedding resampled to its tokens)."""
    plus = tmp_path / "CLIPIQA+_512.pth"
    text = clipiqa_plus_file(model, plus, "params")
    out = tmp_path / "native_512.onnx"
    export_native(out, config, weights, [f"clip-iqa+:{plus}"])
    good, bad = odd_photos
    got, manifest = scan_native(out, good, bad)
    check_artifact(out, manifest, min_side)
    ref = pyiqa_own_size(model, good, text, pos_embedding=True)
    assert_matches(got["clip_iqa_plus"], ref)
    assert "at each image's own size, the tower's positional embedding resized" in manifest.heads[0].description
    resize = [n for n in onnx.load(str(out)).graph.node if n.op_type == "Resize"]
    assert len(resize) == 1      # the embedding's, sized from the input's shape: cubic, -0.75, half-pixel centres
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in resize[0].attribute}
    assert attrs["mode"] == b"cubic" and attrs["cubic_coeff_a"] == -0.75
    assert attrs.get("coordinate_transformation_mode", b"half_pixel") in (b"half_pixel", b"pytorch_half_pixel")
    return out, text, ref


@pytest.mark.slow
def test_clip_iqa_plus_512_at_own_size_on_a_vit_matches_pyiqa(setup, odd_photos, tmp_path):
    """clipiqa+_vitL14_512's layout on the tiny ViT (32 px patches, 50 positional embeddings): resampled in the graph
    to 2 tokens (32x40) ... 261 (640x427's 20 x 13 patches and the class token)."""
    from .test_iqa_heads import pyiqa_input_koniq

    model, good = setup["model"], odd_photos[0]
    _, text, ref = check_clip_iqa_plus_512_at_own_size(model, setup["config"], setup["weights"], odd_photos, tmp_path,
                                                       32)
    # the resampled embedding matters (pyiqa's pos_embedding=False differs), and so does each image's own size
    # (the fixed 512x384 frame differs)
    assert np.abs(ref - pyiqa_own_size(model, good, text)).max() > 1e-3
    frame = pyiqa_clipiqa(model, pyiqa_input_koniq(good, (384, 512)), text, pos_embedding=True)
    assert np.abs(ref - frame).max() > 1e-3


@pytest.mark.slow
def test_clip_iqa_plus_512_at_own_size_on_a_resnet_matches_pyiqa(setup, rn_clip, odd_photos, tmp_path):
    """clipiqa+_rn50_512's layout on the tiny ModifiedResNet: its attention pool's 10 embeddings resampled to the
    feature grid of each image (and the mean token); verify rebuilds the original at each size and agrees."""
    out, _, _ = check_clip_iqa_plus_512_at_own_size(rn_clip["model"], rn_clip["config"], rn_clip["weights"],
                                                    odd_photos, tmp_path, 31)
    photos = tmp_path / "verify"
    photos.mkdir()
    for p in odd_photos[0][4:]:
        (photos / p.name).write_bytes(p.read_bytes())
    assert main(["verify", str(out), "--images", str(photos), "--report", str(tmp_path / "report"), "--no-launder",
                 "-q"]) == 0


def test_resampled_embedding_in_onnx_runtime_equals_torch(setup):
    """The graph's resampling of a positional embedding to the token count of its input (one ONNX Resize, sizes
    from the input's shape) against torch's F.interpolate as pyiqa calls it, at grids from 1 x 1 to 64 x 48 and at
    the tower's own 7 x 7 (the identity): the difference is float32 rounding of the source coordinate."""
    import onnxruntime as ort

    from clipscan.export.graph import embedding_for_tokens
    from clipscan.export.onnx_writer import to_onnx

    pe = setup["model"].visual.positional_embedding.detach().clone()     # (50, 64), open_clip's init scale

    class Resampled(torch.nn.Module):
        def forward(self, x):   # tokens of a 32-px patch grid and the class token
            return embedding_for_tokens(pe, (x.shape[2] // 32) * (x.shape[3] // 32) + 1) + 0 * x.mean()

    model = to_onnx(Resampled(), torch.zeros(1, 3, 64, 96), "pixels", ["pe"], 18, own_size=(32, 4096))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for h, w in ((1, 1), (1, 2), (3, 5), (7, 7), (12, 16), (27, 36), (33, 17), (64, 48)):
        x = torch.zeros(1, 3, 32 * h, 32 * w)
        ref = torch.nn.functional.interpolate(pe[None, None], size=(h * w + 1, pe.shape[1]), mode="bicubic")[0, 0]
        got = session.run(None, {"pixels": x.numpy()})[0]
        assert got.shape == ref.shape
        np.testing.assert_allclose(got, ref.numpy(), rtol=0, atol=1e-5 * float(pe.abs().max()))
        if (h, w) == (7, 7):
            np.testing.assert_array_equal(got, pe.numpy())


def test_own_size_is_refused_where_a_fixed_size_is_needed(setup, tmp_path):
    from clipscan.export import export_model
    from clipscan.export.heads import DetectorHead, QualityHead, save_heads

    linear, dim = tmp_path / "heads.pt", setup["model"].visual.output_dim    # heads trained on one input size
    save_heads(linear, DetectorHead(dim), QualityHead([dim, 8, 1]))
    with pytest.raises(ClipscanError, match="--resize-mode native .* scored at one input size;.*export these with"):
        export_model(str(setup["config"]), setup["weights"], str(linear), tmp_path / "x.onnx", resize_mode="native")
    plus = tmp_path / "CLIPIQA+_ViTL14_512.pth"       # the _512 layout: a pass with the resampled embedding
    clipiqa_plus_file(setup["model"], plus, "params")
    with pytest.raises(ClipscanError, match="resampled to the input's token count .* cannot share one backbone pass"):
        export_model(str(setup["config"]), setup["weights"], [f"clip-iqa+:{plus}", "clip-iqa"], tmp_path / "x.onnx",
                     resize_mode="native")
    for kwargs, what in (({"precision": "fp16"}, "FP32 only"), ({"graph": "lean"}, "lean graph fixes the token"),
                         ({"max_input_pixels": 100}, "--max-input-pixels is 100")):
        with pytest.raises(ClipscanError, match=what):
            export_model(str(setup["config"]), setup["weights"], "clip-iqa", tmp_path / "x.onnx", resize_mode="native",
                         **kwargs)
    assert not (tmp_path / "x.onnx").exists()


def test_manifest_own_size_is_checked():
    d = {"name": "pixels", "layout": "NCHW", "dtype": "float32", "color": "RGB", "size": [224, 224],
         "normalize": {"mean": [0.5] * 3, "std": [0.5] * 3}, "own_size": {"min_side": 32, "max_pixels": 1 << 22}}
    pre = {"exif_orientation": "apply", "frame": "first", "bit_depth": "rescale",
           "resize": {"mode": "none", "size": [224, 224], "interpolation": "bicubic"},
           "crop": {"mode": "none", "size": [224, 224], "pad_fill": 0},
           "convert": {"color": "RGB", "alpha": "drop", "when": "decode"}}
    head = {"name": "q", "task": "quality", "outputs": {"score": "quality"}, "scale": {"kind": "probability"}}
    base = {"format": "clipscan.manifest", "schema_version": 1, "name": "m", "precision": "fp32", "opset": 18,
            "input": d, "preprocess": pre, "backbone": {}, "heads": [head]}
    m = Manifest.from_dict(json.loads(json.dumps(base)))
    assert m.input.own_size.max_pixels == 1 << 22 and m.input.spatial() == (-1, -1)
    assert Manifest.from_json(m.to_json()).input == m.input
    for change, message in (
            ({"own_size": {"min_side": 0, "max_pixels": 10}}, "'input.own_size.min_side' should be >= 1"),
            ({"own_size": {"min_side": 32, "max_pixels": 1000}}, "'input.own_size.max_pixels' should be >= 1024"),
            ({"own_size": {"min_side": 32, "max_pixels": 1 << 30}}, "over clipscan's limit of 16777216"),
            ({"own_size": {"min_side": 32}}, "'input.own_size.max_pixels' is missing")):
        bad = json.loads(json.dumps(base))
        bad["input"].update(change)
        with pytest.raises(ManifestError, match=message):
            Manifest.from_dict(bad)
    bad = json.loads(json.dumps(base))
    bad["preprocess"]["resize"]["mode"] = "shortest"
    with pytest.raises(ManifestError, match="needs resize 'none' and crop 'none'"):
        Manifest.from_dict(bad)
    # crops the graph picks from each image's own size (LIQE): a count, no fixed origins, tiles within min_side
    crops = {"size": [224, 224], "stride": 32, "count": 15, "aggregate": "mean_normalized_embedding"}
    ok = json.loads(json.dumps(base))
    ok["input"]["own_size"]["min_side"] = 224
    ok["preprocess"]["graph_crops"] = crops
    assert Manifest.from_dict(ok).preprocess.graph_crops["count"] == 15
    for change, message in (({"origins": [[0, 0]]}, "lists fixed windows"), ({"count": 0}, "count' should be >= 1")):
        bad = json.loads(json.dumps(ok))
        bad["preprocess"]["graph_crops"].update(change)
        with pytest.raises(ManifestError, match=message):
            Manifest.from_dict(bad)
    bad = json.loads(json.dumps(ok))
    bad["input"]["own_size"]["min_side"] = 32
    with pytest.raises(ManifestError, match="under the 224x224 windows"):
        Manifest.from_dict(bad)


def test_services_take_or_refuse_an_own_size_artifact(setup, native_vit, odd_photos, tmp_path):
    """serve answers OIP `image` requests and reports -1 for the pixels model's height and width; evaluate's
    reference and OpenVINO run it; TensorRT, calibrate, bench and a Triton ensemble refuse it, naming what to do
    instead."""
    import tritonclient.http as httpclient

    from clipscan.calibration.pipeline import calibrate_artifact
    from clipscan.runtime.backends.int8_target import refuse_own_size
    from clipscan.serve import Limits, ServiceState
    from clipscan.triton import RepositoryOptions, write_repository

    from .serve_servers import request, thread_server

    native_vit, plus_text = native_vit
    good, bad = odd_photos
    files = [good[0], good[5], bad[0], good[6]]
    with Scanner(native_vit) as local:
        expected = list(local.scan(files))
        manifest = local.manifest
        pixels = local.prepare(files[1])     # (1, 3, H, W) at the image's own size
    with Scanner(native_vit) as scanner:
        with thread_server(ServiceState(scanner, Limits())) as url:
            meta = json.loads(request(url + "/v2/models/native-iqa_pixels")[2])
            assert meta["inputs"] == [{"name": "pixels", "datatype": "FP32", "shape": [-1, 3, -1, -1]}]
            client = httpclient.InferenceServerClient(url.removeprefix("http://"))
            inp = httpclient.InferInput("image", [len(files), 1], "BYTES")
            inp.set_data_from_numpy(np.array([p.read_bytes() for p in files], dtype=object).reshape(-1, 1),
                                    binary_data=True)
            result = client.infer("native-iqa", [inp])
            quality = result.as_numpy("quality").ravel()
            errors = [e.decode() for e in result.as_numpy("error").ravel()]
            for i, r in enumerate(expected):
                assert errors[i] == (r.error or "")
                assert np.isnan(quality[i]) if r.error else quality[i] == pytest.approx(r.quality, abs=1e-6)
            assert errors[2].startswith("too_small")
            # preprocessed pixels at an image's own size go to the pixels model; under the smallest side, a 400
            pin = httpclient.InferInput("pixels", list(pixels.shape), "FP32")
            pin.set_data_from_numpy(pixels, binary_data=True)
            got = client.infer("native-iqa_pixels", [pin]).as_numpy("quality")[0, 0]
            assert got == pytest.approx(expected[1].quality, abs=1e-6)
            tiny = httpclient.InferInput("pixels", [1, 3, 16, 64], "FP32")
            tiny.set_data_from_numpy(np.zeros((1, 3, 16, 64), np.float32), binary_data=True)
            with pytest.raises(Exception, match="too_small"):
                client.infer("native-iqa_pixels", [tiny])
            client.close()
    # evaluate's PyTorch side: the original at each image's own size, the artifact's bounds as per-item errors
    from clipscan.calibration.reference_scores import reference_scores
    from clipscan.export import load_reference
    from clipscan.export.recorded import original_from_manifest

    o = original_from_manifest(native_vit, manifest)        # what export recorded, resize mode native
    original = load_reference(o.arch, o.weights, o.heads, resize_mode=o.resize_mode)
    scores = reference_scores(native_vit, original, [str(p) for p in files], batch_size=3)
    assert scores.errors[2].startswith("too_small") and scores.heads[2] is None
    assert [h["clip_iqa"]["score"] for i, h in enumerate(scores.heads) if i != 2] == pytest.approx(
        [r.quality for i, r in enumerate(expected) if i != 2], rel=1e-5)
    try:
        import openvino  # noqa: F401
    except ImportError:
        pass
    else:   # OpenVINO compiles the dynamic height and width too
        with Scanner(native_vit, backend="openvino", fallback=False) as ov:
            assert [r.quality for r in ov.scan(files)] == pytest.approx([r.quality for r in expected], abs=1e-5,
                                                                          nan_ok=True)
    with pytest.raises(BackendError, match="one fixed height and width.*--backend cuda or cpu"):
        refuse_own_size(manifest, "tensorrt")
    with pytest.raises(ClipscanError, match="takes each image at its own size .* makes no INT8 model of it"):
        calibrate_artifact(native_vit, [str(good[0].parent)], tmp_path / "int8.onnx", progress=False)
    with pytest.raises(ClipscanError, match="an ensemble passes one batch tensor.*--layout python"):
        write_repository(native_vit, tmp_path / "repo", RepositoryOptions(kind="cpu", layout="ensemble"))
    write_repository(native_vit, tmp_path / "repo2", RepositoryOptions(kind="cpu"))   # python layout: the Scanner
    assert main(["bench", str(native_vit), "--images", str(good[0].parent), "--backends", "cpu",
                 "--json", str(tmp_path / "bench.json")]) == 2
