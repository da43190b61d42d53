"""RemoteScanner: the Scanner's scan/scan_bytes against an Open Inference Protocol server (`clipscan serve`,
or Triton with the repository `clipscan triton` writes), over HTTP with the binary tensor extension.

Standard library and numpy only (http.client, one keep-alive connection per worker thread): it works in the
base install. Files are read here, sent `batch_size` at a time with up to `concurrency` requests in flight,
and come back as the same ScanResults (and rows) a local scan gives: decoding, preprocessing and the model
run on the server through the same runtime. A file that cannot be read is an error row as in a local scan;
a batch the server rejects is retried image by image, so one bad file is one error row; 503 answers and
dropped connections are retried with exponential backoff; an unreachable server, a refused token, an
unknown model or a server that does not speak the protocol stop the scan with one sentence (ServerError).
"""
from __future__ import annotations

import http.client
import json
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Container, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote, urlsplit

import numpy as np

from . import defaults as T
from .contract import INPUT_IMAGE, tensors_to_results
from .decode import read_bytes
from .discover import WalkStats
from .errors import ImageReadError, InvalidArgumentError, ScannerClosedError, ServerError
from .model_name import check_model_name
from .results import ATTRIBUTION_COLUMNS, COLUMNS, ScanResult
from .scanner import path_sources
from .v2_wire import HEADER_LENGTH, WireError, decode_message, encode_message, entry_for

RETRY_STATUS = (503,)


def _message(body: bytes) -> str:
    try:
        return str(json.loads(body).get("error") or body[:200].decode("utf-8", "replace"))
    except (ValueError, AttributeError):
        return body[:200].decode("utf-8", "replace").strip() or "(empty body)"


def triton_parameters(config: dict) -> dict:
    """Model parameters from Triton's config form ({k: {"string_value": v}}) or a plain {k: v} object."""
    out = {}
    for k, v in (config.get("parameters") or {}).items():
        out[k] = v.get("string_value") if isinstance(v, dict) else v
    return out


class RemoteScanner:
    """Scan images with a model served by an Open Inference Protocol server.

    >>> with RemoteScanner("http://127.0.0.1:8000", "clipscan-demo") as s:
    ...     for r in s.scan(["photos/"]):
    ...         print(r.path, r.p_generated, r.verdict, r.error)
    """

    def __init__(self, url: str, model: str | None = None, *, token: str | None = None,
                 batch_size: int = T.CLIENT_BATCH, concurrency: int = T.CLIENT_CONCURRENCY,
                 timeout: float = T.CLIENT_TIMEOUT_S, retries: int = T.CLIENT_RETRIES,
                 backoff: float = T.CLIENT_BACKOFF_S):
        for what, v in (("batch_size", batch_size), ("concurrency", concurrency)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InvalidArgumentError(f"{what} must be an integer >= 1, got {v!r}")
        if model is not None:
            check_model_name(model, "--server-model")
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidArgumentError(f"--server {url!r} is not an http(s) URL; e.g. http://127.0.0.1:8000")
        self.url = f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"
        self._https, self._host, self._port = parts.scheme == "https", parts.hostname, parts.port
        self._prefix = parts.path.rstrip("/")
        self.token, self.batch_size, self.concurrency = token, batch_size, concurrency
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self._local = threading.local()
        self._connections: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self._closed = False
        self._answered = False
        self._executor: ThreadPoolExecutor | None = None
        self.walk_stats = WalkStats()
        self.server = self._server_info()
        self.model = model if model is not None else self._only_model()
        self.metadata = self._model_metadata()
        self.identity = self._identity()
        self.server_backend = self._probe_backend()
        self.identity["server_backend"] = self.server_backend or self.identity["server_backend"]

    # -- talking to the server ---------------------------------------------------------------------
    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            conn = cls(self._host, self._port, timeout=self.timeout)
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    def _drop_connection(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict | None = None) -> tuple[int, dict, bytes]:
        """(status, headers, body); 503 and dropped connections retried with backoff; unreachable: ServerError."""
        headers = dict(headers or {})
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        delay = self.backoff
        for attempt in range(self.retries + 1):
            try:
                conn = self._connection()
                conn.request(method, self._prefix + path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                if resp.status in RETRY_STATUS and attempt < self.retries:
                    time.sleep(delay)
                    delay = min(delay * 2, T.CLIENT_BACKOFF_MAX_S)
                    continue
                self._answered = True
                return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
            except (OSError, http.client.HTTPException) as e:
                self._drop_connection()
                # an answer that is not HTTP (a gRPC port), before the server ever answered in HTTP
                if isinstance(e, http.client.HTTPException) and not isinstance(e, http.client.RemoteDisconnected) \
                        and not self._answered:
                    raise ServerError(f"{self.url} answered, but not in HTTP ({type(e).__name__}), so it is not an "
                                      "Open Inference Protocol HTTP server: is this a gRPC port? point --server at "
                                      "the HTTP port (Triton's is 8000 by default)") from None
                # a refused connection or an unknown host before the server ever answered: no point waiting
                first_contact = isinstance(e, (ConnectionRefusedError, socket.gaierror)) and not self._answered
                if attempt >= self.retries or first_contact:
                    raise ServerError(f"cannot reach the server at {self.url} ({type(e).__name__}: {e}); is it "
                                      "running and is the URL right? (start one with `clipscan serve` or "
                                      "`tritonserver --model-repository DIR`)") from None
                time.sleep(delay)
                delay = min(delay * 2, T.CLIENT_BACKOFF_MAX_S)
        raise AssertionError("unreachable")

    def _get_json(self, path: str, what: str) -> tuple[int, object]:
        status, _, body = self.request("GET", path)
        if status in (401, 403):
            raise ServerError(f"the server at {self.url} refused {'the' if self.token else 'a request without a'} "
                              f"token (HTTP {status}: {_message(body)}); pass --token-file FILE with a valid token")
        if status != 200:
            return status, _message(body)
        try:
            return status, json.loads(body)
        except ValueError:
            raise ServerError(f"{self.url}{path} answered HTTP 200 with a body that is not JSON, so this is not an Open "
                              f"Inference Protocol (KServe v2) server ({what}); point --server at `clipscan serve` "
                              "or Triton's HTTP port") from None

    def _server_info(self) -> dict:
        status, info = self._get_json("/v2", "server metadata")
        if status != 200 or not isinstance(info, dict) or "extensions" not in info and "name" not in info:
            raise ServerError(f"{self.url} is not an Open Inference Protocol (KServe v2) server: GET /v2 answered "
                              f"HTTP {status} {str(info)[:120]!r}; point --server at `clipscan serve` or Triton's "
                              "HTTP port (8000 by default)")
        return info

    def _models(self) -> tuple[list[str], str]:
        """(the names of the server's ready models, how they were asked for): Triton's and `clipscan serve`'s
        POST /v2/repository/index, else a GET /v2/models listing (KServe-style servers: a list of names or
        of {"name"} objects, bare or under "models"); ([], what each answered) when neither lists any."""
        status, _, body = self.request("POST", "/v2/repository/index", b"{}", {"Content-Type": "application/json"})
        if status == 200:
            try:
                return [m["name"] for m in json.loads(body) if isinstance(m, dict) and isinstance(m.get("name"), str)
                        and m.get("state", "READY") == "READY"], "POST /v2/repository/index"
            except (ValueError, TypeError, KeyError):
                pass
        tried = f"POST /v2/repository/index answered HTTP {status}" + (" without a list" if status == 200 else "")
        status, listing = self._get_json("/v2/models", "model listing")
        if status == 200 and isinstance(listing, dict):
            listing = listing.get("models")
        if status == 200 and isinstance(listing, list):
            names = [m.get("name") if isinstance(m, dict) else m for m in listing]
            return [n for n in names if isinstance(n, str) and n], "GET /v2/models lists none"
        return [], f"{tried} and GET /v2/models HTTP {status}"

    def _only_model(self) -> str:
        names, how = self._models()
        ours = []
        for name in names:
            status, meta = self._get_json(f"/v2/models/{quote(name, safe='')}", "model metadata")
            if status == 200 and isinstance(meta, dict) and self._speaks_contract(meta):
                ours.append(name)
        if len(ours) == 1:
            return ours[0]
        if ours:
            why = f"it serves {len(ours)} clipscan models, {ours}"
        elif names:
            why = f"none of the models it lists ({names}) is a clipscan model"
        else:
            why = f"it lists no model ({how})"
        raise ServerError(f"which model of {self.url}? {why}; pass --server-model NAME")

    @staticmethod
    def _speaks_contract(meta: dict) -> bool:
        inputs = {t.get("name"): t for t in meta.get("inputs") or [] if isinstance(t, dict)}
        outputs = {t.get("name") for t in meta.get("outputs") or [] if isinstance(t, dict)}
        return inputs.get(INPUT_IMAGE, {}).get("datatype") == "BYTES" and "error" in outputs

    def _model_metadata(self) -> dict:
        status, meta = self._get_json(f"/v2/models/{quote(self.model, safe='')}", "model metadata")
        if status == 404 or status == 400:
            names = self._models()[0]
            have = f"; it serves {names}" if names else ""
            raise ServerError(f"the server at {self.url} has no model {self.model!r} ({meta}){have}; "
                              "pass --server-model NAME")
        if status != 200 or not isinstance(meta, dict):
            raise ServerError(f"the server at {self.url} could not describe model {self.model!r} (HTTP {status}: "
                              f"{meta}); is it loaded and ready?")
        if not self._speaks_contract(meta):
            raise ServerError(f"model {self.model!r} on {self.url} does not take clipscan's input (an 'image' BYTES "
                              f"tensor) and give its 'error' output: inputs {meta.get('inputs')}; serve a clipscan "
                              "model (`clipscan serve` or a repository written by `clipscan triton`)")
        image = next(t for t in meta["inputs"] if t.get("name") == INPUT_IMAGE)
        self._image_rank = len(image.get("shape") or [-1])
        self.outputs = [t["name"] for t in meta.get("outputs") or []]
        return meta

    def _identity(self) -> dict:
        """The served model's identity (for the results sidecar) from the `parameters` of its metadata
        (`clipscan serve`) or of its config (Triton); the batch is capped at the config's max_batch_size."""
        params = triton_parameters(self.metadata)
        status, config = self._get_json(f"/v2/models/{quote(self.model, safe='')}/config", "model config")
        if status == 200 and isinstance(config, dict):
            params = {**triton_parameters(config), **params}
            top = config.get("max_batch_size")
            if isinstance(top, int) and top > 0:
                self.batch_size = min(self.batch_size, top)
        return {"name": params.get("name") or self.model, "sha256": params.get("sha256"),
                "precision": params.get("precision"), "file": params.get("file"), "server": self.url,
                "server_model": self.model, "server_backend": params.get("backend")}

    def _probe_backend(self) -> str | None:
        """The backend the server's model really runs on, as its rows name it: from one empty image (which
        scans to an `empty` error row). Rows for files that cannot be read here carry it, as local rows do."""
        try:
            return tensors_to_results(self.infer([b""]), ["<probe>"])[0].backend
        except (_Rejected, WireError, ValueError):
            return None

    @property
    def columns(self) -> tuple[str, ...]:
        return self.columns_for("jsonl")

    def columns_for(self, fmt: str = "jsonl") -> tuple[str, ...]:
        """The row columns of a local scan of the served model (results.columns_for), from its outputs:
        every head's answer (`<head>.<field>` tensors) nested as `heads` in JSONL, `<head>_<field>` in CSV."""
        base = ATTRIBUTION_COLUMNS if "generator" in self.outputs else COLUMNS
        per_head = [name for name in self.outputs if "." in name]
        if not per_head:
            return base
        if fmt == "csv":
            return base + tuple("_".join(name.rsplit(".", 1)) for name in per_head)
        return base + ("heads",)

    @property
    def backend_name(self) -> str:
        return f"{self.model} at {self.url}"

    # -- inference -----------------------------------------------------------------------------------
    def infer(self, images: list[bytes]) -> dict[str, np.ndarray]:
        """The contract's output tensors for `images` ([N] each; [N, D] for embeddings)."""
        arr = np.empty(len(images), dtype=object)
        arr[:] = images
        if self._image_rank == 2:  # Triton's batching models: [N, 1]
            arr = arr.reshape(-1, 1)
        body, hlen = encode_message({"parameters": {"binary_data_output": True}}, "inputs",
                                    [(entry_for(INPUT_IMAGE, arr, "BYTES"), arr)], True)
        status, headers, data = self.request("POST", f"/v2/models/{quote(self.model, safe='')}/infer", body,
                                             {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(hlen)})
        if status in (401, 403):
            raise ServerError(f"the server at {self.url} refused the token (HTTP {status}: {_message(data)}); "
                              "pass --token-file FILE with a valid token")
        if status == 404:
            raise ServerError(f"the server at {self.url} no longer serves model {self.model!r} ({_message(data)})")
        if status != 200:
            raise _Rejected(status, _message(data))
        length = headers.get(HEADER_LENGTH.lower())
        _, tensors = decode_message(data, int(length) if length else None, "outputs")
        n = len(images)
        return {k: (v.reshape(n) if v.ndim == 2 and v.shape == (n, 1) else v) for k, v in tensors.items()}

    def _results(self, names: list[str], images: list[bytes]) -> list[ScanResult]:
        try:
            return tensors_to_results(self.infer(images), names)
        except (_Rejected, WireError, ValueError) as e:
            refused = isinstance(e, _Rejected) and 400 <= e.status < 500
            if refused and len(images) > 1:  # find the image the server refuses: the others still scan
                return [r for i in range(len(images)) for r in self._results(names[i:i + 1], images[i:i + 1])]
            # a server failure (5xx, still 503 after the retries, a malformed answer) is every image's row
            kind = "server_rejected" if refused else "server_error"
            return [ScanResult(path=n, error=f"{kind}: {e}", backend=self.server_backend) for n in names]

    def _batch(self, batch: list[tuple[str, bytes | ImageReadError]]) -> list[ScanResult]:
        ok = [(n, b) for n, b in batch if isinstance(b, bytes)]
        scanned = iter(self._results([n for n, _ in ok], [b for _, b in ok]) if ok else [])
        return [next(scanned) if isinstance(b, bytes) else ScanResult(path=n, error=str(b), backend=self.server_backend)
                for n, b in batch]

    def _scan_sources(self, items: Iterable[tuple[str, object]]) -> Iterator[ScanResult]:
        def read(source):
            try:
                return read_bytes(source)
            except ImageReadError as e:
                return e

        pool = self._pool()
        # one pool (its threads and their keep-alive connections) serves every scan of this RemoteScanner
        window: deque = deque()
        batch: list = []
        for name, source in items:
            batch.append((name, read(source)))
            if len(batch) >= self.batch_size:
                window.append(pool.submit(self._batch, batch))
                batch = []
                if len(window) >= 2 * self.concurrency:
                    yield from window.popleft().result()
        if batch:
            window.append(pool.submit(self._batch, batch))
        while window:
            yield from window.popleft().result()

    # -- public API, as the Scanner's ----------------------------------------------------------------
    def scan(self, paths: Iterable[str | os.PathLike] | str | os.PathLike, *, all_files: bool = False,
             skip: Container[str] = ()) -> Iterator[ScanResult]:
        """Scan files and folders (recursively) on the server; results in input order, as Scanner.scan."""
        self._check_open()
        self.walk_stats = WalkStats()
        return self._scan_sources(path_sources(paths, all_files=all_files, skip=skip, stats=self.walk_stats))

    def scan_bytes(self, data: bytes, name: str = "<bytes>") -> ScanResult:
        """Scan one encoded image held in memory."""
        self._check_open()
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise InvalidArgumentError(f"scan_bytes takes the encoded file as bytes, got {type(data).__name__}")
        return next(self._scan_sources([(name, bytes(data))]))

    def scan_many(self, items: Iterable[tuple[str, object]]) -> Iterator[ScanResult]:
        """Scan (name, source) pairs; a source is a path, bytes or a binary file."""
        self._check_open()
        return self._scan_sources(items)

    def _pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(self.concurrency, thread_name_prefix="clipscan-remote")
            return self._executor

    def _check_open(self) -> None:
        if self._closed:
            raise ScannerClosedError(f"this RemoteScanner ({self.model} at {self.url}) was closed; create a new one")

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        self._closed = True
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()

    def __enter__(self) -> RemoteScanner:  # noqa: PYI034 (Python 3.10 has no typing.Self)
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Rejected(ServerError):  # the server answered a request with an error status
    def __init__(self, status: int, message: str):
        self.status = status
        super().__init__(f"HTTP {status}: {message}")
