"""The reference solvers of the NYUDv2 FCNs (shelhamer/fcn.berkeleyvision.org, nyud-fcn32s-*/).

Four FCN-32s with 40 outputs, trained on ``trainval`` (795 images) and scored on ``test`` (654), Gupta et
al.'s split: fcn-jax's dataset ``nyud/trainval_test``. They differ in their input (``inputs``):

=============================  =======================  ==================  ===========================
reference directory            variant                  ``inputs``          ``lr`` (solver.prototxt)
=============================  =======================  ==================  ===========================
nyud-fcn32s-color              fcn32s                   'image' (default)   ``base_lr: 1e-10``
nyud-fcn32s-hha                fcn32s                   'hha'               ``base_lr: 1e-10``
nyud-fcn32s-color-d            nyud-fcn32s-color-d      'image+depth'       ``base_lr: 1e-10``
nyud-fcn32s-color-hha          nyud-fcn32s-color-hha    'image+hha'         ``base_lr: 1e-12``
=============================  =======================  ==================  ===========================

``get_config('fcn32s')`` is the colour net. The HHA net has the same solver (nyud-fcn32s-hha/solver.prototxt
equals nyud-fcn32s-color/solver.prototxt line for line) and reads the ``hha`` field instead (nyud-fcn32s-hha/net.py
``tops = ['hha', 'label']`` where the colour net has ``['color', 'label']``): select it with the field
``inputs='hha'`` (``train.py --preset reference_nyud --variant fcn32s --inputs hha``, or
``fcn_jax.configs.get_config('reference_nyud', 'fcn32s', inputs='hha')``).

Each number and where it comes from (files of the reference; ``solver.prototxt`` is each directory's;
all four exist, commit 3f83b8d "add NYUD FCNs"):

- ``lr`` as in the table, ``schedule`` fixed: each solver.prototxt ``base_lr`` ("lr for unnormalized
  softmax"), ``lr_policy: "fixed"``. (The late fusion, which starts from two trained nets, fine-tunes at 1e-12.)
- ``momentum`` 0.99: solver.prototxt ``momentum: 0.99`` ("high momentum").
- ``weight_decay`` 5e-4: solver.prototxt ``weight_decay: 0.0005``.
- ``batch_size`` 1, ``grad_accum`` 1: solver.prototxt ``iter_size: 1`` ("no gradient accumulation"); the data
  layer (nyud_layers.py) gives one whole image (and its depth / HHA) per forward pass.
- ``steps`` 100,000: solve.py ``for _ in range(50): solver.step(2000)``. solver.prototxt says
  ``max_iter: 300000``, but only Caffe's ``Solver::Solve`` stops there; ``Solver::Step(n)``, which solve.py
  calls, runs n more iterations whatever ``max_iter`` is, so what runs is 50 x 2000 = 100,000.
- ``eval_every`` 2000: solve.py scores ``test.txt`` (``score.seg_tests``, layer ``score``) after each
  ``step(2000)``; solver.prototxt ``test_iter: 654`` is the test list's length and ``test_interval:
  999999999`` keeps the solver's own testing off. (As stored, the four solve.py load the list into ``test``
  but pass ``val`` to ``seg_tests``, a NameError at the first scoring; scoring ``test`` is what is meant.)
- ``checkpoint_every`` 2000: solver.prototxt ``snapshot: 2000``. ``log_every`` 20: ``display: 20``.
- ``loss`` 'sum': net.py ``SoftmaxWithLoss`` with ``loss_param=dict(normalize=False, ignore_label=255)``.
- ``bias_lr_mult`` 2.0, biases without decay: net.py gives every Convolution (both streams' VGG16 and score
  layers in the fusion) ``param=[dict(lr_mult=1, decay_mult=1), dict(lr_mult=2, decay_mult=0)]``.
- ``freeze_upsamplers`` 'all': net.py's one Deconvolution ``upscore`` (64 / 32) has ``param=[dict(lr_mult=0)]``,
  no bias, and solve.py fills it with the bilinear kernel (``surgery.interp``).
- ``dropout_rate`` 0.5: net.py ``drop6`` / ``drop7`` (each stream's in the fusion) ``dropout_ratio=0.5``.
- ``num_classes`` 40: net.py ``score_fr`` (``score_frcolor`` / ``score_frhha``) ``num_output=40``.
- ``sampling`` 'replacement', ``seed`` 1337: net.py's data layer ``seed=1337``; nyud_layers.py randomises a
  ``trainval`` split (``randomize`` default True): ``random.seed(1337)``, then each image by
  ``random.randint(0, len(indices) - 1)``: uniform draws with replacement. ``test`` is read in list order.
- ``preprocessing`` 'caffe-nyud': nyud_layers.py colour RGB -> BGR minus
  ``mean_bgr = (116.190, 97.203, 92.318)``. The other modalities follow nyud_layers.py whatever the colour
  convention (:mod:`fcn_jax.preprocess`): HHA minus ``mean_hha = (132.431, 94.076, 118.477)``, channels as
  stored; depth ``log(depth) - mean_logd`` with ``mean_logd = 7.844``.
- ``inputs``: net.py ``tops`` (see the table); the early fusion concatenates colour then depth
  (``L.Concat(n.color, n.depth)``), the late fusion feeds colour and HHA to their own VGG16 and sums the two
  ``score_fr`` with ``Eltwise`` ``coeff=[0.5, 0.5]`` (the variant's).
- ``padding`` 'reference', float32: net.py ``conv1_1`` ``pad=100`` and Caffe's crops; Caffe computes in float.

Staged training (solve.py):

- colour, HHA and colour-D FCN-32s start from ImageNet VGG16 (``../ilsvrc-nets/vgg16-fcn.caffemodel``;
  colour-D's solve.py transplants the VGG16 (``../vgg16fc.caffemodel``) and fills ``conv1_1_bgrd`` with
  conv1_1's filters for BGR, their mean over the three input channels for depth and conv1_1's bias, which
  fcn-jax's loader does for a VGG16 file):
  ``--preset reference_nyud --variant fcn32s --init VGG_ILSVRC_16_layers.caffemodel --workdir runs/nyud-color``,
  the same with ``--inputs hha --workdir runs/nyud-hha``, and
  ``--variant nyud-fcn32s-color-d --init VGG_ILSVRC_16_layers.caffemodel --workdir runs/nyud-color-d``.
- The late fusion starts from the two trained FCN-32s: nyud-fcn32s-color-hha/solve.py transplants
  ``nyud-rgb-32s-28k.caffemodel`` into the ``color`` stream and ``nyud-hha-32s-60k.caffemodel`` into the
  ``hha`` stream (``surgery.transplant(..., suffix='color' / 'hha')``): the colour net after 28,000
  iterations and the HHA net after 60,000, going by the file names. The same start here:
  ``--variant nyud-fcn32s-color-hha --init color=runs/nyud-color,hha=runs/nyud-hha`` (each stream's VGG16 and
  ``score_fr`` from its own net: ``backbone`` -> ``backbone_color`` / ``backbone_hha``, ``score_fr`` ->
  ``score_frcolor`` / ``score_frhha``; the shared upscore stays bilinear). ``--init`` also takes the
  reference's released fusion weights (its caffemodel-url: ``nyud-fcn32s-color-hha-heavy.caffemodel``), or a
  VGG16 file, which fills both streams with ImageNet weights (not the reference's start).
"""
from fcn_jax.config import ModelConfig, TrainConfig

PRESET = "reference_nyud"
# solver.prototxt base_lr of nyud-fcn32s-color (and -hha, the same solver) / -color-d / -color-hha.
LR = {"fcn32s": 1e-10, "nyud-fcn32s-color-d": 1e-10, "nyud-fcn32s-color-hha": 1e-12}
# net.py tops -> fcn-jax's inputs; fcn32s is the colour net, its HHA twin is inputs='hha'.
INPUTS = {"fcn32s": "image", "nyud-fcn32s-color-d": "image+depth", "nyud-fcn32s-color-hha": "image+hha"}
STEPS = 50 * 2000  # solve.py: range(50) x solver.step(2000); max_iter 300000 is never reached by step()


def get_config(variant: str = "fcn32s") -> TrainConfig:
    if variant not in LR:
        raise ValueError(f"{PRESET} has no solver for variant {variant!r}; expected one of {tuple(LR)} "
                         f"(fcn32s: colour, or HHA with inputs='hha')")
    return TrainConfig(
        model=ModelConfig(variant=variant, num_classes=40, width=1.0, padding="reference", dropout_rate=0.5,
                          dtype="float32", freeze_upsamplers="all"),
        preset=PRESET,
        dataset="nyud/trainval_test",
        data_dir=None,
        # data: one whole image per step, no augmentation, drawn with replacement
        mode="reference", batch_size=1, grad_accum=1, crop_size=96, scale_range=(0.5, 2.0), flip=False,
        bucket_multiple=None, sampling="replacement", preprocessing="caffe-nyud", inputs=INPUTS[variant],
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
