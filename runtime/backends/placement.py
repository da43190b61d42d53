"""No silent partial CPU placement in a GPU session.

ONNX Runtime hands nodes a GPU provider cannot take to its CPU provider without an error. Two
checks, one per provider, because the two providers place differently:

- TensorRT EP: TensorRT takes the whole graph, shape computations included, so the session is
  created with `session.disable_cpu_ep_fallback` = 1: any node left for the CPU is an error.
- CUDA EP: ONNX Runtime deliberately keeps small shape computations (Shape, and the int64 Concat,
  Gather ... feeding a Reshape) on the CPU, so that flag would refuse every exported graph with a
  dynamic batch. Instead one profiled warm-up run lists where each node ran, and a node on the CPU
  that produces floating-point data (real compute: Gemm, LayerNormalization, Softmax ...) is an
  error; integer and boolean shape computations are allowed.

`allow_cpu_placement` (CLIPSCAN_ALLOW_CPU_PLACEMENT=1) turns both into a logged warning.
"""
from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import numpy as np

from ..errors import BackendError

log = logging.getLogger("clipscan.backends")

PLACEMENT_KEY = "session.disable_cpu_ep_fallback"
# output element types of shape computations, which ONNX Runtime keeps on the CPU on purpose
SHAPE_TYPES = frozenset({"int64", "int32", "bool"})
COPY_NODES = frozenset({"MemcpyToHost", "MemcpyFromHost"})
ORT_NUMPY = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(uint8)": np.uint8,
             "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(double)": np.float64}


def forbid_cpu_fallback(so, provider: str, allow: bool) -> None:
    """For the TensorRT EP: every node on TensorRT, or no session."""
    if allow:
        log.warning("%s: nodes it cannot take may run on the CPU (allow_cpu_placement is on)", provider)
        return
    so.add_session_config_entry(PLACEMENT_KEY, "1")


def start_profile(so) -> Path:
    """Profile the session's first run (the warm-up that `check_compute_placement` makes)."""
    folder = Path(tempfile.mkdtemp(prefix="clipscan-placement-"))
    so.enable_profiling = True
    so.profile_file_prefix = str(folder / "run")
    return folder


def cpu_compute_nodes(events: list[dict], provider: str) -> list[str]:
    """'OpType (node name)' of each node in an ONNX Runtime profile that ran off `provider` and produced
    floating-point data (shape computations and host/device copies are not counted)."""
    out = []
    for e in events:
        name, args = e.get("name", ""), e.get("args") or {}
        if e.get("cat") != "Node" or not name.endswith("_kernel_time") or args.get("provider") == provider:
            continue
        if args.get("op_name") in COPY_NODES:
            continue
        types = {t for o in args.get("output_type_shape") or [] for t in o}
        if types and types <= SHAPE_TYPES:
            continue
        out.append(f"{args.get('op_name')} ({name[:-len('_kernel_time')]})")
    return out


def warmup_feeds(session) -> dict:
    """Zeros for every graph input at batch 1 (a dynamic batch set to 1; a dynamic height or width, an artifact
    taking images at their own size, to 224, which every tower takes)."""
    feeds = {}
    for i in session.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else (1 if k == 0 else 224) for k, d in enumerate(i.shape)]
        feeds[i.name] = np.zeros(shape, dtype=ORT_NUMPY.get(i.type, np.float32))
    return feeds


def check_compute_placement(session, provider: str, allow: bool) -> None:
    """Run once, read where each node ran, stop profiling; refuse floating-point work on the CPU. (The
    caller removes the profile's folder.)"""
    session.run(None, warmup_feeds(session))
    path = session.end_profiling()
    events = json.loads(Path(path).read_text()) if path else []
    nodes = cpu_compute_nodes(events, provider)
    if not nodes:
        return
    listed = ", ".join(nodes[:8]) + (f" and {len(nodes) - 8} more" if len(nodes) > 8 else "")
    if allow:
        log.warning("%s: %d node(s) run on the CPU (allow_cpu_placement is on): %s", provider, len(nodes), listed)
        return
    raise BackendError(f"{provider} left {len(nodes)} compute node(s) of this graph to the CPU ({listed}); a GPU "
                       "session runs wholly on the GPU or not at all: use --backend cpu, or set "
                       "CLIPSCAN_ALLOW_CPU_PLACEMENT=1 to accept the split")
