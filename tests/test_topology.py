"""TPU slices planned on this CPU host (fcn_jax.topology, benchmark.py --topology): slice names, the batch
search, and real compiles for v5e-8 / v5e-16 with libtpu, checked against the CPU compile's FLOP count and
an analytic count, and against the byte sizes of the arguments computed here."""
import dataclasses
import importlib.util
import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fcn_jax import benchmark as bench
from fcn_jax import parallel, platform, topology
from fcn_jax.cli import benchmark as bench_cli
from fcn_jax.inference import label_map
from test_benchmark import forward_flops

GIB = 2**30
LIBTPU = importlib.util.find_spec("libtpu") is not None
needs_libtpu = pytest.mark.skipif(not LIBTPU, reason=f"libtpu is not installed here: {topology.INSTALL} "
                                                     "(requirements-dev.txt has it where the wheel installs)")
SMALL = dict(variant="fcn8s", mode="infer", batch_size=2, image_size=(64, 64), width=0.125, dtype="bfloat16")


# ------------------------------------------------------------------------------------------ names

@pytest.mark.parametrize("text, topo, chips, hosts", [
    ("v5e-8", "v5e:2x4", 8, 1), ("v5litepod-8", "v5e:2x4", 8, 1), ("v5e-1", "v5e:1x1", 1, 1),
    ("v5e-4", "v5e:2x2", 4, 1), ("v5e-16", "v5e:4x4", 16, 2), ("v5e-256", "v5e:16x16", 256, 32),
    ("v6e-8", "v6e:2x4", 8, 1), ("v6e-32", "v6e:4x8", 32, 4),
    ("v4-8", "v4:2x2x1", 4, 1), ("v4-16", "v4:2x2x2", 8, 2), ("v4-32", "v4:2x2x4", 16, 4),
    ("v4-128", "v4:4x4x4", 64, 16), ("v5p-8", "v5p:2x2x1", 4, 1), ("v5p-64", "v5p:2x4x4", 32, 8),
    ("v5e:2x4", "v5e:2x4", 8, 1), ("v4:2x2x3", "v4:2x2x3", 12, 3), ("TPU v4:2x2x1", "v4:2x2x1", 4, 1),
])
def test_slice_names(text, topo, chips, hosts):
    """Cloud TPU's accelerator types (cores for v4 / v5p, chips for v5e / v6e) and topology names: the
    chip arrangements of Cloud TPU's tables (v4-32 is 2x2x4, v5e-256 is 16x16) and hosts of 4 (v4,
    v5p) or 8 (v5e, v6e) chips."""
    tpu = topology.parse_slice(text)
    assert (tpu.topology, tpu.chips, tpu.hosts) == (topo, chips, hosts)
    if chips & (chips - 1) == 0:  # the accelerator-type name of a power-of-two slice names it back
        assert topology.parse_slice(tpu.name) == tpu


@pytest.mark.parametrize("text, message", [
    ("v5e-9", "v5e-N counts chips, a power-of-two number of chips (v5e-1, v5e-4, v5e-8"),
    ("v4-4", "v4-N counts TensorCores, 2 per chip"), ("v4-7", "TensorCores"), ("v3-8", "unknown TPU generation"),
    ("v5e:2x2x1", "a v5e topology has 2 positive axes (AxB)"), ("tpu", "expected a TPU slice like v5e-8"),
    ("v4:2x0x1", "3 positive axes"),
])
def test_bad_slice_names(text, message):
    with pytest.raises(ValueError) as e:
        topology.parse_slice(text)
    assert message in str(e.value) and repr(text) in str(e.value)


def run_cli(args):
    try:
        return bench_cli.main(args)
    except SystemExit as e:  # argparse errors
        return e.code


@pytest.mark.parametrize("args, message", [
    (["--topology", "v5e-12"], "argument --topology: 'v5e-12': v5e-N counts chips"),
    (["--max-batch"], "--max-batch: only with --topology"),
    (["--topology", "v5e-8", "--mode", "infer", "--onnxruntime"], "--onnxruntime: not with --topology"),
])
def test_bad_topology_flags_are_one_line(args, message, capsys):
    assert run_cli(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and err[0].startswith("benchmark.py: error:")


# ------------------------------------------------------------------------------ compiler's figures

@pytest.mark.parametrize("message, need, have", [
    ("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO temporaries (77.55G) "
     "exceeds available HBM (15.75G).", 77.55 * GIB, 15.75 * GIB),
    ("RESOURCE_EXHAUSTED: XLA:TPU compile permanent error. Ran out of memory in memory space hbm. Used 20.55G of "
     "15.75G hbm. Exceeded hbm capacity by 4.80G.", 20.55 * GIB, 15.75 * GIB),
    ("Used 900.5M of 15.75G hbm", 900.5 * 2**20, 15.75 * GIB),
])
def test_out_of_memory_messages(message, need, have):
    assert topology.out_of_memory(message) == (int(need), int(have))
    assert topology.out_of_memory("RESOURCE_EXHAUSTED: something else") is None


def test_roofline_is_the_slower_of_compute_and_memory():
    assert topology.roofline(2e12, 1e9, 1e12, 1e12) == 2.0  # compute-bound
    assert topology.roofline(1e9, 3e12, 1e12, 1e12) == 3.0  # memory-bound
    assert topology.roofline(None, 1e9, 1e12, 1e12) is None


@pytest.mark.parametrize("fixed_gib, per_image_gib, usable_gib, start, gen", [
    (1.09, 0.96, 15.75, 8, "v5e-8"),   # the boundary just above the start
    (1.09, 0.96, 94.0, 8, "v5p-8"),    # far above it
    (1.0, 20.0, 15.75, 8, "v5e-8"),    # not even batch 1
    (1.0, 0.5, 15.75, 1, "v5e-8"),
    (0.1, 1e-6, 15.75, 8, "v5e-8"),    # everything up to the limit fits
    (2.0, 3.0, 15.75, 64, "v5e-8"),    # the start is far too big
])
def test_max_batch_search_finds_the_boundary(monkeypatch, fixed_gib, per_image_gib, usable_gib, start, gen):
    """The search against a compiler whose memory is fixed + batch x per-image: the largest batch with
    fixed + batch x per-image <= usable (a brute-force loop), in few compiles, each batch compiled once."""
    usable, limit = usable_gib * GIB, 1024
    calls = []

    def fake_analyse(cfg, tpu, chips):
        calls.append(cfg.batch_size)
        need = (fixed_gib + cfg.batch_size * per_image_gib) * GIB
        if need <= usable:
            memory = {"peak": int(need), "temp": int(cfg.batch_size * per_image_gib * GIB)}
            return {"fits": True, "memory": memory, "config": {"batch_size": cfg.batch_size}}
        return {"fits": False, "needed_bytes": int(need), "available_bytes": int(usable),
                "config": {"batch_size": cfg.batch_size}}

    monkeypatch.setattr(topology, "analyse", fake_analyse)
    result = topology.max_batch(bench.BenchmarkConfig(batch_size=start), topology.parse_slice(gen), limit=limit,
                                chips=[None])
    truth = max([b for b in range(1, limit + 1) if (fixed_gib + b * per_image_gib) * GIB <= usable], default=0)
    assert result["max_batch"] == truth
    assert len(calls) == len(set(calls)) <= 10
    assert result["tried"] == {str(b): (fixed_gib + b * per_image_gib) * GIB <= usable for b in sorted(calls)}
    assert result["record"]["config"]["batch_size"] == (truth or min(calls))


@pytest.mark.parametrize("per_image_gib, start", [(0.8, 8), (0.1, 8), (0.8, 40)])
def test_max_batch_search_when_the_compiler_rematerialises(monkeypatch, per_image_gib, start):
    """A compiler like XLA:TPU near HBM's limit (seen for fcn8s on v4-8: peak 28.47 GiB at batch 33,
    28.49 at 37): linear until 90% of HBM, then it recomputes instead of storing, so the reported peak
    barely grows while the batch still fits well beyond; the search still finds the brute-force
    boundary in few compiles, without jumping to the limit on the flat part's line."""
    usable, limit, fixed, calls = 31.5 * GIB, 1024, 1.0 * GIB, []
    knee = (0.9 * usable - fixed) / (per_image_gib * GIB)  # the batch where recomputation starts

    def needs(b):  # bytes with recomputation: an eighth of the per-image cost beyond the knee
        return fixed + min(b, knee) * per_image_gib * GIB + max(b - knee, 0) * per_image_gib * GIB / 8

    def reported(b):  # the peak the compiler reports when it fits: flat beyond the knee
        return min(fixed + b * per_image_gib * GIB, 0.9 * usable + max(b - knee, 0) * 1e-3 * GIB)

    def fake_analyse(cfg, tpu, chips):
        b = cfg.batch_size
        calls.append(b)
        if needs(b) <= usable:
            return {"fits": True, "memory": {"peak": int(reported(b)), "temp": int(b * per_image_gib * GIB)},
                    "config": {"batch_size": b}}
        return {"fits": False, "needed_bytes": int(needs(b)), "available_bytes": int(usable),
                "config": {"batch_size": b}}

    monkeypatch.setattr(topology, "analyse", fake_analyse)
    result = topology.max_batch(bench.BenchmarkConfig(batch_size=start), topology.parse_slice("v4-8"),
                                limit=limit, chips=[None])
    truth = max([b for b in range(1, limit + 1) if needs(b) <= usable], default=0)
    assert result["max_batch"] == truth
    assert len(calls) == len(set(calls)) <= 14, calls  # bisection once flat: log2 of the bracket
    assert max(calls) <= 4 * truth, calls  # no jump along the flat line


def test_label_map_is_numpys_argmax():
    """label_map (max + first index, for XLA:TPU's compile time) equals NumPy's argmax, NaN and ties too."""
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 3, (3, 5, 7, 21)).astype(np.float32)  # many ties
    scores[0, 0, 0, 4] = np.nan
    scores[1, 1, 1, [3, 9]] = np.nan
    scores[2, 2, 2] = -np.inf
    for dtype in (jnp.float32, jnp.bfloat16):
        got = np.asarray(jax.jit(label_map)(jnp.asarray(scores, dtype)))
        assert got.dtype == np.int32
        np.testing.assert_array_equal(got, np.argmax(np.asarray(jnp.asarray(scores, dtype), np.float32), axis=-1))


# ----------------------------------------------------------------------------- real TPU compiles

@pytest.fixture(scope="module")
def v5e_record():
    """fcn8s inference at width 1/8, 2 x 64x64 per chip, compiled for v5e-8 (one compile, ~40 s)."""
    if not LIBTPU:
        pytest.skip(f"libtpu is not installed here: {topology.INSTALL}")
    return topology.analyse(bench.BenchmarkConfig(**SMALL), topology.parse_slice("v5e-8"))


@needs_libtpu
def test_v5e_compile_flops_match_the_cpu_compile(v5e_record):
    """Per chip, the TPU program does what one CPU device does with the same per-device batch: XLA's TPU
    FLOP count is at least the CPU compile's and the analytic count of the network's taps, and within 25%
    of them (1.09x here: XLA counts the program the TPU compiler built, which computes more at this small
    size; README Performance gives the full-size agreement)."""
    cfg = bench.BenchmarkConfig(**SMALL)
    jitted, args = bench.abstract_step(cfg, parallel.make_mesh(jax.devices("cpu")[:1]))
    cpu_flops = bench.cost_analysis(jitted.lower(*args).compile())["flops"]
    analytic = cfg.batch_size * forward_flops(64, 64, scale=0.125)
    assert cpu_flops == pytest.approx(analytic, rel=0.05)
    assert cpu_flops <= v5e_record["flops_per_step"] <= 1.25 * cpu_flops


@needs_libtpu
def test_v5e_compile_memory_record(v5e_record):
    """The record of a real compile: the slice's 8 'TPU v5 lite' chips, HBM and peak rates of Cloud TPU's
    v5e page, argument bytes at least the variables (float32, replicated) plus the chip's images, the peak
    as their documented sum, and a roofline bound from the record's own FLOPs and bytes."""
    r = v5e_record
    assert r["fits"] is True and r["source"].startswith("compiler analysis")
    assert r["slice"] == {"name": "v5e-8", "topology": "v5e:2x4", "chips": 8, "hosts": 1, "device_kind": "TPU v5 lite",
                          "hbm_bytes": 16 * GIB, "hbm_bytes_per_s": 819e9, "peak_bf16_flops": 197e12}
    assert r["config"]["global_batch"] == 16
    cfg = bench.BenchmarkConfig(**SMALL)
    variables = bench.variable_shapes(cfg.model_config())
    variable_bytes = sum(math.prod(v.shape) * v.dtype.itemsize for v in jax.tree.leaves(variables))
    image_bytes = cfg.batch_size * 64 * 64 * 3 * 4
    m = r["memory"]
    assert set(m) == {"argument", "output", "alias", "temp", "generated_code", "peak"}
    assert m["argument"] >= variable_bytes + image_bytes
    assert m["output"] >= cfg.batch_size * 64 * 64 * 4  # int32 label maps
    assert m["peak"] == m["argument"] + m["output"] - m["alias"] + m["temp"] + m["generated_code"] < 16 * GIB
    bound = max(r["flops_per_step"] / 197e12, r["bytes_accessed_per_step"] / 819e9)
    assert r["roofline_step_s"] == pytest.approx(bound)
    assert r["images_per_s_per_chip_bound"] == pytest.approx(2 / bound)
    text = topology.format_record(r)
    assert "not a measurement" in text and "of 16 (arguments" in text and "images/s per chip" in text
    json.dumps(r)


@needs_libtpu
def test_multi_host_slice_that_does_not_fit():
    """v5e-16 spans two hosts; a batch far beyond HBM is a record with fits False and what the compiler
    said it needs, not an exception (XLA rejects it before code generation: about a second)."""
    tpu = topology.parse_slice("v5e-16")
    chips = topology.devices(tpu)
    assert len(chips) == 16 and {d.process_index for d in chips} == {0, 1}
    cfg = bench.BenchmarkConfig(**{**SMALL, "batch_size": 4096, "image_size": (512, 512)})
    r = topology.analyse(cfg, tpu, chips)
    # libtpu sets CLOUD_TPU_TASK_ID, TPU_WORKER_ID, ... with setenv(); a child process (a tool a test or user
    # starts next) must not inherit them, or it would wait for a TPU pod's coordinator (seen in the suite).
    child = subprocess.run([sys.executable, "-c", "import os; print(sorted(k for k in os.environ if 'TPU_WORKER' in k "
                            "or k.startswith('CLOUD_TPU') or k == 'TPU_ACCELERATOR_TYPE'))"],
                           capture_output=True, text=True, check=True)
    assert child.stdout.strip() == "[]"
    assert not set(platform.CLUSTER_ENV) & set(os.environ)
    assert r["fits"] is False and "memory" not in r
    assert r["needed_bytes"] > r["available_bytes"] > 15 * GIB
    assert r["slice"]["hosts"] == 2 and r["config"]["global_batch"] == 4096 * 16
    assert "does not fit: needs" in topology.format_record(r)


@needs_libtpu
def test_cli_topology_does_not_fit_is_one_line_and_json(tmp_path, capsys):
    """benchmark.py --topology: 'does not fit: needs X GiB of 16' and "fits": false in the JSON, exit 0."""
    out = tmp_path / "plan.json"
    code = bench_cli.main(["--topology", "v5e:2x4", "--mode", "infer", "--width", "0.125", "--image-size", "512",
                           "--batch-size", "4096", "--json", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    assert "does not fit: needs" in text and "GiB of 16 per chip" in text and "Traceback" not in text
    record = json.loads(out.read_text())
    assert record["fits"] is False and record["slice"]["name"] == "v5e-8"
    assert record["config"]["batch_size"] == 4096


def test_topology_without_libtpu_is_one_line(monkeypatch, capsys):
    monkeypatch.setattr(topology, "available", lambda: False)
    assert run_cli(["--topology", "v5e-8"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs libtpu" in err[0] and 'pip install "jax[tpu]==' in err[0]


def test_plan_table_row():
    """benchmarks/tpu_plan.py's README row from records: largest batch, memory at the first batch, bounds."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
    import tpu_plan
    tpu = topology.parse_slice("v5e-8")
    first = {"fits": True, "memory": {"peak": int(8.44 * GIB)}, "images_per_s_per_chip_bound": 61.3}
    infer = {"fits": True, "memory": {"peak": int(1.5 * GIB)}, "images_per_s_per_chip_bound": 180.0}
    search = {"max_batch": 16, "tried": {"8": True, "16": True, "17": False}}
    assert tpu_plan.row(tpu, "fcn8s", search, first, infer, 612.4) == (
        "| v5e-8 (v5e:2x4) | fcn8s | 16 | 8.44 of 16 | 61.3 | 1.50 of 16, 180.0 | 4, 612 |")
    unsearched = {"max_batch": None, "tried": {"8": True}}
    assert tpu_plan.row(tpu, "fcn8s", unsearched, first, {"fits": False}, 300) == (
        "| v5e-8 (v5e:2x4) | fcn8s | not searched | 8.44 of 16 | 61.3 | does not fit (16) | 2, 300 |")


def test_cli_max_batch_prints_each_compile_and_the_largest(monkeypatch, tmp_path, capsys):
    """benchmark.py --topology --max-batch: one line per compile and "largest batch per chip that fits: N",
    N the brute-force boundary of the compiler stand-in (fixed 1 GiB + 1 GiB per image of 15.75), in the JSON too."""
    def fake_analyse(cfg, tpu, chips):
        need = (1 + cfg.batch_size) * GIB
        record = {"config": {**dataclasses.asdict(cfg), "image_size": list(cfg.image_size),
                             "global_batch": cfg.batch_size * 8}, "compile_s": 1.0, "fits": need <= 15.75 * GIB,
                  "slice": {"name": tpu.name, "topology": tpu.topology, "chips": 8, "hosts": 1,
                            "device_kind": "TPU v5 lite", "hbm_bytes": 16 * GIB, "hbm_bytes_per_s": 819e9,
                            "peak_bf16_flops": 197e12}, "jax_version": jax.__version__, "libtpu_version": None}
        if record["fits"]:
            record.update(memory={"peak": need, "temp": cfg.batch_size * GIB}, flops_per_step=1e12,
                          bytes_accessed_per_step=1e9, roofline_step_s=0.01, images_per_s_per_chip_bound=1.0)
        else:
            record.update(needed_bytes=need, available_bytes=int(15.75 * GIB), compiler_message="RESOURCE_EXHAUSTED")
        return record

    monkeypatch.setattr(topology, "available", lambda: True)
    monkeypatch.setattr(topology, "devices", lambda tpu: [None] * tpu.chips)
    monkeypatch.setattr(topology, "analyse", fake_analyse)
    out = tmp_path / "search.json"
    assert bench_cli.main(["--topology", "v5e-8", "--max-batch", "--json", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    truth = max(b for b in range(1, 100) if 1 + b <= 15.75)
    assert lines[-1] == f"largest batch per chip that fits: {truth}"
    tried = json.loads(out.read_text())["tried"]
    assert sorted((line for line in lines if line.startswith("batch ")), key=lambda l: int(l.split()[1].split("/")[0])) == [
        f"batch {b}/chip: " + (f"fits, peak {1 + int(b):.2f} GiB" if fits else "does not fit") + " (1 s)"
        for b, fits in tried.items()]
