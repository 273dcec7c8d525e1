"""``python -m fcn_jax.convert SRC --out DIR`` / ``fcn-convert``: weights -> an fcn-jax model checkpoint.

The checkpoint (Orbax, see :mod:`fcn_jax.checkpoint`) records the model config (variant, classes,
width), the class names, the preprocessing convention the weights expect and the source file, so
eval and predict need nothing else. Exit status 0 on success, 2 on bad input (one line on stderr).
"""
from __future__ import annotations

import argparse
import hashlib
import logging
import os
import shutil
import sys
from collections.abc import Sequence

from fcn_jax.cli import ArgumentParser, UsageError, user_errors
from fcn_jax.models import VARIANTS
from fcn_jax.preprocess import CONVENTIONS

PROG = "python -m fcn_jax.convert"


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog=PROG,
        description="Convert FCN or backbone weights (the reference's .caffemodel, pytorch-fcn .pth, torchvision /\n"
                    "Keras VGG16, torchvision's fcn_resnet50/101, vgg11_bn and resnet50/101, the seed's VGG11-BN\n"
                    "state dicts, or the same tensors as .npz / .safetensors) into an fcn-jax model checkpoint\n"
                    "directory that records the variant, classes, class names, preprocessing convention and source.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  %(prog)s fcn8s-heavy-pascal.caffemodel --out ckpt/fcn8s\n"
               "  %(prog)s fcn8s_from_caffe.pth --out ckpt/fcn8s\n"
               "  %(prog)s vgg16_from_caffe.pth --variant fcn32s --out ckpt/vgg16-fcn32s\n"
               "  %(prog)s vgg16-397923af.pth --variant fcn32s --out ckpt/vgg16tv-fcn32s  # torchvision input\n"
               "  %(prog)s fcn_resnet50_coco-1167a1af.pth --out ckpt/fcn-resnet50\n"
               "  %(prog)s resnet101-63fe2227.pth --out ckpt/fcn-resnet101-imagenet  # backbone, heads at init\n"
               "exit status: 0 ok, 2 bad input (one line on stderr)")
    parser.add_argument("src", metavar="SRC",
                        help="weights file (.caffemodel; .pth/.pt needs torch; .npz, .safetensors, Keras .h5) or "
                             "an fcn-jax "
                             "checkpoint directory; the format is recognised by its key names")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="output checkpoint directory (must not exist yet, unless --overwrite)")
    parser.add_argument("--variant", choices=VARIANTS,
                        help="FCN variant; default: inferred from the file (pytorch-fcn files need 'atonce' in "
                             "the file name or this flag for fcn8s-atonce; a .caffemodel records it); required "
                             "for VGG16 files")
    parser.add_argument("--num-classes", type=int, metavar="N",
                        help="number of classes; default: from the file's score_fr, 21 for VGG16 files")
    parser.add_argument("--class-names", metavar="FILE",
                        help="text file with one class name per line (index order); default: the 21 PASCAL "
                             "VOC names")
    parser.add_argument("--convention", choices=CONVENTIONS,
                        help="preprocessing the weights expect; default: decided from the format, the file's "
                             "metadata or its name (pytorch-fcn, Keras and *caffe* files: caffe; "
                             "vgg16-397923af.pth: torchvision)")
    parser.add_argument("--width", type=float, default=None, metavar="W",
                        help="channel multiplier of the network the weights are for (default: 1.0, the real "
                             "network, for weights files; recorded in checkpoints)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace DIR if it already holds an fcn-jax checkpoint")
    return parser


def _class_names(path: str | None, num_classes: int, recorded: Sequence[str] | None,
                 dataset: str | None = None) -> list[str]:
    if path is not None:
        try:
            with open(path, encoding="utf8") as f:
                names = [line.strip() for line in f if line.strip()]
        except OSError as e:
            raise UsageError(f"--class-names {path}: cannot read ({e.strerror or e})") from None
        if len(names) != num_classes:
            raise UsageError(f"--class-names {path}: {len(names)} names, expected {num_classes} (one per line)")
        return names
    if recorded is not None:
        return list(recorded)
    if dataset is not None:  # a reference model of another dataset: its classes
        from fcn_jax import data
        return list(data.dataset_meta(dataset).class_names)
    from fcn_jax.classes import VOC_CLASSES
    if num_classes != len(VOC_CLASSES):
        raise UsageError(f"--class-names: required for {num_classes} classes (the default names are the "
                         f"{len(VOC_CLASSES)} PASCAL VOC classes)")
    return list(VOC_CLASSES)


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_out(out: str, overwrite: bool) -> bool:
    """Whether ``out`` holds a checkpoint to replace; raises UsageError if it must not be written."""
    from fcn_jax import checkpoint
    if not os.path.exists(out) or (os.path.isdir(out) and not os.listdir(out)):
        return False
    if not overwrite:
        raise UsageError(f"--out {out}: already exists (pass --overwrite to replace an fcn-jax checkpoint)")
    try:
        checkpoint.resolve(out)
    except checkpoint.CheckpointError:
        raise UsageError(f"--out {out}: exists and is not an fcn-jax checkpoint; not overwriting it") from None
    return True


def convert(args: argparse.Namespace) -> str:
    """Runs the conversion; returns the summary line. Raises UsageError / WeightsError on bad input."""
    from fcn_jax import checkpoint
    from fcn_jax.loading import load

    if args.num_classes is not None and args.num_classes < 1:
        raise UsageError(f"--num-classes: must be at least 1, got {args.num_classes}")
    if args.width is not None and not 0 < args.width <= 1:
        raise UsageError(f"--width: must be in (0, 1], got {args.width:g}")
    replace = _check_out(args.out, args.overwrite)
    variables, info = load(args.src, variant=args.variant, num_classes=args.num_classes, width=args.width,
                           convention=args.convention)
    meta, config = info.meta, info.config
    from fcn_jax.models import zoo
    model = zoo.match(config.variant, config.num_classes)
    names = _class_names(args.class_names, config.num_classes, meta.get("class_names") if os.path.isdir(args.src)
                         else None, model.dataset if model is not None and model.num_classes != 21 else None)
    source = os.path.abspath(args.src)
    extra = {"source": source, "source_format": meta["format"]}
    if os.path.isfile(source):
        extra["source_sha256"] = _sha256(source)
    if "preprocessing_from" in meta:
        extra["preprocessing_from"] = meta["preprocessing_from"]
    meta = checkpoint.model_meta(config, names, meta["preprocessing"], **extra)
    if replace:  # write beside, then swap, so a failed write leaves the old checkpoint in place
        staging = f"{args.out.rstrip(os.sep)}.converting"
        shutil.rmtree(staging, ignore_errors=True)
        checkpoint.save_model(staging, variables, meta)
        shutil.rmtree(args.out)
        os.replace(staging, args.out)
    else:
        checkpoint.save_model(args.out, variables, meta)
    return (f"wrote {args.out}: {config.variant}, {config.num_classes} classes, width {config.width:g}, "
            f"preprocessing {meta.preprocessing}, from {meta.extra['source_format']} weights {args.src}")


@user_errors(PROG)
def _run(args: argparse.Namespace) -> int:
    print(convert(args))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status (0 ok, 2 bad input, reported as one line on stderr)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help, or a usage error already reported on one line
        return int(e.code or 0)
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)  # keep Orbax's notices off the one-line error channel
    try:
        return _run(args)
    finally:
        absl.setLevel(level)


if __name__ == "__main__":
    sys.exit(main())
