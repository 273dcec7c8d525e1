"""FCN in JAX and in PyTorch side by side: same network, device, batch and image size, one process.

    python benchmarks/compare_torch.py --variant fcn8s --batch-size 8 --image-size 512       # GPU
    python benchmarks/compare_torch.py --variant fcn8s --batch-size 2 --image-size 64        # small CPU
    python benchmarks/compare_torch.py --variant fcn-resnet50 --batch-size 8 --image-size 480

JAX runs the real train step (``fcn_jax.train_lib.make_train_step``) and inference through
:mod:`fcn_jax.benchmark`, in float32 and bfloat16; in ``infer`` mode the same network and batch exported to
ONNX (float32) also run on onnxruntime's CPU provider (``fcn_jax.benchmark.run_onnxruntime``; its "first step"
is the export and session build; ``--no-onnxruntime`` leaves it out). PyTorch runs the same network written
for PyTorch: ``benchmarks/torch_fcn.FCN`` for the VGG16 FCNs (pad 100, ceil pooling, Caffe crops,
pytorch-fcn's layer names), torchvision's own ``fcn_resnet50`` / ``fcn_resnet101`` for ``fcn-resnet50/101`` (the aux head when
training: loss = out + 0.5 aux) and seed 002's ``VGG11Segmentation`` for ``fcn-vgg11bn``
(``benchmarks/torch_bn.py``; BatchNorm with batch statistics in training, running statistics in inference,
in both frameworks), in the modes a PyTorch user would pick:

- ``eager``: float32, NCHW (on CUDA, cuDNN's default TF32 convolutions, ``cudnn.benchmark`` on);
- ``bf16_cl``: ``torch.autocast`` bfloat16 with ``channels_last`` model and input;
- ``compile``: ``torch.compile`` of the float32 model;
- ``compile_bf16_cl``: ``torch.compile`` with autocast bfloat16 and ``channels_last``.

Both frameworks start from the same variables and batch (``fcn_jax.benchmark.synthetic_variables`` and
``host_batch``). ``train`` is forward, softmax cross-entropy averaged over non-void pixels (255 ignored), backward and
an SGD momentum step (weight decay on weights, biases at 2x lr), as in the 'modern' preset; ``infer``
is a forward pass to the per-pixel argmax. A mode that fails (``torch.compile`` without a compiler,
out of memory, ...) is reported as ``failed: reason`` and the others still run. The table gives
images/s and, per mode, best JAX / best PyTorch and best JAX / PyTorch eager. All PyTorch runs come
first and free their memory before JAX starts; JAX is told not to preallocate, so both fit on one
GPU. PyTorch uses its default thread count (printed). Dev only: needs ``torch``.
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import sys
import time
from typing import Any, Callable, Sequence

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # leave GPU memory to PyTorch too
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import traverse_util  # noqa: E402

from fcn_jax import benchmark as bench  # noqa: E402
from fcn_jax import platform  # noqa: E402
from fcn_jax.cli import benchmark as bench_cli  # noqa: E402
from fcn_jax import cli  # noqa: E402
from fcn_jax.config import DTYPES  # noqa: E402
from fcn_jax.cli import ArgumentParser  # noqa: E402
from fcn_jax.models.registry import outputs  # noqa: E402
from fcn_jax.weights import FCN_RESNET_TORCHVISION, SEED_SEGMENTATION  # noqa: E402

SEED_VARIANT = "fcn-vgg11bn"  # seed 002's network
# PyTorch mode -> its compute dtype.
TORCH_MODES = {"eager": "float32", "bf16_cl": "bfloat16", "compile": "float32", "compile_bf16_cl": "bfloat16"}
# The modern preset's solver (fcn_jax.config.preset('modern')).
LR, MOMENTUM, WEIGHT_DECAY, BIAS_LR_MULT = 0.01, 0.9, 5e-4, 2.0


def _failure(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"failed: {type(error).__name__}: {lines[0] if lines else ''}".rstrip(": ")[:200]


def _csv(choices: Sequence[str]) -> Callable[[str], tuple[str, ...]]:
    def parse(text: str) -> tuple[str, ...]:
        values = tuple(v.strip() for v in text.split(",") if v.strip())
        unknown = [v for v in values if v not in choices]
        if not values or unknown:
            raise argparse.ArgumentTypeError(f"expected a comma-separated subset of {','.join(choices)}, got {text!r}")
        return values
    return parse


# ------------------------------------------------------------------------------------------- PyTorch

def torch_device(platform: str) -> str:
    """The PyTorch device matching JAX's platform ('cpu' or 'cuda'); ValueError where there is none."""
    import torch

    if platform == "cpu":
        return "cpu"
    if platform == "gpu" and torch.cuda.is_available():
        return "cuda"
    raise ValueError(f"no PyTorch device for JAX platform {platform!r} in this PyTorch build")


def _torch_array(value: Any) -> Any:
    """A fcn_jax array as a PyTorch tensor: HWIO kernels (convs and transposed convs alike) -> (dim0, dim1, kh, kw)."""
    import torch

    array = np.asarray(value)
    return torch.from_numpy(np.ascontiguousarray(array.transpose(3, 2, 0, 1) if array.ndim == 4 else array))


def torch_state_dict(params: Any) -> dict[str, Any]:
    """fcn_jax parameters as a ``benchmarks.torch_fcn.FCN`` state dict (layer names are shared)."""
    state = {}
    for path, value in jax.tree_util.tree_flatten_with_path(params)[0]:
        names = [getattr(p, "key", str(p)) for p in path]
        state[f"{names[-2]}.{'weight' if names[-1] == 'kernel' else 'bias'}"] = _torch_array(value)
    return state


def torch_bn_state_dict(variables: Any, fmt: str, like: dict[str, Any]) -> dict[str, Any]:
    """fcn_jax variables (``params`` and ``batch_stats``) of a BatchNorm FCN as the state dict of the PyTorch
    network whose own state dict is ``like`` (seed 002's or torchvision's names: the name table of weight format
    ``fmt`` of :mod:`fcn_jax.weights_bn`, read backwards). Only the aux head may be absent from the PyTorch
    network (an inference model); ``num_batches_tracked`` keeps ``like``'s value. ValueError naming the keys
    where a variable has no PyTorch array or a PyTorch array gets no variable."""
    from fcn_jax.weights_bn import AUX, LEAVES, torch_module

    state, written, unmapped = dict(like), set(), []
    for path, value in traverse_util.flatten_dict(dict(variables)).items():
        name = torch_module(fmt, path[1:-1])
        key = f"{name}.{LEAVES[path[0], path[-1]]}"
        if name is None or key not in like:
            if path[1] != AUX:
                unmapped.append("/".join(path))
            continue
        state[key] = _torch_array(value)
        written.add(key)
    missing = [k for k in like if k not in written and not k.endswith("num_batches_tracked")]
    if unmapped or missing:
        raise ValueError(f"{fmt}: no PyTorch array for {', '.join(unmapped) or 'none'}; no fcn_jax variable for "
                         f"{', '.join(missing) or 'none'}")
    return state


def torch_side_error(cfg: bench.BenchmarkConfig) -> None:
    """ValueError where ``cfg`` has no PyTorch network: a variant other than the VGG16 FCNs and the BatchNorm
    FCNs, or ``fcn-vgg11bn`` below width 1 (seed 002's widths are fixed)."""
    from benchmarks import torch_bn, torch_fcn

    known = (*torch_fcn.VARIANTS, SEED_VARIANT, *torch_bn.RESNET_BLOCKS)
    if cfg.variant not in known:
        raise ValueError(f"--variant: no PyTorch network for {cfg.variant}; compare_torch.py runs {', '.join(known)}")
    if cfg.variant == SEED_VARIANT and cfg.width != 1.0:
        raise ValueError(f"--width: seed 002's VGG11-BN network has fixed widths; run {SEED_VARIANT} at --width 1, "
                         f"not {cfg.width:g}")


def torch_model(cfg: bench.BenchmarkConfig, train: bool) -> Any:
    """The PyTorch network of ``cfg.variant`` holding the variables JAX's benchmark uses
    (:func:`fcn_jax.benchmark.synthetic_variables`): ``benchmarks.torch_fcn.FCN`` for the VGG16 FCNs, seed 002's
    network for ``fcn-vgg11bn``, torchvision's ``fcn_resnet50/101`` (with the aux head when ``train``) for
    ``fcn-resnet50/101``. ValueError for a configuration without a PyTorch side (:func:`torch_side_error`)."""
    from benchmarks import torch_bn, torch_fcn

    torch_side_error(cfg)
    variables = bench.synthetic_variables(cfg.model_config(), cfg.seed)
    if cfg.variant in torch_fcn.VARIANTS:
        model = torch_fcn.FCN(cfg.variant, cfg.num_classes, width=cfg.width)
        model.load_state_dict(torch_state_dict(variables["params"]))
        return model
    model, fmt = ((torch_bn.SeedFCN(cfg.num_classes), SEED_SEGMENTATION) if cfg.variant == SEED_VARIANT else
                  (torch_bn.torchvision_fcn(cfg.variant, cfg.num_classes, cfg.width, aux=train), FCN_RESNET_TORCHVISION))
    model.load_state_dict(torch_bn_state_dict(variables, fmt, model.state_dict()))
    return model


def torch_step(cfg: bench.BenchmarkConfig, torch_mode: str, device: str) -> Callable[[], Any]:
    """One PyTorch step of ``cfg.mode`` in ``torch_mode``; its first call includes any compilation."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(cfg.seed)  # dropout masks
    channels_last = torch_mode.endswith("bf16_cl")
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    # The variables JAX's benchmark uses: both frameworks compute on the same numbers.
    model = torch_model(cfg, train=cfg.mode == "train").to(device, memory_format=memory_format)
    host = bench.host_batch(cfg, cfg.batch_size)
    image = torch.from_numpy(host["image"]).permute(0, 3, 1, 2).to(device, memory_format=memory_format)
    label = torch.from_numpy(host["label"]).long().to(device)
    forward = torch.compile(model) if torch_mode.startswith("compile") else model
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=channels_last)

    if cfg.mode == "train":
        model.train()
        loss_weights = {o.name: o.loss_weight for o in outputs(cfg.variant, cfg.num_classes)}

        def loss_of(logits: Any) -> Any:  # one tensor, or torchvision's {'out', 'aux'}: out + 0.5 aux
            if not isinstance(logits, dict):
                return F.cross_entropy(logits.float(), label, ignore_index=255)
            return sum(loss_weights[k] * F.cross_entropy(v.float(), label, ignore_index=255) for k, v in logits.items())
        weights = [p for n, p in model.named_parameters() if not n.endswith("bias")]
        biases = [p for n, p in model.named_parameters() if n.endswith("bias")]
        optimizer = torch.optim.SGD([{"params": weights, "weight_decay": WEIGHT_DECAY},
                                     {"params": biases, "lr": LR * BIAS_LR_MULT, "weight_decay": 0.0}],
                                    lr=LR, momentum=MOMENTUM)

        def step() -> Any:
            optimizer.zero_grad(set_to_none=True)
            with autocast:
                logits = forward(image)
            loss = loss_of(logits)
            loss.backward()
            optimizer.step()
            return loss
    else:
        model.eval()

        def step() -> Any:
            with torch.inference_mode(), autocast:
                logits = forward(image)
                return (logits["out"] if isinstance(logits, dict) else logits).argmax(1)
    return step


def measure_torch(cfg: bench.BenchmarkConfig, torch_mode: str, device: str) -> dict[str, Any]:
    """Times one PyTorch mode like :func:`fcn_jax.benchmark.run_benchmark` times JAX (median of
    ``cfg.steps`` steps after ``cfg.warmup``; the first step, with any compilation, is reported apart)."""
    import torch

    sync = (lambda _: torch.cuda.synchronize()) if device == "cuda" else (lambda _: None)
    if device == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.cuda.reset_peak_memory_stats()
    step = torch_step(cfg, torch_mode, device)
    try:
        start = time.perf_counter()
        sync(step())
        first_step_s = time.perf_counter() - start
        times = bench.time_steps(step, cfg.steps, cfg.warmup, sync=sync)
    finally:
        del step  # the model, optimizer and batch live in its closure
        gc.collect()
        torch._dynamo.reset()
        if device == "cuda":
            torch.cuda.empty_cache()
    summary = bench.summarize_times(times)
    return {"first_step_s": first_step_s, "step_time_s": summary, "images_per_s": cfg.batch_size / summary["median"],
            "peak_memory_bytes": int(torch.cuda.max_memory_allocated()) if device == "cuda" else None}


# ---------------------------------------------------------------------------------------- comparison

def compare(base: bench.BenchmarkConfig, modes: Sequence[str], jax_dtypes: Sequence[str],
            torch_modes: Sequence[str], device: Any = None, log: Callable[[str], None] = print,
            onnxruntime: bool = True) -> dict[str, Any]:
    """Runs every (mode, framework setting) on ``device`` (default: JAX's first device), and with
    ``onnxruntime`` the exported inference on onnxruntime's CPU provider; returns the rows and, per mode,
    best JAX / best PyTorch and best JAX / PyTorch eager (every row also / best PyTorch)."""
    import torch

    device = device or jax.devices()[0]
    info = bench.device_info([device])
    try:
        torch_dev, reason = torch_device(device.platform), ""
    except ValueError as e:
        torch_dev, reason = None, _failure(e)
    load_before = os.getloadavg()[0]
    rows: list[dict[str, Any]] = []
    # All PyTorch runs first: its caching allocator returns its memory before JAX's allocator grows.
    for mode in modes:
        for torch_mode in torch_modes:
            cfg = dataclasses.replace(base, mode=mode, dtype=TORCH_MODES[torch_mode])
            row = {"mode": mode, "framework": "pytorch", "setting": torch_mode, "dtype": cfg.dtype}
            log(f"{mode} pytorch {torch_mode} ...")
            if torch_dev is None:
                row["status"] = reason
            else:
                try:
                    row.update(measure_torch(cfg, torch_mode, torch_dev), status="ok")
                except Exception as e:  # report and go on: one failing mode must not hide the others
                    row["status"] = _failure(e)
            rows.append(row)
    for mode in modes:
        for dtype in jax_dtypes:
            cfg = dataclasses.replace(base, mode=mode, dtype=dtype)
            row = {"mode": mode, "framework": "jax", "setting": dtype, "dtype": dtype}
            log(f"{mode} jax {dtype} ...")
            try:
                result = bench.run_benchmark(cfg, [device])
                row.update({k: result[k] for k in ("compile_s", "step_time_s", "images_per_s", "flops_per_step",
                                                   "achieved_tflops", "mfu", "peak_memory_bytes")}, status="ok")
            except Exception as e:  # e.g. out of memory
                row["status"] = _failure(e)
            rows.append(row)
            jax.clear_caches()
            gc.collect()
    if onnxruntime and "infer" in modes:  # the exported forward pass on onnxruntime's CPU provider
        cfg = dataclasses.replace(base, mode="infer", dtype="float32")
        row = {"mode": "infer", "framework": "onnxruntime", "setting": "float32 (CPU)", "dtype": "float32"}
        log("infer onnxruntime float32 ...")
        try:
            result = bench.run_onnxruntime(cfg)
            row.update({k: result[k] for k in ("step_time_s", "images_per_s", "export_s", "session_s")},
                       status="ok", first_step_s=result["export_s"] + result["session_s"])
        except Exception as e:  # the extra missing, out of memory: reported, the others still count
            row["status"] = _failure(e)
        rows.append(row)
        gc.collect()
    rows.sort(key=lambda r: list(modes).index(r["mode"]))  # stable: per mode, PyTorch, JAX, onnxruntime rows
    _add_flop_rates(rows, info["kind"], info["platform"], base.batch_size)
    ratios = {}
    for mode in modes:
        ok = [r for r in rows if r["mode"] == mode and r["status"] == "ok"]
        best = {fw: max((r for r in ok if r["framework"] == fw), key=lambda r: r["images_per_s"], default=None)
                for fw in ("jax", "pytorch")}
        for r in ok:
            r["vs_best_pytorch"] = r["images_per_s"] / best["pytorch"]["images_per_s"] if best["pytorch"] else None
        eager = next((r for r in ok if r["framework"] == "pytorch" and r["setting"] == "eager"), None)
        if best["jax"] and best["pytorch"]:
            ratios[mode] = {"jax": best["jax"]["setting"], "pytorch": best["pytorch"]["setting"],
                            "ratio": best["jax"]["images_per_s"] / best["pytorch"]["images_per_s"],
                            "ratio_vs_eager": best["jax"]["images_per_s"] / eager["images_per_s"] if eager else None}
    return {"config": {**dataclasses.asdict(base), "image_size": list(base.image_size)},
            "device": info, "jax_version": jax.__version__, "torch_version": torch.__version__,
            "torch_threads": torch.get_num_threads(), "rows": rows, "ratios": ratios,
            # Host load (1-minute average) before and after: CPU timings are only as good as a quiet host.
            "load_average": [load_before, os.getloadavg()[0]],
            "xla_flags": os.environ.get("XLA_FLAGS", ""), "date": time.strftime("%Y-%m-%d", time.gmtime())}


def _add_flop_rates(rows: list[dict[str, Any]], kind: str, platform: str, batch_size: int) -> None:
    """TFLOP/s and MFU for PyTorch rows, from XLA's FLOP count of the same network and mode (JAX rows)."""
    flops_per_image = {r["mode"]: r["flops_per_step"] / batch_size for r in rows
                       if r["framework"] == "jax" and r["status"] == "ok" and r.get("flops_per_step")}
    for r in rows:
        if r["framework"] != "pytorch" or r["status"] != "ok" or r["mode"] not in flops_per_image:
            continue
        achieved = flops_per_image[r["mode"]] * r["images_per_s"]
        peak = bench.peak_flops(kind, r["dtype"]) if platform != "cpu" else None
        r["achieved_tflops"] = achieved / 1e12
        r["mfu"] = achieved / peak if peak else None


def format_table(report: dict[str, Any]) -> str:
    """The comparison as a markdown table, then one JAX / best-PyTorch line per mode. 'first step s'
    is JAX's compile time, or PyTorch's first step (with ``torch.compile``'s compilation)."""
    def fmt(value: Any, spec: str) -> str:
        return "" if value is None else f"{value:{spec}}"

    lines = ["| mode | framework | setting | images/s | step ms (median) | p10 | p90 | first step s | TFLOP/s | MFU "
             "| vs best PyTorch |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report["rows"]:
        if r["status"] != "ok":
            lines.append(f"| {r['mode']} | {r['framework']} | {r['setting']} | {r['status']} |" + " |" * 7)
            continue
        t = r["step_time_s"]
        first = r["compile_s"] if r["framework"] == "jax" else r["first_step_s"]  # onnxruntime: export + session
        lines.append(f"| {r['mode']} | {r['framework']} | {r['setting']} | {r['images_per_s']:.2f} | "
                     f"{t['median'] * 1e3:.1f} | {t['p10'] * 1e3:.1f} | {t['p90'] * 1e3:.1f} | {first:.1f} | "
                     f"{fmt(r.get('achieved_tflops'), '.3f')} | {fmt(r.get('mfu'), '.1%')} | "
                     f"{fmt(r.get('vs_best_pytorch'), '.2f')}{'x' if r.get('vs_best_pytorch') else ''} |")
    lines.append(f"\nhost load average (1 min) before / after: {report['load_average'][0]:.1f} / "
                 f"{report['load_average'][1]:.1f}")
    for mode, ratio in report["ratios"].items():
        vs_eager = ratio.get("ratio_vs_eager")
        lines.append(f"\n{mode}: best JAX ({ratio['jax']}) / best PyTorch ({ratio['pytorch']}) = {ratio['ratio']:.2f}x"
                     + (f"; / PyTorch eager float32 = {vs_eager:.2f}x" if vs_eager else ""))
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="compare_torch.py", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    bench_cli.add_benchmark_flags(parser, dtype=False, padding=False)
    parser.add_argument("--modes", type=_csv(bench.MODES), default=bench.MODES, metavar="train,infer",
                        help="what to measure (default: train,infer)")
    parser.add_argument("--jax-dtypes", type=_csv(tuple(DTYPES)), default=tuple(DTYPES), metavar="float32,bfloat16",
                        help="JAX compute dtypes (default: float32,bfloat16)")
    parser.add_argument("--torch-modes", type=_csv(tuple(TORCH_MODES)), default=tuple(TORCH_MODES),
                        metavar=",".join(TORCH_MODES),
                        help="PyTorch modes (default: all)")
    parser.add_argument("--no-onnxruntime", dest="onnxruntime", action="store_false",
                        help="infer mode: leave out the onnxruntime row (the same network exported to ONNX, float32, "
                             "on onnxruntime's CPU provider; needs fcn-jax[onnx])")
    parser.add_argument("--json", metavar="PATH", help="also write the report as JSON to PATH ('-': stdout)")
    return parser


@cli.user_errors("compare_torch.py")
def main(argv: Sequence[str] | None = None) -> int:
    """Runs the comparison and prints the markdown table."""
    args = build_parser().parse_args(argv)
    base = bench_cli.config_from_args(args)
    torch_side_error(base)
    platform.setup()
    import torch

    log = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    device = jax.devices()[0]
    height, width = base.image_size
    log(f"device: {device.device_kind} ({device.platform}); jax {jax.__version__} "
        f"(XLA_FLAGS={os.environ.get('XLA_FLAGS') or '(none)'}), torch {torch.__version__} "
        f"with {torch.get_num_threads()} threads; {base.variant} width {base.width}, batch {base.batch_size}, "
        f"image {height}x{width}")
    report = compare(base, args.modes, args.jax_dtypes, args.torch_modes, device, log=log,
                     onnxruntime=args.onnxruntime)
    print(format_table(report))
    if args.json:
        bench_cli.write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
