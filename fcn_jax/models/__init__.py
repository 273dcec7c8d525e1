"""FCN models: VGG16 backbone, FCN heads, bilinear upsampling."""
from fcn_jax.models.fcn import FCN, VARIANTS, check_variant, upsampler_names
from fcn_jax.models.upsample import Upsample, bilinear_filter, bilinear_init, conv_transpose
from fcn_jax.models.vgg import PADDINGS, VGG16, VGG16_BLOCKS

__all__ = ["FCN", "PADDINGS", "VARIANTS", "VGG16", "VGG16_BLOCKS", "Upsample", "bilinear_filter", "bilinear_init",
           "check_variant", "conv_transpose", "upsampler_names"]
