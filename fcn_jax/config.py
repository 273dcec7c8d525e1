"""Configuration as data: frozen dataclasses for the model, and helpers to print and store them.

The same :class:`ModelConfig` is written with every checkpoint and read back by eval and predict, so
train and eval can never disagree on the network.
"""
from __future__ import annotations

import dataclasses
import json
import typing
from typing import Any, TypeVar

import jax.numpy as jnp

from fcn_jax.models import FCN, PADDINGS, check_variant

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
FREEZE_CHOICES = ("none", "final", "all")

T = TypeVar("T")


def check_dtype(dtype: str) -> str:
    """Returns ``dtype`` if it names a supported compute dtype, else raises ValueError."""
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {tuple(DTYPES)}")
    return dtype


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """What defines the network.

    ``freeze_upsamplers``: 'final' (the reference: the last upsampler stays exactly bilinear, the
    intermediate ones learn), 'all' or 'none'. Frozen layers are excluded from the optimizer.
    """

    variant: str = "fcn32s"
    num_classes: int = 21
    width: float = 1.0
    padding: str = "reference"
    dropout_rate: float = 0.5
    dtype: str = "float32"
    freeze_upsamplers: str = "final"

    def __post_init__(self) -> None:
        check_variant(self.variant)
        check_dtype(self.dtype)
        if self.padding not in PADDINGS:
            raise ValueError(f"unknown padding {self.padding!r}; expected one of {PADDINGS}")
        if self.freeze_upsamplers not in FREEZE_CHOICES:
            raise ValueError(f"unknown freeze_upsamplers {self.freeze_upsamplers!r}; expected one of {FREEZE_CHOICES}")
        if self.num_classes < 1 or not 0 < self.width <= 1:
            raise ValueError(f"need num_classes >= 1 and 0 < width <= 1, got {self.num_classes}, {self.width}")

    def build(self) -> FCN:
        """The linen module this config describes."""
        return FCN(variant=self.variant, num_classes=self.num_classes, width=self.width,
                   padding=self.padding, dropout_rate=self.dropout_rate, dtype=DTYPES[self.dtype])


def to_dict(config: Any) -> dict[str, Any]:
    """A (nested) dataclass as a JSON-ready dict (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Rebuilds dataclass ``cls`` from :func:`to_dict` output (nested dataclasses and tuples too).

    Unknown keys raise ValueError naming them, so a config from another version is never cut silently.
    """
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(data) - set(hints))
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {', '.join(unknown)}")
    kwargs = {}
    for name, value in data.items():
        if dataclasses.is_dataclass(hints[name]) and isinstance(value, dict):
            value = from_dict(hints[name], value)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)


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


PRESETS = ("reference", "modern", "shapes")
# The reference's fixed learning rates (summed loss) and iteration counts per variant.
REFERENCE_LR = {"fcn32s": 1e-10, "fcn16s": 1e-12, "fcn8s": 1e-14, "fcn8s-atonce": 1e-10}
REFERENCE_STEPS = {"fcn32s": 100_000, "fcn16s": 100_000, "fcn8s": 100_000, "fcn8s-atonce": 300_000}


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on; printed at start and stored with every checkpoint.

    Data: ``mode`` 'reference' (whole images padded to bucket shapes, no augmentation) or 'modern'
    (random scale, crop ``crop_size``, flip). Loss: 'sum' over non-void pixels (the reference) or
    'mean'. Optimiser: SGD with momentum (or AdamW), weight decay on weights only, biases at
    ``bias_lr_mult`` x lr without decay; ``schedule`` 'fixed' or 'poly' (power 0.9 to 0).
    ``batch_size`` is global; ``grad_accum`` splits it into that many sequential micro-batches.
    ``init``: None (random), 'vgg16:PATH' (ImageNet VGG16) or 'ckpt:DIR' (an earlier stage).
    """

    model: ModelConfig = ModelConfig()
    preset: str = "shapes"
    dataset: str = "shapes"
    data_dir: str | None = None
    mode: str = "modern"
    batch_size: int = 8
    grad_accum: int = 1
    crop_size: int = 96
    scale_range: tuple[float, float] = (0.5, 2.0)
    flip: bool = True
    bucket_multiple: int = 128
    preprocessing: str = "caffe"
    loss: str = "mean"
    optimizer: str = "sgd"
    lr: float = 0.01
    schedule: str = "poly"
    warmup_steps: int = 0
    momentum: float = 0.9
    weight_decay: float = 5e-4
    bias_lr_mult: float = 2.0
    steps: int = 1000
    init: str | None = None
    seed: int = 1337
    log_every: int = 20
    eval_every: int = 500
    eval_batch_size: int = 8
    checkpoint_every: int = 500
    keep_checkpoints: int = 3

    def __post_init__(self) -> None:
        checks = {
            "preset": (self.preset, PRESETS), "mode": (self.mode, ("reference", "modern")),
            "loss": (self.loss, ("sum", "mean")), "optimizer": (self.optimizer, ("sgd", "adamw")),
            "schedule": (self.schedule, ("fixed", "poly")),
            "preprocessing": (self.preprocessing, ("caffe", "torchvision")),
        }
        for name, (value, choices) in checks.items():
            if value not in choices:
                raise ValueError(f"{name}={value!r} is not one of {choices}")
        for name in ("batch_size", "grad_accum", "steps", "log_every", "eval_every", "checkpoint_every",
                     "eval_batch_size", "keep_checkpoints", "crop_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.batch_size % self.grad_accum:
            raise ValueError(f"batch_size={self.batch_size} must be a multiple of grad_accum={self.grad_accum}")
        if self.init is not None and not self.init.startswith(("vgg16:", "ckpt:")):
            raise ValueError(f"init={self.init!r} must be 'vgg16:PATH' or 'ckpt:DIR'")


def preset(name: str, variant: str = "fcn32s", **overrides: Any) -> TrainConfig:
    """The named preset for ``variant``, with field ``overrides`` (``model`` fields go in ``model=``).

    - ``reference``: the Caffe solver exactly: SBD / seg11valid, batch 1 whole image, summed loss, SGD
      momentum 0.99, fixed lr 1e-10 / 1e-12 / 1e-14 (32s / 16s / 8s; 1e-10 at once), weight decay 5e-4,
      biases 2x lr without decay, final upsampler frozen, 100k iterations (300k at once), float32.
    - ``modern``: batch 16 crops of 512 with scale / flip augmentation, mean loss, SGD momentum 0.9 at lr
      0.01 with poly decay (the recipe of today's segmentation code bases for a loss averaged over
      pixels), bfloat16 compute.
    - ``shapes``: the offline demo: the embedded synthetic dataset and a width-1/8 network trained
      from scratch on 2 CPU cores in minutes: 'same' padding (a quarter of pad 100's pixels at this
      size), unit-variance inputs ('torchvision' convention, as no ImageNet weights set one), no
      dropout, AdamW with warm-up and poly decay (a plain VGG from scratch learns slowly with SGD).
    """
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; expected one of {PRESETS}")
    model_overrides = overrides.pop("model", {})
    if isinstance(model_overrides, ModelConfig):
        model_overrides = dataclasses.asdict(model_overrides)
    if name == "reference":
        model = dict(variant=variant, num_classes=21, dtype="float32", freeze_upsamplers="final")
        base = dict(preset=name, dataset="voc_segmentation/sbd_fcn", mode="reference", batch_size=1,
                    loss="sum", optimizer="sgd", lr=REFERENCE_LR[variant], schedule="fixed", momentum=0.99,
                    weight_decay=5e-4, bias_lr_mult=2.0, steps=REFERENCE_STEPS[variant], flip=False,
                    log_every=20, eval_every=4000, eval_batch_size=1, checkpoint_every=4000)
    elif name == "modern":
        model = dict(variant=variant, num_classes=21, dtype="bfloat16")
        base = dict(preset=name, dataset="voc_segmentation/voc2012_aug", mode="modern", batch_size=16,
                    crop_size=512, loss="mean", optimizer="sgd", lr=0.01, schedule="poly", momentum=0.9,
                    weight_decay=5e-4, steps=40_000, log_every=50, eval_every=4000, eval_batch_size=8,
                    checkpoint_every=2000)
    else:
        model = dict(variant=variant, num_classes=7, width=0.125, padding="same", dropout_rate=0.0,
                     dtype="float32")
        base = dict(preset=name, dataset="shapes", mode="modern", batch_size=8, crop_size=96,
                    preprocessing="torchvision",
                    scale_range=(0.75, 1.5), loss="mean", optimizer="adamw", lr=1e-3, schedule="poly",
                    warmup_steps=50, weight_decay=1e-4, bias_lr_mult=1.0, steps=2500, log_every=20,
                    eval_every=500, eval_batch_size=8, checkpoint_every=500)
    model.update(model_overrides)
    base.update(overrides)
    return TrainConfig(model=ModelConfig(**model), **base)
