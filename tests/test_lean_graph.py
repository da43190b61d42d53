"""The lean transformer graph: same function as open_clip's blocks, far less glue for ONNX Runtime."""
from __future__ import annotations

import collections

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from clipscan.runtime import Scanner, load_artifact

from .conftest import TINY_CONFIG, cosine, seeded_clip

GELU_CONFIG = {**TINY_CONFIG, "quick_gelu": False,
               "vision_cfg": {**TINY_CONFIG["vision_cfg"], "layers": 3, "width": 96, "head_width": 32}}


def _ops(path) -> collections.Counter:
    return collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node)


def _ort_optimized_ops(path, tmp_path) -> collections.Counter:
    """Op types of the graph ONNX Runtime actually runs on the CPU (after its fusions)."""
    out = tmp_path / f"{path.stem}.ort-optimized.onnx"
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.optimized_model_filepath = str(out)
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return _ops(out)


@pytest.fixture(scope="module")
def gelu_model_files(tmp_path_factory):
    """A small open_clip ViT with exact (erf) GELU, seeded weights, clipscan heads."""
    return seeded_clip(tmp_path_factory.mktemp("gelu_model"), GELU_CONFIG, 11, heads_dim=GELU_CONFIG["embed_dim"])


def test_lean_and_stock_graphs_compute_the_same_function(gelu_model_files, image_dir, tmp_path):
    from clipscan.export import export_model

    f = gelu_model_files
    layers = GELU_CONFIG["vision_cfg"]["layers"]
    lean = export_model(str(f["config"]), f["weights"], f["heads"], tmp_path / "lean.onnx")   # auto -> lean
    stock = export_model(str(f["config"]), f["weights"], f["heads"], tmp_path / "stock.onnx", graph="stock")
    assert lean.manifest.backbone["graph"] == "lean" and stock.manifest.backbone["graph"] == "stock"
    # both passed the export check against open_clip's own forward; and they agree with each other
    assert lean.checks["embedding_cosine_min"] >= 0.99999 and stock.checks["embedding_cosine_min"] >= 0.99999
    paths = sorted(p for p in image_dir.rglob("*") if p.is_file())
    with Scanner(lean.path) as a, Scanner(stock.path) as b:
        ra, rb = list(a.scan(paths)), list(b.scan(paths))
    ok = [i for i, r in enumerate(ra) if r.error is None]
    assert len(ok) >= 5 and [rb[i].error for i in ok] == [None] * len(ok)
    assert cosine(np.stack([ra[i].embedding for i in ok]), np.stack([rb[i].embedding for i in ok])).min() >= 0.999999
    np.testing.assert_allclose([ra[i].quality for i in ok], [rb[i].quality for i in ok], atol=1e-4)
    # the glue is gone: every linear layer is one Gemm with its bias, ~3 Transposes per block instead of ~8
    lo, so_ = _ops(lean.path), _ops(stock.path)
    assert lo["Gemm"] >= 4 * layers and lo["Transpose"] <= 3 * layers + 1 < so_["Transpose"], (lo, so_)
    assert lo["Add"] < so_["Add"]
    # and ONNX Runtime fuses the written-out erf GELU into its Gelu kernel (opset 18 has no Gelu op)
    ran = _ort_optimized_ops(lean.path, tmp_path)
    assert ran["Gelu"] == layers and ran["Erf"] == 0, ran


def test_gflops_in_the_manifest(gelu_model_files, tmp_path):
    """The FLOP count stored at export (for the benchmark's GFLOP/s column) matches the arithmetic."""
    from clipscan.export import export_model

    f = gelu_model_files
    rep = export_model(str(f["config"]), f["weights"], f["heads"], tmp_path / "m.onnx")
    v = GELU_CONFIG["vision_cfg"]
    tokens, width, layers = (224 // v["patch_size"]) ** 2 + 1, v["width"], v["layers"]
    per_layer = tokens * (width * 3 * width + width * width + 2 * width * 4 * width) + 2 * tokens * tokens * width
    patch = (tokens - 1) * 3 * v["patch_size"] ** 2 * width
    approx = 2 * (layers * per_layer + patch + width * GELU_CONFIG["embed_dim"]) / 1e9
    got = load_artifact(rep.path).manifest.backbone["gflops_per_image"]
    assert abs(got - approx) / approx < 0.02, (got, approx)


def test_custom_blocks_fall_back_to_the_stock_graph(tmp_path):
    """open_clip's CustomResidualAttentionBlock (qk-norm etc.) is not lean-expressible: auto exports the
    stock graph and says so; asking for lean explicitly is a clear error."""
    cfg = {**TINY_CONFIG, "vision_cfg": {**TINY_CONFIG["vision_cfg"], "scale_attn": True}}
    try:
        files = seeded_clip(tmp_path, cfg, 5, heads_dim=TINY_CONFIG["embed_dim"])
    except TypeError as e:  # an open_clip without the option; the test must not pass silently
        pytest.fail(f"this open_clip cannot build a tower with custom blocks: {e}")
    assert type(files["model"].visual.transformer.resblocks[0]).__name__ == "CustomResidualAttentionBlock"

    from clipscan.export import export_model

    rep = export_model(str(tmp_path / "cfg.json"), tmp_path / "w.pt", tmp_path / "heads.pt", tmp_path / "m.onnx")
    assert rep.manifest.backbone["graph"] == "stock"
    with pytest.raises(ValueError, match="CustomResidualAttentionBlock.*--graph stock"):
        export_model(str(tmp_path / "cfg.json"), tmp_path / "w.pt", tmp_path / "heads.pt", tmp_path / "l.onnx",
                     graph="lean")
