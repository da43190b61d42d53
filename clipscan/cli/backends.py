"""`clipscan backends`: list the inference backends, the order `--backend auto` tries them in, and
whether each can run here."""
from __future__ import annotations

from . import EXIT_OK


def add_arguments(p) -> None:
    """No arguments of its own (only -v/-q, as every command)."""


def run(args) -> int:
    from clipscan.runtime.backends import AUTO_CHAIN, backend_status
    from clipscan.runtime.backends.ort_gpu import onnxruntime_flavour_problem

    print(f"auto tries, in order: {' -> '.join(AUTO_CHAIN)}")
    for name, summary, reason in backend_status():
        state = "available" if reason is None else f"unavailable: {reason}"
        print(f"  {name:<14} {summary:<40} {state}")
    problem = onnxruntime_flavour_problem()
    if problem:
        print(f"warning: {problem}")
    print("'available' means the package, an NVIDIA GPU with a driver for the build's CUDA, and the libraries the "
          "backend links are present; whether a GPU session really runs on the GPU is checked again when it starts "
          "(a scan logs the backend that ran, and each row records it)")
    return EXIT_OK
