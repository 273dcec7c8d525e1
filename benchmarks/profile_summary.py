"""Where a step's time goes: a few steps of the benchmark's workload under ``jax.profiler``, summarised.

Runs :mod:`fcn_jax.benchmark`'s train or infer workload (the same compiled step, synthetic batch on the
device) for ``--steps`` steps inside ``jax.profiler.trace`` and prints the ``--top`` operations by total
time from the trace's Perfetto export: on a GPU or TPU the device's kernels (processes named
``/device:...``), on a CPU the XLA operations of its compute threads. The trace stays in ``--trace-dir``
for Perfetto (ui.perfetto.dev) or TensorBoard's profile plugin.

    python benchmarks/profile_summary.py --mode train --batch-size 8 --image-size 512 --dtype bfloat16
"""
from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from fcn_jax import benchmark as bench  # noqa: E402
from fcn_jax import parallel, platform  # noqa: E402
from fcn_jax.cli import benchmark as bench_cli  # noqa: E402

HOST_THREADS = ("python", "Python")  # the host's own threads: dispatch, not computation


def summarize_trace(events: Sequence[dict[str, Any]], top: int = 10) -> dict[str, Any]:
    """Total time per operation name of a Chrome / Perfetto trace's complete ('X') events: the device
    processes' (name starting '/device:') when there are any, else the events of threads not named
    python (XLA:CPU's compute threads), less Python frames ('$file.py:line') and the runtime's scopes
    ('ThunkExecutor::Execute', which contain the operations). Returns {'where': 'device' | 'host', 'total_us', 'ops': [{'name',
    'us', 'share', 'count'}] (largest first, at most ``top``)}."""
    process = {e["pid"]: e["args"]["name"] for e in events if e.get("ph") == "M" and e.get("name") == "process_name"}
    thread = {(e["pid"], e.get("tid")): e["args"]["name"] for e in events
              if e.get("ph") == "M" and e.get("name") == "thread_name"}
    complete = [e for e in events if e.get("ph") == "X" and "dur" in e]
    device = [e for e in complete if process.get(e["pid"], "").startswith("/device:")]
    where = "device" if device else "host"
    if not device:
        device = [e for e in complete if not thread.get((e["pid"], e.get("tid")), "python").startswith(HOST_THREADS)
                  and not e["name"].startswith("$") and "::" not in e["name"]]  # Python frames, runtime scopes
    total: collections.Counter = collections.Counter()
    count: collections.Counter = collections.Counter()
    for e in device:
        total[e["name"]] += float(e["dur"])
        count[e["name"]] += 1
    whole = sum(total.values())
    ops = [{"name": name, "us": us, "share": us / whole if whole else 0.0, "count": count[name]}
           for name, us in total.most_common(top)]
    return {"where": where, "total_us": whole, "ops": ops}


def read_trace(trace_dir: str) -> list[dict[str, Any]]:
    """The events of the newest ``perfetto_trace.json.gz`` under ``trace_dir``."""
    files = sorted(glob.glob(os.path.join(trace_dir, "**", "perfetto_trace.json.gz"), recursive=True),
                   key=os.path.getmtime)
    if not files:
        raise FileNotFoundError(f"{trace_dir}: jax.profiler wrote no perfetto_trace.json.gz")
    with gzip.open(files[-1], "rt") as f:
        data = json.load(f)
    return data["traceEvents"] if isinstance(data, dict) else data


def profile(cfg: bench.BenchmarkConfig, trace_dir: str, top: int = 10) -> dict[str, Any]:
    """Compiles ``cfg``'s workload on every device, runs ``cfg.warmup`` steps, then ``cfg.steps`` steps
    under the profiler; returns :func:`summarize_trace`'s summary plus the trace directory and config."""
    mesh = parallel.make_mesh(jax.devices())
    workload = (bench.train_workload if cfg.mode == "train" else bench.infer_workload)(cfg, mesh)
    for _ in range(cfg.warmup):
        jax.block_until_ready(workload.run())
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
        for _ in range(cfg.steps):
            jax.block_until_ready(workload.run())
    summary = summarize_trace(read_trace(trace_dir), top)
    device = jax.devices()[0]
    return {**summary, "trace_dir": trace_dir, "device": device.device_kind, "steps": cfg.steps,
            "config": {"variant": cfg.variant, "mode": cfg.mode, "batch_size": cfg.batch_size,
                       "image_size": list(cfg.image_size), "dtype": cfg.dtype, "width": cfg.width}}


def format_summary(summary: dict[str, Any]) -> str:
    c = summary["config"]
    lines = [f"{c['variant']} {c['mode']} {c['batch_size']}x{c['image_size'][0]}x{c['image_size'][1]} {c['dtype']} on "
             f"{summary['device']}: {summary['steps']} steps profiled, {summary['total_us'] / 1e3:.1f} ms of "
             f"{summary['where']} operations; trace in {summary['trace_dir']}",
             "| operation | ms (all steps) | share | calls |", "|---|---:|---:|---:|"]
    lines += [f"| `{op['name'][:80]}` | {op['us'] / 1e3:.2f} | {op['share']:.1%} | {op['count']} |"
              for op in summary["ops"]]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", default="train", choices=bench.MODES)
    bench_cli.add_benchmark_flags(parser)
    parser.add_argument("--top", type=int, default=10, help="operations listed (default 10)")
    parser.add_argument("--trace-dir", help="where the trace goes (default: a new temporary directory)")
    parser.add_argument("--json", metavar="PATH", help="also write the summary as JSON to PATH")
    parser.set_defaults(steps=5, warmup=2)
    args = parser.parse_args(argv)
    cfg = bench_cli.config_from_args(args)
    platform.setup()
    summary = profile(cfg, args.trace_dir or tempfile.mkdtemp(prefix="fcn_profile_"), args.top)
    print(format_summary(summary))
    if args.json:
        bench_cli.write_json(args.json, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
