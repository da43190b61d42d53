"""`clipscan serve`: the scanning service (needs clipscan[serve]); see `clipscan.serve`.

Loads the artifact once through the Scanner's backend chain, warms it up, says it is ready (on stderr, with
the URL, the model and the backend that really runs), and serves until SIGTERM or Ctrl-C, which finish the
requests in flight and exit 0.
"""
from __future__ import annotations

import importlib.util

from . import EXIT_OK
from .args import BACKENDS, add_decode, add_no_spin, non_negative, non_negative_int, positive, positive_int


def add_arguments(p) -> None:
    from clipscan.serve.limits import DEFAULTS

    def d(name):
        return DEFAULTS[name][0]

    p.description = ("Serve a model over HTTP: the Open Inference Protocol (KServe v2, as Triton speaks it) at "
                     "/v2, a plain REST endpoint POST /v1/scan, Prometheus metrics at /metrics and an upload page "
                     "at /. Images of concurrent requests are merged into inference batches.")
    p.add_argument("model", nargs="?", help="exported .onnx artifact (default: the bundled demo model)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=non_negative_int, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument("--name", help="model name in the /v2 URLs (default: the artifact's manifest name)")
    p.add_argument("--token-file", help="require 'Authorization: Bearer <token>' (token read from this file) on "
                                        "every endpoint but health")
    p.add_argument("--backend", default="auto", choices=BACKENDS,
                   help="inference backend (default auto: the best that starts; `clipscan backends` lists them)")
    p.add_argument("--no-fallback", action="store_true", help="with auto: stop at the first backend that fails")
    p.add_argument("--threads", type=positive_int, help="inference threads (default: the backend decides)")
    add_decode(p)
    p.add_argument("--max-batch", type=positive_int, default=d("max_batch"),
                   help=f"images merged into one inference batch (default {d('max_batch')}; 1 = no dynamic batching)")
    p.add_argument("--max-delay-ms", type=non_negative, default=d("max_delay_ms"),
                   help=f"how long to wait for more images to fill a batch (default {d('max_delay_ms'):g} ms)")
    p.add_argument("--max-queue", type=positive_int, default=d("max_queue"),
                   help=f"images waiting for inference before 503 (default {d('max_queue')})")
    p.add_argument("--timeout", type=positive, default=d("timeout_s"),
                   help=f"per-request timeout, 504 after it (default {d('timeout_s'):g} s)")
    p.add_argument("--max-body-mb", type=positive, default=d("max_body_bytes") / 2**20,
                   help=f"largest request body (default {d('max_body_bytes') // 2**20} MiB; 413 beyond)")
    p.add_argument("--max-pixels", type=positive_int, default=d("max_pixels"),
                   help=f"largest decoded image, in pixels (default {d('max_pixels')}; decompression bombs)")
    p.add_argument("--max-images", type=positive_int, default=d("max_images"),
                   help=f"images per request (default {d('max_images')})")
    p.add_argument("--max-connections", type=positive_int, default=d("max_connections"),
                   help=f"requests answered at once, 503 beyond (default {d('max_connections')})")
    p.add_argument("--workers", type=positive_int, default=d("decode_workers"),
                   help=f"decoding threads (default {d('decode_workers')})")
    add_no_spin(p)
    p.add_argument("--access-log", action="store_true", help="one JSON line per request on stderr")


def check_extra() -> None:
    """clipscan[serve] installed, or MissingExtraError saying how to install it."""
    from clipscan.runtime.errors import MissingExtraError
    from clipscan.serve import SERVE_MODULES

    for module in SERVE_MODULES:
        if importlib.util.find_spec(module) is None:
            raise MissingExtraError("clipscan serve", {"multipart": "python-multipart",
                                                       "prometheus_client": "prometheus-client"}.get(module, module),
                                    "serve")


def run(args) -> int:
    import logging

    check_extra()
    from clipscan.runtime.scanner import Scanner
    from clipscan.serve import Limits, ServiceState, serve
    from clipscan.serve.auth import read_token

    token = read_token(args.token_file) if args.token_file else None
    limits = Limits(max_body_bytes=int(args.max_body_mb * 2**20), max_pixels=args.max_pixels,
                    max_images=args.max_images, max_batch=args.max_batch, max_delay_ms=args.max_delay_ms,
                    max_queue=args.max_queue, timeout_s=args.timeout, max_connections=args.max_connections,
                    decode_workers=args.workers)
    if args.access_log:
        logging.getLogger("clipscan.serve.access").setLevel(logging.INFO)
    else:
        logging.getLogger("clipscan.serve.access").setLevel(logging.WARNING)
    scanner = Scanner(args.model, backend=args.backend, fallback=not args.no_fallback, threads=args.threads,
                      batch_size=args.max_batch, max_pixels=args.max_pixels, decode=args.decode,
                      spin=not args.no_spin)
    try:
        state = ServiceState(scanner, limits, name=args.name, token=token)
        state.warm_up()
        serve(state, host=args.host, port=args.port)
    finally:
        scanner.close()
    return EXIT_OK
