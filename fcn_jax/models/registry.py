"""The variants, one table: name -> :class:`~fcn_jax.models.spec.VariantSpec` (a backbone and its heads as
data); the one place names and capabilities are validated.

Crop offsets are the Caffe reference's (``padding='reference'``); ``padding='same'`` crops at 0.
:func:`register_variant` adds a network (with :func:`~fcn_jax.models.backbones.register_backbone` /
:func:`~fcn_jax.models.heads.register_head` for new layers); everything that takes a variant name (the
config, the CLIs, training, evaluation, loading) then takes it.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Sequence

from fcn_jax.models.heads import BilinearSpec, FCNHeadSpec, SkipSpec, Upsampler
from fcn_jax.models.layers import PADDINGS, check_padding
from fcn_jax.models.outputs import Output, evaluated
from fcn_jax.models.spec import HeadSpec, Stream, VariantSpec
from fcn_jax.models.table import Registry

__all__ = ["AUX_LOSS_WEIGHT", "PADDINGS", "SPECS", "VARIANTS", "check_padding", "check_variant", "evaluated_outputs",
           "final_upsampler_names", "get_variant", "has_batchnorm", "input_shape", "main_output", "maskable", "outputs",
           "register_variant", "require", "require_maskable", "resolve_inputs", "skip_specs", "supports",
           "takes_frozen_bn", "unregister_variant", "upsampler_names", "validate"]


def _skip(skips: tuple[str, ...], upsamplers: tuple[Upsampler, ...], skip_offsets: tuple[int, ...],
          final_offset: int, feature_scales: tuple[float, ...] | None = None) -> SkipSpec:
    return SkipSpec(skips, upsamplers, skip_offsets, final_offset, feature_scales)


_FCN32S = _skip((), (Upsampler("upscore", 64, 32),), (), 19)
_FCN16S = _skip(("pool4",), (Upsampler("upscore2", 4, 2), Upsampler("upscore16", 32, 16)), (5,), 27)
_FCN8S = _skip(("pool4", "pool3"), (Upsampler("upscore2", 4, 2), Upsampler("upscore_pool4", 4, 2),
                                    Upsampler("upscore8", 16, 8)), (5, 9), 31)


def _one(skip: SkipSpec) -> tuple[HeadSpec, ...]:
    return (HeadSpec("skip", Output("out"), skip),)


def _siftflow(skip: SkipSpec) -> tuple[HeadSpec, ...]:
    """SIFT Flow (siftflow-fcn*/net.py): two heads of the VOC variant's shape on one VGG16, semantic (the
    model's num_classes, 33) and geometric (3), each with its own score layers, upsamplers and crops."""
    return (HeadSpec("skip", Output("sem"), dataclasses.replace(skip, suffix="_sem")),
            HeadSpec("skip", Output("geo", 3, "geometric"), dataclasses.replace(skip, suffix="_geo")))


AUX_LOSS_WEIGHT = 0.5  # torchvision's references/segmentation/train.py: loss = out + 0.5 * aux


def _torchvision_fcn() -> tuple[HeadSpec, ...]:
    """torchvision's FCN heads: FCNHead on layer4 ('out', under ``classifier``) and a training-only
    auxiliary FCNHead on layer3 ('aux', under ``aux_classifier``, loss weight 0.5), both at stride 8."""
    return (HeadSpec("fcnhead", Output("out"), FCNHeadSpec("top", 8), scope="classifier"),
            HeadSpec("fcnhead", Output("aux", loss_weight=AUX_LOSS_WEIGHT, evaluated=False), FCNHeadSpec("layer3", 8),
                     scope="aux_classifier"))


_BUILTIN_SPECS: dict[str, VariantSpec] = {
    "fcn32s": VariantSpec("vgg16", _one(_FCN32S), "FCN-32s: fc7 scores upsampled x32 in one step"),
    "fcn16s": VariantSpec("vgg16", _one(_FCN16S), "FCN-16s: FCN-32s plus a pool4 skip, upsampled x16"),
    "fcn8s": VariantSpec("vgg16", _one(_FCN8S), "FCN-8s: FCN-16s plus a pool3 skip, upsampled x8"),
    "fcn8s-atonce": VariantSpec(
        "vgg16", _one(dataclasses.replace(_FCN8S, feature_scales=(0.01, 0.0001))),
        "FCN-8s trained at once: pool4 x0.01 and pool3 x0.0001 before their score layers"),
    "siftflow-fcn32s": VariantSpec("vgg16", _siftflow(_FCN32S),
                                   "SIFT Flow FCN-32s: semantic (33) and geometric (3) heads on one VGG16"),
    "siftflow-fcn16s": VariantSpec("vgg16", _siftflow(_FCN16S),
                                   "SIFT Flow FCN-16s: semantic and geometric FCN-16s heads on one VGG16"),
    "siftflow-fcn8s": VariantSpec("vgg16", _siftflow(_FCN8S),
                                  "SIFT Flow FCN-8s: semantic and geometric FCN-8s heads on one VGG16"),
    # NYUDv2 (nyud-fcn32s-color-d/net.py): early fusion, conv1_1 (Caffe conv1_1_bgrd) reads BGR + log depth.
    "nyud-fcn32s-color-d": VariantSpec(
        "vgg16", _one(_FCN32S), "NYUD FCN-32s early fusion: colour and log depth as one 4-channel input",
        in_channels=4, inputs="BGR image + log depth (4 channels)", caffe_names=(("conv1_1", "conv1_1_bgrd"),)),
    # NYUDv2 (nyud-fcn32s-color-hha/net.py): late fusion, a VGG16 + score_fr per modality, the two score maps
    # summed with coefficients 0.5 / 0.5 (Eltwise SUM coeff), then one upscore.
    "nyud-fcn32s-color-hha": VariantSpec(
        "vgg16", _one(_FCN32S), "NYUD FCN-32s late fusion: a colour and an HHA VGG16, scores summed 0.5 / 0.5",
        streams=(Stream("color", 3, 0.5), Stream("hha", 3, 0.5)), in_channels=6,
        inputs="BGR image + HHA (6 channels: colour first)"),
    # voc-fcn-alexnet/net.py: CaffeNet, one 63/32 upsampler. Final offset (Caffe's coord map, per axis): a layer
    # maps output index i to input coordinate s*i - p + (k-1)/2. conv1 (11, s4, p100): 4i - 95; pool1/2/5 (3, s2):
    # 2i + 1; conv2-5 (p = (k-1)/2): i; fc6 (6, p0): i + 2.5; fc7, score_fr: i. Composed, score_fr cell i sits at
    # input 4(2(2(2(i + 2.5) + 1) + 1) + 1) - 95 = 32i + 13; upscore (63, s32, p0) puts it at 32i + 31, so
    # upscore pixel j is input pixel j - 18: crop 18 (the reference's val.prototxt says offset: 18).
    "fcn-alexnet": VariantSpec("alexnet", _one(_skip((), (Upsampler("upscore", 63, 32),), (), 18)),
                               "FCN-AlexNet: CaffeNet fc7 scores upsampled x32 in one step"),
    # FCN paper Table 1 (FCN-GoogLeNet, no reference release; backbones/googlenet.py): inception_5b's scores, one
    # 63/32 upsampler. Final offset as for fcn-alexnet (index i -> input s*i - p + (k-1)/2): conv1/7x7_s2 (7, s2,
    # p18): 2i - 15; pool1..pool4 (3, s2, p0): 2i + 1; every other conv and the inception pools (p = (k-1)/2): i.
    # Composed, score_fr cell i sits at input 2(2(2(2(2i + 1) + 1) + 1) + 1) - 15 = 32i + 15; upscore (63, s32,
    # p0) puts it at 32i + 31, so upscore pixel j is input pixel j - 16: crop 16. (A 64 kernel would put it at
    # 32i + 31.5: no integer crop aligns it.)
    "fcn-googlenet": VariantSpec("googlenet", _one(_skip((), (Upsampler("upscore", 63, 32),), (), 16)),
                                 "FCN-GoogLeNet: inception_5b scores upsampled x32 in one step (paper Table 1)"),
    # Seed 002's VGG11Segmentation: VGG11-BN without pool5 (stride 16), conv_out 1x1, bilinear to the input
    # (the seed's Upsample(scale_factor=16) for multiples of 16, F.interpolate(size=input) for any other size).
    "fcn-vgg11bn": VariantSpec("vgg11bn", (HeadSpec("bilinear", Output("out"), BilinearSpec("top", 16, "conv_out")),),
                               "FCN-VGG11-BN (seed 002): conv5_2 at stride 16, 1x1 conv_out, bilinear to the input"),
    # torchvision.models.segmentation.fcn_resnet50 / fcn_resnet101 (aux_loss=True).
    "fcn-resnet50": VariantSpec("resnet50", _torchvision_fcn(),
                                "FCN-ResNet50 (torchvision): dilated ResNet-50 (stride 8), FCNHead, aux head on "
                                "layer3"),
    "fcn-resnet101": VariantSpec("resnet101", _torchvision_fcn(),
                                 "FCN-ResNet101 (torchvision): dilated ResNet-101 (stride 8), FCNHead, aux head on "
                                 "layer3"),
}
SPECS: Registry[VariantSpec] = Registry("FCN variant", _BUILTIN_SPECS)
VARIANTS: Sequence[str] = SPECS.names  # live: registered variants join it


def register_variant(name: str, spec: VariantSpec) -> VariantSpec:
    """Adds variant ``name`` (its backbone and head kinds must be registered); returns ``spec``."""
    from fcn_jax.models.backbones import get_backbone
    from fcn_jax.models.heads import get_head
    get_backbone(spec.backbone)
    for head in spec.heads:
        get_head(head.kind)
    return SPECS.register(name, spec)


def unregister_variant(name: str) -> None:
    """Removes a variant added with :func:`register_variant` (the built-in table stays)."""
    SPECS.unregister(name)


def check_variant(variant: str) -> str:
    """Returns ``variant`` if known, else raises ValueError naming the choices."""
    SPECS.check(variant)
    return variant


def get_variant(variant: str) -> VariantSpec:
    """The spec of a (validated) variant name."""
    return SPECS.check(variant)


def outputs(variant: str, num_classes: int) -> tuple[Output, ...]:
    """Every output of ``variant``'s heads (classes resolved against ``num_classes``), in order."""
    return get_variant(variant).outputs(num_classes)


def evaluated_outputs(variant: str, num_classes: int) -> tuple[Output, ...]:
    """The outputs evaluation scores and inference produces (training-only ones left out)."""
    return evaluated(outputs(variant, num_classes))


def main_output(variant: str, num_classes: int) -> Output:
    """The first evaluated output: what picks the best checkpoint and what single-output tools run."""
    return evaluated_outputs(variant, num_classes)[0]


def skip_specs(variant: str) -> tuple[SkipSpec, ...]:
    """The arguments of ``variant``'s Caffe skip heads, in head order (empty for other head kinds)."""
    return tuple(h.args for h in get_variant(variant).heads if h.kind == "skip")


def upsampler_names(variant: str) -> tuple[str, ...]:
    """Names of the variant's bilinear upsampling layers, skip head by skip head, each in data-flow order
    (the last of each head is its final one)."""
    return tuple(name for skip in skip_specs(variant) for name in skip.upsampler_names())


def final_upsampler_names(variant: str) -> tuple[str, ...]:
    """The final upsampler of each skip head."""
    return tuple(skip.upsampler_names()[-1] for skip in skip_specs(variant))


def input_shape(variant: str, height: int = 32, width: int = 32) -> tuple[int, int, int, int]:
    """(1, height, width, in_channels) NHWC: an input this variant takes (for init and eval_shape)."""
    return (1, height, width, get_variant(variant).in_channels)


def validate(variant: str, num_classes: int, width: float, padding: str) -> None:
    """Raises ValueError (one line) for an unknown variant or padding (or one the variant does not support),
    num_classes < 1 or width outside (0, 1]."""
    spec = get_variant(variant)
    check_padding(padding)
    if padding not in spec.paddings:
        raise ValueError(f"{variant} supports padding {' or '.join(spec.paddings)}, not {padding!r}")
    if not isinstance(num_classes, numbers.Integral) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"num_classes must be an integer >= 1, got {num_classes!r}")
    if (not isinstance(width, numbers.Real) or isinstance(width, bool) or not math.isfinite(width)
            or not 0 < width <= 1):
        raise ValueError(f"width must be a number in (0, 1], got {width!r}")


# ------------------------------------------------------------------------------------------ capabilities

_INPUTS_OF_CHANNELS = {3: "image", 4: "image+depth", 6: "image+hha"}


def resolve_inputs(inputs: str | None, variant: str) -> str:
    """``inputs`` (example fields forming the input, :data:`fcn_jax.preprocess.INPUTS`), or for None the
    default of ``variant`` (3 channels 'image', 4 'image+depth', 6 'image+hha'); raises a one-line
    ValueError naming ``--inputs`` if the channel counts differ."""
    from fcn_jax.preprocess import input_channels
    spec = get_variant(variant)
    if inputs is None:
        if spec.in_channels not in _INPUTS_OF_CHANNELS:
            raise ValueError(f"{variant} takes {spec.in_channels} input channels ({spec.inputs}); pass --inputs")
        return _INPUTS_OF_CHANNELS[spec.in_channels]
    if input_channels(inputs) != spec.in_channels:
        raise ValueError(f"--inputs {inputs} makes {input_channels(inputs)} input channels but {variant} takes "
                         f"{spec.in_channels} ({spec.inputs}); use --inputs "
                         f"{_INPUTS_OF_CHANNELS.get(spec.in_channels, 'of ' + str(spec.in_channels) + ' channels')}")
    return inputs


def require(variant: str, *, rgb: bool = False, single_output: bool = False, tool: str = "this tool",
            instead: str = "evaluate it with eval.py") -> None:
    """Raises a one-line ValueError unless ``variant`` has what ``tool`` needs: an RGB input (``rgb``) and
    exactly one evaluated output (``single_output``); ``instead`` says what to do then."""
    spec = get_variant(variant)
    scored = [h.output.name for h in spec.heads if h.output.evaluated]
    if single_output and len(scored) != 1:
        raise ValueError(f"{variant} has {len(scored)} output heads ({', '.join(scored)}); {tool} run "
                         f"single-head RGB models only: {instead}")
    if rgb and (spec.in_channels != 3 or len(spec.streams) != 1):
        raise ValueError(f"{variant} takes {spec.inputs}, not an RGB image; {tool} run RGB models only: {instead}")


def supports(variant: str, *, rgb: bool = False, single_output: bool = False) -> bool:
    """Whether :func:`require` accepts ``variant`` with these needs."""
    try:
        require(variant, rgb=rgb, single_output=single_output)
    except ValueError:
        return False
    return True



def takes_frozen_bn(module: type) -> bool:
    """Whether a backbone or head class has BatchNorm layers (it declares the ``frozen_bn`` field)."""
    return "frozen_bn" in getattr(module, "__dataclass_fields__", {})


def has_batchnorm(variant: str) -> bool:
    """Whether ``variant``'s backbone or one of its heads has BatchNorm layers (what ``frozen_bn`` freezes)."""
    from fcn_jax.models.backbones import get_backbone
    from fcn_jax.models.heads import get_head
    spec = get_variant(variant)
    return takes_frozen_bn(get_backbone(spec.backbone)) or any(takes_frozen_bn(get_head(h.kind)) for h in spec.heads)


def maskable(variant: str) -> bool:
    """Whether ``variant`` computes exact own-size results for images padded into a shared canvas
    (``FCN(...)(x, sizes=...)``, :mod:`fcn_jax.models.extent`): its backbone and every head declare
    ``MASKABLE``. True for the reference-geometry networks (VGG16 FCNs with their multi-head and fusion
    variants, FCN-AlexNet, FCN-GoogLeNet); False where a layer mixes a whole map: BatchNorm's batch statistics
    in training and the final bilinear resize of the FCN-ResNets and fcn-vgg11bn, whose scale is the map's
    size over the output's."""
    from fcn_jax.models.backbones import get_backbone
    from fcn_jax.models.heads import get_head
    spec = get_variant(variant)
    return getattr(get_backbone(spec.backbone), "MASKABLE", False) and all(
        getattr(get_head(h.kind), "MASKABLE", False) for h in spec.heads)


def require_maskable(variant: str) -> None:
    """Raises a one-line ValueError unless :func:`maskable` ``(variant)``."""
    if not maskable(variant):
        raise ValueError(f"{variant} cannot run images of several sizes in one padded batch exactly (per-image "
                         f"sizes); run it at each image's own size (bucket_multiple None)")
