"""Running the service: load the Scanner once, warm it up, serve with uvicorn (and, with a gRPC port, the
gRPC endpoint on the same event loop), say when it is ready. SIGTERM or Ctrl-C stop accepting, finish the
requests in flight, then return (exit 0)."""
from __future__ import annotations

import logging
import signal
import threading

import uvicorn

from .app import ServiceState, create_app
from .connections import uvicorn_config

log = logging.getLogger("clipscan.serve")


class ServiceServer(uvicorn.Server):
    """uvicorn with the gRPC endpoint beside it (when `grpc_port` is given) and a ready callback."""

    def __init__(self, config, on_ready, state=None, grpc_port: int | None = None, grace_s: float | None = None):
        super().__init__(config)
        self.on_ready, self.state, self.grpc_port, self.grace_s = on_ready, state, grpc_port, grace_s
        self.grpc = None

    async def startup(self, sockets=None):
        await super().startup(sockets)
        if not (self.started and self.servers):
            return
        host, port = self.servers[0].sockets[0].getsockname()[:2]
        grpc_port = None
        if self.grpc_port is not None:
            from .grpc_server import start

            self.grpc, grpc_port = await start(self.state, self.config.host, self.grpc_port)
        self.on_ready(host, port, grpc_port)

    async def shutdown(self, sockets=None):
        # the gRPC calls in flight are answered before the HTTP side closes the batcher they wait on
        if self.grpc is not None:
            await self.grpc.stop(self.grace_s)
        await super().shutdown(sockets)


def serve(state: ServiceState, host: str = "127.0.0.1", port: int = 8000, on_ready=None,
          graceful_timeout_s: float | None = 30.0, grpc_port: int | None = None) -> None:
    """Serve `state` (already warmed up) until SIGTERM/SIGINT; `on_ready(host, port)` once listening
    (port 0 picks a free one). With `grpc_port` (0: a free one) the gRPC endpoint listens on `host` too."""
    config = uvicorn_config(create_app(state), state.limits, host=host, port=port,
                            timeout_graceful_shutdown=graceful_timeout_s)

    def ready(h, p, gp):
        also = f", gRPC at {h}:{gp}" if gp is not None else ""
        log.log(25, "ready: model %s (sha256 %s...) on backend %s at http://%s:%s%s", state.model_name,
                state.sha256[:12], state.scanner.backend_name, h, p, also)
        if on_ready is not None:
            on_ready(h, p)

    # uvicorn stops gracefully on SIGTERM/SIGINT, then re-raises the signal to the handler that was there
    # before it: that handler is this no-op, so a graceful stop returns and the command exits 0
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, _stopped)
    try:
        ServiceServer(config, ready, state, grpc_port, graceful_timeout_s).run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _stopped(signum, frame) -> None:
    log.log(25, "stopped (%s): requests in flight were answered", signal.Signals(signum).name)
