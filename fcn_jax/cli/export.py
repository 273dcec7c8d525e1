"""``python -m fcn_jax.export MODEL --out FILE`` / ``fcn-export``: a trained model as a StableHLO or ONNX artifact
that runs without fcn-jax (:mod:`fcn_jax.deploy`). Exit status 0 on success, 2 on bad input (one line on stderr).

The old dataset form (``python -m fcn_jax.export DATASET OUT_DIR ...``, now ``python -m fcn_jax.dataset export``)
gets one line naming the new command.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Sequence

from fcn_jax.cli import ArgumentParser, UsageError, fail, parse_step, user_errors
from fcn_jax.cli.benchmark import parse_image_size
from fcn_jax.config import DTYPES
from fcn_jax.deploy import FORMATS

PROG = "python -m fcn_jax.export"
DATASET_EXPORT = "python -m fcn_jax.dataset export"


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog=PROG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Export a trained FCN (a training workdir, a checkpoint or a weights file) as one StableHLO\n"
                    "file (jax.export, weights embedded, lowered for cpu, cuda and tpu) and FILE.json (classes,\n"
                    "colours, preprocessing, signature), or as one ONNX file (--format onnx, metadata inside).\n"
                    "Reload with jax.export.deserialize(...).call(x), or onnxruntime.InferenceSession(FILE).",
        epilog="examples:\n"
               "  %(prog)s runs/fcn16s --out fcn16s.stablehlo                         # any batch, H and W\n"
               "  %(prog)s runs/fcn16s --out fcn16s-375x500.stablehlo --image-size 375x500\n"
               "  %(prog)s runs/fcn16s --out seg.stablehlo --image-size 500 --with-preprocessing --probabilities\n"
               "  %(prog)s runs/fcn16s --out fcn16s.onnx --format onnx --image-size 375x500   # onnxruntime\n"
               "exit status: 0 ok, 2 bad input (one line on stderr)")
    parser.add_argument("model", metavar="MODEL", help="training workdir, checkpoint directory or weights file")
    parser.add_argument("--out", required=True, metavar="FILE",
                        help="the artifact to write (and, for stablehlo, FILE.json)")
    parser.add_argument("--format", default="stablehlo", choices=FORMATS,
                        help="stablehlo (jax.export; default) or onnx (jax2onnx; needs fcn-jax[onnx] and "
                             "--image-size)")
    parser.add_argument("--image-size", type=parse_image_size, metavar="H[xW]",
                        help="fixed input size (default for stablehlo: symbolic height and width, at least 32; "
                             "networks with padding 'same' and ONNX exports need this flag)")
    parser.add_argument("--batch-size", type=int, metavar="N", help="fixed batch size (default: symbolic)")
    parser.add_argument("--dtype", choices=tuple(DTYPES), help="compute dtype (default: the model's)")
    parser.add_argument("--with-preprocessing", action="store_true",
                        help="the artifact takes uint8 RGB images (B, H, W, 3) and returns int32 labels (B, H, W)")
    parser.add_argument("--probabilities", action="store_true",
                        help="with --with-preprocessing: also return the softmax probabilities (B, H, W, C)")
    parser.add_argument("--step", type=parse_step, default="best",
                        help="checkpoint step of a workdir: best, latest or N")
    parser.add_argument("--overwrite", action="store_true", help="replace FILE if it exists")
    return parser


def _old_dataset_form(argv: Sequence[str]) -> bool:
    """``DATASET OUT_DIR [...]`` without --out: what ``python -m fcn_jax.export`` meant before model export."""
    return (len(argv) >= 2 and not argv[0].startswith("-") and not argv[1].startswith("-")
            and not any(a == "--out" or a.startswith("--out=") for a in argv) and not os.path.exists(argv[0]))


@user_errors(PROG)
def main(argv: Sequence[str] | None = None) -> int:
    """Exports the model; prints what it wrote."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if _old_dataset_form(argv):
        return fail(PROG, f"fcn_jax.export no longer exports datasets (the name is for model export); to export a "
                          f"dataset to a folder use: {DATASET_EXPORT} {shlex.join(argv)}")
    args = build_parser().parse_args(argv)
    if args.batch_size is not None and args.batch_size < 1:
        raise UsageError(f"--batch-size: must be at least 1, got {args.batch_size}")
    if args.probabilities and not args.with_preprocessing:
        raise UsageError("--probabilities: only with --with-preprocessing (the plain artifact returns logits)")
    if not os.path.exists(args.model):
        raise UsageError(f"{args.model}: no such file or directory")
    if os.path.isdir(args.out):
        raise UsageError(f"--out {args.out}: is a directory; expected a file name")
    outputs = [args.out] + ([args.out + ".json"] if args.format == "stablehlo" else [])
    existing = [path for path in outputs if os.path.exists(path)]
    if existing and not args.overwrite:
        raise UsageError(f"--out {args.out}: {existing[0]} already exists (pass --overwrite to replace it)")
    if args.format == "onnx" and args.image_size is None:
        raise UsageError("--image-size: ONNX export needs a fixed height and width (jax2onnx does not trace these "
                         "networks' symbolic sizes); pass --image-size HxW")
    if args.format == "onnx" and args.dtype == "bfloat16":
        raise UsageError("--dtype bfloat16: ONNX export is float32 here (onnxruntime's CPU kernels)")
    if not os.path.isdir(os.path.dirname(os.path.abspath(args.out))):
        raise UsageError(f"--out {args.out}: its directory does not exist")
    from fcn_jax import platform
    platform.setup()
    from fcn_jax.deploy import export_model
    result = export_model(args.model, args.out, format=args.format, image_size=args.image_size,
                          batch_size=args.batch_size, dtype=args.dtype, with_preprocessing=args.with_preprocessing,
                          probabilities=args.probabilities, step=args.step)
    shape = "x".join(map(str, result.input_shape))
    metadata = f" and {result.metadata_path}" if result.metadata_path else ""
    print(f"wrote {result.path} ({result.nbytes / 1e6:.1f} MB; input {shape}, outputs "
          f"{', '.join('x'.join(map(str, s)) for s in result.output_shapes)}){metadata}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
