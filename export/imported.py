"""What a head importer gives back (export.importers), and the text tower that prompt heads encode with."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Imported:
    heads: list
    preprocess: dict = field(default_factory=dict)   # overrides of the backbone's preprocess cfg
    source: Path | None = None
    visual_prompts: object = None                    # (layers, n, width) deep visual prompts, if the head needs them
    tower_change: str | None = None                  # iqa.NO_POSITIONAL_EMBEDDING: the head's tower adds none
    files: list = field(default_factory=list)        # (path, [its heads]) for each head file read


def text_encoder(backbone):
    """The text tower of the backbone's own checkpoint (prompt heads encode their prompts with it): open_clip's,
    or a transformers CLIPModel's (export.hf_text)."""
    from .text import load_text_encoder
    from .weights_formats import HF

    if backbone.extra.get("weights_format") == HF:
        from .hf_text import load_hf_text_encoder

        return load_hf_text_encoder(backbone)
    return load_text_encoder(backbone.arch, backbone.weights_path,
                             quick_gelu=backbone.activation == "quick_gelu")
