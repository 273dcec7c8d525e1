"""FCN models: VGG16 backbone, FCN heads, bilinear upsampling."""
from fcn_jax.models.fcn import FCN, VARIANTS, check_variant, upsampler_names
from fcn_jax.models.upsample import Upsample, bilinear_filter, bilinear_init, conv_transpose
from fcn_jax.models.vgg import VGG16

__all__ = ["FCN", "VARIANTS", "VGG16", "Upsample", "bilinear_filter", "bilinear_init", "check_variant",
           "conv_transpose", "upsampler_names"]
