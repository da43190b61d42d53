"""The backend protocol: prepare once, run many.

A backend owns one loaded model. `run` takes {input_name: array} and returns
{output_name: array}; it never sees files or images.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
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
    threads: int | None = None      # intra-op threads; None lets the backend choose


@dataclass(frozen=True)
class BackendEntry:
    """A backend the registry knows: how to tell whether it can run here, and how to start it."""
    name: str
    summary: str
    install_hint: str
    unavailable_reason: Callable[[], str | None]   # None when it can be tried
    create: Callable[[Path, BackendOptions], Backend]
