"""What every section of one benchmark run shares: settings, backends, artifacts, images, the report,
and the reference outputs fidelity is measured against. `available_backends` picks the backends."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from clipscan.runtime.backends import backend_status
from clipscan.runtime.errors import InvalidArgumentError

from .config import BenchConfig
from .torch_reference import TorchReference


def available_backends(requested: list[str] | None) -> tuple[list[str], list[dict]]:
    """(backends to run, [{backend, reason}] for those skipped): every available one, or those requested."""
    status = backend_status()
    names = [n for n, _, reason in status if reason is None]
    skipped = [{"backend": n, "reason": reason} for n, _, reason in status if reason is not None]
    if requested:
        unknown = [b for b in requested if b not in {n for n, _, _ in status}]
        if unknown:
            raise InvalidArgumentError(f"unknown backend(s) {unknown}; known: {[n for n, _, _ in status]}")
        skipped = [s for s in skipped if s["backend"] in requested]
        names = [b for b in requested if b in names]
    return names, skipped


@dataclass
class BenchContext:
    cfg: BenchConfig
    backends: list[str]
    manifests: dict                        # artifact path -> Manifest
    paths: list[Path]                      # the benchmark images
    report: dict
    tmp: Path                              # scratch folder of this run
    torch_ref: TorchReference | None = None
    x_all: np.ndarray | None = None        # the decodable images, preprocessed once (N, 3, H, W)
    x_source: str | None = None            # the artifact whose preprocessing made x_all
    inputs: dict = field(default_factory=dict)   # artifact -> the same images as that artifact takes them
    names: list[str] = field(default_factory=list)   # their files
    ref_outputs: dict | None = None        # reference outputs on x_all (PyTorch or the FP32 artifact)

    @property
    def first(self) -> str:
        return self.cfg.models[0]

    @property
    def files(self) -> list[str]:
        return [str(p) for p in self.paths]

    @property
    def errors(self) -> list[str]:
        return self.report["errors"]
