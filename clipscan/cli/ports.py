"""Whether ports are free on a host, checked before a server loads anything (`clipscan serve`,
`clipscan triton --start`): a busy port is one sentence and exit 2, not a model loaded for nothing."""
from __future__ import annotations

import errno
import socket

from clipscan.runtime.errors import InvalidArgumentError


def busy_ports(host: str, ports) -> list[int]:
    """The ones of `ports` that something on `host` already holds (a bind with SO_REUSEADDR fails there, as
    the server's own would). A port or host that cannot be bound for another reason is an InvalidArgumentError."""
    busy = []
    for port in ports:
        if not 0 < port < 65536:
            raise InvalidArgumentError(f"port {port} is not a TCP port (1-65535)")
        try:  # the address family of `host` (an IPv6 address such as :: is bound as IPv6)
            family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
        except (socket.gaierror, UnicodeError) as e:
            raise InvalidArgumentError(f"cannot listen on {host}:{port}: {host!r} is not an address of this "
                                       f"machine ({e}); pass a --host this machine has, e.g. 127.0.0.1") from None
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
            except OSError as e:
                if e.errno != errno.EADDRINUSE:
                    raise InvalidArgumentError(f"cannot listen on {host}:{port}: {e.strerror or e}; pass a --host "
                                               "this machine has, and ports >= 1024 unless run as root") from e
                busy.append(port)
    return busy
