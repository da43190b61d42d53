"""Gaintseva et al. 2024 ("Improving Interpretability and Robustness for the Detection of AI-Generated
Images"): two robust linear probes on a frozen CLIP image tower.

`gaintseva-mask` (embedding-component removal): a `torch.save`d dict
    {"weight": [1, D] or [D], "bias": [1] or a number,
     one of  "mask": [D] (1 keeps a coordinate, 0 removes it) | "removed": [indices] | "directions": [K, D],
     optional "feature": "embedding" (default: the L2-normalised projected embedding) or "proj",
     optional "threshold" (0.5), "labels" (["real", "generated"])}
Masking and projecting out directions (x - U^T (U U^T)^-1 U x) are linear, so the probe folds exactly into
one Linear(D, 1): w' = w P. The removed components are recorded in the manifest (head `details`).

`gaintseva-heads` (attention-head probe): a `torch.save`d dict
    {"heads": [[layer, head], ...], "weight": [1, K * E], "bias": [1] or a number,
     optional "threshold", "labels"}
over the concatenated direct contributions (E = the embedding width each) of the selected heads to the
projected CLS token, read in the same backbone pass (see export.head_tap).
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from clipscan.runtime.errors import CheckpointError, InputNotFoundError

from .deps import load_torch_file, require
from .heads import DetectorHead

torch = require("torch")


def _load(path: Path, what: str) -> dict:
    if not path.is_file():
        raise InputNotFoundError(f"head file {path} does not exist; pass the path of the downloaded head file")
    data = load_torch_file(path, what)
    if not isinstance(data, dict) or "weight" not in data or "bias" not in data:
        keys = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise CheckpointError(f"{path} is not a {what} (a dict with 'weight' and 'bias'; found {keys}); see "
                              "clipscan.export.gaintseva for the file format")
    return data


def _probe(data: dict, path: Path, dim: int) -> tuple:
    w = torch.as_tensor(data["weight"], dtype=torch.float64).reshape(1, -1)
    b = torch.as_tensor(data["bias"], dtype=torch.float64).reshape(-1)
    if w.shape[1] != dim or b.numel() != 1:
        raise CheckpointError(f"{path}: the probe has weight {tuple(w.shape)} and bias {tuple(b.shape)}; this backbone "
                              f"needs weight (1, {dim}) and one bias. Check --arch and the selected heads")
    return w, b


def _detector(data: dict, dim: int, feature: str, name: str, description: str) -> DetectorHead:
    labels = tuple(data.get("labels") or ("real", "generated"))
    return DetectorHead(dim, labels, float(data.get("threshold", 0.5)), feature=feature, name=name,
                        description=description)


def removal_projection(data: dict, path: Path, dim: int) -> tuple:
    """(P (D, D) float64, details for the manifest): the linear map that removes the file's components."""
    if "mask" in data:
        keep = torch.as_tensor(data["mask"]).reshape(-1).to(torch.float64)
        if keep.numel() != dim or not torch.all((keep == 0) | (keep == 1)):
            raise CheckpointError(f"{path}: 'mask' must hold {dim} values of 0 (removed) or 1 (kept)")
        removed = [int(i) for i in torch.nonzero(keep == 0).reshape(-1)]
        return torch.diag(keep), {"removed": "coordinates", "coordinates": removed}
    if "removed" in data:
        idx = [int(i) for i in torch.as_tensor(data["removed"]).reshape(-1)]
        if any(not 0 <= i < dim for i in idx):
            raise CheckpointError(f"{path}: 'removed' coordinates must lie in 0..{dim - 1}")
        keep = torch.ones(dim, dtype=torch.float64)
        keep[idx] = 0
        return torch.diag(keep), {"removed": "coordinates", "coordinates": sorted(set(idx))}
    if "directions" in data:
        u = torch.as_tensor(data["directions"], dtype=torch.float64)
        u = u.reshape(1, -1) if u.ndim == 1 else u
        if u.ndim != 2 or u.shape[1] != dim:
            raise CheckpointError(f"{path}: 'directions' must be (K, {dim}), found {tuple(u.shape)}")
        proj = torch.eye(dim, dtype=torch.float64) - u.T @ torch.linalg.pinv(u @ u.T) @ u
        digest = hashlib.sha256(u.to(torch.float32).numpy().tobytes()).hexdigest()
        return proj, {"removed": "directions", "count": int(u.shape[0]), "directions_sha256": digest}
    raise CheckpointError(f"{path}: a gaintseva-mask file needs 'mask', 'removed' or 'directions'")


def mask_probe(path: Path, backbone) -> DetectorHead:
    """The `gaintseva-mask` file as one folded linear detector head."""
    data = _load(path, "gaintseva-mask file")
    dim = backbone.embed_dim
    feature = data.get("feature", "embedding")
    if feature not in ("embedding", "proj"):
        raise CheckpointError(f"{path}: 'feature' is {feature!r}; expected 'embedding' or 'proj'")
    w, b = _probe(data, path, dim)
    proj, details = removal_projection(data, path, dim)
    what = "L2-normalised projected embedding" if feature == "embedding" else "projected embedding"
    n = len(details.get("coordinates", [])) if details["removed"] == "coordinates" else details["count"]
    head = _detector(data, dim, feature, "gaintseva_mask",
                     f"Gaintseva et al. probe on the {what} with {n} {details['removed']} removed "
                     f"(folded: Linear({dim}, 1) with w' = w P)")
    head.details = details
    with torch.no_grad():
        head.linear.weight.copy_((w @ proj).float())
        head.linear.bias.copy_(b.float())
    return head


def _heads_of(backbone) -> tuple[int, int]:
    vc = backbone.config.get("vision_cfg", {})
    width = int(vc.get("width", backbone.width))
    return int(vc.get("layers", 0)), width // int(vc.get("head_width", 64))


def heads_probe(path: Path, backbone) -> DetectorHead:
    """The `gaintseva-heads` file as a detector head reading the attention-head tap."""
    data = _load(path, "gaintseva-heads file")
    taps = data.get("heads")
    if not isinstance(taps, (list, tuple)) or not taps or not all(
            isinstance(t, (list, tuple)) and len(t) == 2 for t in taps):
        raise CheckpointError(f"{path}: 'heads' must be a non-empty list of [layer, head] pairs")
    taps = [(int(t[0]), int(t[1])) for t in taps]
    layers, n_heads = _heads_of(backbone)
    bad = [t for t in taps if not (0 <= t[0] < layers and 0 <= t[1] < n_heads)]
    if bad:
        raise CheckpointError(f"{path}: heads {bad} do not exist in this tower ({layers} layers of {n_heads} heads)")
    if len(set(taps)) != len(taps):
        raise CheckpointError(f"{path}: 'heads' names a (layer, head) pair twice")
    dim = backbone.embed_dim * len(taps)
    w, b = _probe(data, path, dim)
    head = _detector(data, dim, "attn_heads", "gaintseva_heads",
                     f"Gaintseva et al. attention-head probe: Linear({dim}, 1) over the direct contributions of "
                     f"{len(taps)} heads (layer, head) {taps} to the projected CLS token")
    head.taps = taps
    head.details = {"heads": [list(t) for t in taps]}
    with torch.no_grad():
        head.linear.weight.copy_(w.float())
        head.linear.bias.copy_(b.float())
    return head
