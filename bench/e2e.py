"""End-to-end mode: whole passes over the image folder.

ONNX Runtime: one `Scanner.scan` pass (file read, decode in the Scanner's thread pool,
preprocessing, inference, postprocessing into ScanResult rows). PyTorch: the plain pipeline
(`torch_reference.plain_pipeline`). Candidates are timed in interleaved rounds, as in model mode.
"""
from __future__ import annotations

from contextlib import ExitStack

from .candidates import Candidate, scanner_candidates, torch_candidate
from .context import BenchContext
from .interleave import time_interleaved
from .results import result_row
from .torch_reference import plain_pipeline


def e2e_rows(ctx: BenchContext, bs: int, transform) -> list[dict]:
    """One row per candidate at batch `bs`; `transform` (or None: no PyTorch row) feeds the plain pipeline."""
    cfg, files = ctx.cfg, ctx.files
    with ExitStack() as stack:
        cands = []
        if ctx.torch_ref is not None and transform is not None:
            manifest = ctx.manifests[ctx.first]
            cands.append(torch_candidate(lambda: plain_pipeline(ctx.torch_ref, transform, manifest, files, bs)))

        def scan_run(cand: Candidate):
            def one_pass():
                cand.errors[:] = [r.error for r in cand.scanner.scan(files) if r.error]
            return one_pass

        cands += scanner_candidates(stack, cfg.models, ctx.backends, bs, ctx.manifests, scan_run, ctx.errors, "e2e",
                                    decode=cfg.decode, workers=cfg.workers, spin=cfg.spin)
        rows = []
        for c, m in time_interleaved(cands, cfg, cfg.e2e_passes):
            row = result_row("e2e", c, bs, m, images=len(files),
                             decode="exact (plain PIL)" if c.runtime == "pytorch" else cfg.decode)
            if c.runtime != "pytorch":
                row["error_rows"] = len(c.errors)
            rows.append(row)
        return rows
