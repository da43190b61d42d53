"""The backend protocol: prepare once, run many.

A backend owns one loaded model. `run` takes {input_name: array} and returns
{output_name: array}; it never sees files or images.
"""
from __future__ import annotations

import os
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
    # GPU precision and placement policy (None: from the environment, see GPU_POLICY_ENV; off unless asked)
    tf32: bool | None = None        # TF32 matrix products in FP32 layers (TensorRT, the CUDA EP); off keeps FP32 FP32
    allow_cpu_placement: bool | None = None  # let ONNX Runtime put nodes a GPU EP cannot take on the CPU

    def __post_init__(self):
        if not self.cache_dir:
            from .engine_cache import DEFAULT_CACHE_DIR

            object.__setattr__(self, "cache_dir", str(DEFAULT_CACHE_DIR))
        for field_name, env in GPU_POLICY_ENV.items():
            if getattr(self, field_name) is None:
                object.__setattr__(self, field_name, os.environ.get(env, "0").strip().lower() in ("1", "true", "yes"))


def tf32_tag(options: BackendOptions) -> str:
    """What a GPU backend's name (and so every result row) records about TF32, e.g. 'tensorrt[tf32=off]'."""
    return f"[tf32={'on' if options.tf32 else 'off'}]"


# BackendOptions field -> the environment variable that turns it on when the caller leaves it unset
GPU_POLICY_ENV = {"tf32": "CLIPSCAN_TF32", "allow_cpu_placement": "CLIPSCAN_ALLOW_CPU_PLACEMENT"}


@dataclass(frozen=True)
class BackendEntry:
    """A backend the registry knows: how to tell whether it can run here, and how to start it."""
    name: str
    summary: str
    install_hint: str
    unavailable_reason: Callable[[], str | None]   # None when it can be tried
    create: Callable[..., Backend]                   # (model_path, options, manifest) -> Backend
    runtime: str = "onnxruntime"                     # the inference runtime it runs on (bench's `runtime` column)
