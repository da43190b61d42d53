"""The service's TCP connections under uvicorn, guarded against clients that hold sockets and send nothing:
a connection must send a complete request head within `header_timeout_s` (from when it opens, or from the
first byte of the next request on a kept-alive one) or it is closed; past `max_open_connections` the
longest-idle connections are closed to make room (a new one is refused only when every open connection is
answering a request). Request admission is the app's business (the in-flight limit in the middleware), so
idle sockets never make the service answer 503.

`uvicorn_config` is the one place the service's uvicorn configuration is written; `clipscan serve` and the
tests' in-process servers both use it."""
from __future__ import annotations

import logging
import time

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("clipscan.serve")


def _connection_cap(wanted: int) -> int:
    """`wanted`, lowered to what the process's file-descriptor limit leaves room for (a few are the
    listening socket, the model, logs): past that, accept() itself would fail."""
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):
        return wanted
    room = soft - 64 if soft != resource.RLIM_INFINITY else wanted
    if wanted > room:
        log.warning("--max-open-connections %d is past what the file-descriptor limit (%d) allows: using %d",
                    wanted, soft, max(room, 1))
    return max(1, min(wanted, room))


def _guarded_protocol(limits) -> type:
    header_timeout, cap = limits.header_timeout_s, _connection_cap(limits.max_open_connections)

    class GuardedH11Protocol(H11Protocol):
        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self.idle_since = time.monotonic()
            self.head_timer = None
            self._arm_head_timer()
            if len(self.connections) > cap:
                self._make_room()

        def busy(self) -> bool:
            """A request head has arrived and its response is not finished."""
            return self.cycle is not None and not self.cycle.response_complete

        def _arm_head_timer(self) -> None:
            if self.head_timer is None:
                self.head_timer = self.loop.call_later(header_timeout, self._head_timed_out)

        def _cancel_head_timer(self) -> None:
            if self.head_timer is not None:
                self.head_timer.cancel()
                self.head_timer = None

        def _head_timed_out(self) -> None:
            self.head_timer = None
            if not self.busy() and not self.transport.is_closing():
                self.transport.close()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.busy():
                self._cancel_head_timer()
            elif not self.transport.is_closing():
                self._arm_head_timer()  # part of a head: the clock runs from its first byte

        def on_response_complete(self) -> None:
            self.idle_since = time.monotonic()
            super().on_response_complete()  # arms uvicorn's keep-alive timer for the idle connection

        def connection_lost(self, exc) -> None:
            self._cancel_head_timer()
            super().connection_lost(exc)

        def _make_room(self) -> None:
            idle = sorted((c for c in self.connections if c is not self and not c.busy()
                           and not c.transport.is_closing()), key=lambda c: c.idle_since)
            excess = len(self.connections) - cap
            if not idle:
                log.warning("%d connections are open, all answering requests: refusing a new one", cap)
                self.transport.close()
                return
            for c in idle[:excess]:
                c.transport.close()

    return GuardedH11Protocol


def uvicorn_config(app, limits, host: str = "127.0.0.1", port: int = 0, **extra) -> uvicorn.Config:
    """uvicorn's configuration for the service's `app` under `limits`: no uvicorn concurrency limit (it
    counts idle connections and answers plain-text 503s), the guarded protocol, no WebSocket upgrades (the
    service has no WebSocket endpoint), no server header."""
    return uvicorn.Config(app, host=host, port=port, http=_guarded_protocol(limits), ws="none",
                          limit_concurrency=None, timeout_keep_alive=limits.keep_alive_s, access_log=False,
                          log_config=None, lifespan="on", server_header=False, **extra)
