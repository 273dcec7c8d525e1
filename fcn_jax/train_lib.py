"""Training: the loss, the optimiser presets, the jitted data-parallel train step, and the loop.

Plain functions in the style of flax's examples: :func:`create_train_state`, :func:`train_step`
(made by :func:`make_train_step`) and :func:`train_and_evaluate`. Nothing here imports TensorFlow.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import re
import signal
import time
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training.train_state import TrainState
from jax.sharding import Mesh

from fcn_jax import checkpoint as ckpt_lib
from fcn_jax import parallel
from fcn_jax.config import FREQUENCY, ModelConfig, TrainConfig, format_config, parse_class_weights, to_dict
from fcn_jax.models import final_upsampler_names, initial_variables, upsampler_names
from fcn_jax.preprocess import Target, convention_family, display_image, head_targets, resolve_inputs
from fcn_jax.runlog import RunLog


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
    """Whether every element of every array of ``tree`` is finite (a boolean scalar)."""
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def global_norm(tree: Any) -> jax.Array:
    """L2 norm over every array of ``tree``."""
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)))


# ------------------------------------------------------------------------------------------ optimiser

def param_labels(params: Any, model: ModelConfig, trainable: str | None = None,
                 frozen: str | None = None) -> Any:
    """Labels every parameter 'weight', 'bias' or 'frozen'.

    Frozen: the upsamplers ``model.freeze_upsamplers`` names, parameters whose path ('backbone/fc6/kernel',
    'score_fr/bias', ...) fully matches the regular expression ``frozen``, and, when ``trainable`` is
    given, every parameter whose path does not fully match it (big_vision-style regex freezing).
    Raises ValueError when a regular expression matches no parameter.
    """
    ups = upsampler_names(model.variant)
    fixed = {"none": (), "final": final_upsampler_names(model.variant), "all": ups}[model.freeze_upsamplers]
    paths = ["/".join(getattr(k, "key", str(k)) for k in path) for path, _ in jax.tree_util.tree_leaves_with_path(params)]
    for flag, pattern in (("trainable", trainable), ("frozen", frozen)):
        if pattern is not None and not any(re.fullmatch(pattern, p) for p in paths):
            raise ValueError(f"{flag}={pattern!r} matches no parameter; paths look like {paths[0]}, "
                             f"score_fr/kernel, {ups[-1]}/kernel")

    def label(path: tuple[Any, ...], _: Any) -> str:
        names = [getattr(p, "key", str(p)) for p in path]
        name = "/".join(names)
        if (names[0] in fixed or (frozen is not None and re.fullmatch(frozen, name))
                or (trainable is not None and not re.fullmatch(trainable, name))):
            return "frozen"
        return "bias" if names[-1] == "bias" else "weight"

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
    """The solver: weights get weight decay, biases ``bias_lr_mult`` x lr and no decay, frozen parameters
    (:func:`param_labels`) nothing: they are outside the optimiser and its weight decay.

    SGD follows Caffe: ``v = momentum * v + lr * (grad + wd * w); w -= v`` (identical for a fixed lr).
    """
    schedule = make_schedule(cfg)
    bias_schedule = lambda step: schedule(step) * cfg.bias_lr_mult  # noqa: E731
    if cfg.optimizer == "sgd":
        weight = optax.chain(optax.add_decayed_weights(cfg.weight_decay),
                             optax.sgd(schedule, momentum=cfg.momentum))
        bias = optax.sgd(bias_schedule, momentum=cfg.momentum)
    else:
        weight = optax.adamw(schedule, b1=cfg.momentum, weight_decay=cfg.weight_decay)
        bias = optax.adam(bias_schedule, b1=cfg.momentum)
    return optax.multi_transform({"weight": weight, "bias": bias, "frozen": optax.set_to_zero()},
                                 param_labels(params, cfg.model, cfg.trainable, cfg.frozen))


# ---------------------------------------------------------------------------------------------- state

def init_params(cfg: TrainConfig, model: nn.Module) -> Any:
    """The model's own initialisation from ``cfg.seed`` (one compiled program, not many dispatches)."""
    return initial_variables(model, jax.random.PRNGKey(cfg.seed))["params"]


def create_train_state(cfg: TrainConfig, model: nn.Module, params: Any | None = None) -> TrainState:
    """A fresh TrainState (step 0); ``params`` default to :func:`init_params`."""
    if params is None:
        params = init_params(cfg, model)
    return TrainState.create(apply_fn=model.apply, params=params, tx=make_optimizer(cfg, params))


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


def batch_spec(cfg: TrainConfig) -> tuple[str, tuple[Target, ...]]:
    """What a batch of ``cfg`` holds: the example fields forming the input (``cfg.inputs`` or the variant's
    default, :func:`fcn_jax.preprocess.resolve_inputs`) and every head's target (batch key, example field,
    classes; :func:`fcn_jax.preprocess.head_targets`)."""
    return (resolve_inputs(cfg.inputs, cfg.model.variant),
            head_targets(cfg.model.variant, cfg.model.num_classes))


def loss_scales(labels: dict[str, jax.Array], targets: tuple[Target, ...], cfg: TrainConfig,
                batch_size: int) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
    """(scale, labelled-pixel count) of each head's summed loss, by batch key: 'sum' 1 / B, 'mean' 1 / the
    head's labelled pixels (their total class weight under ``class_weights``, first head only).

    ``labels``: {batch key: (B, H, W) int}, values outside 0..classes-1 (255) unlabelled.
    """
    weights = class_weight_array(cfg)
    scales, counts = {}, {}
    for i, t in enumerate(targets):
        y, w = labels[t.batch_key], weights if i == 0 else None
        valid = (y >= 0) & (y < t.num_classes)
        count = counts[t.batch_key] = jnp.sum(valid).astype(jnp.float32)
        total_weight = count if w is None else jnp.sum(jnp.where(valid, w[jnp.where(valid, y, 0)], 0.0))
        # 'sum': Caffe's SoftmaxWithLoss with normalize: false divides the summed loss by the batch size N,
        # and iter_size divides the accumulated gradient by iter_size: the sum over the whole batch / B.
        # 'mean': divided by the labelled pixels' total weight (their count when unweighted), as PyTorch's
        # weighted cross-entropy with reduction='mean'.
        scales[t.batch_key] = 1.0 / batch_size if cfg.loss == "sum" else 1.0 / jnp.maximum(total_weight, 1e-12)
    return scales, counts


def head_losses(outputs: jax.Array | dict[str, jax.Array], labels: dict[str, jax.Array], targets: tuple[Target, ...],
                class_weights: jax.Array | None = None) -> dict[str, jax.Array]:
    """Each head's softmax cross-entropy summed over its labelled pixels (:func:`pixel_cross_entropy`), by
    batch key. ``outputs``: logits (N, H, W, C) of a single head, or {head: logits}; ``class_weights``
    weigh the first head only."""
    single = len(targets) == 1
    return {t.batch_key: pixel_cross_entropy(outputs if single else outputs[t.head], labels[t.batch_key],
                                             class_weights if i == 0 else None)[0] for i, t in enumerate(targets)}


def total_loss(totals: dict[str, jax.Array], scales: dict[str, jax.Array], targets: tuple[Target, ...]) -> jax.Array:
    """The loss: each head's summed loss times its scale (:func:`loss_scales`), summed over heads (Caffe's
    loss layers of weight 1 each)."""
    return functools.reduce(jnp.add, [totals[t.batch_key] * scales[t.batch_key] for t in targets])


def train_step(state: TrainState, batch: dict[str, jax.Array], *, cfg: TrainConfig) -> tuple[TrainState, dict]:
    """One optimiser step on a global batch {'image': (B,H,W,C) float, 'label': (B,H,W) int, and for a
    multi-head variant each other head's labels, e.g. 'label_geo' (B,H,W) int}.

    The batch is split into ``cfg.grad_accum`` micro-batches whose gradients are summed; the loss is
    the sum over labelled pixels divided by the batch size B ('sum', Caffe's ``normalize: false``; with
    accumulation it is Caffe's ``iter_size`` average) or by the batch's labelled-pixel count ('mean'),
    so accumulation and data parallelism give exactly the full-batch gradient. With ``class_weights``
    each pixel's loss is multiplied by its class's weight and 'mean' divides by the weights' sum.
    A multi-head variant (SIFT Flow) sums its heads' losses, each against its own labels and normalised
    as above by its own pixels (Caffe: one SoftmaxWithLoss per head, loss weight 1 each); class weights
    apply to the first head only. Dropout keys derive from (seed, step), so a resumed run draws the same
    masks.
    """
    images = batch["image"]
    _, targets = batch_spec(cfg)
    labels = {t.batch_key: batch[t.batch_key] for t in targets}
    accum = cfg.grad_accum
    weights = class_weight_array(cfg)
    scales, counts = loss_scales(labels, targets, cfg, images.shape[0])
    key = jax.random.fold_in(jax.random.PRNGKey(cfg.seed), state.step)
    fixed = jax.tree.map(lambda label: label == "frozen", param_labels(state.params, cfg.model, cfg.trainable,
                                                                       cfg.frozen))

    def loss_fn(params: Any, x: jax.Array, ys: dict[str, jax.Array],
                k: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        # frozen parameters get no gradient at all, so XLA drops their backward pass
        params = jax.tree.map(lambda p, f: jax.lax.stop_gradient(p) if f else p, params, fixed)
        out = state.apply_fn({"params": params}, x, train=True, rngs={"dropout": k})
        totals = head_losses(out, ys, targets, weights)
        return total_loss(totals, scales, targets), totals

    grad_fn = jax.grad(loss_fn, has_aux=True)
    if accum == 1:
        grads, totals = grad_fn(state.params, images, labels, key)
    else:
        # (B, ...) -> (B/accum, accum, ...): micro-batch i takes rows i, i+accum, ..., which keeps each
        # device's rows on that device when the batch axis is sharded.
        split = lambda a: a.reshape(a.shape[0] // accum, accum, *a.shape[1:])  # noqa: E731
        xs, ys = split(images), {k: split(v) for k, v in labels.items()}

        def body(i: jax.Array, carry: tuple[Any, dict[str, jax.Array]]) -> tuple[Any, dict[str, jax.Array]]:
            g_acc, t_acc = carry
            g, t = grad_fn(state.params, xs[:, i], {k: v[:, i] for k, v in ys.items()}, jax.random.fold_in(key, i))
            return jax.tree.map(jnp.add, g_acc, g), jax.tree.map(jnp.add, t_acc, t)

        zeros = jax.tree.map(jnp.zeros_like, state.params)
        grads, totals = jax.lax.fori_loop(0, accum, body, (zeros, {k: jnp.zeros((), jnp.float32) for k in labels}))
    updated = state.apply_gradients(grads=grads)
    # A step whose loss, gradients or updated parameters are not all finite is not applied: the state
    # stays as it was (so it can never be saved), and the loop stops at that step (``finite`` False).
    loss = total_loss(totals, scales, targets)
    finite = jnp.isfinite(functools.reduce(jnp.add, list(totals.values()))) & all_finite(grads) \
        & all_finite(updated.params)
    new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), updated, state)
    metrics = {"loss": loss, "grad_norm": global_norm(grads), "labelled_pixels": counts[targets[0].batch_key],
               "lr": make_schedule(cfg)(state.step), "finite": finite}
    if len(targets) > 1:
        metrics.update({f"loss/{t.head}": totals[t.batch_key] * scales[t.batch_key] for t in targets})
    return new_state, metrics


def make_train_step(cfg: TrainConfig, mesh: Mesh) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """``train_step`` jitted over ``mesh``: state replicated and donated, batch split on 'data'."""
    return jax.jit(functools.partial(train_step, cfg=cfg),
                   in_shardings=(parallel.replicated(mesh), parallel.data_sharding(mesh)),
                   out_shardings=(parallel.replicated(mesh), parallel.replicated(mesh)),
                   donate_argnums=0)


# ------------------------------------------------------------------------------------ initialisation

def initial_params(cfg: TrainConfig, model: nn.Module,
                   report: Callable[[str], None] | None = None) -> tuple[Any, str | None]:
    """Parameters to start from and the preprocessing convention they imply (None: no preference).

    ``cfg.init``: None -> the model's initialisation; a path -> every layer of it that fits copied
    over the initialisation (:func:`fcn_jax.loading.init_params`: ImageNet VGG16, an earlier stage, an
    FCN with other classes), except the fixed upsamplers, which stay exactly bilinear (solve.py).
    ``report`` receives the layers copied and re-initialised.
    """
    params = init_params(cfg, model)  # the model's own init for layers a source lacks
    if cfg.init is None:
        return params, None
    from fcn_jax import loading
    labels = param_labels(params, cfg.model)
    fixed = [name for name in upsampler_names(cfg.model.variant) if labels[name]["kernel"] == "frozen"]
    params, info = loading.init_params(cfg.model, params, cfg.init, keep=fixed,  # fixed upsamplers: bilinear
                                       report=report)
    return params, info.preprocessing


def dataset_options(cfg: TrainConfig) -> dict[str, Any]:
    """How ``cfg``'s dataset is read (keyword options of :func:`fcn_jax.data.load_split`)."""
    return {"void": cfg.void_value, "binary": cfg.binary_masks}


def write_json(path: str, record: Any) -> str:
    """Writes ``record`` as indented JSON to ``path`` atomically (a temporary file, then a rename)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(record, f, indent=2)
        f.write("\n")
    os.replace(path + ".tmp", path)
    return path


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
            return checkpoints.meta(step).get("config") or {}
        except ckpt_lib.CheckpointError as e:
            aside = checkpoints.set_aside(step)
            log(f"warning: {e}; moved to {aside}, trying the previous one")
            step = checkpoints.latest_step()
            if step is None:
                raise TrainingError(f"{workdir}: no checkpoint can be restored (damaged ones were moved to "
                                    f"<step>.damaged)") from None


def check_resume(cfg: TrainConfig, saved: dict[str, Any], workdir: str, log: Callable[[str], None]) -> None:
    """Compares the requested config with the one a workdir was trained with: a different network is a
    TrainingError naming each field; other changes (lr, steps, ...) are allowed and logged as a warning."""
    old, new = _flat(saved), _flat(to_dict(cfg))
    changed = [k for k in new if k in old and old[k] != new[k]]
    model = [k for k in changed if k.startswith("model.")]
    if model:
        raise TrainingError(f"{workdir} holds a different network: " + "; ".join(
            f"{k[len('model.'):]} {old[k]!r} there, {new[k]!r} requested" for k in model)
            + "; use another --workdir or the run's settings")
    others = [k for k in changed if k not in ("init", "preset")]
    if others:
        log("warning: resuming with settings that differ from the run's: "
            + ", ".join(f"{k} {old[k]!r} -> {new[k]!r}" for k in others))


def _finished(cfg: TrainConfig, workdir: str, step: int, log: Callable[[str], None]) -> dict[str, Any]:
    """The summary of a run that already reached ``cfg.steps``: its last validation scores, from its log."""
    from fcn_jax.summary import read_metrics
    path = os.path.join(workdir, "metrics.jsonl")
    first = batch_spec(cfg)[1][0].head  # a multi-head run logs 'val/<head>/mean_iu' per head
    prefix = f"val/{first}/" if first else "val/"
    records = [r for r in read_metrics(path) if f"{prefix}mean_iu" in r] if os.path.exists(path) else []
    scores = {k[len("val/"):]: v for k, v in records[-1].items() if k.startswith("val/")} if records else {}
    if records and first:  # the first head's scores under the plain names too, as a validation returns them
        scores.update({k[len(prefix):]: v for k, v in records[-1].items() if k.startswith(prefix)})
    last = (f"; last validation (step {records[-1]['step']}): mean IU {100 * scores['mean_iu']:.2f}%"
            if records else "")
    log(f"{workdir} is already trained to step {step} (--steps {cfg.steps}){last}; raise --steps to train longer")
    return {"step": step, "scores": scores, "interrupted": False, "signal": None, "workdir": workdir,
            "finished_before": True}


def _abstract_state(cfg: TrainConfig, model: nn.Module, mesh: Mesh) -> Any:
    shapes = jax.eval_shape(lambda: create_train_state(cfg, model))
    sharding = parallel.replicated(mesh)
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), shapes)


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


class _PanelCollector:
    """``on_batch`` callback of :func:`fcn_jax.evaluate.evaluate` keeping image | truth | prediction panels
    ((H, W, 3) uint8) of the first ``limit`` validation images."""

    def __init__(self, limit: int, convention: str, ds_meta: Any, title: str, inputs: str = "image"):
        self.limit, self.convention, self.ds_meta, self.title = limit, convention, ds_meta, title
        self.inputs = inputs
        self.panels: list[np.ndarray] = []

    def __call__(self, batch: Any, preds: np.ndarray) -> bool:
        from fcn_jax.evaluate import local_rows
        from fcn_jax.viz import panel
        images, labels = local_rows(batch.image), local_rows(batch.label)
        for row, index in enumerate(np.asarray(batch.indices)):
            if index < 0 or len(self.panels) >= self.limit:
                continue
            h, w = (int(v) for v in np.asarray(batch.sizes)[row])
            picture = panel(display_image(images[row, :h, :w], self.convention, self.inputs), labels[row, :h, :w],
                            preds[row, :h, :w], self.ds_meta.class_names, self.ds_meta.colours,
                            f"{self.title}, validation image {int(index)}")
            self.panels.append(np.asarray(picture.convert("RGB")))
        return len(self.panels) < self.limit


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
    inputs, targets = batch_spec(cfg)
    train_input = pipeline.TrainInput(
        mode=cfg.mode, batch_size=cfg.batch_size, crop_size=cfg.crop_size, scale_range=cfg.scale_range,
        flip=cfg.flip, bucket_multiple=cfg.bucket_multiple, sampling=cfg.sampling, convention=cfg.preprocessing,
        seed=cfg.seed, inputs=inputs, labels=tuple((t.batch_key, t.field) for t in targets))
    lead = jax.process_index() == 0
    log = RunLog(log if lead else (lambda _: None))  # only process 0 reports; train.log once the workdir exists
    try:
        return _train(cfg, workdir, mesh, train_input, progress, lead, log)
    finally:
        log.close()


def validation_record(result: Any, targets: tuple[Target, ...],
                      class_names: dict[str, tuple[str, ...]]) -> tuple[dict[str, float], dict[str, float]]:
    """(metrics.jsonl record, scores) of a validation :class:`fcn_jax.evaluate.EvalResult`.

    One head: 'val/pixel_acc', 'val/mean_acc', 'val/mean_iu', 'val/fw_iu' and 'val/iu/<class>' (finite IUs).
    Several (SIFT Flow): per head 'val/<head>/<score>' (the four, and 'mean_iu_present': the mean IU over the
    classes in the ground truth, see :mod:`fcn_jax.metrics`) and 'val/iu/<head>/<class>'. ``scores``: the
    first head's four scores (what picks the best checkpoint), plus '<head>/<score>' for every head.
    """
    keys = ("pixel_acc", "mean_acc", "mean_iu", "fw_iu")
    first = result.heads[targets[0].head].scores
    scores = {k: float(first[k]) for k in keys}
    if len(targets) == 1:
        per_class = {f"val/iu/{name}": float(v) for name, v in zip(class_names[targets[0].head], first["iu"])
                     if math.isfinite(float(v))}
        return {**{f"val/{k}": v for k, v in scores.items()}, **per_class}, scores
    record: dict[str, float] = {}
    for t in targets:
        head = result.heads[t.head].scores
        for k in (*keys, "mean_iu_present"):
            record[f"val/{t.head}/{k}"] = scores[f"{t.head}/{k}"] = float(head[k])
        record.update({f"val/iu/{t.head}/{name}": float(v) for name, v in zip(class_names[t.head], head["iu"])
                       if math.isfinite(float(v))})
    return record, scores


def _percent(scores: dict[str, float]) -> str:
    return ", ".join(f"{label} {100 * scores[key]:.2f}%" for key, label in
                     (("pixel_acc", "pixel acc."), ("mean_acc", "mean acc."), ("mean_iu", "mean IU"),
                      ("fw_iu", "f.w. IU")))


def _train(cfg: TrainConfig, workdir: str, mesh: Mesh, train_input: Any, progress: bool, lead: bool,
           log: RunLog) -> dict[str, Any]:
    """The body of :func:`train_and_evaluate`."""
    from tqdm import tqdm

    from fcn_jax import data as data_lib
    from fcn_jax.data import pipeline
    from fcn_jax.evaluate import evaluate, head_class_names
    from fcn_jax.summary import SummaryWriter
    from fcn_jax.viz import plot_learning_curves

    options = dataset_options(cfg)
    ds_meta = data_lib.dataset_meta(cfg.dataset, cfg.data_dir, progress=progress and lead, **options)
    if ds_meta.num_classes != cfg.model.num_classes:
        raise TrainingError(f"dataset {cfg.dataset} has {ds_meta.num_classes} classes but the model has "
                            f"{cfg.model.num_classes} (--num-classes)")
    if ds_meta.description:
        log(ds_meta.description)
    cfg = resolve_class_weights(cfg, lambda: data_lib.class_pixel_counts(
        cfg.dataset, ds_meta.train_split, cfg.data_dir, progress=progress and lead, **options))
    if cfg.class_weights is not None:
        log("class weights: " + ", ".join(f"{name} {w}" for name, w in
                                          zip(ds_meta.class_names, cfg.class_weights.split(","))))
    model = cfg.model.build()
    fresh = not ckpt_lib.saved_steps(os.path.join(workdir, ckpt_lib.CHECKPOINTS))
    if fresh:  # validated (e.g. --init read) before anything is created in the workdir
        params, convention = initial_params(cfg, model, report=log)
        # the caffe* conventions differ only in the mean subtracted: the reference starts SIFT Flow and NYUD
        # (their own means) from the VGG16 of the ImageNet mean
        if convention is not None and convention_family(convention) != convention_family(cfg.preprocessing):
            raise TrainingError(f"--init weights expect preprocessing {convention!r} but the config says "
                                f"{cfg.preprocessing!r}; pass --preprocessing {convention}")
    checkpoints = ckpt_lib.TrainCheckpointer(workdir, keep=cfg.keep_checkpoints)
    start = checkpoints.latest_step()
    if start is None:
        if not fresh:  # step directories that Orbax does not count as steps (e.g. unfinished)
            params, _ = initial_params(cfg, model, report=log)
        state = jax.device_put(create_train_state(cfg, model, params), parallel.replicated(mesh))
        data_state = None
        start = 0
    else:
        check_resume(cfg, _saved_config(checkpoints, start, workdir, log), workdir, log)
        state, saved_meta, data_state = checkpoints.restore(_abstract_state(cfg, model, mesh), warn=log)
        start = int(saved_meta["step"])
        state = state.replace(apply_fn=model.apply, tx=make_optimizer(cfg, state.params))
        if start >= cfg.steps:
            checkpoints.close()
            return _finished(cfg, workdir, start, log)
        log(f"resuming from step {start} in {workdir}")
    log(format_config(cfg, "effective config"))
    if lead:
        write_config(cfg, workdir)
        log.open(workdir)
        write_json(os.path.join(workdir, "dataset.json"), data_lib.dataset_summary(cfg.dataset, cfg.data_dir,
                                                                                   **options))
    extra = {"colours": [list(c) for c in ds_meta.colours]} if ds_meta.colours else {}
    meta = ckpt_lib.model_meta(cfg.model, ds_meta.class_names, cfg.preprocessing, config=to_dict(cfg), **extra)

    train_source = data_lib.load_split(cfg.dataset, ds_meta.train_split, cfg.data_dir, **options)
    eval_source = data_lib.load_split(cfg.dataset, ds_meta.eval_split, cfg.data_dir, **options)
    inputs, targets = batch_spec(cfg)
    labels = tuple((t.batch_key, t.field) for t in targets)
    for split, source in ((ds_meta.train_split, train_source), (ds_meta.eval_split, eval_source)):
        if len(source):  # the fields the variant needs, before anything compiles
            try:
                pipeline.read_fields(source[0], inputs, labels)
            except ValueError as e:
                raise TrainingError(f"--dataset {cfg.dataset} ({split}) does not fit {cfg.model.variant}: "
                                    f"{e}") from None
    names = head_class_names(targets, ds_meta.class_names)
    eval_sizes = None  # exact-size validation plans its batches from every image's size, read once
    step_fn = make_train_step(cfg, mesh)
    writer = SummaryWriter(workdir, enabled=lead)
    # the iterator's threads start here: from now on everything runs inside the try that closes it
    train_iter = pipeline.train_iterator(train_source, train_input, sharding=parallel.data_sharding(mesh))

    def validate(step: int) -> dict[str, float]:
        nonlocal eval_sizes
        if cfg.eval_bucket_multiple is None and eval_sizes is None:
            eval_sizes = pipeline.example_sizes(eval_source)
        batches = pipeline.eval_batches(eval_source, batch_size=cfg.eval_batch_size, convention=cfg.preprocessing,
                                        bucket_multiple=cfg.eval_bucket_multiple, sizes=eval_sizes,
                                        sharding=parallel.data_sharding(mesh), inputs=inputs, labels=labels)
        pictures = _PanelCollector(PANELS, cfg.preprocessing, ds_meta, f"{cfg.model.variant} step {step}", inputs)
        result = evaluate(model, state.params, batches, cfg.model.num_classes, mesh=mesh,
                          progress=progress and lead, total=len(eval_source), desc=f"validation (step {step})",
                          leave=False, on_batch=pictures if lead else None)
        writer.write_images(step, {f"val/panel/{i}": panel for i, panel in enumerate(pictures.panels)})
        record, scores = validation_record(result, targets, names)
        writer.write(step, record)
        best = checkpoints.save_best(step, state.params, meta, scores)
        if len(targets) == 1:
            text = _percent(scores)
        else:
            text = "; ".join(f"{t.head}: " + _percent({k: scores[f"{t.head}/{k}"] for k in
                                                       ("pixel_acc", "mean_acc", "mean_iu", "fw_iu")})
                             + f", mean IU of classes in ground truth {100 * scores[f'{t.head}/mean_iu_present']:.2f}%"
                             for t in targets)
        log(f"step {step}: validation {text}" + (" (new best)" if best else ""))
        return scores

    def save(step: int) -> None:
        checkpoints.save(step, state, meta, train_iter.get_state())

    scores: dict[str, float] = {}
    pending: list[tuple[int, dict]] = []
    window_start, window_images = time.perf_counter(), 0
    interrupted: int | None = None  # the signal that stopped the run
    bar = tqdm(total=cfg.steps, initial=start, disable=not (progress and lead), unit="step", dynamic_ncols=True)
    log.bar = bar
    try:
        if data_state is not None:
            train_iter.set_state(data_state)
        with _StopRequest() as stop:
            for step in range(start + 1, cfg.steps + 1):
                batch = next(train_iter)
                state, metrics = step_fn(state, batch)
                pending.append((step, metrics))
                window_images += cfg.batch_size
                bar.update(1)
                boundary = step % cfg.log_every == 0 or step == cfg.steps
                requested = agreed_stop(stop.signal, boundary)  # the same on every process
                save_now = step % cfg.checkpoint_every == 0 or step == cfg.steps or requested is not None
                eval_now = step % cfg.eval_every == 0 or step == cfg.steps
                if boundary or save_now or eval_now:
                    fetched = _check_finite(pending)
                    pending = []
                    elapsed = time.perf_counter() - window_start
                    rate = window_images / max(elapsed, 1e-9)
                    loss = float(np.mean([float(m["loss"]) for _, m in fetched]))
                    bar.set_postfix(loss=f"{loss:.4g}", img_s=f"{rate:.1f}")
                    heads = {f"train/{k}": float(np.mean([float(m[k]) for _, m in fetched]))
                             for k in fetched[-1][1] if k.startswith("loss/")}  # multi-head: 'train/loss/sem', ...
                    writer.write(step, {"train/loss": loss, "train/images_per_s": rate,
                                        "train/lr": float(fetched[-1][1]["lr"]),
                                        "train/grad_norm": float(fetched[-1][1]["grad_norm"]), **heads})
                    window_start, window_images = time.perf_counter(), 0
                if save_now:
                    save(step)
                if eval_now:
                    scores = validate(step)
                    window_start = time.perf_counter()
                if jax.process_count() == 1:  # one process: a signal that arrived after save_now was decided
                    requested = stop.signal
                if requested is not None:
                    if not save_now:
                        _check_finite(pending)  # never save a step whose loss was not finite
                        pending = []
                        save(step)
                    checkpoints.wait()
                    on_disk = checkpoints.latest_on_disk()
                    if on_disk != step:
                        raise TrainingError(f"received signal {requested} but step {step} is not on disk "
                                            f"(latest saved: {on_disk}); run again to resume from there")
                    log(f"received signal {requested}: saved step {step} in {workdir}; run again to resume")
                    interrupted = requested
                    break
    finally:
        log.bar = None
        bar.close()
        checkpoints.close()
        writer.close()
        if hasattr(train_iter, "close"):
            train_iter.close()
    if lead and os.path.exists(writer.path) and interrupted is None:
        plot_learning_curves(writer.path, os.path.join(workdir, "learning_curves.png"))
    return {"step": int(state.step), "scores": scores, "interrupted": interrupted is not None,
            "signal": interrupted, "workdir": workdir}
