"""The bar of issue 4: a corpus of over a thousand real-world files scans in one run.

One row per file, no crash, no hang, the expected outcome for every file whose
outcome is certain, and preprocessing parity on every file that decodes.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter

import numpy as np
import open_clip
import pytest

from clipscan.runtime.decode import load_image
from clipscan.runtime.image_formats import FORMATS
from clipscan.runtime.manifest import InputSpec, PreprocessSpec
from clipscan.runtime.preprocess import Preprocessor

from .corpus import build_corpus
from .test_preprocess import MEAN, STD, reference_decode


# the widest set clipscan decodes: every format of the registry; the corpus's other formats (IM, MSP,
# XBM, SPIDER, BLP, EPS...) must end in an error row, whatever Pillow could do with them
ALL_FORMATS = [f.name for f in FORMATS]
ALLOWED_PILLOW = {pid for f in FORMATS for pid in f.pillow} | {"MPO"}  # MPO opens through the JPEG plugin
NOT_FORMATS = {"broken", "bomb", "special"}


def expected(e) -> str:
    return "error" if e.fmt not in NOT_FORMATS and e.fmt not in ALLOWED_PILLOW else e.expect


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    return root, build_corpus(root, seed=0)


@pytest.mark.slow
def test_corpus_scans_to_completion_with_one_row_per_file(corpus, tmp_path):
    root, entries = corpus
    assert len(entries) > 1000
    out = tmp_path / "rows.jsonl"
    proc = subprocess.run([sys.executable, "-m", "clipscan", "scan", str(root), "--all-files",
                           "--image-formats", ",".join(ALL_FORMATS), "-o", str(out), "-q"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 1, proc.stderr[-2000:]  # some files are broken on purpose
    assert "Traceback" not in proc.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    by_path = {r["path"]: r for r in rows}
    assert len(by_path) == len(rows), "one row per file"
    assert set(by_path) == {str(e.path) for e in entries}
    wrong = []
    for e in entries:
        r = by_path[str(e.path)]
        expect = expected(e)
        if expect == "ok" and r["error"] is not None or expect == "error" and r["error"] is None:
            wrong.append((e.path.name, e.variant, expect, r["error"]))
        if r["error"] is None:
            assert 0.0 <= r["p_generated"] <= 1.0 and r["verdict"] in ("real", "generated")
    assert not wrong, wrong[:20]
    kinds = Counter(r["error"].split(":")[0] for r in rows if r["error"])
    print("error kinds:", dict(kinds), "ok:", sum(r["error"] is None for r in rows))


@pytest.mark.slow
def test_parity_on_every_corpus_file_that_decodes(corpus):
    root, entries = corpus
    ours = Preprocessor(PreprocessSpec(), InputSpec("pixels", (224, 224), mean=MEAN, std=STD))
    ref = open_clip.image_transform(224, is_train=False, mean=MEAN, std=STD)
    checked = 0
    for e in entries:
        if not os.path.isfile(e.path):
            continue
        try:
            decoded = load_image(e.path, image_formats=ALL_FORMATS)
        except Exception:
            continue
        got = ours(decoded)
        expected = ref(reference_decode(e.path).convert("RGB")).numpy()
        assert np.array_equal(got, expected), (e.path.name, e.variant)
        checked += 1
    assert checked > 900
