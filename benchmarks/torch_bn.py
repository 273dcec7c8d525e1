"""The PyTorch side of the BatchNorm FCNs (dev only): parity tests and ``benchmarks/compare_torch.py``.

- Seed 002's ``VGG11BackBone`` / ``VGG11Segmentation``, written out from the seed's text as it is (NCHW, fixed
  widths, ``nn.Upsample(scale_factor=16)``: for inputs that are multiples of 16), and :class:`SeedFCN`, the same
  network resized to the input's exact size with ``F.interpolate`` (what ``fcn-vgg11bn`` computes at any size).
- torchvision's FCN-ResNet50/101, from torchvision's own model code: :func:`import_torchvision` (the registry's
  torchvision wheels are built for CUDA torch; imported beside the CPU torch their C++ ops fail to register, and
  the model code needs none of them) and :func:`torchvision_fcn` (``fcn_resnet50/101`` itself at width 1; at a
  width multiplier, the same classes with every layer's planes scaled).

Written from the seed and torchvision, independently of fcn_jax.
"""
from __future__ import annotations

import types

import torch
from torch import nn
from torch.nn import functional as F

# ResNet blocks per layer (torchvision's resnet50 / resnet101)
RESNET_BLOCKS = {"fcn-resnet50": (3, 4, 6, 3), "fcn-resnet101": (3, 4, 23, 3)}


# ------------------------------------------------------------------ seed 002's classes (its text, as written)

class VGG11BackBone(nn.Module):
    def __init__(self):
        super(VGG11BackBone, self).__init__()
        self.relu = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, padding=1)
        self.bn1 = nn.BatchNorm2d(64)
        self.pool1 = nn.MaxPool2d(kernel_size=2, stride=2)  # 64 x 112 x 112
        self.conv2 = nn.Conv2d(64, 128, kernel_size=3, padding=1)
        self.bn2 = nn.BatchNorm2d(128)
        self.pool2 = nn.MaxPool2d(kernel_size=2, stride=2)  # 128 x 56 x 56
        self.conv3_1 = nn.Conv2d(128, 256, kernel_size=3, padding=1)
        self.bn3_1 = nn.BatchNorm2d(256)
        self.conv3_2 = nn.Conv2d(256, 256, kernel_size=3, padding=1)
        self.bn3_2 = nn.BatchNorm2d(256)
        self.pool3 = nn.MaxPool2d(kernel_size=2, stride=2)  # 256 x 28 x 28
        self.conv4_1 = nn.Conv2d(256, 512, kernel_size=3, padding=1)
        self.bn4_1 = nn.BatchNorm2d(512)
        self.conv4_2 = nn.Conv2d(512, 512, kernel_size=3, padding=1)
        self.bn4_2 = nn.BatchNorm2d(512)
        self.pool4 = nn.MaxPool2d(kernel_size=2, stride=2)  # 512 x 14 x 14
        self.conv5_1 = nn.Conv2d(512, 512, kernel_size=3, padding=1)
        self.bn5_1 = nn.BatchNorm2d(512)
        self.conv5_2 = nn.Conv2d(512, 512, kernel_size=3, padding=1)
        self.bn5_2 = nn.BatchNorm2d(512)

    def forward(self, x):
        x = self.conv1(x)
        x = self.bn1(x)
        x = self.relu(x)
        x = self.pool1(x)
        x = self.conv2(x)
        x = self.bn2(x)
        x = self.relu(x)
        x = self.pool2(x)
        x = self.conv3_1(x)
        x = self.bn3_1(x)
        x = self.relu(x)
        x = self.conv3_2(x)
        x = self.bn3_2(x)
        x = self.relu(x)
        x = self.pool3(x)
        x = self.conv4_1(x)
        x = self.bn4_1(x)
        x = self.relu(x)
        x = self.conv4_2(x)
        x = self.bn4_2(x)
        x = self.relu(x)
        x = self.pool4(x)
        x = self.conv5_1(x)
        x = self.bn5_1(x)
        x = self.relu(x)
        x = self.conv5_2(x)
        x = self.bn5_2(x)
        x = self.relu(x)
        return x


class VGG11Segmentation(nn.Module):
    def __init__(self, num_classes=7):
        super(VGG11Segmentation, self).__init__()
        self.backbone = VGG11BackBone()
        with torch.no_grad():
            self.conv_out = nn.Conv2d(512, num_classes, kernel_size=1, padding=0, stride=1)
        self.upsample = torch.nn.Upsample(scale_factor=16, mode='bilinear', align_corners=False)

    def forward(self, x):
        x = self.backbone(x)  # 512 x 14 x 14
        x = self.conv_out(x)  # 7 x 14 x 14
        x = self.upsample(x)  # 1 x 7 x 14 * 16 x 14 * 16
        # (the seed asserts x.shape == (1, 7, 224, 224) here: its one input size; left out for the others)
        return x


class SeedFCN(VGG11Segmentation):
    """The seed's segmentation network with the output resized to the input's own size (``F.interpolate(size=
    input, mode='bilinear', align_corners=False)``): the seed's ``scale_factor=16`` upsampling where the input is a
    multiple of 16, and defined at any other size."""

    def forward(self, x):
        return F.interpolate(self.conv_out(self.backbone(x)), size=x.shape[-2:], mode="bilinear", align_corners=False)


# ---------------------------------------------------------------------------------------- torchvision

def import_torchvision() -> types.ModuleType:
    """``import torchvision`` with ``torch.library.register_fake`` a no-op decorator: the registry's wheels are
    built for CUDA torch, and on the CPU torch their C++ ops (nms, roi_align, ...) fail to register at import;
    the model code used here needs none of them. ImportError where torchvision is not installed."""
    original = torch.library.register_fake
    torch.library.register_fake = lambda *args, **kwargs: (lambda fn: fn)
    try:
        import torchvision
    finally:
        torch.library.register_fake = original
    return torchvision


def torchvision_fcn(variant: str, num_classes: int, width: float = 1.0, aux: bool = True) -> nn.Module:
    """torchvision's ``fcn_resnet50/101(weights=None, weights_backbone=None, aux_loss=aux)`` for ``variant``
    (``fcn-resnet50`` / ``fcn-resnet101``). At ``width`` < 1 (:func:`narrow_torchvision_fcn`): torchvision's ``ResNet`` (its own ``__init__`` with
    ``replace_stride_with_dilation=[False, True, True]`` and ``_make_layer``, the stem's and every layer's planes
    scaled by ``width``) in its ``IntermediateLayerGetter``, with its ``FCNHead``s on layer4 (and layer3) in its
    ``FCN``: what ``_fcn_resnet`` builds, narrower. ``forward`` returns ``{'out'[, 'aux']}``, NCHW."""
    if variant not in RESNET_BLOCKS:
        raise ValueError(f"torchvision has no FCN for {variant!r}; expected one of {', '.join(RESNET_BLOCKS)}")
    if width != 1.0:
        return narrow_torchvision_fcn(variant, num_classes, width, aux)
    segmentation = import_torchvision().models.segmentation
    build = {"fcn-resnet50": segmentation.fcn_resnet50, "fcn-resnet101": segmentation.fcn_resnet101}[variant]
    return build(weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=aux)


def narrow_torchvision_fcn(variant: str, num_classes: int, width: float, aux: bool = True) -> nn.Module:
    """:func:`torchvision_fcn` at a width multiplier, built from torchvision's classes (at width 1 the same
    network as torchvision's own builder)."""
    import_torchvision()
    from torchvision.models._utils import IntermediateLayerGetter
    from torchvision.models.resnet import Bottleneck, ResNet
    from torchvision.models.segmentation.fcn import FCN, FCNHead

    def s(channels):
        return max(1, int(round(channels * width)))

    class NarrowResNet(ResNet):
        def _make_layer(self, block, planes, blocks, stride=1, dilate=False):
            if planes == 64:  # layer1, built right after the stem: narrow the stem's 64 channels too
                self.inplanes = s(64)
                self.conv1 = nn.Conv2d(3, s(64), kernel_size=7, stride=2, padding=3, bias=False)
                self.bn1 = nn.BatchNorm2d(s(64))
            return super()._make_layer(block, s(planes), blocks, stride, dilate)

    backbone = NarrowResNet(Bottleneck, list(RESNET_BLOCKS[variant]), replace_stride_with_dilation=[False, True, True])
    layers = {"layer4": "out", "layer3": "aux"} if aux else {"layer4": "out"}
    backbone = IntermediateLayerGetter(backbone, return_layers=layers)
    return FCN(backbone, FCNHead(4 * s(512), num_classes), FCNHead(4 * s(256), num_classes) if aux else None)
