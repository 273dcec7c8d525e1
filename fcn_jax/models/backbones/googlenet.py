"""GoogLeNet backbone of FCN-GoogLeNet (FCN paper, arXiv 1411.4038, section 4.1 / Table 1: 42.5 mean IU).

The net is BVLC's ``models/bvlc_googlenet`` (deploy / train_val.prototxt): conv1/7x7_s2 (pad 3), ReLU,
pool1/3x3_s2, pool1/norm1 (LRN 5, 1e-4, 0.75); conv2/3x3_reduce (1x1), conv2/3x3 (pad 1), ReLU each,
conv2/norm2 (LRN), pool2/3x3_s2; inception 3a, 3b, pool3/3x3_s2, 4a .. 4e, pool4/3x3_s2, 5a, 5b. Every
pool is a 3x3 / stride 2 max pool in Caffe's ceil mode without pad. An inception module concatenates, in
this order, ``1x1``, ``3x3_reduce -> 3x3`` (pad 1), ``5x5_reduce -> 5x5`` (pad 2) and ``pool`` (3x3 / 1 max,
pad 1) ``-> pool_proj`` (1x1), every conv followed by ReLU.

As the paper does for FCN-GoogLeNet, the final 7x7 average pooling is discarded and only the final loss is
used: the auxiliary classifiers (loss1/*, loss2/*) and loss3/classifier (1024 -> 1000) are not part of the
backbone; ``top`` is inception_5b/output (1024 channels, stride 32) after element-wise dropout in training,
GoogLeNet's pool5/drop_7x7_s1 (ratio 0.4) moved onto the map it now reads. The reference repository
(shelhamer/fcn.berkeleyvision.org) never released a GoogLeNet FCN, so its FCN geometry is derived here:

- ``padding='reference'``: conv1 pads 18 (ImageNet GoogLeNet: 3), Caffe ceil pools. Every 3x3 / 2 ceil
  pool maps n -> ceil((n - 3) / 2) + 1 = floor(n / 2), so top = floor((H + 2 * 18 - 5) / 32) >= 1 for
  every H >= 1 (18 is the smallest pad that gives any 1-pixel input an output; 100, as VGG's, would cost
  1.7x the compute at 500x500 and buys nothing: nothing here is a VALID conv). Every kernel is odd, so each
  layer maps output index i to input coordinate s * i - p + (k - 1) / 2, an integer: top cell i sits at
  input 32 i + 15 and the FCN's 63 / 32 upsampler (odd, as the reference's FCN-AlexNet; a 64 kernel
  would leave a half-pixel offset no crop can undo) at output 32 i + 31: crop 16 (``registry``).
- ``padding='same'``: H, W multiples of 32 (the FCN pads to them); conv1 pads 3, pool1 .. pool3 pad
  (1, 1) (floor mode), pool4 (0, 1) (top/left, bottom/right), so every stride halves the size exactly and
  top cell i sits at input 32 i + 16, where the head's same upsampler (63 / 32, pad 15) puts it: crop 0.

Parameter names are Caffe's layer names with '/' written '__' (Flax joins paths with '/'):
``conv1__7x7_s2``, ``inception_3a__3x3_reduce`` (``param_name`` / ``caffe_name``). Layout NHWC; kernels
HWIO; ``width`` scales every conv's channels (``scaled``).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fcn_jax.models.extent import Extent
from fcn_jax.models.layers import check_padding, conv_init, lrn, max_pool, scaled

__all__ = ["CONV1_PAD", "ConvLayer", "DROPOUT_RATE", "GoogLeNet", "INCEPTIONS", "Inception", "SAME_PADS", "STAGE_POOLS",
           "caffe_imagenet_params", "caffe_name", "caffe_shapes", "conv_layers", "param_name"]

CONV1_PAD = 18  # padding='reference' (see the module docstring); ImageNet GoogLeNet pads 3
DROPOUT_RATE = 0.4  # pool5/drop_7x7_s1


class Inception(NamedTuple):
    """One inception module (full-width channels of its six convs, BVLC prototxt)."""

    name: str  # '3a' .. '5b'
    c1x1: int
    c3x3_reduce: int
    c3x3: int
    c5x5_reduce: int
    c5x5: int
    pool_proj: int

    @property
    def branches(self) -> tuple[tuple[str, int, int], ...]:
        """(Caffe layer suffix, kernel, channels) of the six convs, in prototxt order."""
        return (("1x1", 1, self.c1x1), ("3x3_reduce", 1, self.c3x3_reduce), ("3x3", 3, self.c3x3),
                ("5x5_reduce", 1, self.c5x5_reduce), ("5x5", 5, self.c5x5), ("pool_proj", 1, self.pool_proj))


INCEPTIONS = (
    Inception("3a", 64, 96, 128, 16, 32, 32), Inception("3b", 128, 128, 192, 32, 96, 64),
    Inception("4a", 192, 96, 208, 16, 48, 64), Inception("4b", 160, 112, 224, 24, 64, 64),
    Inception("4c", 128, 128, 256, 24, 64, 64), Inception("4d", 112, 144, 288, 32, 64, 64),
    Inception("4e", 256, 160, 320, 32, 128, 128),
    Inception("5a", 256, 160, 320, 32, 128, 128), Inception("5b", 384, 192, 384, 48, 128, 128))
STAGE_POOLS = {"3b": "pool3/3x3_s2", "4e": "pool4/3x3_s2"}  # the stride-2 pools after these modules
# padding='same' (top/left, bottom/right) pads of the stride-2 layers; see the module docstring.
SAME_PADS = {"conv1/7x7_s2": (3, 3), "pool1/3x3_s2": (1, 1), "pool2/3x3_s2": (1, 1), "pool3/3x3_s2": (1, 1),
             "pool4/3x3_s2": (0, 1)}
_IGNORED = ("loss1/", "loss2/", "loss3/")  # auxiliary classifiers and loss3/classifier


def param_name(caffe: str) -> str:
    """Flax parameter name of a Caffe layer: '/' -> '__' ('inception_3a/1x1' -> 'inception_3a__1x1')."""
    return caffe.replace("/", "__")


def caffe_name(param: str) -> str:
    """The Caffe layer of a parameter name, the inverse of ``param_name`` (Caffe's names have no '__')."""
    return param.replace("__", "/")


class ConvLayer(NamedTuple):
    """A convolution of the backbone: Caffe name, kernel, stride, input and output channels."""

    name: str
    kernel: int
    stride: int
    c_in: int
    c_out: int


def conv_layers(width: float = 1.0) -> tuple[ConvLayer, ...]:
    """The backbone's 57 convolutions in prototxt order, channels at ``width``."""
    c = lambda n: scaled(n, width)  # noqa: E731
    out = [ConvLayer("conv1/7x7_s2", 7, 2, 3, c(64)), ConvLayer("conv2/3x3_reduce", 1, 1, c(64), c(64)),
           ConvLayer("conv2/3x3", 3, 1, c(64), c(192))]
    c_in = c(192)
    for m in INCEPTIONS:
        ch = {suffix: c(n) for suffix, _, n in m.branches}
        inputs = {"3x3": ch["3x3_reduce"], "5x5": ch["5x5_reduce"]}
        out += [ConvLayer(f"inception_{m.name}/{suffix}", k, 1, inputs.get(suffix, c_in), ch[suffix])
                for suffix, k, _ in m.branches]
        c_in = ch["1x1"] + ch["3x3"] + ch["5x5"] + ch["pool_proj"]
    return tuple(out)


def caffe_shapes(width: float = 1.0) -> dict[str, tuple[tuple[int, int, int, int], tuple[int]]]:
    """{Caffe layer: (weight (O, I, k, k), bias (O,))} of the backbone's convolutions at ``width``."""
    return {layer.name: ((layer.c_out, layer.c_in, layer.kernel, layer.kernel), (layer.c_out,))
            for layer in conv_layers(width)}


# A 3x3 / 2 pool in Caffe's ceil mode without input pad maps n -> ceil((n - 3) / 2) + 1 = floor(n / 2): a VALID
# pool over the input and one -inf row / column below / right gives that size whatever the parity (an even n's
# last window reads the -inf row, as Caffe's clipped window does; an odd n's ends before it), and a size JAX's
# shape polymorphism can compare (a parity-dependent pad cannot be: no symbolic-size export).
CEIL_PADS = (0, 1)


class GoogLeNet(nn.Module):
    """GoogLeNet feature extractor of FCN-GoogLeNet (see the module docstring for the geometry).

    Input (N, H, W, 3) preprocessed (Caffe BGR, mean subtracted); returns ``{'top'}``: inception_5b's output
    (N, h, w, 1024 * width) in ``dtype``, after dropout (``dropout_rate``, GoogLeNet's 0.4) in training;
    stride ``STRIDES['top']`` = 32. ``padding='reference'``: any H, W >= 1, h = floor((H + 31) / 32) (e.g.
    500 -> 16); ``padding='same'``: H, W multiples of 32, h = H / 32 (else ValueError).
    ``extent`` (:class:`~fcn_jax.models.extent.Extent` of ``x``): every conv and pool output masked to its
    own extent; returns ``(maps, {'top': Extent})`` (``MASKABLE``; every pool reads ReLU outputs or LRN of them, >= 0).
    Parameters: ``{param_name(caffe layer)}/{kernel (HWIO), bias}``, float32, e.g. ``conv1__7x7_s2``.
    """

    STRIDES: ClassVar[dict[str, int]] = {"top": 32}
    MASKABLE: ClassVar[bool] = True

    width: float = 1.0
    padding: str = "reference"
    dropout_rate: float = DROPOUT_RATE
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, extent: Extent | None = None
                 ) -> dict[str, jax.Array] | tuple[dict[str, jax.Array], dict[str, Extent]]:
        check_padding(self.padding)
        same = self.padding == "same"
        e = Extent() if extent is None else extent
        if same and (x.shape[1] % 32 or x.shape[2] % 32):
            raise ValueError(f"GoogLeNet padding='same' needs H, W multiples of 32, got shape {x.shape}")
        c = lambda n: scaled(n, self.width)  # noqa: E731

        def conv(y: jax.Array, name: str, features: int, kernel: int, stride: int = 1,
                 pad: tuple[int, int] | None = None) -> jax.Array:
            pad = pad or ((kernel - 1) // 2,) * 2  # stride 1, odd kernels: the extent is the input's
            out = e.window(kernel, stride, pad) if stride > 1 else e
            return out.mask(nn.relu(nn.Conv(features, (kernel, kernel), stride, padding=(pad, pad), dtype=self.dtype,
                                            param_dtype=jnp.float32, kernel_init=conv_init, name=param_name(name))(y)))

        def pool(y: jax.Array, name: str) -> tuple[jax.Array, Extent]:
            if same:
                out = e.window(3, 2, SAME_PADS[name])
                return out.mask(max_pool(y, 3, 2, (SAME_PADS[name],) * 2)), out
            out = e.ceil_window(3, 2)
            return out.mask(max_pool(y, 3, 2, (CEIL_PADS, CEIL_PADS))), out

        x = x.astype(self.dtype)
        conv1_pad = SAME_PADS["conv1/7x7_s2"] if same else (CONV1_PAD, CONV1_PAD)
        x, e = conv(x, "conv1/7x7_s2", c(64), 7, 2, conv1_pad), e.window(7, 2, conv1_pad)
        x, e = pool(x, "pool1/3x3_s2")
        x = lrn(x)
        x = conv(x, "conv2/3x3_reduce", c(64), 1)
        x = lrn(conv(x, "conv2/3x3", c(192), 3))
        x, e = pool(x, "pool2/3x3_s2")
        for m in INCEPTIONS:
            p = f"inception_{m.name}/"
            x = jnp.concatenate([
                conv(x, p + "1x1", c(m.c1x1), 1),
                conv(conv(x, p + "3x3_reduce", c(m.c3x3_reduce), 1), p + "3x3", c(m.c3x3), 3),
                conv(conv(x, p + "5x5_reduce", c(m.c5x5_reduce), 1), p + "5x5", c(m.c5x5), 5),
                conv(max_pool(x, 3, 1, ((1, 1), (1, 1))), p + "pool_proj", c(m.pool_proj), 1),
            ], axis=-1)
            if m.name in STAGE_POOLS:
                x, e = pool(x, STAGE_POOLS[m.name])
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return {"top": x} if extent is None else ({"top": x}, {"top": e})


def caffe_imagenet_params(blobs: Mapping[str, Sequence[np.ndarray]], *,
                          width: float = 1.0) -> dict[tuple[str, ...], np.ndarray]:
    """The backbone parameters of BVLC's ``bvlc_googlenet.caffemodel``.

    ``blobs``: Caffe layer name -> (weight (O, I, k, k), bias (O,)) (``caffe_shapes(width)``). The auxiliary
    classifiers (loss1/*, loss2/*) and loss3/classifier are ignored; any other layer with blobs is an error.
    Returns ``{('backbone', param_name(layer), 'kernel' | 'bias'): float32 array}``, kernels HWIO.
    Raises ValueError (one line) naming the Caffe layer for a missing, unexpected or misshapen layer.
    """
    shapes = caffe_shapes(width)
    extra = [name for name, arrays in blobs.items()
             if len(arrays) and name not in shapes and not name.startswith(_IGNORED)]
    if extra:
        raise ValueError(f"GoogLeNet weights have unexpected layers {extra}; expected bvlc_googlenet's")
    out = {}
    for name, (w_shape, b_shape) in shapes.items():
        if name not in blobs:
            raise ValueError(f"GoogLeNet weights lack layer {name}")
        if len(blobs[name]) != 2:
            raise ValueError(f"GoogLeNet layer {name}: expected 2 blobs (weight, bias), found {len(blobs[name])}")
        w, b = (np.asarray(a, np.float32) for a in blobs[name])
        if w.shape != w_shape:
            raise ValueError(f"GoogLeNet layer {name} weight: expected {w_shape}, found {w.shape}")
        if b.shape != b_shape:
            raise ValueError(f"GoogLeNet layer {name} bias: expected {b_shape}, found {b.shape}")
        out[("backbone", param_name(name), "kernel")] = np.ascontiguousarray(w.transpose(2, 3, 1, 0))
        out[("backbone", param_name(name), "bias")] = b
    return out
