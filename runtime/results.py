"""Scan results and the writers that stream them (JSONL, CSV), one flushed line per input."""
from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from typing import IO, Any

import numpy as np

COLUMNS = ("path", "p_generated", "verdict", "quality", "error")


@dataclass
class ScanResult:
    path: str
    p_generated: float | None = None
    verdict: str | None = None
    quality: float | None = None
    error: str | None = None
    logit: float | None = None
    backend: str | None = None
    embedding: np.ndarray | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_row(self, *, with_embedding: bool = False) -> dict[str, Any]:
        row: dict[str, Any] = {k: getattr(self, k) for k in COLUMNS}
        if with_embedding:
            row["embedding"] = None if self.embedding is None else [float(v) for v in self.embedding]
        return row


def _finite(v):
    return v if v is None or not isinstance(v, float) or math.isfinite(v) else None


class JsonlWriter:
    def __init__(self, stream: IO[str], *, with_embedding: bool = False):
        self.stream, self.with_embedding = stream, with_embedding

    def write(self, result: ScanResult) -> None:
        row = {k: _finite(v) for k, v in result.to_row(with_embedding=self.with_embedding).items()}
        self.stream.write(json.dumps(row, ensure_ascii=False) + "\n")
        self.stream.flush()


class CsvWriter:
    def __init__(self, stream: IO[str], *, with_embedding: bool = False):
        if with_embedding:
            raise ValueError("CSV output cannot hold embeddings; use --format jsonl with --with-embedding")
        self.stream = stream
        self._writer = csv.DictWriter(stream, fieldnames=list(COLUMNS), lineterminator="\n")
        self._writer.writeheader()
        stream.flush()

    def write(self, result: ScanResult) -> None:
        row = {k: ("" if v is None else v) for k, v in result.to_row().items()}
        self._writer.writerow(row)
        self.stream.flush()


WRITERS = {"jsonl": JsonlWriter, "csv": CsvWriter}
