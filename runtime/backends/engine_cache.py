"""TensorRT engine cache: plain serialized plans plus a JSON sidecar, keyed by everything that makes a plan valid.

A plan runs only on the TensorRT build and GPU that made it, for the optimisation
profile it was tuned for. The key therefore holds the ONNX file's sha256, the
precision recipe, the batch profile, the TensorRT version, the GPU name and compute
capability, and the CUDA version. A cached plan whose sidecar disagrees with the
key is rebuilt, never loaded. Files stay standard: `<name>-<key>.plan` is exactly
what TensorRT serialised (other tools can load it), `<name>-<key>.json` says what
it is. Pure Python, so it is tested on machines without a GPU.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import InvalidArgumentError

DEFAULT_CACHE_DIR = Path(os.environ.get("CLIPSCAN_CACHE_DIR") or Path.home() / ".cache" / "clipscan")


@dataclass(frozen=True)
class BatchProfile:
    """TensorRT optimisation profile for the batch axis."""
    min: int
    opt: int
    max: int

    def __post_init__(self):
        if not 1 <= self.min <= self.opt <= self.max:
            raise InvalidArgumentError("a TensorRT batch profile needs 1 <= min <= opt <= max, got "
                                       f"{self.min}/{self.opt}/{self.max}; pass a batch size >= 1")

    @classmethod
    def for_batch_size(cls, batch_size: int, max_batch: int | None = None) -> "BatchProfile":
        """min 1 (the last, partial batch), opt = the batch size used, max = max_batch (default: batch size)."""
        top = max(batch_size, max_batch or batch_size)
        return cls(1, batch_size, top)

    def shapes(self, chw: tuple[int, int, int]) -> dict[str, tuple[int, ...]]:
        return {k: (getattr(self, k), *chw) for k in ("min", "opt", "max")}


@dataclass(frozen=True)
class EngineKey:
    onnx_sha256: str
    precision: str
    profile: BatchProfile
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    cuda_version: str                 # the CUDA TensorRT itself was built for (not cuda-python's)
    tf32: str = "off"                 # TF32 in FP32 layers ("on" only when asked): it changes the plan's numbers
    builder: str = "clipscan-trt/2"   # bump when the build recipe (flags, workspace policy) changes

    def to_dict(self) -> dict:
        d = asdict(self)
        d["profile"] = asdict(self.profile)
        return d

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:20]


class EngineCache:
    def __init__(self, folder: str | os.PathLike = DEFAULT_CACHE_DIR):
        self.folder = Path(folder)

    def paths(self, name: str, key: EngineKey) -> tuple[Path, Path]:
        stem = f"{name}-{key.digest()}"
        return self.folder / f"{stem}.plan", self.folder / f"{stem}.json"

    def timing_cache_path(self, key: EngineKey) -> Path:
        """One timing cache per TensorRT version and GPU: it speeds up builds of any model there."""
        tag = hashlib.sha256(f"{key.tensorrt_version}|{key.gpu_name}|{key.compute_capability}".encode()).hexdigest()[:12]
        return self.folder / f"timing-{tag}.cache"

    def load(self, name: str, key: EngineKey) -> bytes | None:
        """The cached plan for exactly this key, or None (missing, or its sidecar disagrees)."""
        plan, sidecar = self.paths(name, key)
        try:
            recorded = json.loads(sidecar.read_text())
            data = plan.read_bytes()
        except (OSError, ValueError):
            return None
        if recorded.get("key") != key.to_dict() or recorded.get("bytes") != len(data):
            return None
        if recorded.get("sha256") != hashlib.sha256(data).hexdigest():
            return None
        return data

    def store(self, name: str, key: EngineKey, plan_bytes: bytes) -> Path:
        """Write the plan, then its sidecar, each whole or not at all (concurrent builders of one key each
        write their own temporary file; the last rename wins, and both plans are valid for the key)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        plan, sidecar = self.paths(name, key)
        write_atomic(plan, plan_bytes)
        # version_compatible: plans are built for exactly the TensorRT that made them (no VERSION_COMPATIBLE
        # flag), so a consumer (Triton's tensorrt backend) must run that same TensorRT version
        record = {"key": key.to_dict(), "bytes": len(plan_bytes), "sha256": hashlib.sha256(plan_bytes).hexdigest(),
                  "version_compatible": False}
        write_atomic(sidecar, json.dumps(record, indent=1).encode())
        return plan


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a uniquely named temporary file in the same folder, renamed over `path`
    only when complete: readers see the old file or the new one, and concurrent writers never share a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
