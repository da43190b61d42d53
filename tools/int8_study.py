"""INT8 recipes on an outlier-injected CLIP ViT: fidelity against FP32 and speed, one table.

A research harness, not part of the package. From the root of a clipscan checkout, with
clipscan[export,test] installed:

    python tools/int8_study.py                 # ViT-B/32 (slow: minutes on 2 cores)
    python tools/int8_study.py --small         # width 256, 4 layers (seconds)
    python tools/int8_study.py --help          # recipes, target, image counts, --json

Builds an open_clip ViT with seeded random weights, injects activation outliers (six channels of
every LayerNorm scaled by 40, function-preserving: tests/outlier_vit.py), fits a detector and
a quality head on its embeddings, exports FP32 ONNX, writes calibration and validation image
folders split by source photo, then quantizes with each recipe and measures, against the FP32
ONNX graph on the validation images: embedding cosine mean/worst, decision agreement, quality
SRCC, and ORT CPU median latency FP32 vs INT8 in the same run.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from clipscan.calibration import int8
from clipscan.calibration.calib_data import load_calibration_set
from clipscan.calibration.search import search
from clipscan.measure.machine import describe_cpu
from clipscan.measure.thresholds import INT8_STRICT, meets
from clipscan.runtime.artifact import file_sha256
from clipscan.runtime.fidelity_metrics import compare_outputs

if __package__ in (None, ""):  # run as a script: the checkout's root holds tests/outlier_vit.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.outlier_vit import build_outlier_model, write_image_sets  # noqa: E402

SMALL = {"embed_dim": 128, "quick_gelu": False,
         "vision_cfg": {"image_size": 224, "layers": 4, "width": 256, "head_width": 64, "patch_size": 32},
         "text_cfg": {"context_length": 16, "vocab_size": 500, "width": 32, "heads": 2, "layers": 1}}


def vit_b32_config() -> dict:
    import open_clip

    cfg = dict(open_clip.get_model_config("ViT-B-32"))
    return cfg


def run_recipes(fp32_path, calib_dir, val_dir, recipes: dict, workdir, *, target: str = "cpu",
                search_from: str | None = "smooth", latency_batches: tuple = (1, 8), runs: int = 5,
                progress: bool = True, cache=None) -> list[dict]:
    manifest = int8.manifest_of(fp32_path)
    sha = file_sha256(fp32_path)
    cset = load_calibration_set(manifest, sha, [calib_dir], cache=cache, progress=progress)
    vset = load_calibration_set(manifest, sha, [val_dir], cache=cache, progress=progress)
    name = manifest.input.name
    ref = int8.run_all(fp32_path, vset.tensors, name)
    rows = [{"recipe": "fp32", "cosine_mean": 1.0, "cosine_worst": 1.0, "agreement": 1.0, "srcc": 1.0,
             "passed": True}]
    paths = {"fp32": Path(fp32_path)}
    for label, recipe in recipes.items():
        out = Path(workdir) / f"int8_{label}.onnx"
        t0 = time.perf_counter()
        try:
            int8.quantize_artifact(fp32_path, out, cset, recipe, target, progress=progress)
        except Exception as e:  # one recipe failing must not hide the others
            rows.append({"recipe": label, "error": f"{type(e).__name__}: {e}"})
            continue
        got = int8.run_all(out, vset.tensors, name)
        m = compare_outputs(manifest, ref, got)
        rows.append({"recipe": label, **m, "passed": meets(m, INT8_STRICT), "quantize_s": time.perf_counter() - t0})
        paths[label] = out
    if search_from:
        out = Path(workdir) / "int8_search.onnx"
        res = search(fp32_path, out, cset, vset.tensors, recipes.get(search_from) or int8.RECIPES[search_from],
                     target, progress=False)
        final = res["final"]
        rows.append({"recipe": "search", "start": search_from, "final_recipe": final["recipe"],
                     **{k: final[k] for k in INT8_STRICT if k in final}, "passed": final["passed"],
                     "excluded": final["excluded"], "rounds": len(res["history"])})
        paths["search"] = out
    # every model timed in one interleaved run per batch size, so machine load changes hit FP32 and INT8 alike
    for bs in latency_batches:
        lat = int8.interleaved_latency(paths, np.ascontiguousarray(vset.tensors[:bs]), name, rounds=runs)
        for r in rows:
            if r["recipe"] in lat:
                r[f"latency_ms_b{bs}"] = lat[r["recipe"]] * 1e3
                r[f"speedup_b{bs}"] = lat["fp32"] / lat[r["recipe"]]
    return rows


def table(rows: list[dict]) -> str:
    batches = sorted({int(k[len("speedup_b"):]) for r in rows for k in r if k.startswith("speedup_b")})
    speed_head = "".join(f" {f'ms b{b}':>9} {f'x FP32 b{b}':>11}" for b in batches)
    lines = [f"{'recipe':<34} {'cos mean':>9} {'cos worst':>9} {'agree':>7} {'SRCC':>7}{speed_head} gates"]
    nan = float("nan")
    for r in rows:
        if "error" in r:
            lines.append(f"{r['recipe']:<34} error: {r['error']}")
            continue
        speed = "".join(f" {r.get(f'latency_ms_b{b}', nan):9.1f} {r.get(f'speedup_b{b}', nan):11.2f}" for b in batches)
        lines.append(f"{r['recipe']:<34} {r.get('cosine_mean', nan):9.5f} {r.get('cosine_worst', nan):9.5f} "
                     f"{r.get('agreement', nan):7.4f} {r.get('srcc', nan):7.4f}{speed} {'pass' if r.get('passed') else 'FAIL'}")
    return "\n".join(lines)


def main(argv=None) -> int:
    import logging

    p = argparse.ArgumentParser(prog="python tools/int8_study.py", description=__doc__.split("\n")[0])
    p.add_argument("--small", action="store_true", help="width 256, 4 layers instead of ViT-B/32")
    p.add_argument("--workdir", default="./int8-study")
    p.add_argument("--n-calib", type=int, default=64)
    p.add_argument("--n-val", type=int, default=96)
    p.add_argument("--target", default="cpu", choices=int8.TARGETS)
    p.add_argument("--recipes", default="stock,percentile,matmul,dynamic,smooth")
    p.add_argument("--no-search", action="store_true")
    p.add_argument("--json", help="also write the rows here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    work = Path(args.workdir)
    cfg = SMALL if args.small else vit_b32_config()
    t0 = time.perf_counter()
    built = build_outlier_model(work, cfg)
    print(f"built and exported the outlier-injected model in {time.perf_counter() - t0:.0f} s: {built['onnx']}",
          file=sys.stderr)
    calib, val = write_image_sets(work, args.n_calib, args.n_val)
    recipes = {k: int8.RECIPES[k] for k in args.recipes.split(",") if k}
    rows = run_recipes(built["onnx"], calib, val, recipes, work, target=args.target,
                       search_from=None if args.no_search else "smooth", cache=work / "cache")
    print(f"speeds measured on {describe_cpu()}")
    print(table(rows))
    for r in rows:
        if r.get("recipe") == "search":
            print(f"search from {r['start']}: {r['rounds']} round(s), final {r['final_recipe']}, "
                  f"nodes kept in float: {r['excluded'] or 'none beyond the recipe'}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
