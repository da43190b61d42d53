"""The service's limits, as one dataclass: each field carries its flag, default and meaning, and the CLI's
flags (`clipscan serve --help`), `Limits(...)` from the parsed flags, `/v2/models/{name}/config` and the
docs' limits table (`limits_table()`) are all built from it."""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

from clipscan.runtime.decode import DEFAULT_MAX_PIXELS
from clipscan.runtime.errors import InvalidArgumentError


class LimitError(InvalidArgumentError):
    """A limit set to a value the service cannot run with."""


def _limit(default, meaning: str, low: float = 1, low_open: bool = False, *, grpc: str):
    """A Limits field: its flag is `--` + the field name with dashes; `low` is the smallest value allowed
    (`low_open`: the value must be greater than `low`); `grpc`: how it applies to the gRPC endpoint."""
    return field(default=default, metadata={"meaning": meaning, "low": low, "low_open": low_open, "grpc": grpc})


@dataclass
class Limits:
    max_body_bytes: int = _limit(
        64 * 2**20, "request body in bytes: 413 from Content-Length before the body is read, and while reading a "
                    "body sent without one",
        grpc="the largest request message (RESOURCE_EXHAUSTED from gRPC itself, before the message is read)")
    # two largest bodies at once: with their copies while parsing and the decoded images, the service stays
    # well under 1 GB of memory however many clients send large bodies together
    max_buffered_bytes: int = _limit(
        128 * 2**20, "request-body bytes held by all requests at once (503 with Retry-After when a new body would "
                     "pass it)",
        grpc="counted together with HTTP's bodies, from each message's size once received (UNAVAILABLE when it "
             "would pass the budget)")
    body_timeout_s: float = _limit(
        30.0, "seconds a client has to send a whole request body (408 after it)", low=0, low_open=True,
        grpc="not applied: gRPC hands a message over only once it is whole; the client's deadline bounds the call")
    max_json_bytes: int = _limit(
        8 * 2**20, "JSON part of an inference request in bytes (413 before it is parsed); send more through the "
                   "binary tensor extension",
        grpc="not applied: gRPC messages have no JSON part")
    max_pixels: int = _limit(
        min(DEFAULT_MAX_PIXELS, 64_000_000), "pixels of one image, from its header before decoding (a 'too_large' "
                                             "error)",
        grpc="the same: that image's own 'too_large' error")
    max_request_pixels: int = _limit(
        1_024_000_000, "pixels of all images of one request, from their headers before any is decoded (413 beyond)",
        grpc="the same (RESOURCE_EXHAUSTED beyond)")
    max_images: int = _limit(64, "images per request (413 beyond)", grpc="the same (RESOURCE_EXHAUSTED beyond)")
    max_batch: int = _limit(32, "images merged into one inference batch (1: no dynamic batching)",
                            grpc="the same batcher: gRPC and HTTP images share its batches")
    max_delay_ms: float = _limit(5.0, "how long the batcher waits for more images to fill a batch, ms", low=0,
                                 grpc="the same batcher")
    max_queue: int = _limit(256, "images waiting for inference (503 with Retry-After when full)",
                            grpc="the same queue (UNAVAILABLE when full)")
    timeout_s: float = _limit(
        30.0, "per-request timeout in seconds (504, its queue slots freed)", low=0, low_open=True,
        grpc="the same (DEADLINE_EXCEEDED); a client's shorter deadline cancels the call and frees its queue slots")
    max_in_flight: int = _limit(
        128, "requests answered at once (503 with Retry-After beyond; health probes are always answered)",
        grpc="counted together with HTTP's requests (UNAVAILABLE beyond; ServerLive, ServerReady and ModelReady "
             "are always answered)")
    max_open_connections: int = _limit(
        1000, "open TCP connections; past it the longest-idle ones are closed (a new one is refused only when none "
              "is idle)",
        grpc="gRPC's own cap on the open connections of its port (grpc.max_allowed_incoming_connections)")
    header_timeout_s: float = _limit(
        10.0, "seconds a connection has to send a complete request head (closed after it)", low=0, low_open=True,
        grpc="seconds a new connection has for its HTTP/2 handshake (grpc.server_handshake_timeout_ms)")
    keep_alive_s: float = _limit(15.0, "seconds an idle keep-alive connection stays open", low=0, low_open=True,
                                 grpc="seconds an idle connection stays open (grpc.max_connection_idle_ms)")
    decode_workers: int = _limit(
        2, "image-decoding threads (one request never holds them all when there are two or more)",
        grpc="the same decode threads, shared fairly between HTTP and gRPC requests")

    def __post_init__(self):
        for f in fields(self):
            v = getattr(self, f.name)
            low, low_open = f.metadata["low"], f.metadata["low_open"]
            ok = (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                  and (v > low if low_open else v >= low) and (f.type != "int" or float(v).is_integer()))
            if not ok:
                kind = "an integer" if f.type == "int" else "a number"
                raise LimitError(f"limit {f.name} ({flag(f.name)}) must be {kind} {'>' if low_open else '>='} "
                                 f"{low:g}, got {v!r}")
        if self.max_buffered_bytes < self.max_body_bytes:
            raise LimitError(f"--max-buffered-bytes ({self.max_buffered_bytes}) must be at least --max-body-bytes "
                             f"({self.max_body_bytes}), or no body of the largest size could ever be read")


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def limit_fields():
    """The fields of Limits, in order, each with .name, .type ('int' or 'float'), .default and .metadata."""
    return fields(Limits)


def limits_table() -> list[tuple[str, object, str]]:
    """(flag, default, meaning) rows: the docs' limits table and the CLI's help are built from them."""
    return [(flag(f.name), f.default, f.metadata["meaning"]) for f in fields(Limits)]


def grpc_limits_table() -> list[tuple[str, str]]:
    """(flag, how it applies to the gRPC endpoint) rows: the docs' gRPC limits table."""
    return [(flag(f.name), f.metadata["grpc"]) for f in fields(Limits)]
