"""What a variant is made of, as data: a backbone (or one per input stream) and its heads, each head a kind
from the heads registry with its arguments and the output it produces (:class:`~fcn_jax.models.outputs.Output`).

The tables of variants are in :mod:`fcn_jax.models.registry`; a new network is a new entry there (and, for
a new architecture, a backbone or head module registered by name).
"""
from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

from fcn_jax.models.layers import PADDINGS
from fcn_jax.models.outputs import Output


class Stream(NamedTuple):
    """One input stream of a late-fusion variant: the suffix of its layer names (``''``; NYUD's
    ``'color'``, ``'hha'``: ``backbone_<suffix>``, ``score_fr<suffix>``), the input channels it reads and
    the coefficient of its score map in the fused score (Caffe ``Eltwise`` SUM ``coeff``)."""

    suffix: str
    channels: int = 3
    coefficient: float = 1.0


ONE_STREAM = (Stream(""),)


@dataclasses.dataclass(frozen=True)
class HeadSpec:
    """One head of a variant: ``kind`` (a key of :data:`fcn_jax.models.heads.HEADS`), the ``output`` it
    produces (its classes None: the model's ``num_classes``), ``args`` (the kind's own arguments, e.g. a
    :class:`~fcn_jax.models.heads.skip.SkipSpec`) and ``scope``: the parameter subtree its layers live in
    (None: the model's top level, as the Caffe skip head's ``score_fr``, ``upscore``, ...)."""

    kind: str
    output: Output = Output()
    args: Any = None
    scope: str | None = None


@dataclasses.dataclass(frozen=True)
class VariantSpec:
    """One network.

    backbone: key of :data:`fcn_jax.models.backbones.BACKBONES`; ``backbone_args`` extra keyword arguments
      of its constructor (besides width, padding, dropout_rate, dtype), as (name, value) pairs.
    heads: the heads, each producing one named output; the first evaluated one is the main output.
    description: one line for docs and listings.
    streams: the backbones; more than one (NYUD late fusion) splits the input's channels between them
      (``backbone_<suffix>``) and hands each head one feature dict per stream.
    in_channels: channels of the network input (3; NYUD early fusion 4: BGR + log depth).
    inputs: what the input channels are, in words (for docs and errors).
    caffe_names: (parameter layer, the reference's Caffe layer name) where they differ.
    paddings: the ``padding`` values the network supports.
    """

    backbone: str
    heads: tuple[HeadSpec, ...]
    description: str
    backbone_args: tuple[tuple[str, Any], ...] = ()
    streams: tuple[Stream, ...] = ONE_STREAM
    in_channels: int = 3
    inputs: str = "RGB image"
    caffe_names: tuple[tuple[str, str], ...] = ()
    paddings: tuple[str, ...] = PADDINGS

    def __post_init__(self) -> None:
        names = [h.output.name for h in self.heads]
        if not self.heads or len(set(names)) != len(names):
            raise ValueError(f"a variant needs heads with distinct output names, got {names}")
        if not any(h.output.evaluated for h in self.heads):
            raise ValueError(f"a variant needs at least one evaluated output, got {names}")
        if len(self.streams) > 1 and sum(s.channels for s in self.streams) != self.in_channels:
            raise ValueError(f"the streams of {self.description!r} must split the {self.in_channels} input channels")
        if not set(self.paddings) <= set(PADDINGS):
            raise ValueError(f"paddings must be among {PADDINGS}, got {self.paddings}")

    def outputs(self, num_classes: int) -> tuple[Output, ...]:
        """Every head's output with its classes resolved, in declaration order."""
        return tuple(h.output.resolve(num_classes) for h in self.heads)
