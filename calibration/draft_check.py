"""Is reduced-size (draft) JPEG decoding faithful for this artifact, on these images?

Draft decoding (`Scanner(decode="draft")`) decodes a JPEG at the smallest DCT scale that still
covers the resize target: 5-6x cheaper on camera-sized files, but the pixels the model sees come
from a different downsampling than exact decoding + bicubic resize. Whether that matters depends on
the model: a trained AI-image detector may react to resampling traces that a random-weight test
model cannot show. So the decision is per artifact and per image domain:

- `check_draft(model, folders)` scans the JPEGs that draft decoding would change (those at least
  twice the resize target) both ways through the runtime and compares the outputs: decision
  agreement, flips, embedding cosine, max probability difference. It passes when agreement >=
  99.5% and cosine mean >= 0.999 (the gates `clipscan bench` reports) on at least `min_images`
  affected images (200 by default: fewer cannot show agreement to 0.5%).
- `compare_draft_rows(manifest, exact_rows, draft_rows)` is the comparison itself (scan rows of the
  same files decoded both ways), shared with the camera section of `clipscan bench`.
- `record_draft(model, result)` writes the result into the artifact's manifest (`decoding.draft`);
  `Scanner(decode="auto")`, the default, then decodes drafts for this artifact, and only if it passed.

Importable and the comparison runnable on the runtime alone (the camera section of `clipscan bench`
runs on a base install); `check_draft` and recording need `onnx` (clipscan[export]).
"""
from __future__ import annotations

import datetime as _dt
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

from clipscan.measure.thresholds import DRAFT_MIN_AGREEMENT, DRAFT_MIN_COSINE_MEAN, DRAFT_MIN_IMAGES
from clipscan.runtime import Scanner
from clipscan.runtime.artifact import load_artifact
from clipscan.runtime.decode import draft_request
from clipscan.runtime.fidelity_metrics import compare_outputs

log = logging.getLogger("clipscan.verify")

DEFAULT_MIN_IMAGES = DRAFT_MIN_IMAGES


def results_to_outputs(manifest, results) -> dict:
    """ScanResult rows (no errors) -> arrays keyed like graph outputs, for compare_outputs."""
    out: dict = {}
    det, q, emb = manifest.decision_head(), manifest.head("quality"), manifest.embedding
    if det is not None and "probability" in det.outputs:
        out[det.outputs["probability"]] = np.array([r.p_generated for r in results], np.float64)
    if q is not None and "score" in q.outputs:
        out[q.outputs["score"]] = np.array([r.quality for r in results], np.float64)
    if emb is not None and all(r.embedding is not None for r in results):
        out[emb["output"]] = np.stack([r.embedding for r in results])
    return out


def compare_draft_rows(manifest, exact_rows: list, draft_rows: list) -> tuple[dict, list[int]]:
    """`compare_outputs` of draft- against exact-decoded scan rows of the same files, on the rows both
    decoded without error; returns (metrics, indices of those rows). Gates are the caller's."""
    good = [i for i, (e, d) in enumerate(zip(exact_rows, draft_rows)) if not e.error and not d.error]
    if not good:
        return {"n": 0}, good
    fid = compare_outputs(manifest, results_to_outputs(manifest, [exact_rows[i] for i in good]),
                          results_to_outputs(manifest, [draft_rows[i] for i in good]))
    return fid, good


def draft_changes(path: str, draft_size: tuple[int, int]) -> bool:
    """Whether draft decoding would decode this file at a reduced size (a JPEG >= 2x the target)."""
    try:
        with Image.open(path) as im:
            if im.format != "JPEG":
                return False
            before = im.size
            im.draft("RGB", draft_size)
            return im.size != before
    except Exception:  # unreadable files are the scan's business, not this check's
        return False


def check_draft(model, folders, *, backend: str = "cpu", batch_size: int = 16,
                min_images: int = DEFAULT_MIN_IMAGES) -> dict:
    """Draft against exact decoding of `model` on the JPEGs in `folders` that draft decoding changes."""
    from .calib_data import content_hash, list_images  # here: calib_data needs onnx, the comparison does not

    manifest = load_artifact(model).manifest
    size = draft_request(manifest.preprocess.resize_mode, manifest.preprocess.resize_size)
    files = list_images(folders if isinstance(folders, (list, tuple)) else [folders])
    result: dict = {"n_images": len(files), "n_affected": 0, "min_images": int(min_images),
                    "gates": {"agreement_min": DRAFT_MIN_AGREEMENT, "cosine_mean_min": DRAFT_MIN_COSINE_MEAN},
                    "measured_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                    "passed": False}
    if size is None:
        result["why"] = (f"the artifact's preprocessing (resize {manifest.preprocess.resize_mode!r}) needs "
                         "full-resolution pixels: draft decoding never applies")
        return result
    affected = [f for f in files if draft_changes(f, size)]
    result["n_affected"] = len(affected)
    if not affected:
        result["why"] = (f"none of the {len(files)} images is a JPEG at least twice the resize target "
                         f"{list(manifest.preprocess.resize_size)}: nothing to compare")
        return result
    rows = {}
    for mode in ("exact", "draft"):
        with Scanner(model, backend=backend, batch_size=batch_size, decode=mode) as sc:
            rows[mode] = list(sc.scan(affected))
            result["backend"] = sc.backend_name
    fid, good = compare_draft_rows(manifest, rows["exact"], rows["draft"])
    result["n_failed"] = len(affected) - len(good)
    if not good:
        result["why"] = "no affected image decoded both ways"
        return result
    result.update({k: v for k, v in fid.items() if k != "n"})
    result["n_compared"] = len(good)
    result["images_sha256"] = content_hash([affected[i] for i in good])
    gates_ok = (result.get("agreement", 1.0) >= DRAFT_MIN_AGREEMENT
                and result.get("cosine_mean", 1.0) >= DRAFT_MIN_COSINE_MEAN)
    enough = len(good) >= min_images
    result["passed"] = bool(gates_ok and enough)
    if not gates_ok:
        result["why"] = "a gate failed: draft decoding changes this model's outputs too much on these images"
    elif not enough:
        result["why"] = (f"gates held on {len(good)} images, but at least {min_images} are needed to show "
                         f"agreement to {1 - DRAFT_MIN_AGREEMENT:.1%}")
    return result


def record_draft(model, result: dict) -> None:
    """Write a `check_draft` result into the artifact's manifest (`decoding.draft`), in place."""
    from clipscan.export.onnx_writer import rewrite_manifest

    path = Path(model)
    manifest = load_artifact(path).manifest
    decoding = dict(manifest.decoding or {})
    decoding["draft"] = dict(result)
    rewrite_manifest(path, replace(manifest, decoding=decoding))


def summary(result: dict) -> str:
    if result.get("n_compared"):
        line = (f"draft JPEG decoding vs exact on {result['n_compared']} images: agreement "
                f"{result.get('agreement', float('nan')):.4f} ({result.get('flips', 0)} flips), cosine mean "
                f"{result.get('cosine_mean', float('nan')):.6f} worst {result.get('cosine_worst', float('nan')):.6f}")
    else:
        line = "draft JPEG decoding: nothing compared"
    verdict = "passed" if result["passed"] else "not passed"
    return f"{line}: {verdict}" + (f" ({result['why']})" if result.get("why") else "")
