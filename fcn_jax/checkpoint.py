"""Checkpoints on Orbax: atomic, asynchronous, resumable, loadable on any number of devices.

Two kinds of directories, one loader (:func:`load_model`):

- A *model checkpoint* (written by ``python -m fcn_jax.convert`` and as ``WORKDIR/best`` by training):
  an Orbax ``CheckpointManager`` directory whose steps hold ``variables`` (``{'params': ...}``) and
  ``meta`` (JSON: model config, class names, preprocessing convention, provenance).
- A *training workdir*: ``WORKDIR/checkpoints`` holds the latest K steps, each with ``state`` (the whole
  TrainState), ``meta`` and ``data`` (the input iterator's position); ``WORKDIR/best`` is a model
  checkpoint of the best step by validation mean IU.

Orbax writes each step to a temporary directory and renames it when complete, so a crash never
leaves a checkpoint that looks whole.
"""
from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

import jax
import orbax.checkpoint as ocp

from fcn_jax.config import ModelConfig, from_dict

CHECKPOINTS = "checkpoints"
BEST = "best"
STEP_CHOICES = ("best", "latest")


class CheckpointError(ValueError):
    """A checkpoint directory that is missing, empty or not of the expected kind."""


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Keeps Orbax's routine notices about read-only managers and metadata (absl WARNINGs) off the console."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        logger.setLevel(level)


def _manager(directory: str, *, max_to_keep: int | None = None, best: bool = False,
             async_save: bool = False, read_only: bool = False) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep,
        best_fn=(lambda metrics: metrics["mean_iu"]) if best else None,
        best_mode="max",
        keep_checkpoints_without_metrics=not best,
        enable_async_checkpointing=async_save,
        create=not read_only,
        read_only=read_only,
    )
    return ocp.CheckpointManager(os.path.abspath(directory), options=options)


def _local_target(item_dir: str) -> Any:
    """Restore target for a saved tree: its shapes and dtypes, placed on this process's first device.

    Restoring onto an explicit target (not the saved shardings) is what lets a checkpoint written by
    any number of devices or processes load anywhere.
    """
    tree = ocp.StandardCheckpointer().metadata(item_dir).item_metadata
    sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding), tree)


def model_meta(model: ModelConfig, class_names: tuple[str, ...] | list[str], preprocessing: str,
               **extra: Any) -> dict[str, Any]:
    """The metadata stored with every checkpoint (``extra``: e.g. source, config, step, metrics)."""
    from fcn_jax.config import to_dict
    if len(class_names) != model.num_classes:
        raise ValueError(f"{len(class_names)} class names for a model of {model.num_classes} classes")
    return {"model": to_dict(model), "class_names": list(class_names), "preprocessing": preprocessing, **extra}


def model_config_from_meta(meta: dict[str, Any]) -> ModelConfig:
    """The :class:`ModelConfig` recorded in a checkpoint's metadata."""
    return from_dict(ModelConfig, meta["model"])


def save_model(directory: str, variables: Any, meta: dict[str, Any], step: int = 0,
               metrics: dict[str, float] | None = None, max_to_keep: int | None = None) -> None:
    """Writes a model checkpoint (``variables`` = ``{'params': ...}`` plus JSON ``meta``), atomically."""
    mngr = _manager(directory, max_to_keep=max_to_keep, best=metrics is not None)
    try:
        mngr.save(step, args=ocp.args.Composite(variables=ocp.args.StandardSave(dict(variables)),
                                                 meta=ocp.args.JsonSave(meta)), metrics=metrics, force=True)
        mngr.wait_until_finished()
    finally:
        mngr.close()


def saved_steps(directory: str) -> list[int]:
    """The finalised steps Orbax finds in a checkpoint ``directory`` ([] if it does not exist); creates nothing."""
    if not os.path.isdir(directory):
        return []
    with _quiet():
        mngr = _manager(directory, read_only=True)
        try:
            return list(mngr.all_steps())
        finally:
            mngr.close()


def resolve(path: str, step: str | int = "best") -> tuple[str, int, str]:
    """Finds which checkpoint ``path``/``step`` names: returns (manager directory, step, item kind).

    ``path`` is a model checkpoint or a training workdir; ``step`` is 'best', 'latest' or a step number.
    Item kind is 'variables' (model checkpoint) or 'state' (training checkpoint).
    """
    if not os.path.isdir(path):
        raise CheckpointError(f"{path}: no such checkpoint directory")
    if step not in STEP_CHOICES and not isinstance(step, int):
        raise CheckpointError(f"step must be 'best', 'latest' or an integer, got {step!r}")
    train_dir, best_dir = os.path.join(path, CHECKPOINTS), os.path.join(path, BEST)
    if os.path.isdir(train_dir) or os.path.isdir(best_dir):  # a training workdir
        candidates = [(train_dir, "state"), (best_dir, "variables")]
        if step == "best":
            candidates.reverse()
        for directory, kind in candidates:
            steps = saved_steps(directory)
            if isinstance(step, int):
                if step in steps:
                    return directory, step, kind
            elif steps:
                return directory, max(steps), kind
        raise CheckpointError(f"{path}: training workdir has no checkpoint for step {step!r}")
    steps = saved_steps(path)
    if not steps:
        raise CheckpointError(f"{path}: not an fcn-jax checkpoint (no saved steps found)")
    if isinstance(step, int):
        if step not in steps:
            raise CheckpointError(f"{path}: no step {step}; saved steps are {sorted(steps)}")
        return path, step, "variables"
    return path, max(steps), "variables"


def load_model(path: str, step: str | int = "best") -> tuple[dict[str, Any], dict[str, Any]]:
    """Loads ``({'params': ...}, meta)`` from a model checkpoint or a training workdir.

    Arrays come back on this process's first device, whatever devices or processes saved them.
    """
    with _quiet():
        directory, found, kind = resolve(path, step)
        mngr = _manager(directory, read_only=True)
        try:
            target = _local_target(os.path.join(directory, str(found), kind))
            restored = mngr.restore(found, args=ocp.args.Composite(**{
                kind: ocp.args.StandardRestore(target), "meta": ocp.args.JsonRestore()}))
        except Exception as e:  # noqa: BLE001  (truncated or missing files, bad metadata: a damaged step)
            raise CheckpointError(f"{os.path.join(directory, str(found))}: cannot be restored ({_first_line(e)}); "
                                  f"it is damaged: pick another --step") from None
        finally:
            mngr.close()
    tree, meta = restored[kind], dict(restored["meta"])
    meta.setdefault("step", found)
    params = tree["params"]
    return {"params": params}, meta


def _first_line(error: BaseException) -> str:
    """An exception's message cut to its first line and 200 characters (Orbax messages can be pages)."""
    text = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return text if len(text) <= 200 else text[:197] + "..."


class TrainCheckpointer:
    """The training run's checkpoints: latest ``keep`` steps (async) plus the best by mean IU.

    ``save(step, state, meta, data_state)`` writes ``WORKDIR/checkpoints/<step>``;
    ``save_best(step, params, meta, mean_iu)`` keeps ``WORKDIR/best`` at the best step so far;
    ``restore(abstract_state)`` restores the latest step onto the shardings of ``abstract_state``
    (a tree of ``jax.ShapeDtypeStruct`` with ``sharding``), so the device count may differ from the
    one that saved.
    """

    def __init__(self, workdir: str, keep: int = 3, async_save: bool = True):
        self.workdir = workdir
        self._latest = _manager(os.path.join(workdir, CHECKPOINTS), max_to_keep=keep, async_save=async_save)
        self._best = _manager(os.path.join(workdir, BEST), max_to_keep=1, best=True)

    def latest_step(self) -> int | None:
        """The newest complete step, or None for a fresh workdir."""
        return self._latest.latest_step()

    def latest_on_disk(self) -> int | None:
        """The newest finalised step as the directory holds it now (after :meth:`wait`): what a rerun
        would resume from, read from disk rather than from this manager's records."""
        return max(saved_steps(str(self._latest.directory)), default=None)

    def save(self, step: int, state: Any, meta: dict[str, Any], data_state: dict[str, Any]) -> None:
        """Saves the whole train state asynchronously (returns once the arrays are copied off device)."""
        self._latest.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(dict(meta, step=step)),
            data=ocp.args.JsonSave(data_state)), force=True)

    def save_best(self, step: int, params: Any, meta: dict[str, Any], metrics: dict[str, float]) -> bool:
        """Records ``params`` as ``WORKDIR/best`` if ``metrics['mean_iu']`` beats the best so far."""
        best = self.best_metrics()
        if best is not None and best["mean_iu"] >= metrics["mean_iu"]:
            return False
        self._best.save(step, args=ocp.args.Composite(
            variables=ocp.args.StandardSave({"params": params}),
            meta=ocp.args.JsonSave(dict(meta, step=step, metrics=metrics))),
            metrics={k: float(v) for k, v in metrics.items()}, force=True)
        self._best.wait_until_finished()
        return True

    def best_metrics(self) -> dict[str, float] | None:
        """The metrics of the best step so far, or None."""
        step = self._best.best_step()
        if step is None:
            return None
        meta = self._best.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        return meta.get("metrics")

    def meta(self, step: int) -> dict[str, Any]:
        """The JSON metadata saved with ``step`` (model, class names, training config), read without the
        arrays; CheckpointError naming the step's directory if it cannot be read."""
        try:
            with _quiet():
                return dict(self._latest.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"])
        except Exception as e:  # noqa: BLE001  (Orbax, JSON and file errors alike mean: unreadable)
            raise CheckpointError(f"{self._step_dir(step)}: cannot read its metadata "
                                  f"({_first_line(e)})") from None

    def _step_dir(self, step: int) -> str:
        return os.path.join(str(self._latest.directory), str(step))

    def restore(self, abstract_state: Any, step: int | None = None,
                warn: Callable[[str], None] | None = None) -> tuple[Any, dict[str, Any], dict[str, Any]]:
        """Restores (state, meta, data_state) of ``step``, by default the latest step that restores.

        Without ``step``, a damaged latest checkpoint (truncated or missing files, bad metadata) is moved
        aside to ``<step>.damaged`` (never deleted), reported through ``warn`` with the reason, and the
        next older one is tried. An explicitly requested damaged step raises CheckpointError naming it.
        """
        candidates = sorted(self._latest.all_steps(), reverse=True) if step is None else [step]
        if not candidates:
            raise CheckpointError(f"{self.workdir}: nothing to restore")
        for candidate in candidates:
            try:
                with _quiet():
                    restored = self._latest.restore(candidate, args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore(),
                        data=ocp.args.JsonRestore()))
                return restored["state"], dict(restored["meta"]), dict(restored["data"])
            except Exception as e:  # noqa: BLE001  (any failure to read a step means it is damaged)
                reason = _first_line(e)
                if step is not None:
                    raise CheckpointError(f"{self._step_dir(candidate)}: cannot be restored ({reason})") from None
                aside = self.set_aside(candidate)
                if warn is not None:
                    warn(f"warning: checkpoint {self._step_dir(candidate)} cannot be restored ({reason}); "
                         f"moved to {aside}, trying the previous one")
        raise CheckpointError(f"{self.workdir}: no checkpoint can be restored (each damaged one was moved to "
                              f"<step>.damaged); move them back or use another --workdir")

    def set_aside(self, step: int) -> str:
        """Renames checkpoint ``step`` to ``<step>.damaged`` (or ``.damaged2``, ...) so it is no longer a
        step, and returns the new path."""
        source = self._step_dir(step)
        target, k = source + ".damaged", 1
        while os.path.exists(target):
            k += 1
            target = f"{source}.damaged{k}"
        os.replace(source, target)
        self._latest.reload()
        return target

    def wait(self) -> None:
        """Blocks until pending asynchronous saves are on disk."""
        self._latest.wait_until_finished()

    def close(self) -> None:
        self.wait()
        self._latest.close()
        self._best.close()
