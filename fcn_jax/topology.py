"""TPU slices planned on any host: compile the real train step or inference for a TPU topology, without a TPU.

With the ``libtpu`` wheel installed (``pip install "jax[tpu]==<jax version>"``),
``jax.experimental.topologies`` describes a slice's devices and XLA's TPU compiler builds executables for
them on a CPU host (what MaxText's ``train_compile.py`` does to check that a configuration fits a pod).
:func:`analyse` compiles exactly what :func:`fcn_jax.benchmark.run_benchmark` would run there
(``train.py``'s ``make_train_step`` data-parallel over every chip of the slice, or forward + argmax) on
abstract arguments and reports, per chip, from the compiler's analyses:

- memory: arguments, outputs, temporaries and generated code, and their sum less the donated (aliased)
  buffers as the estimated peak, against the chip's HBM;
- FLOPs and bytes accessed per step (the per-chip SPMD program);
- a roofline bound: a step takes at least max(FLOPs / peak bf16 rate, bytes / HBM bandwidth), so at most
  ``batch / that`` images/s per chip. These are compiler estimates, never measurements.

A batch the compiler cannot fit is reported as ``fits: False`` with what it needs, not raised. Slices are
named as Cloud TPU names them (``v5e-8``, ``v4-8``: the count is chips for v5e / v6e and TensorCores
for v4 / v5p, whose chips have two, run as one megacore device) or as ``generation:topology``
(``v5e:2x4``, ``v4:2x2x1``); multi-host slices are compiled as the multi-process program ``train.py``
runs there (the devices span hosts).
"""
from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import math
import os
import re
import time
from collections.abc import Iterator, Sequence
from typing import Any

import jax

from fcn_jax import benchmark as bench
from fcn_jax import parallel

INSTALL = f'pip install "jax[tpu]=={jax.__version__}" (brings libtpu; no TPU needed to compile for one)'
GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Generation:
    """One TPU generation: how its slices are named and laid out, and the chip's HBM.

    ``cores_per_name``: TensorCores a slice name counts per chip (v4 / v5p names count cores, 2 per
    chip; v5e / v6e names count chips). ``host_bounds``: chips per host (x, y, z) of multi-host slices.
    ``chip_config``: libtpu's chip configuration ('megacore': a chip's two cores as one device, as jax
    runs v4 and v5p). HBM capacity and bandwidth per chip are the figures of Cloud TPU's system
    architecture pages (cloud.google.com/tpu/docs/v4, v5e, v5p, v6e); the bf16 peak is
    :data:`fcn_jax.benchmark.PEAKS`' (the same pages)."""

    name: str
    dims: int
    cores_per_name: int
    host_bounds: tuple[int, int, int]
    chip_config: str
    accelerator_type: str  # how TPU_ACCELERATOR_TYPE names it ('v5litepod-8')
    hbm_bytes: int
    hbm_bytes_per_s: float


GENERATIONS: dict[str, Generation] = {
    # v4: 32 GiB HBM2, 1200 GBps; 4 chips per host (2x2x1).
    "v4": Generation("v4", 3, 2, (2, 2, 1), "megacore", "v4", 32 * GIB, 1200e9),
    # v5e: 16 GB HBM2 (16 GiB), 819 GBps; 8 chips per host (2x4; 1x1 and 2x2 slices are one host too).
    "v5e": Generation("v5e", 2, 1, (2, 4, 1), "default", "v5litepod", 16 * GIB, 819e9),
    # v5p: 95 GiB HBM2e, 2765 GBps; 4 chips per host (2x2x1).
    "v5p": Generation("v5p", 3, 2, (2, 2, 1), "megacore", "v5p", 95 * GIB, 2765e9),
    # v6e (Trillium): 32 GB HBM (32 GiB), 1638 GBps; 8 chips per host (2x4).
    "v6e": Generation("v6e", 2, 1, (2, 4, 1), "default", "v6e", 32 * GIB, 1638e9),
}
ALIASES = {"v5litepod": "v5e", "v5lite": "v5e", "v6": "v6e", "v5": "v5p"}


@dataclasses.dataclass(frozen=True)
class Slice:
    """A TPU slice: a generation and its chips' arrangement ``shape`` (x, y[, z])."""

    generation: Generation
    shape: tuple[int, ...]

    @property
    def chips(self) -> int:
        return math.prod(self.shape)

    @property
    def name(self) -> str:
        """Cloud TPU's accelerator type, e.g. 'v5e-8', 'v4-8' (4 chips of 2 TensorCores)."""
        return f"{self.generation.name}-{self.chips * self.generation.cores_per_name}"

    @property
    def topology(self) -> str:
        """libtpu's topology name, e.g. 'v5e:2x4', 'v4:2x2x1'."""
        return f"{self.generation.name}:{'x'.join(map(str, self.shape))}"

    @property
    def host_bounds(self) -> tuple[int, int, int]:
        """Chips per host: the whole slice when it is smaller than a host, else the generation's."""
        full = (*self.shape, 1, 1)[:3]
        bounds = self.generation.host_bounds
        return full if all(f <= b for f, b in zip(full, bounds)) else bounds

    @property
    def hosts(self) -> int:
        return self.chips // math.prod(self.host_bounds)


def _grow(chips: int, dims: int) -> tuple[int, ...] | None:
    """The standard shape of a power-of-two slice: from 2x2x1 (3-D) or 1x1 (2-D), double the last of the
    smallest axes (v4: 2x2x1, 2x2x2, 2x2x4, 2x4x4, 4x4x4, ...; v5e: 1x1, 2x2, 2x4, 4x4, 4x8, 8x8, ...)."""
    shape = [2, 2, 1] if dims == 3 else [1, 1]
    while math.prod(shape) < chips:
        smallest = min(shape)
        shape[max(i for i, s in enumerate(shape) if s == smallest)] *= 2
    return tuple(shape) if math.prod(shape) == chips else None


def parse_slice(text: str) -> Slice:
    """'v5e-8', 'v5litepod-8', 'v4-8', 'v5p-8', 'v6e-8', 'v4-32' (power-of-two slices) or
    'v5e:2x4', 'v4:2x2x2' (any arrangement). ValueError with what was expected otherwise."""
    expected = ("expected a TPU slice like v5e-8, v4-8, v5p-8, v6e-8 (Cloud TPU's accelerator type) or "
                "v5e:2x4, v4:2x2x1 (generation:topology), generations v4, v5e, v5p, v6e")
    match = re.fullmatch(r"\s*(?:tpu\s*)?(v\d+[a-z]*)\s*([-:])\s*(\d+(?:x\d+)*)\s*", text.lower())
    if not match:
        raise ValueError(f"{text!r}: {expected}")
    name = ALIASES.get(match.group(1), match.group(1))
    if name not in GENERATIONS:
        raise ValueError(f"{text!r}: unknown TPU generation {match.group(1)!r}; {expected}")
    gen = GENERATIONS[name]
    if match.group(2) == ":":
        shape = tuple(int(s) for s in match.group(3).split("x"))
        if len(shape) != gen.dims or min(shape) < 1:
            raise ValueError(f"{text!r}: a {name} topology has {gen.dims} positive axes "
                             f"({'AxBxC' if gen.dims == 3 else 'AxB'})")
        return Slice(gen, shape)
    if "x" in match.group(3):
        raise ValueError(f"{text!r}: {expected}")
    count = int(match.group(3))
    shape = _grow(count // gen.cores_per_name, gen.dims) if count % gen.cores_per_name == 0 and count else None
    if shape is None:
        unit = "TensorCores, 2 per chip" if gen.cores_per_name == 2 else "chips"
        first = [f"{name}-{gen.cores_per_name * 2 ** k * (4 if gen.dims == 3 else 1)}" for k in range(4)]
        if gen.dims == 2:
            first.remove(f"{name}-2")
        raise ValueError(f"{text!r}: {name}-N counts {unit}, a power-of-two number of chips ({', '.join(first)}, "
                         f"...); give other arrangements as {name}:{'AxBxC' if gen.dims == 3 else 'AxB'}")
    return Slice(gen, shape)


def available() -> bool:
    """Whether libtpu (the TPU compiler) is installed."""
    from importlib.util import find_spec
    return find_spec("libtpu") is not None


def _c_environment() -> set[str]:
    """The names in the process's C environment, which libtpu changes with setenv() behind ``os.environ``'s
    back (children inherit it); ``os.environ``'s names where libc cannot be read."""
    try:
        environ = ctypes.POINTER(ctypes.c_char_p).in_dll(ctypes.CDLL(None), "environ")
    except (OSError, ValueError, AttributeError):
        return set(os.environ)
    names, i = set(), 0
    while environ[i]:
        names.add(environ[i].split(b"=", 1)[0].decode(errors="replace"))
        i += 1
    return names


@contextlib.contextmanager
def _libtpu_environment(tpu: Slice) -> Iterator[None]:
    """The environment libtpu reads while it loads and compiles: without a TPU VM's metadata it would print
    warnings about the accelerator type and worker hostnames, and a second process would find the TPU lock
    file taken. Afterwards everything is as before, including what libtpu itself set with setenv()
    (CLOUD_TPU_TASK_ID, TPU_WORKER_ID, ...), so neither this process nor its children later mistake the
    host for a TPU worker (``platform.initialize_distributed`` would wait for a pod's coordinator)."""
    values = {"TPU_ACCELERATOR_TYPE": f"{tpu.generation.accelerator_type}-{tpu.chips}",
              "TPU_WORKER_HOSTNAMES": "localhost", "TPU_WORKER_ID": "0", "TPU_SKIP_MDS_QUERY": "1",
              "ALLOW_MULTIPLE_LIBTPU_LOAD": "1"}  # compiling touches no TPU: no lock on /tmp/libtpu_lockfile
    saved = {k: os.environ.get(k) for k in values}
    before = _c_environment()
    os.environ.update({k: v for k, v in values.items() if saved[k] is None})
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
        for name in _c_environment() - before - set(os.environ):
            os.unsetenv(name)


def devices(tpu: Slice) -> list[Any]:
    """The slice's compile-only devices (one per chip; megacore on v4 / v5p), spanning its hosts.
    ImportError with the install command when libtpu is missing."""
    if not available():
        raise ImportError(f"--topology needs libtpu: {INSTALL}")
    from jax.experimental import topologies
    with _libtpu_environment(tpu):
        desc = topologies.get_topology_desc(tpu.topology, platform="tpu", chip_config_name=tpu.generation.chip_config,
                                            chips_per_host_bounds=tpu.host_bounds)
    return list(desc.devices)


# ------------------------------------------------------------------------------------------ analysis

_SIZE = r"([\d.]+)\s*([KMGT]?)i?B?"
_OUT_OF_MEMORY = (  # XLA TPU's two messages: memory-space assignment's, and the early check of temporaries
    re.compile(rf"Used\s+{_SIZE}\s+of\s+{_SIZE}\s+hbm", re.IGNORECASE),
    re.compile(rf"required for [^(]*\({_SIZE}\)\s*exceeds available HBM\s*\({_SIZE}\)", re.IGNORECASE),
)
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def out_of_memory(message: str) -> tuple[int, int] | None:
    """(bytes needed, bytes available) from XLA's TPU out-of-memory message ('Used 20.55G of 15.75G hbm',
    'the total memory required for HLO temporaries (77.55G) exceeds available HBM (15.75G)'), or None."""
    for pattern in _OUT_OF_MEMORY:
        match = pattern.search(message)
        if match:
            need, unit, have, have_unit = match.groups()
            return int(float(need) * _UNITS[unit.upper()]), int(float(have) * _UNITS[have_unit.upper()])
    return None


def memory_record(compiled: Any) -> dict[str, int]:
    """Per-chip bytes from XLA's memory analysis: argument, output, alias, temp, generated_code, and
    ``peak`` = argument + output - alias + temp + generated_code (an estimate: all live at once)."""
    mem = bench.executable_memory(compiled) or {}
    mem["peak"] = (mem.get("argument", 0) + mem.get("output", 0) - mem.get("alias", 0) + mem.get("temp", 0)
                   + mem.get("generated_code", 0))
    return mem


def roofline(flops: float | None, bytes_accessed: float | None, peak_flops: float,
             bytes_per_s: float) -> float | None:
    """Lower bound of a step's seconds: max(FLOPs / peak FLOP/s, bytes / HBM bandwidth) (None without FLOPs)."""
    if not flops:
        return None
    return max(flops / peak_flops, (bytes_accessed or 0.0) / bytes_per_s)


def analyse(cfg: bench.BenchmarkConfig, tpu: Slice, chips: Sequence[Any] | None = None) -> dict[str, Any]:
    """Compiles ``cfg`` (``batch_size`` per chip, data-parallel over the slice) for ``tpu``; nothing runs.

    Returns a JSON-ready dict: config, slice (name, topology, chips, hosts, device kind, HBM, bandwidth,
    bf16 peak), fits (whether XLA's TPU compiler placed the program in the chip's HBM), compile_s, and,
    when it fits, memory (per chip, :func:`memory_record`), flops_per_step and bytes_accessed_per_step
    (per chip), roofline_step_s and images_per_s_per_chip_bound; when it does not, needed_bytes and
    available_bytes (from the compiler's message; None where it gives none) and compiler_message.
    ``chips``: the slice's devices (default :func:`devices`).
    """
    chips = devices(tpu) if chips is None else list(chips)
    kind = chips[0].device_kind
    peak = bench.find_peak(kind)
    if peak is None:
        raise ValueError(f"no peak rate known for device kind {kind!r} (see fcn_jax.benchmark.PEAKS)")
    mesh = parallel.make_mesh(chips)
    gen = tpu.generation
    record: dict[str, Any] = {
        "config": {**dataclasses.asdict(cfg), "image_size": list(cfg.image_size),
                   "global_batch": cfg.batch_size * len(chips)},
        "slice": {"name": tpu.name, "topology": tpu.topology, "chips": len(chips), "hosts": tpu.hosts,
                  "device_kind": kind, "hbm_bytes": gen.hbm_bytes, "hbm_bytes_per_s": gen.hbm_bytes_per_s,
                  "peak_bf16_flops": peak.bfloat16},
        "jax_version": jax.__version__,
        "libtpu_version": libtpu_version(),
        "source": "compiler analysis (XLA TPU cost and memory analysis), not a measurement",
    }
    jitted, args = bench.abstract_step(cfg, mesh)
    start = time.perf_counter()
    try:
        with _libtpu_environment(tpu):
            compiled = jitted.lower(*args).compile()
    except Exception as e:  # noqa: BLE001  (XLA raises its own runtime error types)
        sizes = out_of_memory(str(e))
        if sizes is None and "RESOURCE_EXHAUSTED" not in str(e):
            raise
        record.update(fits=False, compile_s=time.perf_counter() - start, needed_bytes=sizes and sizes[0],
                      available_bytes=sizes and sizes[1], compiler_message=(str(e).strip().splitlines() or [""])[0][:300])
        return record
    record["compile_s"] = time.perf_counter() - start
    costs = bench.cost_analysis(compiled)
    flops, bytes_accessed = costs.get("flops"), costs.get("bytes accessed")
    step_s = roofline(flops, bytes_accessed, peak.bfloat16, gen.hbm_bytes_per_s)
    mem = memory_record(compiled)
    record.update(fits=True, memory=mem, flops_per_step=flops,
                  bytes_accessed_per_step=bytes_accessed, roofline_step_s=step_s,
                  images_per_s_per_chip_bound=cfg.batch_size / step_s if step_s else None)
    return record


def max_batch(cfg: bench.BenchmarkConfig, tpu: Slice, limit: int = 1024,
              chips: Sequence[Any] | None = None, report: Any = None) -> dict[str, Any]:
    """The largest per-chip batch (at most ``limit``) that XLA's TPU compiler fits in HBM, each candidate
    decided by a compile. From ``cfg.batch_size``, the next candidate is where the line through the two
    batches nearest the boundary reaches the HBM the compiler can use (memory grows linearly with the
    batch; after the first compile, the line through it whose growth is its temporaries), or the
    midpoint when the last two compiles fell on the same side, or when the line is less than half as
    steep as the first compile's temporaries per image (near its limit XLA rematerialises, so memory
    stops growing with the batch and the line would overshoot). Usually 3-5 compiles, up to 14. Returns
    {'max_batch': n (0: not even batch 1), 'limit', 'tried': {batch: fits}, 'record': :func:`analyse`'s
    record of that batch (of the smallest tried when none fits)}. ``report(record)`` sees each compile."""
    chips = devices(tpu) if chips is None else list(chips)
    records: dict[int, dict[str, Any]] = {}
    sides: list[bool] = []
    stepped: list[int] = []  # batches after which the line was at or below the largest fit

    def peak(record: dict[str, Any]) -> int | None:
        return record["memory"]["peak"] if record["fits"] else record.get("needed_bytes")

    def growth() -> float:
        """Bytes per image of the first compile's temporaries: how memory grows before XLA rematerialises."""
        first = records[next(iter(records))]
        temp = first.get("memory", {}).get("temp") if first["fits"] else None
        return temp / first["config"]["batch_size"] if temp else 0.0

    def guess(low: int, high: int) -> int:
        bracketed = low > 0 and high <= limit
        if bracketed and sides[-2:] in ([True, True], [False, False]):
            return (low + high) // 2
        fitting = [(b, peak(r)) for b, r in sorted(records.items()) if r["fits"]]
        failing = [(b, peak(r)) for b, r in sorted(records.items()) if not r["fits"] and peak(r)]
        if not fitting:
            return high // 2
        if failing:
            (b0, p0), (b1, p1) = fitting[-1], failing[0]
        elif len(fitting) >= 2:
            (b0, p0), (b1, p1) = fitting[-2:]
        elif records[fitting[0][0]].get("memory", {}).get("temp"):  # one compile: temporaries grow with the batch
            b1, p1 = fitting[0]
            b0, p0 = 0, p1 - records[b1]["memory"]["temp"]
        else:
            return 2 * low if high > limit else (low + high) // 2
        usable = next((r["available_bytes"] for r in records.values() if r.get("available_bytes")),
                      tpu.generation.hbm_bytes)
        slope = (p1 - p0) / (b1 - b0)
        if slope <= 0 or slope < growth() / 2:  # flattening: the compiler trades recomputation for memory
            return (low + high) // 2 if high <= limit else min(2 * low, limit)  # near the limit, so bisect
        line = int(b0 + (usable - p0) // slope)
        if line > low:
            return line
        if stepped:  # the line said "here" twice and was wrong: it underestimates, so double
            return 2 * low if high > limit else (low + high) // 2
        stepped.append(low)
        return low + 1  # at or below the largest fit: try the next one

    low, high = 0, limit + 1  # low fits (0: none yet), high does not (limit + 1: none yet)
    batch = max(1, min(cfg.batch_size, limit))
    while True:
        record = records[batch] = analyse(dataclasses.replace(cfg, batch_size=batch), tpu, chips)
        sides.append(record["fits"])
        if report is not None:
            report(record)
        low, high = (batch, high) if record["fits"] else (low, batch)
        if high - low <= 1:
            break
        batch = guess(low, high)
        if not low < batch < high:  # the line points outside the bracket: double, or halve the bracket
            batch = min(2 * low, limit) if high > limit else (low + high) // 2
    best = low if low else min(records)
    return {"max_batch": low, "limit": limit, "tried": {str(b): r["fits"] for b, r in sorted(records.items())},
            "record": records[best]}


def libtpu_version() -> str | None:
    """The installed libtpu's version (None: not installed, or no package metadata)."""
    try:
        from importlib.metadata import version
        return version("libtpu")
    except Exception:  # noqa: BLE001  (not installed, or a development build without metadata)
        return None


# -------------------------------------------------------------------------------------------- report

def compile_line(record: dict[str, Any]) -> str:
    """One line per compile of a batch search: 'batch 16/chip: fits, peak 14.89 GiB (205 s)'."""
    state = f"fits, peak {record['memory']['peak'] / GIB:.2f} GiB" if record["fits"] else "does not fit"
    return f"batch {record['config']['batch_size']}/chip: {state} ({record['compile_s']:.0f} s)"


def format_record(record: dict[str, Any]) -> str:
    """A human-readable summary of :func:`analyse`'s record; says that the figures are the compiler's."""
    c, s = record["config"], record["slice"]
    head = (f"{c['variant']} {c['mode']} {c['dtype']} padding={c['padding']} width={c['width']}: batch "
            f"{c['batch_size']}/chip x {s['chips']} chips = {c['global_batch']}, image "
            f"{c['image_size'][0]}x{c['image_size'][1]}")
    where = (f"slice {s['name']} ({s['topology']}, {s['chips']} x {s['device_kind']}, {s['hosts']} host"
             f"{'s' if s['hosts'] != 1 else ''}), compiled on this host in {record['compile_s']:.1f} s "
             f"(jax {record['jax_version']}, libtpu {record['libtpu_version'] or '?'}); figures are the "
             f"compiler's analysis, not a measurement")
    hbm = s["hbm_bytes"] / GIB
    if not record["fits"]:
        need = record.get("needed_bytes")
        needs = f"needs {need / GIB:.2f} GiB of {hbm:g}" if need else f"needs more than the {hbm:g} GiB of HBM"
        said = f" (XLA: {record['compiler_message']})" if record.get("compiler_message") else ""
        return "\n".join([head, where, f"does not fit: {needs} per chip{said}"])
    m = record["memory"]
    lines = [head, where,
             f"memory per chip: peak {m['peak'] / GIB:.2f} GiB of {hbm:g} (arguments {m.get('argument', 0) / GIB:.2f}, "
             f"outputs {m.get('output', 0) / GIB:.2f}, aliased {m.get('alias', 0) / GIB:.2f}, temporaries "
             f"{m.get('temp', 0) / GIB:.2f}, code {m.get('generated_code', 0) / GIB:.3f})"]
    flops, moved = record["flops_per_step"], record["bytes_accessed_per_step"]
    lines.append(f"per chip per step: {bench._num(flops and flops / 1e12, '.3f', ' TFLOP')}, "
                 f"{bench._num(moved and moved / 1e9, '.2f', ' GB')} accessed")
    if record["roofline_step_s"]:
        lines.append(f"roofline (peak {s['peak_bf16_flops'] / 1e12:g} TFLOP/s bf16, {s['hbm_bytes_per_s'] / 1e9:g} "
                     f"GB/s HBM): a step takes at least {record['roofline_step_s'] * 1e3:.2f} ms, so at most "
                     f"{record['images_per_s_per_chip_bound']:.1f} images/s per chip")
    return "\n".join(lines)
