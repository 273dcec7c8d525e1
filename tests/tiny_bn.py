"""A tiny BatchNorm FCN registered through the model contract: the proof that a new family is "a backbone
file and a registry entry".

``register()`` adds backbone ``tiny-bn`` (conv + BN + ReLU, 2x2 pool, twice: maps ``pool1`` at stride 2 and
``top`` at stride 4), head kind ``tiny-aux`` (3x3 conv without bias + BN + ReLU + 1x1 conv, bilinear resize to
the input: torchvision's FCNHead in miniature) and variant ``test-bn-fcn``: the Caffe skip head on ``top`` and
``pool1`` (output 'out') plus the auxiliary head on ``top`` (output 'aux', training-only, loss weight 0.5,
its layers under ``aux_classifier``).

Run as a script (``python tests/tiny_bn.py train|eval|predict ARGS``) it registers them and runs that tool's
``main`` with ARGS, which is how the tests drive the real command lines with this network.
"""
from __future__ import annotations

import os
import sys
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fcn_jax.models import (HeadSpec, Output, SkipSpec, Upsampler, VariantSpec, register_backbone,  # noqa: E402
                            register_head, register_variant)
from fcn_jax.models.layers import BatchNorm, conv_init, scaled  # noqa: E402

VARIANT = "test-bn-fcn"
AUX_WEIGHT = 0.5


class TinyBN(nn.Module):
    """conv1 (4) bn1 relu pool -> 'pool1' (stride 2); conv2 (8) bn2 relu pool -> 'top' (stride 4)."""

    STRIDES: ClassVar[dict[str, int]] = {"pool1": 2, "top": 4}

    width: float = 1.0
    padding: str = "same"
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> dict[str, jax.Array]:
        out = {}
        for i, (name, channels) in enumerate((("pool1", 4), ("top", 8)), start=1):
            x = nn.Conv(scaled(channels, self.width), (3, 3), padding="SAME", dtype=self.dtype,
                        param_dtype=jnp.float32, kernel_init=conv_init, name=f"conv{i}")(x)
            x = nn.relu(BatchNorm(dtype=self.dtype, name=f"bn{i}")(x, train=train))
            x = out[name] = nn.max_pool(x, (2, 2), (2, 2))
        return out


class TinyAuxHead(nn.Module):
    """3x3 conv (no bias) + BN + ReLU + 1x1 conv on ``args`` (a feature name), resized to (height, width)."""

    output: Output
    args: str = "top"
    streams: tuple = ()
    padding: str = "same"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, feats: Any, height: int, width: int, train: bool = False) -> jax.Array:
        x = feats[0][self.args]
        x = nn.Conv(4, (3, 3), padding="SAME", use_bias=False, dtype=self.dtype, name="conv")(x)
        x = nn.relu(BatchNorm(dtype=self.dtype, name="bn")(x, train=train))
        x = nn.Conv(self.output.classes, (1, 1), dtype=self.dtype, name="score")(x)
        return jax.image.resize(x, (x.shape[0], height, width, x.shape[3]), "bilinear")


SPEC = VariantSpec(
    backbone="tiny-bn",
    heads=(HeadSpec("skip", Output("out"), SkipSpec(("pool1",), (Upsampler("upscore2", 4, 2),
                                                                 Upsampler("upscore4", 4, 2)), (0,), 0)),
           HeadSpec("tiny-aux", Output("aux", loss_weight=AUX_WEIGHT, evaluated=False), "top",
                    scope="aux_classifier")),
    description="test: tiny BatchNorm backbone, Caffe skip head and a training-only auxiliary head",
    paddings=("same",))


def register() -> None:
    """Registers backbone, head kind and variant (idempotent; :func:`fcn_jax.models.unregister_variant` undoes
    the variant)."""
    register_backbone("tiny-bn", TinyBN)
    register_head("tiny-aux", TinyAuxHead)
    register_variant(VARIANT, SPEC)


if __name__ == "__main__":
    register()
    tool, argv = sys.argv[1], sys.argv[2:]
    from fcn_jax.cli import eval as eval_cli
    from fcn_jax.cli import predict as predict_cli
    from fcn_jax.cli import train as train_cli
    sys.exit({"train": train_cli, "eval": eval_cli, "predict": predict_cli}[tool].main(argv))
