"""FCN-32s-fixed, the first row of the paper's Table (45.4 mean IU): only the classifier learns.

The reference solver (:mod:`fcn_jax.configs.reference`) with every parameter outside the score layers
fixed: the ImageNet VGG16 backbone stays as initialised (``--init vgg16_from_caffe.pth``) and the
upsamplers stay bilinear. For ``fcn32s`` that is ``score_fr`` alone, the paper's recipe; other variants
train their skip score layers too.
"""
from fcn_jax.config import TrainConfig, override
from fcn_jax.configs import reference


def get_config(variant: str = "fcn32s") -> TrainConfig:
    return override(reference.get_config(variant), {"preset": "reference_fixed", "trainable": "score_.*"})
