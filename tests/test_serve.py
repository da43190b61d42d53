"""`clipscan serve` for real: the CLI's server in a subprocess on 127.0.0.1, spoken to with Triton's own
HTTP client (binary and JSON tensors, BYTES input), curl-like REST requests, and a battery of malformed
requests; its answers equal `clipscan scan` of the same files."""
from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from clipscan.runtime.contract import output_specs
from clipscan.runtime.scanner import Scanner

from .conftest import REPO
from .serve_servers import BOMB_PIXELS, bad_images, cli_server, metric, multipart, request, sample_files

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server():
    with cli_server("--max-pixels", str(BOMB_PIXELS), "--max-body-bytes", str(4 * 2**20), "--max-images", "8",
                    "--name", "detector", "--access-log") as (url, proc):
        yield url, proc


@pytest.fixture(scope="module")
def local():
    with Scanner(max_pixels=BOMB_PIXELS) as s:
        yield s


def test_metadata_health_and_config(server):
    url, _ = server
    status, _, body = request(url + "/v2")
    meta = json.loads(body)
    assert status == 200 and {"binary_tensor_data", "model_configuration"} <= set(meta["extensions"])
    for path in ("/v2/health/live", "/v2/health/ready", "/v2/models/detector/ready"):
        assert request(url + path)[0] == 200
    model = json.loads(request(url + "/v2/models/detector")[2])
    assert model["name"] == "detector" and model["backend"] == "onnxruntime-cpu"
    assert model["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [-1, 1]}]
    assert {"p_generated", "verdict", "quality", "error"} <= {o["name"] for o in model["outputs"]}
    # the preprocessed form is a model of its own, with the same outputs
    pixels = json.loads(request(url + "/v2/models/detector_pixels")[2])
    assert pixels["inputs"] == [{"name": "pixels", "datatype": "FP32", "shape": [-1, 3, 224, 224]}]
    assert pixels["outputs"] == model["outputs"] and request(url + "/v2/models/detector_pixels/ready")[0] == 200
    config = json.loads(request(url + "/v2/models/detector/config")[2])
    assert config["max_batch_size"] == 8 and config["dynamic_batching"]["max_queue_delay_microseconds"] == 5000
    assert config["parameters"]["sha256"] == {"string_value": model["sha256"]}
    # the entry as Triton's /config prints it (test_triton_contract compares it with a real tritonserver's)
    assert config["input"] == [{"name": "image", "data_type": "TYPE_STRING", "format": "FORMAT_NONE", "dims": [1],
                                "is_shape_tensor": False, "allow_ragged_batch": False, "optional": False,
                                "is_non_linear_format_io": False}]
    assert json.loads(request(url + "/v2/models/detector_pixels/config")[2])["input"][0]["dims"] == [3, 224, 224]
    status, _, body = request(url + "/v2/models/other")
    assert status == 404 and "unknown model 'other'" in json.loads(body)["error"]


def _text(element) -> str:
    """A BYTES element as tritonclient returns it: bytes from binary outputs, str from JSON ones."""
    return element.decode() if isinstance(element, bytes) else element


def test_tritonclient_binary_and_json_equal_a_local_scan(server, local):
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    url, _ = server
    files = [(p.name, p.read_bytes()) for p in sample_files()] + list(bad_images().items())
    expected = list(local.scan_many(files))
    client = httpclient.InferenceServerClient(url.removeprefix("http://"))
    assert client.is_server_ready() and client.is_model_ready("detector")
    inp = httpclient.InferInput("image", [len(files), 1], "BYTES")  # [-1, 1], as the metadata says
    inp.set_data_from_numpy(np.array([d for _, d in files], dtype=object).reshape(-1, 1), binary_data=True)
    names = [s.name for s in output_specs(local.manifest)]
    for binary in (True, False):
        outputs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in names]
        result = client.infer("detector", [inp], outputs=outputs, request_id="r1")
        assert result.get_response()["id"] == "r1"
        assert result.as_numpy("p_generated").shape == (len(files), 1)
        errors = [_text(e) for e in result.as_numpy("error").ravel()]
        p = result.as_numpy("p_generated").ravel()
        verdicts = [_text(v) for v in result.as_numpy("verdict").ravel()]
        for i, r in enumerate(expected):
            assert errors[i] == (r.error or ""), files[i][0]
            if r.error is None:
                assert p[i] == pytest.approx(r.p_generated, abs=1e-6) and verdicts[i] == r.verdict
                assert result.as_numpy("quality")[i, 0] == pytest.approx(r.quality, abs=1e-5)
            else:
                assert np.isnan(p[i]) and verdicts[i] == ""
        assert {_text(b) for b in result.as_numpy("backend").ravel()} == {"onnxruntime-cpu"}
    # the second input form, a model of its own: preprocessed pixels as JSON tensors
    pixels = local.prepare(files[0][1])
    pin = httpclient.InferInput("pixels", list(pixels.shape), "FP32")
    pin.set_data_from_numpy(pixels, binary_data=False)
    result = client.infer("detector_pixels", [pin],
                          outputs=[httpclient.InferRequestedOutput("p_generated", binary_data=False)])
    assert result.as_numpy("p_generated")[0, 0] == pytest.approx(expected[0].p_generated, abs=1e-6)
    with pytest.raises(InferenceServerException, match="input 'pixels' goes to model 'detector_pixels'"):
        client.infer("detector", [pin])
    # `image` as [N], the shape earlier releases declared, is still taken (the answer has the declared shapes)
    old = httpclient.InferInput("image", [2], "BYTES")
    old.set_data_from_numpy(np.array([files[0][1], files[1][1]], dtype=object))
    assert client.infer("detector", [old]).as_numpy("p_generated").shape == (2, 1)
    client.close()


def test_v1_scan_rows_are_clipscan_scan_rows(server, tmp_path):
    url, _ = server
    files = [(p.name, p.read_bytes()) for p in sample_files()] + list(bad_images().items())
    for name, data in files:
        (tmp_path / name).write_bytes(data)
    scan = subprocess.run([sys.executable, "-c", "import sys; from clipscan.cli import main; sys.exit(main())",
                           "scan", "--max-pixels", str(BOMB_PIXELS), *[str(tmp_path / n) for n, _ in files]],
                          check=False, cwd=REPO, capture_output=True, text=True, timeout=120)
    want = {}
    for line in scan.stdout.splitlines():
        row = json.loads(line)
        row["path"] = row["path"].rsplit("/", 1)[-1]
        want[row["path"]] = row
    body, ctype = multipart(files)
    status, _, answer = request(url + "/v1/scan", body, {"Content-Type": ctype})
    assert status == 200
    rows = json.loads(answer)
    assert [r["path"] for r in rows] == [n for n, _ in files]
    assert rows == [want[n] for n, _ in files]
    # a raw body: one image, named by ?name=
    status, _, answer = request(url + "/v1/scan?name=cat.jpg", files[0][1], {"Content-Type": "image/jpeg"})
    assert status == 200 and json.loads(answer) == [{**want[files[0][0]], "path": "cat.jpg"}]


@pytest.mark.parametrize("name", ["truncated.jpg", "garbage.jpg", "bomb.png", "text.png", "empty.jpg"])
def test_a_bad_raw_upload_is_a_422_with_its_error(server, name):
    """One rule for every image's own error, an empty upload included: a 422 with the image's row."""
    url, _ = server
    data = {**bad_images(), "empty.jpg": b""}[name]
    status, headers, body = request(url + f"/v1/scan?name={name}", data, {"Content-Type": "image/png"})
    answer = json.loads(body)
    assert status == 422 and headers["content-type"] == "application/json"
    assert answer["error"].startswith("the image could not be scanned: ") and answer["rows"][0]["path"] == name
    kind = {"bomb.png": "too_large", "truncated.jpg": "truncated", "empty.jpg": "empty"}.get(name)
    if kind:
        assert answer["rows"][0]["error_kind"] == kind


def test_access_log_lines_are_json_lines(server):
    """--access-log: one line per request on stderr that is a JSON object and nothing else (no prefix)."""
    url, proc = server
    assert request(url + "/v2/health/live")[0] == 200
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not any("/v2/health/live" in x for x in proc.log):
        time.sleep(0.05)
    access = [x for x in proc.log if '"method"' in x]
    assert access, "".join(proc.log)
    for line in access:
        entry = json.loads(line)  # the whole line is JSON: no "clipscan: " in front
        assert {"method", "path", "status"} <= set(entry)
    assert any(json.loads(x)["path"] == "/v2/health/live" and json.loads(x)["status"] == 200 for x in access)


BAD_REQUESTS = [
    # (what, path, body, headers, status, words in the error)
    ("wrong content type", "/v1/scan", b"hello", {"Content-Type": "text/plain"}, 415, "not an image upload"),
    ("no content type", "/v1/scan", b"hello", {"Content-Type": ""}, 415,
     "a request without a Content-Type is not an image upload"),
    ("multipart without a file", "/v1/scan", b"--b\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\n1\r\n--b--\r\n",
     {"Content-Type": "multipart/form-data; boundary=b"}, 400, "no file"),
    ("bad JSON", "/v2/models/detector/infer", b"{not json", {"Content-Type": "application/json"}, 400, "not valid JSON"),
    ("no inputs", "/v2/models/detector/infer", b"{}", {}, 400, "no 'inputs' list"),
    ("header length past the body", "/v2/models/detector/infer", b"{}", {"Inference-Header-Content-Length": "99"},
     400, "Inference-Header-Content-Length is 99"),
    ("header length not a number", "/v2/models/detector/infer", b"{}", {"Inference-Header-Content-Length": "x"},
     400, "not an integer"),
    ("unknown input", "/v2/models/detector/infer",
     b'{"inputs":[{"name":"img","datatype":"BYTES","shape":[1],"data":["a"]}]}', {}, 400, "unknown input 'img'"),
    ("image of a wrong shape", "/v2/models/detector/infer",
     b'{"inputs":[{"name":"image","datatype":"BYTES","shape":[1,2],"data":["a","b"]}]}', {}, 400, "shape [-1, 1]"),
    ("no image", "/v2/models/detector_pixels/infer",
     b'{"inputs":[{"name":"image","datatype":"BYTES","shape":[1,1],"data":["a"]}]}', {}, 400,
     "goes to model 'detector'"),
    ("wrong pixels", "/v2/models/detector_pixels/infer",
     b'{"inputs":[{"name":"pixels","datatype":"FP32","shape":[1,2],"data":[1,2]}]}', {}, 400, "must be FP32 with shape"),
    ("too many images", "/v2/models/detector/infer",
     json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [9], "data": ["a"] * 9}]}).encode(), {},
     413, "limit is 8"),
    ("unknown output", "/v2/models/detector/infer",
     b'{"inputs":[{"name":"image","datatype":"BYTES","shape":[1],"data":["a"]}],"outputs":[{"name":"nope"}]}', {},
     400, "unknown output 'nope'"),
    ("text/plain to infer", "/v2/models/detector/infer", b"{}", {"Content-Type": "text/plain"}, 415, "not accepted"),
    ("unknown endpoint", "/v3/anything", b"", {}, 404, "no such endpoint"),
    ("GET on infer", "/v2/models/detector/infer", None, {}, 405, "not allowed"),
]


@pytest.mark.parametrize("what,path,body,headers,status,words", BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_malformed_requests_are_4xx_json_errors(server, what, path, body, headers, status, words):
    url, _ = server
    if path.endswith("/infer") and "Content-Type" not in headers:
        headers = {**headers, "Content-Type": "application/json"}  # urllib would send a form's type
    got, got_headers, answer = request(url + path, body, headers, method="POST" if body is not None else "GET")
    assert got == status, answer
    assert got_headers["content-type"] == "application/json"
    assert words in json.loads(answer)["error"]


def test_an_oversized_body_is_413_before_it_is_sent(server):
    """The answer comes from Content-Length alone: the client sends only the headers of a 5 MiB upload."""
    url, _ = server
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"POST /v1/scan HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\n"
                     b"Content-Length: %d\r\n\r\n" % (5 * 2**20))
        head = b""
        while True:  # the server closes the connection after its answer
            chunk = sock.recv(65536)
            if not chunk:
                break
            head += chunk
        head = head.decode()
    status_line, _, rest = head.partition("\r\n")
    assert status_line == "HTTP/1.1 413 Request Entity Too Large"
    assert "over the limit of 4194304 bytes" in json.loads(rest.split("\r\n\r\n", 1)[1])["error"]


def test_a_bad_image_never_fails_the_others_and_the_server_counts_it(server):
    url, _ = server
    good = sample_files()[0].read_bytes()
    body = json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [2], "data": ["garbage", "x"]}]})
    status, _, answer = request(url + "/v2/models/detector/infer", body.encode(), {"Content-Type": "application/json"})
    outputs = {o["name"]: o["data"] for o in json.loads(answer)["outputs"]}
    assert status == 200 and all(e.startswith("not_an_image") for e in outputs["error"])
    assert outputs["p_generated"] == [None, None]
    mixed, ctype = multipart([("ok.jpg", good), *bad_images().items()])
    rows = json.loads(request(url + "/v1/scan", mixed, {"Content-Type": ctype})[2])
    assert rows[0]["error"] is None and all(r["error"] for r in rows[1:])
    text = request(url + "/metrics")[2].decode()
    assert metric(text, "clipscan_errors_total", 'kind="too_large"') >= 1
    assert metric(text, "clipscan_images_total", 'outcome="ok"') >= 1
    assert 'clipscan_backend_info{backend="onnxruntime-cpu"} 1.0' in text
    assert metric(text, "clipscan_request_seconds_count", 'endpoint="/v1/scan",status="200"') >= 1


def test_sigterm_finishes_the_request_in_flight_then_exits_0():
    big = sample_files()[0].read_bytes()
    with cli_server("--max-images", "64", "--decode-workers", "1") as (url, proc):
        body, ctype = multipart([(f"{i}.jpg", big) for i in range(64)])
        answer = {}
        t = threading.Thread(target=lambda: answer.update(r=request(url + "/v1/scan", body, {"Content-Type": ctype})))
        t.start()
        for _ in range(500):  # until the big request is being answered (this request is in flight too)
            if metric(request(url + "/metrics")[2].decode(), "clipscan_in_flight_requests") >= 2:
                break
        else:
            pytest.fail("the big request was never in flight")
        proc.send_signal(signal.SIGTERM)
        t.join(60)
        assert proc.wait(30) == 0, "".join(proc.log)
        status, _, rows = answer["r"]
        assert status == 200 and len(json.loads(rows)) == 64
        with pytest.raises(OSError):
            request(url + "/v2/health/live", timeout=5)


def test_missing_token_file_is_one_line_exit_2(tmp_path):
    r = subprocess.run([sys.executable, "-c", "import sys; from clipscan.cli import main; sys.exit(main())",
                        "serve", "--token-file", str(tmp_path / "none")],
                       check=False, cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "--token-file" in r.stderr


def test_without_the_serve_extra_the_command_says_what_to_install(monkeypatch, capsys):
    import importlib.util

    from clipscan.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "uvicorn" else real(name, *a))
    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'clipscan[serve]'" in err and "Traceback" not in err


def test_scan_server_against_clipscan_serve_gives_the_local_rows(server, tmp_path):
    """The one client for both servers: `clipscan scan --server` talking to `clipscan serve` (not Triton) writes
    the rows a local scan writes, bad files included, and the sidecar names the served model."""
    url, _ = server
    files = [(p.name, p.read_bytes()) for p in sample_files()] + list(bad_images().items())
    for name, data in files:
        (tmp_path / name).write_bytes(data)
    paths = [str(tmp_path / n) for n, _ in files]

    def scan(*args):
        return subprocess.run([sys.executable, "-m", "clipscan", "scan", *args],
                              check=False, cwd=REPO, capture_output=True, text=True, timeout=180)

    local, remote = tmp_path / "local.jsonl", tmp_path / "remote.jsonl"
    assert scan("--max-pixels", str(BOMB_PIXELS), *paths, "-o", str(local)).returncode == 1
    proc = scan("--server", url, "--server-model", "detector", "-b", "3", "--concurrency", "2", *paths,
                "-o", str(remote))
    assert proc.returncode == 1, proc.stderr
    want = [json.loads(line) for line in local.read_text().splitlines()]
    got = [json.loads(line) for line in remote.read_text().splitlines()]
    assert [r["path"] for r in got] == [r["path"] for r in want] and len(got) == len(files)
    assert sum(r["error"] is not None for r in got) == len(bad_images())
    for a, b in zip(got, want):
        assert a.keys() == b.keys(), a["path"]
        assert {k: v for k, v in a.items() if not isinstance(v, float)} == \
            {k: v for k, v in b.items() if not isinstance(v, float)}, a["path"]
        for k, v in b.items():
            if isinstance(v, float):
                assert a[k] == pytest.approx(v, abs=1e-5), (a["path"], k)
    sidecar = json.loads((tmp_path / "remote.jsonl.clipscan.json").read_text())["model"]
    assert sidecar["server_model"] == "detector"
    assert sidecar["sha256"] == json.loads((tmp_path / "local.jsonl.clipscan.json").read_text())["model"]["sha256"]


def test_a_busy_port_is_refused_before_the_model_is_loaded(tmp_path):
    """serve on a port something already listens on: exit 2 in one sentence naming the port, within seconds
    (no model loaded or warmed up first), and never the raw [Errno 98]."""
    import time

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        start = time.monotonic()
        r = subprocess.run([sys.executable, "-m", "clipscan", "serve", "--port", str(port),
                            str(tmp_path / "not-loaded.onnx")],
                           check=False, cwd=REPO, capture_output=True, text=True, timeout=60)
        seconds = time.monotonic() - start
    assert r.returncode == 2, r.stderr
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1 and f"--port {port} on 127.0.0.1 is already in use" in err, err
    assert "Errno" not in err and "not-loaded.onnx" not in err  # refused before the model was even looked at
    assert seconds < 20, seconds
