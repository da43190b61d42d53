"""Function-preserving activation-outlier injection for test models.

A randomly initialised CLIP has no outlier channels, so INT8 looks far better on it than on a
trained one. `inject_outliers` multiplies a few channels of every LayerNorm's gamma and beta that
feeds a Linear (ln_1 -> attention in-projection, ln_2 -> MLP c_fc, ln_post -> proj) by `factor`
and divides the matching input columns of that Linear by `factor`: the FP32 function is
unchanged, but the LayerNorm outputs now carry channels `factor` times larger than the rest,
as trained CLIPs do.
"""
from __future__ import annotations

import numpy as np

from clipscan.export.deps import require

torch = require("torch")


def _channels(width: int, n: int, rng: np.random.Generator) -> "torch.Tensor":
    return torch.as_tensor(np.sort(rng.choice(width, size=n, replace=False)))


@torch.no_grad()
def inject_outliers(visual, n_channels: int = 6, factor: float = 40.0, seed: int = 0) -> dict:
    """Inject outliers in place into an open_clip VisionTransformer; returns {layer: channels}."""
    rng = np.random.default_rng(seed)
    width = visual.transformer.width
    done: dict[str, list[int]] = {}

    def scale_ln(ln, ch):
        ln.weight[ch] *= factor
        ln.bias[ch] *= factor

    for i, block in enumerate(visual.transformer.resblocks):
        ch = _channels(width, n_channels, rng)
        scale_ln(block.ln_1, ch)
        attn = block.attn
        if getattr(attn, "in_proj_weight", None) is not None:
            attn.in_proj_weight[:, ch] /= factor       # Linear(width, 3 width): weight (out, in)
        else:  # separate q/k/v projections
            for name in ("q_proj_weight", "k_proj_weight", "v_proj_weight"):
                getattr(attn, name)[:, ch] /= factor
        done[f"resblocks.{i}.ln_1"] = ch.tolist()
        ch = _channels(width, n_channels, rng)
        scale_ln(block.ln_2, ch)
        block.mlp.c_fc.weight[:, ch] /= factor
        done[f"resblocks.{i}.ln_2"] = ch.tolist()
    if visual.proj is not None and getattr(visual, "ln_post", None) is not None:
        ch = _channels(width, n_channels, rng)
        scale_ln(visual.ln_post, ch)
        visual.proj[ch, :] /= factor                   # pooled @ proj: proj is (width, embed_dim)
        done["ln_post"] = ch.tolist()
    return done
