"""The kinds of open_clip image tower export writes, and the ViT-only parts of export refusing the others.

open_clip builds a VisionTransformer for a `vision_cfg` whose `layers` is an int, and OpenAI's
ModifiedResNet (RN50, RN101, RN50x4...: a three-convolution stem, bottleneck stages and an
attention pool with its own positional embedding) when `layers` is a list of four. Both give the
projected image embedding that the prompt and linear heads read. What reads inside the tower
(the lean block graph, deep visual prompts, attention-head and ln_2 taps, the CLS token before the
projection, folding the normalisation into an unpadded patch embedding) exists for the ViT only,
and says so here instead of failing on a missing attribute. FP16 export takes both kinds: each has
its own float32 tail (export.fp16.TAILS).
"""
from __future__ import annotations

from clipscan.runtime.errors import InvalidArgumentError

VIT = "vit"
MODIFIED_RESNET = "modified_resnet"
# manifest backbone.tower: what each kind is
TOWER_KINDS = {
    VIT: "open_clip VisionTransformer (ViT-*)",
    MODIFIED_RESNET: "open_clip ModifiedResNet (RN50, RN101, RN50x4, ...: OpenAI's ResNet with an attention pool)",
}


def tower_kind(visual) -> str:
    """VIT or MODIFIED_RESNET for an open_clip image tower (anything else is not a tower export knows)."""
    from open_clip.modified_resnet import ModifiedResNet

    return MODIFIED_RESNET if isinstance(visual, ModifiedResNet) else VIT


def config_tower_kind(cfg: dict) -> str:
    """The kind an open_clip model config builds: open_clip's own rule (a list of stage depths is a ResNet)."""
    return MODIFIED_RESNET if isinstance((cfg.get("vision_cfg") or {}).get("layers"), (list, tuple)) else VIT


def vit_only_reason(visual, what: str) -> str | None:
    """None for a ViT; else the sentence that `what` (e.g. "the lean graph") is ViT-only and this tower is not."""
    kind = tower_kind(visual)
    if kind == VIT:
        return None
    return f"{what} is written for ViT towers only, and this tower is an {TOWER_KINDS[kind]}"


def require_vit(visual, what: str, fix: str) -> None:
    """Refuse `what` on a tower that is not a ViT, saying how to do without it."""
    why = vit_only_reason(visual, what)
    if why:
        raise InvalidArgumentError(f"{why}; {fix}")
