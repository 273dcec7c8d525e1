"""AlexNet (CaffeNet) backbone of FCN-AlexNet (the reference's voc-fcn-alexnet/net.py).

conv1 11x11/4 (pad 100), ReLU, 3x3/2 max pool (Caffe ceil mode), LRN; conv2 5x5 (2 groups), ReLU, pool,
LRN; conv3 3x3, conv4 3x3 (2 groups), conv5 3x3 (2 groups), each with ReLU; pool5; fc6 a VALID 6x6 conv
(4096), ReLU, dropout; fc7 1x1 (4096), ReLU, dropout. Pool before norm, as in CaffeNet
(``bvlc_reference_caffenet``, the ImageNet net the reference starts from; ``bvlc_alexnet`` normalises
before pooling). Layer names are Caffe's (``conv1`` .. ``conv5``, ``fc6``, ``fc7``) so .caffemodel blobs
map by name. Layout NHWC; kernels HWIO, a grouped conv's (kh, kw, C_in / groups, C_out), which is Caffe's
(C_out, C_in / groups, kh, kw) transposed (2, 3, 1, 0).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fcn_jax.models.backbones.vgg import FC_CHANNELS
from fcn_jax.models.extent import Extent
from fcn_jax.models.layers import PatchConv, check_padding, conv_init, lrn, max_pool, scaled

__all__ = ["ALEXNET_CONVS", "AlexNet", "ConvSpec", "FC6_SIZE", "caffe_imagenet_params", "caffe_shapes", "channels",
           "max_pool_3x3_ceil"]


class ConvSpec(NamedTuple):
    """One convolution of the reference net: Caffe layer name, kernel, stride, pad, group, channels (full width)."""

    name: str
    kernel: int
    stride: int
    pad: int
    groups: int
    channels: int


ALEXNET_CONVS = (ConvSpec("conv1", 11, 4, 100, 1, 96), ConvSpec("conv2", 5, 1, 2, 2, 256),
                 ConvSpec("conv3", 3, 1, 1, 1, 384), ConvSpec("conv4", 3, 1, 1, 2, 384),
                 ConvSpec("conv5", 3, 1, 1, 2, 256))
FC6_SIZE = 6  # fc6 sees a 6x6 patch of pool5 (CaffeNet's 227x227 input -> 6x6x256)
# padding='same': conv1 pads (1, 6) and fc6 (3, 2) (top/left, bottom/right) so that H / 32 cells come out and
# the head's same upsampler (63 / 32, pad 15) puts output pixel j at input pixel j: see ``AlexNet``.
SAME_CONV1_PAD = (1, 6)
SAME_FC6_PAD = (3, 2)


def channels(c: int, width: float) -> int:
    """Conv channel count at a width multiplier, rounded to an even number (>= 2) so both groups split evenly."""
    return max(2, 2 * int(round(c * width / 2)))


def max_pool_3x3_ceil(x: jax.Array) -> jax.Array:
    """3x3 / stride 2 max pooling in Caffe's ceil mode (no pad): (N, H, W, C) -> (N, ceil((H-3)/2)+1, ...)."""
    def extra(n: int) -> int:
        out = -(-(n - 3) // 2) + 1
        return (out - 1) * 2 + 3 - n
    return max_pool(x, 3, 2, ((0, extra(x.shape[1])), (0, extra(x.shape[2]))))


class AlexNet(nn.Module):
    """AlexNet feature extractor of FCN-AlexNet.

    Input (N, H, W, 3) preprocessed (Caffe BGR, mean subtracted); returns ``{'top'}`` (N, h, w, fc) in
    ``dtype``: fc7's output after dropout, stride ``STRIDES['top']`` = 32.
    ``padding='reference'``: conv1 pads 100, ceil-mode pools, VALID fc6 (any H, W >= 1; h = ceil-pool
    arithmetic, e.g. 500 -> 16). ``padding='same'``: H, W multiples of 32 (the FCN pads to them), h = H / 32;
    conv1 pads (1, 6) and fc6 (3, 2) (top/left, bottom/right), which centres top cell i on input pixel
    32 i + 16, where the same head's upsampler (kernel 63, stride 32, pad 15) puts it: no crop offset.
    ``width`` scales channels (convs rounded to even numbers for the 2 groups, ``channels``).
    ``extent`` (:class:`~fcn_jax.models.extent.Extent` of ``x``): every layer masked to its own extent;
    returns ``(maps, {'top': Extent})`` (``MASKABLE``; pools read ReLU outputs, so zeros never win).
    Parameters: ``{conv1 .. conv5, fc6, fc7}/{kernel (HWIO), bias}``, float32; fc6 (6, 6, C5, fc).
    """

    STRIDES: ClassVar[dict[str, int]] = {"top": 32}
    MASKABLE: ClassVar[bool] = True

    width: float = 1.0
    padding: str = "reference"
    dropout_rate: float = 0.5
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, extent: Extent | None = None
                 ) -> dict[str, jax.Array] | tuple[dict[str, jax.Array], dict[str, Extent]]:
        check_padding(self.padding)
        same = self.padding == "same"
        e = Extent() if extent is None else extent
        if same and (x.shape[1] % 32 or x.shape[2] % 32):
            raise ValueError(f"AlexNet padding='same' needs H, W multiples of 32, got shape {x.shape}")
        x = x.astype(self.dtype)
        for spec in ALEXNET_CONVS:
            pad = SAME_CONV1_PAD if same and spec.name == "conv1" else (spec.pad, spec.pad)
            e = e.window(spec.kernel, spec.stride, pad)
            x = e.mask(nn.relu(nn.Conv(channels(spec.channels, self.width), (spec.kernel, spec.kernel), spec.stride,
                                       padding=(pad, pad), feature_group_count=spec.groups, dtype=self.dtype,
                                       param_dtype=jnp.float32, kernel_init=conv_init, name=spec.name)(x)))
            if spec.name in ("conv1", "conv2"):  # pool1 -> norm1, pool2 -> norm2
                e = e.ceil_window(3, 2)
                x = lrn(e.mask(max_pool_3x3_ceil(x)))
        e = e.ceil_window(3, 2)
        x = e.mask(max_pool_3x3_ceil(x))  # pool5
        fc = scaled(FC_CHANNELS, self.width)
        if same:
            x = jnp.pad(x, ((0, 0), SAME_FC6_PAD, SAME_FC6_PAD, (0, 0)))
        e = e.window(FC6_SIZE, 1, SAME_FC6_PAD if same else 0)
        x = e.mask(nn.relu(PatchConv(fc, FC6_SIZE, dtype=self.dtype, name="fc6")(x)))
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        x = e.mask(nn.relu(nn.Conv(fc, (1, 1), padding="VALID", dtype=self.dtype, param_dtype=jnp.float32,
                                   kernel_init=conv_init, name="fc7")(x)))
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return {"top": x} if extent is None else ({"top": x}, {"top": e})


def caffe_shapes(width: float = 1.0) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
    """{layer: (weight shape, bias shape)} of CaffeNet's conv1 .. fc7 at ``width``, Caffe layouts: conv
    (O, I / group, kh, kw), fc6 InnerProduct (fc, C5 * 6 * 6) (input flattened C, H, W), fc7 (fc, fc)."""
    shapes, c_in = {}, 3
    for spec in ALEXNET_CONVS:
        c = channels(spec.channels, width)
        shapes[spec.name] = ((c, c_in // spec.groups, spec.kernel, spec.kernel), (c,))
        c_in = c
    fc = scaled(FC_CHANNELS, width)
    shapes["fc6"] = ((fc, c_in * FC6_SIZE * FC6_SIZE), (fc,))
    shapes["fc7"] = ((fc, fc), (fc,))
    return shapes


def caffe_imagenet_params(blobs: Mapping[str, Sequence[np.ndarray]], *,
                          width: float | None = None) -> dict[tuple[str, ...], np.ndarray]:
    """The backbone parameters of an ImageNet CaffeNet / bvlc_alexnet ``.caffemodel``.

    ``blobs``: Caffe layer name -> (weight, bias) in Caffe layouts (``caffe_shapes``); fc6 / fc7 may also be
    convolutionalised already ((fc, C5, 6, 6) / (fc, fc, 1, 1), as the reference's ``alexnet-fcn.caffemodel``).
    fc8 (the 1000 ImageNet classes) and any other layer are ignored. ``width``: expect ``caffe_shapes(width)``;
    None: each layer's output channels are the file's own, the input channels must chain from them.
    Returns ``{('backbone', layer, 'kernel' | 'bias'): float32 array}``: kernels HWIO, fc6 the 6x6 conv whose
    output at each position is the InnerProduct on the flattened (C, H, W) 6x6 patch there, fc7 a 1x1 conv.
    Raises ValueError naming the layer and the expected vs found shape.
    """
    fixed = caffe_shapes(width) if width is not None else {}
    layers = [(spec.name, spec.kernel, spec.groups) for spec in ALEXNET_CONVS] + [("fc6", FC6_SIZE, 1), ("fc7", 1, 1)]
    out, c_in = {}, 3
    for name, k, groups in layers:
        if name not in blobs:
            raise ValueError(f"CaffeNet weights lack layer {name}")
        if len(blobs[name]) != 2:
            raise ValueError(f"CaffeNet layer {name}: expected 2 blobs (weight, bias), found {len(blobs[name])}")
        w, b = (np.asarray(a, np.float32) for a in blobs[name])
        c_out = w.shape[0] if w.ndim else 0
        if name in fixed:
            w_shape, b_shape = fixed[name]
        else:
            w_shape = (c_out, c_in * k * k) if name.startswith("fc") else (c_out, c_in // groups, k, k)
            b_shape = (c_out,)
        if name.startswith("fc"):
            conv_shape = (w_shape[0], w_shape[1] // (k * k), k, k)
            if w.shape not in (w_shape, conv_shape):
                raise ValueError(f"CaffeNet layer {name} weight: expected {w_shape} or {conv_shape}, found {w.shape}")
            w = w.reshape(conv_shape)  # InnerProduct input flattened C, H, W
        elif w.shape != w_shape:
            raise ValueError(f"CaffeNet layer {name} weight: expected {w_shape}, found {w.shape}")
        if b.shape != b_shape:
            raise ValueError(f"CaffeNet layer {name} bias: expected {b_shape}, found {b.shape}")
        out[("backbone", name, "kernel")] = np.ascontiguousarray(w.transpose(2, 3, 1, 0))
        out[("backbone", name, "bias")] = b
        c_in = w_shape[0]
    return out
