"""Throughput and MFU of the real train step and of inference, on synthetic batches already on device.

``python benchmark.py --variant fcn8s --mode train --batch-size 8 --image-size 512 --dtype bfloat16``
(the command line is :mod:`fcn_jax.cli.benchmark`)

What is timed is the compiled step only: for ``train``, exactly :func:`fcn_jax.train_lib.make_train_step`
(the jitted, data-parallel step with the donated TrainState, the 'modern' preset's solver and mean
loss, dropout on); for ``infer``, a jitted forward pass to the per-pixel argmax, sharded the same way.
The synthetic batch (random images, random labels with 10% void) and the parameters are placed on
the devices once, so neither an input pipeline nor a host-to-device copy is measured. After
``--warmup`` steps, each of ``--steps`` steps is timed to ``block_until_ready``.

``--batch-size`` is per device; the global batch is that times the number of devices, sharded over
all of them exactly as in training. FLOPs come from XLA's cost analysis of the compiled program
(per device, so multiplied by the device count); MFU is the achieved FLOP/s over the summed dense
peak of the devices for the compute dtype (see :data:`PEAKS`), not applicable on CPU.

Nothing here imports TensorFlow, so the benchmark runs where only jax is installed.
"""
from __future__ import annotations

import dataclasses
import datetime
import math
import os
import platform
import re
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from fcn_jax import configs, parallel
from fcn_jax.config import ModelConfig, TrainConfig
from fcn_jax.inference import forward, label_map
from fcn_jax.models import input_shape, main_output, outputs
from fcn_jax.train_lib import abstract_state, create_train_state, make_train_step

MODES = ("train", "infer")
VOID_FRACTION = 0.1

# ------------------------------------------------------------------------------------- device peaks

@dataclasses.dataclass(frozen=True)
class Peak:
    """Dense peak FLOP/s of one device.

    ``float32`` is the rate of float32 convolutions at JAX's default precision: TF32 tensor cores on
    A100 / H100 / H200 (XLA lets cuDNN use TF32 unless the precision is 'highest'), bf16 MXU passes on
    TPU. ``float32_highest`` is the plain IEEE float32 rate (CUDA cores; the TPU MXU emulates it in
    about six bf16 passes), used when ``jax_default_matmul_precision`` is 'highest' / 'float32'.
    """

    name: str
    pattern: str  # regular expression searched in the lower-cased ``device_kind``
    bfloat16: float
    float32: float
    float32_highest: float


T = 1e12
# Dense (no sparsity) peaks per chip / GPU from the vendors' datasheets:
# - TPU: cloud.google.com/tpu/docs/{v4,v5e,v5p,v6e} (bf16 peak per chip: 275, 197, 459, 918 TFLOP/s).
# - NVIDIA A100 datasheet (SXM and PCIe): BF16 312, TF32 156, FP32 19.5 TFLOP/s.
# - NVIDIA H100 datasheet, SXM5: BF16 989.4, TF32 494.7, FP32 66.9; PCIe: 756, 378, 51.2; NVL: 835.5,
#   417.5, 60 (the datasheets quote tensor rates with 2:4 sparsity; these are half of those).
# - NVIDIA H200 datasheet: the H100 SXM5 compute (same GH100 die); H200 NVL as H100 NVL. GH200: H100 SXM5.
# Order matters: the first pattern that matches wins.
PEAKS: tuple[Peak, ...] = (
    Peak("TPU v4", r"^tpu v4$", 275 * T, 275 * T, 275 * T / 6),
    Peak("TPU v5e", r"^tpu v5( lite|e)$", 197 * T, 197 * T, 197 * T / 6),
    Peak("TPU v5p", r"^tpu v5p?$", 459 * T, 459 * T, 459 * T / 6),
    Peak("TPU v6e", r"^tpu v6( lite|e)$", 918 * T, 918 * T, 918 * T / 6),
    Peak("A100", r"\ba100\b", 312 * T, 156 * T, 19.5 * T),
    Peak("H100 PCIe", r"\bh100\b.*\bpcie\b", 756 * T, 378 * T, 51.2 * T),
    Peak("H100 NVL", r"\bh100\b.*\bnvl\b", 835.5 * T, 417.5 * T, 60 * T),
    Peak("H100 SXM", r"\bh100\b", 989.4 * T, 494.7 * T, 66.9 * T),
    Peak("H200 NVL", r"\bh200\b.*\bnvl\b", 835.5 * T, 417.5 * T, 60 * T),
    Peak("H200 SXM", r"\bg?h200\b", 989.4 * T, 494.7 * T, 66.9 * T),
)


def find_peak(device_kind: str) -> Peak | None:
    """The peak-table entry for a ``jax.Device.device_kind`` (None: unknown device or CPU)."""
    kind = device_kind.strip().lower()
    return next((p for p in PEAKS if re.search(p.pattern, kind)), None)


def peak_flops(device_kind: str, dtype: str, precision: str | None = None) -> float | None:
    """Dense peak FLOP/s of one device for compute ``dtype`` at matmul ``precision`` (None: unknown)."""
    peak = find_peak(device_kind)
    if peak is None:
        return None
    if dtype == "bfloat16":
        return peak.bfloat16
    highest = (precision or "").lower() in ("highest", "float32")
    return peak.float32_highest if highest else peak.float32


# ------------------------------------------------------------------------------------------- config

@dataclasses.dataclass(frozen=True)
class BenchmarkConfig:
    """One measurement. ``batch_size`` is per device; ``image_size`` is (height, width)."""

    variant: str = "fcn8s"
    mode: str = "train"
    batch_size: int = 8
    image_size: tuple[int, int] = (512, 512)
    dtype: str = "bfloat16"
    padding: str = "reference"
    width: float = 1.0
    num_classes: int = 21
    steps: int = 20
    warmup: int = 3
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}; expected one of {MODES}")
        if self.batch_size < 1 or self.steps < 1 or self.warmup < 0:
            raise ValueError(f"need batch_size >= 1, steps >= 1 and warmup >= 0, got "
                             f"{self.batch_size}, {self.steps}, {self.warmup}")
        if len(self.image_size) != 2 or min(self.image_size) < 1:
            raise ValueError(f"image size must be two positive integers, got {self.image_size}")
        self.model_config()  # validates variant, dtype, padding, width, num_classes

    def model_config(self) -> ModelConfig:
        """The network: ``train.py``'s defaults apart from the benchmark's fields."""
        return ModelConfig(variant=self.variant, num_classes=self.num_classes, width=self.width,
                           padding=self.padding, dtype=self.dtype)

    def train_config(self, global_batch: int) -> TrainConfig:
        """The 'modern' preset (SGD momentum, mean loss, poly lr) on this network and global batch."""
        return configs.get_config("modern", self.variant, model=dataclasses.asdict(self.model_config()),
                                  batch_size=global_batch, crop_size=max(self.image_size), seed=self.seed)


# ----------------------------------------------------------------------------------------- workloads

@dataclasses.dataclass
class Workload:
    """A compiled step ready to run: ``run()`` dispatches one step and returns its outputs."""

    run: Callable[[], Any]
    compiled: jax.stages.Compiled
    compile_s: float


def label_classes(cfg: BenchmarkConfig) -> dict[str, int]:
    """Every label field an output of ``cfg``'s network learns from, and its output's class count."""
    classes: dict[str, int] = {}
    for o in outputs(cfg.variant, cfg.num_classes):
        classes.setdefault(o.batch_key, o.classes)
    return classes


def host_batch(cfg: BenchmarkConfig, batch_size: int) -> dict[str, np.ndarray]:
    """A synthetic batch on the host, NHWC: images ~ N(0, 50^2) (the scale of Caffe-preprocessed
    pixels) and int32 labels uniform over the classes with 10% void (255)."""
    rng = np.random.default_rng(cfg.seed)
    shape = (batch_size, *cfg.image_size)
    image = 50.0 * rng.standard_normal((*shape, 3), np.float32)
    batch = {"image": image}
    for key, n in label_classes(cfg).items():
        label = rng.integers(0, n, shape, dtype=np.int32)
        label[rng.random(shape) < VOID_FRACTION] = 255
        batch[key] = label
    return batch


def synthetic_batch(cfg: BenchmarkConfig, mesh: Mesh) -> dict[str, jax.Array]:
    """:func:`host_batch` of the global batch, placed on the devices once, sharded over ``'data'``."""
    sharding = parallel.data_sharding(mesh)
    batch = host_batch(cfg, cfg.batch_size * mesh.devices.size)
    return {k: jax.make_array_from_callback(v.shape, sharding, lambda index, v=v: v[index])
            for k, v in batch.items()}


def variable_shapes(model_config: ModelConfig) -> dict[str, Any]:
    """Every collection of the network's variables as ``jax.ShapeDtypeStruct`` leaves (nothing computed)."""
    model = model_config.build()
    return dict(jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros(input_shape(model_config.variant)))))


def synthetic_variables(model_config: ModelConfig, seed: int = 0) -> dict[str, Any]:
    """Variables of the network's shapes (every collection), drawn on the host: He-normal kernels, zero
    biases, BatchNorm scales 1 and running statistics mean 0, variance 1.

    Their values do not change the cost of dense convolutions; drawing them with NumPy avoids
    compiling the model's initialiser (tens of seconds on a small CPU).
    """
    shapes = variable_shapes(model_config)
    rng = np.random.default_rng(seed)

    def draw(path: tuple[Any, ...], leaf: jax.ShapeDtypeStruct) -> np.ndarray:
        name = getattr(path[-1], "key", None)
        if name in ("bias", "mean") or getattr(path[0], "key", None) not in ("params", "batch_stats"):
            return np.zeros(leaf.shape, leaf.dtype)
        if name in ("scale", "var") or leaf.ndim == 1:
            return np.ones(leaf.shape, leaf.dtype)
        fan_in = math.prod(leaf.shape[:-1])
        return (rng.standard_normal(leaf.shape, np.float32) * math.sqrt(2.0 / fan_in)).astype(leaf.dtype)

    return dict(jax.tree_util.tree_map_with_path(draw, shapes))


def synthetic_params(model_config: ModelConfig, seed: int = 0) -> Any:
    """The ``params`` of :func:`synthetic_variables` (what the PyTorch comparison copies)."""
    return synthetic_variables(model_config, seed)["params"]


def _compile(jitted: Any, *args: Any) -> tuple[jax.stages.Compiled, float]:
    start = time.perf_counter()
    compiled = jitted.lower(*args).compile()
    return compiled, time.perf_counter() - start


def train_workload(cfg: BenchmarkConfig, mesh: Mesh) -> Workload:
    """The training step of ``train.py`` (``make_train_step``) on a synthetic batch; each run updates
    the donated state in place, as in a training loop."""
    tcfg = cfg.train_config(cfg.batch_size * mesh.devices.size)
    variables = synthetic_variables(tcfg.model, cfg.seed)
    state = parallel.put_replicated(create_train_state(tcfg, tcfg.model.build(), variables), mesh)
    batch = synthetic_batch(cfg, mesh)
    compiled, compile_s = _compile(make_train_step(tcfg, mesh, variables["params"]), state, batch)
    holder = {"state": state}

    def run() -> Any:
        holder["state"], metrics = compiled(holder["state"], batch)
        return holder["state"], metrics

    return Workload(run, compiled, compile_s)


def make_predict_step(model_config: ModelConfig, mesh: Mesh) -> Callable[[Any, jax.Array], jax.Array]:
    """Jitted inference: (variables replicated, images (B, H, W, 3) sharded) -> per-pixel argmax (B, H, W)
    of the main output. ``variables``: every collection (a bare parameter tree is taken as the params)."""
    model = model_config.build()
    output = main_output(model_config.variant, model_config.num_classes).name

    def predict(variables: Any, images: jax.Array) -> jax.Array:
        logits = forward(model, variables, images)[output]
        return label_map(logits)

    data = parallel.data_sharding(mesh)
    return jax.jit(predict, in_shardings=(parallel.replicated(mesh), data), out_shardings=data)


def infer_workload(cfg: BenchmarkConfig, mesh: Mesh) -> Workload:
    """Inference (forward pass and argmax) on a synthetic batch."""
    model_config = cfg.model_config()
    variables = parallel.put_replicated(synthetic_variables(model_config, cfg.seed), mesh)
    images = synthetic_batch(cfg, mesh)["image"]
    compiled, compile_s = _compile(make_predict_step(model_config, mesh), variables, images)
    return Workload(lambda: compiled(variables, images), compiled, compile_s)


def abstract_step(cfg: BenchmarkConfig, mesh: Mesh) -> tuple[Any, tuple[Any, ...]]:
    """The jitted step of ``cfg``'s mode over ``mesh`` and its arguments as ``jax.ShapeDtypeStruct``s with
    their shardings (TrainState or variables replicated, the batch of ``cfg.batch_size`` per device split on
    'data'): what :func:`train_workload` / :func:`infer_workload` compile, for compiling without data
    (``jitted.lower(*args).compile()``; :mod:`fcn_jax.topology` does it for TPU slices)."""
    global_batch = cfg.batch_size * mesh.devices.size
    data, replicated = parallel.data_sharding(mesh), parallel.replicated(mesh)
    spec = lambda shape, dtype, sharding=data: jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)  # noqa: E731
    shape = (global_batch, *cfg.image_size)
    images = spec((*shape, 3), jnp.float32)
    if cfg.mode == "train":
        tcfg = cfg.train_config(global_batch)
        state = abstract_state(tcfg, tcfg.model.build(), mesh)
        batch = {"image": images, **{key: spec(shape, jnp.int32) for key in label_classes(cfg)}}
        return make_train_step(tcfg, mesh, state.params), (state, batch)
    model_config = cfg.model_config()
    variables = jax.tree.map(lambda s: spec(s.shape, s.dtype, replicated), variable_shapes(model_config))
    return make_predict_step(model_config, mesh), (variables, images)


def run_onnxruntime(cfg: BenchmarkConfig) -> dict[str, Any]:
    """``cfg``'s inference (forward pass to the per-pixel argmax) exported to ONNX (:func:`fcn_jax.deploy.
    export_onnx`, float32, fixed batch and size, the same synthetic variables and host batch as the JAX row) and
    timed on onnxruntime's CPU provider with its graph optimisations on: ``session.run`` and the host argmax,
    after ``cfg.warmup`` untimed runs. Keys: export_s, session_s (building the session), step_time_s,
    step_times_s, images_per_s, onnxruntime_version, dtype. ImportError naming the extra without it."""
    from fcn_jax import deploy, onnx_model
    from fcn_jax.classes import default_class_names
    from fcn_jax.loading import ModelInfo
    try:
        import onnxruntime as ort
    except ImportError:
        raise ImportError(f"the onnxruntime row needs onnxruntime: {onnx_model.INSTALL}") from None
    model_config = dataclasses.replace(cfg.model_config(), dtype="float32")
    info = ModelInfo(config=model_config, class_names=default_class_names(cfg.num_classes), preprocessing="caffe",
                     step=None, source="benchmark (synthetic variables)", meta={})
    start = time.perf_counter()
    proto = deploy.export_onnx(model_config.build(), synthetic_variables(model_config, cfg.seed), info,
                               image_size=cfg.image_size, batch_size=cfg.batch_size)
    export_s = time.perf_counter() - start
    start = time.perf_counter()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    session_s = time.perf_counter() - start
    del proto
    images = {session.get_inputs()[0].name: host_batch(cfg, cfg.batch_size)["image"]}
    times = time_steps(lambda: np.argmax(session.run(None, images)[0], axis=-1), cfg.steps, cfg.warmup,
                       sync=lambda out: out)
    step = summarize_times(times)
    return {"export_s": export_s, "session_s": session_s, "step_time_s": step, "step_times_s": times,
            "images_per_s": cfg.batch_size / step["median"], "onnxruntime_version": ort.__version__,
            "dtype": "float32"}


# ------------------------------------------------------------------------------------------ measuring

def time_steps(run: Callable[[], Any], steps: int, warmup: int,
               sync: Callable[[Any], Any] = jax.block_until_ready) -> list[float]:
    """Seconds per call of ``run`` for ``steps`` calls after ``warmup`` untimed ones; ``sync(outputs)``
    waits for the device (default ``jax.block_until_ready``) so each time is the whole step."""
    for _ in range(warmup):
        sync(run())
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        sync(run())
        times.append(time.perf_counter() - start)
    return times


def summarize_times(times: Sequence[float]) -> dict[str, float]:
    """Median, 10th / 90th percentile, mean, min and max of step times (seconds)."""
    t = np.asarray(times, np.float64)
    return {"median": float(np.median(t)), "p10": float(np.percentile(t, 10)),
            "p90": float(np.percentile(t, 90)), "mean": float(t.mean()), "min": float(t.min()),
            "max": float(t.max())}


def cost_analysis(compiled: Any) -> dict[str, float]:
    """XLA's cost analysis of a compiled program as one dict (jax returns a dict or a list of them)."""
    analysis = compiled.cost_analysis()
    if analysis is None:
        return {}
    if isinstance(analysis, dict):
        return dict(analysis)
    totals: dict[str, float] = {}
    for part in analysis:
        for key, value in (part or {}).items():
            totals[key] = totals.get(key, 0.0) + float(value)
    return totals


def executable_memory(compiled: Any) -> dict[str, int] | None:
    """Per-device buffer sizes (bytes) of a compiled program from XLA, or None where not reported."""
    try:
        stats = compiled.memory_analysis()
    except Exception:  # not implemented on every backend
        return None
    if stats is None:
        return None
    fields = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes", "temp_size_in_bytes",
              "generated_code_size_in_bytes")
    return {f.removesuffix("_size_in_bytes"): int(getattr(stats, f)) for f in fields if hasattr(stats, f)}


def peak_memory(devices: Sequence[Any]) -> int | None:
    """The largest ``peak_bytes_in_use`` among ``devices`` (None where the backend keeps no stats, e.g. CPU)."""
    peaks = []
    for device in devices:
        try:
            stats = device.memory_stats()
        except Exception:  # some backends raise instead of returning None
            stats = None
        if stats and "peak_bytes_in_use" in stats:
            peaks.append(int(stats["peak_bytes_in_use"]))
    return max(peaks) if peaks else None


def device_info(devices: Sequence[Any]) -> dict[str, Any]:
    """Platform, kind and count of the devices a benchmark runs on."""
    first = devices[0]
    return {"platform": first.platform, "kind": first.device_kind, "count": len(devices),
            "process_count": jax.process_count()}


def run_benchmark(cfg: BenchmarkConfig, devices: Sequence[Any] | None = None) -> dict[str, Any]:
    """Compiles and times ``cfg`` over ``devices`` (default: all); returns every figure as a JSON-ready dict.

    Keys: config, device, jax_version, date, xla_flags, compile_s, step_time_s (median / p10 / p90 /
    mean / min / max), images_per_s, flops_per_step (global, from XLA), flops_per_image,
    bytes_accessed_per_step, achieved_tflops, peak_tflops_per_device, mfu, peak_memory_bytes,
    executable_memory_bytes.
    """
    devices = list(jax.devices() if devices is None else devices)
    mesh = parallel.make_mesh(devices)
    global_batch = cfg.batch_size * len(devices)
    workload = (train_workload if cfg.mode == "train" else infer_workload)(cfg, mesh)
    times = time_steps(workload.run, cfg.steps, cfg.warmup)
    step = summarize_times(times)

    costs = cost_analysis(workload.compiled)
    per_device_flops = costs.get("flops")
    # XLA analyses the per-device (SPMD-partitioned) program; the global step does this on every device.
    flops = float(per_device_flops) * len(devices) if per_device_flops else None
    bytes_accessed = costs.get("bytes accessed")
    achieved = flops / step["median"] if flops else None
    info = device_info(devices)
    precision = jax.config.jax_default_matmul_precision
    peak = peak_flops(info["kind"], cfg.dtype, precision) if info["platform"] != "cpu" else None
    peak_entry = find_peak(info["kind"]) if peak else None
    info["peak_name"] = peak_entry.name if peak_entry else None
    return {
        "config": {**dataclasses.asdict(cfg), "image_size": list(cfg.image_size), "global_batch": global_batch},
        "device": info,
        "jax_version": jax.__version__,
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "matmul_precision": precision,
        "compile_s": workload.compile_s,
        "step_time_s": step,
        "step_times_s": times,
        "images_per_s": global_batch / step["median"],
        "flops_per_step": flops,
        "flops_per_image": flops / global_batch if flops else None,
        "bytes_accessed_per_step": float(bytes_accessed) * len(devices) if bytes_accessed else None,
        "achieved_tflops": achieved / 1e12 if achieved else None,
        "peak_tflops_per_device": peak / 1e12 if peak else None,
        "mfu": achieved / (peak * len(devices)) if achieved and peak else None,
        "peak_memory_bytes": peak_memory(devices),
        "executable_memory_bytes": executable_memory(workload.compiled),
    }


# --------------------------------------------------------------------------------------------- report

def _num(value: float | None, fmt: str, unit: str = "") -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:{fmt}}{unit}"


def format_result(result: dict[str, Any]) -> str:
    """A human-readable summary of :func:`run_benchmark`'s result."""
    c, d, t = result["config"], result["device"], result["step_time_s"]
    mem = result["executable_memory_bytes"] or {}
    gib = lambda b: None if b is None else b / 2**30  # noqa: E731
    lines = [
        f"{c['variant']} {c['mode']} {c['dtype']} padding={c['padding']} width={c['width']}: batch "
        f"{c['batch_size']}/device x {d['count']} = {c['global_batch']}, "
        f"image {c['image_size'][0]}x{c['image_size'][1]}",
        f"device: {d['count']} x {d['kind']} ({d['platform']}), jax {result['jax_version']}, "
        f"XLA_FLAGS={result['xla_flags'] or '(none)'}",
        f"compile: {result['compile_s']:.2f} s",
        f"step: median {t['median'] * 1e3:.2f} ms (p10 {t['p10'] * 1e3:.2f}, p90 {t['p90'] * 1e3:.2f}) over "
        f"{c['steps']} steps after {c['warmup']} warm-up",
        f"throughput: {result['images_per_s']:.2f} images/s",
        f"FLOPs (XLA): {_num(result['flops_per_step'] and result['flops_per_step'] / 1e9, '.2f', ' GFLOP')}/step, "
        f"{_num(result['flops_per_image'] and result['flops_per_image'] / 1e9, '.2f', ' GFLOP')}/image; "
        f"achieved {_num(result['achieved_tflops'], '.3f', ' TFLOP/s')}",
        f"MFU: {_num(result['mfu'] and 100 * result['mfu'], '.1f', '%')} (peak "
        f"{_num(result['peak_tflops_per_device'], '.1f', ' TFLOP/s')}/device {c['dtype']}"
        f"{', ' + d['peak_name'] if d.get('peak_name') else ''})",
        f"memory: peak in use {_num(gib(result['peak_memory_bytes']), '.2f', ' GiB')}; executable temp "
        f"{_num(gib(mem.get('temp')), '.2f', ' GiB')}, arguments {_num(gib(mem.get('argument')), '.2f', ' GiB')}",
    ]
    ort = result.get("onnxruntime")
    if ort is not None:
        t = ort["step_time_s"]
        lines.append(f"onnxruntime {ort['onnxruntime_version']} (CPU provider, {ort['dtype']}, same batch): "
                     f"{ort['images_per_s']:.2f} images/s, median {t['median'] * 1e3:.2f} ms (p10 "
                     f"{t['p10'] * 1e3:.2f}, p90 {t['p90'] * 1e3:.2f}); "
                     f"{ort['images_per_s'] / result['images_per_s']:.2f}x JAX {c['dtype']} (export "
                     f"{ort['export_s']:.1f} s, session {ort['session_s']:.1f} s)")
    return "\n".join(lines)
