"""The text side of a CLIP checkpoint, used only at export time.

Text never depends on the image, so heads that compare the image with prompts
(caption matching, CLIP-AGIQA) get their text features computed here, once, and
folded into constants of an image-only graph.
"""
from __future__ import annotations

from pathlib import Path

from clipscan.runtime.errors import CheckpointError

from .backbone import read_arch_config
from .deps import load_state_dict, require

torch = require("torch")
open_clip = require("open_clip")


class TextEncoder:
    """A checkpoint's text tower with its tokenizer; `encode` gives L2-normalised features."""

    def __init__(self, model, tokenizer):
        self.model = model.eval()
        self.tokenizer = tokenizer

    @property
    def width(self) -> int:
        return int(self.model.token_embedding.weight.shape[1])

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.detach().exp())

    def tokens(self, prompts: list[str]):
        return self.tokenizer(prompts)

    @torch.no_grad()
    def encode(self, prompts: list[str]):
        tokens = self.tokens(prompts)
        return self.encode_embeddings(self.model.token_embedding(tokens), tokens)

    @torch.no_grad()
    def encode_with_context(self, ctx, words: list[str]):
        """CoOp-style prompts: learned context vectors (n_ctx, width) in place of the first n_ctx tokens.

        Each prompt is "X X ... X <word>." tokenised; the embeddings of the X
        placeholders are replaced by `ctx`, as prompt learners do.
        """
        n_ctx = int(ctx.shape[0])
        if ctx.shape[1] != self.width:
            raise CheckpointError(f"learned context has width {ctx.shape[1]}, the text tower {self.width}")
        tokens = self.tokens([" ".join(["X"] * n_ctx) + " " + w + "." for w in words])
        emb = self.model.token_embedding(tokens)
        emb = torch.cat([emb[:, :1], ctx.to(emb.dtype).expand(len(words), -1, -1), emb[:, 1 + n_ctx:]], dim=1)
        return self.encode_embeddings(emb, tokens)

    @torch.no_grad()
    def encode_embeddings(self, emb, tokens):
        """L2-normalised features of prompts given as token embeddings (N, context, width); `tokens` place the
        end-of-text token that is pooled."""
        m = self.model
        x = m.transformer(emb + m.positional_embedding, attn_mask=m.attn_mask)
        x = m.ln_final(x)
        pool = getattr(m, "text_pool_type", None) or m.pool_type     # open_clip's CLIP, or its TextTransformer
        x = open_clip.model.text_global_pool(x, tokens, pool, eos_token_id=getattr(m, "text_eos_id", None))
        x = m.text_projection(x) if isinstance(m.text_projection, torch.nn.Linear) else x @ m.text_projection
        return torch.nn.functional.normalize(x, dim=-1)

def load_text_encoder(arch: str, weights: str | Path, *, quick_gelu: bool | None = None) -> TextEncoder:
    """Build the full CLIP of `arch` and load a full checkpoint (it must hold the text tower)."""
    bid, cfg = read_arch_config(arch)
    use_quick = bool(cfg.get("quick_gelu", False)) if quick_gelu is None else bool(quick_gelu)
    model_cfg = {k: v for k, v in cfg.items() if k in ("embed_dim", "vision_cfg", "text_cfg")}
    if "hf_model_name" in (cfg.get("text_cfg") or {}):
        raise CheckpointError(f"{bid} has a Hugging Face text tower; prompt heads support CLIP text towers only")
    model = open_clip.model.CLIP(**model_cfg, quick_gelu=use_quick)
    state = load_state_dict(weights, "CLIP checkpoint (with its text tower)")
    text_keys = [k for k in model.state_dict() if not k.startswith("visual.")]
    missing = [k for k in text_keys if k not in state]
    if missing:
        raise CheckpointError(f"{weights} has no text tower ({len(missing)} text keys missing, e.g. {missing[:3]}): "
                              "prompt-based heads need the full CLIP checkpoint, not the image tower alone")
    model.load_state_dict({k: state[k] for k in text_keys}, strict=False)
    context = int(cfg["text_cfg"].get("context_length", 77))
    return TextEncoder(model, open_clip.tokenizer.SimpleTokenizer(context_length=context))
