"""The service's batcher and failure answers, deterministically: the app under uvicorn in a thread of the
test, its backend slowed down, held or broken on purpose. Dynamic batching merges concurrent requests
(the batch-size histogram shows batches > 1); a full queue is 503 with Retry-After; a request past the
timeout is 504 and frees its slots; a backend failure is a logged, counted 500; bearer auth is 401."""
from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from clipscan.runtime.scanner import Scanner
from clipscan.serve import Limits, ServiceState

from .serve_servers import metric, request, sample_files, thread_server

pytestmark = [pytest.mark.slow, pytest.mark.alone]  # answers are timed: nothing runs beside it (tests/workers.py)
JPEG = {"Content-Type": "image/jpeg"}


@pytest.fixture
def scanner():
    with Scanner() as s:
        yield s


def _hook(scanner, before):
    """Run `before()` ahead of every inference batch (after the warm-up)."""
    original = scanner.predict

    def predict(pixels):
        before()
        return original(pixels)
    scanner.predict = predict


def test_concurrent_requests_are_merged_into_batches(scanner):
    image = sample_files()[0].read_bytes()
    state = ServiceState(scanner, Limits(max_batch=16, max_delay_ms=50))
    with thread_server(state) as url:
        _hook(scanner, lambda: time.sleep(0.05))
        with ThreadPoolExecutor(12) as pool:
            answers = list(pool.map(lambda i: request(url + f"/v1/scan?name={i}.jpg", image, JPEG), range(24)))
        assert all(a[0] == 200 for a in answers)
        rows = [json.loads(a[2])[0] for a in answers]
        assert len({r["p_generated"] for r in rows}) == 1 and [r["path"] for r in rows] == [f"{i}.jpg" for i in range(24)]
        text = request(url + "/metrics")[2].decode()
    batches = metric(text, "clipscan_batch_size_count")      # (the warm-up does not go through the batcher)
    ones = metric(text, "clipscan_batch_size_bucket", 'le="1.0"')
    assert metric(text, "clipscan_batch_size_sum") == 24
    assert ones < batches < 24, text   # some batches held images of several requests


def test_a_full_queue_is_503_with_retry_after(scanner):
    release = threading.Event()
    state = ServiceState(scanner, Limits(max_queue=1, max_delay_ms=0))
    image = sample_files()[0].read_bytes()
    with thread_server(state) as url:
        _hook(scanner, lambda: release.wait(30))
        first = ThreadPoolExecutor(1).submit(request, url + "/v1/scan", image, JPEG)
        while state.batcher.queued < 1:
            time.sleep(0.01)
        status, headers, body = request(url + "/v1/scan", image, JPEG)
        assert status == 503 and headers["retry-after"] == "1"
        assert "queue is full" in json.loads(body)["error"]
        release.set()
        assert first.result(30)[0] == 200


def test_a_request_past_the_timeout_is_504_and_frees_its_slot(scanner):
    release = threading.Event()
    state = ServiceState(scanner, Limits(max_queue=1, timeout_s=0.3, max_delay_ms=0))
    image = sample_files()[0].read_bytes()
    with thread_server(state) as url:
        _hook(scanner, lambda: release.wait(30))
        status, _, body = request(url + "/v1/scan", image, JPEG)
        assert status == 504 and "timeout of 0.3 s" in json.loads(body)["error"]
        assert state.batcher.queued == 0   # the slot is free again at once
        release.set()
        assert request(url + "/v1/scan", image, JPEG)[0] == 200
        assert metric(request(url + "/metrics")[2].decode(), "clipscan_errors_total", 'kind="timeout"') == 1


def test_a_backend_failure_is_a_counted_500(scanner, caplog):
    state = ServiceState(scanner, Limits(max_delay_ms=0))
    image = sample_files()[0].read_bytes()

    def fail():
        raise RuntimeError("the accelerator fell off the bus")
    with thread_server(state) as url:
        _hook(scanner, fail)
        status, _, body = request(url + "/v1/scan", image, JPEG)
        assert status == 500 and "the accelerator fell off the bus" in json.loads(body)["error"]
        text = request(url + "/metrics")[2].decode()
    assert metric(text, "clipscan_errors_total", 'kind="backend_failure"') == 1
    assert any("backend failure" in r.message for r in caplog.records)


def test_bearer_token_auth(scanner):
    state = ServiceState(scanner, Limits(), token="s3cret")
    image = sample_files()[0].read_bytes()
    with thread_server(state) as url:
        for path in ("/v2/health/live", "/v2/health/ready", f"/v2/models/{state.model_name}/ready"):
            assert request(url + path)[0] == 200
        status, headers, body = request(url + "/v1/scan", image, JPEG)
        assert status == 401 and headers["www-authenticate"] == "Bearer" and "bearer token" in json.loads(body)["error"]
        assert request(url + "/v1/scan", image, {**JPEG, "Authorization": "Bearer wrong"})[0] == 401
        assert request(url + "/metrics")[0] == 401
        # the repository index names the model: only to a client holding the token
        assert request(url + "/v2/repository/index", b"{}", {"Content-Type": "application/json"})[0] == 401
        status, _, body = request(url + "/v2/repository/index", b"{}", {"Authorization": "Bearer s3cret"})
        assert status == 200 and json.loads(body)[0]["name"] == state.model_name
        assert request(url + "/v1/scan", image, {**JPEG, "Authorization": "Bearer s3cret"})[0] == 200
        # the upload page is public (it asks for the token) and names no model; the API stays closed
        status, _, page = request(url + "/")
        assert status == 200 and b'id="token"' in page and state.model_name.encode() not in page
        # a wrong model name is not answered with the real one unless the client holds the token
        for path in ("/v2/models/guess/ready", "/v2/models/guess/versions/1/ready"):
            status, _, body = request(url + path)
            assert status == 404 and state.model_name not in json.loads(body)["error"]
            status, _, body = request(url + path, headers={"Authorization": "Bearer s3cret"})
            assert status == 404 and repr(state.model_name) in json.loads(body)["error"]


def test_past_max_in_flight_is_a_json_503_and_health_stays_open(scanner):
    release = threading.Event()
    state = ServiceState(scanner, Limits(max_in_flight=1, max_delay_ms=0))
    image = sample_files()[0].read_bytes()
    with thread_server(state) as url:
        _hook(scanner, lambda: release.wait(30))
        first = ThreadPoolExecutor(1).submit(request, url + "/v1/scan", image, JPEG)
        deadline = time.monotonic() + 20
        while state.batcher.queued < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        status, headers, body = request(url + "/v2/models/clipscan-demo", None, timeout=10)
        assert status == 503 and headers["retry-after"] == "1" and "limit is 1" in json.loads(body)["error"]
        assert request(url + "/v2/health/ready")[0] == 200
        release.set()
        assert first.result(30)[0] == 200
