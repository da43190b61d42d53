"""Test-time crops cut inside the graph: one input, several tower-sized views, one backbone pass over all of them.

LIQE as IQA-PyTorch runs it (pyiqa's liqe_arch.py, eval mode): every 224x224 window at stride 32
(`unfold` on both axes, row-major), of which `num_patch` = 15 are kept, evenly spaced in that order:
indices 0, s, 2s, ... with s = max(1, windows // 15) (all of them when there are fewer than 15);
the logits of the kept crops are averaged before the softmax. Here the input has one fixed size, so
the windows are constants: the graph slices them statically, stacks them into the batch
(batch x crops), runs the tower once, and hands the heads the mean over the crops of the
L2-normalised embeddings. A head that is linear in that embedding (LIQE's logits: logit_scale x
cosine with fixed text features) then gets exactly the mean of its per-crop logits.
"""
from __future__ import annotations

from dataclasses import dataclass

from clipscan.runtime.errors import InvalidArgumentError

from .deps import require

torch = require("torch")

CROPS_AGGREGATE = "mean_normalized_embedding"   # what the manifest says the graph does with the crops


def mean_per_image(emb, batch):
    """(B x crops, D) L2-normalised embeddings of every image's crops, image by image -> (B, D) their mean per
    image (ViewCrops and OwnSizeCrops alike)."""
    return emb.reshape(batch, -1, emb.shape[-1]).mean(dim=1)


@dataclass(frozen=True)
class ViewCrops:
    """pyiqa's crop grid on an input of `input_size` (height, width): `tile` windows at `stride`, `count` kept."""
    input_size: tuple[int, int]
    tile: int = 224
    stride: int = 32
    count: int = 15

    def origins(self) -> list[tuple[int, int]]:
        """(top, left) of each kept window, in pyiqa's order."""
        h, w = self.input_size
        if min(h, w) < self.tile:
            raise InvalidArgumentError(f"an input of {h}x{w} has no {self.tile}x{self.tile} window (pyiqa asserts "
                                       f"both sides >= {self.tile})")
        rows, cols = (h - self.tile) // self.stride + 1, (w - self.tile) // self.stride + 1
        n = min(rows * cols, self.count)
        step = max(1, rows * cols // n)
        return [((i * step) // cols * self.stride, (i * step) % cols * self.stride) for i in range(n)]

    def manifest(self) -> dict:
        """The manifest's preprocess.graph_crops (runtime.graph_crops reads it back)."""
        return {"size": [self.tile, self.tile], "stride": self.stride, "origins": [list(o) for o in self.origins()],
                "aggregate": CROPS_AGGREGATE}

    def cut(self, x):
        """(B, 3, H, W) -> (B x crops, 3, tile, tile), crops of one image next to each other."""
        t = self.tile
        views = torch.stack([x[:, :, top:top + t, left:left + t] for top, left in self.origins()], dim=1)
        return views.reshape(-1, x.shape[1], t, t)


@dataclass(frozen=True)
class OwnSizeCrops:
    """pyiqa's crop grid on each image's own height and width (`export --resize-mode native`): the windows,
    their number and spacing follow the input's shape, computed in the graph (dynamic height and width)."""
    tile: int = 224
    stride: int = 32
    count: int = 15

    def manifest(self) -> dict:
        """preprocess.graph_crops for an own-size input: a count instead of fixed origins."""
        return {"size": [self.tile, self.tile], "stride": self.stride, "count": self.count,
                "aggregate": CROPS_AGGREGATE}

    def cut(self, x):
        """(B, 3, H, W) -> (B x n, 3, tile, tile): of the rows x cols windows at `stride` (row-major), the n =
        min(count, rows x cols) at 0, s, 2s, ... with s = max(1, (rows x cols) // n), as pyiqa's LIQE picks them."""
        t, h, w = self.tile, x.shape[2], x.shape[3]
        rows, cols = (h - t) // self.stride + 1, (w - t) // self.stride + 1
        n = torch.sym_min(rows * cols, self.count)
        picked = torch.arange(n, device=x.device) * torch.sym_max((rows * cols) // n, 1)
        per_row = torch.full((1,), cols, dtype=picked.dtype, device=x.device)   # a tensor: ONNX takes its division
        row = torch.div(picked, per_row, rounding_mode="floor")
        span = torch.arange(t, device=x.device)
        top = (row * self.stride)[:, None] + span                               # (n, t)
        left = ((picked - row * per_row) * self.stride)[:, None] + span         # (n, t)
        views = x[:, :, top[:, :, None], left[:, None, :]]                      # (B, 3, n, t, t)
        return views.permute(0, 2, 1, 3, 4).reshape(-1, x.shape[1], t, t)


# LIQE's input: KonIQ-10k's frame (1024 wide, 768 high; LIQE's koniq model is trained and tested on it):
# an 18 x 26 grid of windows, every 31st kept
LIQE_CROPS = ViewCrops((768, 1024))
