"""The connection guard under a burst: when the event loop falls behind and accepts a good client's
connection in the same batch as a flood of idle ones, the guard that makes room past the open-connection cap
closes sockets that sent nothing, never the one whose request is already waiting to be read."""
from __future__ import annotations

import socket
import threading
import time

import uvicorn

from clipscan.serve.connections import uvicorn_config
from clipscan.serve.limits import Limits

CAP = 3
HEAD = b"GET /ok HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


async def _ok_app(scope, receive, send):
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


def _closed_by_peer(sock: socket.socket, wait_s: float) -> bool:
    sock.settimeout(wait_s)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_a_waiting_request_is_not_closed_to_make_room():
    server = uvicorn.Server(uvicorn_config(_ok_app, Limits(max_open_connections=CAP, header_timeout_s=20)))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not (server.started and server.servers) and time.monotonic() < deadline:
        time.sleep(0.02)
    listener = server.servers[0]
    addr = listener.sockets[0].getsockname()[:2]
    old = [socket.create_connection(addr, timeout=5) for _ in range(CAP)]
    time.sleep(0.3)  # the server holds them: the cap is reached
    try:
        listener.get_loop().call_soon_threadsafe(time.sleep, 1.0)  # the loop falls behind
        time.sleep(0.2)
        good = socket.create_connection(addr, timeout=5)
        good.sendall(HEAD)
        burst = [socket.create_connection(addr, timeout=5) for _ in range(CAP)]
        good.settimeout(10)
        answer = b""
        while not answer.endswith(b"ok"):
            piece = good.recv(4096)
            assert piece, f"the server closed the connection whose request was waiting: {answer!r}"
            answer += piece
        assert answer.startswith(b"HTTP/1.1 200")
        closed = [_closed_by_peer(s, 1.0) for s in old + burst]
        assert sum(closed) >= len(old), f"past the cap of {CAP}, idle sockets stayed open: {closed}"
        assert not all(closed[len(old):]), "more idle sockets were closed than the cap needs"
        good.close()
        for s in old + burst:
            s.close()
    finally:
        server.should_exit = True
        thread.join(30)
