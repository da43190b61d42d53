"""Fuzzing the decode + preprocess path: any bytes give a tensor or a clean ImageReadError.

Runs briefly in the suite; for a long run:
    CLIPSCAN_FUZZ_EXAMPLES=20000 python -m pytest tests/test_fuzz.py -p no:cacheprovider
"""
from __future__ import annotations

import io
import os
import time

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from clipscan.runtime.decode import load_image
from clipscan.runtime.errors import ImageReadError
from clipscan.runtime.manifest import InputSpec, PreprocessSpec
from clipscan.runtime.preprocess import Preprocessor

EXAMPLES = int(os.environ.get("CLIPSCAN_FUZZ_EXAMPLES", "120"))
KINDS = {"not_found", "unreadable", "is_directory", "empty", "not_an_image", "truncated", "corrupt", "too_large",
         "bad_input", "unsupported_format"}
PRE = Preprocessor(PreprocessSpec(), InputSpec("pixels", (224, 224)))


def _seed_files() -> list[bytes]:
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8))
    out = []
    for fmt, kw in [("JPEG", {}), ("JPEG", {"progressive": True}), ("PNG", {}), ("GIF", {}), ("WEBP", {}),
                    ("WEBP", {"lossless": True}), ("TIFF", {"compression": "tiff_lzw"}), ("BMP", {}), ("ICO", {}),
                    ("TGA", {}), ("PPM", {}), ("JPEG2000", {}), ("QOI", {}), ("PCX", {})]:
        buf = io.BytesIO()
        source = img.convert("P") if fmt == "GIF" else img
        source.save(buf, fmt, **kw)
        out.append(buf.getvalue())
    buf = io.BytesIO()
    Image.fromarray(np.asarray(img.convert("L"), np.uint16) * 257).save(buf, "PNG")
    out.append(buf.getvalue())
    return out


SEEDS = _seed_files()


@st.composite
def mutated(draw) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "truncate", "insert", "delete", "splice"]))
        n = len(data)
        if n == 0:
            break
        at = draw(st.integers(0, n - 1))
        if op == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":  # often lands in a header: sizes, counts, offsets
            data[at:at + 4] = draw(st.sampled_from([b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\x7f\xff\xff\xff"]))
        elif op == "truncate":
            del data[at:]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        elif op == "delete":
            del data[at:at + draw(st.integers(1, 64))]
        else:
            other = draw(st.sampled_from(SEEDS))
            data[at:] = other[draw(st.integers(0, len(other) - 1)):]
    return bytes(data)


def decode_and_preprocess(blob: bytes) -> None:
    start = time.monotonic()
    try:
        x = PRE.batch(load_image(blob, max_pixels=50_000_000))
    except ImageReadError as e:
        assert e.kind in KINDS, e
        assert str(e).startswith(e.kind + ": ")
    else:
        assert x.shape == (1, 3, 224, 224) and x.dtype == np.float32
        assert np.isfinite(x).all()
    assert time.monotonic() - start < 20, "one input must never stall the scan"


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(mutated())
def test_mutated_files_decode_or_fail_cleanly(blob):
    decode_and_preprocess(blob)


@settings(max_examples=max(20, EXAMPLES // 4), deadline=None)
@given(st.binary(max_size=2048))
def test_random_bytes_fail_cleanly(blob):
    decode_and_preprocess(blob)


# ---- manifests: any mutation of a valid manifest is read or refused in one ManifestError sentence ----

def _demo_manifest() -> dict:
    import json

    from clipscan.runtime.artifact import load_artifact
    from clipscan.runtime.manifest import METADATA_KEY
    return json.loads(load_artifact().header.metadata[METADATA_KEY])


DEMO_MANIFEST = _demo_manifest()


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, prefix + (i,))


MANIFEST_PATHS = [p for p in _paths(DEMO_MANIFEST) if p]
ODD_VALUES = [None, True, False, 0, -1, 1, 3, 2**31, 10**30, 0.5, -0.0, float("nan"), float("inf"), "", "x",
              "folded", "sliding", "none", "squash", "longest", "uint8", "detection", "attribution", "quality",
              "y" * 300, [], [1], [224, 224], [60000, 60000], ["a", "b"], [None],
              {}, {"a": 1}, {"output": "embedding"}, [[[[1]]]]]


@st.composite
def mutated_manifest(draw) -> dict:
    import copy
    d = copy.deepcopy(DEMO_MANIFEST)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(MANIFEST_PATHS))
        parent = d
        try:
            for k in path[:-1]:
                parent = parent[k]
            if draw(st.booleans()) and isinstance(parent, dict):
                parent.pop(path[-1], None)
            else:
                parent[path[-1]] = copy.deepcopy(draw(st.sampled_from(ODD_VALUES)))
        except (KeyError, IndexError, TypeError):   # an earlier mutation changed the shape above this path
            pass
    return d


def use_manifest(d: dict) -> None:
    """What scan, info, serve and triton do with a manifest, in-process: parse, then read every field."""
    import json

    from clipscan.runtime.contract import output_specs
    from clipscan.runtime.errors import ManifestError
    from clipscan.runtime.manifest import Manifest
    try:
        m = Manifest.from_json(json.dumps(d), origin="fuzzed.onnx")
    except ManifestError as e:
        assert str(e).startswith("fuzzed.onnx") and "\n" not in str(e), e
        return
    assert Manifest.from_json(m.to_json()) == m
    output_specs(m)
    assert len(m.output_names()) >= len(m.heads)
    assert m.decision_head() is None or m.decision_head() in m.heads
    assert m.draft_decoding_record() is None or isinstance(m.draft_decoding_record(), dict)
    assert all(isinstance(src, dict) for src in m.sources.values())
    start = time.monotonic()
    pre = Preprocessor(m.preprocess, m.input)
    x = pre.batch(Image.new("RGB", (640, 3), (10, 20, 30)))
    assert x.shape[-2:] == m.input.size and time.monotonic() - start < 20


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_manifest())
def test_mutated_manifests_are_read_or_refused_in_one_sentence(d):
    use_manifest(d)
