"""``train.py`` / ``fcn-train``: train an FCN (the offline shapes demo by default).

Configuration is layered: a config (``--preset NAME``, or ``--config FILE.py`` defining
``get_config(variant)``), then a JSON file of fields (``--config FILE.json``), then flags. Every
field of :class:`fcn_jax.config.TrainConfig` and :class:`fcn_jax.config.ModelConfig` is a flag,
generated from the dataclasses (``--lr``, ``--width``, ``--no-flip``, ...). The effective config is
printed at start, written to ``WORKDIR/config.json`` and stored with every checkpoint. Running again
with the same ``--workdir`` resumes from its latest checkpoint; Ctrl-C / SIGTERM save and stop.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import typing
from collections.abc import Callable, Sequence
from typing import Any

from fcn_jax import cli, configs
from fcn_jax.config import ModelConfig, TrainConfig, override
from fcn_jax.models import VARIANTS

# Fields that are not flags: chosen by --variant / --preset / --config instead.
NOT_FLAGS = {"model", "variant", "preset"}
FOLDER = "folder:"


def _pair(text: str) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected two numbers like 0.5,2, got {text!r}") from None
    return low, high


def _optional(kind: type) -> Callable[[str], Any]:
    """The parser of an ``int | None`` or ``float | None`` field's flag: 'none' (or 'exact' for the bucket
    sizes) gives None."""
    noun = "an integer" if kind is int else "a number"

    def parse(text: str) -> Any:
        if text.lower() in ("none", "exact"):
            return None
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {noun} or 'none', got {text!r}") from None
    return parse


def _add_field_flags(parser: argparse.ArgumentParser, cls: type, prefix: str) -> None:
    """One flag per dataclass field (``--field-name``), typed and with the field's help and choices."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in NOT_FLAGS:
            continue
        flag, dest = "--" + f.name.replace("_", "-"), prefix + f.name
        allowed = typing.get_args(hints[f.name]) or (hints[f.name],)
        typ = next(t for t in allowed if t is not type(None))
        kwargs: dict[str, Any] = {"dest": dest, "default": argparse.SUPPRESS, "help": f.metadata.get("help", "")}
        if typ in (int, float) and type(None) in allowed:
            parser.add_argument(flag, type=_optional(typ), metavar="N|none" if typ is int else "X|none", **kwargs)
            continue
        if typ is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
            continue
        if typing.get_origin(typ) is tuple:
            kwargs.update(type=_pair, metavar="LOW,HIGH")
        else:
            kwargs["type"] = typ
        if f.metadata.get("choices"):
            kwargs["choices"] = f.metadata["choices"]
        parser.add_argument(flag, **kwargs)


def build_parser(prog: str = "train.py") -> argparse.ArgumentParser:
    p = cli.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", default="fcn32s", choices=VARIANTS, help="network variant (default fcn32s)")
    p.add_argument("--preset", default="shapes", choices=configs.PRESETS,
                   help="'shapes' (offline demo, default), 'reference' (the Caffe solver) or 'modern'; the files "
                        "are fcn_jax/configs/NAME.py")
    p.add_argument("--config", metavar="FILE", help="a .py file defining get_config(variant) (replaces --preset), or "
                   "a .json object of fields applied over the preset (flags win)")
    p.add_argument("--workdir", help="run directory (default runs/VARIANT); an existing one is resumed")
    _add_field_flags(p.add_argument_group("training (TrainConfig fields)"), TrainConfig, "")
    _add_field_flags(p.add_argument_group("network (ModelConfig fields)"), ModelConfig, "model.")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    cli.add_verbose_flag(p)
    dist = p.add_argument_group("multi-host (auto-detected on TPU pods / SLURM when not given)")
    dist.add_argument("--coordinator-address", help="host:port of process 0")
    dist.add_argument("--num-processes", type=int, help="number of processes")
    dist.add_argument("--process-id", type=int, help="this process's index")
    dist.add_argument("--distributed-timeout", type=int, default=300, metavar="SECONDS",
                      help="how long each process waits for all the others to join (default 300)")
    return p


def build_config(args: argparse.Namespace) -> TrainConfig:
    """The config, then ``--config`` JSON fields, then flags; errors name the field."""
    python_file = args.config if args.config and not args.config.endswith(".json") else None
    try:
        cfg = configs.get_config(python_file or args.preset, args.variant)
    except ValueError as e:
        raise cli.UsageError(f"--config {e}" if python_file else str(e)) from None  # e names the file
    fields: dict[str, Any] = {}
    if args.config and python_file is None:
        fields.update(cli.read_json_file(args.config, "--config"))
    fields_given = {f.name for f in dataclasses.fields(TrainConfig)}  # flags not given are absent (SUPPRESS)
    flags = {k: v for k, v in vars(args).items() if k.startswith("model.") or k in fields_given}
    fields.update(flags)
    fields["model.variant"] = args.variant
    dataset = fields.get("dataset")
    if isinstance(dataset, str) and dataset.startswith(FOLDER):  # recorded absolute: eval runs from anywhere
        from fcn_jax.data.folder import folder_root
        try:
            fields["dataset"] = dataset = FOLDER + folder_root(dataset)
        except ValueError as e:
            raise cli.UsageError(f"--dataset {dataset}: {e}") from None
    classes_from_data = dataset is not None and "model.num_classes" not in fields and "model" not in fields
    # the dataset defines the class count: class weights are checked against it, not against the preset's
    later = {"class_weights": fields.pop("class_weights")} if classes_from_data and "class_weights" in fields else {}
    try:
        cfg = override(cfg, fields)
    except (TypeError, ValueError) as e:
        raise cli.UsageError(f"invalid configuration: {e}") from None
    if classes_from_data:
        cfg = _classes_of_dataset(cfg, progress=not getattr(args, "no_progress", False), later=later)
    return cfg


def _classes_of_dataset(cfg: TrainConfig, progress: bool = True, later: dict[str, Any] | None = None) -> TrainConfig:
    """``cfg`` with the model's class count taken from its dataset (``--dataset`` given, ``--num-classes``
    not): a folder of masks defines its own classes. ``later``: fields applied after (class weights, which
    are one per class of the dataset)."""
    from fcn_jax import data
    from fcn_jax.train_lib import dataset_options
    try:
        meta = data.dataset_meta(cfg.dataset, cfg.data_dir, progress=progress, **dataset_options(cfg))
    except ValueError as e:
        raise cli.UsageError(f"--dataset {cfg.dataset}: {e}") from None
    try:
        return override(cfg, {"model.num_classes": meta.num_classes, **(later or {})})
    except ValueError as e:
        raise cli.UsageError(f"invalid configuration: {e}") from None


def check_workdir(workdir: str) -> None:
    """UsageError unless ``workdir`` is (or can become) a writable directory; creates nothing."""
    path = os.path.abspath(workdir)
    if os.path.exists(path) and not os.path.isdir(path):
        raise cli.UsageError(f"--workdir {workdir}: exists and is not a directory")
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise cli.UsageError(f"--workdir {workdir}: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise cli.UsageError(f"--workdir {workdir}: {existing} is not writable")


def _kept(workdir: str) -> str:
    """What survives a failed write in ``workdir``: the checkpoints on disk, read back."""
    from fcn_jax import checkpoint
    try:
        steps = checkpoint.saved_steps(os.path.join(workdir, checkpoint.CHECKPOINTS))
    except Exception:  # noqa: BLE001  (reading them back failed too: claim nothing)
        return "the checkpoints could not be read back"
    if not steps:
        return "no checkpoint was saved yet"
    return f"the checkpoints saved before it are intact, the latest step {max(steps)}; run again to resume"


@cli.user_errors("train.py", interrupted="checkpoints already on disk are kept; run again to resume")
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from fcn_jax import platform
    if not args.verbose:
        platform.quiet_third_party_logs()  # before build_config, which may read the dataset
    if args.no_progress:
        from fcn_jax import data
        data.disable_progress_bars()
    cfg = build_config(args)
    from fcn_jax.train_lib import TrainingError, train_and_evaluate

    try:
        platform.setup(args.coordinator_address, args.num_processes, args.process_id,
                       distributed_timeout=args.distributed_timeout, verbose=args.verbose)
    except ConnectionError as e:
        return cli.fail("train.py", str(e), code=1)
    workdir = args.workdir or f"runs/{cfg.model.variant}"
    check_workdir(workdir)
    try:
        summary = train_and_evaluate(cfg, workdir, progress=not args.no_progress)
    except TrainingError as e:
        return cli.fail("train.py", str(e), code=1)
    except OSError as e:  # a full disk, a read-only or vanished directory: the environment, not a bug
        return cli.fail("train.py", f"{e.filename or workdir}: {e.strerror or e} ({_kept(workdir)})", code=1)
    if summary["interrupted"]:  # saved and said so; the exit code tells the shell it was a signal
        return cli.interrupted_code(summary["signal"])
    if not summary.get("finished_before"):  # a finished run said so, with its scores
        mean_iu = summary["scores"].get("mean_iu", float("nan"))
        print(f"done: step {summary['step']}, validation mean IU {100 * mean_iu:.2f}%; best model in {workdir}/best")
    return 0


if __name__ == "__main__":
    sys.exit(main())
