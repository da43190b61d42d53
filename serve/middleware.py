"""The ASGI layer in front of every route: the Host and Origin checks (403: DNS rebinding, cross-site
posts), the in-flight request limit (503 JSON; health probes are always answered), bearer-token auth, the
body limits (413 from Content-Length before reading the body, and while reading a body sent without one;
408 for a body that does not arrive in time; 503 when the bodies held at once would pass their budget),
in-flight requests, request latency and a structured (JSON) access log line per request."""
from __future__ import annotations

import asyncio
import json
import logging
import time

from .auth import authorized, host_allowed, is_health, is_open, origin_allowed
from .errors import HTTPError, error_response

access_log = logging.getLogger("clipscan.serve.access")


class BodyError(HTTPError):
    """A body refused while it is read (it may be raised outside the routes, e.g. while parsing a form)."""


def _endpoint(path: str) -> str:
    """A low-cardinality label for metrics."""
    if path.startswith("/v2/models/"):
        tail = path.rstrip("/").rsplit("/", 1)[-1]
        return f"/v2/models/*/{tail}" if tail in ("infer", "ready", "config") else "/v2/models/*"
    known = ("/", "/v1/scan", "/v2", "/metrics", "/v2/health/live", "/v2/health/ready", "/v2/repository/index")
    return path if path in known else "other"


def _header(headers: dict, name: bytes) -> str | None:
    value = headers.get(name)
    return None if value is None else value.decode("latin-1")


class ServiceMiddleware:
    def __init__(self, app, state):
        self.app, self.state = app, state  # state.active, state.buffered: shared with the gRPC endpoint

    def _hold(self, n: int, body: dict) -> None:
        """Count `n` more body bytes of one request against the budget, or refuse them (503)."""
        budget = self.state.limits.max_buffered_bytes
        held = self.state.buffered
        if held + n > budget:
            raise BodyError(503, f"the server holds {held} bytes of request bodies and this one would pass "
                                 f"its budget of {budget}; retry shortly", {"Retry-After": "1", "Connection": "close"},
                            kind="bodies_over_budget")
        self.state.buffered += n
        body["held"] += n

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        state, path = self.state, scope["path"]
        headers = dict(scope["headers"])
        start = time.perf_counter()
        status = {"code": 500}
        received = {"n": 0}
        limit = state.limits.max_body_bytes

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status["code"], status["started"] = message["status"], True
            await send(message)

        lim = state.limits
        body_deadline = time.monotonic() + lim.body_timeout_s
        body = {"done": False, "held": 0}  # held: bytes counted against the buffered-bodies budget

        async def receive_wrapper():
            if body["done"]:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(body_deadline - time.monotonic(), 0.001))
            except asyncio.TimeoutError:
                raise BodyError(408, f"the request body did not arrive within {lim.body_timeout_s:g} s; send it "
                                     "faster or in smaller requests", {"Connection": "close"}) from None
            if message["type"] == "http.request":
                received["n"] += len(message.get("body", b""))
                body["done"] = not message.get("more_body", False)
                if received["n"] > limit:
                    raise BodyError(413, f"the request body is over the limit of {limit} bytes",
                                    {"Connection": "close"})
                if received["n"] > body["held"]:  # a body sent without Content-Length: counted as it comes
                    self._hold(received["n"] - body["held"], body)
            else:
                body["done"] = True
            return message

        metrics = state.metrics
        metrics.in_flight.inc()
        self.state.active += 1
        try:
            response = None
            host = _header(headers, b"host")
            if not host_allowed(host, state.allow_hosts):
                response = error_response(403, f"Host {host!r} is not one this service answers to (IP addresses "
                                               "and localhost are; a name must be allowed with --allow-host)")
                metrics.errors.labels("forbidden").inc()
            elif scope["method"] not in ("GET", "HEAD") and not origin_allowed(
                    _header(headers, b"origin"), host, state.allow_hosts):
                response = error_response(403, f"requests from pages of origin {_header(headers, b'origin')!r} "
                                               "are refused (a page of another site; allow its host with "
                                               "--allow-host)")
                metrics.errors.labels("forbidden").inc()
            elif self.state.active > state.limits.max_in_flight and not is_health(path):
                response = error_response(503, f"too many requests at once (the limit is "
                                               f"{state.limits.max_in_flight}); retry shortly", {"Retry-After": "1"})
                metrics.errors.labels("too_many_requests").inc()
            elif state.token and not is_open(path) and not authorized(headers.get(b"authorization"), state.token):
                response = error_response(401, "missing or wrong bearer token: send 'Authorization: Bearer <token>'",
                                          {"WWW-Authenticate": "Bearer"})
                metrics.errors.labels("unauthorized").inc()
            else:
                length = headers.get(b"content-length")
                try:
                    too_big = length is not None and int(length) > limit
                except ValueError:
                    response = error_response(400, f"Content-Length {length.decode('latin-1')!r} is not a number")
                else:
                    if too_big:
                        response = error_response(413, f"the request body ({int(length)} bytes) is over the limit "
                                                       f"of {limit} bytes", {"Connection": "close"})
                        metrics.errors.labels("too_large").inc()
                    elif length is not None:
                        try:
                            self._hold(int(length), body)
                        except BodyError as e:
                            response = error_response(e.status, e.message, e.headers)
                            metrics.errors.labels(e.kind).inc()
            if response is not None:
                await response(scope, receive, send_wrapper)
            else:
                try:
                    await self.app(scope, receive_wrapper, send_wrapper)
                except BodyError as e:  # raised outside the routes' handlers (e.g. while parsing a form)
                    metrics.errors.labels(e.kind).inc()
                    if not status.get("started"):
                        await error_response(e.status, e.message, e.headers)(scope, receive, send_wrapper)
        finally:
            self.state.buffered -= body["held"]
            self.state.active -= 1
            metrics.in_flight.dec()
            seconds = time.perf_counter() - start
            metrics.latency.labels(_endpoint(path), str(status["code"])).observe(seconds)
            if access_log.isEnabledFor(logging.INFO):
                client = scope.get("client") or ("", 0)
                access_log.info(json.dumps({"method": scope["method"], "path": path, "status": status["code"],
                                            "ms": round(seconds * 1000, 2), "bytes_in": received["n"],
                                            "client": f"{client[0]}:{client[1]}"}))
