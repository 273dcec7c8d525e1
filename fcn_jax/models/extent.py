"""Per-image extents in a padded batch: how images of different sizes share one compiled program and still get
exactly the result each gets alone at its own size.

A bucketed batch holds every image top-left in a larger canvas. An :class:`Extent` is, for every image, the
rows and columns a feature map would have if that image ran alone (the reference's size arithmetic:
convolutions and pools with their pads and strides, Caffe's ceil-mode pools, deconvolutions, crops), and
:meth:`Extent.mask` zeroes the map beyond it. Masking the input (0 is Caffe's zero padding in preprocessed
space) and every layer's output that a bias or a crop makes non-zero there turns the canvas filler into the
zero padding the own-size forward pass sees:

- a convolution's output inside the extent reads only positions inside the previous extent or within its pad
  of it, and those are the own-size input or zeros, as in the own-size pass;
- a max pool's window reaching past the extent reads zeros where Caffe's ceil mode reads -inf (or clips the
  window): the same maximum, because what these networks pool is >= 0 (ReLU outputs, LRN of them, maxima of
  them) and every window of an output inside the extent holds at least one position inside;
- a deconvolution has no bias, so a map that is zero beyond its extent stays zero beyond the deconvolved one;
- a crop at the reference's offset maps the extent of its target into the extent of its source (the own-size
  crop is in bounds), so a sum of aligned maps is masked to the target's extent afterwards.

Positions beyond the extent are zero in every output, and so are their gradients. ``Extent(None)`` is the
unpadded case: every size None, :meth:`~Extent.mask` the identity, no work added to the program.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp

__all__ = ["Extent"]


@dataclasses.dataclass(frozen=True)
class Extent:
    """``sizes``: (N, 2) int32 (height, width) of each image's part of an (N, H, W, C) map, or None (all of it).

    Size arithmetic (elementwise on ``sizes``; filler rows of size (0, 0) may go negative, which masks all):
    :meth:`window` a conv or pool with explicit pads (floor mode), :meth:`ceil_window` Caffe's ceil-mode pool
    without pad, :meth:`deconv` a transposed conv, :meth:`round_up` the 'same' padding to the output stride.
    """

    sizes: jax.Array | None = None

    def _map(self, fn) -> Extent:
        return Extent(None if self.sizes is None else fn(jnp.asarray(self.sizes, jnp.int32)))

    def window(self, kernel: int, stride: int = 1, pad: int | Sequence[int] = 0) -> Extent:
        """After a k x k / stride s conv or pool padding (lo, hi) (an int: both): ``(e + lo + hi - k) // s + 1``."""
        lo, hi = (pad, pad) if isinstance(pad, int) else pad
        return self._map(lambda e: (e + lo + hi - kernel) // stride + 1)

    def ceil_window(self, kernel: int, stride: int) -> Extent:
        """After a k x k / stride s pool in Caffe's ceil mode, no pad: ``ceil((e - k) / s) + 1``."""
        return self._map(lambda e: -((kernel - e) // stride) + 1)

    def deconv(self, kernel: int, stride: int, pad: int = 0) -> Extent:
        """After a transposed conv (Caffe's Deconvolution): ``(e - 1) * s + k - 2 * pad``."""
        return self._map(lambda e: (e - 1) * stride + kernel - 2 * pad)

    def round_up(self, multiple: int) -> Extent:
        """Each size rounded up to a multiple (what ``padding='same'`` pads an image to)."""
        return self._map(lambda e: -(-e // multiple) * multiple)

    def mask(self, x: jax.Array) -> jax.Array:
        """``x`` (N, H, W, ...) with every position at or beyond its row's extent set to 0 (``x`` itself if
        ``sizes`` is None)."""
        if self.sizes is None:
            return x
        sizes = jnp.asarray(self.sizes, jnp.int32)
        rows = jnp.arange(x.shape[1], dtype=jnp.int32)[None, :, None] < sizes[:, 0, None, None]
        cols = jnp.arange(x.shape[2], dtype=jnp.int32)[None, None, :] < sizes[:, 1, None, None]
        inside = (rows & cols).reshape(rows.shape[0], x.shape[1], x.shape[2], *(1,) * (x.ndim - 3))
        return jnp.where(inside, x, jnp.zeros((), x.dtype))
