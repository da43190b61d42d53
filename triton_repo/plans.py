"""TensorRT plans for the ensemble's `tensorrt_plan` step: files from clipscan's engine cache.

clipscan's TensorRT backend caches each plan it builds as `<name>-<key>.plan` with a `.json` sidecar that
records what the plan is valid for (runtime.backends.engine_cache): the ONNX file's sha256, the
precision, the batch profile, the GPU's compute capability, the TensorRT and CUDA versions. A plan
runs only on its GPU generation, so the repository keeps one per compute capability and names them
in `cc_model_filenames`. Build one per GPU generation with `clipscan scan --backend tensorrt` (or
`clipscan bench`) on a machine with that GPU, then pass the cached files with --plan.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from clipscan.runtime.errors import InvalidArgumentError


@dataclass(frozen=True)
class Plan:
    path: Path
    compute_capability: str     # "8.9"
    onnx_sha256: str
    precision: str
    max_batch: int
    tensorrt_version: str

    @property
    def file_name(self) -> str:
        return f"model_sm{self.compute_capability.replace('.', '')}.plan"

    @classmethod
    def from_file(cls, path: str | Path) -> Plan:
        path = Path(path)
        sidecar = path.with_suffix(".json")
        if not path.is_file():
            raise InvalidArgumentError(f"--plan {path} does not exist; pass a .plan file from clipscan's engine cache "
                                       "(~/.cache/clipscan/tensorrt/ or $CLIPSCAN_CACHE_DIR/tensorrt/)")
        try:
            key = json.loads(sidecar.read_text(encoding="utf-8"))["key"]
            cc = str(key["compute_capability"])
            if not re.fullmatch(r"\d+\.\d+", cc):
                raise InvalidArgumentError(f"compute capability {cc!r}")
            return cls(path, cc, key["onnx_sha256"], key["precision"], int(key["profile"]["max"]),
                       key["tensorrt_version"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise InvalidArgumentError(f"--plan {path}: its sidecar {sidecar.name} (written by clipscan's engine "
                                       f"cache next to each plan) cannot be read ({e}); pass a plan that clipscan "
                                       "built, with its .json") from None

    def check_for(self, artifact, max_batch: int) -> None:
        if self.onnx_sha256 != artifact.sha256():
            raise InvalidArgumentError(f"--plan {self.path} was built from another ONNX file (sha256 "
                                       f"{self.onnx_sha256[:12]}...) than {artifact.path.name} "
                                       f"({artifact.sha256()[:12]}...); build it from this artifact")
        if self.max_batch < max_batch:
            raise InvalidArgumentError(f"--plan {self.path} accepts batches up to {self.max_batch}, the repository's "
                                       f"--max-batch is {max_batch}; lower --max-batch or build the plan with "
                                       f"--max-batch {max_batch}")


def plans_by_generation(plans: list[Plan]) -> dict[str, Plan]:
    """Plans by compute capability. They must all come from one TensorRT version: a plan loads only in the
    TensorRT build that made it (clipscan builds no VERSION_COMPATIBLE plans; the sidecar records
    version_compatible: false), and one Triton runs one TensorRT."""
    versions = sorted({p.tensorrt_version for p in plans})
    if len(versions) > 1:
        raise InvalidArgumentError(f"the --plan files come from TensorRT {' and '.join(versions)}; a plan loads only "
                                   "in the TensorRT version that built it and one Triton runs one TensorRT: build "
                                   "every plan with the TensorRT of the Triton release that will serve them")
    out: dict[str, Plan] = {}
    for p in plans:
        if p.compute_capability in out:
            raise InvalidArgumentError(f"two --plan files for compute capability {p.compute_capability}: "
                                       f"{out[p.compute_capability].path} and {p.path}; keep one per GPU generation")
        out[p.compute_capability] = p
    return out
