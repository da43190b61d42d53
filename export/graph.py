"""One module, one backbone pass, every head: what gets written to ONNX."""
from __future__ import annotations

from ._deps import require

torch = require("torch")
F = torch.nn.functional

# Graph output names, in order. The manifest maps head roles onto them.
OUT_PROB, OUT_LOGIT, OUT_QUALITY, OUT_EMBEDDING = "p_generated", "logit_generated", "quality", "embedding"
INPUT_NAME = "pixels"


class ScanGraph(torch.nn.Module):
    """pixels (N,3,H,W) -> p_generated, logit_generated, quality, embedding (L2-normalised)."""

    def __init__(self, visual, detector=None, quality=None):
        super().__init__()
        if detector is None and quality is None:
            raise ValueError("a ScanGraph needs at least one head")
        self.visual = visual
        self.detector = detector
        self.quality = quality

    def output_names(self) -> list[str]:
        names = []
        if self.detector is not None:
            names += [OUT_PROB, OUT_LOGIT]
        if self.quality is not None:
            names.append(OUT_QUALITY)
        return names + [OUT_EMBEDDING]

    def forward(self, pixels):
        emb = F.normalize(self.visual(pixels), dim=-1)
        outs = []
        if self.detector is not None:
            logit = self.detector(emb)
            outs += [torch.sigmoid(logit), logit]
        if self.quality is not None:
            outs.append(self.quality(emb))
        outs.append(emb)
        return tuple(outs)
