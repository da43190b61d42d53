"""The names `clipscan export` accepts, each with a one-line description: head formats, graph styles, precisions.

Torch-free (it imports nothing heavy), so that the command line builds its choices and help texts
from it, and the docs their tables, without loading the export stage. The importer of each head
format is `export.importers.IMPORTERS[name]`, which is built from HEAD_FORMATS.
"""
from __future__ import annotations

from clipscan.runtime.manifest import PRECISIONS

# --head FORMAT:PATH -> what a file of that format holds (the importer's docstring has the details)
HEAD_FORMATS: dict[str, str] = {
    "clipscan": "clipscan's own heads file, on the embedding (a bare PATH means this format)",
    "univfd": "UnivFD (Ojha et al. 2023): Linear(D, 1) on the projected CLS token, not normalised",
    "cozzolino": "Cozzolino et al. 2024: Linear(width, 1) on the L2-normalised CLS token before the projection",
    "gaintseva-mask": "Gaintseva et al.: a linear probe after removing embedding components",
    "gaintseva-heads": "Gaintseva et al.: a linear probe over selected attention heads' direct contributions",
    "captions": "caption matching with generator attribution: a JSON file of labels and captions, "
                "encoded by the checkpoint's text tower",
    "agiqa-tang": "CLIP-AGIQA (Tang et al. 2024): learned prompt context and quality words, an MLP over "
                  "[image, texts]",
    "agiqa-fu": "CLIP-AGIQA (Fu et al.): deep visual prompts and learned 'good/bad photo' prompts",
    "c2p-clip": "C2P-CLIP (Tan et al. 2024): Linear(D, 1) on the L2-normalised projected embedding of a "
                "fine-tuned Hugging Face CLIP tower",
    "effort": "Effort (Yan et al. 2025): Linear(width, 2) on the pooled output of an SVD-fine-tuned Hugging "
              "Face CLIP tower (two-class softmax)",
    "rine": "RINE (Koutlis & Papadopoulos 2024): the CLS token of every block's ln_2 output, per-block MLP, "
            "softmax(alpha)-weighted sum, MLP to one logit (its trainable-part .pth)",
    "drct": "DRCT (Chen et al. 2024): Linear(D, E) then Linear(E, 2) on OpenAI CLIP's encode_image (two-class "
            "softmax); one checkpoint with the tower under model.model.visual",
    "laion-aesthetic": "LAION improved aesthetic predictor: an MLP on the L2-normalised embedding, a score on "
                       "its own 1-10 scale",
    "clip-iqa": "CLIP-IQA as IQA-PyTorch defines it: five antonym prompt pairs over the checkpoint's text tower, "
                "a score in [0, 1] (no file: --head clip-iqa)",
    "clip-iqa+": "CLIP-IQA+ as IQA-PyTorch defines it: 'Good/Bad photo' with learned prompt context, a score in "
                 "[0, 1]",
    "liqe": "LIQE (Zhang et al. 2023) as IQA-PyTorch defines it: a fine-tuned CLIP and five quality prompts, a "
            "1-5 score",
    "liqe-mix": "LIQE trained on the mix of datasets: 495 quality x scene x distortion prompts, a 1-5 score",
}

# head formats that read no file: the published model is prompts over the checkpoint's own CLIP
# (--head FORMAT, or FORMAT: with nothing after the colon)
FILELESS_HEAD_FORMATS = ("clip-iqa",)

# --graph: how the transformer blocks are written into the graph
GRAPH_STYLES: dict[str, str] = {
    "auto": "lean for FP32 when every block is open_clip's standard block, else stock",
    "lean": "blocks written export-friendly (the same function, 2-D Gemms, fewer Transposes); faster in "
            "ONNX Runtime, INT8 especially",
    "stock": "open_clip's own block forward, as traced",
}

# --precision: the precisions export writes (INT8 artifacts come from `clipscan calibrate`)
EXPORT_PRECISIONS: dict[str, str] = {name: PRECISIONS[name] for name in ("fp32", "fp16")}

