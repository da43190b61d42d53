"""`clipscan serve`: the scanning service (needs clipscan[serve]); see `clipscan.serve`.

Loads the artifact once through the Scanner's backend chain, warms it up, says it is ready (on stderr, with
the URL, the model and the backend that really runs), and serves until SIGTERM or Ctrl-C, which finish the
requests in flight and exit 0.
"""
from __future__ import annotations

import importlib.util
import sys

from . import EXIT_OK
from .args import BACKENDS, add_decode, add_image_formats, add_no_spin, non_negative_int, positive_int


def _limit_type(f):
    """argparse type for one Limits field: the number, checked against the field's own bound (argparse then
    names the flag in its message)."""
    import argparse

    from clipscan.serve.limits import Limits, LimitError

    cast = int if f.type == "int" else float

    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if cast is int else 'a number'}") from None
        try:
            Limits(**{f.name: value})
        except LimitError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
        return value
    parse.__name__ = f.type
    return parse


def add_arguments(p) -> None:
    from clipscan.serve.limits import flag, limit_fields

    p.description = ("Serve a model over HTTP: the Open Inference Protocol (KServe v2, as Triton speaks it) at "
                     "/v2, a plain REST endpoint POST /v1/scan, Prometheus metrics at /metrics and an upload page "
                     "at /; with --grpc-port, the same protocol over gRPC too. Images of concurrent requests are "
                     "merged into inference batches.")
    p.add_argument("model", nargs="?", help="exported .onnx artifact (default: the bundled demo model)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=non_negative_int, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument("--grpc-port", type=non_negative_int, metavar="PORT",
                   help="also serve the Open Inference Protocol over gRPC (inference.GRPCInferenceService, as "
                        "Triton does; tritonclient.grpc drives it) on this port of --host, with the same model, "
                        "batcher, limits, token and metrics (0 picks a free one; default: no gRPC)")
    p.add_argument("--name", help="model name in the /v2 URLs (default: the artifact's manifest name)")
    p.add_argument("--token-file", help="require 'Authorization: Bearer <token>' (token read from this file) on "
                                        "every endpoint but health and the upload page")
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="also accept requests whose Host header names NAME (repeatable; '*' accepts any). By "
                        "default only IP addresses and localhost are accepted, against DNS rebinding")
    p.add_argument("--backend", default="auto", choices=BACKENDS,
                   help="inference backend (default auto: the best that starts; `clipscan backends` lists them)")
    p.add_argument("--no-fallback", action="store_true", help="with auto: stop at the first backend that fails")
    p.add_argument("--threads", type=positive_int, help="inference threads (default: the backend decides)")
    add_decode(p)
    add_image_formats(p)
    g = p.add_argument_group("limits")
    for f in limit_fields():
        g.add_argument(flag(f.name), dest=f.name, type=_limit_type(f), default=f.default, metavar="N",
                       help=f"{f.metadata['meaning']} (default {f.default})")
    add_no_spin(p)
    p.add_argument("--access-log", action="store_true", help="one JSON line per request on stderr")


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a dotted name whose parent package is missing
        return False


def check_extra(grpc: bool = False) -> None:
    """clipscan[serve] installed (with `grpc`: its gRPC part too), or MissingExtraError saying how to install it."""
    from clipscan.runtime.errors import MissingExtraError
    from clipscan.serve import GRPC_MODULES, SERVE_MODULES

    for module in SERVE_MODULES + (GRPC_MODULES if grpc else ()):
        if not _installed(module):
            raise MissingExtraError("clipscan serve", {"multipart": "python-multipart", "grpc": "grpcio",
                                                       "google.protobuf": "protobuf",
                                                       "prometheus_client": "prometheus-client"}.get(module, module),
                                    "serve")


def check_port(host: str, port: int, grpc_port: int | None = None) -> None:
    """Refuse a --port or --grpc-port that something on --host already holds (or the same port for both),
    before the model is loaded and warmed up."""
    from clipscan.runtime.errors import InvalidArgumentError

    from .ports import busy_ports

    if port and grpc_port == port:
        raise InvalidArgumentError(f"--grpc-port {grpc_port} is --port too; HTTP and gRPC need a port each (0 picks "
                                   "a free one)")
    flags = {p: f for f, p in (("--grpc-port", grpc_port), ("--port", port)) if p}
    busy = busy_ports(host, list(flags))
    if busy:
        flag = flags[busy[0]]
        raise InvalidArgumentError(f"{flag} {busy[0]} on {host} is already in use (another server?); stop it, or "
                                   f"pass a free {flag} (0 picks one)")


def run(args) -> int:
    import logging

    check_extra(grpc=args.grpc_port is not None)
    from clipscan.runtime.scanner import Scanner
    from clipscan.serve import Limits, ServiceState, serve
    from clipscan.serve.auth import read_token
    from clipscan.serve.limits import limit_fields

    token = read_token(args.token_file) if args.token_file else None
    limits = Limits(**{f.name: getattr(args, f.name) for f in limit_fields()})
    access = logging.getLogger("clipscan.serve.access")
    access.setLevel(logging.INFO if args.access_log else logging.WARNING)
    if args.access_log:  # bare JSON lines on stderr, without the "clipscan: " prefix of the other log lines
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        access.addHandler(handler)
        access.propagate = False
    check_port(args.host, args.port, args.grpc_port)  # before the model is loaded and warmed up for nothing
    scanner = Scanner(args.model, backend=args.backend, fallback=not args.no_fallback, threads=args.threads,
                      batch_size=args.max_batch, max_pixels=args.max_pixels, decode=args.decode,
                      spin=not args.no_spin, image_formats=args.image_formats)
    try:
        state = ServiceState(scanner, limits, name=args.name, token=token, allow_hosts=args.allow_host)
        state.warm_up()
        serve(state, host=args.host, port=args.port, grpc_port=args.grpc_port)
    finally:
        scanner.close()
    return EXIT_OK
