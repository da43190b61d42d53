"""What one `clipscan bench` run measures and for how long.

`BenchConfig` holds every setting (the CLI fills it from its options), `check_config` refuses
settings that cannot run before anything is loaded, and `parse_list` reads the CLI's comma lists.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from clipscan.runtime.errors import InputNotFoundError, InvalidArgumentError
from clipscan.runtime.scanner import DECODE_MODES

# --mode -> what is timed
MODES = {
    "model": "inference on preprocessed batches in memory",
    "e2e": "read, decode, preprocess, infer and postprocess through the Scanner",
    "both": "model, then e2e",
}
# the e2e runs time one decoding each: the Scanner's modes but "auto" (the artifact's pick of the two)
DECODES = {name: text for name, text in DECODE_MODES.items() if name != "auto"}


def parse_list(text: str, cast=str) -> list:
    """'1, 8,32' -> [1, 8, 32] with `cast`; an empty list is an error."""
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    if not items:
        raise InvalidArgumentError(f"empty list: {text!r}; give one or more values separated by commas")
    try:
        return [cast(t) for t in items]
    except ValueError:
        raise InvalidArgumentError(f"{text!r}: every item must be a {cast.__name__}") from None


@dataclass
class BenchConfig:
    models: list[str]
    batch_sizes: list[int] = field(default_factory=lambda: [1, 8, 32])
    backends: list[str] | None = None        # None: every available backend
    mode: str = "both"                        # model | e2e | both
    images: str | None = None
    torch_arch: str | None = None
    torch_weights: str | None = None
    torch_heads: list[str] = field(default_factory=list)
    torch_resize_mode: str | None = None     # the PyTorch original's one resize for every head (--resize-mode)
    quick_gelu: bool | None = None
    warmup: int = 2
    min_iters: int = 10
    min_seconds: float = 2.0
    max_seconds: float = 20.0
    e2e_passes: int = 3
    settle_seconds: float = 0.2               # untimed calls at the start of each candidate's turn
    block_seconds: float = 0.5                # timed calls per candidate's turn (at least one)
    cold_start: bool = True
    camera: int = 0                           # > 0: also run the 12 MP section with this many images
    camera_size: tuple[int, int] = (4000, 3000)
    camera_dir: str | None = None
    camera_models: list[str] | None = None   # artifacts of the camera section (default: every artifact)
    decode: str = "exact"                     # decode option of the e2e ONNX Runtime runs
    workers: int | None = None
    spin: bool = True                         # ONNX Runtime worker threads spin between calls (e2e and camera runs)
    skip_unavailable: bool = False            # an asked-for part that cannot run here is skipped (noted), not an error
    profile: bool = False                     # ONNX Runtime's profiler per artifact, and the GEMM ceilings

    @property
    def wants_torch(self) -> bool:
        """Whether a PyTorch reference was asked for (all three of arch, weights and heads are needed)."""
        return bool(self.torch_weights or self.torch_arch)

    @property
    def modes(self) -> tuple[str, ...]:
        return ("model", "e2e") if self.mode == "both" else (self.mode,)


def check_config(cfg: BenchConfig) -> None:
    """Raise InvalidArgumentError / InputNotFoundError for settings that cannot run."""
    if cfg.mode not in MODES:
        raise InvalidArgumentError(f"mode must be one of {', '.join(MODES)}, got {cfg.mode!r}")
    if cfg.decode not in DECODES:
        raise InvalidArgumentError(f"decode must be one of {', '.join(DECODES)}, got {cfg.decode!r}")
    if any(b < 1 for b in cfg.batch_sizes):
        raise InvalidArgumentError(f"batch sizes must be >= 1, got {list(cfg.batch_sizes)}")
    for m in cfg.models:
        if not Path(m).is_file():
            raise InputNotFoundError(f"model file {m} does not exist; pass the .onnx file written by `clipscan export`")
    if cfg.images and not Path(cfg.images).exists():
        raise InputNotFoundError(f"image folder {cfg.images} does not exist; pass an existing folder (or no --images)")
    if cfg.wants_torch and not (cfg.torch_weights and cfg.torch_heads):   # arch: a Hugging Face folder has its own
        raise InvalidArgumentError("the PyTorch reference needs --torch-weights and --torch-heads (and --torch-arch "
                                   "unless the weights are a Hugging Face CLIP folder)")
