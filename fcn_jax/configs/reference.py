"""The Caffe reference solver (shelhamer/fcn.berkeleyvision.org, voc-fcn*/solver.prototxt, solve.py).

SBD train / seg11valid, batch 1 whole image at its own size (no padding, no resizing, no augmentation;
one compiled program per image size, cached on disk), each image drawn uniformly with replacement
(``random.seed(1337)``, ``random.randint``), validation at each image's own size, softmax loss summed over non-void
pixels (``normalize: false``), SGD momentum 0.99 at a fixed lr of 1e-10 / 1e-12 / 1e-14 for fcn32s /
16s / 8s (1e-10 for fcn8s-atonce), weight decay 5e-4 on weights only, biases at 2x lr without decay,
100k iterations (300k at once), float32, every upsampler fixed at bilinear (``lr_mult: 0`` on
every Deconvolution in voc-fcn*/net.py; pytorch-fcn leaves them out of its optimiser too). Staged training starts
fcn32s from ImageNet VGG16 and each later stage from the previous one (``--init``).
"""
from fcn_jax.config import ModelConfig, TrainConfig
from fcn_jax.models import check_variant

# The reference's fixed learning rates (summed loss) and iteration counts per variant.
LR = {"fcn32s": 1e-10, "fcn16s": 1e-12, "fcn8s": 1e-14, "fcn8s-atonce": 1e-10}
STEPS = {"fcn32s": 100_000, "fcn16s": 100_000, "fcn8s": 100_000, "fcn8s-atonce": 300_000}


def get_config(variant: str = "fcn32s") -> TrainConfig:
    check_variant(variant)
    if variant not in LR:
        raise ValueError(f"the reference preset is the VOC VGG16 solver of {', '.join(LR)}; for {variant} see "
                         f"python train.py --help (--preset: reference_alexnet, reference_siftflow, ...)")
    return TrainConfig(
        model=ModelConfig(variant=variant, num_classes=21, width=1.0, padding="reference", dropout_rate=0.5,
                          dtype="float32", freeze_upsamplers="all"),
        preset="reference",
        dataset="voc_segmentation/sbd_fcn",
        data_dir=None,
        # data: one whole image per step, no augmentation
        mode="reference", batch_size=1, grad_accum=1, crop_size=96, scale_range=(0.5, 2.0), flip=False,
        bucket_multiple=None, sampling="replacement", preprocessing="caffe",
        void_value=255, binary_masks=False,  # how folder: datasets' masks are read
        # loss and solver
        loss="sum", class_weights=None,
        optimizer="sgd", lr=LR[variant], schedule="fixed", warmup_steps=0, momentum=0.99,
        weight_decay=5e-4, bias_lr_mult=2.0, steps=STEPS[variant], trainable=None, frozen=None, init=None,
        seed=1337,
        # bookkeeping
        log_every=20, eval_every=4000, eval_batch_size=1, eval_bucket_multiple=None,
        checkpoint_every=4000, keep_checkpoints=3,
    )
