"""Image-quality scorers that are prompts over CLIP, as the IQA-PyTorch package (pyiqa) defines them.

- CLIP-IQA (Wang et al. 2023; pyiqa's `clipiqa`): five antonym prompt pairs ("Good image" / "bad
  image", ...), quality = mean over the pairs of softmax(logit_scale * cos(image, [good, bad]))[good].
- CLIP-IQA+ (pyiqa's `clipiqa+`, `clipiqa+_rn50_512`, `clipiqa+_vitL14_512`): one pair, "Good photo.." / "Bad photo.."
  with 16 learned context vectors (CoOp) around the class words.
- LIQE (Zhang et al. 2023; pyiqa's `liqe`, `liqe_mix`): a fine-tuned CLIP ViT-B/32 and the prompts
  "a photo with {q} quality" (mix: "a photo of a {scene} with {distortion} artifacts, which is of {q}
  quality"), softmax over every prompt, quality = sum over the five levels of level x probability (1-5).

The text side never depends on the image: every prompt is encoded here, once, with the checkpoint's
own text tower, and the graph holds only the resulting constant matrix.

pyiqa's own CLIP adds the image tower's positional embedding only when asked (`pos_embedding=True`,
the `_512` CLIP-IQA+ variants and LIQE), resized bicubically to the input's token count; without it
(plain CLIP-IQA and the RN50 CLIP-IQA+) no positional embedding is added at all. pyiqa runs an image
at its own size; clipscan's graph has one fixed input unless export is given --resize-mode native:
the tower's own size for CLIP-IQA and the bare-context CLIP-IQA+ (no embedding to resize), 512x384
for the `_512` files (KonIQ-10k's frame they were trained and validated on; the embedding resized as
pyiqa resizes it, once, at export: export.graph.resample_positional_embedding), and for LIQE its 15
test-time crops of a fixed 1024x768 input, cut in the graph (export.view_crops; docs/guides/export.md,
"Quality scorers from IQA-PyTorch"). With --resize-mode native, CLIP-IQA, CLIP-IQA+ (the `_512` files
with their embedding resampled in the graph to each image's token count) and LIQE run at each image's
own size as pyiqa does (export.native_size).
"""
from __future__ import annotations

from itertools import product

from clipscan.runtime.errors import CheckpointError
from clipscan.runtime.manifest import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, HeadSpec

from .deps import require

torch = require("torch")

# pyiqa's CLIPIQA.prompt_pairs: (good, bad) in this order
CLIPIQA_PAIRS = (("Good image", "bad image"), ("Sharp image", "blurry image"), ("sharp edges", "blurry edges"),
                 ("High resolution image", "low resolution image"), ("Noise-free image", "noisy image"))
CLIPIQA_PLUS_WORDS = ("Good photo..", "Bad photo..")   # pyiqa's PromptLearner, with its extra "."
CLIPIQA_PLUS_NAME_LEN = 3                                # its hard-coded class length, in tokens
LIQE_QUALITIES = ("bad", "poor", "fair", "good", "perfect")
LIQE_SCENES = ("animal", "cityscape", "human", "indoor", "landscape", "night", "plant", "still_life", "others")
LIQE_DISTORTIONS = ("jpeg2000 compression", "jpeg compression", "noise", "blur", "color", "contrast",
                    "overexposure", "underexposure", "spatial", "quantization", "other")
# what clipscan feeds the tower: the short side to its input size (bicubic, as clip.load), a centre crop
IQA_PREPROCESS = {"resize_mode": "shortest", "interpolation": "bicubic",
                  "mean": list(OPENAI_CLIP_MEAN), "std": list(OPENAI_CLIP_STD)}
NO_POSITIONAL_EMBEDDING = "no_positional_embedding"      # Imported.tower_change: pyiqa's pos_embedding=False
VIEW_CROPS = "view_crops"                                # Imported.tower_change: LIQE's crops, cut in the graph
RESAMPLED_POSITIONAL_EMBEDDING = "resampled_positional_embedding"   # the _512 CLIP-IQA+ files' input, see below
# the input of the _512 CLIP-IQA+ files (height, width): KonIQ-10k's 512x384 release, which pyiqa's training option
# for them reads (random 384 crops) and validates on whole
CLIPIQA_PLUS_512_INPUT = (384, 512)
TOWER_CHANGES = {   # Imported.tower_change -> what it does to the one backbone pass that every head shares
    NO_POSITIONAL_EMBEDDING: "runs the tower without its positional embedding (as IQA-PyTorch does)",
    RESAMPLED_POSITIONAL_EMBEDDING: "runs the tower with its positional embedding resampled to the input's token "
                                    "count (as IQA-PyTorch does: on a 512x384 input, or on each image's own size with "
                                    "--resize-mode native)",
    VIEW_CROPS: "runs the tower on LIQE's test-time crops of a larger input (cut in the graph, logits averaged) "
                "instead of on one view",
}


def liqe_prompts(mix: bool) -> tuple[list[str], list[int]]:
    """(prompts, quality level 1-5 of each) in pyiqa's order: product(qualities, scenes, distortions) for mix."""
    if mix:
        combos = list(product(range(len(LIQE_QUALITIES)), LIQE_SCENES, LIQE_DISTORTIONS))
        return ([f"a photo of a {c} with {d} artifacts, which is of {LIQE_QUALITIES[q]} quality" for q, c, d in combos],
                [q + 1 for q, _, _ in combos])
    return [f"a photo with {q} quality" for q in LIQE_QUALITIES], list(range(1, len(LIQE_QUALITIES) + 1))


class PromptPairsHead(torch.nn.Module):
    """CLIP-IQA: mean over prompt pairs of softmax(scale * cos(image, [good, bad]))[good], in [0, 1].

    softmax([a, b])[0] = sigmoid(a - b), so each pair is one direction scale * (t_good - t_bad).
    """
    task = "quality"

    def __init__(self, good, bad, logit_scale: float, *, name: str, description: str):
        super().__init__()
        good, bad = (torch.nn.functional.normalize(torch.as_tensor(t, dtype=torch.float32), dim=-1)
                     for t in (good, bad))
        if good.shape != bad.shape or good.ndim != 2:
            raise CheckpointError(f"need as many 'good' as 'bad' text features, got {tuple(good.shape)} and "
                                  f"{tuple(bad.shape)}")
        self.register_buffer("directions", (good - bad) * float(logit_scale))
        self.logit_scale = float(logit_scale)
        self.scale = {"kind": "probability", "min": 0.0, "max": 1.0}
        self.feature = "embedding"
        self.name = name
        self.output_names = ["quality"]
        self.description = description

    def forward(self, emb):
        return (torch.sigmoid(emb @ self.directions.T).mean(dim=-1),)

    def spec(self) -> HeadSpec:
        return HeadSpec(name=self.name, task="quality", outputs={"score": self.output_names[0]},
                        scale=dict(self.scale), description=self.description)


class PromptLevelsHead(torch.nn.Module):
    """LIQE: softmax(scale * cos(image, prompts)) over every prompt; score = sum of level x probability."""
    task = "quality"

    def __init__(self, text, levels: list[int], logit_scale: float, *, name: str, description: str, crops=None):
        super().__init__()
        text = torch.nn.functional.normalize(torch.as_tensor(text, dtype=torch.float32), dim=-1)
        if text.ndim != 2 or text.shape[0] != len(levels):
            raise CheckpointError(f"need one text feature per prompt: {tuple(text.shape)} for {len(levels)} prompts")
        self.register_buffer("text", text * float(logit_scale))
        self.register_buffer("levels", torch.tensor(levels, dtype=torch.float32))
        self.logit_scale = float(logit_scale)
        self.scale = {"kind": "mos", "min": float(min(levels)), "max": float(max(levels))}
        self.feature = "embedding"
        self.name = name
        self.output_names = ["quality"]
        self.description = description
        self.crops = crops      # export.view_crops.ViewCrops: the graph feeds the mean over its crops

    def forward(self, emb):
        return (torch.softmax(emb @ self.text.T, dim=-1) @ self.levels,)

    def spec(self) -> HeadSpec:
        return HeadSpec(name=self.name, task="quality", outputs={"score": self.output_names[0]},
                        scale=dict(self.scale), description=self.description)


def clipiqa_head(encoder) -> PromptPairsHead:
    text = encoder.encode([p for pair in CLIPIQA_PAIRS for p in pair])
    return PromptPairsHead(text[0::2], text[1::2], encoder.logit_scale, name="clip_iqa",
                           description="CLIP-IQA (pyiqa clipiqa): mean over 5 antonym prompt pairs of "
                                       "softmax(logit_scale x cosine)[good]; score in [0, 1]; the tower adds no "
                                       "positional embedding (pyiqa's pos_embedding=False)")


def learned_context(data, width: int, source) -> tuple[object, object, object, bool]:
    """(ctx (2, n_ctx, width), token_prefix or None, token_suffix or None, pos_embedding) of a CLIP-IQA+ file.

    pyiqa's RN50 file is the bare ctx tensor (used with pos_embedding=False); the `_512` files are
    {"params": {"prompt_learner.ctx", "prompt_learner.token_prefix", "prompt_learner.token_suffix"}}
    (used with pos_embedding=True).
    """
    if hasattr(data, "shape"):
        ctx, prefix, suffix, pos = data, None, None, False
    else:
        if isinstance(data, dict) and isinstance(data.get("params"), dict):
            data = data["params"]
        keys = [k for k in (data if isinstance(data, dict) else {}) if k.split(".")[-1] == "ctx"]
        if len(keys) != 1:
            found = sorted(data)[:8] if isinstance(data, dict) else type(data).__name__
            raise CheckpointError(f"{source}: expected CLIP-IQA+'s learned context (a tensor, or params with "
                                  f"prompt_learner.ctx); found {found}")
        base = keys[0][: -len("ctx")]
        ctx, prefix, suffix, pos = data[keys[0]], data.get(base + "token_prefix"), data.get(base + "token_suffix"), True
    if ctx.ndim == 2:
        ctx = ctx.unsqueeze(0).expand(2, -1, -1)
    if ctx.ndim != 3 or ctx.shape[0] != 2 or ctx.shape[2] != width:
        raise CheckpointError(f"{source}: CLIP-IQA+'s context is {list(ctx.shape)}; the text tower needs "
                              f"[2, n_ctx, {width}] (good, bad): check --arch/--weights")
    return ctx.float(), prefix, suffix, pos


def clipiqa_plus_text(encoder, ctx, prefix=None, suffix=None):
    """The (good, bad) text features of pyiqa's PromptLearner.get_prompts_with_middle_class, normalised.

    Each prompt "X x n_ctx Good photo.." is tokenised; its embeddings become [SOS, ctx[:n/2], the 3
    class tokens, ctx[n/2:], the rest]. The file's own token_prefix/suffix are used when it has them.
    """
    m = encoder.model
    n_ctx = int(ctx.shape[1])
    tokens = encoder.tokens([" ".join(["X"] * n_ctx) + " " + w for w in CLIPIQA_PLUS_WORDS])
    with torch.no_grad():
        emb = m.token_embedding(tokens)
        prefix = emb[:, :1] if prefix is None else prefix.to(emb.dtype)
        suffix = emb[:, 1 + n_ctx:] if suffix is None else suffix.to(emb.dtype)
        if tuple(prefix.shape) != tuple(emb[:, :1].shape) or tuple(suffix.shape) != tuple(emb[:, 1 + n_ctx:].shape):
            raise CheckpointError(f"CLIP-IQA+'s token_prefix/suffix {list(prefix.shape)}/{list(suffix.shape)} do not "
                                  f"fit this text tower (context length {emb.shape[1]}, width {emb.shape[2]})")
        half, k = n_ctx // 2, CLIPIQA_PLUS_NAME_LEN
        prompts = torch.cat([prefix, ctx[:, :half], suffix[:, :k], ctx[:, half:], suffix[:, k:]], dim=1)
        return encoder.encode_embeddings(prompts, tokens)


def clipiqa_plus_head(encoder, data, source) -> tuple[PromptPairsHead, bool]:
    ctx, prefix, suffix, pos = learned_context(data, encoder.width, source)
    text = clipiqa_plus_text(encoder, ctx, prefix, suffix)
    head = PromptPairsHead(text[:1], text[1:], encoder.logit_scale, name="clip_iqa_plus",
                           description=f"CLIP-IQA+ (pyiqa clipiqa+): softmax(logit_scale x cosine) of 'Good photo' "
                                       f"vs 'Bad photo' with {ctx.shape[1]} learned context vectors; score in [0, 1]"
                                       + ("; on a 512x384 input, the tower's positional embedding resized to "
                                          "its token count (pyiqa's pos_embedding=True)" if pos else
                                          "; the tower adds no positional embedding (pyiqa's pos_embedding=False)"))
    return head, pos


def liqe_head(encoder, mix: bool, crops) -> PromptLevelsHead:
    prompts, levels = liqe_prompts(mix)
    (h, w), n = crops.input_size, len(crops.origins())
    text = encoder.encode(prompts)
    what = (f"{len(prompts)} prompts (quality x scene x distortion)" if mix else
            f"{len(prompts)} prompts 'a photo with {{q}} quality'")
    return PromptLevelsHead(text, levels, encoder.logit_scale, name="liqe_mix" if mix else "liqe",
                            description=f"LIQE (pyiqa liqe{'_mix' if mix else ''}): softmax(logit_scale x cosine) "
                                        f"over {what}; score = sum of quality level (1-5) x probability; the logits "
                                        f"averaged over {n} {crops.tile} crops of a {w}x{h} input (pyiqa's "
                                        f"evenly spaced crops at stride {crops.stride}), cut in the graph",
                            crops=crops)
