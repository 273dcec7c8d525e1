"""FCN models: shared layers, backbones and heads (registries), what a head outputs, the variant registry and
the FCN module."""
from fcn_jax.models.backbones import BACKBONES, get_backbone, register_backbone
from fcn_jax.models.backbones.vgg import VGG16, VGG16_BLOCKS
from fcn_jax.models.fcn import FCN, INIT_SHAPE, initial_variables
from fcn_jax.models.heads import HEADS, SkipHead, SkipSpec, Upsampler, get_head, register_head
from fcn_jax.models.extent import Extent
from fcn_jax.models.outputs import Output
from fcn_jax.models.registry import (PADDINGS, SPECS, VARIANTS, check_padding, check_variant, evaluated_outputs,
                                     final_upsampler_names, get_variant, input_shape, main_output, maskable, outputs,
                                     register_variant, require, resolve_inputs, skip_specs, supports,
                                     unregister_variant, upsampler_names, validate)
from fcn_jax.models.spec import HeadSpec, Stream, VariantSpec
from fcn_jax.models.upsample import Upsample, bilinear_filter, bilinear_init, conv_transpose

__all__ = ["BACKBONES", "Extent", "FCN", "HEADS", "INIT_SHAPE", "PADDINGS", "SPECS", "VARIANTS", "VGG16", "VGG16_BLOCKS",
           "HeadSpec", "Output", "SkipHead", "SkipSpec", "Stream", "Upsample", "Upsampler", "VariantSpec",
           "bilinear_filter", "bilinear_init", "check_padding", "check_variant", "conv_transpose",
           "evaluated_outputs", "final_upsampler_names", "get_backbone", "get_head", "get_variant",
           "initial_variables", "input_shape", "main_output", "maskable", "outputs", "register_backbone",
           "register_head", "register_variant", "require", "resolve_inputs", "skip_specs", "supports",
           "unregister_variant", "upsampler_names", "validate"]
