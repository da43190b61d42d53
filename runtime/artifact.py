"""Locate and open a model artifact: one ONNX file with its manifest inside."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from .errors import ModelError
from .manifest import METADATA_KEY, Manifest
from .onnx_meta import OnnxHeader, read_onnx_header

DEMO_MODEL = Path(__file__).resolve().parent / "models" / "demo.onnx"


@dataclass(frozen=True)
class Artifact:
    path: Path
    manifest: Manifest
    header: OnnxHeader

    @property
    def is_demo(self) -> bool:
        return self.path == DEMO_MODEL

    def sha256(self) -> str:
        return file_sha256(self.path)


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def load_artifact(path: str | Path | None = None) -> Artifact:
    """Open `path` (default: the demo model shipped with clipscan) and parse its manifest."""
    if path is None:
        path = DEMO_MODEL
        if not path.is_file():
            raise ModelError(f"the demo model is missing from this installation ({path}); "
                             "reinstall clipscan or pass --model PATH to an exported .onnx file")
    path = Path(path).expanduser().resolve()
    if not path.exists():
        raise ModelError(f"model file {path} does not exist; pass the .onnx file written by `clipscan export`")
    if path.is_dir():
        onnx_files = sorted(p.name for p in path.glob("*.onnx"))
        hint = f"; it holds {onnx_files}" if onnx_files else ""
        raise ModelError(f"model path {path} is a directory{hint}: pass the .onnx file itself")
    try:
        header = read_onnx_header(path)
    except (ModelError, ValueError, OSError) as e:  # ValueError: also UnicodeDecodeError
        raise ModelError(f"{path} is not a readable ONNX file ({e}); pass the .onnx file written by `clipscan export`") from e
    text = header.metadata.get(METADATA_KEY)
    if text is None:
        present = sorted(header.metadata) or "none"
        raise ModelError(
            f"{path} is an ONNX file but carries no clipscan manifest (metadata key '{METADATA_KEY}'; "
            f"keys present: {present}). Export the model with `clipscan export` so the runtime knows its "
            "preprocessing, heads and thresholds."
        )
    return Artifact(path, Manifest.from_json(text, origin=str(path)), header)
