"""Today's segmentation recipe on PASCAL VOC2012 train_aug (10,582 images), as in current code bases.

Batch 16 crops of 512 px with random scale 0.5-2 and flips, loss averaged over labelled pixels, SGD
momentum 0.9 at lr 0.01 with poly decay (power 0.9) over 40k steps, weight decay 5e-4, bfloat16
compute with float32 parameters, the final upsampler fixed at bilinear.
"""
from fcn_jax.config import ModelConfig, TrainConfig


def get_config(variant: str = "fcn32s") -> TrainConfig:
    return TrainConfig(
        model=ModelConfig(variant=variant, num_classes=21, width=1.0, padding="reference", dropout_rate=0.5,
                          dtype="bfloat16", freeze_upsamplers="final"),
        preset="modern",
        dataset="voc_segmentation/voc2012_aug",
        data_dir=None,
        # data: random scale, 512 px crops and flips, batch 16
        mode="modern", batch_size=16, grad_accum=1, crop_size=512, scale_range=(0.5, 2.0), flip=True,
        bucket_multiple=None, sampling="epoch", preprocessing="caffe",
        void_value=255, binary_masks=False,  # how folder: datasets' masks are read
        # loss and solver
        loss="mean", class_weights=None,
        optimizer="sgd", lr=0.01, schedule="poly", warmup_steps=0, momentum=0.9,
        weight_decay=5e-4, bias_lr_mult=2.0, steps=40_000, trainable=None, frozen=None, init=None, seed=1337,
        # bookkeeping
        log_every=50, eval_every=4000, eval_batch_size=8, eval_bucket_multiple=None,
        checkpoint_every=2000, keep_checkpoints=3,
    )
