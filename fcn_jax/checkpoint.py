"""Checkpoints on Orbax: atomic, asynchronous, resumable, loadable on any number of devices.

Two kinds of directories, one loader (:func:`load_model`):

- A *model checkpoint* (written by ``python -m fcn_jax.convert`` and as ``WORKDIR/best`` by training):
  an Orbax ``CheckpointManager`` directory whose steps hold ``variables`` (every collection: ``params``
  and e.g. ``batch_stats``) and ``meta`` (:class:`CheckpointMeta` as JSON: model config, class names,
  preprocessing convention, provenance).
- A *training workdir*: ``WORKDIR/checkpoints`` holds the latest K steps, each with ``state`` (the whole
  TrainState, the model's non-parameter collections in ``model_state``), ``meta`` and ``data`` (the input
  iterator's position); ``WORKDIR/best`` is a model checkpoint of the best step by validation mean IU.

Checkpoints written before the meta carried a version (format 0: no ``version``, a TrainState without
``model_state``) load and resume as they are (``tests/fixtures/checkpoint_v0``).

Orbax writes each step to a temporary directory and renames it when complete, so a crash never
leaves a checkpoint that looks whole.

Faults are quiet and named: a step that cannot be read is one CheckpointError with a short reason (or, when
resuming, one warning as it is set aside); a saved state that reads but does not fit the run is
IncompatibleCheckpoint, never set aside; a write that finds the disk full is one ``OSError`` naming the step.
Nothing of Orbax's own failure output (tracebacks of its threads, TensorStore callbacks into closed event
loops, log records) reaches the console (:mod:`fcn_jax.orbax_quiet`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import glob
import os
import re
import shutil
import weakref
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import orbax.checkpoint as ocp

from fcn_jax.config import ModelConfig, from_dict, to_dict
from fcn_jax.orbax_quiet import QUIET as _QUIET  # Orbax's failure output kept off the console
from fcn_jax.orbax_quiet import quiet as _quiet
from fcn_jax.variables import as_variables, join

CHECKPOINTS = "checkpoints"
BEST = "best"
STEP_CHOICES = ("best", "latest")


class CheckpointError(ValueError):
    """A checkpoint directory that is missing, empty or not of the expected kind."""


class IncompatibleCheckpoint(CheckpointError):
    """A checkpoint that reads but is not one this code can use (a newer meta version, a model state the
    network does not have): refused as it is, never set aside as damaged."""


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


# 0: before the version was recorded (same fields, TrainState without model_state); 1: the model contract
# (collections, model_state); 2: ModelConfig.frozen_bn (older readers must refuse, not mistake it for damage).
META_VERSION = 2


@dataclasses.dataclass(frozen=True)
class CheckpointMeta:
    """The record stored beside every checkpoint's arrays (JSON), typed and versioned.

    model: the network; class_names: one per class of the main output; preprocessing: the input convention;
    step: the training step (None for converted weights); config: the training run's config (``{}`` if
    none); metrics: the validation scores of a best checkpoint; colours: one RGB triple per class or None;
    collections: the variable collections saved ('params', and e.g. 'batch_stats'); extra: anything else
    recorded (source, source_format, preprocessing_from, ...); version: :data:`META_VERSION`.
    """

    model: ModelConfig
    class_names: tuple[str, ...]
    preprocessing: str
    step: int | None = None
    config: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    metrics: Mapping[str, float] | None = None
    colours: tuple[tuple[int, int, int], ...] | None = None
    collections: tuple[str, ...] = ("params",)
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    version: int = META_VERSION

    _FIELDS = ("model", "class_names", "preprocessing", "step", "config", "metrics", "colours", "collections",
               "version")

    def __post_init__(self) -> None:
        if len(self.class_names) != self.model.num_classes:
            raise ValueError(f"{len(self.class_names)} class names for a model of {self.model.num_classes} classes")

    def to_json(self) -> dict[str, Any]:
        """The JSON object written to disk (extra's keys at the top level, as format 0 had them)."""
        record = {**dict(self.extra), "version": self.version, "model": to_dict(self.model),
                  "class_names": list(self.class_names), "preprocessing": self.preprocessing,
                  "collections": list(self.collections)}
        if self.step is not None:
            record["step"] = int(self.step)
        if self.config:
            record["config"] = dict(self.config)
        if self.metrics is not None:
            record["metrics"] = {k: float(v) for k, v in self.metrics.items()}
        if self.colours is not None:
            record["colours"] = [list(c) for c in self.colours]
        return record

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> CheckpointMeta:
        """Reads formats 0 to :data:`META_VERSION`; IncompatibleCheckpoint for a newer one or a model with
        fields this fcn-jax does not know (written by a newer one); ValueError (or KeyError / TypeError) for a
        damaged record."""
        version = check_version(record)
        colours = record.get("colours")
        step = record.get("step")
        model = record["model"]
        unknown = sorted(set(model) - {f.name for f in dataclasses.fields(ModelConfig)}) if isinstance(model, dict) else []
        if unknown:
            raise IncompatibleCheckpoint(f"checkpoint model has fields this fcn-jax does not know ({', '.join(unknown)}); "
                                         f"it was written by a newer fcn-jax: use that one")
        return cls(model=from_dict(ModelConfig, model), class_names=tuple(record["class_names"]),
                   preprocessing=record["preprocessing"], step=None if step is None else int(step),
                   config=dict(record.get("config") or {}), metrics=record.get("metrics"),
                   colours=None if colours is None else tuple(tuple(int(v) for v in c) for c in colours),
                   collections=tuple(record.get("collections", ("params",))),
                   extra={k: v for k, v in record.items() if k not in cls._FIELDS}, version=version)

    def replace(self, **changes: Any) -> CheckpointMeta:
        """A copy with ``changes`` (dataclass fields) applied."""
        return dataclasses.replace(self, **changes)


def check_version(record: Mapping[str, Any]) -> int:
    """The meta version of a checkpoint's JSON record (0 when it records none); IncompatibleCheckpoint for
    one newer than :data:`META_VERSION`."""
    version = int(record.get("version", 0))
    if version > META_VERSION:
        raise IncompatibleCheckpoint(f"checkpoint meta version {version} is newer than this fcn-jax reads "
                                     f"({META_VERSION}); use a newer fcn-jax")
    return version


def model_meta(model: ModelConfig, class_names: tuple[str, ...] | list[str], preprocessing: str, *,
               collections: tuple[str, ...] = ("params",), config: Mapping[str, Any] | None = None,
               colours: Any = None, step: int | None = None, metrics: Mapping[str, float] | None = None,
               **extra: Any) -> CheckpointMeta:
    """The :class:`CheckpointMeta` stored with every checkpoint (``extra``: e.g. source, source_format;
    a typed field's name there is a ValueError)."""
    reserved = sorted(set(extra) & set(CheckpointMeta._FIELDS))
    if reserved:
        raise ValueError(f"model_meta: {', '.join(reserved)} are CheckpointMeta fields, not extra facts")
    return CheckpointMeta(model=model, class_names=tuple(class_names), preprocessing=preprocessing,
                          step=step, metrics=metrics, config=dict(config or {}), collections=tuple(collections),
                          colours=None if colours is None else tuple(tuple(int(v) for v in c) for c in colours),
                          extra=extra)


def model_config_from_meta(meta: Mapping[str, Any]) -> ModelConfig:
    """The :class:`ModelConfig` recorded in a checkpoint's (or a weights file's) metadata."""
    return from_dict(ModelConfig, meta["model"])


def _json(meta: CheckpointMeta | Mapping[str, Any]) -> dict[str, Any]:
    return meta.to_json() if isinstance(meta, CheckpointMeta) else dict(meta)


def save_model(directory: str, variables: Any, meta: CheckpointMeta | Mapping[str, Any], step: int = 0,
               metrics: dict[str, float] | None = None, max_to_keep: int | None = None) -> None:
    """Writes a model checkpoint (``variables``: every collection, plus ``meta`` as JSON), atomically; a write
    that finds no space is one ``OSError`` naming the step's directory (see :func:`full_disk_errno`)."""
    variables = as_variables(variables)
    record = dict(_json(meta), collections=sorted(variables))
    with _quiet(), _writing(os.path.join(os.path.abspath(directory), str(step))):
        mngr = _manager(directory, max_to_keep=max_to_keep, best=metrics is not None)
        try:
            mngr.save(step, args=ocp.args.Composite(variables=ocp.args.StandardSave(dict(variables)),
                                                     meta=ocp.args.JsonSave(record)), metrics=metrics, force=True)
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

    ``path`` is a model checkpoint or a training workdir; ``step`` is 'best', 'latest' or a step number
    ('best' of a workdir is its ``best/`` only: CheckpointError before the first validation wrote one).
    Item kind is 'variables' (model checkpoint) or 'state' (training checkpoint).
    """
    if not os.path.isdir(path):
        raise CheckpointError(f"{path}: no such checkpoint directory")
    if step not in STEP_CHOICES and not isinstance(step, int):
        raise CheckpointError(f"step must be 'best', 'latest' or an integer, got {step!r}")
    train_dir, best_dir = os.path.join(path, CHECKPOINTS), os.path.join(path, BEST)
    if os.path.isdir(train_dir) or os.path.isdir(best_dir):  # a training workdir
        candidates = [(train_dir, "state"), (best_dir, "variables")]
        if step == "best":  # only best/: the latest step is no stand-in for the best
            best = saved_steps(best_dir)
            if not best:
                raise CheckpointError(f"{path}: no best model yet (training writes {BEST}/ at its first "
                                      f"validation); use --step latest or a step number")
            return best_dir, max(best), "variables"
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
    """Loads ``(variables, meta)`` from a model checkpoint or a training workdir: every collection saved
    (``params``, and e.g. ``batch_stats``; a training step's ``model_state`` joined back in) and the JSON
    record (:meth:`CheckpointMeta.from_json` reads it), with ``step`` filled in.

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
            raise CheckpointError(f"{os.path.join(directory, str(found))}: cannot be restored ({_reason(e)}); "
                                  f"it is damaged: pick another --step") from None
        finally:
            mngr.close()
    tree, meta = dict(restored[kind]), dict(restored["meta"])
    check_version(meta)
    meta.setdefault("step", found)
    if kind == "state":  # a TrainState: its parameters and its model state (absent in format 0)
        return join(tree["params"], tree.get("model_state") or {}), meta
    return tree, meta


def _state_target(abstract_state: Any, item_dir: str) -> tuple[Any, Callable[[Any], Any]]:
    """(restore target, restored -> TrainState) for the saved TrainState in ``item_dir``: the abstract state
    itself, or for format 0 (saved without ``model_state``) its other fields, the model state then empty;
    IncompatibleCheckpoint when the saved arrays are not the target's (:func:`_check_fits`)."""
    saved = ocp.StandardCheckpointer().metadata(item_dir).item_metadata
    if "model_state" in saved or not hasattr(abstract_state, "model_state"):
        _check_fits(abstract_state, saved)
        return abstract_state, lambda state: state
    if jax.tree.leaves(abstract_state.model_state):
        raise IncompatibleCheckpoint(f"saved without model state, but the model has "
                                     f"{', '.join(abstract_state.model_state)}")
    fields = {"step": abstract_state.step, "params": abstract_state.params, "opt_state": abstract_state.opt_state}
    _check_fits(fields, saved)
    return fields, lambda restored: abstract_state.replace(model_state={}, **restored)


def _chain(error: BaseException) -> list[BaseException]:
    """``error`` and the exceptions it was raised from (or while handling), outermost first."""
    chain: list[BaseException] = []
    while error is not None and all(error is not e for e in chain):
        chain.append(error)
        error = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
    return chain


_TENSORSTORE_DETAILS = re.compile(r"\s*See full TensorStore details:.*", re.DOTALL)
_TENSORSTORE_LOCATION = re.compile(r' in \w+ database at local file "[^"]*"')
_TENSORSTORE_BRACKETS = re.compile(r"\s*\[(?:tensorstore_spec|source locations)=.*?\](?=\s|$)", re.DOTALL)


def _reason(error: BaseException) -> str:
    """A short reason for a failed Orbax operation: the innermost message of ``error``'s chain (Orbax wraps
    TensorStore's error in one that carries the store's whole spec), its first line without TensorStore's
    spec and file location, at most 200 characters."""
    texts = [str(e).strip() for e in _chain(error)]
    text = next((t for t in reversed(texts) if t), type(error).__name__)
    text = _TENSORSTORE_BRACKETS.sub("", _TENSORSTORE_DETAILS.sub("", text))
    text = _TENSORSTORE_LOCATION.sub("", text).strip().splitlines()[0]
    return text if len(text) <= 200 else text[:197] + "..."


_FULL = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
_OS_ERROR_CODE = re.compile(r"os_error_code='?(\d+)")


def full_disk_errno(error: BaseException) -> int | None:
    """ENOSPC, EFBIG or EDQUOT when ``error`` (or one it was raised from) says a write found the filesystem
    full, the file size limit or the quota reached, else None. TensorStore reports these as ValueErrors
    ('RESOURCE_EXHAUSTED: Error writing ...: No space left on device [os_error_code=28]')."""
    for e in _chain(error):
        if isinstance(e, OSError) and e.errno in _FULL:
            return e.errno
        text = str(e)
        code = _OS_ERROR_CODE.search(text)
        if code and int(code.group(1)) in _FULL:
            return int(code.group(1))
        for number in _FULL:
            if os.strerror(number) in text:
                return number
        if "RESOURCE_EXHAUSTED" in text and "writing" in text.lower():
            return errno.ENOSPC
    return None


@contextlib.contextmanager
def _writing(step_dir: str) -> Iterator[None]:
    """Turns a failure to write the checkpoint ``step_dir`` that means no space (see :func:`full_disk_errno`)
    into one ``OSError`` naming it, once its partial files (Orbax's ``<step>.orbax-checkpoint-tmp*``, never a
    step) are removed; other errors pass unchanged."""
    try:
        yield
    except Exception as e:
        code = full_disk_errno(e)
        if code is None:
            raise
        if jax.process_index() == 0:
            for partial in glob.glob(glob.escape(step_dir) + ".orbax-checkpoint-tmp*"):
                shutil.rmtree(partial, ignore_errors=True)
        raise OSError(code, os.strerror(code), step_dir) from None


def _leaves(tree: Any) -> dict[str, Any]:
    """The leaves of a tree by path ('opt_state/0/mu/backbone/conv1_1/kernel'), whatever its node types (a
    TrainState, NamedTuples, or the nested dicts and lists of Orbax's metadata)."""
    def name(key: Any) -> str:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                return str(getattr(key, attr))
        return str(key)
    return {"/".join(name(k) for k in path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _check_fits(target: Any, saved: Any) -> None:
    """IncompatibleCheckpoint (never damage) when the saved tree's arrays are not the restore target's: other
    paths (a different optimiser, network or model state) or other shapes (another width or class count)."""
    want, have = _leaves(target), _leaves(saved)
    misfits = [f"{p} missing" for p in want if p not in have]
    misfits += [f"{p} not in this run's state" for p in have if p not in want]
    misfits += [f"{p} has shape {tuple(have[p].shape)}, this run's {tuple(want[p].shape)}" for p in want
                if p in have and hasattr(have[p], "shape") and hasattr(want[p], "shape")
                and tuple(have[p].shape) != tuple(want[p].shape)]
    if misfits:
        more = f" (and {len(misfits) - 2} more)" if len(misfits) > 2 else ""
        raise IncompatibleCheckpoint(f"the saved train state does not fit this run's network and optimiser: "
                                     f"{'; '.join(misfits[:2])}{more}")


class TrainCheckpointer:
    """The training run's checkpoints: latest ``keep`` steps (async) plus the best by mean IU.

    ``save(step, state, meta, data_state)`` writes ``WORKDIR/checkpoints/<step>``;
    ``save_best(step, variables, meta, metrics)`` keeps ``WORKDIR/best`` at the best step so far;
    ``restore(abstract_state)`` restores the latest step onto the shardings of ``abstract_state``
    (a tree of ``jax.ShapeDtypeStruct`` with ``sharding``), so the device count may differ from the
    one that saved.
    """

    def __init__(self, workdir: str, keep: int = 3, async_save: bool = True, read_only: bool = False):
        self.workdir = workdir
        self._pending: int | None = None  # the step of the asynchronous save not yet known to be on disk
        self._failed = False  # a failed write was raised (a full disk): closing adds no second error
        self._closed = False
        _QUIET.__enter__()  # for the checkpointer's whole life: its asynchronous saves run in Orbax's threads
        # left by close(), or when the checkpointer is collected unclosed (a caller that raised before closing)
        self._leave_quiet = weakref.finalize(self, _QUIET.__exit__, None, None, None)
        try:
            self._latest = _manager(os.path.join(workdir, CHECKPOINTS), max_to_keep=keep, async_save=async_save,
                                    read_only=read_only)
            self._best = _manager(os.path.join(workdir, BEST), max_to_keep=1, best=True, read_only=read_only)
        except BaseException:
            self._leave_quiet()
            raise

    def __enter__(self) -> TrainCheckpointer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @contextlib.contextmanager
    def _writing(self, directory: str, step: int) -> Iterator[None]:
        """:func:`_writing` for ``step`` of the manager in ``directory``, recording that a failure was raised."""
        try:
            with _writing(os.path.join(directory, str(step))):
                yield
        except OSError:
            self._failed = True
            raise

    def latest_step(self) -> int | None:
        """The newest complete step, or None for a fresh workdir."""
        return self._latest.latest_step()

    def latest_on_disk(self) -> int | None:
        """The newest finalised step as the directory holds it now (after :meth:`wait`): what a rerun
        would resume from, read from disk rather than from this manager's records."""
        return max(saved_steps(str(self._latest.directory)), default=None)

    def save(self, step: int, state: Any, meta: CheckpointMeta | Mapping[str, Any], data_state: dict[str, Any]) -> None:
        """Saves the whole train state asynchronously (returns once the arrays are copied off device).

        A write that finds no space, here or in the background (then raised by the next save, :meth:`wait`
        or :meth:`close`), is one ``OSError`` (ENOSPC, EFBIG or EDQUOT) naming the step's directory; the
        steps saved before it are intact and its partial files are removed."""
        self.wait()  # Orbax waits for the previous save anyway: a failure there names that step
        with self._writing(str(self._latest.directory), step):
            self._latest.save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(dict(_json(meta), step=step)),
                data=ocp.args.JsonSave(data_state)), force=True)
        self._pending = step

    def save_best(self, step: int, variables: Any, meta: CheckpointMeta | Mapping[str, Any],
                  metrics: dict[str, float]) -> bool:
        """Records ``variables`` (every collection) as ``WORKDIR/best`` if ``metrics['mean_iu']`` beats the
        best so far."""
        best = self.best_metrics()
        if best is not None and best["mean_iu"] >= metrics["mean_iu"]:
            return False
        variables = as_variables(variables)
        record = dict(_json(meta), step=step, metrics={k: float(v) for k, v in metrics.items()},
                      collections=sorted(variables))
        with self._writing(str(self._best.directory), step):
            self._best.save(step, args=ocp.args.Composite(
                variables=ocp.args.StandardSave(variables), meta=ocp.args.JsonSave(record)),
                metrics={k: float(v) for k, v in metrics.items()}, force=True)
            self._best.wait_until_finished()
        return True

    def best_metrics(self) -> dict[str, float] | None:
        """The metrics of the best step so far, or None."""
        step = self._best.best_step()
        if step is None:
            return None
        try:
            meta = self._best.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        except Exception as e:  # noqa: BLE001  (Orbax, JSON and file errors alike mean: unreadable)
            raise CheckpointError(f"{os.path.join(str(self._best.directory), str(step))}: cannot read its "
                                  f"metadata ({_reason(e)}); move it aside to keep training") from None
        return meta.get("metrics")

    def meta(self, step: int) -> CheckpointMeta:
        """The :class:`CheckpointMeta` saved with ``step`` (model, class names, training config), read without
        the arrays; CheckpointError naming the step's directory if it cannot be read."""
        try:
            with _quiet():
                record = self._latest.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
            check_version(record)
            return CheckpointMeta.from_json(record)
        except IncompatibleCheckpoint as e:
            raise IncompatibleCheckpoint(f"{self._step_dir(step)}: {e}") from None
        except Exception as e:  # noqa: BLE001  (Orbax, JSON and file errors alike mean: unreadable)
            raise CheckpointError(f"{self._step_dir(step)}: cannot read its metadata "
                                  f"({_reason(e)})") from None

    def _step_dir(self, step: int) -> str:
        return os.path.join(str(self._latest.directory), str(step))

    def restore(self, abstract_state: Any, step: int | None = None,
                warn: Callable[[str], None] | None = None) -> tuple[Any, CheckpointMeta, dict[str, Any]]:
        """Restores (state, meta, data_state) of ``step``, by default the latest step that restores.

        ``abstract_state``: a TrainState of ``jax.ShapeDtypeStruct`` with ``sharding`` (its ``model_state``
        the model's non-parameter collections); a format-0 step (no ``model_state`` saved) restores into
        it when the model has no such collections.

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
                    target, rebuild = _state_target(abstract_state, os.path.join(self._step_dir(candidate), "state"))
                    restored = self._latest.restore(candidate, args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore(),
                        data=ocp.args.JsonRestore()))
                    check_version(restored["meta"])
                    meta = CheckpointMeta.from_json(restored["meta"])
                return rebuild(restored["state"]), meta, dict(restored["data"])
            except IncompatibleCheckpoint as e:  # readable, but not for this code: never set aside
                raise IncompatibleCheckpoint(f"{self._step_dir(candidate)}: {e}") from None
            except Exception as e:  # noqa: BLE001  (any failure to read a step means it is damaged)
                reason = _reason(e)
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
        """Blocks until pending asynchronous saves are on disk (OSError for one that found no space, see
        :meth:`save`)."""
        if self._pending is None:
            self._latest.wait_until_finished()
            return
        with self._writing(str(self._latest.directory), self._pending):
            self._latest.wait_until_finished()
        self._pending = None

    def close(self) -> None:
        """Waits for the pending save and closes the managers (once; later calls do nothing). After a failed
        write was raised (a full disk), closing is best effort and raises nothing more."""
        if self._closed:
            return
        self._closed, reported, error = True, self._failed, None
        try:
            for step in (self.wait, self._latest.close, self._best.close):
                try:
                    step()
                except Exception as e:  # noqa: BLE001  (each step is tried; the first new error is raised)
                    error = error or e
        finally:
            self._leave_quiet()
        if error is not None and not (reported and (isinstance(error, OSError) or full_disk_errno(error))):
            raise error
