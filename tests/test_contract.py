"""The services' tensor contract and the Open Inference Protocol body codec, on real scan results."""
from __future__ import annotations

import json

import numpy as np
import pytest

from clipscan.runtime import Scanner
from clipscan.runtime.contract import output_specs, results_to_tensors, tensors_to_results
from clipscan.runtime.results import columns_for
from clipscan.runtime.v2_wire import WireError, decode_message, encode_bytes_elements, encode_message, entry_for

from .conftest import REPO


@pytest.fixture(scope="module")
def demo_results():
    with Scanner() as s:
        files = sorted(str(p) for p in (REPO / "samples").iterdir())
        return s.manifest, list(s.scan(files)) + [s.scan_bytes(b"not an image", name="bad.jpg")]


@pytest.mark.parametrize("binary", [True, False])
def test_results_survive_the_contract_and_the_wire(demo_results, binary):
    manifest, results = demo_results
    assert results[-1].error and all(r.ok for r in results[:-1])
    specs = output_specs(manifest)
    assert [s.name for s in specs] == ["p_generated", "logit", "verdict", "quality", "embedding", "error", "backend",
                                       "detector.p_generated", "detector.logit", "detector.verdict", "detector.threshold",
                                       "quality.score"]
    tensors = results_to_tensors(results, specs)
    body, hlen = encode_message({"model_name": "demo"}, "outputs",
                                [(entry_for(s.name, tensors[s.name], s.datatype), tensors[s.name]) for s in specs],
                                binary)
    assert (hlen is None) == (not binary)
    header, back = decode_message(body, hlen, "outputs")
    assert header["model_name"] == "demo" and back["embedding"].shape == (len(results), 128)
    again = tensors_to_results(back, [r.path for r in results])
    cols = columns_for(manifest)
    for a, b in zip(results, again):
        ra, rb = a.to_row(columns=cols, with_embedding=True), b.to_row(columns=cols, with_embedding=True)
        if a.ok:
            assert ra["verdict"] == rb["verdict"] and ra["backend"] == rb["backend"]
            assert abs(ra["p_generated"] - rb["p_generated"]) < 1e-6 and abs(ra["quality"] - rb["quality"]) < 1e-5
            assert np.allclose(ra["embedding"], rb["embedding"], atol=1e-6)
            # each decision head states the threshold it decided at, across the wire too
            assert ra["heads"]["detector"]["threshold"] == manifest.decision_heads()[0].threshold
            assert abs(rb["heads"]["detector"]["threshold"] - ra["heads"]["detector"]["threshold"]) < 1e-6
        else:
            assert ra == rb  # the error text and kind, no values


def test_bytes_elements_and_malformed_bodies():
    raw = encode_bytes_elements([b"\xff\xd8jpeg", b""])
    header = json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [2],
                                     "parameters": {"binary_data_size": len(raw)}}]}).encode()
    _, t = decode_message(header + raw, len(header), "inputs")
    assert list(t["image"]) == [b"\xff\xd8jpeg", b""]
    bad = [
        (header + raw[:-3], len(header), "runs past"),                     # truncated binary part
        (header + raw + b"x", len(header), "follow the last"),              # trailing bytes
        (b"{not json", None, "not valid JSON"),
        (json.dumps({"inputs": {}}).encode(), None, "no 'inputs' list"),
        (json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": [1]}]}).encode(), None,
         "2 elements"),
        (json.dumps({"inputs": [{"name": "x", "datatype": "FP99", "shape": [1], "data": [1]}]}).encode(), None,
         "datatype"),
        (json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1], "data": [1]}]}).encode(), None,
         "non-negative"),
        (header + raw, len(header) + 10**6, "the body has"),
    ]
    for body, hlen, words in bad:
        with pytest.raises(WireError, match=words):
            decode_message(body, hlen, "inputs")
    with pytest.raises(WireError, match="4-byte length"):
        header2 = json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                                          "parameters": {"binary_data_size": 2}}]}).encode()
        decode_message(header2 + b"\x05\x00", len(header2), "inputs")
    assert issubclass(WireError, ValueError)
