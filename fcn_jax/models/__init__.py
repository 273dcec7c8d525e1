"""FCN models: backbones, the variant registry, the skip head, bilinear upsampling and the FCN module."""
from fcn_jax.models.registry import (PADDINGS, SPECS, VARIANTS, Head, Stream, Upsampler, VariantSpec, check_padding,
                                     check_variant, final_upsampler_names, get_variant, input_shape,
                                     upsampler_names, validate)
from fcn_jax.models.upsample import Upsample, bilinear_filter, bilinear_init, conv_transpose
from fcn_jax.models.backbones import BACKBONES, get_backbone
from fcn_jax.models.backbones.vgg import VGG16, VGG16_BLOCKS
from fcn_jax.models.heads import SkipHead
from fcn_jax.models.fcn import FCN, INIT_SHAPE, initial_variables

__all__ = ["BACKBONES", "FCN", "INIT_SHAPE", "PADDINGS", "SPECS", "VARIANTS", "VGG16", "VGG16_BLOCKS", "Head", "SkipHead",
           "Stream", "Upsample", "Upsampler", "VariantSpec", "bilinear_filter", "bilinear_init", "check_padding",
           "check_variant", "conv_transpose", "final_upsampler_names", "get_backbone", "get_variant",
           "initial_variables", "input_shape", "upsampler_names", "validate"]
