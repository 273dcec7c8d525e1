"""The standing accelerator measurements in one run, printed as the README's dated table rows.

On a GPU (or TPU) host, in one process tree and one sitting (under 8 minutes on one H100 / H200):

1. ``benchmark.py`` train: fcn8s, 8 x 512x512 per device, bfloat16 (images/s, step time, MFU);
2. ``benchmark.py`` infer: 1 x 500x375, bfloat16;
3. ``benchmarks/compare_torch.py`` train at 8 x 512x512 and infer at 1 x 500x375: JAX bfloat16 against every
   PyTorch mode on the same device, side by side (the ratio to the best PyTorch mode);
4. ``benchmarks/profile_summary.py``: the train step's top operations from a ``jax.profiler`` trace;
5. ``benchmarks/exact_buckets.py``: 200 VOC-sized synthetic images evaluated at exact size and in masked
   buckets (full width, bfloat16, batch 8): programs, compile and wall seconds, identical predictions.

Each step is a subprocess with its own time limit (together 8 minutes); a failing or timed-out step is
reported as such in its row and the others still run. Every output goes to ``--out`` (JSON per step, the logs, the profile trace) and the
rows are printed at the end (and written to ``OUT/rows.md``).

    python benchmarks/accelerator.py --out accelerator-run          # on the accelerator
    python benchmarks/accelerator.py --tiny --out /tmp/smoke         # a CPU smoke run: tiny sizes, same steps
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass(frozen=True)
class Sizes:
    """What each step measures: per-device train batch and size, infer size, exact-bucket images."""

    train: tuple[int, str] = (8, "512")
    infer: tuple[int, str] = (1, "500x375")
    width: str = "1"
    steps: str = "20"
    warmup: str = "3"
    bucket_images: str = "200"
    bucket_batch: str = "8"
    torch_modes: str = "eager,bf16_cl,compile,compile_bf16_cl"
    profile_steps: str = "5"
    bucket_args: tuple[str, ...] = ()  # image sizes of exact_buckets.py (default: VOC's)


FULL = Sizes()
TINY = Sizes(train=(1, "32"), infer=(1, "40x30"), width="0.0625", steps="2", warmup="1", bucket_images="4",
             bucket_batch="2", torch_modes="eager", profile_steps="2",
             bucket_args=("--long-side", "64", "--short-side", "32", "64", "--bucket-multiple", "32"))


def steps(s: Sizes, out: str) -> list[tuple[str, list[str], int]]:
    """(name, command, time limit in seconds) of every measurement, in order."""
    py = sys.executable
    common = ["--variant", "fcn8s", "--width", s.width, "--steps", s.steps, "--warmup", s.warmup]
    train = ["--batch-size", str(s.train[0]), "--image-size", s.train[1]]
    infer = ["--batch-size", str(s.infer[0]), "--image-size", s.infer[1]]
    j = lambda name: ["--json", os.path.join(out, f"{name}.json")]  # noqa: E731
    return [  # the limits add up to 8 minutes; the step most likely to overrun (one compile per size) runs last
        ("train", [py, "benchmark.py", "--mode", "train", "--dtype", "bfloat16", *common, *train, *j("train")], 75),
        ("infer", [py, "benchmark.py", "--mode", "infer", "--dtype", "bfloat16", *common, *infer, *j("infer")], 45),
        ("torch_train", [py, "benchmarks/compare_torch.py", "--modes", "train", "--jax-dtypes", "bfloat16",
                         "--torch-modes", s.torch_modes, *common, *train, *j("torch_train")], 120),
        ("torch_infer", [py, "benchmarks/compare_torch.py", "--modes", "infer", "--jax-dtypes", "bfloat16",
                         "--torch-modes", s.torch_modes, "--no-onnxruntime", *common, *infer, *j("torch_infer")], 60),
        ("profile", [py, "benchmarks/profile_summary.py", "--mode", "train", "--dtype", "bfloat16", "--width", s.width,
                     *train, "--steps", s.profile_steps, "--warmup", "2", "--trace-dir",
                     os.path.join(out, "trace"), *j("profile")], 45),
        ("buckets", [py, "benchmarks/exact_buckets.py", "--images", s.bucket_images, "--width", s.width,
                     "--dtype", "bfloat16", "--batch-size", s.bucket_batch, *s.bucket_args, *j("buckets")], 135),
    ]


def run_steps(s: Sizes, out: str, scale: float = 1.0) -> dict[str, dict[str, Any]]:
    """Runs every step (time limits times ``scale``), logs to OUT/NAME.log; returns {name: {'status',
    'seconds', 'result' (the step's JSON, when it wrote one)}}."""
    results: dict[str, dict[str, Any]] = {}
    for name, command, limit in steps(s, out):
        print(f"[{time.strftime('%H:%M:%S')}] {name}: {' '.join(command[1:])}", flush=True)
        start = time.perf_counter()
        with open(os.path.join(out, f"{name}.log"), "w") as log:
            try:
                code = subprocess.run(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                      timeout=limit * scale).returncode
                status = "ok" if code == 0 else f"exit code {code} (see {name}.log)"
            except subprocess.TimeoutExpired:
                status = f"timed out after {limit * scale:.0f} s (see {name}.log)"
        path = os.path.join(out, f"{name}.json")
        result = None
        if status == "ok" and os.path.exists(path):
            with open(path) as f:
                result = json.load(f)
        results[name] = {"status": status, "seconds": time.perf_counter() - start, "result": result}
        print(f"    {status}, {results[name]['seconds']:.0f} s", flush=True)
    return results


def _speed(r: dict[str, Any]) -> str:
    mfu = f", MFU {r['mfu']:.1%}" if r.get("mfu") else ""
    return f"{r['images_per_s']:.1f} images/s ({r['step_time_s']['median'] * 1e3:.1f} ms/step{mfu})"


def _ratio(report: dict[str, Any], mode: str) -> str:
    ratio = report["ratios"].get(mode)
    if not ratio:
        return "no ratio (a side failed; see the JSON)"
    rows = {(r["framework"], r["setting"]): r for r in report["rows"] if r["mode"] == mode and r["status"] == "ok"}
    best = rows[("pytorch", ratio["pytorch"])]
    ours = rows[("jax", ratio["jax"])]
    return (f"JAX {ratio['jax']} {ours['images_per_s']:.1f} images/s vs PyTorch {ratio['pytorch']} "
            f"{best['images_per_s']:.1f}: **{ratio['ratio']:.2f}x**")


def rows(results: dict[str, dict[str, Any]], s: Sizes, device: str, date: str) -> list[str]:
    """The README table's rows: | date | device | measurement | result |, one per step."""
    tb, ts = s.train
    ib, isz = s.infer
    label = {"train": f"benchmark.py train fcn8s {tb}x{ts} bf16 (width {s.width})",
             "infer": f"benchmark.py infer fcn8s {ib}x{isz} bf16",
             "torch_train": f"compare_torch.py train {tb}x{ts}", "torch_infer": f"compare_torch.py infer {ib}x{isz}",
             "buckets": f"exact_buckets.py: {s.bucket_images} VOC-sized images, batch {s.bucket_batch}, bf16",
             "profile": f"profile_summary.py train {tb}x{ts} bf16: top operations"}
    out = []
    for name, entry in results.items():
        r = entry["result"]
        if r is None:
            text = entry["status"]
        elif name in ("train", "infer"):
            text = _speed(r)
        elif name.startswith("torch_"):
            text = _ratio(r, name.removeprefix("torch_"))
        elif name == "buckets":
            e = r["eval"]
            text = (f"exact size {e['exact']['programs']} programs, {e['exact']['seconds']:.0f} s; masked "
                    f"{e['masked']['programs']} programs, {e['masked']['seconds']:.0f} s "
                    f"({e['exact']['seconds'] / e['masked']['seconds']:.1f}x); same predictions: {e['same_predictions']}")
        else:
            text = "; ".join(f"`{op['name'][:40]}` {op['share']:.0%}" for op in r["ops"][:3]) or "no operations traced"
        out.append(f"| {date} | {device} | {label[name]} | {text} |")
    return out


def device_kind() -> str:
    """The first device's kind and count, from a fresh process (this one never starts a backend)."""
    code = "import jax; d = jax.devices(); print(f'{len(d)} x {d[0].device_kind} ({d[0].platform})')"
    try:
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                              check=True).stdout.strip().splitlines()[-1]
    except (subprocess.SubprocessError, IndexError):
        return "unknown device"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=f"accelerator-{datetime.date.today().isoformat()}",
                        help="directory for every step's JSON, log and the trace (default accelerator-DATE)")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes and one PyTorch mode: a CPU smoke run")
    parser.add_argument("--time-scale", type=float, default=None,
                        help="multiplies every step's time limit (default 1; 20 with --tiny on a small CPU)")
    args = parser.parse_args(argv)
    sizes = TINY if args.tiny else FULL
    os.makedirs(args.out, exist_ok=True)
    out = os.path.abspath(args.out)
    device, date = device_kind(), datetime.date.today().isoformat()
    print(f"{date}: {device}; outputs in {out}", flush=True)
    start = time.perf_counter()
    results = run_steps(sizes, out, args.time_scale or (20.0 if args.tiny else 1.0))
    table = ["| date | device | measurement | result |", "|---|---|---|---|", *rows(results, sizes, device, date)]
    text = "\n".join(table) + "\n"
    with open(os.path.join(out, "rows.md.tmp"), "w") as f:
        f.write(text)
    os.replace(os.path.join(out, "rows.md.tmp"), os.path.join(out, "rows.md"))
    print(f"\nall steps in {time.perf_counter() - start:.0f} s; README rows (also {out}/rows.md):\n\n{text}")
    return 0 if all(r["status"] == "ok" for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
