"""Optional bearer-token auth: the token is read from a file (`--token-file`) and compared in constant time.
The health endpoints stay open, so orchestrators can probe without the secret."""
from __future__ import annotations

import hmac
import ipaddress
from pathlib import Path

from clipscan.runtime.errors import InvalidArgumentError

HEALTH_PATHS = ("/v2/health/live", "/v2/health/ready")
# the upload page is public: it holds no secret and sends the token the user types from its script
OPEN_PATHS = (*HEALTH_PATHS, "/")


class TokenFileError(InvalidArgumentError):
    """--token-file names a file that cannot be read or holds no token."""


def read_token(path: str) -> str:
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except OSError as e:
        raise TokenFileError(f"--token-file {path}: cannot read it ({e.strerror or e})") from None
    if not token:
        raise TokenFileError(f"--token-file {path} is empty; put the bearer token in it")
    return token


def is_health(path: str) -> bool:
    """Health probes: always answered, with no token and past the in-flight limit."""
    return path in HEALTH_PATHS or (path.startswith("/v2/models/") and path.endswith("/ready"))


def is_open(path: str) -> bool:
    """Paths answered without a token."""
    return path in OPEN_PATHS or is_health(path)


def authorized(header: bytes | None, token: str) -> bool:
    expected = b"Bearer " + token.encode("utf-8")
    return hmac.compare_digest(header or b"", expected)


def _hostname(netloc: str) -> str:
    """`example.com:8000` -> `example.com`; `[::1]:8000` -> `::1`."""
    netloc = netloc.strip().lower()
    if netloc.startswith("["):
        return netloc[1:netloc.find("]")] if "]" in netloc else netloc
    return netloc.rsplit(":", 1)[0] if netloc.count(":") == 1 else netloc


def host_allowed(host: str | None, allow: tuple[str, ...] = ()) -> bool:
    """Whether a request's Host header may reach the service. A DNS-rebinding page reaches it under its own
    domain name, so by default only IP addresses and localhost are accepted; `allow` adds names ('*': any)."""
    if host is None or "*" in allow:
        return True
    name = _hostname(host)
    if name in allow or name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def origin_allowed(origin: str | None, host: str | None, allow: tuple[str, ...] = ()) -> bool:
    """Whether a browser's Origin may send requests with side effects: the page must come from the service
    itself (same host and port) or from a name in `allow`. Requests without an Origin are not from a
    cross-origin page (browsers send it on every cross-origin POST)."""
    if origin is None or "*" in allow:
        return True
    scheme, sep, netloc = origin.partition("://")
    if not sep:
        return False  # "null": a sandboxed or file:// page
    netloc = netloc.strip().lower()
    return (host is not None and netloc == host.strip().lower()) or _hostname(netloc) in allow
