"""`--resize-mode native`: a graph that takes each image at its own height and width, as IQA-PyTorch runs CLIP-IQA.

pyiqa scores CLIP-IQA and CLIP-IQA+ on the whole image at its own pixel size: it only normalises.
Its CLIP adds no positional embedding for CLIP-IQA and the bare-context CLIP-IQA+ file
(`pos_embedding=False`), so the ViT's patch convolution (which floors: a partial patch at the right or
bottom edge is dropped) and the ModifiedResNet's attention pool take any grid; the export then leaves
the embedding out of the forward. For the `_512` CLIP-IQA+ files (`pos_embedding=True`) it adds the
tower's embedding resampled to that image's token count (bicubic along the flattened token row); the
graph does the same, from the token count the input's height and width give (export.graph
embeds_at_own_size, resnet_at_own_size). Either way the graph is written with dynamic batch, height
and width and records `input.own_size` (the smallest side the tower takes, the most pixels an image
may have) with resize "none" and crop "none". LIQE keeps its 224 crops and picks them from each
image's own grid in the graph. Everything else needs a fixed size (linear heads trained on one size)
and is refused here, naming what to do instead. The passes differ (no embedding, a resampled one,
crops), so heads of different kinds never share one (export.importers refuses the mix).
"""
from __future__ import annotations

from clipscan.runtime.errors import InvalidArgumentError
from clipscan.runtime.manifest import NATIVE, OwnSize
from clipscan.runtime.manifest_checks import limit

from .deps import require
from .tower_kind import MODIFIED_RESNET, tower_kind

torch = require("torch")

WHAT = f"--resize-mode {NATIVE} (each image at its own size)"


def native_heads(tower_change: str | None, heads, info):
    """`info` for an own-size export of `heads`, or the refusal. Heads whose tower adds no positional embedding
    (clip-iqa, clip-iqa+ with pyiqa's bare context) run the tower at any size, and so do the `_512` clip-iqa+
    files, their tower's embedding resampled in the graph to each input's token count; LIQE keeps its 224
    crops and picks them from each image's own grid of windows in the graph (view_crops.OwnSizeCrops), as
    pyiqa does; anything else was trained and is scored at one size."""
    from dataclasses import replace

    from .iqa import NO_POSITIONAL_EMBEDDING, RESAMPLED_POSITIONAL_EMBEDDING, VIEW_CROPS
    from .view_crops import OwnSizeCrops

    if tower_change == NO_POSITIONAL_EMBEDDING:
        return info
    if tower_change == RESAMPLED_POSITIONAL_EMBEDDING:
        for h in heads:
            h.description = h.description.split("; on a 512x384 input")[0] + (
                "; at each image's own size, the tower's positional embedding resized (bicubic, along the token "
                "row) to that image's token count in the graph (pyiqa's pos_embedding=True)")
        return info
    if tower_change == VIEW_CROPS:
        for h in heads:
            fixed = h.crops
            h.crops = OwnSizeCrops(fixed.tile, fixed.stride, fixed.count)
            h.description = h.description.split("; the logits averaged")[0] + (
                f"; the logits averaged over up to {fixed.count} {fixed.tile} crops evenly spaced over each image's "
                f"own grid of windows at stride {fixed.stride} (pyiqa's selection, images of at least "
                f"{fixed.tile}x{fixed.tile}), cut in the graph")
        return replace(info, preprocess={**info.preprocess, "graph_crops": heads[0].crops.manifest()})
    names = ", ".join(getattr(h, "name", type(h).__name__) for h in heads)
    raise InvalidArgumentError(f"{WHAT} was asked for head(s) {names}, but they were trained and are scored at one "
                               "input size; it exists for --head clip-iqa, --head clip-iqa+ (pyiqa's bare-context "
                               "file without positional embedding, the _512 files with it resampled to each image) "
                               "and LIQE (224 crops picked from each image's own size): export these with another "
                               "--resize-mode (e.g. shortest)")


def is_own_size(visual, heads) -> bool:
    """Whether this tower and these heads make a graph taking each image at its own size (native_heads)."""
    from .graph import OWN_SIZE_ATTR
    from .view_crops import OwnSizeCrops

    return bool(getattr(visual, OWN_SIZE_ATTR, False)) or any(isinstance(getattr(h, "crops", None), OwnSizeCrops)
                                                              for h in heads)


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


def own_size(visual, max_pixels: int, crops=None) -> OwnSize:
    """input.own_size for this tower (or, when the graph cuts `crops`, their tile) and `--max-input-pixels`."""
    low = crops.tile if crops is not None else min_side(visual)
    top = limit("pixels_per_image")
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or not low * low <= max_pixels <= top:
        raise InvalidArgumentError(f"--max-input-pixels is {max_pixels!r}; with {WHAT} it must be an integer from "
                                   f"{low * low} (one {low}x{low} image, the tower's smallest) to {top} (clipscan's "
                                   "limit on the pixels of one model input)")
    return OwnSize(low, max_pixels)


def check_sizes(own: OwnSize, image_size) -> list[tuple[int, int]]:
    """The sizes, besides the traced `image_size`, at which export checks an own-size graph (the FP32 check and the
    FP16 gate alike): the smallest side, and one that is no multiple of it, of another aspect than the traced one."""
    low = own.min_side
    return [(low, low), (image_size[0] + low // 2 + 1, 2 * image_size[1] - low // 3 - 1)]
