"""The offline demo: the embedded synthetic ``shapes`` dataset, a width-1/8 network from scratch on a CPU.

``python train.py --variant=fcn16s`` uses this config. Chosen so that 2 CPU cores learn in minutes:
'same' padding (a quarter of pad 100's pixels at 96 px), unit-variance inputs ('torchvision'
convention, as no ImageNet weights set one), no dropout, AdamW with warm-up and poly decay (a plain
VGG from scratch learns slowly with SGD), and validation padded into 128-pixel buckets (nearly every
shapes image has its own size, so exact-size validation would compile a program per image; the demo
is no reference model). Copy this file to start a config of your own.
"""
from fcn_jax.config import ModelConfig, TrainConfig


def get_config(variant: str = "fcn32s") -> TrainConfig:
    return TrainConfig(
        model=ModelConfig(variant=variant, num_classes=7, width=0.125, padding="same", dropout_rate=0.0,
                          dtype="float32", freeze_upsamplers="final"),
        preset="shapes",
        dataset="shapes",
        data_dir=None,
        # data: random scale, 96 px crops and flips, batch 8
        mode="modern", batch_size=8, grad_accum=1, crop_size=96, scale_range=(0.75, 1.5), flip=True,
        bucket_multiple=None, sampling="epoch", preprocessing="torchvision",
        void_value=255, binary_masks=False,  # how folder: datasets' masks are read
        # loss and solver
        loss="mean", class_weights=None,
        optimizer="adamw", lr=1e-3, schedule="poly", warmup_steps=50, momentum=0.9,
        weight_decay=1e-4, bias_lr_mult=1.0, steps=2500, trainable=None, frozen=None, init=None, seed=1337,
        # bookkeeping
        log_every=20, eval_every=500, eval_batch_size=8, eval_bucket_multiple=128,
        checkpoint_every=500, keep_checkpoints=3,
    )
