"""The text tower of a Hugging Face `transformers` CLIPModel, read into open_clip's TextTransformer for prompt heads.

Used only at export time, like export.text: prompts are encoded once and folded into constants. The
mapping mirrors export.hf_clip's for the image tower (never importing transformers): text_model.* into
the blocks, `text_projection.weight` transposed as the projection, `logit_scale` as is. The reference is
transformers' `CLIPModel.get_text_features`: the hidden state at the end-of-text token (the highest
token id, which is where transformers pools too), final LayerNorm, projection. Tokens come from
CLIP's BPE (open_clip's SimpleTokenizer); a `vocab.json` beside the checkpoint must be that same
vocabulary, or the import is refused.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from .backbone import BackboneInfo, read_arch_config
from .deps import require
from .hf_clip import _LAYER, _LAYER_MAP, _QKV, _load_state, tower_prefix
from .hf_preprocess import HFCheckpointError
from .text import TextEncoder

torch = require("torch")
open_clip = require("open_clip")
log = logging.getLogger("clipscan.export")

# transformers' CLIPTextConfig defaults: save_pretrained writes only the values that differ from them
HF_TEXT_DEFAULTS = {"num_attention_heads": 8, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5}
_TEXT_TOP = {"embeddings.token_embedding.weight": "token_embedding.weight",
             "embeddings.position_embedding.weight": "positional_embedding",
             "final_layer_norm.weight": "ln_final.weight", "final_layer_norm.bias": "ln_final.bias"}
_TEXT_IGNORED = ("embeddings.position_ids",)
HF_SPECIAL_TOKENS = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}   # open_clip's: HF's


def _text_config(backbone: BackboneInfo) -> dict:
    """The text part of the checkpoint's transformers config (defaults filled in), or of an open_clip --arch."""
    weights = Path(backbone.weights_path)
    arch = backbone.arch if backbone.arch != str(weights) else None
    cfg_path = weights / "config.json" if weights.is_dir() else Path(arch) if arch and arch.endswith(".json") else None
    if cfg_path is not None and cfg_path.is_file():
        cfg = json.loads(cfg_path.read_text())
        if "text_config" in cfg or cfg.get("model_type") == "clip":
            return {**HF_TEXT_DEFAULTS, **{k: v for k, v in (cfg.get("text_config") or {}).items() if v is not None}}
    if arch:
        _, oc = read_arch_config(arch)
        text = oc.get("text_cfg") or {}
        if "heads" in text:
            act = "quick_gelu" if oc.get("quick_gelu") or backbone.activation == "quick_gelu" else "gelu"
            return {**HF_TEXT_DEFAULTS, "num_attention_heads": int(text["heads"]), "hidden_act": act}
    raise HFCheckpointError(f"{weights}: prompt heads need the text tower's configuration (a CLIPModel config.json "
                            "with text_config beside the weights, or an open_clip --arch): none was found")


def _check_vocabulary(backbone: BackboneInfo, tokenizer) -> None:
    """A vocab.json shipped with the checkpoint must be CLIP's BPE vocabulary, which the prompts are tokenised with."""
    weights = Path(backbone.weights_path)
    vocab = (weights if weights.is_dir() else weights.parent) / "vocab.json"
    if not vocab.is_file():
        log.info("%s: no vocab.json beside the checkpoint; prompts use CLIP's BPE vocabulary", weights.name)
        return
    ours = {HF_SPECIAL_TOKENS.get(k, k): v for k, v in tokenizer.encoder.items()}
    if json.loads(vocab.read_text(encoding="utf-8")) != ours:
        raise HFCheckpointError(f"{vocab} is not CLIP's BPE vocabulary, which clipscan tokenises prompts with: a "
                                "checkpoint with another tokenizer cannot have prompt heads")


def load_hf_text_encoder(backbone: BackboneInfo) -> TextEncoder:
    """The text tower and tokenizer of the transformers CLIPModel the backbone was read from."""
    weights = Path(backbone.weights_path)
    state = _load_state(weights)
    _, outer = tower_prefix(state, weights)
    text = outer + "text_model."
    needed = (text + "embeddings.token_embedding.weight", outer + "text_projection.weight", outer + "logit_scale")
    if any(k not in state for k in needed):
        raise HFCheckpointError(f"{weights} has no text tower ({', '.join(needed)}): prompt heads need a CLIPModel "
                                "checkpoint, not a vision-only one")
    cfg = _text_config(backbone)
    if cfg["hidden_act"] not in ("quick_gelu", "gelu") or abs(float(cfg["layer_norm_eps"]) - 1e-5) > 1e-12:
        raise HFCheckpointError(f"{weights}: a text tower with hidden_act {cfg['hidden_act']!r} and layer_norm_eps "
                                f"{cfg['layer_norm_eps']} is not one clipscan maps (quick_gelu or gelu, 1e-5)")
    vocab, width = state[text + "embeddings.token_embedding.weight"].shape
    context = int(state[text + "embeddings.position_embedding.weight"].shape[0])
    layers = 1 + max(int(m.group(1)) for k in state if k.startswith(text) and (m := _LAYER.fullmatch(k[len(text):])))
    inter = int(state[text + "encoder.layers.0.mlp.fc1.weight"].shape[0])
    ratio = inter / width if int(width * (inter / width)) == inter else (inter + 0.5) / width
    embed_dim = int(state[outer + "text_projection.weight"].shape[0])
    tower = open_clip.model._build_text_tower(
        embed_dim, {"context_length": context, "vocab_size": int(vocab), "width": int(width),
                    "heads": int(cfg["num_attention_heads"]), "layers": layers, "mlp_ratio": ratio},
        quick_gelu=cfg["hidden_act"] == "quick_gelu")
    mapped, qkv = {"text_projection": state[outer + "text_projection.weight"].t().contiguous()}, {}   # x @ W^T
    for key, tensor in state.items():
        if not key.startswith(text):
            continue
        rel = key[len(text):]
        if rel in _TEXT_TOP:
            mapped[_TEXT_TOP[rel]] = tensor
        elif (m := _LAYER.fullmatch(rel)) and m.group(2) in _LAYER_MAP:
            mapped[f"transformer.resblocks.{m.group(1)}.{_LAYER_MAP[m.group(2)]}"] = tensor
        elif m and (q := _QKV.fullmatch(m.group(2))):
            qkv.setdefault((int(m.group(1)), q.group(2)), {})[q.group(1)] = tensor
        elif rel not in _TEXT_IGNORED:
            raise HFCheckpointError(f"{weights}: text-tower tensor {key!r} is not one clipscan maps")
    for (n, kind), parts in qkv.items():
        if set(parts) != set("qkv"):
            raise HFCheckpointError(f"{weights}: {text}encoder.layers.{n}.self_attn is missing a {kind} of q, k, v")
        mapped[f"transformer.resblocks.{n}.attn.in_proj_{kind}"] = torch.cat([parts[p] for p in "qkv"], 0)
    own = tower.state_dict()
    wrong = sorted(set(own) ^ set(mapped)) or [k for k in own if tuple(own[k].shape) != tuple(mapped[k].shape)]
    if wrong:
        raise HFCheckpointError(f"{weights}: the text tower does not match its config (first mismatch: {wrong[0]})")
    tower.load_state_dict({k: v.float() for k, v in mapped.items()}, strict=True)
    tower.logit_scale = torch.nn.Parameter(state[outer + "logit_scale"].float().reshape(()))
    tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=context)
    _check_vocabulary(backbone, tokenizer)
    return TextEncoder(tower, tokenizer)
