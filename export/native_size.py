"""`--resize-mode native`: a graph that takes each image at its own height and width, as IQA-PyTorch runs CLIP-IQA.

pyiqa scores CLIP-IQA and CLIP-IQA+ (its bare-context RN50 file) on the whole image at its own pixel
size: it only normalises, and its CLIP adds no positional embedding (`pos_embedding=False`), so the
ViT's patch convolution (which floors: a partial patch at the right or bottom edge is dropped) and the
ModifiedResNet's attention pool take any grid. The export then leaves the positional embedding out of
the forward (export.graph.embeds_without_position, resnet_without_position), writes the graph with
dynamic batch, height and width, and records `input.own_size` (the smallest side the tower takes, the
most pixels an image may have) with resize "none" and crop "none". Everything else needs a fixed size
(a positional embedding of fixed length, LIQE's crops, a linear head trained on crops of one size) and
is refused here, naming what to do instead.
"""
from __future__ import annotations

from clipscan.runtime.errors import InvalidArgumentError
from clipscan.runtime.manifest import NATIVE, OwnSize
from clipscan.runtime.manifest_checks import limit

from .deps import require
from .tower_kind import MODIFIED_RESNET, tower_kind

torch = require("torch")

WHAT = f"--resize-mode {NATIVE} (each image at its own size)"


def refuse_unless_positionless(tower_change: str | None, heads) -> None:
    """Only heads whose tower adds no positional embedding (clip-iqa, clip-iqa+ with pyiqa's bare context)
    run at any size; anything else was trained and is scored at one size."""
    from .iqa import NO_POSITIONAL_EMBEDDING

    if tower_change != NO_POSITIONAL_EMBEDDING:
        names = ", ".join(getattr(h, "name", type(h).__name__) for h in heads)
        why = ("LIQE scores fixed test-time crops of one input size" if tower_change == "view_crops" else
               "their tower adds a positional embedding of a fixed length, or they were trained on crops of one size")
        raise InvalidArgumentError(f"{WHAT} was asked for head(s) {names}, but {why}; it exists for heads whose tower "
                                   "adds no positional embedding (--head clip-iqa, --head clip-iqa+ with pyiqa's "
                                   "bare-context file): export these with another --resize-mode (e.g. shortest)")


def min_side(visual) -> int:
    """The smallest height and width the tower takes: one patch for a ViT; for a ModifiedResNet the smallest
    side whose feature grid keeps one cell (found by running the stem and stages on zeros)."""
    if tower_kind(visual) != MODIFIED_RESNET:
        return int(max(visual.conv1.kernel_size))
    with torch.no_grad():
        for side in range(1, 257):
            try:
                x = torch.zeros(1, 3, side, side, dtype=visual.conv1.weight.dtype)
                x = visual.layer4(visual.layer3(visual.layer2(visual.layer1(visual.stem(x)))))
            except RuntimeError:
                continue
            if x.shape[-1] >= 1 and x.shape[-2] >= 1:
                return side
    raise InvalidArgumentError("this ResNet tower takes no input of up to 256 pixels a side, so its smallest "
                               f"input cannot be stated; {WHAT} is not possible for it")


def own_size(visual, max_pixels: int) -> OwnSize:
    """input.own_size for this tower and `--max-input-pixels`."""
    low = min_side(visual)
    top = limit("pixels_per_image")
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or not low * low <= max_pixels <= top:
        raise InvalidArgumentError(f"--max-input-pixels is {max_pixels!r}; with {WHAT} it must be an integer from "
                                   f"{low * low} (one {low}x{low} image, the tower's smallest) to {top} (clipscan's "
                                   "limit on the pixels of one model input)")
    return OwnSize(low, max_pixels)
