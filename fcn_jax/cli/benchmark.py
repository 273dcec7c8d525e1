"""``benchmark.py`` / ``fcn-benchmark``: throughput and MFU of the train step or inference (see
:mod:`fcn_jax.benchmark`), or with ``--topology`` the same step compiled for a TPU slice on this host
(:mod:`fcn_jax.topology`). Bad values give one error line and exit code 2."""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Sequence
from typing import Any

import jax

from fcn_jax import benchmark as bench
from fcn_jax import cli, platform, topology
from fcn_jax import io as fcn_io
from fcn_jax.cli import ArgumentParser
from fcn_jax.config import DTYPES
from fcn_jax.models import PADDINGS, VARIANTS, supports


def parse_image_size(text: str) -> tuple[int, int]:
    """``--image-size``: '512' -> (512, 512); '480x640' -> (480, 640) (height x width)."""
    match = re.fullmatch(r"\s*(\d+)\s*(?:[xX]\s*(\d+)\s*)?", text)
    if not match or int(match.group(1)) < 1 or (match.group(2) is not None and int(match.group(2)) < 1):
        raise argparse.ArgumentTypeError(f"expected a positive size like 512 or 480x640 (HxW), got {text!r}")
    height = int(match.group(1))
    return height, int(match.group(2)) if match.group(2) is not None else height


def add_benchmark_flags(parser: argparse.ArgumentParser, *, dtype: bool = True, padding: bool = True) -> None:
    """The flags that define a measurement (shared with ``benchmarks/compare_torch.py``, which picks
    its own dtypes and has only the reference padding)."""
    parser.add_argument("--variant", default="fcn8s", choices=BENCHMARKED, help="network variant (default fcn8s; the "
                        "single-head RGB variants: synthetic batches are RGB images with one label map)")
    parser.add_argument("--batch-size", type=int, default=8, help="batch size per device (default 8)")
    parser.add_argument("--image-size", type=parse_image_size, default=(512, 512), metavar="H[xW]",
                        help="input size, e.g. 512 or 480x640 (default 512)")
    if dtype:
        parser.add_argument("--dtype", default="bfloat16", choices=tuple(DTYPES),
                            help="compute dtype; parameters and loss stay float32 (default bfloat16)")
    if padding:
        parser.add_argument("--padding", default="reference", choices=PADDINGS,
                            help="'reference' (pad 100, Caffe crops; matches the reference weights) or 'same' "
                                 "(input padded to a multiple of 32, SAME convs, crop back to H x W: 0.58x the "
                                 "FLOPs of pad 100 at 500x500, 0.3x at 224x224, but no longer the geometry the "
                                 "reference weights were trained with)")
    parser.add_argument("--width", type=float, default=1.0,
                        help="channel width multiplier (1.0 = the real network; smaller for quick CPU runs)")
    parser.add_argument("--num-classes", type=int, default=21, help="output classes (default 21, VOC)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps after compilation (default 3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the parameters and synthetic batch")


def config_from_args(args: argparse.Namespace, **overrides: Any) -> bench.BenchmarkConfig:
    """A :class:`fcn_jax.benchmark.BenchmarkConfig` from :func:`add_benchmark_flags`'s flags; errors become UsageError."""
    fields = dict(variant=args.variant, batch_size=args.batch_size, image_size=tuple(args.image_size),
                  width=args.width, num_classes=args.num_classes, steps=args.steps, warmup=args.warmup,
                  seed=args.seed)
    fields.update({name: getattr(args, name) for name in ("mode", "dtype", "padding") if hasattr(args, name)})
    fields.update(overrides)
    try:
        return bench.BenchmarkConfig(**fields)
    except ValueError as e:
        raise cli.UsageError(str(e)) from None


def write_json(path: str, data: Any) -> None:
    """Writes ``data`` as indented JSON to ``path`` ('-' for stdout; a file atomically, see :mod:`fcn_jax.io`)."""
    if path == "-":
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
        return
    fcn_io.write_json(path, data)


def build_parser(prog: str = "benchmark.py") -> argparse.ArgumentParser:
    """``benchmark.py``'s flags; bad values give one error line and exit code 2."""
    parser = ArgumentParser(prog=prog, description=bench.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", default="train", choices=bench.MODES,
                        help="'train' (the real train step: forward, loss, backward, SGD) or 'infer' (default train)")
    add_benchmark_flags(parser)
    parser.add_argument("--onnxruntime", action="store_true",
                        help="infer mode: also export the same network and batch to ONNX (float32) and time it on "
                             "onnxruntime's CPU provider, side by side (needs fcn-jax[onnx])")
    parser.add_argument("--json", metavar="PATH", help="also write every figure as JSON to PATH ('-': stdout)")
    tpu = parser.add_argument_group("TPU slices, planned on this host (compile only; needs libtpu: "
                                    "pip install \"jax[tpu]==<jax version>\")")
    tpu.add_argument("--topology", type=parse_slice, metavar="SLICE",
                     help="compile for a TPU slice instead of running: v5e-8, v4-8, v5p-8, v6e-8, v5e-256, ... "
                          "(Cloud TPU's names: chips for v5e / v6e, TensorCores for v4 / v5p) or v5e:2x4, "
                          "v4:2x2x1; reports per-chip memory against HBM, FLOPs, bytes and a roofline bound "
                          "from the compiler's analysis (estimates, not measurements); --batch-size is per chip")
    tpu.add_argument("--max-batch", action="store_true",
                     help="with --topology: find the largest per-chip batch that fits, from --batch-size "
                          "(each candidate one compile, usually 3-5)")
    return parser


def parse_slice(text: str) -> topology.Slice:
    """``--topology``: a TPU slice name (:func:`fcn_jax.topology.parse_slice`)."""
    try:
        return topology.parse_slice(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


BENCHMARKED = tuple(v for v in VARIANTS if supports(v, rgb=True, single_output=True))


def check_json_path(path: str | None) -> None:
    """UsageError now, not after the measurement, for a ``--json`` that cannot be written."""
    if path is None or path == "-":
        return
    if os.path.isdir(path):
        raise cli.UsageError(f"--json {path}: is a directory; give a file name")
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
        raise cli.UsageError(f"--json {path}: {parent} is not a writable directory")


def memory_bytes(device: Any) -> int:
    """What one device can hold: its allocator's limit (accelerators), else the host's physical memory."""
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"])
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_fits(cfg: bench.BenchmarkConfig, limit: int) -> None:
    """UsageError when one device's batch cannot possibly fit: conv1_1's output alone (64 channels at the
    padded input size, compute dtype) already exceeds ``limit`` bytes."""
    h, w = cfg.image_size
    pad = 198 if cfg.padding == "reference" else 0
    channels = max(1, round(64 * cfg.width))
    itemsize = 2 if cfg.dtype == "bfloat16" else 4
    need = cfg.batch_size * (h + pad) * (w + pad) * channels * itemsize
    if need > limit:
        raise cli.UsageError(f"--batch-size {cfg.batch_size} --image-size {h}x{w}: conv1_1's output alone needs "
                             f"{need / 2**30:,.1f} GiB per device, more than the {limit / 2**30:,.1f} GiB it has")


def check_onnxruntime(cfg: bench.BenchmarkConfig) -> None:
    """UsageError now, not after the JAX measurement, when ``--onnxruntime`` cannot run: not in infer mode,
    or the onnx extra missing."""
    if cfg.mode != "infer":
        raise cli.UsageError("--onnxruntime: only with --mode infer (onnxruntime runs the exported forward pass)")
    from importlib.util import find_spec

    from fcn_jax.onnx_model import INSTALL
    missing = [name for name in ("jax2onnx", "onnxruntime") if find_spec(name) is None]
    if missing:
        raise cli.UsageError(f"--onnxruntime: needs {' and '.join(missing)}: {INSTALL}")


@cli.user_errors("benchmark.py")
def main(argv: Sequence[str] | None = None) -> int:
    """``benchmark.py``: measure one configuration, print a summary, optionally write JSON."""
    args = build_parser().parse_args(argv)
    cfg = config_from_args(args)
    check_json_path(args.json)
    if args.max_batch and args.topology is None:
        raise cli.UsageError("--max-batch: only with --topology (it compiles for a TPU slice)")
    if args.topology is not None:
        if args.onnxruntime:
            raise cli.UsageError("--onnxruntime: not with --topology (nothing runs on a planned slice)")
        return plan(args, cfg)
    if args.onnxruntime:
        check_onnxruntime(cfg)
    platform.setup()  # CPU XLA flags, compilation cache; multi-host: auto-detected on TPU pods / SLURM
    check_fits(cfg, memory_bytes(jax.local_devices()[0]))
    try:
        result = bench.run_benchmark(cfg)
    except RuntimeError as e:  # XLA's RESOURCE_EXHAUSTED and allocation failures
        if "RESOURCE_EXHAUSTED" not in str(e) and "out of memory" not in str(e).lower():
            raise
        return cli.fail("benchmark.py", f"out of memory at --batch-size {cfg.batch_size} --image-size "
                        f"{cfg.image_size[0]}x{cfg.image_size[1]}: try a smaller batch or image", code=1)
    if args.onnxruntime:
        result["onnxruntime"] = bench.run_onnxruntime(cfg)
    if jax.process_index() == 0:
        print(bench.format_result(result), file=sys.stderr if args.json == "-" else sys.stdout)
        if args.json:
            write_json(args.json, result)
    return 0


def plan(args: argparse.Namespace, cfg: bench.BenchmarkConfig) -> int:
    """``--topology``: compile ``cfg`` for the slice (or search ``--max-batch``), print the compiler's figures."""
    if not topology.available():
        raise cli.UsageError(f"--topology: needs libtpu, the TPU compiler: {topology.INSTALL}")
    if "JAX_PLATFORMS" not in os.environ:  # this host's own devices stay the CPU: no TPU runtime is sought
        jax.config.update("jax_platforms", "cpu")
    platform.setup()
    tpu = args.topology
    chips = topology.devices(tpu)
    out = sys.stderr if args.json == "-" else sys.stdout
    what = f"{cfg.variant} {cfg.mode} {cfg.image_size[0]}x{cfg.image_size[1]} {cfg.dtype}"
    print(f"compiling {what} for {tpu.name} ({tpu.topology}, {len(chips)} chips, {tpu.hosts} host"
          f"{'s' if tpu.hosts != 1 else ''}) on this host; a compile can take minutes", file=out, flush=True)
    if not args.max_batch:
        result = topology.analyse(cfg, tpu, chips)
        print(topology.format_record(result), file=out)
    else:
        def report(record: dict[str, Any]) -> None:
            print(topology.compile_line(record), file=out, flush=True)

        result = topology.max_batch(cfg, tpu, chips=chips, report=report)
        print(topology.format_record(result["record"]), file=out)
        note = {0: " (not even batch 1)", result["limit"]: " (the search limit)"}.get(result["max_batch"], "")
        print(f"largest batch per chip that fits: {result['max_batch']}{note}", file=out)
    if args.json:
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
