"""PyTorch reference FCN (dev only): parity tests and the PyTorch side of the benchmark.

Written from the project's reference facts (the Caffe reference / pytorch-fcn), independently of
fcn_jax. Attribute names are pytorch-fcn's, so ``state_dict()`` keys are those of
``fcn{32s,16s,8s,8s-atonce}_from_caffe.pth``. Layout NCHW; the module also runs in channels_last
(``model.to(memory_format=torch.channels_last)``) and under ``torch.autocast``.
"""
from __future__ import annotations

import torch
from torch import nn

VARIANTS = ("fcn32s", "fcn16s", "fcn8s", "fcn8s-atonce")
# (convs per block, channels at full width)
VGG16_BLOCKS = ((2, 64), (2, 128), (3, 256), (3, 512), (3, 512))
FC_CHANNELS = 4096
# fcn8s-atonce scales pool4 / pool3 before their score layers (fixed constants).
ATONCE_POOL4_SCALE = 0.01
ATONCE_POOL3_SCALE = 0.0001


def scaled(channels: int, width: float) -> int:
    """Channel count at a width multiplier (at least 1); the same rounding as fcn_jax."""
    return max(1, int(round(channels * width)))


def bilinear_kernel(in_channels: int, out_channels: int, kernel_size: int) -> torch.Tensor:
    """ConvTranspose2d weight (C_in, C_out, k, k): the reference's bilinear filter on the channel diagonal."""
    if in_channels != out_channels:
        raise ValueError(f"bilinear kernel needs in_channels == out_channels, got {in_channels}, {out_channels}")
    factor = (kernel_size + 1) // 2
    center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    og = torch.arange(kernel_size, dtype=torch.float64)
    f = 1.0 - (og - center).abs() / factor
    weight = torch.zeros(in_channels, out_channels, kernel_size, kernel_size, dtype=torch.float64)
    index = torch.arange(in_channels)
    weight[index, index] = f[:, None] * f[None, :]
    return weight.float()


def _crop(x: torch.Tensor, offset: int, like: torch.Tensor) -> torch.Tensor:
    """Caffe ``Crop`` on NCHW: ``x[:, :, offset:offset+H, offset:offset+W]`` with H, W those of ``like``."""
    return x[:, :, offset:offset + like.shape[2], offset:offset + like.shape[3]]


class FCN(nn.Module):
    """FCN-32s / 16s / 8s / 8s-atonce on VGG16; ``forward(x)``: (N, 3, H, W) -> logits (N, num_classes, H, W).

    conv1_1 pads 100, pools are 2x2/2 ceil mode, fc6 is a VALID 7x7 conv; score layers start at zero and
    upsamplers (ConvTranspose2d, no bias) bilinear; crops 19 | 5, 27 | 5, 9, 31 as in the reference.
    ``width`` scales every backbone channel count (1.0 is the real network).
    """

    def __init__(self, variant: str = "fcn32s", num_classes: int = 21, width: float = 1.0):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown FCN variant {variant!r}; expected one of {VARIANTS}")
        self.variant = variant
        self.num_classes = num_classes
        in_channels = 3
        for block, (n_convs, channels) in enumerate(VGG16_BLOCKS, start=1):
            out_channels = scaled(channels, width)
            for i in range(1, n_convs + 1):
                padding = 100 if (block, i) == (1, 1) else 1
                setattr(self, f"conv{block}_{i}", nn.Conv2d(in_channels, out_channels, 3, padding=padding))
                setattr(self, f"relu{block}_{i}", nn.ReLU(inplace=True))
                in_channels = out_channels
            setattr(self, f"pool{block}", nn.MaxPool2d(2, stride=2, ceil_mode=True))
        fc = scaled(FC_CHANNELS, width)
        self.fc6 = nn.Conv2d(in_channels, fc, 7)
        self.relu6 = nn.ReLU(inplace=True)
        self.drop6 = nn.Dropout(0.5)
        self.fc7 = nn.Conv2d(fc, fc, 1)
        self.relu7 = nn.ReLU(inplace=True)
        self.drop7 = nn.Dropout(0.5)

        n = num_classes
        deconv = lambda k, s: nn.ConvTranspose2d(n, n, k, stride=s, bias=False)  # noqa: E731
        self.score_fr = nn.Conv2d(fc, n, 1)
        if variant == "fcn32s":
            self.upscore = deconv(64, 32)
        elif variant == "fcn16s":
            self.score_pool4 = nn.Conv2d(scaled(512, width), n, 1)
            self.upscore2 = deconv(4, 2)
            self.upscore16 = deconv(32, 16)
        else:
            self.score_pool3 = nn.Conv2d(scaled(256, width), n, 1)
            self.score_pool4 = nn.Conv2d(scaled(512, width), n, 1)
            self.upscore2 = deconv(4, 2)
            self.upscore8 = deconv(16, 8)
            self.upscore_pool4 = deconv(4, 2)
        self.reset_heads()

    def reset_heads(self) -> None:
        """Score layers to zero, upsamplers to bilinear (the reference's initialisation of the heads)."""
        for name, module in self.named_children():
            if name.startswith("score_"):
                nn.init.zeros_(module.weight)
                nn.init.zeros_(module.bias)
            elif name.startswith("upscore"):
                with torch.no_grad():
                    module.weight.copy_(bilinear_kernel(self.num_classes, self.num_classes,
                                                        module.kernel_size[0]))

    def _vgg(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(pool3, pool4, fc7) of the backbone."""
        h = x
        pools = {}
        for block, (n_convs, _) in enumerate(VGG16_BLOCKS, start=1):
            for i in range(1, n_convs + 1):
                h = getattr(self, f"relu{block}_{i}")(getattr(self, f"conv{block}_{i}")(h))
            h = getattr(self, f"pool{block}")(h)
            pools[block] = h
        h = self.drop6(self.relu6(self.fc6(h)))
        h = self.drop7(self.relu7(self.fc7(h)))
        return pools[3], pools[4], h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pool3, pool4, h = self._vgg(x)
        h = self.score_fr(h)
        if self.variant == "fcn32s":
            return _crop(self.upscore(h), 19, x)
        atonce = self.variant == "fcn8s-atonce"
        upscore2 = self.upscore2(h)
        score_pool4 = self.score_pool4(pool4 * ATONCE_POOL4_SCALE if atonce else pool4)
        h = upscore2 + _crop(score_pool4, 5, upscore2)
        if self.variant == "fcn16s":
            return _crop(self.upscore16(h), 27, x)
        upscore_pool4 = self.upscore_pool4(h)
        score_pool3 = self.score_pool3(pool3 * ATONCE_POOL3_SCALE if atonce else pool3)
        h = upscore_pool4 + _crop(score_pool3, 9, upscore_pool4)
        return _crop(self.upscore8(h), 31, x)


__all__ = ["FCN", "VARIANTS", "bilinear_kernel", "scaled"]
