"""Client errors as JSON: every one a 4xx `{"error": "..."}` that says what was wrong."""
from __future__ import annotations

from starlette.responses import JSONResponse

from clipscan.runtime.errors import ClipscanError


class HTTPError(ClipscanError):
    def __init__(self, status: int, message: str, headers: dict | None = None, kind: str | None = None, **extra):
        super().__init__(message)
        self.status, self.message, self.headers, self.extra = status, message, headers or {}, extra
        self.kind = kind or {400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
                             413: "too_large", 415: "unsupported_media_type", 422: "unprocessable",
                             500: "backend_failure", 503: "unavailable", 504: "timeout"}.get(status, f"http_{status}")


def error_response(status: int, message: str, headers: dict | None = None, **extra) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status, headers=headers)
