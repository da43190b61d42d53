"""The backbone checkpoint formats `--weights` takes: one table, read by the CLI, the loader and the docs.

Torch-free on purpose: the CLI builds its `--weights-format` choices from it before any export
dependency is imported.
"""
from __future__ import annotations

AUTO = "auto"
OPEN_CLIP = "open_clip"
HF = "hf"

# name -> (what --weights is, where the architecture and the preprocessing come from)
WEIGHTS_FORMATS = {
    OPEN_CLIP: ("an open_clip or OpenAI CLIP checkpoint file (.pt/.pth/.bin/.safetensors; a full CLIP or an "
                "image-tower state dict)",
                "--arch (an open_clip model name or model-config .json); preprocessing from that config"),
    HF: ("a Hugging Face transformers CLIPModel, CLIPVisionModel or CLIPVisionModelWithProjection: a "
         "save_pretrained folder (config.json + model.safetensors or pytorch_model.bin, sharded with an index "
         "included) or a single weights file",
         "the folder's config.json (vision_config of a CLIPModel); preprocessing from its "
         "preprocessor_config.json when present. A single file needs --arch (a transformers config.json, an "
         "open_clip model name or model-config .json)"),
}

WEIGHTS_FORMAT_CHOICES = (AUTO, *WEIGHTS_FORMATS)

WEIGHTS_FORMAT_HELP = ("format of --weights: " + "; ".join(f"{name}: {what}" for name, (what, _) in
                                                           WEIGHTS_FORMATS.items())
                       + f"; {AUTO} (default): {HF} for a folder or a file holding a transformers CLIP image tower "
                       f"(a tensor named ...embeddings.patch_embedding.weight), {OPEN_CLIP} otherwise")
