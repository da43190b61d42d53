"""The backend protocol: prepare once, run many.

A backend owns one loaded model. `run` takes {input_name: array} and returns
{output_name: array}; it never sees files or images.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Backend(Protocol):
    name: str                  # e.g. "onnxruntime-cpu": what actually runs, for results and logs
    input_names: list[str]
    output_names: list[str]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class BackendOptions:
    threads: int | None = None      # CPU intra-op threads; None lets the backend choose
    batch_size: int = 16            # the batch the scanner sends: a GPU engine's optimal profile point
    max_batch: int | None = None    # the largest batch an engine accepts (default: batch_size)
    device_id: int = 0
    cache_dir: str = ""             # engines and timing caches (default: ~/.cache/clipscan or $CLIPSCAN_CACHE_DIR)
    workspace_bytes: int = 2 << 30  # TensorRT builder workspace
    spin: bool = True               # CPU worker threads spin-wait between calls (lowest latency when inference is
                                    # all the process does; off leaves the cores to concurrent decoding)

    def __post_init__(self):
        if not self.cache_dir:
            from .engine_cache import DEFAULT_CACHE_DIR

            object.__setattr__(self, "cache_dir", str(DEFAULT_CACHE_DIR))


@dataclass(frozen=True)
class BackendEntry:
    """A backend the registry knows: how to tell whether it can run here, and how to start it."""
    name: str
    summary: str
    install_hint: str
    unavailable_reason: Callable[[], str | None]   # None when it can be tried
    create: Callable[..., Backend]                   # (model_path, options, manifest) -> Backend
