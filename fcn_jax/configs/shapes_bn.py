"""The BatchNorm FCNs' offline demo: torchvision's FCN recipe at the size of the embedded ``shapes`` dataset.

``python train.py --preset shapes_bn --variant fcn-resnet50`` (or ``fcn-resnet101``, ``fcn-vgg11bn``) trains a
width-1/8 network from scratch on 2 CPU cores in minutes. From :mod:`fcn_jax.configs.torchvision`: SGD momentum
0.9 at lr 0.02 with poly decay, weight decay 1e-4 on every parameter, the aux head (fcn-resnet*) at 10x lr and
0.5 loss weight, ImageNet mean / std inputs, BatchNorm trained with batch statistics. From
:mod:`fcn_jax.configs.shapes`: batch 8 crops of 96 px, random scale 0.75-1.5 and flips, 2,500 steps, and validation
padded into 128-pixel buckets (the demo is no reference model). Copy this file to start a config of your own.
"""
from fcn_jax.config import ModelConfig, TrainConfig
from fcn_jax.models import check_variant
from fcn_jax.models.registry import has_batchnorm, outputs

AUX_LR = "aux_classifier/.*=10"  # torchvision: the aux head's parameter group at 10x lr


def get_config(variant: str = "fcn-resnet50") -> TrainConfig:
    check_variant(variant)
    if not has_batchnorm(variant):
        raise ValueError(f"the shapes_bn preset is for the BatchNorm FCNs (fcn-vgg11bn, fcn-resnet50, fcn-resnet101), "
                         f"not {variant}; use --preset shapes")
    aux = any(not o.evaluated for o in outputs(variant, 7))
    return TrainConfig(
        model=ModelConfig(variant=variant, num_classes=7, width=0.125, padding="same", dropout_rate=0.0,
                          dtype="float32", freeze_upsamplers="final", frozen_bn=False),
        preset="shapes_bn",
        dataset="shapes",
        data_dir=None,
        # data: random scale, 96 px crops and flips, batch 8
        mode="modern", batch_size=8, grad_accum=1, crop_size=96, scale_range=(0.75, 1.5), resize_base=None,
        flip=True, bucket_multiple=None, sampling="epoch", preprocessing="torchvision",
        void_value=255, binary_masks=False,  # how folder: datasets' masks are read
        # loss and solver: torchvision's (out + 0.5 aux; SGD, the aux head at 10x lr)
        loss="mean", aux_loss_weight=0.5 if aux else None, class_weights=None,
        optimizer="sgd", lr=0.02, schedule="poly", warmup_steps=0, momentum=0.9,
        weight_decay=1e-4, decay_biases=True, bias_lr_mult=1.0, lr_mults=AUX_LR if aux else None,
        steps=2500, trainable=None, frozen=None, init=None, seed=1337,
        # bookkeeping
        log_every=20, eval_every=500, eval_batch_size=8, eval_bucket_multiple=128,
        checkpoint_every=500, keep_checkpoints=3,
    )
