"""Train an FCN: ``python train.py --variant=fcn16s`` (the offline shapes demo by default).

Configuration is layered: a preset (``--preset``), then a JSON file of config fields (``--config``),
then flags. The effective config is printed at start and stored with every checkpoint. Running again
with the same ``--workdir`` resumes from its latest checkpoint; Ctrl-C / SIGTERM save and stop.
"""
from __future__ import annotations

import argparse
import sys

from fcn_jax import cli
from fcn_jax.config import PRESETS, TrainConfig, from_dict, preset, to_dict
from fcn_jax.models import VARIANTS

# flag -> (TrainConfig field or 'model.FIELD', type, help)
FLAGS = {
    "--dataset": ("dataset", str, "shapes | voc_segmentation/sbd_fcn | voc_segmentation/voc2012 | voc_segmentation/voc2012_aug"),
    "--data-dir": ("data_dir", str, "tensorflow-datasets data directory (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)"),
    "--init": ("init", str, "start from 'vgg16:PATH' (ImageNet VGG16: .pth / .h5 / .npz) or 'ckpt:DIR' (an earlier stage)"),
    "--steps": ("steps", int, "number of optimiser steps in total (a resumed run continues to this)"),
    "--batch-size": ("batch_size", int, "global batch size (split over all devices)"),
    "--grad-accum": ("grad_accum", int, "split each batch into this many sequential micro-batches"),
    "--mode": ("mode", str, "'reference' (whole images, no augmentation) or 'modern' (scale/crop/flip)"),
    "--crop-size": ("crop_size", int, "modern mode: square crop size in pixels"),
    "--preprocessing": ("preprocessing", str, "'caffe' or 'torchvision' (must match --init weights)"),
    "--loss": ("loss", str, "'sum' over labelled pixels (reference) or 'mean'"),
    "--optimizer": ("optimizer", str, "'sgd' (momentum) or 'adamw'"),
    "--lr": ("lr", float, "base learning rate"),
    "--schedule": ("schedule", str, "'fixed' or 'poly' (power 0.9)"),
    "--warmup-steps": ("warmup_steps", int, "linear learning-rate warm-up steps"),
    "--momentum": ("momentum", float, "SGD momentum (Adam beta1)"),
    "--weight-decay": ("weight_decay", float, "weight decay on weights (never on biases)"),
    "--seed": ("seed", int, "seed for initialisation, shuffling, augmentation and dropout"),
    "--log-every": ("log_every", int, "steps between logged training metrics"),
    "--eval-every": ("eval_every", int, "steps between validations"),
    "--eval-batch-size": ("eval_batch_size", int, "validation batch size"),
    "--checkpoint-every": ("checkpoint_every", int, "steps between checkpoints"),
    "--keep-checkpoints": ("keep_checkpoints", int, "number of latest checkpoints kept"),
    "--num-classes": ("model.num_classes", int, "output classes (must match the dataset)"),
    "--width": ("model.width", float, "channel width multiplier (1.0 = the real network)"),
    "--dtype": ("model.dtype", str, "compute dtype: float32 or bfloat16 (parameters stay float32)"),
    "--padding": ("model.padding", str, "'reference' (pad 100, Caffe crops) or 'same' (faster, not reference-exact)"),
    "--freeze-upsamplers": ("model.freeze_upsamplers", str, "'final' (reference), 'all' or 'none'"),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = cli.ArgumentParser(prog="train.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", default="fcn32s", choices=VARIANTS, help="network variant (default fcn32s)")
    p.add_argument("--preset", default="shapes", choices=PRESETS,
                   help="'shapes' (offline demo, default), 'reference' (the Caffe solver) or 'modern'")
    p.add_argument("--config", help="JSON file of TrainConfig fields applied over the preset (flags win)")
    p.add_argument("--workdir", help="run directory (default runs/VARIANT); an existing one is resumed")
    for flag, (_, typ, text) in FLAGS.items():
        p.add_argument(flag, type=typ, default=None, help=text)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    dist = p.add_argument_group("multi-host (auto-detected on TPU pods / SLURM when not given)")
    dist.add_argument("--coordinator-address", help="host:port of process 0")
    dist.add_argument("--num-processes", type=int, help="number of processes")
    dist.add_argument("--process-id", type=int, help="this process's index")
    return p.parse_args(argv)


def build_config(args: argparse.Namespace) -> TrainConfig:
    """Preset, then ``--config`` file, then flags."""
    cfg = preset(args.preset, args.variant)
    layered = to_dict(cfg)
    if args.config:
        file_fields = cli.read_json_file(args.config, "--config")
        layered["model"].update(file_fields.pop("model", {}))
        layered.update(file_fields)
    for flag, (field, _, _) in FLAGS.items():
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is None:
            continue
        if field.startswith("model."):
            layered["model"][field[6:]] = value
        else:
            layered[field] = value
    layered["model"]["variant"] = args.variant
    try:
        return from_dict(TrainConfig, layered)
    except (TypeError, ValueError) as e:
        raise cli.UsageError(f"invalid configuration: {e}") from None


@cli.user_errors("train.py")
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = build_config(args)
    from fcn_jax import parallel
    from fcn_jax.benchmark import apply_cpu_xla_flags
    from fcn_jax.train_lib import TrainingError, train_and_evaluate

    apply_cpu_xla_flags()  # faster CPU convolution gradients on jaxlib 0.10 (see README, Performance)
    parallel.initialize_distributed(args.coordinator_address, args.num_processes, args.process_id)
    workdir = args.workdir or f"runs/{cfg.model.variant}"
    try:
        summary = train_and_evaluate(cfg, workdir, progress=not args.no_progress)
    except TrainingError as e:
        return cli.fail("train.py", str(e), code=1)
    if not summary["interrupted"]:
        scores = summary["scores"]
        print(f"done: step {summary['step']}, validation mean IU {scores.get('mean_iu', float('nan')):.4f}; "
              f"best model in {workdir}/best")
    return 0


if __name__ == "__main__":
    sys.exit(main())
