"""torchvision's FCN-ResNet recipe (pytorch/vision references/segmentation/train.py and presets.py).

``train.py --preset torchvision --variant fcn-resnet50 --init resnet50-0676ba61.pth`` (or fcn-resnet101 with
``resnet101-63fe2227.pth``, torchvision's ImageNet weights): global batch 32 (8 GPUs x 4, its SyncBN = the
batch statistics over the global batch, as fcn-jax's sharded step computes them), RandomResize of the shorter
side to 260-1040 px (``resize_base`` 520 x ``scale_range`` 0.5-2), horizontal flip 0.5, RandomCrop 480, the
ImageNet mean / std (``preprocessing='torchvision'``), loss = cross-entropy(out) + 0.5 cross-entropy(aux),
mean over labelled pixels (ignore 255), SGD lr 0.02 momentum 0.9 with weight decay 1e-4 on every parameter
(biases and BatchNorm too: torchvision's single parameter group setting), the aux head at 10x lr, poly decay
(1 - step / steps) ** 0.9 per step, 30 epochs, float32, BatchNorm trained (not frozen).

What differs, and why. torchvision trains its published weights on COCO train2017 restricted to the 20 VOC
categories, which fcn-jax has no reader for; this config trains on PASCAL VOC2012 train_aug (10,582 images, the
same 21 classes), 30 epochs = 30 x floor(10,582 / 32) = 9,900 steps (torchvision's drop_last epochs). Crops
smaller than 480 px are padded with the mean colour (0 after preprocessing) where torchvision pads with black,
and validation scores each image at its own size (the VOC protocol) where torchvision's script resizes image
and mask to a shorter side of 520. For other data: ``--dataset folder:DIR`` and ``--steps``.
"""
from fcn_jax.config import ModelConfig, TrainConfig
from fcn_jax.models import check_variant

VARIANTS = ("fcn-resnet50", "fcn-resnet101")
EPOCH_STEPS = 10_582 // 32  # VOC2012 train_aug at global batch 32, the last partial batch dropped


def get_config(variant: str = "fcn-resnet50") -> TrainConfig:
    check_variant(variant)
    if variant not in VARIANTS:
        raise ValueError(f"the torchvision preset is torchvision's FCN-ResNet recipe for {', '.join(VARIANTS)}, not "
                         f"{variant}; see python train.py --help (--preset shapes_bn: the BatchNorm demo)")
    return TrainConfig(
        model=ModelConfig(variant=variant, num_classes=21, width=1.0, padding="same", dropout_rate=0.0,
                          dtype="float32", freeze_upsamplers="final", frozen_bn=False),
        preset="torchvision",
        dataset="voc_segmentation/voc2012_aug",
        data_dir=None,
        # data: shorter side 260-1040 px, 480 px crops, flips, global batch 32
        mode="modern", batch_size=32, grad_accum=1, crop_size=480, scale_range=(0.5, 2.0), resize_base=520,
        flip=True, bucket_multiple=None, sampling="epoch", preprocessing="torchvision",
        void_value=255, binary_masks=False,  # how folder: datasets' masks are read
        # loss and solver: out + 0.5 aux, SGD with the aux head at 10x lr
        loss="mean", aux_loss_weight=0.5, class_weights=None,
        optimizer="sgd", lr=0.02, schedule="poly", warmup_steps=0, momentum=0.9,
        weight_decay=1e-4, decay_biases=True, bias_lr_mult=1.0, lr_mults="aux_classifier/.*=10",
        steps=30 * EPOCH_STEPS, trainable=None, frozen=None, init=None, seed=1337,
        # bookkeeping: validation and a checkpoint every epoch
        log_every=20, eval_every=EPOCH_STEPS, eval_batch_size=8, eval_bucket_multiple=None,
        checkpoint_every=EPOCH_STEPS, keep_checkpoints=3,
    )
