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
    """The committed demo is what `python -m clipscan.export.demo` builds (same scores on the samples)."""
    from clipscan.export.demo import build_demo

    report = build_demo(tmp_path / "demo.onnx", tmp_path / "samples")
    for a, b in zip(sorted(SAMPLES.iterdir()), sorted((tmp_path / "samples").iterdir())):
        assert a.name == b.name
    with Scanner(report.path) as rebuilt, Scanner() as shipped:
        new = [(r.p_generated, r.quality) for r in rebuilt.scan([SAMPLES])]
        old = [(r.p_generated, r.quality) for r in shipped.scan([SAMPLES])]
    np.testing.assert_allclose(new, old, atol=1e-3)
