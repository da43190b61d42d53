"""Scores of one model on a labelled set: every head's answer for every file, or why the file failed.

`scan_set` runs the runtime's Scanner (any backend, any precision: it only sees the artifact); another
source of scores (the PyTorch original, in clipscan.calibration) fills the same `Scored` record, so every
metric is computed the same way for every model compared.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from clipscan.runtime import Scanner
from clipscan.runtime.progress import Progress

from .labels import LabelledSet


@dataclass
class Scored:
    name: str                   # how the model is called in tables ("fp32.onnx", "pytorch")
    manifest: object            # the artifact's manifest (head names, tasks, labels, thresholds, decision rule)
    identity: dict              # what was run: file, sha256, precision, backend
    heads: list                 # per file: {head name: answer} (runtime.postprocess.head_answers), None if it failed
    rows: list                  # per file: the row's decision {"p_generated", "logit", "verdict"}, or None
    errors: list = field(default_factory=list)   # per file: the error message, None when it was scanned

    @property
    def failed(self) -> list[tuple[int, str]]:
        return [(i, e) for i, e in enumerate(self.errors) if e is not None]


def scan_set(model: str | None, labelled: LabelledSet, *, backend: str = "auto", batch_size: int = 16,
             threads: int | None = None, decode: str = "auto", progress: bool = False,
             name: str | None = None) -> Scored:
    """Scan every file of `labelled` with the artifact at `model`, keeping each file's place in the list."""
    with Scanner(model, backend=backend, batch_size=batch_size, threads=threads, decode=decode) as scanner:
        artifact = scanner.artifact
        identity = {"file": str(artifact.path), "name": artifact.manifest.name, "sha256": artifact.sha256(),
                    "precision": artifact.manifest.precision, "backend": scanner.backend_name,
                    "decode": scanner.decode}
        scored = Scored(name or artifact.path.name, artifact.manifest, identity, [], [], [])
        paths = labelled.paths
        with Progress("evaluate", len(paths), unit="img", note=scored.name, enabled=progress) as bar:
            for r in scanner.scan_many((p, p) for p in paths):
                scored.heads.append(r.heads if r.ok else None)
                scored.rows.append({"p_generated": r.p_generated, "logit": r.logit, "verdict": r.verdict}
                                   if r.ok else None)
                scored.errors.append(r.error)
                bar.update(errors=0 if r.ok else 1)
    if len(scored.errors) != len(paths):  # the Scanner answers every source once, in order
        raise RuntimeError(f"the scan returned {len(scored.errors)} results for {len(paths)} files")
    return scored
