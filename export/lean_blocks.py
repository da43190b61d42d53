"""An export-friendly forward for open_clip's standard transformer block.

open_clip's `ResidualAttentionBlock` runs `nn.MultiheadAttention` on (batch, tokens, width)
tensors. Exported as is, every layer becomes about eight Transposes, separate bias Adds after
3-D MatMuls and a Split of the fused projection; ONNX Runtime spends a large share of a small
batch on that glue, and INT8 graphs pay for it twice (each bias Add sits between a Dequantize and
the next Quantize).

`lean_block` computes the same function from the block's own parameters with the tokens kept
as a 2-D (batch*tokens, width) matrix: every linear layer is one Gemm with its bias inside (one
QGemm after quantization), the query/key/value split is one Transpose of the fused projection,
and the attention output needs one more. Only the order of float operations changes; the export
check still compares the written graph with open_clip's own forward.

Blocks this module does not know (open_clip's `CustomResidualAttentionBlock`, cross attention,
timm towers) keep their own forward: `lean_supported` says which.
"""
from __future__ import annotations

import math

from .deps import require

torch = require("torch")
F = torch.nn.functional


def lean_unsupported_reason(transformer) -> str | None:
    """None when every block of an open_clip Transformer can take the lean forward, else why not."""
    from open_clip.transformer import ResidualAttentionBlock

    blocks = getattr(transformer, "resblocks", None)
    if blocks is None or len(blocks) == 0:
        return "the tower has no resblocks"
    for i, b in enumerate(blocks):
        if type(b) is not ResidualAttentionBlock:
            return f"block {i} is a {type(b).__name__}, not open_clip's ResidualAttentionBlock"
        if hasattr(b, "ln_1_kv"):
            return f"block {i} is a cross-attention block"
        attn = b.attn
        if not isinstance(attn, torch.nn.MultiheadAttention) or not attn._qkv_same_embed_dim:
            return f"block {i} has an attention layer with separate q/k/v weights"
        if attn.bias_k is not None or attn.add_zero_attn or attn.in_proj_bias is None:
            return f"block {i} has an attention variant (bias_k/add_zero_attn/no bias) the lean forward does not cover"
        if not all(hasattr(b.mlp, n) for n in ("c_fc", "gelu", "c_proj")):
            return f"block {i} has an MLP that is not c_fc -> act -> c_proj"
    return None


def lean_block(block, x, fused_attention: bool = False, *, ln2_cls: bool = False):
    """One ResidualAttentionBlock on x (batch, tokens, width), in the lean layout. Same function.

    `fused_attention` computes attention with `scaled_dot_product_attention` (one ONNX Attention
    node at opset >= 23) instead of explicit products (best below opset 23). With `ln2_cls`, returns
    (output, the class token of the block's ln_2 output (batch, width)): the MLP's input, read by RINE."""
    n_tokens, width = x.shape[1], x.shape[2]
    attn = block.attn
    heads = attn.num_heads
    head_dim = width // heads
    h = x.reshape(-1, width)                                    # (B*N, C): linears become Gemm
    qkv = F.linear(block.ln_1(h), attn.in_proj_weight, attn.in_proj_bias)
    qkv = qkv.reshape(-1, n_tokens, 3, heads, head_dim).permute(2, 0, 3, 1, 4)   # (3, B, H, N, D)
    q, k, v = qkv[0], qkv[1], qkv[2]
    if fused_attention:   # exported as ONNX's Attention op at opset >= 23
        ctx = F.scaled_dot_product_attention(q, k, v)
    else:                 # below opset 23 SDPA decomposes into shape arithmetic; plain products are leaner
        scores = (q * (1.0 / math.sqrt(head_dim))) @ k.transpose(-2, -1)
        ctx = scores.softmax(dim=-1) @ v                         # (B, H, N, D)
    ctx = ctx.transpose(1, 2).reshape(-1, width)                 # (B*N, C)
    h = h + block.ls_1(F.linear(ctx, attn.out_proj.weight, attn.out_proj.bias))
    normed = block.ln_2(h)
    h = h + block.ls_2(_mlp(block.mlp, normed))
    if ln2_cls:
        return h.reshape(-1, n_tokens, width), normed.reshape(-1, n_tokens, width)[:, 0]
    return h.reshape(-1, n_tokens, width)


_SQRT2 = math.sqrt(2.0)


def _mlp(mlp, x):
    """c_fc -> activation -> c_proj. Exact (erf) GELU is written out in the order ONNX Runtime's
    Gelu fusion recognises at opset < 20 (x * (1 + erf(x / sqrt 2))) * 0.5; any other activation
    (QuickGELU, tanh GELU) runs its own module."""
    h = mlp.c_fc(x)
    act = mlp.gelu
    if type(act) is torch.nn.GELU and act.approximate == "none":
        h = (h * (1.0 + torch.erf(h / _SQRT2))) * 0.5
    else:
        h = act(h)
    return mlp.c_proj(h)


def lean_transformer(transformer, x, fused_attention: bool = False):
    """open_clip Transformer.forward (batch-first tokens in and out, no attention mask), lean blocks."""
    for block in transformer.resblocks:
        x = lean_block(block, x, fused_attention)
    return x
