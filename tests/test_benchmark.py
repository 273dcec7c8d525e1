"""benchmark.py end to end on CPU in tiny configurations; XLA's FLOP count against an analytic count."""
import datetime
import importlib.util
import json
import math
import os
import sys

import jax
import jax.numpy as jnp
import pytest

from fcn_jax import benchmark as bench
from fcn_jax import platform
from fcn_jax.cli import benchmark as bench_cli
from fcn_jax import parallel
from fcn_jax.config import ModelConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JSON_FIELDS = {"config", "device", "jax_version", "python", "date", "xla_flags", "matmul_precision", "compile_s",
               "step_time_s", "step_times_s", "images_per_s", "flops_per_step", "flops_per_image",
               "bytes_accessed_per_step", "achieved_tflops", "peak_tflops_per_device", "mfu", "peak_memory_bytes",
               "executable_memory_bytes"}
TINY = dict(variant="fcn8s", batch_size=1, image_size=(40, 48), width=1 / 16, dtype="float32", steps=3, warmup=1)

# ----------------------------------------------------------------------------- analytic FLOP count
# Written from the architecture table in REFERENCE.md, independently of fcn_jax.

BLOCKS = ((2, 64), (2, 128), (3, 256), (3, 512), (3, 512))
UPSAMPLERS = {"fcn32s": ((64, 32),), "fcn16s": ((4, 2), (32, 16)), "fcn8s": ((4, 2), (4, 2), (16, 8))}


def conv_taps(size, kernel, pad, count_padding):
    """(multiply-adds per channel pair along one axis, output size) of a stride-1 convolution.

    With ``count_padding`` every tap counts (what FLOP counters of the reference port report);
    without, only taps that read a real input pixel (what XLA's cost analysis counts)."""
    out = size + 2 * pad - kernel + 1
    if count_padding:
        return out * kernel, out
    return sum(1 for o in range(out) for j in range(kernel) if 0 <= o + j - pad < size), out


def forward_flops(height, width, variant="fcn8s", scale=1.0, num_classes=21, count_padding=False):
    """FLOPs (2 x multiply-adds) of one image's forward pass with the reference geometry: conv1_1 pad
    100, 3x3 pad 1 convs, ceil-mode pools, fc6 7x7 VALID, fc7 and the score layers 1x1, transposed
    convs costing (input pixels) x k x k x C x C."""
    ch = lambda c: max(1, int(round(c * scale)))  # noqa: E731
    macs, h, w, c_in, pools = 0, height, width, 3, {}

    def conv(h, w, kernel, pad, c_in, c_out):
        th, oh = conv_taps(h, kernel, pad, count_padding)
        tw, ow = conv_taps(w, kernel, pad, count_padding)
        return th * tw * c_in * c_out, oh, ow

    for block, (n_convs, channels) in enumerate(BLOCKS, start=1):
        for i in range(n_convs):
            m, h, w = conv(h, w, 3, 100 if (block, i) == (1, 0) else 1, c_in, ch(channels))
            macs, c_in = macs + m, ch(channels)
        h, w = math.ceil(h / 2), math.ceil(w / 2)
        pools[block] = (h, w, c_in)
    for kernel, c_out in ((7, ch(4096)), (1, ch(4096)), (1, num_classes)):  # fc6, fc7, score_fr
        m, h, w = conv(h, w, kernel, 0, c_in, c_out)
        macs, c_in = macs + m, c_out
    skips = [pools[4], pools[3]]
    for i, (kernel, stride) in enumerate(UPSAMPLERS[variant]):
        macs += h * w * kernel * kernel * num_classes * num_classes
        h, w = (h - 1) * stride + kernel, (w - 1) * stride + kernel
        if i < len(UPSAMPLERS[variant]) - 1:  # score_pool4, score_pool3 (1x1 on the whole pooled map)
            ph, pw, pc = skips[i]
            macs += ph * pw * pc * num_classes
    return 2 * macs


@pytest.mark.parametrize("size, gflop", [(500, 363), (512, 381), (224, 126), (64, 45)])
def test_analytic_count_matches_reference_figures(size, gflop):
    """The counter reproduces REFERENCE.md's FLOP-counter figures for FCN-8s (padding taps included)."""
    assert forward_flops(size, size, count_padding=True) / 1e9 == pytest.approx(gflop, rel=0.01)


def compiled_forward_flops(model_config, height, width, batch=1):
    """XLA's FLOPs for the benchmark's inference step, from abstract shapes (nothing allocated)."""
    model = model_config.build()
    params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3))))["params"]
    images = jax.ShapeDtypeStruct((batch, height, width, 3), jnp.float32)
    step = bench.make_predict_step(model_config, parallel.make_mesh(jax.devices("cpu")[:1]))
    return bench.cost_analysis(step.lower(params, images).compile())["flops"]


def test_full_width_forward_flops_match_reference():
    """FCN-8s at full width, 64x64: XLA counts within 1% of the analytic count of real-pixel taps,
    and within 5% of REFERENCE.md's 45 GFLOP (which also counts the taps on pad 100's zeros)."""
    flops = compiled_forward_flops(ModelConfig(variant="fcn8s"), 64, 64)
    assert flops == pytest.approx(forward_flops(64, 64), rel=0.01)
    assert flops / 1e9 == pytest.approx(45, rel=0.05)


def test_same_padding_costs_fewer_flops():
    """--padding same (no pad 100) at 96x96 costs a fraction of the reference geometry's FLOPs."""
    ref = compiled_forward_flops(ModelConfig(variant="fcn8s", width=0.25), 96, 96)
    same = compiled_forward_flops(ModelConfig(variant="fcn8s", width=0.25, padding="same"), 96, 96)
    assert 0 < same < 0.5 * ref


# ---------------------------------------------------------------------------------- measurements

def check_result(result, cfg, devices=1):
    """Every JSON field present with sane values for a CPU run of ``cfg``."""
    assert set(result) == JSON_FIELDS
    assert result["config"]["global_batch"] == cfg.batch_size * devices
    assert result["config"]["image_size"] == list(cfg.image_size)
    assert result["device"] == {"platform": "cpu", "kind": jax.devices("cpu")[0].device_kind, "count": devices,
                                "process_count": 1, "peak_name": None}
    t = result["step_time_s"]
    assert len(result["step_times_s"]) == cfg.steps
    assert 0 < t["min"] <= t["p10"] <= t["median"] <= t["p90"] <= t["max"] and t["min"] <= t["mean"] <= t["max"]
    assert result["compile_s"] > 0
    assert result["images_per_s"] == pytest.approx(cfg.batch_size * devices / t["median"])
    assert result["flops_per_step"] > 0 and result["bytes_accessed_per_step"] > 0
    assert result["flops_per_image"] == pytest.approx(result["flops_per_step"] / (cfg.batch_size * devices))
    assert result["achieved_tflops"] == pytest.approx(result["flops_per_step"] / t["median"] / 1e12)
    assert result["mfu"] is None and result["peak_tflops_per_device"] is None  # CPU: not applicable
    assert result["peak_memory_bytes"] is None or result["peak_memory_bytes"] > 0
    memory = result["executable_memory_bytes"]
    assert memory["argument"] > 0 and memory["output"] > 0 and memory["temp"] >= 0
    assert datetime.datetime.fromisoformat(result["date"]).tzinfo is not None
    json.dumps(result)


def test_infer_in_process_flops_match_analytic_count():
    cfg = bench.BenchmarkConfig(**{**TINY, "mode": "infer", "width": 0.25, "image_size": (64, 64)})
    result = bench.run_benchmark(cfg, jax.devices("cpu")[:1])
    check_result(result, cfg)
    assert result["flops_per_image"] == pytest.approx(forward_flops(64, 64, scale=0.25), rel=0.02)


def start_cli(early_runs, key, args, env=None):
    """Starts ``python benchmark.py ARGS`` as the entry point (the run ``key`` of ``early_runs``)."""
    code = ("import json, runpy, sys\n"
            f"sys.argv = ['benchmark.py'] + {list(args)!r}\n"
            "try:\n    runpy.run_path('benchmark.py', run_name='__main__')\n"
            "except SystemExit as e:\n    code = e.code\n"
            "print('MODULES=' + json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n"
            "sys.exit(code)\n")
    early_runs.start(key, [sys.executable, "-c", code], cwd=ROOT,
                     env={**os.environ, "JAX_PLATFORMS": "cpu", **(env or {})})


def cli_result(early_runs, key):
    """(exit code, stdout, stderr, modules it imported) of the run ``key``."""
    code, stdout, stderr = early_runs.result(key, 300)
    modules = next((json.loads(line[8:]) for line in stdout.splitlines() if line.startswith("MODULES=")), [])
    return code, stdout, stderr, modules


def tiny_args(cfg, json_path):
    return ["--variant", cfg.variant, "--mode", cfg.mode, "--batch-size", str(cfg.batch_size),
            "--image-size", f"{cfg.image_size[0]}x{cfg.image_size[1]}", "--width", str(cfg.width),
            "--dtype", cfg.dtype, "--steps", str(cfg.steps), "--warmup", str(cfg.warmup), "--json", json_path]


CLI_TRAIN = bench.BenchmarkConfig(**{**TINY, "mode": "train"})
CLI_INFER = bench.BenchmarkConfig(**{**TINY, "mode": "infer", "batch_size": 2})


@pytest.fixture(scope="module", autouse=True)
def cli_json(early_runs, tmp_path_factory):
    """Starts the command-line runs of ``test_cli_*`` (when selected) with the module's first test: they wait
    for no other test, and run while the in-process tests compile (their tests come last). {run: its JSON file}"""
    paths = {}
    if early_runs.selected("test_cli_train_end_to_end"):
        paths["train"] = str(tmp_path_factory.mktemp("cli_train") / "train.json")
        start_cli(early_runs, "train", tiny_args(CLI_TRAIN, paths["train"]))
    if early_runs.selected("test_cli_infer_shards_over_devices"):
        paths["infer"] = str(tmp_path_factory.mktemp("cli_infer") / "infer.json")
        start_cli(early_runs, "infer", tiny_args(CLI_INFER, paths["infer"]),
                  env={"XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
    return paths


@pytest.mark.parametrize("args, message", [
    (["--image-size", "0x5"], "--image-size"),
    (["--image-size", "big"], "--image-size"),
    (["--steps", "0"], "steps >= 1"),
    (["--width", "2"], "width"),
    (["--mode", "eval"], "--mode"),
    (["--batch-size", "100000", "--image-size", "100000"], "--batch-size 100000 --image-size 100000x100000: "
     "conv1_1's output alone needs"),  # earlier code tracebacked after trying
    (["--json", "."], "--json .: is a directory"),  # earlier code measured first, then tracebacked
])
def test_usage_errors_are_one_line(args, message, capsys):
    try:
        code = bench_cli.main(args)
    except SystemExit as e:  # argparse errors
        code = e.code
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and message in err and err.startswith("benchmark.py: error:")


# ---------------------------------------------------------------------------------------- helpers

@pytest.mark.parametrize("kind, name", [
    ("NVIDIA H100 80GB HBM3", "H100 SXM"), ("NVIDIA H100 PCIe", "H100 PCIe"), ("NVIDIA H100 NVL", "H100 NVL"),
    ("NVIDIA H200", "H200 SXM"), ("NVIDIA GH200 480GB", "H200 SXM"), ("NVIDIA A100-SXM4-80GB", "A100"),
    ("NVIDIA A100-PCIE-40GB", "A100"), ("TPU v4", "TPU v4"), ("TPU v5 lite", "TPU v5e"), ("TPU v5e", "TPU v5e"),
    ("TPU v5", "TPU v5p"), ("TPU v5p", "TPU v5p"), ("TPU v6 lite", "TPU v6e"), ("TPU v6e", "TPU v6e"),
    ("cpu", None), ("NVIDIA GeForce RTX 4090", None), ("TPU v4 lite", None),
])
def test_peak_table_matches_device_kinds(kind, name):
    peak = bench.find_peak(kind)
    assert (peak.name if peak else None) == name


def test_peak_flops_by_dtype_and_precision():
    h100 = "NVIDIA H100 80GB HBM3"
    assert bench.peak_flops(h100, "bfloat16") == pytest.approx(989.4e12)
    assert bench.peak_flops(h100, "float32") == pytest.approx(494.7e12)  # TF32 at default precision
    assert bench.peak_flops(h100, "float32", "highest") == pytest.approx(66.9e12)
    assert bench.peak_flops("TPU v5 lite", "bfloat16") == pytest.approx(197e12)
    assert bench.peak_flops("cpu", "float32") is None


@pytest.mark.parametrize("text, size", [("512", (512, 512)), ("480x640", (480, 640)), (" 64 X 32 ", (64, 32))])
def test_parse_image_size(text, size):
    assert bench_cli.parse_image_size(text) == size


def test_cpu_xla_flags_keep_the_users():
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    added = platform.apply_cpu_xla_flags(env)
    assert env["XLA_FLAGS"].split() == ["--xla_force_host_platform_device_count=2", *added]
    assert platform.apply_cpu_xla_flags(env) == []  # idempotent
    mine = {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=individual_dot"}
    assert platform.apply_cpu_xla_flags(mine) == [] and mine["XLA_FLAGS"].endswith("=individual_dot")


def test_cost_analysis_accepts_dict_or_list():
    class Compiled:
        def __init__(self, analysis):
            self.analysis = analysis

        def cost_analysis(self):
            return self.analysis

    assert bench.cost_analysis(Compiled({"flops": 3.0})) == {"flops": 3.0}
    assert bench.cost_analysis(Compiled([{"flops": 3.0}, {"flops": 4.0, "bytes accessed": 1.0}])) == {
        "flops": 7.0, "bytes accessed": 1.0}
    assert bench.cost_analysis(Compiled(None)) == {}


def test_compare_torch_table(tmp_path):
    """The side by side in its cheapest form: inference, eager PyTorch vs JAX float32 vs onnxruntime (where the
    onnx extra is installed; a failed row where not)."""
    pytest.importorskip("torch")
    if ROOT not in sys.path:  # benchmarks/ is a dev-only package at the repository root
        sys.path.insert(0, ROOT)
    from benchmarks import compare_torch

    cfg = bench.BenchmarkConfig(**{**TINY, "mode": "infer", "steps": 2})
    report = compare_torch.compare(cfg, ["infer"], ["float32"], ["eager"], jax.devices("cpu")[0], log=lambda _: None)
    have_ort = importlib.util.find_spec("jax2onnx") is not None and importlib.util.find_spec("onnxruntime") is not None
    assert [(r["framework"], r["setting"]) for r in report["rows"]] == [
        ("pytorch", "eager"), ("jax", "float32"), ("onnxruntime", "float32 (CPU)")]
    assert [r["status"] for r in report["rows"]][:2] == ["ok", "ok"]
    torch_row, jax_row, ort_row = report["rows"]
    assert report["ratios"]["infer"]["ratio"] == pytest.approx(jax_row["images_per_s"] / torch_row["images_per_s"])
    assert torch_row["achieved_tflops"] > 0  # from XLA's count of the same network
    table = compare_torch.format_table(report)
    assert "| infer | pytorch | eager |" in table and "infer: best JAX (float32) / best PyTorch (eager)" in table
    if have_ort:
        assert ort_row["status"] == "ok" and ort_row["vs_best_pytorch"] == pytest.approx(
            ort_row["images_per_s"] / torch_row["images_per_s"])
        assert "| infer | onnxruntime | float32 (CPU) |" in table
    else:
        assert "pip install 'fcn-jax[onnx]'" in ort_row["status"]
    json.dumps(report)
    report = compare_torch.compare(cfg, ["infer"], ["float32"], [], jax.devices("cpu")[0], log=lambda _: None,
                                   onnxruntime=False)
    assert [r["framework"] for r in report["rows"]] == ["jax"]


def test_benchmark_onnxruntime_row(tmp_path, capsys):
    """``benchmark.py --mode infer --onnxruntime``: the JAX figures and the onnxruntime row side by side (its
    steps, its ratio to JAX as printed); refused in one line before measuring outside infer mode."""
    from fcn_jax.cli.benchmark import main
    args = ["--variant", "fcn8s", "--width", "0.0625", "--batch-size", "2", "--image-size", "40x48", "--dtype",
            "float32", "--steps", "2", "--warmup", "1"]
    assert main(args + ["--mode", "train", "--onnxruntime"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["benchmark.py: error: --onnxruntime: only with --mode infer (onnxruntime runs the exported "
                   "forward pass)"]
    pytest.importorskip("jax2onnx", reason="the onnx extra (pip install 'fcn-jax[onnx]') is not installed")
    out = tmp_path / "r.json"
    assert main(args + ["--mode", "infer", "--onnxruntime", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    ort = result["onnxruntime"]
    assert len(ort["step_times_s"]) == 2 and ort["images_per_s"] == pytest.approx(2 / ort["step_time_s"]["median"])
    ratio = ort["images_per_s"] / result["images_per_s"]
    assert f"onnxruntime {ort['onnxruntime_version']} (CPU provider, float32, same batch): " \
           f"{ort['images_per_s']:.2f} images/s" in printed and f"{ratio:.2f}x JAX float32" in printed


@pytest.mark.parametrize("variant, width", [("fcn-resnet50", 0.125), ("fcn-vgg11bn", 1.0)])
def test_compare_torch_runs_the_same_batchnorm_network(variant, width):
    """compare_torch.py's PyTorch side of a BatchNorm FCN (torchvision's fcn_resnet50 with the aux head it trains
    with, seed 002's network) holding fcn_jax's variables computes fcn_jax's logits (the aux head's too): random
    kernels, BatchNorm affine parameters and running statistics (each BatchNorm different), eval mode, odd size."""
    pytest.importorskip("torch")
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    import numpy as np
    import torch
    from flax import traverse_util

    from benchmarks import compare_torch
    from fcn_jax.inference import forward

    cfg = bench.BenchmarkConfig(variant=variant, mode="train", batch_size=1, image_size=(37, 53), width=width,
                                num_classes=5, dtype="float32")
    model_config = cfg.model_config()
    rng = np.random.default_rng(0)
    flat = traverse_util.flatten_dict(bench.synthetic_variables(model_config))
    flat = {k: (rng.uniform(0.5, 2.0, v.shape) if k[-1] in ("scale", "var") else
                rng.uniform(-0.3, 0.3, v.shape) if v.ndim == 1 else v).astype(np.float32) for k, v in flat.items()}
    variables = traverse_util.unflatten_dict(flat)
    net = compare_torch.torch_model(cfg, train=True)  # its own variables: replaced by the random ones
    fmt = compare_torch.SEED_SEGMENTATION if variant == compare_torch.SEED_VARIANT else \
        compare_torch.FCN_RESNET_TORCHVISION
    net.load_state_dict(compare_torch.torch_bn_state_dict(variables, fmt, net.state_dict()))
    image = rng.standard_normal((1, *cfg.image_size, 3)).astype(np.float32)
    with torch.no_grad():
        want = net.eval()(torch.from_numpy(image.transpose(0, 3, 1, 2)))
    want = {k: v.numpy().transpose(0, 2, 3, 1) for k, v in (want if isinstance(want, dict) else {"out": want}).items()}
    model = model_config.build()
    got = {"out": forward(model, variables, jnp.asarray(image))["out"]}
    if "aux" in want:  # a training-only output: its head called on the backbone's maps
        got["aux"] = model.apply(variables, jnp.asarray(image), method=lambda m, x: m.heads[1]([m.backbone(x)],
                                                                                             *x.shape[1:3]))
    assert sorted(got) == sorted(want) == (["aux", "out"] if variant == "fcn-resnet50" else ["out"])
    for name in want:
        assert got[name].shape == want[name].shape == (1, 37, 53, 5)
        np.testing.assert_allclose(np.asarray(got[name]), want[name], rtol=1e-4, atol=1e-4 * np.abs(want[name]).max())


@pytest.mark.parametrize("args, message", [
    (["--variant", "fcn-vgg11bn", "--width", "0.5"], "--width: seed 002's VGG11-BN network has fixed widths"),
    (["--variant", "fcn-googlenet"], "--variant: no PyTorch network for fcn-googlenet"),
])
def test_compare_torch_refuses_a_network_without_a_pytorch_side(args, message, capsys):
    pytest.importorskip("torch")
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    from benchmarks import compare_torch

    assert compare_torch.main(args) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


# ------------------------------------------------- the command-line runs (started with the module)

def test_cli_train_end_to_end(cli_json, early_runs):
    """The real train step through the command line: summary printed, every JSON field sane, train
    FLOPs about 3x the forward pass, and no TensorFlow (or tfds / grain) on the import path."""
    cfg = CLI_TRAIN
    code, stdout, stderr, modules = cli_result(early_runs, "train")
    assert code == 0, stderr
    assert "images/s" in stdout and "MFU: n/a" in stdout
    with open(cli_json["train"]) as f:
        result = json.load(f)
    check_result(result, cfg)
    assert result["config"]["mode"] == "train"
    forward = forward_flops(*cfg.image_size, scale=cfg.width)
    assert 2.5 * forward < result["flops_per_image"] < 3.6 * forward
    assert modules and not {"tensorflow", "tensorflow_datasets", "grain", "torch"} & set(modules)
    assert all(flag in result["xla_flags"] for flag in platform.apply_cpu_xla_flags({}))  # recorded as used


def test_cli_infer_shards_over_devices(cli_json, early_runs):
    """On two (virtual CPU) devices the global batch doubles and the FLOPs count both devices' work."""
    cfg = CLI_INFER
    code, _, stderr, _ = cli_result(early_runs, "infer")
    assert code == 0, stderr
    with open(cli_json["infer"]) as f:
        result = json.load(f)
    check_result(result, cfg, devices=2)
    assert result["flops_per_step"] == pytest.approx(4 * forward_flops(*cfg.image_size, scale=cfg.width), rel=0.03)
