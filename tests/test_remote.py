"""RemoteScanner and `clipscan scan --server` against a small Open Inference Protocol server written here with the
standard library (a real local Scanner behind runtime.contract and runtime.v2_wire, as `clipscan serve` is):
the token, 503 retries, a batch the server rejects, 1-D contract shapes, and servers that are not OIP servers."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from clipscan.cli import main
from clipscan.runtime import RemoteScanner, Scanner, ServerError
from clipscan.runtime.artifact import load_artifact
from clipscan.runtime.contract import output_specs, results_to_tensors
from clipscan.runtime.v2_wire import HEADER_LENGTH, decode_message, encode_message, entry_for

from .conftest import SAMPLES

TOKEN = "s3cret"


class FakeServer:
    def __init__(self, *, token=None, busy=0, oip=True):
        self.token, self.busy, self.oip, self.infer_calls = token, busy, oip, 0
        self.scanner = Scanner(backend="cpu")
        self.specs = output_specs(self.scanner.manifest)
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            disable_nagle_algorithm = True
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def reply(self, status, body: bytes, headers=None):
                self.send_response(status)
                for k, v in {"Content-Length": str(len(body)), **(headers or {})}.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                owner.route(self, "GET", b"")

            def do_POST(self):
                owner.route(self, "POST", self.rfile.read(int(self.headers.get("Content-Length", 0))))

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def route(self, h, method, body):
        def js(status, obj):
            h.reply(status, json.dumps(obj).encode(), {"Content-Type": "application/json"})

        if not self.oip:
            return h.reply(200, b"<html>a web page</html>", {"Content-Type": "text/html"})
        if self.token and h.headers.get("Authorization") != f"Bearer {self.token}":
            return js(401, {"error": "missing or wrong bearer token"})
        demo = load_artifact(None)
        if h.path == "/v2":
            return js(200, {"name": "fake", "version": "1", "extensions": ["binary_tensor_data"]})
        if h.path == "/v2/models/demo":  # the 1-D contract, identity under `parameters`, as `clipscan serve` gives
            return js(200, {"name": "demo", "versions": ["1"], "platform": "clipscan",
                            "inputs": [{"name": "image", "datatype": "BYTES", "shape": [-1]}],
                            "outputs": [{"name": s.name, "datatype": s.datatype, "shape": s.shape()} for s in self.specs],
                            "parameters": {"sha256": demo.sha256(), "backend": "onnxruntime-cpu",
                                           "name": demo.manifest.name}})
        if h.path == "/v2/models/demo/infer" and method == "POST":
            with self.lock:
                self.infer_calls += 1
                if self.busy:
                    self.busy -= 1
                    return js(503, {"error": "busy"})
            hlen = h.headers.get(HEADER_LENGTH)
            _, tensors = decode_message(body, int(hlen) if hlen else None, "inputs")
            images = list(tensors["image"].reshape(-1))
            if b"REJECT" in images:
                return js(400, {"error": "this image is refused by policy"})
            results = [self.scanner.scan_bytes(b) for b in images]
            out = results_to_tensors(results, self.specs)
            payload, hl = encode_message({"model_name": "demo"}, "outputs",
                                         [(entry_for(s.name, out[s.name], s.datatype), out[s.name]) for s in self.specs],
                                         True)
            return h.reply(200, payload, {HEADER_LENGTH: str(hl), "Content-Type": "application/octet-stream"})
        return js(404, {"error": f"no route {h.path}"})

    def close(self):
        self.http.shutdown()
        self.http.server_close()
        self.scanner.close()


@pytest.fixture
def fake():
    servers = []

    def make(**kw):
        servers.append(FakeServer(**kw))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


def sample_bytes():
    return [(p.name, p.read_bytes()) for p in sorted(SAMPLES.iterdir())]


def test_rows_equal_a_local_scan_with_a_token_and_503_retries(fake):
    server = fake(token=TOKEN, busy=3)
    with RemoteScanner(server.url, "demo", token=TOKEN, batch_size=2, backoff=0.01) as remote, \
            Scanner(backend="cpu") as local:
        items = sample_bytes() + [("bad.jpg", b"GIF89a broken"), ("refused.jpg", b"REJECT")]
        got = list(remote.scan_many(items))
        want = [local.scan_bytes(b, name=n) for n, b in items[:-1]]
        assert remote.identity["sha256"] == load_artifact(None).sha256() and remote.server_backend == "onnxruntime-cpu"
    for a, b in zip(got, want):
        assert (a.path, a.verdict, a.error, a.backend) == (b.path, b.verdict, b.error, b.backend)
        assert a.p_generated is None if b.p_generated is None else abs(a.p_generated - b.p_generated) < 1e-6
    # the batch with the refused image was retried image by image: only that one is an error row
    assert got[-1].error == "server_rejected: HTTP 400: this image is refused by policy" and got[-2].error_kind
    assert server.infer_calls > 3 + 4  # the three 503s were retried


def test_a_server_still_busy_after_the_retries_gives_error_rows(fake):
    server = fake(busy=100)
    with RemoteScanner(server.url, "demo", batch_size=4, retries=2, backoff=0.01) as remote:
        server.busy = 100  # the probe at start was answered 503 too; now every request is
        rows = list(remote.scan_many(sample_bytes()))
    assert [r.error for r in rows] == ["server_error: HTTP 503: busy"] * len(rows)
    assert server.infer_calls <= 3 * 2 + 1  # one batch, three tries (not resent image by image)


def test_the_token_and_other_server_mistakes_are_one_sentence(fake, tmp_path, capsys):
    server = fake(token=TOKEN)
    (tmp_path / "token").write_text(TOKEN + "\n")
    (tmp_path / "wrong").write_text("nope")
    (tmp_path / "empty").write_text("")
    web = fake(oip=False)
    cases = [([], "refused a request without a token (HTTP 401"),
             (["--token-file", str(tmp_path / "wrong")], "refused the token (HTTP 401"),
             (["--token-file", str(tmp_path / "empty")], "is empty"),
             (["--token-file", str(tmp_path / "none")], "cannot be read"),
             (["--token-file", str(tmp_path / "token"), "--server-model", "other"], "has no model 'other'"),
             (["--token-file", str(tmp_path / "token")], "which model of"),
             (["--token-file", str(tmp_path / "token"), "--server-model", "demo", "--backend", "cuda"],
              "--backend set(s) how a local scan runs")]
    for args, words in cases:
        assert main(["scan", "--server", server.url, *args, str(SAMPLES)]) == 2, args
        err = capsys.readouterr().err
        assert words in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert main(["scan", "--server", web.url, str(SAMPLES)]) == 2
    assert "not an Open Inference Protocol (KServe v2) server" in capsys.readouterr().err
    out = tmp_path / "rows.jsonl"
    assert main(["scan", "--server", server.url, "--server-model", "demo", "--token-file", str(tmp_path / "token"),
                 str(SAMPLES), "-o", str(out)]) == 0
    assert len(out.read_text().splitlines()) == len(list(SAMPLES.iterdir()))


def test_resume_refuses_rows_of_another_model(fake, tmp_path, capsys):
    server = fake()
    out = tmp_path / "rows.jsonl"
    assert main(["scan", "--server", server.url, "--server-model", "demo", str(SAMPLES), "-o", str(out)]) == 0
    sidecar = json.loads((tmp_path / "rows.jsonl.clipscan.json").read_text())
    sidecar["model"]["sha256"] = "f" * 64
    (tmp_path / "rows.jsonl.clipscan.json").write_text(json.dumps(sidecar))
    assert main(["scan", "--server", server.url, "--server-model", "demo", str(SAMPLES), "-o", str(out),
                 "--resume"]) == 2
    assert "rows of two models must not mix" in capsys.readouterr().err


def test_bad_arguments():
    with pytest.raises(ValueError, match="not an http"):
        RemoteScanner("ftp://x")
    with pytest.raises(ValueError, match="batch_size"):
        RemoteScanner("http://127.0.0.1:1", batch_size=0)
    with pytest.raises(ServerError, match="cannot reach"):
        RemoteScanner("http://127.0.0.1:1")
