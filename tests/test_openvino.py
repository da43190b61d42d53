"""The OpenVINO backend (`--backend openvino`, the [openvino] extra): the same artifacts compiled by OpenVINO's
CPU plugin in f32, next to ONNX Runtime on the same images: the demo (FP32) and an INT8 (QDQ) artifact; never
chosen by auto; without the package, one sentence that names the extra."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

from clipscan.runtime import Scanner
from clipscan.runtime.backends import AUTO_CHAIN
from clipscan.runtime.fidelity_metrics import compare_outputs

from .conftest import REPO, SAMPLES, blocked_env, cosine

if importlib.util.find_spec("openvino") is None:  # part of the [test] extra
    if os.environ.get("CI") == "true":
        raise RuntimeError("openvino is not installed, and CI must run the OpenVINO backend tests: "
                           "pip install -e '.[export,test]'")
    pytest.skip("openvino is not installed (pip install -e '.[test]'): the OpenVINO backend tests cannot run",
                allow_module_level=True)


def test_auto_never_picks_openvino():
    # that --backend offers exactly auto and the registry is tests/test_one_source.py's
    assert "openvino" not in AUTO_CHAIN
    with Scanner(backend="auto") as s:
        assert s.backend_name == "onnxruntime-cpu"


def test_demo_rows_equal_onnx_runtime_and_name_openvino():
    with Scanner(backend="openvino") as ov, Scanner(backend="cpu") as ort:
        assert ov.backend_name == "openvino-cpu"
        import openvino

        assert ov.backend.compiled.get_property("INFERENCE_PRECISION_HINT") == openvino.Type.f32
        got, want = list(ov.scan([SAMPLES])), list(ort.scan([SAMPLES]))
        assert len(got) == len(want) >= 4 and {r.backend for r in got} == {"openvino-cpu"}
        for a, b in zip(got, want):
            assert a.path == b.path and a.verdict == b.verdict and a.error == b.error
            assert abs(a.logit - b.logit) <= 1e-4 and abs(a.quality - b.quality) <= 1e-4
            assert cosine(a.embedding, b.embedding) >= 0.99999
        # dynamic batch: 1, 3 and 7 rows through one compiled model, the output copied out of the request
        pixels = np.concatenate([ort.prepare(p) for p in sorted(SAMPLES.glob("*.jpg"))] * 4)
        for n in (1, 3, 7):
            first = ov.predict(pixels[:n])
            again = ov.predict(pixels[n:2 * n])
            assert first["embedding"].shape[0] == n and not np.shares_memory(first["embedding"], again["embedding"])
            np.testing.assert_allclose(first["embedding"], ort.predict(pixels[:n])["embedding"], atol=1e-4)


@pytest.mark.slow
def test_an_int8_artifact_keeps_its_gates_on_openvino(tmp_path):
    """A smooth-recipe INT8 artifact of a small outlier-injected ViT: OpenVINO and ONNX Runtime on the same pixels
    agree with each other as closely as either does with the FP32 graph."""
    from clipscan.calibration import int8
    from clipscan.calibration.calib_data import load_calibration_set

    from .outlier_vit import build_outlier_model, write_image_sets
    from .test_calibrate import SMALL_CFG

    built = build_outlier_model(tmp_path, SMALL_CFG, fit_images=16)
    calib, val = write_image_sets(tmp_path, n_calib=16, n_val=16)
    art = int8.load_artifact(built["onnx"])
    cset = load_calibration_set(art.manifest, art.sha256(), [calib], progress=False)
    q = int8.quantize_artifact(built["onnx"], tmp_path / "int8.onnx", cset, int8.RECIPES["smooth"], "cpu",
                               progress=False)
    with Scanner(q.path, backend="openvino") as ov, Scanner(q.path, backend="cpu") as ort, \
            Scanner(built["onnx"], backend="cpu") as fp32:
        pixels = np.concatenate([fp32.prepare(p) for p in sorted(val.rglob("*.*"))])
        ref = fp32.predict(pixels)
        on_ov, on_ort = ov.predict(pixels), ort.predict(pixels)
        ov_vs_fp32 = compare_outputs(ov.manifest, ref, on_ov)
        ort_vs_fp32 = compare_outputs(ort.manifest, ref, on_ort)
        assert cosine(on_ov["embedding"], on_ort["embedding"]).min() >= 0.999
        assert ov_vs_fp32["cosine_worst"] >= ort_vs_fp32["cosine_worst"] - 0.002, (ov_vs_fp32, ort_vs_fp32)
        assert ov_vs_fp32["agreement"] >= ort_vs_fp32["agreement"] - 1 / len(pixels)


def test_without_openvino_the_backend_is_one_sentence_naming_the_extra(tmp_path):
    env = blocked_env(tmp_path, ("openvino",), "this process simulates an install without clipscan[openvino]")
    proc = subprocess.run([sys.executable, "-m", "clipscan", "scan", "--backend", "openvino", str(SAMPLES)],
                          check=False, cwd=REPO, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "backend 'openvino' was requested but cannot start: openvino is not installed" in proc.stderr
    assert "pip install 'clipscan[openvino]'" in proc.stderr
