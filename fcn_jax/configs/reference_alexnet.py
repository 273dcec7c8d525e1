"""The reference solver of FCN-AlexNet (shelhamer/fcn.berkeleyvision.org, voc-fcn-alexnet/), 48.0 mIU on seg11valid.

Unlike the VGG16 FCNs it is trained "with gradient accumulation, normalized loss, and standard momentum"
(the reference README). Each number and where it comes from:

- ``lr`` 1e-4, ``schedule`` fixed: solver.prototxt ``base_lr: 1e-4`` ("lr for normalized softmax"),
  ``lr_policy: "fixed"``.
- ``momentum`` 0.9: solver.prototxt ``momentum: 0.9`` ("standard momentum").
- ``weight_decay`` 5e-4: solver.prototxt ``weight_decay: 0.0005``.
- ``grad_accum`` 20, ``batch_size`` 20: solver.prototxt ``iter_size: 20`` ("gradient accumulation") over
  the data layer's batch of 1: one update per 20 images, Caffe averaging the 20 gradients.
- ``loss`` 'mean': net.py / train.prototxt ``loss_param { normalize: true, ignore_label: 255 }`` (commit
  2963aa0 "fix: FCN-AlexNet is trained with normalized loss"). Caffe divides each image's loss by its own
  labelled pixels, then averages the 20 images; 'mean' divides the 20 images' sum by their labelled pixels
  together (equal when the images have equally many labelled pixels).
- ``steps`` 100,000: solver.prototxt ``max_iter: 100000`` (solve.py: 25 x ``solver.step(4000)``).
- ``eval_every`` / ``checkpoint_every`` 4000: solve.py scores seg11valid every 4000 steps; solver.prototxt
  ``snapshot: 4000``. ``log_every`` 20: ``display: 20``.
- ``bias_lr_mult`` 1.0: net.py gives conv1 .. fc7 no ``param`` specs, so their biases learn at Caffe's default
  1x lr (and, unlike here, with weight decay); only ``score_fr`` has biases at 2x without decay.
- ``freeze_upsamplers`` 'all': ``upscore`` has ``lr_mult: 0`` and solve.py fills it with the bilinear kernel.
- ``dropout_rate`` 0.5: ``drop6`` / ``drop7`` ``dropout_ratio: 0.5``.
- Data as :mod:`fcn_jax.configs.reference`: SBD train / seg11valid, whole images, no augmentation, drawn
  uniformly with replacement (seed 1337), Caffe BGR mean preprocessing (net.py's data layer ``mean``),
  evaluation one image at its own size. Start from the ImageNet CaffeNet (solve.py:
  ``ilsvrc-nets/alexnet-fcn.caffemodel``, CaffeNet convolutionalised) with ``--init``.

One difference is forced by batching: the 20 accumulated images share one array, so they are padded to a
common shape (``bucket_multiple`` 32; mean colour, void labels) where Caffe ran each at its own size.
"""
from fcn_jax.config import ModelConfig, TrainConfig

VARIANT = "fcn-alexnet"


def get_config(variant: str = VARIANT) -> TrainConfig:
    if variant != VARIANT:
        raise ValueError(f"reference_alexnet is the {VARIANT} solver; got variant {variant!r}")
    return TrainConfig(
        model=ModelConfig(variant=VARIANT, num_classes=21, width=1.0, padding="reference", dropout_rate=0.5,
                          dtype="float32", freeze_upsamplers="all"),
        preset="reference_alexnet",
        dataset="voc_segmentation/sbd_fcn",
        data_dir=None,
        # data: whole images, no augmentation; 20 per update (iter_size), padded to one shape
        mode="reference", batch_size=20, grad_accum=20, crop_size=96, scale_range=(0.5, 2.0), flip=False,
        bucket_multiple=32, sampling="replacement", preprocessing="caffe",
        void_value=255, binary_masks=False,
        # loss and solver
        loss="mean", class_weights=None,
        optimizer="sgd", lr=1e-4, schedule="fixed", warmup_steps=0, momentum=0.9,
        weight_decay=5e-4, bias_lr_mult=1.0, steps=100_000, trainable=None, frozen=None, init=None,
        seed=1337,
        # bookkeeping
        log_every=20, eval_every=4000, eval_batch_size=1, eval_bucket_multiple=None,
        checkpoint_every=4000, keep_checkpoints=3,
    )
