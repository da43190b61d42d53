"""`clipscan triton`: write a Triton Inference Server model repository for an artifact (clipscan.triton), and
optionally start the tritonserver bundled in nvidia-pytriton on it (--start)."""
from __future__ import annotations

import logging
import signal
import tempfile
import time

from clipscan.runtime.errors import InvalidArgumentError

from . import EXIT_OK, NOTICE
from .args import BACKENDS, add_decode, backend_help, choices_help, non_negative_int, positive_int

log = logging.getLogger("clipscan")


def add_arguments(p) -> None:
    from clipscan.runtime.manifest import PRECISIONS
    from clipscan.triton.repository import GRAPHS, KINDS, LAYOUTS

    p.description = ("Write a Triton model repository (DIR/NAME/config.pbtxt, DIR/NAME/1/...) whose models run "
                     "clipscan.runtime in Triton's python backend and speak clipscan's tensor contract; "
                     "`clipscan scan --server URL` talks to it.")
    p.add_argument("model", nargs="?", metavar="MODEL", help="exported .onnx artifact (default: the demo model)")
    p.add_argument("--repo", required=True, metavar="DIR", help="the model repository folder (created if missing)")
    p.add_argument("--name", help="the model's name in Triton (default: the manifest's name)")
    p.add_argument("--kind", choices=tuple(KINDS), default="cpu",
                   help="where the model runs: " + choices_help(KINDS, "cpu"))
    p.add_argument("--layout", choices=tuple(LAYOUTS), help=choices_help(LAYOUTS))
    p.add_argument("--graph", choices=tuple(GRAPHS), help="the ensemble's graph step: " + choices_help(GRAPHS))
    p.add_argument("--plan", action="append", default=[], metavar="FILE",
                   help="a TensorRT plan built by clipscan's tensorrt backend (its .json sidecar next to it names "
                        "the GPU generation); one per compute capability, repeatable")
    p.add_argument("--precision", choices=tuple(PRECISIONS),
                   help="the artifact precision the TensorRT accelerator is configured for (default: the artifact's; precision lives "
                        "in the graph, so fp16 never switches TensorRT's own FP16 lowering on): " + choices_help(PRECISIONS))
    p.add_argument("--backend", choices=BACKENDS,
                   help="python layout: the runtime backend inside Triton (default cpu for --kind cpu, auto for gpu): "
                        + backend_help(None))
    add_knobs(p)
    add_decode(p)
    p.add_argument("--site-dir", action="append", default=[], metavar="DIR",
                   help="site-packages folder where the Triton host's Python finds clipscan (default: this "
                        "environment's); repeatable")
    p.add_argument("--python", metavar="X.Y", help="the Python version of Triton's python backend stub "
                                                    "(default: this interpreter's)")
    p.add_argument("--allow-numpy2", action="store_true",
                   help="let the models load under numpy 2 (only for a Triton whose python backend is built with "
                        "pybind11 >= 2.12; the stub in Triton 2.51 is not)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace models of the same name in --repo (not needed to run --start on a repository "
                        "written for the same model with the same options: it is reused as it is)")
    p.add_argument("--start", action="store_true",
                   help="then run nvidia-pytriton's bundled tritonserver on --repo until Ctrl-C")
    p.add_argument("--host", default="127.0.0.1", help="--start: the address to listen on (default 127.0.0.1)")
    p.add_argument("--http-port", type=positive_int, default=8000, help="--start: HTTP port (default 8000)")
    p.add_argument("--grpc-port", type=positive_int, help="--start: gRPC port (default: the HTTP port + 1)")
    p.add_argument("--metrics-port", type=positive_int, help="--start: metrics port (default: the HTTP port + 2)")


def add_knobs(p) -> None:
    """One flag per performance knob of clipscan.triton.knobs.KNOBS (its help and default rule from there)."""
    from clipscan.triton.knobs import KNOBS

    group = p.add_argument_group("performance knobs (default: tuned for the Triton host; docs/guides/triton.md)")
    for knob in KNOBS:
        group.add_argument(knob.flag, type=positive_int if knob.minimum >= 1 else non_negative_int,
                           metavar="N", help=f"{knob.what} (default: {knob.default})")


def knob_values(args) -> dict:
    from clipscan.triton.knobs import KNOBS

    return {k.name: getattr(args, k.name) for k in KNOBS}


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def start_ports(args) -> tuple[int, int, int]:
    """HTTP, gRPC and metrics ports for --start, checked free on --host before anything is written."""
    from .ports import busy_ports

    ports = (args.http_port, args.grpc_port or args.http_port + 1, args.metrics_port or args.http_port + 2)
    if len(set(ports)) < 3:
        raise InvalidArgumentError(f"--start needs three different ports, got HTTP {ports[0]}, gRPC {ports[1]} and "
                                   f"metrics {ports[2]}: pass different --http-port/--grpc-port/--metrics-port")
    busy = busy_ports(args.host, ports)
    if busy:
        named = ", ".join(f"{kind} {port}" for kind, port in zip(("HTTP", "gRPC", "metrics"), ports) if port in busy)
        raise InvalidArgumentError(f"--start: {named} on {args.host} already in use (another server?); stop it or "
                                   "pass free ports with --http-port/--grpc-port/--metrics-port")
    return ports


def run(args) -> int:
    from clipscan.triton import Plan, RepositoryOptions, write_repository
    from clipscan.triton.knobs import describe_knobs
    from clipscan.triton.numpy_check import NUMPY2_HINT, numpy_major

    ports = start_ports(args) if args.start else None
    opts = RepositoryOptions(name=args.name, kind=args.kind, layout=args.layout, graph=args.graph,
                             plans=[Plan.from_file(p) for p in args.plan], precision=args.precision,
                             backend=args.backend, decode=args.decode, **knob_values(args),
                             site_dirs=args.site_dir or None, python=args.python, allow_numpy2=args.allow_numpy2,
                             overwrite=args.overwrite)
    repo = write_repository(args.model, args.repo, opts)
    for path in repo.config_files:
        log.info("%s %s", "kept" if repo.reused else "wrote", path)
    log.log(NOTICE, "%s Triton model%s %s in %s for %s (sha256 %s...); clients call model %r",
            "reused (already written for this model with these settings, nothing copied):" if repo.reused else
            "wrote", "s" if len(repo.models) > 1 else "", ", ".join(repo.models), repo.root, repo.identity["name"],
            repo.identity["sha256"][:12], repo.entry)
    log.log(NOTICE, "performance knobs: %s", describe_knobs(opts))
    if numpy_major() >= 2 and not args.allow_numpy2 and not args.site_dir:
        log.warning("this environment has numpy 2, which Triton 2.51's python backend stub cannot exchange arrays "
                    "with: the models will refuse to load; %s", NUMPY2_HINT)
    if not args.start:
        return EXIT_OK
    from clipscan.triton.launch import start_tritonserver

    signal.signal(signal.SIGTERM, _interrupt)  # a service manager's stop: shut tritonserver down too
    with tempfile.TemporaryDirectory(prefix="clipscan-triton-") as work:
        server = start_tritonserver(repo.root, work, host=args.host, ports=ports)
        try:
            server.wait_ready(timeout=300)
            log.log(NOTICE, "tritonserver ready at %s (gRPC %s:%d, metrics %s:%d); scan with: clipscan scan "
                    "--server %s --server-model %s PATH; Ctrl-C stops it", server.url, args.host, ports[1],
                    args.host, ports[2], server.url, repo.entry)
            while server.process.poll() is None:
                time.sleep(0.5)
            log.error("tritonserver exited with code %s; its log ends with:\n%s", server.process.returncode,
                      server.log_tail())
            return 2
        finally:
            server.stop()
