"""The reference solvers of the SIFT Flow FCNs (shelhamer/fcn.berkeleyvision.org, siftflow-fcn*s/).

One VGG16 with two heads (:mod:`fcn_jax.models.registry`'s ``siftflow-fcn32s`` / ``16s`` / ``8s``): 33
semantic classes (the model's ``num_classes``) and 3 geometric ones (fixed by the variant), trained on
``trainval.txt`` (2,486 images, 256 x 256) and scored on ``test.txt`` (200): fcn-jax's dataset ``sift_flow``.
Each number and where it comes from (files of the reference, by directory; ``solver.prototxt`` is
siftflow-fcn32s / -fcn16s / -fcn8s/solver.prototxt):

- ``lr`` 1e-10 / 1e-12 / 1e-12 for siftflow-fcn32s / 16s / 8s, ``schedule`` fixed: solver.prototxt
  ``base_lr: 1e-10`` / ``1e-12`` / ``1e-12`` ("lr for unnormalized softmax"), ``lr_policy: "fixed"``. FCN-8s
  keeps 16s's rate, unlike VOC and PASCAL-Context (1e-14): siftflow-fcn8s/solver.prototxt says 1e-12
  (commits 11a101c "add SIFT Flow FCNs" and 9b42891, which only set ``test_iter``).
- ``momentum`` 0.99: solver.prototxt ``momentum: 0.99`` ("high momentum").
- ``weight_decay`` 5e-4: solver.prototxt ``weight_decay: 0.0005``.
- ``batch_size`` 1, ``grad_accum`` 1: solver.prototxt ``iter_size: 1`` ("no gradient accumulation"); the data
  layer (siftflow_layers.py) gives one image and its two label maps per forward pass.
- ``steps`` 100,000: solve.py ``for _ in range(50): solver.step(2000)``. solver.prototxt says
  ``max_iter: 300000``, but only Caffe's ``Solver::Solve`` stops there; ``Solver::Step(n)``, which solve.py
  calls, runs n more iterations whatever ``max_iter`` is, so what runs is 50 x 2000 = 100,000.
- ``eval_every`` 2000: solve.py scores ``test.txt`` after each ``step(2000)``, both heads (layers
  ``score_sem`` and ``score_geo``); solver.prototxt ``test_iter: 200`` is the test list's length and
  ``test_interval: 999999999`` keeps the solver's own testing off. solve.py warns that its semantic metrics
  "are off b.c. of missing classes": cow, desert and moon never occur in the test split
  (:data:`fcn_jax.data.sift_flow.ABSENT_FROM_TEST`); the mean IU is to be computed without them.
- ``checkpoint_every`` 2000: inferred. solver.prototxt has no ``snapshot`` line (Caffe's default 0: no
  snapshots while training, and ``step()`` writes none at its end either), so the reference saved no
  intermediate weights; a checkpoint at each evaluation keeps the run resumable and lets an evaluated
  step be picked. ``log_every`` 20: ``display: 20``.
- ``loss`` 'sum': net.py has two ``SoftmaxWithLoss`` layers, ``loss`` (on ``score_sem``, labels ``sem``) and
  ``loss_geo`` (on ``score_geo``, labels ``geo``), each ``loss_param=dict(normalize=False,
  ignore_label=255)`` and with Caffe's default ``loss_weight`` 1: each head's loss is summed over its
  labelled pixels and the two sums are added, weight 1 each. (TrainConfig has no per-head weight: a
  multi-head variant's losses are added with weight 1, which is this.)
- ``bias_lr_mult`` 2.0, biases without decay: net.py gives every Convolution (VGG16 and both heads' score
  layers) ``param=[dict(lr_mult=1, decay_mult=1), dict(lr_mult=2, decay_mult=0)]``.
- ``freeze_upsamplers`` 'all': every Deconvolution of both heads (``upscore_sem`` / ``upscore_geo``;
  ``upscore2_*``, ``upscore16_*``; ``upscore2_*``, ``upscore_pool4_*``, ``upscore8_*``) has
  ``param=[dict(lr_mult=0)]``, no bias, and solve.py fills each with the bilinear kernel (``surgery.interp``).
- ``dropout_rate`` 0.5: net.py ``drop6`` / ``drop7`` ``dropout_ratio=0.5``.
- ``num_classes`` 33: net.py ``score_fr_sem`` (and ``score_pool*_sem``) ``num_output=33``; the geometric
  head's ``num_output=3`` is the variant's (``Head('_geo', 3)``).
- ``sampling`` 'replacement', ``seed`` 1337: net.py's data layer ``seed=1337``; siftflow_layers.py
  randomises a ``trainval`` split (``randomize`` default True): ``random.seed(1337)``, then each image by
  ``random.randint(0, len(indices) - 1)``: uniform draws with replacement. ``test`` is read in list order.
- ``preprocessing`` 'caffe-siftflow': siftflow_layers.py RGB -> BGR minus
  ``self.mean = (114.578, 115.294, 108.353)``.
- ``padding`` 'reference', float32: net.py ``conv1_1`` ``pad=100`` and Caffe's crops; Caffe computes in float.

Staged training, each stage from the previous one's final weights (solve.py ``weights``; ``train.py``
reads a workdir's latest step):

- siftflow-fcn32s from ImageNet VGG16 (``../ilsvrc-nets/vgg16-fcn.caffemodel``):
  ``--preset reference_siftflow --variant siftflow-fcn32s --init VGG_ILSVRC_16_layers.caffemodel
  --workdir runs/siftflow-fcn32s``
- siftflow-fcn16s from siftflow-fcn32s (``../siftflow-fcn32s/siftflow-fcn32s.caffemodel``):
  ``--variant siftflow-fcn16s --init runs/siftflow-fcn32s --workdir runs/siftflow-fcn16s``
- siftflow-fcn8s from siftflow-fcn16s (``../siftflow-fcn16s/siftflow-fcn16s.caffemodel``):
  ``--variant siftflow-fcn8s --init runs/siftflow-fcn16s --workdir runs/siftflow-fcn8s``
"""
from fcn_jax.config import ModelConfig, TrainConfig

PRESET = "reference_siftflow"
# solver.prototxt base_lr of siftflow-fcn32s / -fcn16s / -fcn8s.
LR = {"siftflow-fcn32s": 1e-10, "siftflow-fcn16s": 1e-12, "siftflow-fcn8s": 1e-12}
STEPS = 50 * 2000  # solve.py: range(50) x solver.step(2000); max_iter 300000 is never reached by step()


def get_config(variant: str = "siftflow-fcn32s") -> TrainConfig:
    if variant not in LR:
        raise ValueError(f"{PRESET} has no solver for variant {variant!r}; expected one of {tuple(LR)}")
    return TrainConfig(
        model=ModelConfig(variant=variant, num_classes=33, width=1.0, padding="reference", dropout_rate=0.5,
                          dtype="float32", freeze_upsamplers="all"),
        preset=PRESET,
        dataset="sift_flow",
        data_dir=None,
        # data: one whole image per step, no augmentation, drawn with replacement
        mode="reference", batch_size=1, grad_accum=1, crop_size=96, scale_range=(0.5, 2.0), flip=False,
        bucket_multiple=None, sampling="replacement", preprocessing="caffe-siftflow", inputs="image",
        void_value=255, binary_masks=False,
        # loss and solver
        loss="sum", class_weights=None,
        optimizer="sgd", lr=LR[variant], schedule="fixed", warmup_steps=0, momentum=0.99,
        weight_decay=5e-4, bias_lr_mult=2.0, steps=STEPS, trainable=None, frozen=None, init=None,
        seed=1337,
        # bookkeeping
        log_every=20, eval_every=2000, eval_batch_size=1, eval_bucket_multiple=None,
        checkpoint_every=2000, keep_checkpoints=3,
    )
