"""Configuration as data: frozen, typed dataclasses, validated in one place, printed and stored with runs.

:class:`ModelConfig` defines the network and is written with every checkpoint, so training, evaluation,
prediction and :func:`fcn_jax.load_model` never disagree on it. :class:`TrainConfig` is everything a
training run depends on; the readable starting points are the files in :mod:`fcn_jax.configs`.
Each field carries its help text and, where it is a choice, its choices (``metadata``): the command
line is generated from them, so a flag, a config file and the Python API are validated by the same
``__post_init__``.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
import types
import typing
from typing import Any, TypeVar

import jax.numpy as jnp

from fcn_jax.models import FCN, PADDINGS, VARIANTS, resolve_inputs
from fcn_jax.models.registry import has_batchnorm
from fcn_jax.models.registry import outputs as model_outputs
from fcn_jax.models.registry import validate as validate_model
from fcn_jax.preprocess import CONVENTIONS, INPUTS

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
FREEZE_CHOICES = ("none", "final", "all")

T = TypeVar("T")


def option(default: Any, help: str, choices: tuple[Any, ...] | None = None) -> Any:
    """A dataclass field with its help text and (optional) choices in ``metadata``."""
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices})


def check_dtype(dtype: str) -> str:
    """Returns ``dtype`` if it names a supported compute dtype, else raises ValueError."""
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {tuple(DTYPES)}")
    return dtype


def _validate_fields(config: Any) -> None:
    """Types (ints accepted for floats, lists for tuples) and choices of every field, named in errors."""
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        value, hint = getattr(config, f.name), hints[f.name]
        union = typing.get_origin(hint) in (typing.Union, types.UnionType)
        allowed = typing.get_args(hint) if union else (hint,)
        if value is None and type(None) in allowed:
            continue
        base = next(a for a in allowed if a is not type(None))
        if dataclasses.is_dataclass(base):
            if not isinstance(value, base):
                raise ValueError(f"{f.name}: expected {base.__name__} fields, got {value!r}")
            continue
        origin = typing.get_origin(base) or base
        if origin is float and isinstance(value, int) and not isinstance(value, bool):
            object.__setattr__(config, f.name, float(value))
        elif origin is tuple and isinstance(value, list):
            object.__setattr__(config, f.name, tuple(value))
        elif not isinstance(value, origin) or (origin in (int, float) and isinstance(value, bool)):
            raise ValueError(f"{f.name}: expected {origin.__name__}, got {value!r}")
        value = getattr(config, f.name)
        if origin is float and not math.isfinite(value):
            raise ValueError(f"{f.name}: must be finite, got {value!r}")
        choices = f.metadata.get("choices")
        if choices is not None and value not in choices:
            raise ValueError(f"{f.name}={value!r} is not one of {choices}")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """What defines the network (see :class:`fcn_jax.models.FCN`)."""

    variant: str = option("fcn32s", "network variant", VARIANTS)
    num_classes: int = option(21, "output classes (must match the dataset)")
    width: float = option(1.0, "channel width multiplier in (0, 1] (1.0 = the real network)")
    padding: str = option("reference", "'reference' (pad 100, Caffe crops) or 'same' (faster, not "
                          "reference-exact)", PADDINGS)
    dropout_rate: float = option(0.5, "element-wise dropout after fc6 and fc7 in training")
    dtype: str = option("float32", "compute dtype (parameters stay float32)", tuple(DTYPES))
    freeze_upsamplers: str = option("final", "upsamplers excluded from the optimiser and kept exactly "
                                    "bilinear: 'all' (the reference: every Deconvolution has lr_mult 0), "
                                    "'final' (the last one) or 'none' (the paper's learned upsampling)",
                                    FREEZE_CHOICES)
    frozen_bn: bool = option(False, "BatchNorm networks: every BatchNorm normalises with its running statistics "
                             "and never updates them, in training too (fine-tuning at small batches; batch 1); "
                             "their scale and bias still train unless --frozen matches them")

    def __post_init__(self) -> None:
        validate_model(self.variant, self.num_classes, self.width, self.padding)  # the registry's own words
        _validate_fields(self)
        if not 0 <= self.dropout_rate < 1:
            raise ValueError(f"dropout_rate: must be in [0, 1), got {self.dropout_rate}")
        if self.frozen_bn and not has_batchnorm(self.variant):
            raise ValueError(f"frozen_bn: {self.variant} has no BatchNorm layers")

    def build(self) -> FCN:
        """The linen module this config describes."""
        return FCN(variant=self.variant, num_classes=self.num_classes, width=self.width,
                   padding=self.padding, dropout_rate=self.dropout_rate, dtype=DTYPES[self.dtype],
                   frozen_bn=self.frozen_bn)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on; printed at start, written to ``WORKDIR/config.json`` and
    stored with every checkpoint. Starting points: :mod:`fcn_jax.configs` (``shapes``, ``reference``,
    ``modern``). ``batch_size`` is global; ``grad_accum`` splits it into sequential micro-batches."""

    model: ModelConfig = ModelConfig()
    preset: str = option("custom", "the config file this run started from")
    dataset: str = option("shapes", "shapes | voc_segmentation/sbd_fcn | voc_segmentation/voc2012 | "
                          "voc_segmentation/voc2012_aug")
    data_dir: str | None = option(None, "tensorflow-datasets data directory (default: $TFDS_DATA_DIR or "
                                  "~/tensorflow_datasets)")
    mode: str = option("modern", "'reference' (whole images, no augmentation) or 'modern' (scale/crop/flip)",
                       ("reference", "modern"))
    batch_size: int = option(8, "global batch size (split over all devices)")
    grad_accum: int = option(1, "split each batch into this many sequential micro-batches")
    crop_size: int = option(96, "modern mode: square crop size in pixels")
    scale_range: tuple[float, float] = option((0.5, 2.0), "modern mode: random scale range, e.g. 0.5,2")
    resize_base: int | None = option(None, "modern mode: None scales each image by a factor drawn from "
                                     "scale_range; N resizes its shorter side to a whole number of pixels drawn "
                                     "uniformly from [low*N, high*N] (torchvision's RandomResize(260, 1040) for "
                                     "520 and 0.5,2)")
    flip: bool = option(True, "modern mode: random horizontal flips")
    bucket_multiple: int | None = option(None, "reference mode: pad whole images to a multiple of this to "
                                         "batch them and compile fewer programs; the reference-geometry nets are "
                                         "masked to each image's size, so each image's loss and gradients are its "
                                         "own-size ones (None: each image at its own size, batch 1, as Caffe)")
    sampling: str = option("epoch", "training order: 'epoch' (a permutation per epoch) or 'replacement' "
                           "(uniform draws with replacement, Caffe's voc_layers.py)", ("epoch", "replacement"))
    preprocessing: str = option("caffe", "input convention: 'caffe' (BGR minus the ImageNet/VOC mean), its dataset "
                                "means 'caffe-context', 'caffe-siftflow', 'caffe-nyud' (the reference's data "
                                "layers), or 'torchvision'; must be of the --init weights' family", CONVENTIONS)
    inputs: str | None = option(None, "example fields forming the network input: 'image' (colour), 'hha', "
                                "'image+depth' (BGR + log depth, 4 channels), 'image+hha' (6 channels); None: "
                                "the variant's default (image; nyud-fcn32s-color-d image+depth; "
                                "nyud-fcn32s-color-hha image+hha)", INPUTS)
    void_value: int = option(255, "folder: datasets: the mask value of ignored pixels (excluded from loss and "
                             "metrics)")
    binary_masks: bool = option(False, "folder: datasets: masks are binary, 0 = background and any other "
                                "value (e.g. 255) = foreground (class 1)")
    loss: str = option("mean", "'sum' over labelled pixels (reference) or 'mean'", ("sum", "mean"))
    aux_loss_weight: float | None = option(None, "the loss weight of training-only auxiliary outputs "
                                           "(fcn-resnet50/101's 'aux' head); None: the variant's own (0.5, "
                                           "torchvision's)")
    class_weights: str | None = option(None, "per-class loss weights: 'frequency' (median-frequency balancing "
                                       "over the training masks), a file of one weight per class, or "
                                       "comma-separated numbers; resolved to numbers at start (None: unweighted)")
    optimizer: str = option("sgd", "'sgd' (momentum) or 'adamw'", ("sgd", "adamw"))
    lr: float = option(0.01, "base learning rate")
    schedule: str = option("poly", "'fixed' or 'poly' (power 0.9)", ("fixed", "poly"))
    warmup_steps: int = option(0, "linear learning-rate warm-up steps")
    momentum: float = option(0.9, "SGD momentum (Adam beta1)")
    weight_decay: float = option(5e-4, "weight decay on weights (on biases too with decay_biases)")
    decay_biases: bool = option(False, "weight decay on biases (conv and BatchNorm) too, as torchvision's recipe; "
                                "False: weights only, as Caffe's decay_mult 0 on biases")
    bias_lr_mult: float = option(2.0, "biases learn at this multiple of the learning rate")
    lr_mults: str | None = option(None, "learning-rate multipliers by parameter path, 'REGEX=MULT' pairs "
                                  "separated by commas (e.g. 'aux_classifier/.*=10', torchvision's aux head); "
                                  "the first fully matching pattern applies, on top of bias_lr_mult")
    steps: int = option(1000, "number of optimiser steps in total (a resumed run continues to this)")
    trainable: str | None = option(None, "regular expression over parameter paths (e.g. 'score_.*'): only "
                                   "matching parameters train; the rest are outside the optimiser")
    frozen: str | None = option(None, "regular expression over parameter paths (e.g. 'backbone/.*'): "
                                "matching parameters stay fixed, outside the optimiser and weight decay")
    init: str | None = option(None, "start from weights: a VGG16 or FCN weights file (.pth / .h5 / .npz / "
                              ".safetensors / .caffemodel), a converted checkpoint or an earlier stage's workdir; "
                              "late fusion: color=PATH,hha=PATH (one FCN-32s per stream)")
    dont_load: str | None = option(None, "regular expression over variable paths (e.g. 'backbone/bn1/.*', "
                                   "'score_.*'): arrays --init does not copy; they keep their initialisation")
    seed: int = option(1337, "seed for initialisation, shuffling, augmentation and dropout")
    log_every: int = option(20, "steps between logged training metrics")
    eval_every: int = option(500, "steps between validations")
    eval_batch_size: int = option(8, "validation batch size")
    eval_bucket_multiple: int | None = option(None, "validation: pad images to a multiple of this (fewer "
                                              "compiled shapes; the reference-geometry nets are masked to each "
                                              "image's size and predict as at exact size, the BatchNorm / ResNet "
                                              "FCNs see the padding); None: each image at its own size")
    checkpoint_every: int = option(500, "steps between checkpoints")
    keep_checkpoints: int = option(3, "number of latest checkpoints kept")

    def __post_init__(self) -> None:
        _validate_fields(self)
        for name in ("batch_size", "grad_accum", "steps", "log_every", "eval_every", "checkpoint_every",
                     "eval_batch_size", "keep_checkpoints", "crop_size", "bucket_multiple", "eval_bucket_multiple",
                     "resize_base"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("lr", "weight_decay", "bias_lr_mult", "momentum"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if len(self.scale_range) != 2 or not 0 < self.scale_range[0] <= self.scale_range[1]:
            raise ValueError(f"scale_range must be (low, high) with 0 < low <= high, got {self.scale_range}")
        if self.batch_size % self.grad_accum:
            raise ValueError(f"batch_size={self.batch_size} must be a multiple of grad_accum={self.grad_accum}")
        for name in ("trainable", "frozen", "dont_load"):
            pattern = getattr(self, name)
            try:
                re.compile(pattern or "")
            except re.error as e:
                raise ValueError(f"{name}={pattern!r} is not a regular expression ({e})") from None
        parse_lr_mults(self.lr_mults)
        if self.aux_loss_weight is not None:
            if not self.aux_loss_weight >= 0:
                raise ValueError(f"aux_loss_weight must be >= 0, got {self.aux_loss_weight}")
            if not any(not o.evaluated for o in model_outputs(self.model.variant, self.model.num_classes)):
                raise ValueError(f"aux_loss_weight: {self.model.variant} has no auxiliary output")
        if not 0 <= self.void_value <= 255:
            raise ValueError(f"void_value must be in 0..255, got {self.void_value}")
        resolve_inputs(self.inputs, self.model.variant)  # ValueError naming --inputs if the channels differ
        if self.class_weights is not None and "," in self.class_weights:
            parse_class_weights(self.class_weights, self.model.num_classes)
        if self.init is not None:  # 'vgg16:' / 'ckpt:' prefixes of earlier versions are accepted
            object.__setattr__(self, "init", strip_init_prefix(self.init))


FREQUENCY = "frequency"


def parse_class_weights(text: str, num_classes: int, source: str = "class_weights") -> tuple[float, ...]:
    """Weights written as numbers separated by commas, spaces or newlines (one per class) -> a tuple.

    Raises ValueError naming ``source`` unless there are ``num_classes`` finite, non-negative numbers,
    not all zero.
    """
    try:
        values = tuple(float(v) for v in re.split(r"[,\s]+", text.strip()) if v)
    except ValueError:
        raise ValueError(f"{source}: expected numbers separated by commas, got {text.strip()[:60]!r}") from None
    if len(values) != num_classes:
        raise ValueError(f"{source}: {len(values)} weights for {num_classes} classes")
    if not all(math.isfinite(v) and v >= 0 for v in values) or not any(values):
        raise ValueError(f"{source}: weights must be finite, >= 0 and not all zero, got {list(values)}")
    return values


def parse_lr_mults(text: str | None, source: str = "lr_mults") -> tuple[tuple[str, float], ...]:
    """'REGEX=MULT,REGEX=MULT' -> ((regex, mult), ...) in order; () for None.

    Raises ValueError naming ``source`` for an entry without '=', a pattern that is not a regular expression
    or a multiplier that is not a finite number >= 0.
    """
    pairs = []
    for entry in (text or "").split(","):
        if not entry.strip():
            continue
        pattern, sep, mult = entry.strip().rpartition("=")
        if not sep or not pattern:
            raise ValueError(f"{source}: expected REGEX=MULT pairs separated by commas, got {entry.strip()!r}")
        try:
            re.compile(pattern)
            value = float(mult)
        except re.error as e:
            raise ValueError(f"{source}: {pattern!r} is not a regular expression ({e})") from None
        except ValueError:
            raise ValueError(f"{source}: {mult!r} in {entry.strip()!r} is not a number") from None
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{source}: multipliers must be finite and >= 0, got {mult!r}")
        pairs.append((pattern, value))
    return tuple(pairs)


def strip_init_prefix(init: str) -> str:
    """The path of an ``init`` value (earlier versions wrote 'vgg16:PATH' / 'ckpt:DIR')."""
    for prefix in ("vgg16:", "ckpt:"):
        if init.startswith(prefix):
            return init[len(prefix):]
    return init


def to_dict(config: Any) -> dict[str, Any]:
    """A (nested) dataclass as a JSON-ready dict (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Rebuilds dataclass ``cls`` from :func:`to_dict` output (nested dataclasses and tuples too).

    Unknown keys raise ValueError naming them, so a config from another version is never cut silently.
    """
    if not isinstance(data, dict):
        raise ValueError(f"expected a mapping of {cls.__name__} fields, got {data!r}")
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(data) - set(hints))
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {', '.join(unknown)}")
    kwargs = {}
    for name, value in data.items():
        if dataclasses.is_dataclass(hints[name]):
            if not isinstance(value, dict):
                raise ValueError(f"{name}: expected a mapping of {hints[name].__name__} fields, got {value!r}")
            value = from_dict(hints[name], value)
        kwargs[name] = value
    return cls(**kwargs)


def override(config: T, fields: dict[str, Any]) -> T:
    """``config`` with ``fields`` replaced: nested ones as ``{'model': {...}}`` (or a ModelConfig) or dotted
    ``'model.width'``.

    Raises ValueError naming the field for unknown names, wrong types and invalid values.
    """
    data = to_dict(config)
    for key, value in fields.items():
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            value = to_dict(value)
        if isinstance(data.get(key), dict):
            if not isinstance(value, dict):
                raise ValueError(f"{key}: expected a mapping of fields, got {value!r}")
            data[key] = {**data[key], **value}
            continue
        *parents, name = key.split(".")
        node = data
        for parent in parents:
            if not isinstance(node.get(parent), dict):
                raise ValueError(f"unknown config field {key!r}")
            node = node[parent]
        node[name] = value
    return from_dict(type(config), data)


def format_config(config: Any, title: str = "config") -> str:
    """A readable, stable multi-line rendering of a (nested) dataclass config for logs."""
    lines = [f"{title}:"]

    def walk(d: dict[str, Any], indent: str) -> None:
        for key, value in d.items():
            if isinstance(value, dict):
                lines.append(f"{indent}{key}:")
                walk(value, indent + "  ")
            else:
                lines.append(f"{indent}{key}: {value}")

    walk(to_dict(config), "  ")
    return "\n".join(lines)
