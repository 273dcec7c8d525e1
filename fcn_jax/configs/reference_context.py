"""The reference solvers of the PASCAL-Context FCNs (shelhamer/fcn.berkeleyvision.org, pascalcontext-fcn*s/).

PASCAL-Context's 59 classes plus background, 60 outputs, trained on VOC2010 ``train`` (4,998 images) and
scored on ``val`` (5,105): fcn-jax's dataset ``pascal_context/context59``. The solver is the VOC one of
:mod:`fcn_jax.configs.reference` run four times as long. Each number and where it comes from (files of the
reference, by directory; ``solver.prototxt`` is pascalcontext-fcn32s / -fcn16s / -fcn8s/solver.prototxt):

- ``lr`` 1e-10 / 1e-12 / 1e-14 for fcn32s / fcn16s / fcn8s, ``schedule`` fixed: solver.prototxt
  ``base_lr: 1e-10`` / ``1e-12`` / ``1e-14`` ("lr for unnormalized softmax"), ``lr_policy: "fixed"``.
- ``momentum`` 0.99: solver.prototxt ``momentum: 0.99`` ("high momentum").
- ``weight_decay`` 5e-4: solver.prototxt ``weight_decay: 0.0005``.
- ``batch_size`` 1, ``grad_accum`` 1: solver.prototxt ``iter_size: 1`` ("no gradient accumulation"); the data
  layer (pascalcontext_layers.py) gives one whole image per forward pass, at its own size.
- ``steps`` 400,000: solve.py ``for _ in range(50): solver.step(8000)``. solver.prototxt says
  ``max_iter: 300000``, but only Caffe's ``Solver::Solve`` stops there; ``Solver::Step(n)``, which solve.py
  calls, runs n more iterations whatever ``max_iter`` is (and a fixed lr never reads it), so what runs is
  50 x 8000 = 400,000 (VOC: voc-fcn32s/solve.py ``range(25)`` x ``step(4000)`` = 100,000).
- ``eval_every`` 8000: solve.py scores ``val.txt`` (``score.seg_tests``, layer ``score``) after each
  ``step(8000)``; solver.prototxt ``test_interval: 999999999`` keeps the solver's own testing off and
  ``test_iter: 5105`` is the val list's length.
- ``checkpoint_every`` 4000: solver.prototxt ``snapshot: 4000``. ``log_every`` 20: ``display: 20``.
- ``loss`` 'sum': net.py ``SoftmaxWithLoss`` with ``loss_param=dict(normalize=False, ignore_label=255)``: the
  loss is summed over the image's labelled pixels (here every pixel: PASCAL-Context has no void label, see
  :mod:`fcn_jax.data.pascal_context`).
- ``bias_lr_mult`` 2.0, biases without decay: net.py gives every Convolution (VGG16 and score layers)
  ``param=[dict(lr_mult=1, decay_mult=1), dict(lr_mult=2, decay_mult=0)]``.
- ``freeze_upsamplers`` 'all': every Deconvolution of net.py (fcn32s ``upscore``; fcn16s ``upscore2``,
  ``upscore16``; fcn8s ``upscore2``, ``upscore_pool4``, ``upscore8``) has ``param=[dict(lr_mult=0)]``,
  no bias, and solve.py fills it with the bilinear kernel (``surgery.interp`` on every layer named ``up*``).
- ``dropout_rate`` 0.5: net.py ``drop6`` / ``drop7`` ``dropout_ratio=0.5``.
- ``num_classes`` 60: net.py ``score_fr`` / ``score_pool4`` / ``score_pool3`` ``num_output=60``.
- ``sampling`` 'replacement', ``seed`` 1337: net.py's data layer ``seed=1337``; pascalcontext_layers.py
  randomises a ``train`` split (``randomize`` default True): ``random.seed(1337)``, then each image by
  ``random.randint(0, len(indices) - 1)``: uniform draws with replacement. ``val`` is read in list order.
- ``preprocessing`` 'caffe-context': pascalcontext_layers.py RGB -> BGR minus
  ``self.mean = (104.007, 116.669, 122.679)`` (VOC's mean rounded to three decimals).
- ``padding`` 'reference', float32: net.py ``conv1_1`` ``pad=100`` and Caffe's crops; Caffe computes in float.

Staged training, each stage from the previous one's final weights (solve.py ``weights``; ``train.py``
reads a workdir's latest step):

- fcn32s from ImageNet VGG16 (``../ilsvrc-nets/vgg16-fcn.caffemodel``):
  ``--preset reference_context --variant fcn32s --init VGG_ILSVRC_16_layers.caffemodel --workdir runs/context-fcn32s``
- fcn16s from pascalcontext-fcn32s: ``--variant fcn16s --init runs/context-fcn32s --workdir runs/context-fcn16s``
- fcn8s from pascalcontext-fcn16s: ``--variant fcn8s --init runs/context-fcn16s --workdir runs/context-fcn8s``
"""
from fcn_jax.config import ModelConfig, TrainConfig

PRESET = "reference_context"
# solver.prototxt base_lr of pascalcontext-fcn32s / -fcn16s / -fcn8s.
LR = {"fcn32s": 1e-10, "fcn16s": 1e-12, "fcn8s": 1e-14}
STEPS = 50 * 8000  # solve.py: range(50) x solver.step(8000); max_iter 300000 is never reached by step()


def get_config(variant: str = "fcn32s") -> TrainConfig:
    if variant not in LR:
        raise ValueError(f"{PRESET} has no solver for variant {variant!r}; expected one of {tuple(LR)}")
    return TrainConfig(
        model=ModelConfig(variant=variant, num_classes=60, width=1.0, padding="reference", dropout_rate=0.5,
                          dtype="float32", freeze_upsamplers="all"),
        preset=PRESET,
        dataset="pascal_context/context59",
        data_dir=None,
        # data: one whole image per step, no augmentation, drawn with replacement
        mode="reference", batch_size=1, grad_accum=1, crop_size=96, scale_range=(0.5, 2.0), flip=False,
        bucket_multiple=None, sampling="replacement", preprocessing="caffe-context", inputs="image",
        void_value=255, binary_masks=False,
        # loss and solver
        loss="sum", class_weights=None,
        optimizer="sgd", lr=LR[variant], schedule="fixed", warmup_steps=0, momentum=0.99,
        weight_decay=5e-4, bias_lr_mult=2.0, steps=STEPS, trainable=None, frozen=None, init=None,
        seed=1337,
        # bookkeeping
        log_every=20, eval_every=8000, eval_batch_size=1, eval_bucket_multiple=None,
        checkpoint_every=4000, keep_checkpoints=3,
    )
