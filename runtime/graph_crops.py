"""The manifest's `preprocess.graph_crops`: test-time crops that the graph itself cuts from its input.

The runtime does nothing with the crops: it prepares the whole input (`input.size`, by the resize and
crop steps as always) and the graph slices the listed windows, runs the tower on all of them in one
batch and aggregates them (LIQE's test-time crops; export.view_crops writes the field). It is read
and checked here so that `clipscan info` and anyone reading the manifest can say what one row means.
"""
from __future__ import annotations

from .errors import ManifestError
from .manifest_checks import bounded, count, need, size

# what the graph does with the crops' outputs -> what that means
GRAPH_CROP_AGGREGATES = {
    "mean_normalized_embedding": "the heads read the mean over the crops of the L2-normalised embeddings (for a head "
                                 "linear in it, as LIQE's logits are, the mean of the per-crop logits); the embedding "
                                 "output is that mean, normalised",
}


def parse_graph_crops(d, input_size: tuple[int, int], own_size=None) -> dict:
    """{size, stride, origins, aggregate}, every window inside an input of `input_size` (height, width); for an
    input at each image's own size (`own_size`, input.own_size) {size, stride, count, aggregate}: the graph
    picks `count` windows evenly spaced over each image's own grid of windows (pyiqa's LIQE selection)."""
    w = "preprocess.graph_crops"
    if not isinstance(d, dict):
        raise ManifestError(f"manifest field '{w}' should be an object, found {type(d).__name__}")
    tile = size(need(d, "size", w, (list, int)), f"{w}.size")
    stride = bounded(need(d, "stride", w, int), f"{w}.stride", "image_side")
    if own_size is not None:
        if "origins" in d:
            raise ManifestError(f"manifest field '{w}.origins' lists fixed windows, but the input is each image at "
                                f"its own size (input.own_size); give '{w}.count' (windows the graph picks per image)")
        if own_size.min_side < max(tile):
            raise ManifestError(f"manifest field 'input.own_size.min_side' is {own_size.min_side}, under the "
                                f"{tile[0]}x{tile[1]} windows the graph cuts ('{w}.size'); it must be >= {max(tile)}")
        count_ = bounded(need(d, "count", w, int), f"{w}.count", "graph_crops")
        aggregate = need(d, "aggregate", w, str, tuple(GRAPH_CROP_AGGREGATES))
        return {"size": list(tile), "stride": stride, "count": count_, "aggregate": aggregate}
    origins = count(need(d, "origins", w, list), f"{w}.origins", "graph_crops")
    if not origins:
        raise ManifestError(f"manifest field '{w}.origins' lists no crop; give at least one [top, left]")
    for o in origins:
        if (not isinstance(o, list) or len(o) != 2 or not all(type(v) is int and v >= 0 for v in o)
                or o[0] + tile[0] > input_size[0] or o[1] + tile[1] > input_size[1]):
            raise ManifestError(f"manifest field '{w}.origins' has {o!r}; each should be [top, left] of a "
                                f"{tile[0]}x{tile[1]} window inside the {input_size[0]}x{input_size[1]} input")
    aggregate = need(d, "aggregate", w, str, tuple(GRAPH_CROP_AGGREGATES))
    return {"size": list(tile), "stride": stride, "origins": [list(o) for o in origins], "aggregate": aggregate}


def graph_crops_line(crops: dict) -> str:
    """One line for `clipscan info`."""
    h, w = crops["size"]
    if "count" in crops:
        return (f"up to {crops['count']} crops of {h}x{w}, evenly spaced over each image's own grid of windows at "
                f"stride {crops['stride']}, cut in the graph, one backbone pass over all of them; {crops['aggregate']}")
    return (f"{len(crops['origins'])} crops of {h}x{w} (stride {crops['stride']}) cut in the graph, one backbone "
            f"pass over all of them; {crops['aggregate']}")
