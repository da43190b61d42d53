"""A feature tap inside the image tower: the direct contribution of single attention heads to the output.

A pre-LN ViT's CLS residual before `ln_post` is a sum of terms: the CLS embedding, every MLP output, and
every attention layer's output at the CLS position, which is a sum over heads of that head's context
vector through its slice of `out_proj` (plus the `out_proj` bias). `ln_post` subtracts the channel mean,
which distributes over the terms, and divides by one standard deviation sigma computed from the whole
residual; so a term c reaches the output as proj(gamma * (c - mean(c)) / sigma), and proj(beta) is a
constant (Gandelsman et al., ICLR 2024; the features of Gaintseva et al.'s head probes).

`head_contributions` recomputes the CLS query's attention of one block from the block's residual input
(the tower's own pass hands it over, see `graph.TappedVisual.forward_with_taps`): no second backbone
pass, and the same code for the lean and the stock graph.
"""
from __future__ import annotations

import math

from .deps import require

torch = require("torch")
F = torch.nn.functional


def tap_unsupported_reason(visual, taps) -> str | None:
    """None when (layer, head) taps can be read from this tower, else why not."""
    blocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
    if blocks is None:
        return "the tower has no transformer blocks"
    if getattr(visual, "attn_pool", None) is not None or getattr(visual, "pool_type", "tok") != "tok":
        return "the tower does not pool its class token (attention pooling or average pooling)"
    if getattr(visual, "final_ln_after_pool", False):
        return "the tower applies ln_post after pooling"
    for layer, head in taps:
        if not 0 <= layer < len(blocks):
            return f"layer {layer} does not exist (the tower has layers 0..{len(blocks) - 1})"
        attn = blocks[layer].attn
        if not isinstance(attn, torch.nn.MultiheadAttention) or not attn._qkv_same_embed_dim:
            return f"layer {layer}'s attention is not a fused-projection MultiheadAttention"
        if not 0 <= head < attn.num_heads:
            return f"layer {layer} has heads 0..{attn.num_heads - 1}, not {head}"
    return None


def head_contributions(block, x, heads: list[int]):
    """(B, len(heads), width): each head's term of the CLS residual that `block` adds, from the block's
    residual input x (B, N, width), through its slice of out_proj and the block's layer scale."""
    attn = block.attn
    width = x.shape[-1]
    n_heads = attn.num_heads
    dim = width // n_heads
    h = block.ln_1(x)
    w_q, w_k, w_v = attn.in_proj_weight.chunk(3)
    b_q, b_k, b_v = attn.in_proj_bias.chunk(3)
    q = F.linear(h[:, :1], w_q, b_q).reshape(-1, 1, n_heads, dim).transpose(1, 2)        # (B, H, 1, D)
    k = F.linear(h, w_k, b_k).reshape(x.shape[0], -1, n_heads, dim).transpose(1, 2)       # (B, H, N, D)
    v = F.linear(h, w_v, b_v).reshape(x.shape[0], -1, n_heads, dim).transpose(1, 2)
    weights = ((q * (1.0 / math.sqrt(dim))) @ k.transpose(-2, -1)).softmax(dim=-1)      # (B, H, 1, N)
    ctx = (weights @ v)[:, :, 0]                                                          # (B, H, D)
    w_o = attn.out_proj.weight                                                            # (width, width)
    out = []
    for head in heads:
        term = ctx[:, head] @ w_o[:, head * dim:(head + 1) * dim].T                       # (B, width)
        out.append(block.ls_1(term))
    return torch.stack(out, dim=1)


def through_ln_post(visual, terms, residual_cls):
    """Terms (B, K, width) of the CLS residual -> their direct contributions (B, K, embed) to the projected
    output: proj(gamma * (c - mean c) / sigma), sigma from the whole residual `residual_cls` (B, width)."""
    ln = getattr(visual.ln_post, "ln", visual.ln_post)     # the LayerNorm itself (FP16 emulation wraps it)
    r = residual_cls.float()                              # in float32, as the graph's LayerNorms
    sigma = torch.sqrt(r.var(dim=-1, unbiased=False, keepdim=True) + ln.eps)              # (B, 1)
    terms = terms.float()
    centred = terms - terms.mean(dim=-1, keepdim=True)
    scaled = centred * ln.weight.float() / sigma.unsqueeze(1)
    return scaled @ visual.proj.float() if visual.proj is not None else scaled


def ln2_unsupported_reason(visual, blocks: int | None) -> str | None:
    """None when the class token of every block's ln_2 output can be read from this tower (`blocks`: how
    many blocks the head was trained on), else why not."""
    from open_clip.transformer import ResidualAttentionBlock

    resblocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
    if resblocks is None:
        return "the tower has no transformer blocks"
    if getattr(visual, "attn_pool", None) is not None:
        return "the tower pools with attention"
    if blocks is not None and blocks != len(resblocks):
        return (f"the head weighs {blocks} blocks and the tower has {len(resblocks)}: check --arch and --weights "
                "(the head must be trained on this tower)")
    for i, block in enumerate(resblocks):
        if type(block) is not ResidualAttentionBlock or hasattr(block, "ln_1_kv"):
            return f"block {i} is a {type(block).__name__}, not open_clip's standard ResidualAttentionBlock"
    return None
