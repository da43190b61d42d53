"""The PyTorch side of the benchmark: the eager FP32 original and the plain pipeline.

`TorchReference` loads the original as export does (`clipscan.export.load_reference`); its input
is rebuilt by `clipscan.calibration.reference_input.ReferenceTransform`, the one place that builds
every manifest recipe with open_clip / torchvision. `plain_pipeline` is how the model runs without
clipscan: sequential PIL decode, that transform, a batched eager forward. torch is imported only
when a reference is asked for, so the benchmark runs on a base install.
"""
from __future__ import annotations

import logging

import numpy as np
from PIL import Image

from clipscan.runtime.errors import MissingExtraError

from .config import BenchConfig

log = logging.getLogger("clipscan.bench")


class TorchReference:
    """The PyTorch eager FP32 original (clipscan.export.load_reference); torch is imported here only."""

    def __init__(self, arch: str | None, weights: str, heads: list[str], *, quick_gelu=None,
                 resize_mode: str | None = None):
        import torch

        from clipscan.export import load_reference

        self.torch = torch
        self.reference = load_reference(arch, weights, heads, quick_gelu=quick_gelu, resize_mode=resize_mode)
        self.graph = self.reference.graph()
        self.names = self.graph.output_names()
        self.threads = torch.get_num_threads()

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Every output of one eager forward under inference_mode, on a normalised float32 batch."""
        torch = self.torch
        with torch.inference_mode():
            outs = self.graph(torch.from_numpy(np.ascontiguousarray(x, np.float32)))
        return {n: o.float().numpy() for n, o in zip(self.names, outs)}

    def forward_tensor(self, x) -> dict:
        """Every output (torch tensors) of one eager forward on a torch batch."""
        with self.torch.inference_mode():
            return dict(zip(self.names, self.graph(x)))

    @staticmethod
    def transform(manifest):
        """The manifest's recipe rebuilt with open_clip / torchvision (a ReferenceTransform)."""
        from clipscan.calibration.reference_input import ReferenceTransform

        return ReferenceTransform(manifest)

    def input_from_runtime(self, manifest, x: np.ndarray) -> np.ndarray:
        """The normalised float32 input the reference takes, from the runtime's tensor (uint8 or float)."""
        return self.transform(manifest).from_runtime(x)


def load_torch_reference(cfg: BenchConfig, errors: list[str]) -> TorchReference | None:
    """The reference `cfg` asks for; None (with a line in `errors`) when torch or open_clip is missing."""
    if not cfg.wants_torch:
        return None
    try:
        return TorchReference(cfg.torch_arch, cfg.torch_weights, cfg.torch_heads, quick_gelu=cfg.quick_gelu,
                              resize_mode=cfg.torch_resize_mode)
    except (ImportError, MissingExtraError) as e:
        if not cfg.skip_unavailable:
            raise MissingExtraError("clipscan bench --torch-* (the PyTorch reference)", getattr(
                e, "module", None) or getattr(e, "name", None) or "torch", "export") from e
        errors.append(f"PyTorch reference skipped: {e}")
        log.warning("PyTorch reference skipped (torch/open_clip not installed?): %s", e)
        return None


def plain_transform(manifest, errors: list[str]):
    """The reference transform of `manifest`'s recipe for the plain pipeline; None (with a line in
    `errors`) where open_clip / torchvision cannot build it."""
    transform = TorchReference.transform(manifest)
    if not transform.available:
        errors.append(f"PyTorch plain pipeline skipped: {transform.note}")
        log.warning("PyTorch plain pipeline skipped: %s", transform.note)
        return None
    return transform


def plain_pipeline(torch_ref: TorchReference, transform, manifest, files: list[str], batch_size: int) -> list[float]:
    """The plain pipeline: PIL full decode + the reference transform + PyTorch eager, sequential; returns
    the decision head's p per model-input row. `transform` is `TorchReference.transform(manifest)`."""
    import torchvision.transforms.functional as TF

    torch = torch_ref.torch
    det = manifest.decision_head()
    prob = det.outputs.get("probability") if det is not None else None
    ps: list[float] = []
    batch: list = []

    def flush():
        if batch:
            x = torch.cat(batch)
            named = torch_ref.forward_tensor(x)
            if prob in named:
                ps.extend(named[prob].reshape(len(x), -1)[:, 0].tolist())
            batch.clear()

    for f in files:
        try:
            with Image.open(f) as im:
                img = im.convert("RGB")
        except Exception:
            continue
        batch.append(TF.normalize(transform.unit_pixels(img), transform.mean, transform.std))
        if sum(len(b) for b in batch) >= batch_size:
            flush()
    flush()
    return ps
