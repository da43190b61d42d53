"""One module, one backbone pass, every head: what gets written to ONNX."""
from __future__ import annotations

from clipscan.runtime.errors import CheckpointError, InvalidArgumentError

from .deps import require
from .tower_kind import MODIFIED_RESNET, require_vit, tower_kind, vit_only_reason
from .view_crops import mean_per_image

torch = require("torch")
F = torch.nn.functional

INPUT_NAME = "pixels"
OUT_EMBEDDING = "embedding"
LN2_FEATURE = "block_ln2_cls"     # heads.FEATURES: the class token of every block's ln_2 output


PROMPTS_ATTR = "clipscan_visual_prompts"


def set_visual_prompts(visual, prompts) -> None:
    """Give a tower deep visual prompts: (layers, n_prompts, width), constant tokens inserted at every layer."""
    require_vit(visual, "deep visual prompts", "a head with visual prompts needs its ViT")
    layers = len(visual.transformer.resblocks)
    width = visual.transformer.width
    if prompts.ndim != 3 or prompts.shape[0] != layers or prompts.shape[2] != width:
        raise CheckpointError(f"visual prompts of shape {tuple(prompts.shape)} do not fit a tower of {layers} layers "
                              f"and width {width} (expected ({layers}, n_prompts, {width}))")
    visual.register_buffer(PROMPTS_ATTR, prompts.detach().float().clone())


OWN_SIZE_ATTR = "clipscan_own_size"   # set on a tower: any input height and width, its positional embedding as below
OWN_SIZE_BARE = "no_positional_embedding"          # none at all (pyiqa's pos_embedding=False)
OWN_SIZE_RESAMPLED = "resampled_positional_embedding"   # resampled to each input's token count (pos_embedding=True)


def drop_positional_embedding(visual, *, own_size: bool = False) -> None:
    """A tower that adds no positional embedding (IQA-PyTorch's CLIP with pos_embedding=False): zeros in its place.

    A ViT adds it to its patch tokens; a ModifiedResNet only in its attention pool (pyiqa's
    AttentionPool2d skips the addition there), so that one is zeroed. With `own_size` the addition is
    left out of the forward instead (TappedVisual), so the tower takes any height and width: the token
    count then follows the image, and a zero embedding of the tower's own length would not fit it."""
    if own_size:
        setattr(visual, OWN_SIZE_ATTR, OWN_SIZE_BARE)
    with torch.no_grad():
        if tower_kind(visual) == MODIFIED_RESNET:
            visual.attnpool.positional_embedding.zero_()
        else:
            visual.positional_embedding.zero_()


def resample_positional_embedding(visual, image_size) -> None:
    """The tower on an input of `image_size` (height, width) as IQA-PyTorch's CLIP with pos_embedding=True runs it,
    in place: its positional embedding, a (tokens, width) matrix, resized to the token count of that input by
    F.interpolate(mode="bicubic") of the matrix as one 2-D image to (tokens', width), i.e. along the flattened
    token row (the class or mean token included), not over the 2-D grid; the width axis is unchanged. A ViT
    adds it to its patch tokens, a ModifiedResNet in its attention pool. The identity at the tower's own size.
    """
    h, w = (int(s) for s in image_size)
    if tower_kind(visual) == MODIFIED_RESNET:
        owner, stride = visual.attnpool, 32       # the stem and the three strided stages halve the side five times
        if h % stride or w % stride:
            raise InvalidArgumentError(f"a ResNet tower's input must be a multiple of {stride} pixels a side, "
                                       f"not {h}x{w}")
    else:
        owner, stride = visual, visual.conv1.stride[0]   # the patch embedding: kernel = stride, no padding
    tokens = (h // stride) * (w // stride) + 1
    pe = owner.positional_embedding
    if pe.shape[0] == tokens:
        return
    with torch.no_grad():
        resized = embedding_for_tokens(pe.detach().float(), tokens)
    owner.positional_embedding = torch.nn.Parameter(resized.to(pe.dtype), requires_grad=False)


def embedding_for_tokens(pe, tokens):
    """pyiqa's resampling of a (tokens, width) positional embedding to `tokens` rows: F.interpolate of the matrix as
    one 2-D image, bicubic (coefficient -0.75), align_corners=False (half-pixel centres), width unchanged (an
    identity on that axis). `tokens` may be a traced size: the ONNX graph then holds one Resize (mode cubic,
    cubic_coeff_a -0.75, half_pixel) whose sizes come from the input's shape."""
    return F.interpolate(pe[None, None], size=(tokens, pe.shape[1]), mode="bicubic", align_corners=False)[0, 0]


def follow_image_size(visual) -> None:
    """A tower that adds its positional embedding resampled to each input's token count (IQA-PyTorch's CLIP with
    pos_embedding=True at the image's own size), in place: marked for TappedVisual, which then resamples the
    tower's own embedding (untouched here) in the forward, from the token count the input gives."""
    setattr(visual, OWN_SIZE_ATTR, OWN_SIZE_RESAMPLED)


class TappedVisual(torch.nn.Module):
    """An open_clip VisionTransformer run once, giving the pooled token before and after the projection.

    A tower with deep visual prompts (VPT-deep, as CLIP-AGIQA of Fu et al.) gets layer i's
    prompt tokens placed after the class token before block i, replacing the previous ones,
    and dropped after the last block.

    With `lean`, the blocks run `lean_blocks.lean_block` (same function, an ONNX graph with far
    less glue); without it, open_clip's own block forward (what the export check compares against).

    A ModifiedResNet (export.tower_kind) runs its own forward: its attention pool gives the
    projected embedding, and there is no token before the projection (`pooled` is None).
    """

    def __init__(self, visual, *, lean: bool = False, fused_attention: bool = False):
        super().__init__()
        self.resnet = tower_kind(visual) == MODIFIED_RESNET
        if self.resnet and lean:
            raise InvalidArgumentError(f"{vit_only_reason(visual, 'the lean graph')}; export with --graph stock")
        for needed in () if self.resnet else ("_embeds", "transformer", "_pool"):
            if not hasattr(visual, needed):
                raise InvalidArgumentError(f"{type(visual).__name__} is not an open_clip VisionTransformer this "
                                           f"clipscan knows (no {needed}); timm or ConvNeXt towers are not supported "
                                           "yet")
        self.visual = visual
        self.lean = bool(lean)
        self.fused_attention = bool(fused_attention)
        if self.lean:
            from .lean_blocks import lean_unsupported_reason

            why = lean_unsupported_reason(visual.transformer)
            if why:
                raise InvalidArgumentError(f"the lean graph cannot express this tower: {why}; export with --graph "
                                           "stock")

    def _block(self, block, x):
        if self.lean:
            from .lean_blocks import lean_block

            return lean_block(block, x, self.fused_attention)
        t = self.visual.transformer
        return block(x) if getattr(t, "batch_first", True) else block(x.transpose(0, 1)).transpose(0, 1)

    def _prompted(self, x, prompts):
        t = self.visual.transformer
        n = prompts.shape[1]
        for i, block in enumerate(t.resblocks):
            rest = x[:, 1:] if i == 0 else x[:, 1 + n:]
            x = torch.cat([x[:, :1], prompts[i].unsqueeze(0).expand(x.shape[0], -1, -1).to(x.dtype), rest], dim=1)
            x = self._block(block, x)
        return torch.cat([x[:, :1], x[:, 1 + n:]], dim=1)

    def _block_ln2(self, block, x):
        """(block output, the class token of its ln_2 output): open_clip's block forward written out, so
        the MLP's input can be read in the same pass (or the lean block, which hands it over)."""
        if self.lean:
            from .lean_blocks import lean_block

            return lean_block(block, x, self.fused_attention, ln2_cls=True)
        first = getattr(self.visual.transformer, "batch_first", True)
        y = x if first else x.transpose(0, 1)
        y = y + block.ls_1(block.attention(block.ln_1(y)))
        normed = block.ln_2(y)
        y = y + block.ls_2(block.mlp(normed))
        return (y, normed[:, 0]) if first else (y.transpose(0, 1), normed[0])

    def forward_with_taps(self, x, layers: set[int], ln2_cls: list | None = None):
        """(pooled, projected, {layer: the residual entering that block}, the final CLS residual before
        ln_post): the same pass as forward, with the inputs of the `layers` blocks kept for head taps.
        A list given as `ln2_cls` receives the class token of every block's ln_2 output, in block order."""
        v = self.visual
        require_vit(v, "reading features inside the tower", "use heads that read the embedding")
        if getattr(v, PROMPTS_ATTR, None) is not None:
            raise InvalidArgumentError("feature taps inside the tower and deep visual prompts cannot share a tower")
        x = v._embeds(x)
        seen = {}
        for i, block in enumerate(v.transformer.resblocks):
            if i in layers:
                seen[i] = x
            if ln2_cls is None:
                x = self._block(block, x)
            else:
                x, cls = self._block_ln2(block, x)
                ln2_cls.append(cls)
        pooled, _ = v._pool(x)
        projected = pooled @ v.proj if v.proj is not None else pooled
        return pooled, projected, seen, x[:, 0]

    def forward(self, x):
        v = self.visual
        own_size = getattr(v, OWN_SIZE_ATTR, False)
        resampled = own_size == OWN_SIZE_RESAMPLED
        if self.resnet:
            return None, (resnet_at_own_size(v, x, resampled) if own_size else v(x))
        x = embeds_at_own_size(v, x, resampled) if own_size else v._embeds(x)
        prompts = getattr(v, PROMPTS_ATTR, None)
        if prompts is not None:
            tokens = self._prompted(x, prompts)
        elif self.lean:
            from .lean_blocks import lean_transformer

            tokens = lean_transformer(v.transformer, x, self.fused_attention)
        else:
            tokens = v.transformer(x)
        pooled, _ = v._pool(tokens)
        projected = pooled @ v.proj if v.proj is not None else pooled
        return pooled, projected


def embeds_at_own_size(v, x, resampled: bool = False):
    """open_clip's VisionTransformer._embeds at any input height and width of at least one patch: patch
    convolution (it floors: a partial patch at the right or bottom edge is dropped), class token, then, with
    `resampled`, the positional embedding resampled to this input's token count (pyiqa's pos_embedding=True;
    without it none is added: pos_embedding=False), ln_pre."""
    x = v.conv1(x)
    x = x.flatten(2).transpose(1, 2)
    cls = v.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], 1, x.shape[-1])
    x = torch.cat([cls, x], dim=1)
    if resampled:
        x = x + embedding_for_tokens(v.positional_embedding, x.shape[1]).to(x.dtype)
    return v.ln_pre(v.patch_dropout(x))


def resnet_at_own_size(v, x, resampled: bool = False):
    """open_clip's ModifiedResNet forward at any input height and width: the mean token and one token per cell of
    the feature grid into the attention pool, which adds its positional embedding resampled to that token count
    with `resampled` (pyiqa's AttentionPool2d with pos_embedding=True) and none without (pos_embedding=False)."""
    x = v.layer4(v.layer3(v.layer2(v.layer1(v.stem(x)))))
    p = v.attnpool
    x = x.flatten(2).permute(2, 0, 1)                       # (HW, N, C)
    x = torch.cat([x.mean(dim=0, keepdim=True), x], dim=0)
    if resampled:
        x = x + embedding_for_tokens(p.positional_embedding, x.shape[0]).to(x.dtype)[:, None, :]
    out, _ = F.multi_head_attention_forward(
        query=x[:1], key=x, value=x, embed_dim_to_check=x.shape[-1], num_heads=p.num_heads,
        q_proj_weight=p.q_proj.weight, k_proj_weight=p.k_proj.weight, v_proj_weight=p.v_proj.weight,
        in_proj_weight=None, in_proj_bias=torch.cat([p.q_proj.bias, p.k_proj.bias, p.v_proj.bias]), bias_k=None,
        bias_v=None, add_zero_attn=False, dropout_p=0.0, out_proj_weight=p.c_proj.weight,
        out_proj_bias=p.c_proj.bias, use_separate_proj_weight=True, training=False, need_weights=False)
    return out[0]


def fold_normalization(visual, mean, std) -> None:
    """Fold (x / 255 - mean) / std into the patch embedding, in place: the tower then takes 0..255 pixels.

    conv(W, (x/255 - m)/s) = conv(W / (255 s), x) - sum_{c,i,j} W[o,c,i,j] m_c / s_c. The patch
    convolution has no padding (stride = kernel), so the fold is exact up to float rounding.
    """
    conv = visual.conv1
    if conv.padding not in ((0, 0), 0, "valid"):
        what = "the ResNet stem's first convolution" if tower_kind(visual) == MODIFIED_RESNET else "the patch embedding"
        raise InvalidArgumentError(f"cannot fold the normalisation into {what}: it pads its input "
                                   f"(padding={conv.padding}), so the borders would change; export without "
                                   "--uint8-input (the graph then takes normalised float32 pixels)")
    mean_t = torch.tensor(mean, dtype=torch.float64).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float64).view(1, 3, 1, 1)
    w = conv.weight.detach().double()
    bias = -(w * mean_t / std_t).sum(dim=(1, 2, 3))
    if conv.bias is not None:
        bias = bias + conv.bias.detach().double()
    folded = torch.nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, bias=True)
    with torch.no_grad():
        folded.weight.copy_((w / (255.0 * std_t)).float())
        folded.bias.copy_(bias.float())
    visual.conv1 = folded


def _view_crops(heads):
    """The test-time crops (export.view_crops) every head of the graph reads, or None: all or none of them."""
    crops = {getattr(h, "crops", None) for h in heads}
    if len(crops) > 1:
        raise InvalidArgumentError("a head scored on test-time crops (LIQE) changes the backbone pass for the whole "
                                   "artifact, so no head that needs one view can share it: export them as separate "
                                   "artifacts")
    crops = crops.pop()
    if crops is not None and any(h.feature != "embedding" for h in heads):
        raise InvalidArgumentError("heads on test-time crops read the mean of the crops' embeddings only")
    return crops


class ScanGraph(torch.nn.Module):
    """pixels (N,3,H,W) -> every head's outputs, then the L2-normalised embedding.

    With `takes_uint8`, the input is uint8 RGB (normalisation folded into the tower); `lean` picks
    the export-friendly block forward (see `TappedVisual`).
    """

    def __init__(self, visual, heads: list, *, takes_uint8: bool = False, lean: bool = False,
                 fused_attention: bool = False):
        super().__init__()
        if not heads:
            raise InvalidArgumentError("a ScanGraph needs at least one head")
        names = [n for h in heads for n in h.output_names] + [OUT_EMBEDDING]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise InvalidArgumentError(f"two heads write the same graph outputs {dupes}: give them distinct output "
                                       "names")
        self.tower = TappedVisual(visual, lean=lean, fused_attention=fused_attention)
        self.heads = torch.nn.ModuleList(heads)
        self.takes_uint8 = takes_uint8
        self.crops = _view_crops(heads)
        taps = [(layer, hd) for layer, hds in self._taps().items() for hd in hds]
        if taps:
            from .head_tap import tap_unsupported_reason

            why = tap_unsupported_reason(visual, taps)
            if why:
                raise InvalidArgumentError(f"the attention-head probe cannot read this tower: {why}")
        for h in heads:
            if h.feature == "pre_proj_normalized":
                require_vit(visual, f"head {h.name!r}, which reads the token before the projection,",
                            "an attention pool projects as it pools: use a head that reads the embedding")
            if h.feature == LN2_FEATURE:
                from .head_tap import ln2_unsupported_reason

                why = ln2_unsupported_reason(visual, getattr(h, "blocks", None))
                if why:
                    raise InvalidArgumentError(f"head {h.name!r} reads every block's ln_2 output, which this tower "
                                               f"cannot give: {why}")

    @property
    def visual(self):
        return self.tower.visual

    def output_names(self) -> list[str]:
        return [n for h in self.heads for n in h.output_names] + [OUT_EMBEDDING]

    def head(self, task: str):
        return next((h for h in self.heads if h.task == task), None)

    def _taps(self) -> dict[int, list[int]]:
        """layer -> the heads some head probe reads there (sorted)."""
        taps: dict[int, set[int]] = {}
        for h in self.heads:
            for layer, head in getattr(h, "taps", ()):
                taps.setdefault(layer, set()).add(head)
        return {layer: sorted(heads) for layer, heads in sorted(taps.items())}

    def forward(self, pixels):
        x = pixels.to(torch.float32) if self.takes_uint8 else pixels
        taps = self._taps()
        contributions = {}
        ln2 = [] if any(h.feature == LN2_FEATURE for h in self.heads) else None
        if taps or ln2 is not None:
            from .head_tap import head_contributions, through_ln_post

            pooled, projected, seen, residual = self.tower.forward_with_taps(x, set(taps), ln2)
            blocks = self.visual.transformer.resblocks
            for layer, heads in taps.items():
                terms = through_ln_post(self.visual, head_contributions(blocks[layer], seen[layer], heads), residual)
                contributions.update({(layer, hd): terms[:, i] for i, hd in enumerate(heads)})
        elif self.crops is not None:   # batch x crops through the tower; heads get the crops' mean embedding
            pooled, projected = self.tower(self.crops.cut(x))
            mean = mean_per_image(F.normalize(projected, dim=-1), x.shape[0])
            outs = [o for h in self.heads for o in h(mean)]
            return (*outs, F.normalize(mean, dim=-1))
        else:
            pooled, projected = self.tower(x)
        features = {"proj": projected, "embedding": F.normalize(projected, dim=-1)}
        needed = {h.feature for h in self.heads}
        if "pre_proj_normalized" in needed:
            features["pre_proj_normalized"] = F.normalize(pooled, dim=-1)
        if ln2 is not None:
            features[LN2_FEATURE] = torch.stack(ln2, dim=1)          # (B, blocks, width)
        outs = []
        for h in self.heads:
            if h.feature == "attn_heads":
                outs.extend(h(torch.cat([contributions[tuple(t)] for t in h.taps], dim=-1)))
            else:
                outs.extend(h(features[h.feature]))
        outs.append(features["embedding"])
        return tuple(outs)
