"""benchmarks/accelerator.py (the standing accelerator measurements) end to end on the CPU at tiny sizes: every
step runs, and each printed README row carries the figures of that step's own JSON."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import accelerator  # noqa: E402


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("accelerator")
    run = subprocess.run([sys.executable, "benchmarks/accelerator.py", "--tiny", "--out", str(out)], cwd=ROOT,
                         capture_output=True, text=True, timeout=900)
    return out, run


def test_every_step_runs_and_rows_match_their_json(smoke):
    out, run = smoke
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    rows = (out / "rows.md").read_text().splitlines()
    assert rows[0] == "| date | device | measurement | result |" and len(rows) == 2 + 6
    assert rows[2:] == [line for line in run.stdout.splitlines() if line.startswith("| 20")]
    figures = {name: json.loads((out / f"{name}.json").read_text())
               for name in ("train", "infer", "torch_train", "torch_infer", "buckets", "profile")}
    date = figures["buckets"]["date"]
    assert all(row.startswith(f"| {date} | 1 x cpu (cpu) |") for row in rows[2:])
    train, infer, ttrain, tinfer, prof, buckets = rows[2:]
    assert f"{figures['train']['images_per_s']:.1f} images/s" in train and "1x32 bf16" in train
    assert f"{figures['infer']['images_per_s']:.1f} images/s" in infer and "1x40x30" in infer
    for row, report, mode in ((ttrain, figures["torch_train"], "train"), (tinfer, figures["torch_infer"], "infer")):
        assert f"**{report['ratios'][mode]['ratio']:.2f}x**" in row and "PyTorch eager" in row
    e = figures["buckets"]["eval"]
    assert f"exact size {e['exact']['programs']} programs" in buckets and "same predictions: True" in buckets
    assert e["exact"]["programs"] > e["masked"]["programs"]
    assert figures["profile"]["ops"] and f"`{figures['profile']['ops'][0]['name'][:40]}`" in prof
    assert os.path.isdir(out / "trace")


def test_the_step_limits_fit_in_eight_minutes(tmp_path):
    assert sum(limit for _, _, limit in accelerator.steps(accelerator.FULL, str(tmp_path))) <= 8 * 60


def test_a_failed_step_is_a_row_saying_so():
    results = {"train": {"status": "timed out after 75 s (see train.log)", "seconds": 75.0, "result": None}}
    (row,) = accelerator.rows(results, accelerator.FULL, "1 x NVIDIA H100 80GB HBM3 (gpu)", "2026-12-03")
    assert row == ("| 2026-12-03 | 1 x NVIDIA H100 80GB HBM3 (gpu) | benchmark.py train fcn8s 8x512 bf16 (width 1) | "
                   "timed out after 75 s (see train.log) |")


def test_profile_summary_counts_device_kernels_only():
    """A GPU-like trace: the device's kernel events are summed per name; host events and Python frames are not."""
    import profile_summary
    events = [
        {"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "/host:CPU"}},
        {"ph": "M", "name": "process_name", "pid": 2, "args": {"name": "/device:GPU:0"}},
        {"ph": "M", "name": "thread_name", "pid": 1, "tid": 7, "args": {"name": "python"}},
        {"ph": "X", "pid": 1, "tid": 7, "name": "$train.py:10 step", "dur": 5000.0},
        {"ph": "X", "pid": 2, "tid": 1, "name": "sm90_xmma_conv", "dur": 300.0},
        {"ph": "X", "pid": 2, "tid": 1, "name": "sm90_xmma_conv", "dur": 300.0},
        {"ph": "X", "pid": 2, "tid": 2, "name": "loop_add_fusion", "dur": 400.0},
        {"ph": "i", "pid": 2, "tid": 1, "name": "marker"},
    ]
    summary = profile_summary.summarize_trace(events, top=5)
    assert summary["where"] == "device" and summary["total_us"] == 1000.0
    assert summary["ops"] == [{"name": "sm90_xmma_conv", "us": 600.0, "share": 0.6, "count": 2},
                              {"name": "loop_add_fusion", "us": 400.0, "share": 0.4, "count": 1}]
    host = profile_summary.summarize_trace(events[:1] + events[2:4] + [
        {"ph": "M", "name": "thread_name", "pid": 1, "tid": 8, "args": {"name": "XLAEigen"}},
        {"ph": "X", "pid": 1, "tid": 8, "name": "ThunkExecutor::Execute", "dur": 900.0},
        {"ph": "X", "pid": 1, "tid": 8, "name": "convolution.3", "dur": 800.0}])
    assert host["where"] == "host" and [op["name"] for op in host["ops"]] == ["convolution.3"]
