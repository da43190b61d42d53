"""The ASGI application of `clipscan serve`: one Scanner loaded once (through its backend chain), warmed up,
behind the batcher; the Open Inference Protocol routes, `/v1/scan`, `/metrics` and the upload page."""
from __future__ import annotations

import contextlib
import logging

import numpy as np
from PIL import Image
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from clipscan.runtime.contract import input_specs, output_specs, pixels_model_name, pixels_specs
from clipscan.runtime.model_name import check_model_name, model_name_for

from . import routes_rest, routes_v2
from .batcher import Batcher, OverPixelBudget, QueueFull, RequestTimeout
from .errors import HTTPError, error_response
from .limits import Limits
from .service_metrics import Metrics
from .middleware import ServiceMiddleware
from .upload_page import page_html

log = logging.getLogger("clipscan.serve")


class ServiceState:
    """What the routes share: the scanner, its batcher, limits, metrics, the model's name and readiness."""

    def __init__(self, scanner, limits: Limits, name: str | None = None, token: str | None = None,
                 allow_hosts=()):
        self.scanner, self.limits, self.token = scanner, limits, token
        self.allow_hosts = tuple(h.lower() for h in allow_hosts)  # Host names accepted besides IPs and localhost
        self.model_name = check_model_name(name) if name is not None else model_name_for(scanner.manifest.name)
        self.sha256 = scanner.artifact.sha256()
        self.outputs = output_specs(scanner.manifest)
        # the models this service serves -> their inputs: `<name>` takes encoded images, `<name>_pixels` the
        # artifact's preprocessed input tensor; both answer the same outputs (runtime.contract)
        self.models = {self.model_name: input_specs(scanner.manifest),
                       pixels_model_name(self.model_name): pixels_specs(scanner.manifest)}
        self.metrics = Metrics(self.model_name, self.sha256, scanner.backend_name)
        self.batcher = Batcher(scanner, limits, self.metrics)
        self.ready = False
        # requests being answered and the request-message bytes they hold, over HTTP and gRPC together: one
        # --max-in-flight and one --max-buffered-bytes for both protocols
        self.active = 0
        self.buffered = 0

    def warm_up(self) -> None:
        """Inference through the whole path (decode, batch, backend) before the service says it is ready: one
        image, then the largest batch the batcher can form, so the backend's memory (ONNX Runtime's arena
        grows to the largest batch it has run) is at its working size before the first request."""
        # a decoded image: the warm-up does not depend on which encoded formats --image-formats allows
        own = self.scanner.manifest.input.own_size   # an artifact at each image's own size: one it takes
        side = 64 if own is None else max(64, own.min_side)
        pixels = self.scanner.prepare(Image.fromarray(np.full((side, side, 3), 128, np.uint8)))
        largest = max(1, -(-self.limits.max_batch // max(1, len(pixels))))  # images that fill max_batch rows
        for n in (1, largest):
            for result in self.scanner.scan_prepared([(f"warm-up-{i}", pixels) for i in range(n)]):
                if result.error:
                    raise RuntimeError(f"the warm-up scan failed: {result.error}")
        self.ready = True

    async def scan(self, items):
        self.metrics.queued.set(self.batcher.queued)
        try:
            results = await self.batcher.scan(items)
        except QueueFull as e:
            raise HTTPError(503, str(e), {"Retry-After": "1"}, kind="queue_full") from None
        except RequestTimeout as e:
            raise HTTPError(504, str(e)) from None
        except OverPixelBudget as e:
            raise HTTPError(413, str(e)) from None
        finally:
            self.metrics.queued.set(self.batcher.queued)
        self.metrics.results(results)
        failed = [r for r in results if r.error_kind == "inference_failed"]
        if failed:
            log.error("backend failure on %d of %d images: %s", len(failed), len(results), failed[0].error)
            raise HTTPError(500, f"the backend failed: {failed[0].error}", kind="backend_failure")
        return results

    def close(self) -> None:
        self.ready = False
        self.batcher.close()


async def _http_error(request: Request, exc: HTTPError):
    request.app.state.service.metrics.errors.labels(exc.kind).inc()
    if exc.status >= 500 and exc.status not in (503, 504):
        log.error("%s %s: %s", request.method, request.url.path, exc.message)
    return error_response(exc.status, exc.message, exc.headers, **exc.extra)


async def _starlette_error(request: Request, exc: HTTPException):
    message = {404: f"no such endpoint: {request.url.path}",
               405: f"{request.method} is not allowed on {request.url.path}"}.get(exc.status_code, str(exc.detail))
    request.app.state.service.metrics.errors.labels(f"http_{exc.status_code}").inc()
    return error_response(exc.status_code, message, getattr(exc, "headers", None))


async def _unexpected(request: Request, exc: Exception):
    log.exception("unexpected error answering %s %s", request.method, request.url.path)
    request.app.state.service.metrics.errors.labels("server_error").inc()
    return error_response(500, f"internal error: {type(exc).__name__}: {exc}")


async def _metrics(request: Request):
    body, ctype = request.app.state.service.metrics.render()
    return Response(body, media_type=ctype)


async def _page(request: Request):
    state = request.app.state.service
    return HTMLResponse(page_html(state.model_name, state.scanner.backend_name, bool(state.token)))


def create_app(state: ServiceState) -> Starlette:
    """The app for `state` (warm it up first, or the readiness endpoints say 503)."""
    m = "/v2/models/{model}"
    mv = "/v2/models/{model}/versions/{version}"
    routes = [
        Route("/", _page), Route("/metrics", _metrics),
        Route("/v1/scan", routes_rest.scan, methods=["POST"]),
        Route("/v2", routes_v2.server_metadata), Route("/v2/health/live", routes_v2.live),
        Route("/v2/health/ready", routes_v2.ready),
        Route("/v2/repository/index", routes_v2.repository_index, methods=["POST"]),
    ]
    for base in (m, mv):
        routes += [Route(base, routes_v2.model_metadata), Route(base + "/ready", routes_v2.model_ready),
                   Route(base + "/config", routes_v2.config),
                   Route(base + "/infer", routes_v2.infer, methods=["POST"])]

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        state.close()

    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={HTTPError: _http_error, HTTPException: _starlette_error,
                                        Exception: _unexpected})
    app.state.service = state
    app.add_middleware(ServiceMiddleware, state=state)
    return app
