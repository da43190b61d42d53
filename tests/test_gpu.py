"""GPU check: every GPU backend and precision against ONNX Runtime on the CPU, under the fidelity gates.

Run it on a machine with an NVIDIA GPU and the GPU extras:
    pip install -e '.[export,test,gpu,tensorrt]'   # see the README for the onnxruntime-gpu swap
    python -m pytest -m gpu -rs tests/test_gpu.py
Without a CUDA GPU every test here is skipped, with the reason printed (CI has no GPU).
"""
from __future__ import annotations

import numpy as np
import pytest

from clipscan.runtime import Scanner
from clipscan.runtime.backends import backend_status

from .conftest import cosine

GPU_BACKENDS = ("tensorrt", "ort-tensorrt", "cuda")
_REASONS = {name: reason for name, _, reason in backend_status() if name in GPU_BACKENDS}
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(all(_REASONS.values()),
                                 reason="no GPU backend can run here: " + "; ".join(f"{k}: {v}" for k, v in _REASONS.items()))]

GATES = {  # embedding cosine mean / worst and decision agreement, as in the fidelity protocol
    "fp32": (0.99999, 0.9999, 1.0),
    "fp16": (0.9995, 0.999, 0.999),
    "int8": (0.99, 0.98, 0.99),
}


@pytest.fixture(scope="module")
def artifacts(tiny_model_files, tmp_path_factory):
    from clipscan.export import export_model

    d = tmp_path_factory.mktemp("gpu_artifacts")
    out = {}
    for precision in ("fp32", "fp16"):
        out[precision] = export_model(str(tiny_model_files["config"]), tiny_model_files["weights"],
                                      tiny_model_files["heads"], d / f"tiny_{precision}.onnx",
                                      precision=precision).path
    return out


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    from clipscan.export import demo_data

    d = tmp_path_factory.mktemp("gpu_photos")
    images, _ = demo_data.detector_set(32, seed=13)
    for i, img in enumerate(images):
        img.save(d / f"img_{i:03d}.png")
    return sorted(d.iterdir())


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_gpu_backend_agrees_with_the_cpu(backend, precision, artifacts, photos, tmp_path):
    reason = _REASONS[backend]
    if reason is not None:
        pytest.skip(f"{backend} is not available here: {reason}")
    with Scanner(artifacts["fp32"], backend="cpu") as cpu:
        ref = list(cpu.scan(photos))
    with Scanner(artifacts[precision], backend=backend, batch_size=8, max_batch=16,
                 cache_dir=str(tmp_path / "cache")) as gpu:
        assert gpu.backend_name != "onnxruntime-cpu"
        got = list(gpu.scan(photos))
        again = list(gpu.scan(photos))  # second run: from the engine cache, same answers
    assert [r.error for r in got] == [None] * len(photos)
    cos = cosine(np.stack([r.embedding for r in got]), np.stack([r.embedding for r in ref]))
    mean_gate, worst_gate, agree_gate = GATES[precision]
    agreement = np.mean([a.verdict == b.verdict for a, b in zip(got, ref)])
    print(f"{backend} {precision}: cosine mean {cos.mean():.6f} worst {cos.min():.6f}, agreement {agreement:.4f}")
    assert cos.mean() >= mean_gate and cos.min() >= worst_gate and agreement >= agree_gate
    np.testing.assert_allclose([r.p_generated for r in again], [r.p_generated for r in got], atol=1e-6)
