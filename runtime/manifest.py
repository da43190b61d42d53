"""The manifest: versioned JSON stored in the ONNX file's `metadata_props`.

The artifact is the only thing that travels between export, calibration and the runtime, so the
manifest records everything needed to run the model exactly as it was trained: input spec, preprocessing
recipe, heads and their meaning, precision, tool versions and hashes of the sources. It is parsed with
`json.loads` and validated here; nothing is ever evaluated.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from .errors import ManifestError
from .manifest_checks import (MANIFEST_LIMITS, bounded, count, finite, json_depth_ok, limit, names,  # noqa: F401
                              need, objects, optional, size, text)
from .own_size import NATIVE, NATIVE_HELP, OWN_SIZE_MAX_PIXELS, OwnSize, fits  # noqa: F401

METADATA_KEY = "clipscan.manifest"
FORMAT = "clipscan.manifest"
SCHEMA_VERSION = 1
SUPPORTED_SCHEMA_VERSIONS = (1,)

# resize step of the preprocessing -> what it does (runtime.preprocess.resized_size)
RESIZE_MODES = {
    "shortest": "scale the shorter side to the target, keeping the aspect ratio (then crop)",
    "longest": "scale the longer side to the target, keeping the aspect ratio (then crop or pad)",
    "squash": "scale both sides to the target, changing the aspect ratio",
    "none": "the crop reads the image at its own size (no resize)",
}
CROP_MODES = ("center", "sliding", "none")
# a centre crop's offset (size - crop) / 2 when not whole: round() to even (torchvision) or down (albumentations)
CROP_OFFSETS = ("round", "floor")
INTERPOLATIONS = ("bicubic", "bilinear", "nearest", "lanczos", "box", "hamming")
EXIF_POLICIES = ("apply", "ignore")
ALPHA_POLICIES = ("drop",)
BIT_DEPTH_POLICIES = ("rescale", "clip")
CONVERT_WHEN = ("decode", "after_crop")
HEAD_TASKS = ("detection", "quality", "attribution")
DECISION_TASKS = ("detection", "attribution")   # heads that decide real vs generated (runtime.postprocess)
# the row's decision over every decision head -> its rule (runtime.postprocess.decide)
ENSEMBLE_RULES = {
    "mean_logit": "p = sigmoid(mean of the heads' logits), generated when p >= the ensemble threshold",
    "any": "generated when any head says so, each at its own threshold",
    "all": "generated when every head says so, each at its own threshold",
}
# the artifact's arithmetic -> what it means
PRECISIONS = {
    "fp32": "float32 weights and compute",
    "fp16": "float16 weights and compute; LayerNorm/Softmax, the tower's projection, heads and outputs in float32",
    "int8": "INT8 QDQ (quantize/dequantize pairs), written by clipscan calibrate",
}

# `--resize-mode` of export, verify, calibrate and evaluate: the manifest's resize modes and NATIVE (runtime.own_size)
RESIZE_CHOICES = {**RESIZE_MODES, NATIVE: NATIVE_HELP}

# Constants open_clip uses; recorded in manifests, never assumed by the runtime.
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class InputSpec:
    name: str
    size: tuple[int, int]               # (height, width); with own_size, only the size export traced and checked
    layout: str = "NCHW"
    dtype: str = "float32"
    color: str = "RGB"
    # None when normalisation is folded into the graph, which then takes 0..255 pixel values
    mean: tuple[float, float, float] | None = OPENAI_CLIP_MEAN
    std: tuple[float, float, float] | None = OPENAI_CLIP_STD
    own_size: OwnSize | None = None     # set: the graph's height and width are dynamic (each image's own)

    @property
    def folded(self) -> bool:
        return self.mean is None

    def spatial(self) -> tuple[int, int]:
        """(height, width) of the graph input as a shape: -1 for each when images keep their own size."""
        return (-1, -1) if self.own_size else tuple(self.size)

    def to_dict(self) -> dict:
        norm: Any = "folded" if self.folded else {"mean": list(self.mean), "std": list(self.std)}
        return {"name": self.name, "layout": self.layout, "dtype": self.dtype, "color": self.color,
                "size": list(self.size), "normalize": norm,
                **({"own_size": self.own_size.to_dict()} if self.own_size else {})}

    @classmethod
    def from_dict(cls, d: dict) -> "InputSpec":
        w = "input"
        name = need(d, "name", w, str)
        layout = need(d, "layout", w, str, ("NCHW",))
        dtype = need(d, "dtype", w, str, ("float32", "uint8"))
        color = need(d, "color", w, str, ("RGB",))
        side = size(need(d, "size", w, (list, int)), "input.size")
        norm = need(d, "normalize", w, (dict, str))
        own = OwnSize.from_dict(d["own_size"]) if d.get("own_size") is not None else None
        if dtype == "uint8" and norm != "folded":
            raise ManifestError("manifest field 'input.normalize' must be 'folded' when input.dtype is uint8")
        if norm == "folded":
            return cls(name, side, layout, dtype, color, None, None, own)
        if not isinstance(norm, dict):
            raise ManifestError(f"manifest field 'input.normalize' is {norm!r}; expected 'folded' or {{mean, std}}")
        stats = []
        for key in ("mean", "std"):
            v = need(norm, key, "input.normalize", list)
            if len(v) != 3:
                raise ManifestError(f"manifest field 'input.normalize.{key}' should be 3 numbers, found {v!r}")
            v = [finite(x, f"input.normalize.{key}[{i}]") for i, x in enumerate(v)]
            if key == "std" and min(v) <= 0:
                raise ManifestError(f"manifest field 'input.normalize.std' should be 3 numbers > 0, found {v!r}")
            stats.append(tuple(v))
        return cls(name, side, layout, dtype, color, stats[0], stats[1], own)


@dataclass(frozen=True)
class PreprocessSpec:
    """How a decoded image becomes the model input, in the order applied.

    1. orientation: EXIF orientation applied ("apply") or ignored ("ignore");
       the first frame of an animated file;
    2. bit depth: images of more than 8 bits per sample (16-bit, 32-bit int, float)
       are rescaled to 8 bits ("rescale": 16-bit values / 257, floats in [0, 1] x 255)
       or handed to PIL's own conversion, which clips at 255 ("clip");
    3. RGB conversion (alpha dropped, as PIL's convert does) right after decoding
       ("decode": what `Image.open(p).convert("RGB")` training loaders feed the
       transform) or after the crop ("after_crop": open_clip's transform applied to
       an image in its decoded mode; differs only for palette, grey and 1-bit images
       that are resized or padded);
    4. resize (mode, size, interpolation);
    5. crop: "center" crops `crop_size` from the middle, padding with `pad_fill` where
       the image is smaller (torchvision's CenterCrop; `crop_offsets` "floor" rounds a
       half-pixel offset down, as albumentations does); "sliding" takes every
       `crop_size` window at `stride` (plus one flush with the far edge, padding
       small images as "center" does; at most `max_per_axis` evenly spaced windows
       per axis) and the runtime averages the crops' outputs (`graph_crops`: runtime.graph_crops);
    6. scale to [0, 1] and normalise with the input spec's mean/std (unless folded
       into the graph), in float32 as torchvision computes them.
    """
    resize_mode: str = "shortest"
    resize_size: tuple[int, int] = (224, 224)
    interpolation: str = "bicubic"
    crop_mode: str = "center"
    crop_size: tuple[int, int] = (224, 224)
    pad_fill: int = 0
    crop_offsets: str = "round"       # CROP_OFFSETS; written to the manifest only when not "round"
    exif_orientation: str = "apply"
    alpha: str = "drop"
    frame: str = "first"
    bit_depth: str = "rescale"
    convert_when: str = "decode"
    stride: int = 64                  # sliding crops only
    max_per_axis: int = 8             # sliding crops only
    graph_crops: dict | None = None   # crops the graph cuts from its input (runtime.graph_crops); written when set

    def to_dict(self) -> dict:
        crop: dict[str, Any] = {"mode": self.crop_mode, "size": list(self.crop_size), "pad_fill": self.pad_fill}
        if self.crop_mode == "sliding":
            crop.update(stride=self.stride, max_per_axis=self.max_per_axis, aggregate="mean")
        if self.crop_offsets != "round":
            crop["offsets"] = self.crop_offsets
        return {
            "exif_orientation": self.exif_orientation,
            "frame": self.frame,
            "bit_depth": self.bit_depth,
            "resize": {"mode": self.resize_mode, "size": list(self.resize_size), "interpolation": self.interpolation},
            "crop": crop,
            "convert": {"color": "RGB", "alpha": self.alpha, "when": self.convert_when},
            **({"graph_crops": self.graph_crops} if self.graph_crops is not None else {}),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "PreprocessSpec":
        w = "preprocess"
        resize = need(d, "resize", w, dict)
        crop = need(d, "crop", w, dict)
        convert = need(d, "convert", w, dict)
        pad_fill = need(crop, "pad_fill", "preprocess.crop", int)
        if not 0 <= pad_fill <= 255:
            raise ManifestError(f"manifest field 'preprocess.crop.pad_fill' should be 0..255, found {pad_fill}")
        crop_mode = need(crop, "mode", "preprocess.crop", str, CROP_MODES)
        sliding = {}
        if crop_mode == "sliding":
            need(crop, "aggregate", "preprocess.crop", str, ("mean",))
            for key in ("stride", "max_per_axis"):
                value = need(crop, key, "preprocess.crop", int)
                sliding[key] = bounded(value, f"preprocess.crop.{key}",
                                       "image_side" if key == "stride" else "windows_per_axis")
        return cls(
            resize_mode=need(resize, "mode", "preprocess.resize", str, RESIZE_MODES),
            resize_size=size(need(resize, "size", "preprocess.resize", (list, int)), "preprocess.resize.size"),
            interpolation=need(resize, "interpolation", "preprocess.resize", str, INTERPOLATIONS),
            crop_mode=crop_mode,
            crop_size=size(need(crop, "size", "preprocess.crop", (list, int)), "preprocess.crop.size"),
            pad_fill=pad_fill,
            crop_offsets=need(crop, "offsets", "preprocess.crop", str, CROP_OFFSETS) if "offsets" in crop else "round",
            exif_orientation=need(d, "exif_orientation", w, str, EXIF_POLICIES),
            alpha=need(convert, "alpha", "preprocess.convert", str, ALPHA_POLICIES),
            convert_when=need(convert, "when", "preprocess.convert", str, CONVERT_WHEN),
            frame=need(d, "frame", w, str, ("first",)),
            bit_depth=need(d, "bit_depth", w, str, BIT_DEPTH_POLICIES),
            graph_crops=d.get("graph_crops"), **sliding,
        )


@dataclass(frozen=True)
class HeadSpec:
    """One head of the graph. `outputs` maps a role to a graph output name.

    detection: roles "logit" (raw score) and "probability" (sigmoid of it); the verdict is labels[1] when
    probability >= threshold, else labels[0].
    quality: role "score", a value on `scale` (e.g. a MOS from 1 to 5).
    attribution: "class_probs" (N, K) over `labels`, labels[0] the real class; "probability" = 1 - p(real) =
    sigmoid("logit"); verdict "generated" when probability >= threshold, generator the most probable other label.
    """
    name: str
    task: str
    outputs: dict[str, str]
    labels: tuple[str, ...] = ()
    threshold: float | None = None
    scale: dict[str, Any] | None = None
    description: str = ""
    details: dict[str, Any] | None = None   # what the head was built from (e.g. removed embedding components)

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"name": self.name, "task": self.task, "outputs": dict(self.outputs)}
        if self.labels:
            d["labels"] = list(self.labels)
        if self.threshold is not None:
            d["threshold"] = self.threshold
        if self.scale is not None:
            d["scale"] = dict(self.scale)
        if self.description:
            d["description"] = self.description
        if self.details:
            d["details"] = dict(self.details)
        return d

    @classmethod
    def from_dict(cls, d: dict, index: int) -> "HeadSpec":
        w = f"heads[{index}]"
        task = need(d, "task", w, str, HEAD_TASKS)
        outputs = names(need(d, "outputs", w, dict), f"{w}.outputs")
        needed = {"detection": ("logit", "probability"), "quality": ("score",),
                  "attribution": ("logit", "probability", "class_probs")}[task]
        for role in needed:
            need(outputs, role, f"{w}.outputs", str)
        details = optional(d, "details", w, dict)
        head = cls(name=need(d, "name", w, str), task=task, outputs=outputs,
                   description=text(optional(d, "description", w, str, ""), f"{w}.description"), details=details)
        if task in DECISION_TASKS:
            labels = need(d, "labels", w, list)
            count(labels, f"{w}.labels", "labels")
            if task == "detection" and len(labels) != 2 or len(labels) < 2 or not all(isinstance(x, str) for x in labels):
                want = "[negative, positive]" if task == "detection" else "[real, generator, ...]"
                raise ManifestError(f"manifest field '{w}.labels' should be {want} strings, found {labels!r}")
            for i, label in enumerate(labels):
                text(label, f"{w}.labels[{i}]", "name_chars")
            threshold = finite(need(d, "threshold", w, (int, float)), f"{w}.threshold")
            if not 0.0 <= threshold <= 1.0:
                raise ManifestError(f"manifest field '{w}.threshold' is a probability threshold in [0, 1], found {threshold}")
            return cls(head.name, task, head.outputs, tuple(labels), threshold, None, head.description, details)
        scale = need(d, "scale", w, dict)
        need(scale, "kind", f"{w}.scale", str)
        for key in ("min", "max"):
            if key in scale:
                finite(scale[key], f"{w}.scale.{key}")
        return cls(head.name, task, head.outputs, (), None, dict(scale), head.description, details)


def _embedding(d) -> dict | None:
    """The manifest's `embedding` ({output, dim, normalized}), or None when the model exports none."""
    if d is None:
        return None
    need(d, "output", "embedding", str)
    bounded(need(d, "dim", "embedding", int), "embedding.dim", "embedding_dim")
    optional(d, "normalized", "embedding", bool)
    return d


def _decision(d, heads) -> dict | None:
    """The manifest's `decision`, checked against its heads."""
    if d is None:
        return None
    names = [h.name for h in heads if h.task in DECISION_TASKS]
    if not isinstance(d, dict) or len(d.keys() & {"primary", "ensemble"}) != 1:
        raise ManifestError(f"manifest field 'decision' should be {{'primary': NAME}} or {{'ensemble': RULE, "
                            f"'threshold': T}}, found {d!r}")
    if "primary" in d and d["primary"] not in names:
        raise ManifestError(f"manifest field 'decision.primary' is {d['primary']!r}; the decision heads are {names}")
    if "ensemble" in d:
        if d["ensemble"] not in ENSEMBLE_RULES:
            raise ManifestError(f"manifest field 'decision.ensemble' is {d['ensemble']!r}; expected one of "
                                f"{list(ENSEMBLE_RULES)}")
        t = d.get("threshold", 0.5)
        if not isinstance(t, (int, float)) or isinstance(t, bool) or not 0.0 <= t <= 1.0:
            raise ManifestError(f"manifest field 'decision.threshold' is a probability in [0, 1], found {t!r}")
        if len(names) < 2:
            raise ManifestError(f"manifest field 'decision.ensemble' needs two or more decision heads; found {names}")
    return dict(d)


@dataclass(frozen=True)
class Manifest:
    name: str
    input: InputSpec
    preprocess: PreprocessSpec
    heads: tuple[HeadSpec, ...]
    backbone: dict[str, Any]
    embedding: dict[str, Any] | None = None
    precision: str = "fp32"
    opset: int = 18
    description: str = ""
    tools: dict[str, str] = field(default_factory=dict)
    sources: dict[str, Any] = field(default_factory=dict)
    calibration: dict[str, Any] | None = None
    decoding: dict[str, Any] | None = None    # evidence about decoding shortcuts, e.g. {"draft": {...passed...}}
    # a row's verdict: {"primary": head name} or {"ensemble": rule, "threshold": t}; None: first decision head
    decision: dict[str, Any] | None = None
    created_utc: str = ""
    schema_version: int = SCHEMA_VERSION

    def head(self, task: str) -> HeadSpec | None:
        """The first head of a task ("detection", "quality", "attribution"), or None."""
        return next((h for h in self.heads if h.task == task), None)

    def decision_heads(self) -> list[HeadSpec]:
        return [h for h in self.heads if h.task in DECISION_TASKS]

    def decision_head(self) -> HeadSpec | None:
        """The primary decision head (the row's p_generated/logit/verdict unless an ensemble rule decides):
        the one `decision.primary` names, else the first detection or attribution head."""
        name = (self.decision or {}).get("primary")
        heads = self.decision_heads()
        return next((h for h in heads if h.name == name), None) if name else (heads[0] if heads else None)

    @property
    def ensemble(self) -> str | None:
        return (self.decision or {}).get("ensemble")

    def draft_decoding_record(self) -> dict | None:
        """The recorded check of reduced-size (draft) JPEG decoding against exact decoding for this
        artifact (written by `clipscan verify --draft-check --record-draft`), or None."""
        rec = (self.decoding or {}).get("draft")
        return rec if isinstance(rec, dict) else None

    def output_names(self) -> list[str]:
        names = [n for h in self.heads for n in h.outputs.values()]
        if self.embedding:
            names.append(self.embedding["output"])
        return names

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "schema_version": self.schema_version,
            "name": self.name,
            "description": self.description,
            "created_utc": self.created_utc,
            "precision": self.precision,
            "opset": self.opset,
            "input": self.input.to_dict(),
            "preprocess": self.preprocess.to_dict(),
            "backbone": self.backbone,
            "heads": [h.to_dict() for h in self.heads],
            "embedding": self.embedding,
            "tools": self.tools,
            "sources": self.sources,
            "calibration": self.calibration,
            "decoding": self.decoding,
            **({"decision": self.decision} if self.decision else {}),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=False)

    @classmethod
    def from_json(cls, source: str, origin: str = "the model") -> "Manifest":
        if len(source) > limit("manifest_chars"):
            raise ManifestError(f"the manifest in {origin} is {len(source)} characters long, over clipscan's limit of "
                                f"{limit('manifest_chars')}; re-export the model with `clipscan export`")
        try:
            d = json.loads(source)
        except (ValueError, RecursionError) as e:   # ValueError: bad JSON or an integer of too many digits
            why = "nests too deeply" if isinstance(e, RecursionError) else f"is not valid JSON ({e})"
            raise ManifestError(f"the manifest in {origin} {why}; re-export the model with `clipscan export`") from None
        return cls.from_dict(d, origin)

    @classmethod
    def from_dict(cls, d: dict, origin: str = "the model") -> "Manifest":
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise ManifestError(f"{origin} has metadata under '{METADATA_KEY}' that is not a clipscan manifest "
                                f"(format {d.get('format') if isinstance(d, dict) else None!r}, expected {FORMAT!r})")
        version = d.get("schema_version")
        if version not in SUPPORTED_SCHEMA_VERSIONS:
            newer = isinstance(version, int) and version > max(SUPPORTED_SCHEMA_VERSIONS)
            fix = ("upgrade clipscan (pip install -U clipscan) to read it"
                   if newer else "re-export the model with this clipscan (`clipscan export`)")
            raise ManifestError(
                f"{origin} has manifest schema version {version!r}; this clipscan reads "
                f"version(s) {list(SUPPORTED_SCHEMA_VERSIONS)}. To use it, {fix}."
            )
        try:
            json_depth_ok(d)
            heads = need(d, "heads", "manifest", list)
            if not heads:
                raise ManifestError("manifest field 'heads' is empty: a model needs at least one head")
            count(heads, "heads", "heads")
            embedding = _embedding(d.get("embedding"))
            precision = need(d, "precision", "manifest", str, PRECISIONS)
            specs = tuple(HeadSpec.from_dict(h, i) for i, h in enumerate(heads))
            head_names = [h.name for h in specs]
            repeated = sorted({n for n in head_names if head_names.count(n) > 1})
            if repeated:
                raise ManifestError(f"manifest heads share the name(s) {repeated} (heads: {head_names}); every head "
                                    "needs its own name: re-export naming them, e.g. --head fake_a=univfd:A "
                                    "--head fake_b=univfd:B")
            input_spec = InputSpec.from_dict(need(d, "input", "manifest", dict))
            preprocess = PreprocessSpec.from_dict(need(d, "preprocess", "manifest", dict))
            fits(input_spec, preprocess)
            return cls(
                name=need(d, "name", "manifest", str),
                description=text(optional(d, "description", "manifest", str, ""), "description"),
                input=input_spec,
                preprocess=preprocess,
                heads=specs,
                backbone=need(d, "backbone", "manifest", dict),
                embedding=embedding,
                precision=precision,
                opset=bounded(need(d, "opset", "manifest", int), "opset", "opset"),
                tools=names(optional(d, "tools", "manifest", dict, {}), "tools"),
                sources=objects(optional(d, "sources", "manifest", dict, {}), "sources"),
                calibration=optional(d, "calibration", "manifest", dict),
                decoding=optional(d, "decoding", "manifest", dict),
                decision=_decision(d.get("decision"), specs),
                created_utc=text(optional(d, "created_utc", "manifest", str, ""), "created_utc"),
                schema_version=version,
            )
        except ManifestError as e:
            raise ManifestError(f"{origin}: {e}") from None

