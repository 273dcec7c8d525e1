"""Exact results at bucketed cost: exact-size vs masked-bucket evaluation and reference-mode training, side by side.

The images are synthetic with VOC's size distribution (one side 500 px (``--long-side``), the other drawn
uniformly from ``--short-side`` low..high, landscape 3 times in 4), random pixels and labels. Both ways run the same
images in the same order on the same parameters in one process; what is printed per way: the distinct
batch shapes the step was compiled for (one program each), the seconds jax spent tracing, lowering and
compiling, or reloading from the persistent compilation cache (on, in a fresh directory, as ``train.py`` runs:
at most ``fcn_jax.programs.LIVE_PROGRAMS`` sizes stay loaded; every program of the run: ``jax.monitoring``
events), the wall time, and how the
results compare (evaluation: the confusion matrices and every prediction; training: each step's loss and
the final parameters, dropout off because its masks are drawn for the map's shape).

    python benchmarks/exact_buckets.py                                  # 200 val images, fcn8s at width 1/8
    python benchmarks/exact_buckets.py --images 500 --train-steps 500   # and a 500-image training run
    python benchmarks/exact_buckets.py --width 1 --dtype bfloat16 --batch-size 8 --json out.json  # a GPU
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from fcn_jax import parallel, platform  # noqa: E402
from fcn_jax.config import DTYPES, ModelConfig  # noqa: E402
from fcn_jax.configs import get_config  # noqa: E402
from fcn_jax.data.pipeline import TrainInput, train_iterator  # noqa: E402
from fcn_jax.evaluator import Evaluator  # noqa: E402
from fcn_jax.models import VARIANTS, maskable  # noqa: E402
from fcn_jax.train_lib import create_train_state, init_variables, make_train_step  # noqa: E402

COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration",
                  "/jax/core/compile/backend_compile_duration", "/jax/compilation_cache/cache_retrieval_time_sec")


def voc_sizes(count: int, short_side: tuple[int, int], seed: int, long_side: int = 500) -> list[tuple[int, int]]:
    """``count`` (h, w): one side ``long_side``, the other uniform in ``short_side``; landscape with
    probability 3/4."""
    rng = np.random.default_rng(seed)
    sides = rng.integers(short_side[0], short_side[1] + 1, count)
    return [(int(s), long_side) if rng.random() < 0.75 else (long_side, int(s)) for s in sides]


def examples(sizes: Sequence[tuple[int, int]], num_classes: int, seed: int) -> list[dict[str, Any]]:
    """Random uint8 images and labels (10% void) of the given sizes, as pipeline examples."""
    rng = np.random.default_rng(seed)
    out = []
    for i, (h, w) in enumerate(sizes):
        label = rng.integers(0, num_classes, (h, w)).astype(np.uint8)
        label[rng.random((h, w)) < 0.1] = 255
        out.append({"image": rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "segmentation": label,
                    "file_name": f"{i:05d}"})
    return out


class CompileClock:
    """Seconds jax spends compiling (trace + lower + XLA, or reloading from the persistent cache) while active."""

    def __init__(self) -> None:
        self.seconds, self.active = 0.0, False
        jax.monitoring.register_event_duration_secs_listener(self._record)

    def _record(self, event: str, duration: float, **_: Any) -> None:
        if self.active and event in COMPILE_EVENTS:
            self.seconds += duration

    def measure(self, fn: Callable[[], Any]) -> tuple[Any, float, float]:
        """(fn(), wall seconds, compile seconds)."""
        self.seconds, self.active = 0.0, True
        start = time.perf_counter()
        try:
            result = fn()
        finally:
            self.active = False
        return result, time.perf_counter() - start, self.seconds


def run_eval(model: Any, variables: Any, source: list, batch_size: int, bucket: int | None) -> dict[str, Any]:
    shapes, preds = set(), {}

    def keep(batch: Any, pred: np.ndarray) -> bool:
        shapes.add(tuple(pred.shape))
        for row, index in enumerate(batch.indices):
            if index >= 0:
                h, w = batch.sizes[row]
                preds[int(index)] = pred[row, :h, :w]
        return True

    evaluator = Evaluator(model, source, batch_size=batch_size, bucket_multiple=bucket)
    result = evaluator(variables, pictures=keep, progress=False)
    return {"programs": len(shapes), "masked": evaluator.masked, "hist": result.hist, "preds": preds}


def run_train(cfg: Any, variables: Any, source: list, steps: int, bucket: int | None) -> dict[str, Any]:
    mesh = parallel.make_mesh(jax.devices()[:1])
    model = cfg.model.build()
    state = jax.device_put(create_train_state(cfg, model, jax.tree.map(np.array, variables["params"])),
                           parallel.replicated(mesh))
    step = make_train_step(cfg, mesh, variables["params"])
    inputs = TrainInput(mode="reference", batch_size=1, bucket_multiple=bucket, convention=cfg.preprocessing,
                        sampling=cfg.sampling, seed=cfg.seed)
    shapes, losses = set(), []
    with train_iterator(source, inputs, sharding=parallel.data_sharding(mesh)) as batches:
        for _ in range(steps):
            batch = next(batches)
            shapes.add(tuple(batch["image"].shape))
            state, metrics = step(state, batch)
            losses.append(float(metrics["loss"]))
    return {"programs": len(shapes), "losses": np.asarray(losses), "params": jax.device_get(state.params)}


def max_relative(a: Any, b: Any) -> float:
    """max |a - b| / max |b| over the leaves of two trees."""
    return max(float(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)).max()
                     / max(float(np.abs(np.asarray(y, np.float64)).max()), 1e-30))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="fcn8s", choices=[v for v in VARIANTS if maskable(v)])
    parser.add_argument("--width", type=float, default=0.125, help="channel width multiplier (default 1/8)")
    parser.add_argument("--dtype", default="float32", choices=tuple(DTYPES))
    parser.add_argument("--images", type=int, default=200, help="validation images (default 200)")
    parser.add_argument("--train-steps", type=int, default=0, help="reference-mode training steps, batch 1, "
                        "on as many images (default 0: no training run)")
    parser.add_argument("--batch-size", type=int, default=1, help="evaluation batch size (default 1)")
    parser.add_argument("--bucket-multiple", type=int, default=64, help="bucket multiple (default 64)")
    parser.add_argument("--short-side", type=int, nargs=2, default=(250, 500), metavar=("LOW", "HIGH"),
                        help="range of the other side (default 250 500)")
    parser.add_argument("--long-side", type=int, default=500, help="one side of every image (default 500, VOC's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON to PATH")
    args = parser.parse_args(argv)
    if min(args.images, args.batch_size, args.bucket_multiple, args.long_side) < 1 or args.train_steps < 0 \
            or not 1 <= args.short_side[0] <= args.short_side[1]:
        parser.error("--images, --batch-size, --bucket-multiple and --long-side must be >= 1, --train-steps >= 0, "
                     "--short-side LOW <= HIGH, both >= 1")

    platform.skip_absent_tpu()
    # as train.py and eval.py run: a size compiled before is reloaded from the persistent cache (a fresh
    # directory, so every first compilation is counted), since at most LIVE_PROGRAMS sizes stay loaded
    platform.enable_compilation_cache(tempfile.mkdtemp(prefix="exact_buckets_xla_"))
    clock = CompileClock()
    model_cfg = ModelConfig(variant=args.variant, num_classes=21, width=args.width, dtype=args.dtype,
                            dropout_rate=0.0)
    cfg = get_config("reference", args.variant, model=model_cfg)
    variables = jax.device_get(init_variables(cfg, model_cfg.build()))
    figures: dict[str, Any] = {"variant": args.variant, "width": args.width, "dtype": args.dtype,
                               "bucket_multiple": args.bucket_multiple, "device": jax.devices()[0].device_kind,
                               "date": time.strftime("%Y-%m-%d")}
    print(f"{args.variant} width {args.width:g} {args.dtype} on {jax.devices()[0].device_kind}; buckets of "
          f"{args.bucket_multiple} px, masked to each image's size")

    sizes = voc_sizes(args.images, tuple(args.short_side), args.seed, args.long_side)
    source = examples(sizes, 21, args.seed)
    print(f"evaluation: {len(sizes)} images in {len(set(sizes))} distinct sizes, batch {args.batch_size}")
    ways = {}
    for name, bucket in (("exact", None), ("masked", args.bucket_multiple)):
        ways[name], wall, compile_s = clock.measure(lambda: run_eval(model_cfg.build(), variables, source,
                                                                     args.batch_size, bucket))
        ways[name].update(seconds=wall, compile_seconds=compile_s)
        print(f"  {name:7s} {ways[name]['programs']:4d} programs, compile {compile_s:7.1f} s, wall {wall:7.1f} s, "
              f"{len(sizes) / wall:6.2f} images/s")
    same = bool(np.array_equal(ways["exact"]["hist"], ways["masked"]["hist"])) and all(
        np.array_equal(ways["exact"]["preds"][i], ways["masked"]["preds"][i]) for i in range(len(sizes)))
    print(f"  same confusion matrix and predictions: {same}; wall exact / masked "
          f"{ways['exact']['seconds'] / ways['masked']['seconds']:.2f}x")
    figures["eval"] = {"images": len(sizes), "distinct_sizes": len(set(sizes)), "batch_size": args.batch_size,
                       "same_predictions": same, **{name: {k: w[k] for k in ("programs", "compile_seconds", "seconds")}
                                                    for name, w in ways.items()}}

    if args.train_steps:
        train_sizes = voc_sizes(args.train_steps, tuple(args.short_side), args.seed + 1, args.long_side)
        train_source = examples(train_sizes, 21, args.seed + 1)
        print(f"training: {args.train_steps} steps, batch 1, {len(train_source)} images in "
              f"{len(set(train_sizes))} distinct sizes (order {cfg.sampling}, dropout off)")
        runs = {}
        for name, bucket in (("exact", None), ("masked", args.bucket_multiple)):
            runs[name], wall, compile_s = clock.measure(lambda: run_train(cfg, variables, train_source,
                                                                          args.train_steps, bucket))
            runs[name].update(seconds=wall, compile_seconds=compile_s)
            print(f"  {name:7s} {runs[name]['programs']:4d} programs, compile {compile_s:7.1f} s, wall {wall:7.1f} s, "
                  f"{args.train_steps / wall:6.2f} steps/s")
        loss_diff = float(np.max(np.abs(runs["masked"]["losses"] - runs["exact"]["losses"])
                                 / np.maximum(np.abs(runs["exact"]["losses"]), 1e-30)))
        params_diff = max_relative(runs["masked"]["params"], runs["exact"]["params"])
        print(f"  per-step loss max relative difference {loss_diff:.1e}, final parameters {params_diff:.1e}; "
              f"wall exact / masked {runs['exact']['seconds'] / runs['masked']['seconds']:.2f}x")
        figures["train"] = {"steps": args.train_steps, "distinct_sizes": len(set(train_sizes)),
                            "loss_max_rel_diff": loss_diff, "params_max_rel_diff": params_diff,
                            **{name: {k: r[k] for k in ("programs", "compile_seconds", "seconds")}
                               for name, r in runs.items()}}
    if args.json:
        with open(args.json + ".tmp", "w") as f:
            json.dump(figures, f, indent=1)
        os.replace(args.json + ".tmp", args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
