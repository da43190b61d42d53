"""The `triton` mode of `clipscan bench --serve`: the repository `clipscan triton` writes, on the real
tritonserver (nvidia-pytriton's, python backend) on 127.0.0.1, and where its time goes.

The repository is written with the configuration `clipscan triton` would write on this machine (the knobs
of clipscan.triton.knobs, each overridable), the server started and warmed up; the load generator then
sends one image per Open Inference Protocol request. Around each level the model's statistics
(`/v2/models/{m}/stats`) are read: their difference attributes the level's time to Triton's queue and to
the model's compute (input, infer, output), per request and per execution, and gives the mean batch.
"""
from __future__ import annotations

import json
import tempfile
import urllib.parse
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from clipscan.triton.knobs import describe_knobs
from clipscan.triton.launch import start_tritonserver
from clipscan.triton.repository import RepositoryOptions, write_repository

STAT_PARTS = ("queue", "compute_input", "compute_infer", "compute_output")


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


def model_stats(url: str, model: str) -> dict:
    """Cumulative counters of `model`: requests, executions, inferences and each part's total ns."""
    stats = _get_json(f"{url}/v2/models/{urllib.parse.quote(model, safe='')}/stats")["model_stats"][0]
    inf = stats["inference_stats"]
    return {"requests": inf["success"]["count"], "executions": stats["execution_count"],
            "inferences": stats["inference_count"], **{p: inf[p]["ns"] for p in STAT_PARTS}}


def stats_delta(before: dict, after: dict) -> dict:
    """What one level added: ms per request in each part, ms of compute per execution, images per execution."""
    d = {k: after[k] - before[k] for k in before}
    req, exe = max(d["requests"], 1), max(d["executions"], 1)
    out = {"requests": d["requests"], "executions": d["executions"],
           "images_per_execution": d["inferences"] / exe}
    out.update({f"{p}_ms_per_request": d[p] / req / 1e6 for p in STAT_PARTS})
    # Triton gives each request of a batched execution that execution's whole compute time: the mean over the
    # requests is the mean duration of an execution (weighted by its requests)
    out["compute_ms_per_execution"] = sum(d[p] for p in STAT_PARTS[1:]) / req / 1e6
    return out


def image_shape(url: str, model: str) -> list[int]:
    """The shape of one image's `image` tensor as the model's metadata declares it ([1, 1] or [1])."""
    meta = _get_json(f"{url}/v2/models/{urllib.parse.quote(model, safe='')}")
    shape = next(i["shape"] for i in meta["inputs"] if i["name"] == "image")
    return [1] + [1] * (len(shape) - 1)


@contextmanager
def triton_server(model: str | None, opts: RepositoryOptions, timeout: float = 300.0):
    """(server, model name, knobs text) of a tritonserver on a fresh repository for `model`; stopped on exit."""
    with tempfile.TemporaryDirectory(prefix="clipscan-bench-triton-") as tmp:
        repo = write_repository(model, Path(tmp) / "repo", opts)
        server = start_tritonserver(repo.root, Path(tmp) / "work")
        try:
            server.wait_ready(timeout=timeout)
            yield server, repo.entry, describe_knobs(opts)
        finally:
            server.stop()
