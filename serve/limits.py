"""The service's limits and their defaults, as data in one place (the CLI's flags, the README's table and
the model configuration `/v2/models/{name}/config` all read them from here)."""
from __future__ import annotations

import math
from dataclasses import dataclass, fields

from clipscan.runtime.decode import DEFAULT_MAX_PIXELS
from clipscan.runtime.errors import InvalidArgumentError

# name -> (default, what it bounds); clipscan chose these numbers
DEFAULTS = {
    "max_body_bytes": (64 * 1024 * 1024, "request body, bytes (413 from Content-Length, before reading it)"),
    "max_pixels": (min(DEFAULT_MAX_PIXELS, 64_000_000), "decoded pixels of one image (bombs: 'too_large' error)"),
    "max_images": (64, "images per request (413 beyond)"),
    "max_batch": (32, "images merged into one inference batch"),
    "max_delay_ms": (5.0, "how long the batcher waits for more images to fill a batch"),
    "max_queue": (256, "images waiting for inference (503 with Retry-After when full)"),
    "timeout_s": (30.0, "per-request timeout (504, its queue slots freed)"),
    "max_connections": (128, "requests answered at once (503 JSON with Retry-After beyond)"),
    "decode_workers": (2, "decoding threads"),
}
CONTENT_TYPES = ("image/jpeg", "image/png", "image/webp", "image/gif", "image/bmp", "image/tiff",
                 "application/octet-stream")
# the inference endpoint: JSON, the binary extension, and what `curl -d` sends by default
V2_CONTENT_TYPES = ("application/json", "application/octet-stream", "application/x-www-form-urlencoded")


@dataclass
class Limits:
    max_body_bytes: int = DEFAULTS["max_body_bytes"][0]
    max_pixels: int = DEFAULTS["max_pixels"][0]
    max_images: int = DEFAULTS["max_images"][0]
    max_batch: int = DEFAULTS["max_batch"][0]
    max_delay_ms: float = DEFAULTS["max_delay_ms"][0]
    max_queue: int = DEFAULTS["max_queue"][0]
    timeout_s: float = DEFAULTS["timeout_s"][0]
    max_connections: int = DEFAULTS["max_connections"][0]
    decode_workers: int = DEFAULTS["decode_workers"][0]

    def __post_init__(self):
        for f in fields(self):
            v = getattr(self, f.name)
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v)
            low, what = {"max_delay_ms": (0, ">= 0"), "timeout_s": (0, "> 0")}.get(f.name, (1, ">= 1"))
            if not ok or v < low or (f.name == "timeout_s" and v == 0):
                raise InvalidArgumentError(f"limit {f.name} must be a number {what}, got {v!r}")


def limits_table() -> list[tuple[str, object, str]]:
    """(name, default, meaning) rows, for help texts and the README."""
    return [(k, v, what) for k, (v, what) in DEFAULTS.items()]
