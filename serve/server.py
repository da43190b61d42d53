"""Running the service: load the Scanner once, warm it up, serve with uvicorn, say when it is ready.
SIGTERM or Ctrl-C stop accepting, finish the requests in flight, then return (exit 0)."""
from __future__ import annotations

import logging
import signal
import threading

import uvicorn

from .app import ServiceState, create_app
from .connections import uvicorn_config

log = logging.getLogger("clipscan.serve")


class _Server(uvicorn.Server):
    def __init__(self, config, on_ready):
        super().__init__(config)
        self.on_ready = on_ready

    async def startup(self, sockets=None):
        await super().startup(sockets)
        if self.started and self.servers:
            host, port = self.servers[0].sockets[0].getsockname()[:2]
            self.on_ready(host, port)


def serve(state: ServiceState, host: str = "127.0.0.1", port: int = 8000, on_ready=None,
          graceful_timeout_s: float | None = 30.0) -> None:
    """Serve `state` (already warmed up) until SIGTERM/SIGINT; `on_ready(host, port)` once listening
    (port 0 picks a free one)."""
    config = uvicorn_config(create_app(state), state.limits, host=host, port=port,
                            timeout_graceful_shutdown=graceful_timeout_s)

    def ready(h, p):
        log.log(25, "ready: model %s (sha256 %s...) on backend %s at http://%s:%s", state.model_name,
                state.sha256[:12], state.scanner.backend_name, h, p)
        if on_ready is not None:
            on_ready(h, p)

    # uvicorn stops gracefully on SIGTERM/SIGINT, then re-raises the signal to the handler that was there
    # before it: that handler is this no-op, so a graceful stop returns and the command exits 0
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, _stopped)
    try:
        _Server(config, ready).run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _stopped(signum, frame) -> None:
    log.log(25, "stopped (%s): requests in flight were answered", signal.Signals(signum).name)
