"""What gets timed: one `Candidate` per runtime x artifact x backend at a batch size.

A candidate is the PyTorch reference or one artifact on one ONNX Runtime backend; it carries the
call to time, its memory probe, and (ONNX Runtime) the Scanner it runs in. A candidate that fails
to start is reported in the run's errors, never fatal.
"""
from __future__ import annotations

import logging
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from clipscan.runtime import Scanner
from clipscan.runtime.backends import registry

from .memory import memory_probe

log = logging.getLogger("clipscan.bench")


@dataclass
class Candidate:
    runtime: str                      # "pytorch", or the runtime of the artifact's backend (onnxruntime, openvino...)
    backend: str                      # the backend that ran (ONNX Runtime: the Scanner's)
    artifact: str                     # artifact file name, or "pytorch-fp32"
    precision: str
    requested: str | None = None      # the backend asked for (ONNX Runtime candidates)
    model: str | None = None          # artifact path
    run: Callable[[], object] | None = None
    memory: dict = field(default_factory=dict)
    scanner: Scanner | None = None
    errors: list = field(default_factory=list)   # error rows of the last e2e pass


def torch_candidate(run: Callable[[], object]) -> Candidate:
    """The PyTorch eager reference timed through `run`, its memory probed on one call."""
    return Candidate("pytorch", "eager-cpu", "pytorch-fp32", "fp32", run=run, memory=memory_probe(None, run))


def scanner_candidates(stack: ExitStack, models: list[str], backends: list[str], bs: int, manifests: dict,
                       make_run: Callable[[Candidate], Callable[[], object]], errors: list[str], label: str,
                       **scanner_kwargs) -> list[Candidate]:
    """A Candidate for every artifact on every backend at batch `bs`.

    `make_run(candidate)` returns the call to time (it reads `candidate.scanner` when called); the
    Scanner is created inside the memory probe and closed with `stack`. Failures go to `errors`.
    """
    runtimes = {name: entry.runtime for name, entry in registry().items()}
    out = []
    for model in models:
        for backend in backends:
            cand = Candidate(runtimes[backend], backend, Path(model).name, manifests[model].precision,
                             requested=backend, model=model)

            def create(cand=cand):
                cand.scanner = stack.enter_context(Scanner(cand.model, backend=cand.requested, batch_size=bs,
                                                           **scanner_kwargs))
            try:
                cand.run = make_run(cand)
                cand.memory = memory_probe(create, cand.run)
            except Exception as e:
                errors.append(f"{label} {Path(model).name} {backend} batch {bs}: {type(e).__name__}: {e}")
                log.error("%s %s on %s at batch %d failed: %s", label, model, backend, bs, e)
                continue
            cand.backend = cand.scanner.backend_name
            out.append(cand)
    return out
