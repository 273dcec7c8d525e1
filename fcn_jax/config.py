"""Configuration as data: frozen dataclasses for the model, and helpers to print and store them.

The same :class:`ModelConfig` is written with every checkpoint and read back by eval and predict, so
train and eval can never disagree on the network.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, TypeVar

import jax.numpy as jnp

from fcn_jax.models import FCN, check_variant
from fcn_jax.models.vgg import PADDINGS

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
    """Rebuilds dataclass ``cls`` from :func:`to_dict` output; nested dataclass fields and tuples too.

    Unknown keys raise ValueError naming them (so a config from a newer version is not silently cut).
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {', '.join(unknown)}")
    kwargs = {}
    for name, value in data.items():
        default = getattr(cls, name, None) if name in cls.__dict__ else None
        ftype = fields[name].type
        if dataclasses.is_dataclass(default) or (isinstance(value, dict) and _dataclass_of(ftype)):
            value = from_dict(_dataclass_of(ftype) or type(default), value)
        elif isinstance(value, list):
            value = tuple(tuple(v) if isinstance(v, list) else v for v in value)
        kwargs[name] = value
    return cls(**kwargs)


def _dataclass_of(ftype: Any) -> type | None:
    """Resolves a field's annotation (possibly a string) to a dataclass type defined here, if any."""
    if isinstance(ftype, str):
        ftype = globals().get(ftype) or _REGISTRY.get(ftype)
    return ftype if dataclasses.is_dataclass(ftype) else None


_REGISTRY: dict[str, type] = {"ModelConfig": ModelConfig}


def register(cls: type[T]) -> type[T]:
    """Makes a dataclass defined elsewhere resolvable by name inside :func:`from_dict`."""
    _REGISTRY[cls.__name__] = cls
    return cls


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
