"""The service's TCP connections under uvicorn, guarded against clients that hold sockets and send nothing:
a connection must send a complete request head within `header_timeout_s` (from when it opens, or from the
first byte of the next request on a kept-alive one) or it is closed; past `max_open_connections` the
longest-idle connections are closed to make room (idle: no request being answered and no unread bytes
waiting; a new one is refused only when none is idle). Request admission is the app's business (the in-flight limit in the middleware), so
idle sockets never make the service answer 503.

`uvicorn_config` is the one place the service's uvicorn configuration is written; `clipscan serve` and the
tests' in-process servers both use it."""
from __future__ import annotations

import logging
import socket
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


def _bytes_waiting(transport) -> bool:
    """Whether the client has sent bytes the event loop has not read yet: such a connection is not idle,
    only not yet served (under a burst of new connections the loop accepts many before it reads any), and
    closing it would reset a client whose request is already on its way."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return False
    try:
        with sock.dup() as peek:
            return bool(peek.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:
        return False  # already broken: as good a victim as any


def _guarded_protocol(limits) -> type:
    header_timeout, cap = limits.header_timeout_s, _connection_cap(limits.max_open_connections)

    class GuardedH11Protocol(H11Protocol):
        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self.idle_since = time.monotonic()
            self.head_timer = None
            self._arm_head_timer()
            if self._open_count() > cap:
                self._make_room()

        def _open_count(self) -> int:
            """Connections not already being closed (a closed one stays in the set until the loop reports
            it lost)."""
            return sum(not c.transport.is_closing() for c in self.connections)

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
                           and not c.transport.is_closing() and not _bytes_waiting(c.transport)),
                          key=lambda c: c.idle_since)
            excess = self._open_count() - cap
            if not idle:
                log.warning("%d connections are open, none idle: refusing a new one", cap)
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
