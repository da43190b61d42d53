"""Write a Triton model repository for a clipscan artifact.

Layout "python" (default for --kind cpu): one python-backend model `<name>` running clipscan.runtime's
Scanner inside Triton:  <repo>/<name>/config.pbtxt, 1/model.py, 1/<artifact>.onnx, warmup/image.
Layout "ensemble" (default for --kind gpu): `<name>` is an ensemble of `<name>_preprocess` (python, CPU),
`<name>_graph` (the ONNX graph on onnxruntime_onnx with the TensorRT accelerator, or TensorRT plans on
tensorrt_plan) and `<name>_postprocess` (python, CPU). Both expose the tensor contract (runtime.contract).
Each model folder is written under a temporary name and renamed into place when complete.
"""
from __future__ import annotations

import io
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from clipscan.runtime.artifact import load_artifact
from clipscan.runtime.contract import DATATYPES, TensorSpec, output_specs
from clipscan.runtime.errors import InvalidArgumentError
from clipscan.runtime.model_name import check_model_name, model_name_for
from clipscan.runtime.results import model_identity
from clipscan.runtime.v2_wire import encode_bytes_elements
from clipscan.version import __version__

from . import configs, shim
from .ensemble_steps import check_one_row_per_image
from .folder_writer import FolderWriter
from .knobs import resolve_knobs
from .plans import Plan, plans_by_generation

# --kind, --layout and --graph -> what each means (the CLI's choices and help read these)
KINDS = {"cpu": "the model runs on the CPU", "gpu": "the model runs on a GPU"}
LAYOUTS = {
    "python": "the whole scan in one python-backend model (the default for --kind cpu)",
    "ensemble": "python preprocess -> the graph on onnxruntime_onnx/tensorrt_plan -> python postprocess "
                "(the default for --kind gpu)",
}
GRAPHS = {
    "onnx": "ONNX Runtime with the TensorRT accelerator (the default for --kind gpu)",
    "plan": "TensorRT plans from clipscan's engine cache, see --plan",
    "python": "clipscan's backends in a python model (the default, and the only choice, for --kind cpu)",
}


@dataclass
class RepositoryOptions:
    name: str | None = None
    kind: str = "cpu"
    layout: str | None = None            # default: python for cpu, ensemble for gpu
    graph: str | None = None             # the ensemble's graph step: onnx (ORT + TensorRT accelerator, the GPU
                                         # default), plan (TensorRT plans) or python (the runtime's backends in a
                                         # python model: the only one a CPU ensemble can use, and its default)
    plans: list[Plan] = field(default_factory=list)
    precision: str | None = None         # the TensorRT accelerator's precision (default: the artifact's)
    # the performance knobs (knobs.KNOBS): None is the value tuned for the host (knobs.tuned_knobs)
    max_batch: int | None = None
    instances: int | None = None
    queue_delay_us: int | None = None
    workers: int | None = None
    threads: int | None = None
    cores: int | None = None             # the Triton host's CPU cores the defaults are tuned for (default: ours)
    backend: str | None = None           # the python model's Scanner backend (default: cpu on CPU, auto on GPU)
    decode: str = "auto"
    site_dirs: list[str] | None = None   # where model.py finds clipscan (default: this environment's)
    python: str | None = None            # the stub's Python version (default: this interpreter's)
    allow_numpy2: bool = False
    overwrite: bool = False


@dataclass
class Repository:
    root: Path
    models: list[str]
    entry: str                           # the model clients call
    identity: dict
    config_files: list[Path]
    reused: bool = False                 # the repository already held exactly this: nothing was written


def _check(opts: RepositoryOptions) -> None:
    if opts.name is not None:
        check_model_name(opts.name)
    if opts.kind not in KINDS:
        raise InvalidArgumentError(f"--kind {opts.kind!r}: expected one of {list(KINDS)}")
    if opts.layout not in LAYOUTS:
        raise InvalidArgumentError(f"--layout {opts.layout!r}: expected one of {list(LAYOUTS)}")
    if opts.graph not in GRAPHS:
        raise InvalidArgumentError(f"--graph {opts.graph!r}: expected one of {list(GRAPHS)}")
    if opts.layout == "ensemble" and opts.kind != "gpu" and opts.graph != "python":
        raise InvalidArgumentError(f"--graph {opts.graph} runs the ensemble's graph step on the GPU (onnxruntime_onnx "
                                   "with TensorRT, or tensorrt_plan): use --kind gpu, or --graph python (or --layout "
                                   "python) for a CPU deployment")
    if opts.graph == "plan" and not opts.plans:
        raise InvalidArgumentError("--graph plan needs at least one --plan FILE (a TensorRT plan from clipscan's "
                                   "engine cache, with its .json sidecar)")
    plans_by_generation(opts.plans)  # one plan per GPU generation: a second one for the same is refused
    for what in ("max_batch", "instances", "threads", "workers", "cores"):
        if getattr(opts, what) is not None and getattr(opts, what) < 1:
            raise InvalidArgumentError(f"--{what.replace('_', '-')} must be >= 1, got {getattr(opts, what)}")


def _warmup_file(folder: Path, manifest=None) -> None:
    from PIL import Image

    buf = io.BytesIO()
    own = manifest.input.own_size if manifest is not None else None   # an own-size model: an image it takes
    low = own.min_side if own is not None else 0
    Image.new("RGB", (max(64, low), max(48, low)), (120, 160, 200)).save(buf, "JPEG", quality=90)
    (folder / "warmup").mkdir(parents=True, exist_ok=True)
    (folder / "warmup" / configs.WARMUP_IMAGE).write_bytes(encode_bytes_elements([buf.getvalue()]))


def graph_tensors(artifact_path: Path) -> tuple[list[tuple[TensorSpec, list[int]]], list[tuple[TensorSpec, list[int]]]]:
    """The ONNX graph's inputs and outputs as (spec, per-row dims) read from an ONNX Runtime CPU session."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(artifact_path), providers=["CPUExecutionProvider"])

    def spec(t):
        dims = [d if isinstance(d, int) else -1 for d in t.shape[1:]]
        return TensorSpec(t.name, configs.ORT_TYPES[t.type], tuple(dims)), dims

    return [spec(t) for t in session.get_inputs()], [spec(t) for t in session.get_outputs()]


def write_repository(model: str | os.PathLike | None, repo: str | os.PathLike,
                     opts: RepositoryOptions | None = None) -> Repository:
    """Write the repository for `model` (default: the demo model) into `repo` (created if missing)."""
    opts = opts or RepositoryOptions()
    if opts.layout is None:
        opts.layout = "ensemble" if opts.kind == "gpu" else "python"
    if opts.graph is None:
        opts.graph = "onnx" if opts.kind == "gpu" else "python"
    resolve_knobs(opts)
    _check(opts)
    artifact = load_artifact(model)
    manifest = artifact.manifest
    name = opts.name if opts.name is not None else model_name_for(manifest.name)
    root = Path(repo)
    if root.exists() and not root.is_dir():
        raise InvalidArgumentError(f"--repo {root} is a file; name a folder (it is created if missing)")
    root.mkdir(parents=True, exist_ok=True)
    identity = model_identity(artifact)
    params = {"artifact": artifact.path.name, "name": identity["name"], "sha256": identity["sha256"],
              "precision": identity["precision"], "file": identity["file"], "clipscan": __version__,
              "decode": opts.decode, "allow_numpy2": "true" if opts.allow_numpy2 else "false"}
    if "fidelity" in identity:   # an INT8 model whose fidelity gates failed: its config says so too
        params["fidelity"] = identity["fidelity"]
    site_dirs = opts.site_dirs or shim.environment_site_dirs()
    python = opts.python or shim.python_version()
    writer = FolderWriter(root, opts.overwrite, identity["sha256"])
    try:
        if opts.layout == "python":
            models = [_python_layout(writer, artifact, name, opts, params, site_dirs, python)]
        else:
            models = _ensemble_layout(writer, artifact, name, opts, params, site_dirs, python)
        files = writer.commit()
    except BaseException:
        writer.abort()
        raise
    return Repository(root, models, name, identity, files, reused=writer.reused)


def _python_files(writer, folder: Path, artifact, cls: str, site_dirs, python) -> None:
    writer.copy(artifact.path, folder / "1" / artifact.path.name, writer.sha256)
    (folder / "1" / "model.py").write_text(shim.model_py(cls, site_dirs, python), encoding="utf-8")


def _python_layout(writer, artifact, name, opts, params, site_dirs, python) -> str:
    folder = writer.folder(name)
    _python_files(writer, folder, artifact, "ScanModel", site_dirs, python)
    _warmup_file(folder, artifact.manifest)
    backend = opts.backend or ("cpu" if opts.kind == "cpu" else "auto")
    p = {**params, "backend": backend, "batch_size": opts.max_batch, "workers": opts.workers,
         "threads": opts.threads}
    writer.config(folder, configs.python_model(name, output_specs(artifact.manifest), max_batch=opts.max_batch,
                                               queue_delay_us=opts.queue_delay_us, kind=opts.kind,
                                               count=opts.instances, params=p))
    return name


def _ensemble_layout(writer, artifact, name, opts, params, site_dirs, python) -> list[str]:
    manifest = artifact.manifest
    check_one_row_per_image(manifest)
    pre, graph, post = f"{name}_preprocess", f"{name}_graph", f"{name}_postprocess"
    g_inputs, all_outputs = graph_tensors(artifact.path)
    wanted = set(manifest.output_names())
    g_outputs = [(s, d) for s, d in all_outputs if s.name in wanted]
    h, w = manifest.input.size
    pixels = TensorSpec("pixels", DATATYPES[manifest.input.dtype], (3, h, w))
    error = TensorSpec("error", "BYTES", ())
    contract = output_specs(manifest)
    common = {"max_batch": opts.max_batch, "queue_delay_us": opts.queue_delay_us, "kind": "cpu",
              "count": opts.instances}

    folder = writer.folder(pre)
    _python_files(writer, folder, artifact, "PreprocessModel", site_dirs, python)
    _warmup_file(folder, artifact.manifest)
    writer.config(folder, configs.python_model(pre, [pixels, error], params=params, **common))

    folder = writer.folder(graph)
    platform = {"onnx": "onnxruntime_onnx", "plan": "tensorrt_plan", "python": "python"}[opts.graph]
    cc, graph_backend = None, None
    if opts.graph == "onnx":
        writer.copy(artifact.path, folder / "1" / "model.onnx", writer.sha256)
    elif opts.graph == "plan":
        cc = {c: p.file_name for c, p in plans_by_generation(opts.plans).items()}
        for p in opts.plans:
            p.check_for(artifact, opts.max_batch)
            writer.copy(p.path, folder / "1" / p.file_name)
    if opts.graph == "python":
        _python_files(writer, folder, artifact, "GraphModel", site_dirs, python)
        graph_backend = opts.backend or ("cpu" if opts.kind == "cpu" else "auto")
        writer.config(folder, configs.python_model(
            graph, [s for s, _ in g_outputs], inputs=[s for s, _ in g_inputs], warmup=False,
            params={**params, "backend": graph_backend, "batch_size": opts.max_batch, "threads": opts.threads},
            **{**common, "kind": opts.kind}))
    else:
        writer.config(folder, configs.graph_model(graph, g_inputs, g_outputs, platform=platform,
                                                  max_batch=opts.max_batch, queue_delay_us=opts.queue_delay_us,
                                                  count=opts.instances, precision=opts.precision or manifest.precision,
                                                  cc_model_filenames=cc,
                                                  extra_outputs=[o for o in all_outputs if o not in g_outputs]
                                                  if opts.graph == "plan" else None))

    folder = writer.folder(post)
    _python_files(writer, folder, artifact, "PostprocessModel", site_dirs, python)
    graph_dims = {s.name: d for s, d in g_outputs}
    post_inputs = [TensorSpec(s.name, s.datatype, tuple(d) or (1,)) for s, d in g_outputs] + [error]
    writer.config(folder, configs.python_model(
        post, contract, inputs=post_inputs, warmup=False,
        params={**params, "graph_backend": f"triton-{platform}" + (f":{graph_backend}" if graph_backend else ""),
                "graph_dims": json.dumps(graph_dims)}, **common))

    steps = [{"model_name": pre, "input_map": {"image": "image"}, "output_map": {"pixels": "pixels", "error": "prep_error"}},
             {"model_name": graph, "input_map": {manifest.input.name: "pixels"},
              "output_map": {s.name: f"graph_{s.name}" for s, _ in g_outputs}},
             {"model_name": post, "input_map": {**{s.name: f"graph_{s.name}" for s, _ in g_outputs}, "error": "prep_error"},
              "output_map": {s.name: s.name for s in contract}}]
    folder = writer.folder(name)
    shutil.rmtree(folder / "1")
    (folder / "1").mkdir()   # an ensemble's version folder is empty
    writer.config(folder, configs.ensemble(name, contract, steps, max_batch=opts.max_batch,
                                           params={**params, "graph": platform}))
    return [name, pre, graph, post]
