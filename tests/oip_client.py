"""A generic Open Inference Protocol client that knows nothing of clipscan: it builds its request from the
model's metadata and configuration only, the way Triton's load generator (perf_analyzer) does. Every input
the configuration does not mark `optional` is sent, shaped as the metadata says with the batch dimension
(-1 first, when `max_batch_size` > 0) replaced by the number of images; BYTES inputs carry the encoded files
through the binary tensor extension (tritonclient.http); every output the metadata lists is asked for."""
from __future__ import annotations

import json
import urllib.request

import numpy as np


def describe(url: str, model: str) -> tuple[dict, dict]:
    """(metadata, configuration) of `model`: GET /v2/models/{model} and /v2/models/{model}/config."""
    def get(path):
        with urllib.request.urlopen(f"{url}/v2/models/{model}{path}", timeout=30) as r:
            return json.loads(r.read())

    return get(""), get("/config")


def request_shapes(metadata: dict, config: dict, batch: int) -> dict[str, list[int]]:
    """The shape of each input the request must carry (optional inputs left out)."""
    optional = {i["name"] for i in config.get("input", []) if i.get("optional", False)}
    batching = int(config.get("max_batch_size", 0)) > 0
    shapes = {}
    for t in metadata["inputs"]:
        if t["name"] in optional:
            continue
        shape = [batch, *t["shape"][1:]] if batching else list(t["shape"])
        if any(d < 0 for d in shape):
            raise AssertionError(f"input {t['name']} has a variable dimension besides the batch: {t['shape']} (a "
                                 "load generator would need --shape for it)")
        shapes[t["name"]] = shape
    return shapes


def generic_infer(url: str, model: str, images: list[bytes]) -> tuple[dict, dict, dict[str, np.ndarray]]:
    """(metadata, configuration, outputs) of one request of `images` built from the model's description."""
    import tritonclient.http as httpclient

    metadata, config = describe(url, model)
    types = {t["name"]: t["datatype"] for t in metadata["inputs"]}
    inputs = []
    for name, shape in request_shapes(metadata, config, len(images)).items():
        if types[name] != "BYTES":
            raise AssertionError(f"input {name} is {types[name]}; this client sends encoded files (BYTES) only")
        x = httpclient.InferInput(name, shape, "BYTES")
        x.set_data_from_numpy(np.array(images, dtype=object).reshape(shape), binary_data=True)
        inputs.append(x)
    client = httpclient.InferenceServerClient(url.removeprefix("http://"))
    try:
        result = client.infer(model, inputs, outputs=[httpclient.InferRequestedOutput(t["name"], binary_data=True)
                                                      for t in metadata["outputs"]])
    finally:
        client.close()
    outputs = {t["name"]: result.as_numpy(t["name"]) for t in metadata["outputs"]}
    for t in metadata["outputs"]:  # each answer has the shape the metadata declared
        want = [len(images), *t["shape"][1:]]
        assert list(outputs[t["name"]].shape) == want, (t, outputs[t["name"]].shape)
    return metadata, config, outputs
