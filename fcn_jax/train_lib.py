"""Training: the loss, the optimiser presets, the jitted data-parallel train step, and the loop.

Plain functions in the style of flax's examples: :func:`create_train_state`, :func:`train_step`
(made by :func:`make_train_step`) and :func:`train_and_evaluate`. Nothing here imports TensorFlow.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
import re
import signal
import time
from collections.abc import Sequence
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from flax.training import train_state
from jax.sharding import Mesh

from fcn_jax import checkpoint as ckpt_lib
from fcn_jax.io import write_json
from fcn_jax import parallel
from fcn_jax.config import (FREQUENCY, ModelConfig, TrainConfig, format_config, parse_class_weights, parse_lr_mults,
                            to_dict)
from fcn_jax.models import final_upsampler_names, initial_variables, maskable, resolve_inputs, upsampler_names
from fcn_jax.models import outputs as model_outputs
from fcn_jax.models.outputs import SEGMENTATION, SIZES, Output, evaluated, label_fields
from fcn_jax.preprocess import convention_family
from fcn_jax.programs import bounded_jit
from fcn_jax.runlog import RunLog
from fcn_jax.variables import PARAMS, as_variables, join, model_state


class ConfigError(ValueError):
    """The config does not fit the dataset, the ``--init`` weights or the workdir: a usage error (one line,
    exit code 2), always found before anything is created in the workdir."""


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss, incompatible workdir); the message says why."""


# ----------------------------------------------------------------------------------------------- loss

def pixel_cross_entropy(logits: jax.Array, labels: jax.Array,
                        class_weights: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """Softmax cross-entropy summed over labelled pixels, each weighted by its class's weight.

    logits (N, H, W, C) float; labels (N, H, W) int, values outside 0..C-1 (255 = void) ignored;
    class_weights (C,) float or None (all 1). Returns (sum of weighted per-pixel losses, sum of the
    labelled pixels' weights: their number when unweighted), both float32 scalars.
    """
    num_classes = logits.shape[-1]
    valid = (labels >= 0) & (labels < num_classes)
    safe = jnp.where(valid, labels, 0)
    per_pixel = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), safe)
    weight = valid.astype(jnp.float32) if class_weights is None else jnp.where(valid, class_weights[safe], 0.0)
    return jnp.sum(weight * per_pixel), jnp.sum(weight)


def all_finite(tree: Any) -> jax.Array:
    """Whether every element of every array of ``tree`` is finite (a boolean scalar; True for no arrays)."""
    return jnp.all(jnp.stack([jnp.asarray(True)] + [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def global_norm(tree: Any) -> jax.Array:
    """L2 norm over every array of ``tree``."""
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)))


# ------------------------------------------------------------------------------------------ optimiser

def param_labels(params: Any, model: ModelConfig, trainable: str | None = None,
                 frozen: str | None = None, lr_mults: str | None = None) -> Any:
    """Labels every parameter 'weight', 'bias' or 'frozen' ('weight*M' / 'bias*M' where ``lr_mults`` gives
    it a learning-rate multiplier M != 1): the one freezing and multiplier mechanism (the optimiser leaves
    'frozen' parameters alone and the train step takes no gradient for them).

    Frozen: the upsamplers ``model.freeze_upsamplers`` names, parameters whose path ('backbone/fc6/kernel',
    'score_fr/bias', ...) fully matches the regular expression ``frozen``, and, when ``trainable`` is
    given, every parameter whose path does not fully match it (big_vision-style regex freezing).
    ``lr_mults``: 'REGEX=MULT,...' (:func:`fcn_jax.config.parse_lr_mults`); the first full match applies.
    ``params``: the parameter tree (or the variables; only ``params`` is labelled). Raises ValueError when a
    regular expression matches no parameter.
    """
    params = as_variables(params)[PARAMS]
    ups = upsampler_names(model.variant)
    fixed = {"none": (), "final": final_upsampler_names(model.variant), "all": ups}[model.freeze_upsamplers]
    paths = ["/".join(getattr(k, "key", str(k)) for k in path) for path, _ in jax.tree_util.tree_leaves_with_path(params)]
    mults = parse_lr_mults(lr_mults)
    for flag, pattern in [("trainable", trainable), ("frozen", frozen)] + [("lr-mults", p) for p, _ in mults]:
        if pattern is not None and not any(re.fullmatch(pattern, p) for p in paths):
            examples = ", ".join(dict.fromkeys([paths[0]] + [f"{name}/kernel" for name in ups[-1:]] + paths[-1:]))
            raise ValueError(f"--{flag} {pattern!r} matches no parameter; paths look like {examples}")

    def label(path: tuple[Any, ...], _: Any) -> str:
        names = [getattr(p, "key", str(p)) for p in path]
        name = "/".join(names)
        if (names[0] in fixed or (frozen is not None and re.fullmatch(frozen, name))
                or (trainable is not None and not re.fullmatch(trainable, name))):
            return "frozen"
        kind = "bias" if names[-1] == "bias" else "weight"
        mult = next((m for pattern, m in mults if re.fullmatch(pattern, name)), 1.0)
        return kind if mult == 1 else f"{kind}*{mult:g}"

    return jax.tree_util.tree_map_with_path(label, params)


def make_schedule(cfg: TrainConfig) -> optax.Schedule:
    """Learning rate per step: fixed, or poly (power 0.9, to 0 at ``cfg.steps``), after linear warm-up."""
    if cfg.schedule == "fixed":
        main = optax.constant_schedule(cfg.lr)
    else:
        main = optax.polynomial_schedule(cfg.lr, 0.0, 0.9, max(1, cfg.steps - cfg.warmup_steps))
    if cfg.warmup_steps == 0:
        return main
    warmup = optax.linear_schedule(0.0, cfg.lr, cfg.warmup_steps)
    return optax.join_schedules([warmup, main], [cfg.warmup_steps])


def make_optimizer(cfg: TrainConfig, params: Any) -> optax.GradientTransformation:
    """The solver: weights get weight decay, biases ``bias_lr_mult`` x lr and no decay (decay too with
    ``decay_biases``), the parameters ``lr_mults`` names their multiple of that, frozen parameters
    (:func:`param_labels`) nothing: they are outside the optimiser and its weight decay.

    SGD follows Caffe: ``v = momentum * v + lr * (grad + wd * w); w -= v`` (identical for a fixed lr), and
    PyTorch's ``torch.optim.SGD`` (``v = momentum * v + grad + wd * w; w -= lr * v``) for any schedule.
    """
    schedule = make_schedule(cfg)
    labels = param_labels(params, cfg.model, cfg.trainable, cfg.frozen, cfg.lr_mults)

    def solver(label: str) -> optax.GradientTransformation:
        kind, _, mult = label.partition("*")
        scale = (cfg.bias_lr_mult if kind == "bias" else 1.0) * float(mult or 1)
        lr = (lambda step: schedule(step) * scale) if scale != 1 else schedule  # noqa: E731
        decay = kind == "weight" or cfg.decay_biases
        if cfg.optimizer == "sgd":
            sgd = optax.sgd(lr, momentum=cfg.momentum)
            return optax.chain(optax.add_decayed_weights(cfg.weight_decay), sgd) if decay else sgd
        if decay:
            return optax.adamw(lr, b1=cfg.momentum, weight_decay=cfg.weight_decay)
        return optax.adam(lr, b1=cfg.momentum)

    names = dict.fromkeys(["weight", "bias", *sorted(set(jax.tree.leaves(labels)) - {"frozen"})])
    return optax.multi_transform({**{name: solver(name) for name in names}, "frozen": optax.set_to_zero()},
                                 labels)


# ---------------------------------------------------------------------------------------------- state

class TrainState(train_state.TrainState):
    """flax's TrainState plus ``model_state``: every variable collection of the model besides ``params``
    (``{}`` for the Caffe family, ``{'batch_stats': ...}`` with BatchNorm), updated by each train step."""

    model_state: Any = struct.field(default_factory=dict)

    @property
    def variables(self) -> dict[str, Any]:
        """The model's variables: ``{'params': ..., **model_state}``."""
        return join(self.params, self.model_state)


def init_variables(cfg: TrainConfig, model: nn.Module) -> dict[str, Any]:
    """The model's own initial variables (every collection) from ``cfg.seed`` (one compiled program)."""
    return initial_variables(model, jax.random.PRNGKey(cfg.seed))


def create_train_state(cfg: TrainConfig, model: nn.Module, variables: Any | None = None) -> TrainState:
    """A fresh :class:`TrainState` (step 0); ``variables`` (every collection, or a bare parameter tree)
    default to :func:`init_variables`."""
    variables = as_variables(init_variables(cfg, model) if variables is None else variables)
    params = variables[PARAMS]
    return TrainState.create(apply_fn=model.apply, params=params, tx=make_optimizer(cfg, params),
                             model_state=model_state(variables))


def abstract_state(cfg: TrainConfig, model: nn.Module, mesh: Mesh) -> TrainState:
    """The :class:`TrainState` of ``cfg`` as ``jax.ShapeDtypeStruct`` leaves replicated over ``mesh``: the
    target checkpoints restore onto (any device count)."""
    shapes = jax.eval_shape(lambda: create_train_state(cfg, model))
    sharding = parallel.replicated(mesh)
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), shapes)


def class_weight_array(cfg: TrainConfig) -> jax.Array | None:
    """``cfg.class_weights`` as a (C,) float32 array (None: unweighted); it must be resolved to numbers
    (:func:`resolve_class_weights`)."""
    if cfg.class_weights is None:
        return None
    return jnp.asarray(parse_class_weights(cfg.class_weights, cfg.model.num_classes), jnp.float32)


def median_frequency_weights(counts: np.ndarray) -> np.ndarray:
    """Median-frequency balancing (Eigen & Fergus 2015) from per-class labelled-pixel counts (C,):
    ``w_c = median(f) / f_c`` with ``f_c = counts_c / counts.sum()``, the median over the classes present;
    a class absent from the counts gets weight 1 (it never occurs in the loss)."""
    counts = np.asarray(counts, np.float64)
    present = counts > 0
    if not present.any():
        raise ValueError("no labelled pixels to compute class frequencies from")
    freq = counts / counts.sum()
    return np.where(present, np.median(freq[present]) / np.where(present, freq, 1.0), 1.0)


def resolve_class_weights(cfg: TrainConfig, counts: Callable[[], np.ndarray]) -> TrainConfig:
    """``cfg`` with ``class_weights`` written out as numbers: 'frequency' from ``counts()`` (the training
    split's per-class pixel counts, :func:`median_frequency_weights`), a file path read (numbers separated
    by commas, spaces or newlines). Raises ValueError naming the file."""
    value = cfg.class_weights
    if value is None or "," in value:
        return cfg
    if value == FREQUENCY:
        weights = median_frequency_weights(counts())
    else:
        try:
            with open(value) as f:
                text = f.read()
        except OSError as e:
            raise ValueError(f"--class-weights {value}: cannot read ({e.strerror or e})") from None
        weights = parse_class_weights(text, cfg.model.num_classes, source=f"--class-weights {value}")
    return dataclasses.replace(cfg, class_weights=",".join(f"{w:.6g}" for w in weights))


def batch_spec(cfg: TrainConfig) -> tuple[str, tuple[Output, ...]]:
    """What a batch of ``cfg`` holds: the example fields forming the input (``cfg.inputs`` or the variant's
    default, :func:`fcn_jax.models.resolve_inputs`) and the model's outputs, whose labels it carries
    (:attr:`Output.batch_key` from :attr:`Output.label_field`), the training-only ones at
    ``cfg.aux_loss_weight`` where it is set."""
    outputs = model_outputs(cfg.model.variant, cfg.model.num_classes)
    if cfg.aux_loss_weight is not None:
        outputs = tuple(o if o.evaluated else dataclasses.replace(o, loss_weight=cfg.aux_loss_weight) for o in outputs)
    return resolve_inputs(cfg.inputs, cfg.model.variant), outputs


# ----------------------------------------------------------------------------------------------- loss

def _weighted(output: Output, num_classes: int) -> bool:
    """Whether class weights apply to ``output``: the semantic outputs of the model's classes."""
    return output.label_field == SEGMENTATION and output.classes == num_classes


def loss_scales(labels: dict[str, jax.Array], outputs: tuple[Output, ...], loss: str, batch_size: int,
                class_weights: jax.Array | None = None, num_classes: int | None = None
                ) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
    """(scale, labelled-pixel count) of each output's summed loss, by output name: ``loss`` 'sum' 1 / B,
    'mean' 1 / the output's labelled pixels (their total class weight under ``class_weights``, which
    weigh the semantic outputs of the model's ``num_classes`` classes; default: the first output's).

    ``labels``: {batch key: (B, H, W) int}, values outside 0..classes-1 (255) unlabelled.
    """
    num_classes = outputs[0].classes if num_classes is None else num_classes
    scales, counts = {}, {}
    for o in outputs:
        y = labels[o.batch_key]
        w = class_weights if _weighted(o, num_classes) else None
        valid = (y >= 0) & (y < o.classes)
        count = counts[o.name] = jnp.sum(valid).astype(jnp.float32)
        total_weight = count if w is None else jnp.sum(jnp.where(valid, w[jnp.where(valid, y, 0)], 0.0))
        # 'sum': Caffe's SoftmaxWithLoss with normalize: false divides the summed loss by the batch size N,
        # and iter_size divides the accumulated gradient by iter_size: the sum over the whole batch / B.
        # 'mean': divided by the labelled pixels' total weight (their count when unweighted), as PyTorch's
        # weighted cross-entropy with reduction='mean'.
        scales[o.name] = 1.0 / batch_size if loss == "sum" else 1.0 / jnp.maximum(total_weight, 1e-12)
    return scales, counts


def output_losses(logits: dict[str, jax.Array], labels: dict[str, jax.Array], outputs: tuple[Output, ...],
                  class_weights: jax.Array | None = None, num_classes: int | None = None) -> dict[str, jax.Array]:
    """Each output's softmax cross-entropy summed over its labelled pixels (:func:`pixel_cross_entropy`),
    by output name. ``logits``: {output name: (N, H, W, C)}; ``class_weights`` weigh the semantic outputs
    of the model's ``num_classes`` classes (default: the first output's)."""
    num_classes = outputs[0].classes if num_classes is None else num_classes
    return {o.name: pixel_cross_entropy(logits[o.name], labels[o.batch_key],
                                        class_weights if _weighted(o, num_classes) else None)[0] for o in outputs}


def total_loss(totals: dict[str, jax.Array], scales: dict[str, jax.Array], outputs: tuple[Output, ...]) -> jax.Array:
    """The loss: each output's summed loss times its scale (:func:`loss_scales`) and its ``loss_weight``,
    summed over outputs (Caffe's loss layers, weight 1 each; torchvision's ``out + 0.5 aux``)."""
    return functools.reduce(jnp.add, [totals[o.name] * scales[o.name] * o.loss_weight for o in outputs])


# ------------------------------------------------------------------------------------------ the step

@dataclasses.dataclass(frozen=True)
class StepPieces:
    """What a train step is built from, computed once from the config (nothing is rebuilt at trace time):
    the outputs it trains, the model's class count (what class weights are for), the loss normalisation ('sum' | 'mean'), the class weights (C,) or None, the
    micro-batch count, the seed of the dropout keys, the learning-rate schedule (for the metrics), the
    frozen mask (a tree of bools like ``params``, from :func:`param_labels`) and whether the network masks
    padded batches to each image's size (``masked``: ``registry.maskable``)."""

    outputs: tuple[Output, ...]
    num_classes: int
    loss: str
    class_weights: tuple[float, ...] | None
    grad_accum: int
    seed: int
    schedule: Callable[[Any], Any]
    frozen: Any
    masked: bool = False


def step_pieces(cfg: TrainConfig, params: Any) -> StepPieces:
    """The :class:`StepPieces` of ``cfg`` for a model with parameter tree ``params``."""
    weights = class_weight_array(cfg)
    labels = param_labels(params, cfg.model, cfg.trainable, cfg.frozen, cfg.lr_mults)
    return StepPieces(outputs=batch_spec(cfg)[1], num_classes=cfg.model.num_classes, loss=cfg.loss,
                      class_weights=None if weights is None else tuple(float(w) for w in weights),
                      grad_accum=cfg.grad_accum, seed=cfg.seed, schedule=make_schedule(cfg),
                      frozen=jax.tree.map(lambda label: label == "frozen", labels),
                      masked=maskable(cfg.model.variant))


def train_step(state: TrainState, batch: dict[str, jax.Array], *, pieces: StepPieces) -> tuple[TrainState, dict]:
    """One optimiser step on a global batch {'image': (B,H,W,C) float, 'label': (B,H,W) int, and each other
    label field an output learns from, e.g. SIFT Flow's 'label_geo' (B,H,W) int}.

    The batch is split into ``pieces.grad_accum`` micro-batches whose gradients are summed, the model state
    (BatchNorm statistics) carried from one micro-batch to the next; the loss is the sum over labelled
    pixels divided by the batch size B ('sum', Caffe's ``normalize: false``; with accumulation it is
    Caffe's ``iter_size`` average) or by the batch's labelled-pixel count ('mean'), so accumulation and
    data parallelism give exactly the full-batch gradient. With class weights each pixel's loss is
    multiplied by its class's weight and 'mean' divides by the weights' sum. Several outputs (SIFT Flow's
    two heads, an auxiliary head) add their losses, each against its own labels, normalised as above by
    its own pixels and times its ``loss_weight``. Frozen parameters get no gradient. Dropout keys derive
    from (seed, step), so a resumed run draws the same masks. A padded batch's 'sizes' (B, 2) int32 (each
    image's own (h, w), reference mode's buckets) mask a ``pieces.masked`` network to each image's extent:
    every image's loss and gradients are those of the image alone at its own size (but for the dropout
    masks, which are drawn for the map's shape); other networks ignore them.
    """
    outputs = pieces.outputs
    images = batch["image"]
    keys = sorted({o.batch_key for o in outputs})
    labels = {k: batch[k] for k in keys}
    sizes = batch.get(SIZES) if pieces.masked else None
    accum = pieces.grad_accum
    weights = None if pieces.class_weights is None else jnp.asarray(pieces.class_weights, jnp.float32)
    scales, counts = loss_scales(labels, outputs, pieces.loss, images.shape[0], weights, pieces.num_classes)
    key = jax.random.fold_in(jax.random.PRNGKey(pieces.seed), state.step)
    mutable = sorted(state.model_state)

    def loss_fn(params: Any, model_state: dict[str, Any], x: jax.Array, ys: dict[str, jax.Array],
                k: jax.Array, hw: jax.Array | None) -> tuple[jax.Array, tuple[dict[str, jax.Array], dict[str, Any]]]:
        # frozen parameters get no gradient at all, so XLA drops their backward pass
        params = jax.tree.map(lambda p, f: jax.lax.stop_gradient(p) if f else p, params, pieces.frozen)
        masked = {} if hw is None else {"sizes": hw}
        logits, new_state = state.apply_fn(join(params, model_state), x, train=True, return_dict=True,
                                           rngs={"dropout": k}, mutable=mutable, **masked)
        totals = output_losses(logits, ys, outputs, weights, pieces.num_classes)
        return total_loss(totals, scales, outputs), (totals, dict(new_state))

    grad_fn = jax.grad(loss_fn, has_aux=True)
    if accum == 1:
        grads, (totals, new_model_state) = grad_fn(state.params, state.model_state, images, labels, key, sizes)
    else:
        # (B, ...) -> (B/accum, accum, ...): micro-batch i takes rows i, i+accum, ..., which keeps each
        # device's rows on that device when the batch axis is sharded.
        split = lambda a: a.reshape(a.shape[0] // accum, accum, *a.shape[1:])  # noqa: E731
        xs, ys = split(images), {k: split(v) for k, v in labels.items()}
        hws = None if sizes is None else split(sizes)

        def body(i: jax.Array, carry: tuple[Any, dict[str, jax.Array], dict[str, Any]]) -> tuple[Any, ...]:
            g_acc, t_acc, ms = carry
            g, (t, ms) = grad_fn(state.params, ms, xs[:, i], {k: v[:, i] for k, v in ys.items()},
                                 jax.random.fold_in(key, i), None if hws is None else hws[:, i])
            return jax.tree.map(jnp.add, g_acc, g), jax.tree.map(jnp.add, t_acc, t), ms

        zeros = jax.tree.map(jnp.zeros_like, state.params)
        start = (zeros, {o.name: jnp.zeros((), jnp.float32) for o in outputs}, state.model_state)
        grads, totals, new_model_state = jax.lax.fori_loop(0, accum, body, start)
    updated = state.apply_gradients(grads=grads).replace(model_state=new_model_state)
    # A step whose loss, gradients or updated variables are not all finite is not applied: the state
    # stays as it was (so it can never be saved), and the loop stops at that step (``finite`` False).
    loss = total_loss(totals, scales, outputs)
    finite = jnp.isfinite(functools.reduce(jnp.add, list(totals.values()))) & all_finite(grads) \
        & all_finite(updated.params) & all_finite(updated.model_state)
    new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), updated, state)
    metrics = {"loss": loss, "grad_norm": global_norm(grads), "labelled_pixels": counts[outputs[0].name],
               "lr": pieces.schedule(state.step), "finite": finite}
    if len(outputs) > 1:
        metrics.update({f"loss/{o.name}": totals[o.name] * scales[o.name] * o.loss_weight for o in outputs})
    return new_state, metrics


def make_train_step(cfg: TrainConfig, mesh: Mesh, params: Any | None = None
                    ) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """:func:`train_step` with ``cfg``'s :class:`StepPieces`, jitted over ``mesh``: state replicated and
    donated, batch split on 'data'; at most ``LIVE_PROGRAMS`` batch shapes compiled at a time
    (:func:`fcn_jax.programs.bounded_jit`). ``params``: the model's parameter tree or its shapes (default:
    from ``jax.eval_shape`` of the model's init), for the frozen mask."""
    if params is None:
        params = jax.eval_shape(lambda: init_variables(cfg, cfg.model.build()))[PARAMS]
    return bounded_jit(functools.partial(train_step, pieces=step_pieces(cfg, params)),
                       in_shardings=(parallel.replicated(mesh), parallel.data_sharding(mesh)),
                       out_shardings=(parallel.replicated(mesh), parallel.replicated(mesh)),
                       donate_argnums=0)


# ------------------------------------------------------------------------------------ initialisation

def initial_variables_for(cfg: TrainConfig, model: nn.Module,
                          report: Callable[[str], None] | None = None) -> tuple[dict[str, Any], str | None]:
    """Variables to start from (every collection) and the preprocessing convention they imply (None: no
    preference).

    ``cfg.init``: None -> the model's initialisation; a path -> every array of it that fits copied
    over the initialisation (:func:`fcn_jax.loading.init_variables`: ImageNet VGG16, an earlier stage, an
    FCN with other classes), except the fixed upsamplers, which stay exactly bilinear (solve.py), and the
    arrays matching ``cfg.dont_load``.
    ``report`` receives the layers copied and re-initialised.
    """
    variables = init_variables(cfg, model)  # the model's own init for layers a source lacks
    if cfg.init is None:
        return variables, None
    from fcn_jax import loading
    labels = param_labels(variables, cfg.model)
    fixed = [name for name in upsampler_names(cfg.model.variant) if labels[name]["kernel"] == "frozen"]
    variables, info = loading.init_variables(cfg.model, variables, cfg.init, keep=fixed,  # fixed: bilinear
                                             dont_load=() if cfg.dont_load is None else (cfg.dont_load,),
                                             report=report)
    return variables, info.preprocessing


def dataset_options(cfg: TrainConfig) -> dict[str, Any]:
    """How ``cfg``'s dataset is read (keyword options of :func:`fcn_jax.data.load_split`)."""
    return {"void": cfg.void_value, "binary": cfg.binary_masks}


def write_config(cfg: TrainConfig, workdir: str) -> str:
    """Writes the effective config to ``WORKDIR/config.json`` (atomically); returns the path."""
    return write_json(os.path.join(workdir, "config.json"), to_dict(cfg))


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def _saved_config(checkpoints: ckpt_lib.TrainCheckpointer, step: int, workdir: str,
                  log: Callable[[str], None]) -> dict[str, Any]:
    """The training config recorded with the newest checkpoint whose metadata reads (damaged newer ones
    are set aside with a warning); ``{}`` if none records one."""
    while True:
        try:
            return dict(checkpoints.meta(step).config)
        except ckpt_lib.IncompatibleCheckpoint as e:  # readable but not usable here: refused, kept as it is
            raise ConfigError(str(e)) from None
        except ckpt_lib.CheckpointError as e:
            aside = checkpoints.set_aside(step)
            log(f"warning: {e}; moved to {aside}, trying the previous one")
            step = checkpoints.latest_step()
            if step is None:
                raise TrainingError(f"{workdir}: no checkpoint can be restored (damaged ones were moved to "
                                    f"<step>.damaged)") from None


def check_resume(cfg: TrainConfig, saved: dict[str, Any], workdir: str, log: Callable[[str], None]) -> None:
    """Compares the requested config with the one a workdir was trained with: a different network is a
    ConfigError naming each field; other changes (lr, steps, ...) are allowed and logged as a warning."""
    old, new = _flat(saved), _flat(to_dict(cfg))
    changed = [k for k in new if k in old and old[k] != new[k]]
    model = [k for k in changed if k.startswith("model.")]
    if model:
        raise ConfigError(f"{workdir} holds a different network: " + "; ".join(
            f"{k[len('model.'):]} {old[k]!r} there, {new[k]!r} requested" for k in model)
            + "; use another --workdir or the run's settings")
    others = [k for k in changed if k not in ("init", "preset")]
    if others:
        log("warning: resuming with settings that differ from the run's: "
            + ", ".join(f"{k} {old[k]!r} -> {new[k]!r}" for k in others))


def _missing_validation(records: list[dict[str, Any]], key: str, step: int,
                        best: dict[str, float] | None) -> str | None:
    """Why the validation of ``step`` did not complete (its record absent from metrics.jsonl, or ``best/``
    not updated with a better score), or None if it did. ``records``: the validation records, ``key``: the
    main score's name in them (``val/mean_iu``), ``best``: the metrics saved with ``best/`` (None: none)."""
    final = [r for r in records if r["step"] == step]
    if not final:
        return "metrics.jsonl has no record of it"
    if best is None or (math.isfinite(final[-1][key]) and best["mean_iu"] < final[-1][key]):
        return "best/ was not updated with it"
    return None


def _finished(cfg: TrainConfig, workdir: str, step: int, log: RunLog, *, model: nn.Module, mesh: Mesh,
              state: TrainState, ds_meta: Any, eval_source: Any, checkpoints: ckpt_lib.TrainCheckpointer,
              progress: bool, lead: bool) -> dict[str, Any]:
    """The summary of a run that already reached ``cfg.steps`` (its state restored at ``step``): its last
    validation scores, from its log.

    A run whose validation at ``step`` never completed (a file that failed to read, a crash) runs it now,
    with the pieces it needs (the model, mesh, restored state, dataset meta and validation source), as a
    resumed run would: the run's records (:func:`_write_run`), metrics.jsonl, TensorBoard, ``best/`` and the
    learning curves; the summary is then that validation's, without ``finished_before``.
    """
    from fcn_jax.summary import read_metrics
    path = os.path.join(workdir, "metrics.jsonl")
    scored = evaluated(batch_spec(cfg)[1])
    first = scored[0].name if len(scored) > 1 else ""  # several scored outputs log 'val/<name>/mean_iu' each
    prefix = f"val/{first}/" if first else "val/"
    records = [r for r in read_metrics(path) if f"{prefix}mean_iu" in r] if os.path.exists(path) else []
    missing = _missing_validation(records, f"{prefix}mean_iu", step, checkpoints.best_metrics())
    if missing is not None:
        return _final_validation(cfg, workdir, step, log, missing, model=model, mesh=mesh, state=state,
                                 ds_meta=ds_meta, eval_source=eval_source, checkpoints=checkpoints,
                                 progress=progress, lead=lead)
    scores = {k[len("val/"):]: v for k, v in records[-1].items() if k.startswith("val/")} if records else {}
    if records and first:  # the first head's scores under the plain names too, as a validation returns them
        scores.update({k[len(prefix):]: v for k, v in records[-1].items() if k.startswith(prefix)})
    last = (f"; last validation (step {records[-1]['step']}): mean IU {100 * scores['mean_iu']:.2f}%"
            if records else "")
    log(f"{workdir} is already trained to step {step} (--steps {cfg.steps}){last}; raise --steps to train longer")
    return {"step": step, "scores": scores, "interrupted": False, "signal": None, "workdir": workdir,
            "finished_before": True}


def _final_validation(cfg: TrainConfig, workdir: str, step: int, log: RunLog, missing: str, *, model: nn.Module,
                      mesh: Mesh, state: TrainState, ds_meta: Any, eval_source: Any,
                      checkpoints: ckpt_lib.TrainCheckpointer, progress: bool, lead: bool) -> dict[str, Any]:
    """Runs the validation of ``step`` that a finished run lacks (``missing``: why it counts as missing)."""
    from fcn_jax.summary import SummaryWriter
    from fcn_jax.viz import plot_learning_curves
    log(f"{workdir} is trained to step {step} but its validation at step {step} did not complete ({missing}): "
        "validating now")
    if lead:
        _write_run(cfg, workdir, log, step)
    writer = SummaryWriter(workdir, enabled=lead)
    try:
        validate = _Validator(cfg, model, mesh, eval_source, ds_meta, batch_spec(cfg)[0], checkpoints,
                              _checkpoint_meta(cfg, ds_meta, state), writer, progress, lead, log)
        scores = validate(step, state)
    finally:
        writer.close()
    if lead and os.path.exists(writer.path):
        plot_learning_curves(writer.path, os.path.join(workdir, "learning_curves.png"))
    return {"step": step, "scores": scores, "interrupted": False, "signal": None, "workdir": workdir}


# ------------------------------------------------------------------------------------------- the loop

class _StopRequest:
    """Turns the first SIGTERM / SIGINT into a request to checkpoint and stop; a second one kills."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "_StopRequest":
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.signal = signum
        signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


PANELS = 3  # validation images shown in TensorBoard at each validation


def agreed_stop(local_signal: int | None, boundary: bool) -> int | None:
    """The signal every process acts on at this step, or None.

    One process: its own signal, at any step. Several: saving is a collective, so they must stop at the
    same step: at log boundaries (the same steps everywhere) they exchange their signals and all stop if
    any process received one; between boundaries no one stops.
    """
    if jax.process_count() == 1:
        return local_signal
    if not boundary:
        return None
    from jax.experimental import multihost_utils
    signals = multihost_utils.process_allgather(np.asarray(local_signal or 0, np.int32))
    return int(np.max(signals)) or None


def _check_finite(pending: list[tuple[int, dict]]) -> list[tuple[int, dict]]:
    """Fetches pending step metrics; raises TrainingError at the first step that was not finite (its
    update was not applied, see :func:`train_step`)."""
    fetched = jax.device_get(pending)
    for step, m in fetched:
        if not (bool(m["finite"]) and math.isfinite(float(m["loss"])) and math.isfinite(float(m["grad_norm"]))):
            raise TrainingError(
                f"non-finite loss ({float(m['loss'])}), gradient norm ({float(m['grad_norm'])}) or updated "
                f"parameters at step {step}; stopping without applying it. The last checkpoint before it is "
                f"kept. With the summed loss ('sum') the learning rate must be tiny (the reference uses 1e-10); "
                f"lower --lr or use --loss mean.")
    return fetched


def train_and_evaluate(cfg: TrainConfig, workdir: str, *, mesh: Mesh | None = None,
                       progress: bool = True, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Trains ``cfg`` in ``workdir``, resuming from its latest checkpoint if there is one.

    Saves every ``checkpoint_every`` steps, at the end and on SIGTERM / Ctrl-C (then returns early with
    ``interrupted`` set and ``signal`` the signal's number); validates every ``eval_every`` steps and keeps
    ``WORKDIR/best``. A damaged latest checkpoint is set aside and the previous one resumed; a run already
    at ``cfg.steps`` reports its last scores. Returns a summary: final step, last validation scores,
    interrupted flag.
    """
    from fcn_jax.data import pipeline

    mesh = mesh or parallel.make_mesh()
    parallel.check_batch_size(cfg.batch_size // cfg.grad_accum, mesh, "--batch-size / --grad-accum")
    inputs, outputs = batch_spec(cfg)
    train_input = pipeline.TrainInput(
        mode=cfg.mode, batch_size=cfg.batch_size, crop_size=cfg.crop_size, scale_range=cfg.scale_range,
        resize_base=cfg.resize_base, flip=cfg.flip, bucket_multiple=cfg.bucket_multiple, sampling=cfg.sampling, convention=cfg.preprocessing,
        seed=cfg.seed, inputs=inputs, labels=label_fields(outputs))
    lead = jax.process_index() == 0
    log = RunLog(log if lead else (lambda _: None))  # only process 0 reports; train.log once the workdir exists
    try:
        return _train(cfg, workdir, mesh, train_input, progress, lead, log)
    finally:
        log.close()


def validation_record(result: Any, outputs: tuple[Output, ...],
                      class_names: Sequence[str]) -> tuple[dict[str, float], dict[str, float]]:
    """(metrics.jsonl record, scores) of a validation :class:`fcn_jax.evaluate.EvalResult` of a model with
    ``outputs`` (those it scores: the evaluated ones) and the dataset's ``class_names``.

    One scored output: 'val/pixel_acc', 'val/mean_acc', 'val/mean_iu', 'val/fw_iu' and 'val/iu/<class>'
    (finite IUs). Several (SIFT Flow): per output 'val/<name>/<score>' (the four, and 'mean_iu_present': the
    mean IU over the classes in the ground truth, see :mod:`fcn_jax.metrics`) and 'val/iu/<name>/<class>'.
    ``scores``: the main output's four scores (what picks the best checkpoint), plus '<name>/<score>' for
    every scored output.
    """
    keys = ("pixel_acc", "mean_acc", "mean_iu", "fw_iu")
    scored = evaluated(outputs)
    first = result.heads[scored[0].name].scores
    scores = {k: float(first[k]) for k in keys}
    if len(scored) == 1:
        per_class = {f"val/iu/{name}": float(v) for name, v in zip(scored[0].class_names(class_names), first["iu"])
                     if math.isfinite(float(v))}
        return {**{f"val/{k}": v for k, v in scores.items()}, **per_class}, scores
    record: dict[str, float] = {}
    for o in scored:
        head = result.heads[o.name].scores
        for k in (*keys, "mean_iu_present"):
            record[f"val/{o.name}/{k}"] = scores[f"{o.name}/{k}"] = float(head[k])
        record.update({f"val/iu/{o.name}/{name}": float(v) for name, v in zip(o.class_names(class_names), head["iu"])
                       if math.isfinite(float(v))})
    return record, scores


def _percent(scores: dict[str, float]) -> str:
    return ", ".join(f"{label} {100 * scores[key]:.2f}%" for key, label in
                     (("pixel_acc", "pixel acc."), ("mean_acc", "mean acc."), ("mean_iu", "mean IU"),
                      ("fw_iu", "f.w. IU")))


def _dataset(cfg: TrainConfig, progress: bool, log: RunLog) -> tuple[TrainConfig, Any]:
    """The dataset's metadata, checked against the model, and ``cfg`` with its class weights resolved."""
    from fcn_jax import data as data_lib
    options = dataset_options(cfg)
    ds_meta = data_lib.dataset_meta(cfg.dataset, cfg.data_dir, progress=progress, **options)
    if ds_meta.num_classes != cfg.model.num_classes:
        raise ConfigError(f"dataset {cfg.dataset} has {ds_meta.num_classes} classes but the model has "
                            f"{cfg.model.num_classes} (--num-classes)")
    if ds_meta.description:
        log(ds_meta.description)
    cfg = resolve_class_weights(cfg, lambda: data_lib.class_pixel_counts(
        cfg.dataset, ds_meta.train_split, cfg.data_dir, progress=progress, **options))
    if cfg.class_weights is not None:
        log("class weights: " + ", ".join(f"{name} {w}" for name, w in
                                          zip(ds_meta.class_names, cfg.class_weights.split(","))))
    return cfg, ds_meta


def _start_variables(cfg: TrainConfig, model: nn.Module, log: RunLog) -> dict[str, Any]:
    """The initial variables of a fresh run (``--init`` read and its preprocessing checked)."""
    variables, convention = initial_variables_for(cfg, model, report=log)
    # the caffe* conventions differ only in the mean subtracted: the reference starts SIFT Flow and NYUD
    # (their own means) from the VGG16 of the ImageNet mean
    if convention is not None and convention_family(convention) != convention_family(cfg.preprocessing):
        raise ConfigError(f"--init weights expect preprocessing {convention!r} but the config says "
                            f"{cfg.preprocessing!r}; pass --preprocessing {convention}")
    return variables


def _restore_or_init(cfg: TrainConfig, model: nn.Module, workdir: str, mesh: Mesh,
                     checkpoints: ckpt_lib.TrainCheckpointer, variables: dict[str, Any] | None,
                     log: RunLog) -> tuple[TrainState, dict[str, Any] | None, int]:
    """(state, data iterator state or None, start step): the latest checkpoint that restores, else a fresh
    state from ``variables`` (None: made now)."""
    start = checkpoints.latest_step()
    if start is None:
        if variables is None:  # step directories that Orbax does not count as steps (e.g. unfinished)
            variables = _start_variables(cfg, model, log)
        return jax.device_put(create_train_state(cfg, model, variables), parallel.replicated(mesh)), None, 0
    check_resume(cfg, _saved_config(checkpoints, start, workdir, log), workdir, log)
    state, saved_meta, data_state = checkpoints.restore(abstract_state(cfg, model, mesh), warn=log)
    state = state.replace(apply_fn=model.apply, tx=make_optimizer(cfg, state.params))
    return state, data_state, int(saved_meta.step)


def _checkpoint_meta(cfg: TrainConfig, ds_meta: Any, state: TrainState) -> ckpt_lib.CheckpointMeta:
    """What every checkpoint and ``best/`` of this run records: the model, the dataset's classes and colours,
    the preprocessing, the training config and the state's variable collections."""
    return ckpt_lib.model_meta(cfg.model, ds_meta.class_names, cfg.preprocessing, config=to_dict(cfg),
                               colours=ds_meta.colours or None, collections=tuple(sorted(state.variables)))


def _write_run(cfg: TrainConfig, workdir: str, log: RunLog, start: int) -> None:
    """The run's records in ``workdir``: config.json, train.log from now on, and this run (from step
    ``start``) added to dataset.json (:func:`fcn_jax.data.record.record_run`)."""
    write_config(cfg, workdir)
    log.open(workdir)
    from fcn_jax.data.record import record_run
    record_run(workdir, cfg.dataset, cfg.data_dir, start, log, **dataset_options(cfg))


def _restore_data_position(cfg: TrainConfig, train_iter: Any, data_state: dict[str, Any], num_examples: int,
                           log: Callable[[str], None]) -> None:
    """Continues ``train_iter`` where the checkpoint's ``data_state`` left it.

    A folder dataset whose training split has another size than when the checkpoint was saved (files added
    or removed: :func:`fcn_jax.data.record.record_run` reported how) continues at the same position over the split as it is
    now, with a warning: no order over the changed split can reproduce the uninterrupted run's batches. Any
    other mismatch (seed, batch size, sampling; another dataset) the iterator refuses.
    """
    from fcn_jax.data import is_folder
    saved = data_state.get("num_examples")
    if saved is not None and int(saved) != num_examples and is_folder(cfg.dataset):
        log(f"warning: the training split of {cfg.dataset} has {num_examples} examples, {saved} when the checkpoint "
            "was saved: training continues over the split as it is now (not the batches an uninterrupted run on "
            "the old folder would have drawn)")
        data_state = dict(data_state, num_examples=num_examples)
    train_iter.set_state(data_state)


class _Validator:
    """Validation inside training: the evaluator (:class:`fcn_jax.evaluator.Evaluator`, the one ``eval.py``
    uses) over the validation split, panels and scores to TensorBoard, ``best/`` kept, one log line."""

    def __init__(self, cfg: TrainConfig, model: nn.Module, mesh: Mesh, source: Any, ds_meta: Any, inputs: str,
                 checkpoints: ckpt_lib.TrainCheckpointer, meta: ckpt_lib.CheckpointMeta, writer: Any,
                 progress: bool, lead: bool, log: RunLog):
        from fcn_jax.evaluator import Evaluator
        self.cfg, self.ds_meta, self.inputs, self.count = cfg, ds_meta, inputs, len(source)
        self.checkpoints, self.meta, self.writer = checkpoints, meta, writer
        self.progress, self.lead, self.log = progress, lead, log
        self.outputs = batch_spec(cfg)[1]
        self.evaluator = Evaluator(model, source, mesh=mesh, batch_size=cfg.eval_batch_size,
                                   convention=cfg.preprocessing, bucket_multiple=cfg.eval_bucket_multiple,
                                   inputs=inputs)

    def __call__(self, step: int, state: TrainState) -> dict[str, float]:
        from fcn_jax.evaluator import Pictures
        cfg = self.cfg
        pictures = Pictures(PANELS, self.ds_meta.class_names, cfg.preprocessing, self.ds_meta.colours, self.inputs,
                            title=f"{cfg.model.variant} step {step}")
        result = self.evaluator(state.variables, pictures=pictures if self.lead else None,
                                progress=self.progress and self.lead, total=self.count,
                                desc=f"validation (step {step})", leave=False)
        self.writer.write_images(step, {f"val/panel/{i}": panel for i, panel in enumerate(pictures.panels)})
        record, scores = validation_record(result, self.outputs, self.ds_meta.class_names)
        self.writer.write(step, record)
        best = self.checkpoints.save_best(step, state.variables, self.meta, scores)
        scored = evaluated(self.outputs)
        if len(scored) == 1:
            text = _percent(scores)
        else:
            text = "; ".join(f"{o.name}: " + _percent({k: scores[f"{o.name}/{k}"] for k in
                                                       ("pixel_acc", "mean_acc", "mean_iu", "fw_iu")})
                             + f", mean IU of classes in ground truth {100 * scores[f'{o.name}/mean_iu_present']:.2f}%"
                             for o in scored)
        self.log(f"step {step}: validation {text}" + (" (new best)" if best else ""))
        return scores


def _sources(cfg: TrainConfig, ds_meta: Any) -> tuple[Any, Any]:
    """(train, validation) sources of ``cfg``'s dataset, checked to hold the fields the model needs (its
    input's, the labels of every output; validation: of every scored output) before anything compiles."""
    from fcn_jax import data as data_lib
    from fcn_jax.data import pipeline
    options = dataset_options(cfg)
    train_source = data_lib.load_split(cfg.dataset, ds_meta.train_split, cfg.data_dir, **options)
    eval_source = data_lib.load_split(cfg.dataset, ds_meta.eval_split, cfg.data_dir, **options)
    inputs, outputs = batch_spec(cfg)
    for split, source, needed in ((ds_meta.train_split, train_source, outputs),
                                  (ds_meta.eval_split, eval_source, evaluated(outputs))):
        if len(source):
            try:
                pipeline.read_fields(source[0], inputs, label_fields(needed))
            except ValueError as e:
                raise ConfigError(f"--dataset {cfg.dataset} ({split}) does not fit {cfg.model.variant}: "
                                    f"{e}") from None
    return train_source, eval_source


class _Window:
    """The training metrics since the last log boundary: fetched in one device sync, checked finite
    (:func:`_check_finite`), averaged, shown on the progress bar and written to metrics.jsonl / TensorBoard."""

    def __init__(self, batch_size: int, bar: Any, writer: Any):
        self.batch_size, self.bar, self.writer = batch_size, bar, writer
        self.pending: list[tuple[int, dict]] = []
        self.restart()

    def restart(self) -> None:
        """Starts timing afresh (after a validation, whose time is not training's)."""
        self.start, self.images = time.perf_counter(), 0

    def add(self, step: int, metrics: dict) -> None:
        self.pending.append((step, metrics))
        self.images += self.batch_size
        self.bar.update(1)

    def check(self) -> list[tuple[int, dict]]:
        """Fetches and checks the pending steps (TrainingError at a non-finite one); returns them."""
        fetched, self.pending = _check_finite(self.pending), []
        return fetched

    def flush(self, step: int) -> None:
        """Checks the window and logs its mean loss, images/s, lr and gradient norm at ``step``."""
        fetched = self.check()
        rate = self.images / max(time.perf_counter() - self.start, 1e-9)
        loss = float(np.mean([float(m["loss"]) for _, m in fetched]))
        self.bar.set_postfix(loss=f"{loss:.4g}", img_s=f"{rate:.1f}")
        outputs = {f"train/{k}": float(np.mean([float(m[k]) for _, m in fetched]))
                   for k in fetched[-1][1] if k.startswith("loss/")}  # several outputs: 'train/loss/sem', ...
        self.writer.write(step, {"train/loss": loss, "train/images_per_s": rate,
                                 "train/lr": float(fetched[-1][1]["lr"]),
                                 "train/grad_norm": float(fetched[-1][1]["grad_norm"]), **outputs})
        self.restart()


def _confirm_saved(checkpoints: ckpt_lib.TrainCheckpointer, step: int, signum: int, workdir: str,
                   log: RunLog) -> None:
    """After a stop request: waits until ``step`` is on disk, reads the directory back, and only then says so
    (TrainingError if it is not there)."""
    checkpoints.wait()
    on_disk = checkpoints.latest_on_disk()
    if on_disk != step:
        raise TrainingError(f"received signal {signum} but step {step} is not on disk "
                            f"(latest saved: {on_disk}); run again to resume from there")
    log(f"received signal {signum}: saved step {step} in {workdir}; run again to resume")


def _train(cfg: TrainConfig, workdir: str, mesh: Mesh, train_input: Any, progress: bool, lead: bool,
           log: RunLog) -> dict[str, Any]:
    """The body of :func:`train_and_evaluate`: set-up (dataset, init or resume, the run's records, sources,
    step, validator), then the loop, each periodic action (log, checkpoint, validate, stop) a named piece."""
    from tqdm import tqdm

    from fcn_jax.data import pipeline
    from fcn_jax.summary import SummaryWriter
    from fcn_jax.viz import plot_learning_curves

    # everything the user chose is validated (--trainable / --frozen / --lr-mults matching parameters, the
    # dataset's fields, --init read) before anything is created: the patterns before the dataset is prepared
    # (their paths do not depend on its class count), the rest before the workdir
    param_labels(jax.eval_shape(lambda: init_variables(cfg, cfg.model.build())), cfg.model, cfg.trainable,
                 cfg.frozen, cfg.lr_mults)
    cfg, ds_meta = _dataset(cfg, progress and lead, log)
    model = cfg.model.build()
    fresh = not ckpt_lib.saved_steps(os.path.join(workdir, ckpt_lib.CHECKPOINTS))
    train_source, eval_source = _sources(cfg, ds_meta)
    variables = _start_variables(cfg, model, log) if fresh else None
    # everything opened from here on is closed by the stack, in reverse order, whatever happens
    with contextlib.ExitStack() as stack:
        checkpoints = stack.enter_context(ckpt_lib.TrainCheckpointer(workdir, keep=cfg.keep_checkpoints))
        state, data_state, start = _restore_or_init(cfg, model, workdir, mesh, checkpoints, variables, log)
        if start >= cfg.steps:  # runs the final validation if it never completed
            return _finished(cfg, workdir, start, log, model=model, mesh=mesh, state=state, ds_meta=ds_meta,
                             eval_source=eval_source, checkpoints=checkpoints, progress=progress, lead=lead)
        if start:
            log(f"resuming from step {start} in {workdir}")
        log(format_config(cfg, "effective config"))
        if lead:
            _write_run(cfg, workdir, log, start)
        meta = _checkpoint_meta(cfg, ds_meta, state)
        step_fn = make_train_step(cfg, mesh, state.params)
        writer = SummaryWriter(workdir, enabled=lead)
        stack.callback(writer.close)
        validate = _Validator(cfg, model, mesh, eval_source, ds_meta, batch_spec(cfg)[0], checkpoints, meta, writer,
                              progress, lead, log)
        scores: dict[str, float] = {}
        interrupted: int | None = None  # the signal that stopped the run
        bar = tqdm(total=cfg.steps, initial=start, disable=not (progress and lead), unit="step", dynamic_ncols=True)
        stack.callback(bar.close)
        log.bar = bar
        stack.callback(setattr, log, "bar", None)
        window = _Window(cfg.batch_size, bar, writer)
        train_iter = pipeline.train_iterator(train_source, train_input, sharding=parallel.data_sharding(mesh))
        if hasattr(train_iter, "close"):  # its threads
            stack.callback(train_iter.close)
        if data_state is not None:
            _restore_data_position(cfg, train_iter, data_state, len(train_source), log)
        with _StopRequest() as stop:
            for step in range(start + 1, cfg.steps + 1):
                state, metrics = step_fn(state, next(train_iter))
                window.add(step, metrics)
                boundary = step % cfg.log_every == 0 or step == cfg.steps
                requested = agreed_stop(stop.signal, boundary)  # the same on every process
                save_now = step % cfg.checkpoint_every == 0 or step == cfg.steps or requested is not None
                eval_now = step % cfg.eval_every == 0 or step == cfg.steps
                if boundary or save_now or eval_now:
                    window.flush(step)
                if save_now:
                    checkpoints.save(step, state, meta, train_iter.get_state())
                if eval_now:
                    scores = validate(step, state)
                    window.restart()
                if jax.process_count() == 1:  # one process: a signal that arrived after save_now was decided
                    requested = stop.signal
                if requested is not None:
                    if not save_now:
                        window.check()  # never save a step whose loss was not finite
                        checkpoints.save(step, state, meta, train_iter.get_state())
                    _confirm_saved(checkpoints, step, requested, workdir, log)
                    interrupted = requested
                    break
    if lead and os.path.exists(writer.path) and interrupted is None:
        plot_learning_curves(writer.path, os.path.join(workdir, "learning_curves.png"))
    return {"step": int(state.step), "scores": scores, "interrupted": interrupted is not None,
            "signal": interrupted, "workdir": workdir}
