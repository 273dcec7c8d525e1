"""``python -m fcn_jax.convert``: end to end through a subprocess, and its error handling."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

import fcn_jax
from fcn_jax import checkpoint
from source_layouts import source_layout
from fcn_jax.convert import main

ROOT = Path(__file__).resolve().parents[1]
WIDTH = 1 / 16


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
               JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", "fcn_jax.convert", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def fcn8s_npz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A width-reduced fcn8s for the 21 VOC classes in pytorch-fcn's key layout."""
    rng = np.random.RandomState(0)
    layout = source_layout("fcn", "fcn8s", 21, WIDTH)
    path = tmp_path_factory.mktemp("src") / "fcn8s_from_caffe.npz"
    np.savez(path, **{k: rng.standard_normal(s).astype(np.float32) for k, s in layout.items()})
    return path


def test_convert_end_to_end(fcn8s_npz: Path, tmp_path: Path) -> None:
    out = tmp_path / "ckpt"
    result = run_cli(str(fcn8s_npz), "--variant", "fcn8s", "--width", str(WIDTH), "--out", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"wrote {out}: fcn8s, 21 classes")
    variables, meta = checkpoint.load_model(str(out))
    expected = fcn_jax.load_weights(str(fcn8s_npz), width=WIDTH)
    assert jax.tree.structure(variables) == jax.tree.structure(expected)
    jax.tree.map(np.testing.assert_array_equal, variables, expected)
    config = checkpoint.model_config_from_meta(meta)
    assert (config.variant, config.num_classes, config.width) == ("fcn8s", 21, WIDTH)
    assert meta["class_names"][:2] == ["background", "aeroplane"] and len(meta["class_names"]) == 21
    assert meta["preprocessing"] == "caffe" and meta["source_format"] == "fcn"
    assert meta["source"] == str(fcn8s_npz) and len(meta["source_sha256"]) == 64


def test_bad_input_exits_2_with_one_line(tmp_path: Path) -> None:
    result = run_cli(str(tmp_path / "nope.pth"), "--out", str(tmp_path / "o"), cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0] == f"python -m fcn_jax.convert: error: {tmp_path / 'nope.pth'}: no such file"
    assert not (tmp_path / "o").exists()


def _error(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_usage_errors(fcn8s_npz: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = str(tmp_path / "o")
    (tmp_path / "w.bin").write_bytes(b"x")
    assert "unknown weights file extension '.bin'" in _error(capsys, [str(tmp_path / "w.bin"), "--out", out])
    assert "--out" in _error(capsys, [str(fcn8s_npz)])  # argparse: required flag, still one line
    err = _error(capsys, [str(fcn8s_npz), "--out", out, "--variant", "fcn32s", "--width", str(WIDTH)])
    assert "fcn8s_from_caffe.npz" in err and "missing keys upscore.weight" in err and "looks like fcn8s" in err
    assert "invalid choice: 'fcn4s'" in _error(capsys, [str(fcn8s_npz), "--out", out, "--variant", "fcn4s"])
    assert "--width: must be in (0, 1]" in _error(capsys, [str(fcn8s_npz), "--out", out, "--width", "2"])
    (tmp_path / "names.txt").write_text("a\nb\n")
    err = _error(capsys, [str(fcn8s_npz), "--out", out, "--width", str(WIDTH), "--class-names",
                          str(tmp_path / "names.txt")])
    assert "--class-names" in err and "2 names, expected 21" in err
    assert not os.path.exists(out)


def test_class_names_and_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rng = np.random.RandomState(1)
    layout = source_layout("fcn", "fcn32s", 3, WIDTH)
    src = tmp_path / "fcn32s.npz"
    np.savez(src, **{k: rng.standard_normal(s).astype(np.float32) for k, s in layout.items()})
    out = tmp_path / "ckpt"
    assert "--class-names: required for 3 classes" in _error(capsys, [str(src), "--out", str(out), "--width", str(WIDTH)])
    (tmp_path / "names.txt").write_text("sky\n\nroad\ncar\n")
    argv = [str(src), "--out", str(out), "--width", str(WIDTH), "--class-names", str(tmp_path / "names.txt")]
    assert main(argv) == 0
    assert fcn_jax.load_model(str(out))[2].class_names == ("sky", "road", "car")
    assert "already exists (pass --overwrite" in _error(capsys, argv)
    assert main(argv + ["--overwrite", "--convention", "torchvision"]) == 0
    _, meta = checkpoint.load_model(str(out))
    assert meta["preprocessing"] == "torchvision" and meta["preprocessing_from"] == "argument"
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("x")
    argv[argv.index(str(out))] = str(tmp_path / "other")
    assert "not an fcn-jax checkpoint; not overwriting" in _error(capsys, argv + ["--overwrite"])
    assert (tmp_path / "other" / "keep.txt").exists()


def test_help_explains_every_flag(capsys: pytest.CaptureFixture) -> None:
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    for flag in ("SRC", "--out", "--variant", "--num-classes", "--class-names", "--convention", "--width",
                 "--overwrite"):
        assert flag in text
