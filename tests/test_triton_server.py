"""A real tritonserver (bundled in nvidia-pytriton, python backend, CPU) on the repository `clipscan triton` writes:
real images and broken files through tritonclient and through `clipscan scan --server`, against a local scan; and
next to it `clipscan serve` of the same model, which one generic client and Triton's perf_analyzer drive alike."""
from __future__ import annotations

import base64
import itertools
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from PIL import Image

from clipscan.cli import main
from clipscan.runtime import RemoteScanner, Scanner, ScannerClosedError
from clipscan.runtime.artifact import load_artifact
from clipscan.triton.launch import start_tritonserver

from .conftest import SAMPLES
from .oip_client import generic_infer
from .serve_servers import cli_server, metric
from .triton_helpers import free_closed_port, need_tritonserver, perf_analyzer_tool

MODEL = "clipscan-demo"


def write_files(folder):
    """Real photos in several encodings and sizes, and broken files of several kinds."""
    folder.mkdir()
    for src in sorted(SAMPLES.iterdir()):
        img = Image.open(src).convert("RGB")
        img.save(folder / f"{src.stem}.png")
        img.save(folder / f"{src.stem}_q70.jpg", "JPEG", quality=70)
        img.resize((97, 301)).save(folder / f"{src.stem}_tall.webp", "WEBP")
        img.convert("L").save(folder / f"{src.stem}_gray.jpg", "JPEG")
    good = (folder / "photo_chelsea_q70.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (folder / "text.jpg").write_bytes(b"<html>not an image</html>")
    (folder / "empty.png").write_bytes(b"")
    (folder / "header_only.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    return folder


@pytest.fixture(scope="module")
def triton(tmp_path_factory):
    dist = need_tritonserver()
    base = tmp_path_factory.mktemp("triton")
    assert main(["triton", "--repo", str(base / "repo"), "--max-batch", "8", "--queue-delay-us", "1000"]) == 0
    server = start_tritonserver(base / "repo", base / "work", dist=dist)
    try:
        server.wait_ready(timeout=90)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_files(tmp_path_factory.mktemp("imgs") / "images")


def test_it_listens_on_loopback_only(triton):
    cmd = " ".join(triton.command)
    for what in ("http", "grpc", "metrics"):
        assert f"--{what}-address=127.0.0.1" in cmd
    for _ in range(50):  # the metrics endpoint may come up a moment after HTTP readiness
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{triton.metrics_port}/metrics", timeout=5) as r:
                assert r.status == 200 and b"nv_inference_request_success" in r.read()
                break
        except urllib.error.URLError:
            time.sleep(0.2)
    else:
        pytest.fail(f"no metrics on 127.0.0.1:{triton.metrics_port}")
    with urllib.request.urlopen(f"{triton.url}/v2/models/{MODEL}/config", timeout=5) as r:
        config = json.loads(r.read())
    assert config["parameters"]["sha256"]["string_value"] == load_artifact(None).sha256()
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 1000


def test_tritonclient_gets_a_local_scans_values(triton, files):
    import tritonclient.http as httpclient

    paths = sorted(files.iterdir())
    data = [p.read_bytes() for p in paths if p.stat().st_size] + [b"\x00" * 10]
    client = httpclient.InferenceServerClient(triton.url.removeprefix("http://"), concurrency=4)

    names = ("p_generated", "verdict", "error", "embedding", "backend")

    def send(chunk):
        arr = np.array(chunk, dtype=object).reshape(-1, 1)
        x = httpclient.InferInput("image", list(arr.shape), "BYTES")
        x.set_data_from_numpy(arr, binary_data=True)
        outs = [httpclient.InferRequestedOutput(n, binary_data=True) for n in names]
        return client.async_infer(MODEL, [x], outputs=outs)  # tritonclient's own concurrency (gevent)

    # requests of 1, 3, 5, 5 and the rest in flight together: Triton's dynamic batcher gathers them
    chunks = [data[i:i + n] for i, n in zip((0, 1, 4, 9, 14), (1, 3, 5, 5, len(data)))]
    pending = [send(c) for c in chunks]
    answers = [{n: r.as_numpy(n) for n in names} for r in (p.get_result() for p in pending)]
    got = {k: np.concatenate([a[k] for a in answers]) for k in answers[0]}
    assert got["p_generated"].shape == (len(data), 1) and got["embedding"].shape == (len(data), 128)
    with Scanner(backend="cpu") as s:
        local = [s.scan_bytes(d) for d in data]
    bad = 0
    for i, r in enumerate(local):
        assert got["error"][i, 0].decode() == (r.error or ""), i
        assert got["backend"][i, 0].decode() == r.backend
        if r.ok:
            assert abs(float(got["p_generated"][i, 0]) - r.p_generated) < 1e-5
            assert got["verdict"][i, 0].decode() == r.verdict
            assert np.allclose(got["embedding"][i], r.embedding, atol=1e-5)
        else:
            bad += 1
    assert bad == 4  # truncated, text, header-only, ten zero bytes
    client.close()


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def assert_same_rows(remote, local):
    assert [r["path"] for r in remote] == [r["path"] for r in local]
    for a, b in zip(remote, local):
        assert a["verdict"] == b["verdict"] and a["error_kind"] == b["error_kind"] and a["error"] == b["error"], a
        assert a["backend"] == b["backend"]
        if b["p_generated"] is None:
            assert a["p_generated"] is None
        else:
            assert abs(a["p_generated"] - b["p_generated"]) <= 1e-5 and abs(a["quality"] - b["quality"]) <= 1e-4


def clipscan(*args, check_rc=None):
    proc = subprocess.run([sys.executable, "-m", "clipscan", *args], capture_output=True, text=True, timeout=300,
                          check=False)
    if check_rc is not None:
        assert proc.returncode == check_rc, proc.stderr
    return proc


def test_scan_server_rows_equal_a_local_scan_and_resume(triton, files, tmp_path):
    missing = str(files / "missing.jpg")
    clipscan("scan", str(files), missing, "-o", str(tmp_path / "local.jsonl"), check_rc=1)
    clipscan("scan", "--server", triton.url, str(files), missing, "-o", str(tmp_path / "remote.jsonl"),
             "-b", "4", "--concurrency", "3", check_rc=1)
    local, remote = _rows(tmp_path / "local.jsonl"), _rows(tmp_path / "remote.jsonl")
    assert len(local) == len(list(files.iterdir())) + 1 and sum(r["error"] is not None for r in local) >= 4
    assert_same_rows(remote, local)
    sidecar = json.loads((tmp_path / "remote.jsonl.clipscan.json").read_text())["model"]
    assert sidecar["sha256"] == load_artifact(None).sha256() and sidecar["server_model"] == MODEL
    # interrupted after 7 rows (half a line left): --resume completes it with the same rows
    text = (tmp_path / "remote.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "remote.jsonl").write_text("".join(text[:7]) + text[7][:20])
    proc = clipscan("scan", "--server", triton.url, "--server-model", MODEL, str(files), missing,
                    "-o", str(tmp_path / "remote.jsonl"), "--resume", check_rc=1)
    assert "resuming: 7 input(s)" in proc.stderr
    assert_same_rows(_rows(tmp_path / "remote.jsonl"), local)
    # the local file can be resumed from the server too: the same model (sha256) wrote both
    clipscan("scan", "--server", triton.url, str(files), missing, "-o", str(tmp_path / "local.jsonl"), "--resume",
             check_rc=0)
    # CSV, the same columns and values
    clipscan("scan", str(files), "-o", str(tmp_path / "local.csv"), check_rc=1)
    clipscan("scan", "--server", triton.url, str(files), "-o", str(tmp_path / "remote.csv"), check_rc=1)
    assert (tmp_path / "local.csv").read_text().splitlines()[0] == (tmp_path / "remote.csv").read_text().splitlines()[0]


def test_remote_scanner_api_twin(triton, files):
    path = files / "render_001_q70.jpg"
    with RemoteScanner(triton.url) as remote, Scanner(backend="cpu") as local:
        assert remote.model == MODEL  # the server's only clipscan model
        a, b = remote.scan_bytes(path.read_bytes(), name="x"), local.scan_bytes(path.read_bytes(), name="x")
        assert a.verdict == b.verdict and abs(a.p_generated - b.p_generated) < 1e-5 and a.backend == b.backend
        rows = list(remote.scan([files], skip={str(files / "empty.png")}))
        assert len(rows) == len(list(files.iterdir())) - 1 and all(r.path != str(files / "empty.png") for r in rows)
    with pytest.raises(ScannerClosedError, match="was closed"):
        remote.scan_bytes(b"x")


@pytest.mark.parametrize("server, words", [
    ("unknown-model", "has no model 'nope'"),
    ("grpc", "not in HTTP"),
    ("closed", "cannot reach the server"),
])
def test_server_mistakes_are_one_sentence(triton, files, server, words):
    url = {"unknown-model": triton.url, "grpc": f"http://127.0.0.1:{triton.grpc_port}",
           "closed": f"http://127.0.0.1:{free_closed_port()}"}[server]
    extra = ["--server-model", "nope"] if server == "unknown-model" else []
    proc = clipscan("scan", "--server", url, *extra, str(files), check_rc=2)
    assert words in proc.stderr and "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_triton_start_serves_until_stopped(tmp_path, files):
    """`clipscan triton --start`: the repository, then the bundled tritonserver on loopback until SIGTERM, which
    stops tritonserver too."""
    import signal

    need_tritonserver()
    from clipscan.triton.launch import free_ports

    port, grpc, metrics = free_ports(3)   # three ports free now (port + 1 may not be: another test's client)
    # the repository written first, as a user checks it before serving: --start reuses it (no --overwrite)
    assert main(["triton", "--repo", str(tmp_path / "repo")]) == 0
    proc = subprocess.Popen([sys.executable, "-m", "clipscan", "triton", "--repo", str(tmp_path / "repo"), "--start",
                             "--http-port", str(port), "--grpc-port", str(grpc), "--metrics-port", str(metrics)],
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.3)
        assert proc.poll() is None, proc.stderr.read()
        one = clipscan("scan", "--server", f"http://127.0.0.1:{port}", str(files / "render_002_q70.jpg"), check_rc=0)
        assert '"verdict"' in one.stdout
    finally:
        proc.send_signal(signal.SIGTERM)
        err = proc.communicate(timeout=60)[1]
    assert proc.returncode == 130 and "tritonserver ready at http://127.0.0.1:" in err
    assert "reused (already written for this model with these settings, nothing copied)" in err
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/live", timeout=2)


def test_the_ensemble_on_a_real_triton(tmp_path, files):
    """The ensemble (python preprocess -> the graph in a python model, as the CPU layout runs it -> python
    postprocess) on the real tritonserver: the wiring, dims and per-image errors work, and its rows are a local
    scan's except the backend column, which names the ensemble."""
    dist = need_tritonserver()
    assert main(["triton", "--repo", str(tmp_path / "repo"), "--layout", "ensemble", "--max-batch", "8"]) == 0
    server = start_tritonserver(tmp_path / "repo", tmp_path / "work", dist=dist)
    try:
        server.wait_ready(timeout=90)
        clipscan("scan", "--server", server.url, "--server-model", MODEL, str(files), "-o",
                 str(tmp_path / "remote.jsonl"), "-b", "4", check_rc=1)
    finally:
        server.stop()
    clipscan("scan", str(files), "-o", str(tmp_path / "local.jsonl"), check_rc=1)
    remote, local = _rows(tmp_path / "remote.jsonl"), _rows(tmp_path / "local.jsonl")
    assert {r["backend"] for r in remote} == {"triton-python:cpu"}
    for r in remote + local:
        r["backend"] = None
    assert_same_rows(remote, local)


def test_triton_start_on_a_port_in_use_says_which_before_writing_anything(tmp_path, capsys):
    import socket

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        taken = held.getsockname()[1]
        free = free_closed_port()
        assert main(["triton", "--repo", str(tmp_path / "repo"), "--start", "--http-port", str(free),
                     "--grpc-port", str(taken), "--metrics-port", str(free_closed_port())]) == 2
    err = capsys.readouterr().err
    assert f"gRPC {taken} on 127.0.0.1 already in use" in err and "--grpc-port" in err and "Traceback" not in err
    assert not (tmp_path / "repo").exists()
    assert main(["triton", "--repo", str(tmp_path / "repo"), "--start", "--http-port", "65535"]) == 2
    assert "not a TCP port" in capsys.readouterr().err
    assert main(["triton", "--repo", str(tmp_path / "repo"), "--start", "--http-port", "9000", "--grpc-port",
                 "9000"]) == 2
    assert "three different ports" in capsys.readouterr().err


@pytest.fixture(scope="module")
def served_ports():
    """`clipscan serve` of the demo model, its batch limit the Triton repository's (--max-batch 8), over HTTP and
    gRPC: (its URL, its gRPC port)."""
    grpc_port = free_closed_port()
    with cli_server("--max-images", "8", "--grpc-port", str(grpc_port)) as (url, _):
        yield url, grpc_port


@pytest.fixture(scope="module")
def served(served_ports):
    return served_ports[0]


# what the two servers may say differently in a model's metadata: the platform (`python` on Triton, whose
# python backend runs the model; `clipscan_onnx` on clipscan serve) and what clipscan serve adds to Triton's
# fields (routes_v2.METADATA_EXTRAS: the backend that runs, the artifact's sha256)
PLATFORM_FIELDS = ("platform",)


def test_one_generic_client_reads_one_contract_and_gets_the_same_answers_from_both(triton, served, files):
    from clipscan.serve.routes_v2 import METADATA_EXTRAS

    names = ["photo_chelsea_q70.jpg", "render_001.png", "render_002_tall.webp", "photo_chelsea_gray.jpg",
             "truncated.jpg", "text.jpg"]
    images = [(files / n).read_bytes() for n in names]
    t_meta, t_config, t_out = generic_infer(triton.url, MODEL, images)
    s_meta, s_config, s_out = generic_infer(served, MODEL, images)
    assert set(t_meta) == {"name", "versions", "platform", "inputs", "outputs"}  # Triton's own fields, no more
    assert set(s_meta) - set(t_meta) == set(METADATA_EXTRAS)
    assert t_meta["platform"] == "python" and s_meta["platform"] == "clipscan_onnx"
    drop = (*PLATFORM_FIELDS, *METADATA_EXTRAS)
    assert {k: v for k, v in s_meta.items() if k not in drop} == {k: v for k, v in t_meta.items() if k not in drop}
    assert t_meta["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [-1, 1]}]
    # the configuration's tensor entries field by field as the real tritonserver prints them (reshape, optional...)
    for key in ("name", "max_batch_size", "input", "output"):
        assert s_config[key] == t_config[key], key
    identity = ("name", "sha256", "precision", "file")
    assert {k: s_config["parameters"][k] for k in identity} == {k: t_config["parameters"][k] for k in identity}
    assert set(s_out) == set(t_out)
    for name, want in t_out.items():
        got = s_out[name]
        assert got.shape == want.shape and got.dtype == want.dtype, name
        if want.dtype == object:
            assert got.tolist() == want.tolist(), name
        else:
            assert np.allclose(got, want, atol=1e-5, equal_nan=True), name
    assert [e != b"" for e in t_out["error"].ravel()] == [False] * 4 + [True] * 2


def _counter(url: str, name: str, labels: str) -> float:
    with urllib.request.urlopen(url, timeout=10) as r:
        return metric(r.read().decode(), name, labels)


@pytest.mark.slow
def test_perf_analyzer_unmodified_drives_both_servers(triton, served_ports, files, tmp_path):
    """Triton's perf_analyzer (from the tritonclient 2.51.0 wheel, provisioned by tools/perf_analyzer.py) reads
    each server's metadata and config and sends a real JPEG as BYTES over HTTP and gRPC at concurrency 2; each
    server counts the requests, and clipscan serve counts every image scanned, none failed."""
    from clipscan.runtime.v2_wire import decode_bytes_elements

    served = served_ports[0]
    tool = perf_analyzer_tool()
    pa = tool.provision()  # fetched into ~/.cache/clipscan/perf_analyzer once; a failure fails the test
    jpeg = (files / "photo_chelsea_q70.jpg").read_bytes()
    data = tool.image_input_data([jpeg])
    # the bytes perf_analyzer sends are Triton's serialized BYTES elements: one, the JPEG
    assert decode_bytes_elements(base64.b64decode(data["data"][0]["image"]["b64"]), "image") == [jpeg]
    (tmp_path / "image.json").write_text(json.dumps(data))
    # not a speed measurement: three windows of 8 requests, any stability accepted
    short = ["--concurrency-range", "2", "--measurement-mode", "count_windows", "--measurement-request-count", "8",
             "--stability-percentage", "1000", "--max-trials", "3"]
    counters = {triton.url: (f"http://127.0.0.1:{triton.metrics_port}/metrics", "nv_inference_request_success",
                             f'model="{MODEL}"'),
                served: (f"{served}/metrics", "clipscan_images_total", 'outcome="ok"')}
    grpc_ports = {triton.url: triton.grpc_port, served: served_ports[1]}
    for (url, counter), protocol in itertools.product(counters.items(), ("http", "grpc")):
        before = _counter(*counter)
        failed = _counter(f"{served}/metrics", "clipscan_images_total", 'outcome="error"')
        address = url.removeprefix("http://") if protocol == "http" else f"127.0.0.1:{grpc_ports[url]}"
        proc = pa.run(["-m", MODEL, "-u", address, "-i", protocol, "--input-data",
                       str(tmp_path / "image.json"), *short, "-f", str(tmp_path / "pa.csv")])
        assert proc.returncode == 0, f"{url} {protocol}: {proc.stdout[-1500:]} {proc.stderr[-1500:]}"
        header, row = (tmp_path / "pa.csv").read_text().splitlines()[:2]
        assert header.startswith("Concurrency,Inferences/Second") and float(row.split(",")[1]) > 0, row
        assert _counter(*counter) - before >= 3 * 8, (url, protocol)
        assert _counter(f"{served}/metrics", "clipscan_images_total", 'outcome="error"') == failed
