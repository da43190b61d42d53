"""Locate and open a model artifact: one ONNX file with its manifest inside."""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

from .errors import ModelError
from .failed_gates import warn_if_failed
from .manifest import METADATA_KEY, Manifest
from .onnx_meta import OnnxHeader, external_data_locations, read_onnx_header

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


def checkpoint_kind(path: Path) -> str | None:
    """What training checkpoint `path` is, from its first bytes ("a PyTorch checkpoint"...), or None: what a
    user who passes their weights where a model goes needs to hear (an ONNX file starts otherwise)."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError:
        return None
    if head.startswith(b"PK\x03\x04"):
        return "a PyTorch checkpoint (a zip archive, as torch.save writes)"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "a pickle file (an older PyTorch checkpoint)"
    if len(head) >= 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < 100_000_000:
        return "a safetensors checkpoint"
    return None


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
    checkpoint = checkpoint_kind(path)
    if checkpoint:
        raise ModelError(f"{path} is {checkpoint}, not an exported model: export it first (clipscan export --arch "
                         f"ARCH --weights {path.name} --heads HEADS -o model.onnx), then pass the .onnx file")
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
    check_external_data(path)
    artifact = Artifact(path, Manifest.from_json(text, origin=str(path)), header)
    warn_if_failed(path, artifact.manifest)   # a model whose fidelity gates failed is never loaded silently
    return artifact


def _location_problem(folder: Path, location: str) -> str | None:
    """Why an external-data `location` is not a file inside `folder`, or None when it is."""
    if not location:
        return "an empty location"
    if any(ord(c) < 32 or ord(c) == 127 for c in location):
        return "a location with control characters"
    if PurePosixPath(location).is_absolute() or PureWindowsPath(location).anchor:
        return "an absolute path"
    if ".." in re.split(r"[\\/]", location):
        return "a path that climbs out of the model's folder"
    target = (folder / location).resolve()
    if not target.is_relative_to(folder):
        return f"a link that leads out of the model's folder (to {target})"
    if not target.is_file():
        return "a file that does not exist"
    return None


def check_external_data(path: Path) -> None:
    """Refuse a model whose tensors keep data anywhere but in files of its own folder (`path` resolved),
    before any ONNX reader opens it: a crafted location could otherwise read any file the user can."""
    try:
        entries = external_data_locations(path)
    except (ModelError, ValueError, UnicodeDecodeError, OSError) as e:  # ModelError: not a protobuf file
        raise ModelError(f"{path} is not a readable ONNX file ({e}); pass the .onnx file written by "
                         "`clipscan export`") from e
    folder = path.parent
    for name, location in entries:
        problem = _location_problem(folder, location)
        if problem:
            raise ModelError(f"{path}: tensor {name!r} keeps its data in {location!r}, {problem}; external data must "
                             f"be a file in the model's own folder ({folder}): re-export the model or put its data "
                             "file next to it")
