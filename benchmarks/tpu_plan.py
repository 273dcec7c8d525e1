"""The README's TPU table: fcn8s (and more variants) compiled for TPU slices on this host, no TPU needed.

For each slice: train at ``--train-size`` bf16 with the largest per-chip batch that fits
(:func:`fcn_jax.topology.max_batch`, starting from ``--batch-size``, whose compile also gives the memory
and roofline columns) and inference at ``--infer-size``, batch 1 per chip. Every figure is XLA's TPU
compiler's analysis (memory, FLOPs, bytes accessed, and the roofline bound derived from them), not a
measurement. Prints one markdown row per slice and variant as it finishes; ``--json`` keeps every record.

    pip install "jax[tpu]==$(python -c 'import jax; print(jax.__version__)')"
    python benchmarks/tpu_plan.py                                   # v4-8 v5e-8 v5p-8 v6e-8, fcn8s
    python benchmarks/tpu_plan.py --slices v5e-8 --variants fcn8s fcn-resnet50 --json plan.json
    python benchmarks/tpu_plan.py --slices v4-8 v5p-8 --no-max-batch   # one train compile per slice
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from fcn_jax import benchmark as bench  # noqa: E402
from fcn_jax import io as fcn_io  # noqa: E402
from fcn_jax import topology  # noqa: E402
from fcn_jax.cli.benchmark import BENCHMARKED, parse_image_size  # noqa: E402

GIB = topology.GIB
HEADER = ("| slice | variant | train batch/chip that fits (max) | memory at batch {b}, GiB of HBM | train roofline "
          "at batch {b}: images/s/chip at most | infer {infer} batch 1: memory GiB, images/s/chip at most | "
          "compiles, s |\n|---|---|---|---|---|---|---|")


def row(tpu: topology.Slice, variant: str, search: dict[str, Any], first: dict[str, Any],
        infer: dict[str, Any], seconds: float) -> str:
    """One markdown row from a :func:`fcn_jax.topology.max_batch` search, its first (``--batch-size``)
    record and the inference record."""
    hbm = tpu.generation.hbm_bytes / GIB

    def memory(record: dict[str, Any]) -> str:
        return f"{record['memory']['peak'] / GIB:.2f} of {hbm:g}" if record["fits"] else f"does not fit ({hbm:g})"

    def bound(record: dict[str, Any]) -> str:
        value = record.get("images_per_s_per_chip_bound")
        return f"{value:.1f}" if value else "n/a"

    infer_cell = f"{memory(infer)}, {bound(infer)}" if infer["fits"] else memory(infer)
    largest = "not searched" if search["max_batch"] is None else search["max_batch"]
    return (f"| {tpu.name} ({tpu.topology}) | {variant} | {largest} | {memory(first)} | {bound(first)} | "
            f"{infer_cell} | {len(search['tried']) + 1}, {seconds:.0f} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", nargs="+", type=topology.parse_slice,
                        default=[topology.parse_slice(s) for s in ("v4-8", "v5e-8", "v5p-8", "v6e-8")])
    parser.add_argument("--variants", nargs="+", default=["fcn8s"], choices=BENCHMARKED)
    parser.add_argument("--batch-size", type=int, default=8, help="first per-chip train batch tried (default 8)")
    parser.add_argument("--train-size", type=parse_image_size, default=(512, 512), metavar="H[xW]")
    parser.add_argument("--infer-size", type=parse_image_size, default=(500, 375), metavar="H[xW]")
    parser.add_argument("--width", type=float, default=1.0, help="channel width (1 = the real network)")
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    parser.add_argument("--limit", type=int, default=1024, help="largest per-chip batch searched (default 1024)")
    parser.add_argument("--no-max-batch", dest="max_batch", action="store_false",
                        help="compile the train step at --batch-size only (no search for the largest batch)")
    parser.add_argument("--json", metavar="PATH", help="write every record to PATH")
    args = parser.parse_args(argv)
    if not topology.available():
        parser.error(f"needs libtpu: {topology.INSTALL}")
    if "JAX_PLATFORMS" not in os.environ:
        jax.config.update("jax_platforms", "cpu")
    print(f"{datetime.date.today().isoformat()}, jax {jax.__version__}, libtpu {topology.libtpu_version()}; "
          f"compiler analysis, not measurements", flush=True)
    print(HEADER.format(b=args.batch_size, infer="x".join(map(str, args.infer_size))), flush=True)
    records = []
    for tpu in args.slices:
        chips = topology.devices(tpu)
        for variant in args.variants:
            start = time.perf_counter()
            base = dict(variant=variant, width=args.width, dtype=args.dtype)
            train = bench.BenchmarkConfig(mode="train", batch_size=args.batch_size, image_size=args.train_size, **base)
            seen: list[dict[str, Any]] = []

            def report(record: dict[str, Any]) -> None:
                seen.append(record)
                print(f"  {tpu.name} {variant} train {topology.compile_line(record)}", file=sys.stderr, flush=True)

            if args.max_batch:
                search = topology.max_batch(train, tpu, limit=args.limit, chips=chips, report=report)
            else:
                report(topology.analyse(train, tpu, chips))
                search = {"max_batch": None, "tried": {str(args.batch_size): seen[0]["fits"]}}
            infer = topology.analyse(bench.BenchmarkConfig(mode="infer", batch_size=1, image_size=args.infer_size,
                                                           **base), tpu, chips)
            seconds = time.perf_counter() - start
            records.append({"slice": tpu.name, "variant": variant, "max_batch": search, "first": seen[0],
                            "tried": seen, "infer": infer, "seconds": seconds})
            if args.json:
                fcn_io.write_json(args.json, records)
            print(row(tpu, variant, search, seen[0], infer, seconds), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
