"""Model mode: inference alone, on a preprocessed batch already in memory.

The timed call is one backend `predict` (ONNX Runtime `session.run`) or one PyTorch eager forward
under `inference_mode()` on the benchmark images tiled to the batch size; nothing else.
"""
from __future__ import annotations

from contextlib import ExitStack

import numpy as np

from .candidates import Candidate, scanner_candidates, torch_candidate
from .ceilings import CEILING_BACKEND, ceiling_candidates, ceilings_from_rounds
from .context import BenchContext
from .interleave import time_interleaved
from .results import result_row


def tile(x: np.ndarray, n: int) -> np.ndarray:
    """The rows of `x` repeated to exactly `n` rows (contiguous)."""
    reps = -(-n // len(x))
    return np.ascontiguousarray(np.concatenate([x] * reps)[:n])


def model_rows(ctx: BenchContext, bs: int) -> list[dict]:
    """One row per candidate at batch `bs`, every candidate timed in the same interleaved rounds."""
    x_all = ctx.x_all
    with ExitStack() as stack:
        cands = []
        if ctx.torch_ref is not None:
            xt = tile(ctx.torch_ref.input_from_runtime(ctx.manifests[ctx.x_source or ctx.first], x_all), bs)
            cands.append(torch_candidate(lambda: ctx.torch_ref.run(xt)))

        def predict_run(cand: Candidate):
            xb = tile(ctx.inputs.get(cand.model, x_all), bs)
            return lambda: cand.scanner.predict(xb)

        cands += scanner_candidates(stack, ctx.cfg.models, ctx.backends, bs, ctx.manifests, predict_run,
                                    ctx.errors, "model")
        if ctx.cfg.profile and bs == max(ctx.cfg.batch_sizes):
            cands += ceiling_candidates(ctx.backends)   # the --profile shares: ceiling and artifacts in the same rounds
        measured = list(time_interleaved(cands, ctx.cfg, ctx.cfg.min_iters))
    ceilings = [(c, m) for c, m in measured if c.backend == CEILING_BACKEND]
    if ceilings:
        ctx.report["gemm_ceilings"] = ceilings_from_rounds(ceilings)
    return [result_row("model", c, bs, m) for c, m in measured if c.backend != CEILING_BACKEND]
