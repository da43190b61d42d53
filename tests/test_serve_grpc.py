"""`clipscan serve --grpc-port` for real: the CLI's server in a subprocess on 127.0.0.1 (and once in a thread,
its backend slowed down on purpose), spoken to with Triton's own gRPC client. Its answers equal a local scan
and the HTTP endpoint's; the token, the limits and the metrics are the HTTP service's."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from clipscan.runtime.contract import output_specs
from clipscan.runtime.scanner import Scanner
from clipscan.serve import Limits, ServiceState

from .conftest import REPO
from .serve_servers import (BOMB_PIXELS, bad_images, cli_server, grpc_address, metric, request, sample_files,
                            thread_server)

pytestmark = pytest.mark.slow
TOKEN = "grpc-s3cret"
AUTH = {"authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    token = tmp_path_factory.mktemp("grpc") / "token"
    token.write_text(TOKEN + "\n")
    with cli_server("--grpc-port", "0", "--token-file", str(token), "--max-pixels", str(BOMB_PIXELS),
                    "--max-body-bytes", str(4 * 2**20), "--max-images", "8", "--name", "detector",
                    "--max-open-connections", "3", "--header-timeout-s", "1") as (url, proc):
        yield url, grpc_address(proc)


@pytest.fixture(scope="module")
def client(server):
    import tritonclient.grpc as grpcclient

    c = grpcclient.InferenceServerClient(server[1])
    yield c
    c.close()


@pytest.fixture(scope="module")
def local():
    with Scanner(max_pixels=BOMB_PIXELS) as s:
        yield s


def _status(call) -> str:
    """The gRPC status name of a call that must fail, and its message."""
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException) as e:
        call()
    return f"{e.value.status()} {e.value.message()}"


def _bytes_input(data: list[bytes]):
    import tritonclient.grpc as grpcclient

    inp = grpcclient.InferInput("image", [len(data)], "BYTES")
    inp.set_data_from_numpy(np.array(data, dtype=object))
    return inp


def test_health_metadata_and_config_are_the_http_answers(server, client):
    from google.protobuf import json_format
    from tritonclient.grpc import model_config_pb2

    url, _ = server
    # the health methods answer without the token, as /v2/health/* and /v2/models/*/ready do
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("detector")
    assert "UNAUTHENTICATED" in _status(client.get_server_metadata)
    meta = client.get_server_metadata(headers=AUTH)
    http_meta = json.loads(request(url + "/v2", headers={"Authorization": AUTH["authorization"]})[2])
    assert (meta.name, meta.version, list(meta.extensions)) == (http_meta["name"], http_meta["version"],
                                                                http_meta["extensions"])
    model = client.get_model_metadata("detector", headers=AUTH, as_json=True)
    http_model = json.loads(request(url + "/v2/models/detector", headers={"Authorization": AUTH["authorization"]})[2])
    for key in ("inputs", "outputs"):
        assert [{**t, "shape": [int(d) for d in t["shape"]]} for t in model[key]] == http_model[key]
    assert model["name"] == "detector" and model["versions"] == ["1"] and model["platform"] == http_model["platform"]
    # the configuration is the HTTP one, read through tritonclient's own copy of Triton's schema
    config = client.get_model_config("detector", headers=AUTH).config
    http_config = json.loads(request(url + "/v2/models/detector/config",
                                     headers={"Authorization": AUTH["authorization"]})[2])
    assert config == json_format.ParseDict(http_config, model_config_pb2.ModelConfig())
    assert config.max_batch_size == 8 and config.parameters["sha256"].string_value == model_config_sha(http_config)
    index = client.get_model_repository_index(headers=AUTH)
    assert [(m.name, m.version, m.state) for m in index.models] == [("detector", "1", "READY"),
                                                                     ("detector_pixels", "1", "READY")]
    # an unknown model is NOT_FOUND; its real name is said only to a client holding the token
    assert "detector" not in _status(lambda: client.is_model_ready("other"))
    answer = _status(lambda: client.get_model_metadata("other", headers=AUTH))
    assert answer.startswith("StatusCode.NOT_FOUND") and "this server serves ['detector', 'detector_pixels']" in answer


def model_config_sha(config: dict) -> str:
    return config["parameters"]["sha256"]["string_value"]


def test_images_and_pixels_equal_a_local_scan_and_a_bad_image_stays_its_own_error(server, client, local):
    import tritonclient.grpc as grpcclient

    files = [(p.name, p.read_bytes()) for p in sample_files()] + list(bad_images().items())[:3]
    expected = list(local.scan_many(files))
    names = [s.name for s in output_specs(local.manifest)]
    result = client.infer("detector", [_bytes_input([d for _, d in files])], request_id="g1", headers=AUTH,
                          outputs=[grpcclient.InferRequestedOutput(n) for n in names])
    assert result.get_response().id == "g1" and result.get_response().model_name == "detector"
    def column(name):  # per-image outputs are [N, 1], as Triton reports them
        return result.as_numpy(name).reshape(-1)

    errors = [e.decode() for e in column("error")]
    p, verdicts = column("p_generated"), [v.decode() for v in column("verdict")]
    for i, r in enumerate(expected):
        assert errors[i] == (r.error or ""), files[i][0]
        if r.error is None:
            assert p[i] == pytest.approx(r.p_generated, abs=1e-6) and verdicts[i] == r.verdict
            assert column("quality")[i] == pytest.approx(r.quality, abs=1e-5)
        else:
            assert np.isnan(p[i]) and verdicts[i] == ""
    assert sum(bool(e) for e in errors) == 3 and {b.decode() for b in column("backend")} == {"onnxruntime-cpu"}
    # the second input form: preprocessed pixels as a binary FP32 tensor; only the outputs asked for come back
    pixels = np.concatenate([local.prepare(d) for _, d in files[:2]])
    pin = grpcclient.InferInput("pixels", list(pixels.shape), "FP32")
    pin.set_data_from_numpy(pixels)
    result = client.infer("detector_pixels", [pin], outputs=[grpcclient.InferRequestedOutput("p_generated")],
                          headers=AUTH)
    assert [o.name for o in result.get_response().outputs] == ["p_generated"]
    assert column("p_generated") == pytest.approx([r.p_generated for r in expected[:2]], abs=1e-6)

    # typed contents (bytes_contents) instead of raw contents: the same answers
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    typed = service_pb2.ModelInferRequest(model_name="detector")
    typed.inputs.add(name="image", datatype="BYTES", shape=[2]).contents.bytes_contents.extend(
        [d for _, d in files[:2]])
    with grpc.insecure_channel(server[1]) as channel:
        answer = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(typed, metadata=list(AUTH.items()))
    p_typed = np.frombuffer(answer.raw_output_contents[[o.name for o in answer.outputs].index("p_generated")], "<f4")
    assert p_typed == pytest.approx([r.p_generated for r in expected[:2]], abs=1e-6)


def test_the_token_limits_and_mistakes_have_tritons_status_codes(client):
    import tritonclient.grpc as grpcclient

    jpeg = sample_files()[0].read_bytes()
    assert "UNAUTHENTICATED" in _status(lambda: client.infer("detector", [_bytes_input([jpeg])]))
    wrong = {"authorization": "Bearer wrong"}
    assert "UNAUTHENTICATED" in _status(lambda: client.infer("detector", [_bytes_input([jpeg])], headers=wrong))
    # a message over --max-body-bytes (4 MiB here) is refused by gRPC itself, before it is read
    big = _status(lambda: client.infer("detector", [_bytes_input([b"\xff" * (4 * 2**20 + 10)])], headers=AUTH))
    assert big.startswith("StatusCode.RESOURCE_EXHAUSTED"), big
    many = _status(lambda: client.infer("detector", [_bytes_input([jpeg] * 9)], headers=AUTH))
    assert many.startswith("StatusCode.RESOURCE_EXHAUSTED") and "the limit is 8" in many, many
    odd = grpcclient.InferInput("words", [1], "BYTES")
    odd.set_data_from_numpy(np.array([b"x"], dtype=object))
    bad = _status(lambda: client.infer("detector", [odd], headers=AUTH))
    assert bad.startswith("StatusCode.INVALID_ARGUMENT") and "unknown input 'words'" in bad, bad
    shape = grpcclient.InferInput("pixels", [1, 2], "FP32")
    shape.set_data_from_numpy(np.zeros((1, 2), np.float32))
    bad = _status(lambda: client.infer("detector_pixels", [shape], headers=AUTH))
    assert bad.startswith("StatusCode.INVALID_ARGUMENT") and "must be FP32 with shape" in bad, bad
    bad = _status(lambda: client.infer("detector", [shape], headers=AUTH))
    assert bad.startswith("StatusCode.INVALID_ARGUMENT") and "goes to model 'detector_pixels'" in bad, bad
    out = _status(lambda: client.infer("detector", [_bytes_input([jpeg])], headers=AUTH,
                                       outputs=[grpcclient.InferRequestedOutput("nope")]))
    assert out.startswith("StatusCode.INVALID_ARGUMENT") and "unknown output 'nope'" in out, out
    assert _status(lambda: client.infer("detector", [_bytes_input([jpeg])], headers=AUTH, model_version="7")
                   ).startswith("StatusCode.NOT_FOUND")


def test_metrics_count_grpc_requests_beside_http(server, client):
    url, _ = server
    auth = {"Authorization": AUTH["authorization"]}

    def counts():
        text = request(url + "/metrics", headers=auth)[2].decode()
        ok = metric(text, "clipscan_request_seconds_count",
                    'endpoint="/inference.GRPCInferenceService/ModelInfer",status="OK"')
        refused = metric(text, "clipscan_request_seconds_count",
                         'endpoint="/inference.GRPCInferenceService/ModelInfer",status="UNAUTHENTICATED"')
        return ok, refused, metric(text, "clipscan_images_total", 'outcome="ok"')

    before = counts()
    client.infer("detector", [_bytes_input([p.read_bytes() for p in sample_files()[:2]])], headers=AUTH)
    _status(lambda: client.infer("detector", [_bytes_input([b"x"])]))
    after = counts()
    assert (after[0] - before[0], after[1] - before[1], after[2] - before[2]) == (1, 1, 2), (before, after)


def test_connections_past_the_cap_and_silent_sockets_are_closed(server, client):
    """--max-open-connections caps the gRPC port's connections (3 here: the module's client and two more);
    a socket that never completes its HTTP/2 handshake is closed after --header-timeout-s (1 s here)."""
    import tritonclient.grpc as grpcclient

    host, port = server[1].rsplit(":", 1)
    assert client.is_server_live()
    own = [("grpc.use_local_subchannel_pool", 1)]  # a connection each, not the one the module's client holds
    more = [grpcclient.InferenceServerClient(server[1], channel_args=own) for _ in range(3)]
    try:
        assert more[0].is_server_live(client_timeout=10) and more[1].is_server_live(client_timeout=10)
        assert "UNAVAILABLE" in _status(lambda: more[2].is_server_live(client_timeout=10))
    finally:
        for c in more:
            c.close()
    time.sleep(0.3)  # the closed connections leave the server's count
    with socket.create_connection((host, int(port)), timeout=15) as silent:
        start = time.monotonic()
        while silent.recv(4096):  # the server's own SETTINGS frame, then nothing until it closes
            pass
        assert 0.5 < time.monotonic() - start < 10  # closed by the handshake timeout, not at once
    assert client.is_server_live()


def test_grpc_and_http_share_one_batcher_and_the_service_timeout():
    """Requests over both protocols at once land in the same inference batches; a request the slowed backend
    cannot answer within --timeout-s is DEADLINE_EXCEEDED and the service goes on."""
    import tritonclient.grpc as grpcclient

    image = sample_files()[0].read_bytes()
    with Scanner() as scanner:
        state = ServiceState(scanner, Limits(max_batch=16, max_delay_ms=100, timeout_s=1.0))
        with thread_server(state, grpc=True) as (url, address):
            original, delay, batches = scanner.scan_prepared, {"s": 0.2}, []

            def slowed(items):
                batches.append({name for name, _ in items})
                time.sleep(delay["s"])
                return original(items)
            scanner.scan_prepared = slowed
            client = grpcclient.InferenceServerClient(address)

            def one(i):
                if i % 2:
                    return client.infer(state.model_name, [_bytes_input([image])]).as_numpy("p_generated")[0]
                answer = request(url + f"/v1/scan?name=http{i}.jpg", image, {"Content-Type": "image/jpeg"})
                return json.loads(answer[2])[0]["p_generated"]
            with ThreadPoolExecutor(8) as pool:
                answers = list(pool.map(one, range(8)))
            assert answers == pytest.approx([answers[0]] * 8, abs=1e-6)
            assert any("image[0]" in b and any(n.startswith("http") for n in b) for b in batches), batches
            delay["s"] = 1.5
            late = _status(lambda: client.infer(state.model_name, [_bytes_input([image])]))
            assert late.startswith("StatusCode.DEADLINE_EXCEEDED") and "timeout of 1 s" in late, late
            client.close()


def test_a_busy_or_shared_grpc_port_is_refused_before_the_model_is_loaded(tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        for args, words in ((["--grpc-port", str(port)], f"--grpc-port {port} on 127.0.0.1 is already in use"),
                            (["--port", "18123", "--grpc-port", "18123"], "--grpc-port 18123 is --port too")):
            r = subprocess.run([sys.executable, "-m", "clipscan", "serve", *args, str(tmp_path / "not-loaded.onnx")],
                               check=False, cwd=REPO, capture_output=True, text=True, timeout=60)
            err = r.stderr.strip()
            assert r.returncode == 2 and len(err.splitlines()) == 1 and words in err, err
            assert "not-loaded.onnx" not in err
