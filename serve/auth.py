"""Optional bearer-token auth: the token is read from a file (`--token-file`) and compared in constant time.
The health endpoints stay open, so orchestrators can probe without the secret."""
from __future__ import annotations

import hmac
from pathlib import Path

from clipscan.runtime.errors import InvalidArgumentError

OPEN_PATHS = ("/v2/health/live", "/v2/health/ready")


def read_token(path: str) -> str:
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except OSError as e:
        raise InvalidArgumentError(f"--token-file {path}: cannot read it ({e.strerror or e})") from None
    if not token:
        raise InvalidArgumentError(f"--token-file {path} is empty; put the bearer token in it")
    return token


def is_open(path: str) -> bool:
    return path in OPEN_PATHS or (path.startswith("/v2/models/") and path.endswith("/ready"))


def authorized(header: bytes | None, token: str) -> bool:
    expected = b"Bearer " + token.encode("utf-8")
    return hmac.compare_digest(header or b"", expected)
