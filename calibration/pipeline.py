"""INT8 calibration of an FP32 artifact in one call: what `clipscan calibrate` runs, for Python users too.

`calibrate_artifact(model, images, output, ...)` checks its inputs, preprocesses the calibration
images as the artifact's manifest says (cached), builds the recipe from the options, quantizes
(or runs the accuracy-aware search, whose rounds go into the manifest), and, given validation
images and the PyTorch original, runs the fidelity report of `verify` on the result and records
its gates in the manifest. Error messages name the `clipscan calibrate` options they are about.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from clipscan.runtime.errors import CalibrationError, InputNotFoundError, InvalidArgumentError
from .recipes import DEFAULT_RECIPE, DEFAULT_TARGET, Recipe

if TYPE_CHECKING:
    from .int8 import QuantResult
    from .verify import VerifyReport

log = logging.getLogger("clipscan.calibrate")


@dataclass
class CalibrationOutcome:
    """What `calibrate_artifact` did: the INT8 artifact written and, if run, its fidelity report."""
    result: QuantResult                  # path, manifest and calibration facts of the INT8 artifact
    search_history: list[dict] = field(default_factory=list)   # one entry per search round ([]: no search)
    report: VerifyReport | None = None   # fidelity report on the validation images (None: not run)
    report_dir: Path | None = None       # where report.json and report.html were written

    @property
    def passed(self) -> bool | None:
        """True: every fidelity gate passed; False: one failed; None: no fidelity report was run."""
        return None if self.report is None else self.report.passed


def _as_list(paths) -> list:
    if paths is None:
        return []
    return [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)


def check_inputs(model, images: list, val_images: list, *, batch_size: int, search: bool, arch, weights,
                 heads: list) -> None:
    """Refuse, before any work, what cannot run: a batch size under 1, a missing model or image folder,
    a search without validation images (the PyTorch original comes from the manifest unless given)."""
    if batch_size < 1:
        raise InvalidArgumentError(f"--batch-size must be >= 1, got {batch_size}")
    if not Path(model).is_file():
        raise InputNotFoundError(f"model file {model} does not exist; pass the FP32 .onnx file written by "
                                 "`clipscan export`")
    for folder in images + val_images:
        if not Path(folder).exists():
            raise InputNotFoundError(f"image folder {folder} does not exist; pass an existing folder of images")
    if search and not val_images:
        raise InvalidArgumentError("--search needs --val-images to measure the error on")


def check_disjoint(images: list, val_images: list, *, allow_overlap: bool = False) -> None:
    """Validation images that are also calibration images (same content) would flatter the INT8 model:
    refused, or only a warning with `allow_overlap`."""
    from .calib_data import overlap

    both = overlap(images, val_images)
    if not both:
        return
    msg = (f"{len(both)} validation image(s) are also calibration images (same content), e.g. "
           f"{both[0]}: the fidelity report would flatter the INT8 model")
    if not allow_overlap:
        raise CalibrationError(msg + "; use disjoint folders (or --allow-overlap)")
    log.warning("%s", msg)


def build_recipe(recipe: str | Recipe = DEFAULT_RECIPE, *, method: str | None = None,
                 percentile: float | None = None, smooth_alpha: float | None = None, exclude=(),
                 fuse_attention: bool | None = None) -> Recipe:
    """A named recipe (`int8.RECIPES`) or a `Recipe`, with the options that override it; the result is
    unnamed, so its label spells out what it does (e.g. percentile+matmul+smooth0.5+tailfp32)."""
    from . import int8

    if isinstance(recipe, str):
        if recipe not in int8.RECIPES:
            raise InvalidArgumentError(f"unknown recipe {recipe!r}; known: {list(int8.RECIPES)}")
        recipe = int8.RECIPES[recipe]
    changes = {"name": "", "exclude": list(recipe.exclude) + list(exclude)}
    if percentile is not None:
        changes["percentile"] = percentile
    if method:
        changes["method"] = method
    if smooth_alpha is not None:
        changes["smooth_alpha"] = smooth_alpha
    if fuse_attention is not None:
        changes["fuse_attention"] = fuse_attention
    return dataclasses.replace(recipe, **changes)


def failed_path(output) -> Path:
    """Where an INT8 model that failed its fidelity gates is kept instead of `output`: <stem>.failed-gates.onnx."""
    from clipscan.runtime.failed_gates import FAILED_SUFFIX

    output = Path(output)
    return output.with_name(output.stem + FAILED_SUFFIX + output.suffix)


def fidelity_record(report: VerifyReport, report_dir, val_images: list) -> dict:
    """The manifest's `calibration.fidelity`: the verdict, every gate, the validation set and the report."""
    from .calib_data import content_hash, list_images

    return {
        "passed": report.passed, "failed_gates": [g.name for g in report.failed_gates()],
        "gates": [{"name": g.name, "value": g.value, "op": g.op, "threshold": g.threshold, "passed": g.passed}
                  for g in report.gates],
        "validation_set": {"sha256": content_hash(list_images(val_images)),
                           "n_images": report.metrics.get("n_images")},
        "report": str(report_dir), "verified_sha256": report.sha256,
    }


def own_size_recipe(name: str, own, recipe: Recipe, method: str | None, search: bool) -> Recipe:
    """The recipe for an artifact taking each image at its own size (input.own_size): its calibration set is one
    sample per image at that image's size (calib_data), which ONNX Runtime's MinMax calibrator takes and its
    histogram ones (percentile, entropy) do not. A histogram method that came with the recipe becomes minmax
    (logged); one asked for with --method, and --search (its rounds batch the validation set), are refused."""
    from .calib_data import HISTOGRAM_METHODS

    what = f"{name} takes each image at its own size ({own.describe()}), so its calibration images are fed one at a time"
    if search:
        raise InvalidArgumentError(f"{what}, and --search compares batches of validation images of one size; "
                                   "calibrate it without --search (pick the recipe with --recipe / --method)")
    if recipe.method not in HISTOGRAM_METHODS:
        return recipe
    if method is not None:
        raise InvalidArgumentError(f"{what} at their own sizes, and ONNX Runtime's {method} calibrator needs every "
                                   "sample in one shape; use --method minmax (or dynamic)")
    log.warning("%s at their own sizes: calibrating with minmax instead of the recipe's %s (ONNX Runtime's %s "
                "calibrator needs every sample in one shape)", what, recipe.method, recipe.method)
    return dataclasses.replace(recipe, method="minmax", name="")


def calibrate_artifact(model, images, output, *, target: str = DEFAULT_TARGET, recipe: str | Recipe = DEFAULT_RECIPE,
                       method: str | None = None, percentile: float | None = None,
                       smooth_alpha: float | None = None, exclude=(), fuse_attention: bool | None = None,
                       search: bool = False, val_images=(),
                       batch_size: int = 8, max_images: int | None = None, cache=None,
                       arch: str | None = None, weights=None, heads=(), quick_gelu: bool | None = None,
                       threshold: float | None = None, mean=None, std=None, report_dir=None, launder: bool = True,
                       allow_overlap: bool = False, progress: bool = True, resize_mode: str | None = None,
                       on_written: Callable[[CalibrationOutcome], None] | None = None) -> CalibrationOutcome:
    """Calibrate the FP32 artifact `model` on `images` (folders or files) and write the INT8 QDQ artifact `output`.

    `target`: "cpu" or "tensorrt" (see `int8`). `recipe`, `method`, `percentile`, `smooth_alpha`,
    `exclude`, `fuse_attention` (cpu target only; see `attention_fusion`): see `build_recipe`.
    `search`: accuracy-aware search on `val_images` (see `search.search`).
    `cache`: the calibration tensor cache folder (None: the default one; False: no cache).
    With `val_images`, the PyTorch original (`arch`, `weights`, `heads`, `quick_gelu`, `threshold`,
    `mean`, `std`, `resize_mode`: each one not given is what export recorded in the manifest) is
    compared with the result by `verify` (report in `report_dir`,
    default ./<output stem>-verify; `launder`: its laundered copies), and the gates go into the manifest; a
    model that fails a gate is written to `failed_path(output)` instead of `output` (outcome.result.path).
    `on_written(outcome)` is called once the INT8 file has its final name (after the fidelity report).
    """
    from clipscan.export.deps import require

    require("onnx", "clipscan calibrate")  # before any work: a runtime-only install is told what to install
    if val_images:
        require("torch", "clipscan calibrate --val-images (the fidelity report)")
    images, val_images, heads = _as_list(images), _as_list(val_images), _as_list(heads)
    check_inputs(model, images, val_images, batch_size=batch_size, search=search, arch=arch, weights=weights,
                 heads=heads)
    recipe = build_recipe(recipe, method=method, percentile=percentile, smooth_alpha=smooth_alpha, exclude=exclude,
                          fuse_attention=fuse_attention)
    from .attention_fusion import check_fusion_target

    check_fusion_target(recipe, target)   # before any work
    from clipscan.runtime.artifact import load_artifact

    from . import calib_data

    artifact = load_artifact(model)
    manifest, sha = artifact.manifest, artifact.sha256()
    if manifest.input.own_size is not None:
        recipe = own_size_recipe(artifact.path.name, manifest.input.own_size, recipe, method, search)
    if val_images:
        check_disjoint(images, val_images, allow_overlap=allow_overlap)
        from clipscan.export.recorded import original_from_manifest

        # the PyTorch original: what export recorded in the manifest, unless an argument names it
        o = original_from_manifest(model, manifest, arch=arch, weights=weights, heads=heads, resize_mode=resize_mode,
                                   quick_gelu=quick_gelu, threshold=threshold, mean=mean, std=std)
        arch, weights, heads, resize_mode = o.arch, o.weights, o.heads, o.resize_mode
        quick_gelu, threshold, mean, std = o.quick_gelu, o.threshold, o.mean, o.std
    cset = calib_data.load_calibration_set(manifest, sha, images, max_images=max_images, cache=cache,
                                           progress=progress)
    log.info("calibration set: %d image(s) (%s), sha256 %s%s", len(cset), "cached" if cset.from_cache else "read",
             cset.images_hash[:16], f"; {len(cset.failed)} unreadable" if cset.failed else "")
    # Everything is written to a hidden file next to `output` and renamed to `output` only when complete
    # (quantized, searched, verified, its manifest final): an interrupted run leaves nothing at `output`.
    output = Path(output)
    if output.resolve() == artifact.path.resolve():
        raise InvalidArgumentError(f"-o {output} is the FP32 model itself: the INT8 model must go to another file")
    work = output.with_name(f".{output.name}.calibrating-{os.getpid()}.onnx")
    try:
        outcome = _calibrate_to(work, model, cset, recipe, target, search=search, val_images=val_images,
                                manifest=manifest, sha=sha, cache=cache, batch_size=batch_size, progress=progress)
        if val_images:
            _verify_into(outcome, work, output, val_images, arch=arch, weights=weights, heads=heads,
                         quick_gelu=quick_gelu, threshold=threshold, mean=mean, std=std, report_dir=report_dir,
                         resize_mode=resize_mode,
                         launder=launder, progress=progress)
        else:
            work.replace(output)
    finally:
        work.unlink(missing_ok=True)
    if outcome.report is None:
        outcome.result = dataclasses.replace(outcome.result, path=output)
    if on_written is not None:
        on_written(outcome)
    return outcome


def _calibrate_to(work: Path, model, cset, recipe, target, *, search, val_images, manifest, sha, cache, batch_size,
                  progress) -> CalibrationOutcome:
    from . import calib_data, int8

    if not search:
        return CalibrationOutcome(int8.quantize_artifact(model, work, cset, recipe, target, batch_size=batch_size,
                                                         progress=progress))
    from .search import search as search_recipe

    vset = calib_data.load_calibration_set(manifest, sha, val_images, cache=cache, progress=progress)
    found = search_recipe(model, work, cset, vset.tensors, recipe, target, batch_size=batch_size,
                          progress=progress)  # records its rounds in the manifest
    return CalibrationOutcome(found["result"], found["history"])


def _verify_into(outcome: CalibrationOutcome, work: Path, output: Path, val_images, *, arch, weights, heads,
                 quick_gelu, threshold, mean, std, report_dir, launder, progress: bool = False,
                 resize_mode: str | None = None) -> None:
    """Run the fidelity report on the written-but-hidden `work` file, record it, and move it to `output`."""
    from clipscan.export import load_reference
    from clipscan.export.onnx_writer import rewrite_manifest

    from .fidelity_report import write_report
    from .verify import verify

    reference = load_reference(arch, weights, heads, quick_gelu=quick_gelu, threshold=threshold,
                               resize_mode=resize_mode)
    report_dir = report_dir or f"{output.stem}-verify"
    report = verify(work, reference, val_images, None, launder=launder, mean=mean, std=std, progress=progress)
    # a model that failed a gate never takes the name asked for: it is kept beside it, marked in its name
    # and manifest, and every command that loads it warns (runtime.failed_gates)
    final = output if report.passed else failed_path(output)
    report.model = str(final)
    write_report(report, report_dir)
    result = outcome.result
    calibration = {**result.calibration, "fidelity": fidelity_record(report, report_dir, val_images)}
    manifest = dataclasses.replace(result.manifest, calibration=calibration)
    rewrite_manifest(work, manifest, out=final)
    outcome.result = dataclasses.replace(result, manifest=manifest, calibration=calibration, path=final)
    outcome.report, outcome.report_dir = report, Path(report_dir)
