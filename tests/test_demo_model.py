"""The bundled demo model: present, honest about itself, scans the sample folder, rebuildable."""
from __future__ import annotations

import json

import numpy as np
import pytest

from clipscan.cli import main
from clipscan.runtime import Scanner, load_artifact
from clipscan.runtime.artifact import DEMO_MODEL

from .conftest import SAMPLES


def test_demo_model_is_the_default_and_says_it_is_a_demo(capsys):
    artifact = load_artifact()
    assert artifact.path == DEMO_MODEL and artifact.is_demo
    assert artifact.manifest.description.startswith("DEMO ONLY")
    assert DEMO_MODEL.stat().st_size < 8_000_000, "the demo must stay small enough to ship in the wheel"
    assert main(["info"]) == 0
    assert "bundled demo model" in capsys.readouterr().out


def test_samples_scan_with_expected_verdicts(capsys):
    assert main(["scan", str(SAMPLES)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    verdicts = {r["path"].split("/")[-1]: r["verdict"] for r in rows}
    assert verdicts == {"photo_chelsea.jpg": "real", "photo_motorcycle_left.jpg": "real",
                        "render_001.png": "generated", "render_002.png": "generated"}


@pytest.mark.slow
def test_demo_rebuilds_from_code(tmp_path):
    """The committed demo is what `python -m clipscan.export.demo` builds, on any CPU.

    Why the rebuild is the same everywhere: the backbone's weights come from torch's seeded CPU
    generator (bit-identical across x86-64 CPUs); the embeddings the heads are fitted on are
    computed in float64 on one thread, and both heads are fitted in float64 by procedures that
    do not amplify rounding (convex L-BFGS for the detector, a closed-form ridge solve for the
    quality head). Another CPU's float64 kernels round differently by about 1e-15, so the fitted
    weights agree far below float32 resolution; after the cast to float32 a weight can differ by
    at most one rounding step. The bound checked on every weight tensor is therefore 2^-22 of
    that tensor's largest magnitude (two float32 steps), not a tolerance found by trial.

    On outputs, both files run here on the same ONNX Runtime kernels, so the only difference is
    those weight steps: a relative weight change of 2^-22 moves a logit of order 10 or a MOS on a
    4-point scale by about 1e-6. 1e-5 on p_generated and quality still leaves a factor of ten for
    the accumulation over a layer, and the verdicts must be identical.
    """
    import onnx
    from onnx import numpy_helper

    from clipscan.export.demo import build_demo

    report = build_demo(tmp_path / "demo.onnx", tmp_path / "samples")
    for a, b in zip(sorted(SAMPLES.iterdir()), sorted((tmp_path / "samples").iterdir())):
        assert a.name == b.name

    def weights(path):
        return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}

    new_w, old_w = weights(report.path), weights(DEMO_MODEL)
    assert new_w.keys() == old_w.keys(), "the rebuilt graph has other weight tensors than the shipped one"
    for name, old in old_w.items():
        if old.dtype.kind != "f" or old.size == 0:
            np.testing.assert_array_equal(new_w[name], old, err_msg=name)
            continue
        scale = float(np.abs(old).max()) or 1.0
        step = float(np.abs(new_w[name].astype(np.float64) - old).max())
        assert step <= 2.0 ** -22 * scale, f"{name}: max difference {step:.3g} exceeds two float32 steps of {scale:.3g}"

    with Scanner(report.path) as rebuilt, Scanner() as shipped:
        new = list(rebuilt.scan([SAMPLES]))
        old = list(shipped.scan([SAMPLES]))
    assert [r.verdict for r in new] == [r.verdict for r in old]
    np.testing.assert_allclose([(r.p_generated, r.quality) for r in new], [(r.p_generated, r.quality) for r in old],
                               atol=1e-5, rtol=0)
