"""fcn_jax.weights: formats, layouts, convolutionalised fc6, conventions, errors and stage initialisation.

Files are written here in the real formats (real key names and layouts) at reduced width; full-size
shapes are checked without materialising arrays.
"""
from __future__ import annotations

import sys
from pathlib import Path

import h5py
import jax
import numpy as np
import pytest

import fcn_jax
from fcn_jax import checkpoint, loading, weights
from fcn_jax.config import ModelConfig
from fcn_jax.models import bilinear_init, initial_variables
from fcn_jax.loading import LoadError
from fcn_jax.weights import WeightsError
from source_layouts import source_layout

WIDTH = 1 / 16  # channels 4, 8, 16, 32, 32; fc 256
NUM_CLASSES = 5
IMAGENET = 10  # stand-in size of VGG16's ignored 1000-way classifier


def random_tensors(fmt: str, variant: str = "fcn32s", num_classes: int = NUM_CLASSES, width: float = WIDTH,
                   seed: int = 0) -> dict[str, np.ndarray]:
    """Random arrays with every key of ``fmt``, in the source layout (plus VGG16's ImageNet classifier)."""
    rng = np.random.RandomState(seed)
    layout = source_layout(fmt, variant, num_classes, width)
    tensors = {k: rng.standard_normal(s).astype(np.float32) for k, s in layout.items()}
    if fmt == weights.VGG16_TORCH:
        fc = tensors["classifier.3.weight"].shape[0]
        tensors.update({"classifier.6.weight": rng.standard_normal((IMAGENET, fc)).astype(np.float32),
                        "classifier.6.bias": np.zeros(IMAGENET, np.float32)})
    elif fmt == weights.VGG16_KERAS:
        fc = tensors["fc2/kernel"].shape[1]
        tensors.update({"predictions/kernel": rng.standard_normal((fc, IMAGENET)).astype(np.float32),
                        "predictions/bias": np.zeros(IMAGENET, np.float32)})
    return tensors


KERAS_LAYERS = ["input_1"] + [f"block{b}_{name}" for b, n in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3))
                              for name in [f"conv{i}" for i in range(1, n + 1)] + ["pool"]] + [
    "flatten", "fc1", "fc2", "predictions"]


def write_keras_h5(path: Path, tensors: dict[str, np.ndarray], keras1: bool = False) -> None:
    """A Keras ``save_weights`` file: root ``layer_names``; per layer ``weight_names`` relative to the layer
    group (Keras 2: ``f[layer][layer]['kernel:0']``; Keras 1: ``f[layer]['layer_W_1:0']``)."""
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [n.encode("utf8") for n in KERAS_LAYERS]
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"1.2.2" if keras1 else b"2.1.5"
        for layer in KERAS_LAYERS:
            group = f.create_group(layer)
            names = []
            if f"{layer}/kernel" in tensors:
                names = ([f"{layer}_W_1:0", f"{layer}_b_1:0"] if keras1
                         else [f"{layer}/kernel:0", f"{layer}/bias:0"])
                group.create_dataset(names[0], data=tensors[f"{layer}/kernel"])
                group.create_dataset(names[1], data=tensors[f"{layer}/bias"])
            group.attrs["weight_names"] = np.array([n.encode("utf8") for n in names], dtype="S")


def check_heads_at_init(params: dict) -> None:
    for name, layer in params.items():
        if name.startswith("score_"):
            assert not np.any(layer["kernel"]) and not np.any(layer["bias"]), name
        elif name.startswith("upscore"):
            np.testing.assert_array_equal(layer["kernel"], np.asarray(bilinear_init(None, layer["kernel"].shape)))


# ------------------------------------------------------------------------------------------ layouts

def test_full_size_source_layouts() -> None:
    fcn8s = source_layout("fcn", "fcn8s", 21)
    assert fcn8s["conv1_1.weight"] == (64, 3, 3, 3) and fcn8s["conv5_3.bias"] == (512,)
    assert fcn8s["fc6.weight"] == (4096, 512, 7, 7) and fcn8s["fc7.weight"] == (4096, 4096, 1, 1)
    assert fcn8s["score_fr.weight"] == (21, 4096, 1, 1) and fcn8s["score_pool4.weight"] == (21, 512, 1, 1)
    assert fcn8s["score_pool3.weight"] == (21, 256, 1, 1)
    assert fcn8s["upscore2.weight"] == (21, 21, 4, 4) and fcn8s["upscore_pool4.weight"] == (21, 21, 4, 4)
    assert fcn8s["upscore8.weight"] == (21, 21, 16, 16) and "upscore8.bias" not in fcn8s
    fcn32s = source_layout("fcn", "fcn32s", 21)
    assert len(fcn32s) == 15 * 2 + 2 + 1 and fcn32s["upscore.weight"] == (21, 21, 64, 64)
    assert set(source_layout("fcn", "fcn16s", 21)) - set(fcn32s) == {
        "score_pool4.weight", "score_pool4.bias", "upscore2.weight", "upscore16.weight"}

    torch_vgg = source_layout("vgg16-torch")
    assert sorted({int(k.split(".")[1]) for k in torch_vgg if k.startswith("features.")}) == [
        0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
    assert torch_vgg["features.28.weight"] == (512, 512, 3, 3)
    assert torch_vgg["classifier.0.weight"] == (4096, 25088) and torch_vgg["classifier.3.weight"] == (4096, 4096)
    keras = source_layout("vgg16-keras")
    assert keras["block1_conv1/kernel"] == (3, 3, 3, 64) and keras["block5_conv3/kernel"] == (3, 3, 512, 512)
    assert keras["fc1/kernel"] == (25088, 4096) and keras["fc2/kernel"] == (4096, 4096)


@pytest.mark.parametrize("transform, source", [(weights.TORCH_LINEAR_CHW, (4096, 25088)),
                                               (weights.KERAS_DENSE_HWC, (25088, 4096)),
                                               (weights.TORCH_LINEAR_1X1, (4096, 4096)),
                                               (weights.TORCH_CONV, (4096, 512, 7, 7))])
def test_full_size_fc_transforms_shapes(transform: weights.Transform, source: tuple[int, ...]) -> None:
    """The full-size conversions, traced without allocating 400 MB."""
    out = jax.eval_shape(transform.to_param, jax.ShapeDtypeStruct(source, np.float32))
    target = weights.param_shapes("fcn32s", 21)[("backbone", "fc7" if source == (4096, 4096) else "fc6", "kernel")]
    assert out.shape == target
    assert transform.source_shape(target) == source


def _patch_conv(kernel: np.ndarray, bias: np.ndarray, patch: np.ndarray) -> np.ndarray:
    """The imported fc6 conv (HWIO) applied to one 7x7 patch (VALID: one output position)."""
    out = jax.lax.conv_general_dilated(patch[None], kernel, (1, 1), "VALID",
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))
    assert out.shape[1:3] == (1, 1)
    return np.asarray(out[0, 0, 0]) + bias


@pytest.mark.parametrize("fmt", ["vgg16-torch", "vgg16-keras"])
def test_fc6_convolutionalisation(fmt: str, tmp_path: Path) -> None:
    """fc6 as a conv at one position equals the source's dense layer on the flattened 7x7xC patch, in
    the source's flatten order (torch C,H,W; Keras H,W,C)."""
    tensors = random_tensors(fmt)
    if fmt == "vgg16-torch":
        path = tmp_path / "vgg16_from_caffe.npz"
        np.savez(path, **tensors)
    else:
        path = tmp_path / "vgg16_weights_tf_dim_ordering_tf_kernels.h5"
        write_keras_h5(path, tensors)
    params = fcn_jax.load_weights(str(path), "fcn32s", width=WIDTH)["params"]
    fc6 = params["backbone"]["fc6"]
    patch = np.random.RandomState(3).standard_normal((7, 7, fc6["kernel"].shape[2])).astype(np.float32)
    if fmt == "vgg16-torch":
        w, b = tensors["classifier.0.weight"], tensors["classifier.0.bias"]
        dense, wrong_order = w @ patch.transpose(2, 0, 1).reshape(-1) + b, w @ patch.reshape(-1) + b
    else:
        w, b = tensors["fc1/kernel"], tensors["fc1/bias"]
        dense, wrong_order = patch.reshape(-1) @ w + b, patch.transpose(2, 0, 1).reshape(-1) @ w + b
    conv = _patch_conv(fc6["kernel"], fc6["bias"], patch)
    np.testing.assert_allclose(conv, dense, rtol=1e-4, atol=1e-4 * np.abs(dense).max())
    assert not np.allclose(conv, wrong_order, rtol=1e-2, atol=1e-2 * np.abs(dense).max())


@pytest.mark.parametrize("keras1", [False, True], ids=["keras2", "keras1"])
def test_keras_h5_end_to_end(keras1: bool, tmp_path: Path) -> None:
    tensors = random_tensors("vgg16-keras", seed=1)
    path = tmp_path / "vgg16_weights_tf_dim_ordering_tf_kernels.h5"
    write_keras_h5(path, tensors, keras1=keras1)
    variables, meta = fcn_jax.load_weights(str(path), "fcn16s", width=WIDTH, return_meta=True)
    assert meta["format"] == "vgg16-keras" and meta["preprocessing"] == "caffe"
    assert meta["model"] == {**meta["model"], "variant": "fcn16s", "num_classes": 21, "width": WIDTH}
    backbone = variables["params"]["backbone"]
    np.testing.assert_array_equal(backbone["conv1_1"]["kernel"], tensors["block1_conv1/kernel"])
    np.testing.assert_array_equal(backbone["conv4_2"]["bias"], tensors["block4_conv2/bias"])
    np.testing.assert_array_equal(backbone["fc7"]["kernel"][0, 0], tensors["fc2/kernel"])
    check_heads_at_init(variables["params"])
    if not keras1:  # the loaded model runs
        logits = fcn_jax.create_model("fcn16s", 21, width=WIDTH).apply(variables, np.zeros((1, 9, 11, 3), np.float32))
        assert logits.shape == (1, 9, 11, 21) and np.isfinite(np.asarray(logits)).all()


def test_vgg16_torch_and_keras_layouts_agree(tmp_path: Path) -> None:
    """The same network written in both layouts imports to identical params."""
    keras = random_tensors("vgg16-keras", seed=2)
    torch_layout = {}
    for conv, index in zip(weights.CONVS, weights.TORCH_FEATURE_INDEX):
        layer = "block{}_conv{}".format(*conv[4:].split("_"))
        torch_layout[f"features.{index}.weight"] = keras[f"{layer}/kernel"].transpose(3, 2, 0, 1)
        torch_layout[f"features.{index}.bias"] = keras[f"{layer}/bias"]
    fc1 = keras["fc1/kernel"]  # (7*7*C, F) in H,W,C order -> (F, C*7*7) in C,H,W order
    torch_layout["classifier.0.weight"] = fc1.reshape(7, 7, -1, fc1.shape[1]).transpose(3, 2, 0, 1).reshape(fc1.shape[1], -1)
    torch_layout["classifier.0.bias"] = keras["fc1/bias"]
    torch_layout["classifier.3.weight"] = keras["fc2/kernel"].T
    torch_layout["classifier.3.bias"] = keras["fc2/bias"]
    write_keras_h5(tmp_path / "vgg16.h5", keras)
    np.savez(tmp_path / "vgg16_from_caffe.npz", **torch_layout)
    a = fcn_jax.load_weights(str(tmp_path / "vgg16.h5"), "fcn32s", width=WIDTH)["params"]["backbone"]
    b = fcn_jax.load_weights(str(tmp_path / "vgg16_from_caffe.npz"), "fcn32s", width=WIDTH)["params"]["backbone"]
    jax.tree.map(np.testing.assert_array_equal, a, b)


def test_vgg16_torch_mapping(tmp_path: Path) -> None:
    tensors = random_tensors("vgg16-torch", seed=4)
    path = tmp_path / "vgg16-397923af.npz"
    np.savez(path, **tensors)
    variables, meta = fcn_jax.load_weights(str(path), "fcn8s", num_classes=NUM_CLASSES, width=WIDTH,
                                            return_meta=True)
    assert meta["preprocessing"] == "torchvision" and meta["format"] == "vgg16-torch"
    params = variables["params"]
    np.testing.assert_array_equal(params["backbone"]["conv1_1"]["kernel"],
                                  tensors["features.0.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(params["backbone"]["conv5_3"]["bias"], tensors["features.28.bias"])
    np.testing.assert_array_equal(params["backbone"]["fc7"]["kernel"][0, 0], tensors["classifier.3.weight"].T)
    assert params["score_fr"]["kernel"].shape == (1, 1, 256, NUM_CLASSES)
    assert all(v.dtype == np.float32 for v in jax.tree.leaves(params))
    check_heads_at_init(params)


# --------------------------------------------------------------------------------------- conventions

@pytest.mark.parametrize("name, expected", [("vgg16_from_caffe.npz", "caffe"), ("vgg16-397923af.npz", "torchvision"),
                                            ("vgg16-torchvision.npz", "torchvision")])
def test_vgg16_torch_convention_from_file_name(name: str, expected: str, tmp_path: Path) -> None:
    np.savez(tmp_path / name, **random_tensors("vgg16-torch"))
    _, meta = fcn_jax.load_weights(str(tmp_path / name), "fcn32s", width=WIDTH, return_meta=True)
    assert meta["preprocessing"] == expected and meta["preprocessing_from"] == "file name"


def test_vgg16_torch_convention_ambiguous_needs_argument(tmp_path: Path) -> None:
    path = tmp_path / "vgg16.npz"
    np.savez(path, **random_tensors("vgg16-torch"))
    with pytest.raises(WeightsError, match="vgg16.npz.*convention="):
        fcn_jax.load_weights(str(path), "fcn32s", width=WIDTH)
    _, meta = fcn_jax.load_weights(str(path), "fcn32s", width=WIDTH, convention="torchvision", return_meta=True)
    assert meta["preprocessing"] == "torchvision" and meta["preprocessing_from"] == "argument"


def test_convention_recorded_in_converted_files(tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    tensors = random_tensors("vgg16-torch")
    np.savez(tmp_path / "a.npz", __preprocessing__=np.array("torchvision"), **tensors)
    save_file(tensors, str(tmp_path / "b.safetensors"), metadata={"preprocessing": "caffe"})
    for name, expected in (("a.npz", "torchvision"), ("b.safetensors", "caffe")):
        _, meta = fcn_jax.load_weights(str(tmp_path / name), "fcn32s", width=WIDTH, return_meta=True)
        assert (meta["preprocessing"], meta["preprocessing_from"]) == (expected, "file metadata")


def test_fcn_weights_are_caffe_unless_overridden(tmp_path: Path) -> None:
    path = tmp_path / "fcn32s_from_caffe.npz"
    np.savez(path, **random_tensors("fcn"))
    _, meta = fcn_jax.load_weights(str(path), width=WIDTH, return_meta=True)
    assert meta["preprocessing"] == "caffe"
    _, meta = fcn_jax.load_weights(str(path), width=WIDTH, convention="torchvision", return_meta=True)
    assert meta["preprocessing"] == "torchvision"
    with pytest.raises(WeightsError, match="'bgr'"):
        fcn_jax.load_weights(str(path), width=WIDTH, convention="bgr")


# ------------------------------------------------------------------------------------------- errors

@pytest.fixture(scope="module")
def fcn8s_npz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("w") / "fcn8s_from_caffe.npz"
    np.savez(path, **random_tensors("fcn", "fcn8s"))
    return path


def test_variant_inferred_from_keys_and_name(fcn8s_npz: Path, tmp_path: Path) -> None:
    _, meta = fcn_jax.load_weights(str(fcn8s_npz), width=WIDTH, return_meta=True)
    assert (meta["model"]["variant"], meta["model"]["num_classes"]) == ("fcn8s", NUM_CLASSES)
    atonce = tmp_path / "fcn8s-atonce_from_caffe.npz"
    atonce.write_bytes(fcn8s_npz.read_bytes())
    _, meta = fcn_jax.load_weights(str(atonce), width=WIDTH, return_meta=True)
    assert meta["model"]["variant"] == "fcn8s-atonce"


def test_wrong_variant_names_the_keys(fcn8s_npz: Path) -> None:
    with pytest.raises(WeightsError) as e:
        fcn_jax.load_weights(str(fcn8s_npz), "fcn32s", width=WIDTH)
    msg = str(e.value)
    assert "fcn8s_from_caffe.npz" in msg and "looks like fcn8s" in msg and "\n" not in msg
    for key in ("upscore.weight", "score_pool4.weight", "score_pool3.bias", "upscore8.weight"):
        assert key in msg


def test_wrong_num_classes(fcn8s_npz: Path) -> None:
    with pytest.raises(WeightsError, match=r"num_classes 21 requested.*5 classes.*score_fr\.weight has shape \(5, 256, 1, 1\)"):
        fcn_jax.load_weights(str(fcn8s_npz), "fcn8s", num_classes=21, width=WIDTH)


def test_wrong_shape_names_key_and_both_shapes(tmp_path: Path) -> None:
    tensors = random_tensors("fcn", "fcn16s")
    tensors["conv3_2.weight"] = np.zeros((16, 8, 3, 3), np.float32)
    np.savez(tmp_path / "w.npz", **tensors)
    with pytest.raises(WeightsError, match=r"conv3_2\.weight has shape \(16, 8, 3, 3\), expected \(16, 16, 3, 3\)"):
        fcn_jax.load_weights(str(tmp_path / "w.npz"), width=WIDTH)


def test_wrong_width_is_a_shape_error(fcn8s_npz: Path) -> None:
    with pytest.raises(WeightsError, match=r"conv1_1\.weight has shape \(4, 3, 3, 3\), expected \(64, 3, 3, 3\)"):
        fcn_jax.load_weights(str(fcn8s_npz))


def test_missing_and_extra_keys(tmp_path: Path) -> None:
    tensors = random_tensors("vgg16-torch")
    del tensors["features.10.bias"]
    tensors["features.30.weight"] = np.zeros(3, np.float32)
    np.savez(tmp_path / "vgg16_from_caffe.npz", **tensors)
    with pytest.raises(WeightsError, match=r"missing keys features\.10\.bias; unexpected keys features\.30\.weight"):
        fcn_jax.load_weights(str(tmp_path / "vgg16_from_caffe.npz"), "fcn32s", width=WIDTH)


def test_unrecognised_keys_and_bad_arguments(tmp_path: Path) -> None:
    np.savez(tmp_path / "x.npz", foo=np.zeros(3))
    with pytest.raises(WeightsError, match="x.npz: unrecognised weights.*found foo"):
        fcn_jax.load_weights(str(tmp_path / "x.npz"))
    np.savez(tmp_path / "vgg16_from_caffe.npz", **random_tensors("vgg16-torch"))
    with pytest.raises(WeightsError, match="pass variant="):
        fcn_jax.load_weights(str(tmp_path / "vgg16_from_caffe.npz"), width=WIDTH)
    with pytest.raises(WeightsError, match="unknown FCN variant 'fcn4s'"):
        fcn_jax.load_weights(str(tmp_path / "vgg16_from_caffe.npz"), "fcn4s")


def test_missing_torch_for_pth(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "fcn32s_from_caffe.pth"
    path.write_bytes(b"PK\x03\x04 not really")
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
    with pytest.raises(WeightsError) as e:
        fcn_jax.load_weights(str(path))
    assert "fcn32s_from_caffe.pth" in str(e.value) and "pip install torch" in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("suffix", [".pth", ".npz", ".safetensors", ".h5"])
def test_corrupt_file(suffix: str, tmp_path: Path) -> None:
    if suffix == ".pth":
        pytest.importorskip("torch")
    path = tmp_path / f"broken{suffix}"
    path.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(WeightsError, match=f"broken\\{suffix}: cannot read") as e:
        fcn_jax.load_weights(str(path), "fcn32s")
    assert "\n" not in str(e.value)


def test_missing_file_and_unknown_extension(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="nope.pth: no such file"):
        fcn_jax.load_weights(str(tmp_path / "nope.pth"))
    (tmp_path / "w.tflite").write_bytes(b"x")
    with pytest.raises(WeightsError, match=r"w\.tflite: unknown weights file extension '\.tflite'"):
        fcn_jax.load_weights(str(tmp_path / "w.tflite"))


def test_pth_state_dict_and_wrapped_checkpoint(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    tensors = random_tensors("fcn", "fcn16s")
    state = {k: torch.from_numpy(v) for k, v in tensors.items()}
    torch.save(state, tmp_path / "plain.pth")
    torch.save({"epoch": 3, "model_state_dict": state}, tmp_path / "wrapped.pth")
    a = fcn_jax.load_weights(str(tmp_path / "plain.pth"), width=WIDTH)
    b = fcn_jax.load_weights(str(tmp_path / "wrapped.pth"), width=WIDTH)
    jax.tree.map(np.testing.assert_array_equal, a, b)
    np.testing.assert_array_equal(a["params"]["upscore16"]["kernel"], tensors["upscore16.weight"].transpose(2, 3, 1, 0))
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(WeightsError, match="list.pth: not a PyTorch state dict"):
        fcn_jax.load_weights(str(tmp_path / "list.pth"))


# -------------------------------------------------------------------------------------- checkpoints

def test_checkpoint_directory(fcn8s_npz: Path, tmp_path: Path) -> None:
    variables = fcn_jax.load_weights(str(fcn8s_npz), width=WIDTH)
    config = ModelConfig("fcn8s", NUM_CLASSES, width=WIDTH)
    checkpoint.save_model(str(tmp_path / "ck"), variables, checkpoint.model_meta(config, list("abcde"), "caffe"))
    loaded, meta = fcn_jax.load_weights(str(tmp_path / "ck"), return_meta=True)
    jax.tree.map(np.testing.assert_array_equal, loaded, variables)
    assert meta["class_names"] == list("abcde") and meta["preprocessing"] == "caffe"
    fcn_jax.load_weights(str(tmp_path / "ck"), "fcn8s", NUM_CLASSES, width=WIDTH, convention="caffe")
    with pytest.raises(LoadError, match="variant 'fcn16s' requested, checkpoint has 'fcn8s'"):
        fcn_jax.load_weights(str(tmp_path / "ck"), "fcn16s")
    with pytest.raises(LoadError, match="preprocessing 'torchvision' requested"):
        fcn_jax.load_weights(str(tmp_path / "ck"), convention="torchvision")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LoadError, match="empty: not an fcn-jax checkpoint"):
        fcn_jax.load_weights(str(tmp_path / "empty"))


# ------------------------------------------------------------------------------------ stage init

@pytest.fixture(scope="module")
def vgg16_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("vgg") / "vgg16_from_caffe.npz"
    np.savez(path, **random_tensors("vgg16-torch", seed=5))
    return path


def test_fcn16s_from_fcn32s(vgg16_file: Path, tmp_path: Path) -> None:
    """Staged training: backbone and score_fr copied exactly, score_pool4 zero, upsamplers bilinear."""
    np.savez(tmp_path / "fcn32s.npz", **random_tensors("fcn", "fcn32s", seed=6))
    source = fcn_jax.load_weights(str(tmp_path / "fcn32s.npz"), width=WIDTH)
    target = fcn_jax.load_weights(str(vgg16_file), "fcn16s", NUM_CLASSES, width=WIDTH)  # heads at init
    params, kept = loading.transfer(target["params"], source["params"])
    src = source["params"]
    jax.tree.map(np.testing.assert_array_equal, params["backbone"], src["backbone"])
    jax.tree.map(np.testing.assert_array_equal, params["score_fr"], src["score_fr"])
    check_heads_at_init({k: v for k, v in params.items() if k not in ("backbone", "score_fr")})
    assert sorted(kept) == ["score_pool4/bias", "score_pool4/kernel", "upscore16/kernel", "upscore2/kernel"]
    assert set(params) == {"backbone", "score_fr", "score_pool4", "upscore2", "upscore16"}  # no 'upscore' taken


def test_fcn8s_from_fcn16s_copies_learned_upscore2(vgg16_file: Path, tmp_path: Path) -> None:
    np.savez(tmp_path / "fcn16s.npz", **random_tensors("fcn", "fcn16s", seed=7))
    source = fcn_jax.load_weights(str(tmp_path / "fcn16s.npz"), width=WIDTH)["params"]
    target = fcn_jax.load_weights(str(vgg16_file), "fcn8s", NUM_CLASSES, width=WIDTH)["params"]
    params, _ = loading.transfer(target, source)
    for name in ("score_pool4", "upscore2", "score_fr"):
        jax.tree.map(np.testing.assert_array_equal, params[name], source[name])
    check_heads_at_init({k: params[k] for k in ("score_pool3", "upscore_pool4", "upscore8")})
    assert "upscore16" not in params


def test_stage_init_rejects_other_backbone(vgg16_file: Path, tmp_path: Path) -> None:
    target = fcn_jax.load_weights(str(vgg16_file), "fcn16s", NUM_CLASSES, width=WIDTH)["params"]
    wider = fcn_jax.load_weights(str(_write(tmp_path / "w.npz", random_tensors("fcn", "fcn32s", width=WIDTH * 2))),
                                 width=WIDTH * 2)["params"]
    with pytest.raises(LoadError, match=r"backbone/conv1_1/kernel has shape \(3, 3, 3, 8\) \(target \(3, 3, 3, 4\)\)"):
        loading.transfer(target, wider)
    del wider["backbone"]["fc7"]
    with pytest.raises(LoadError, match="backbone/fc7/bias missing"):
        loading.transfer(target, wider)


def test_init_params_from_each_kind_of_path(vgg16_file: Path, tmp_path: Path) -> None:
    """Training's --init: a VGG16 file fills the backbone (heads at init), an FCN file of another class
    count keeps its backbone and upsampler-free layers only where shapes fit, a workdir-style checkpoint
    directory works the same; each compared with the source tensors themselves."""
    target_cfg = ModelConfig("fcn16s", 3, width=WIDTH)
    fresh = jax.tree.map(np.asarray, fcn_jax.create_model("fcn16s", 3, width=WIDTH).init(
        jax.random.PRNGKey(0), np.zeros((1, 32, 32, 3), np.float32))["params"])
    vgg = random_tensors("vgg16-torch", seed=5)
    params, info = loading.init_variables(target_cfg, fresh, str(vgg16_file))
    np.testing.assert_array_equal(params["backbone"]["conv1_1"]["kernel"], vgg["features.0.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(params["backbone"]["fc7"]["bias"], vgg["classifier.3.bias"])
    jax.tree.map(np.testing.assert_array_equal, {k: v for k, v in params.items() if k != "backbone"},
                 {k: v for k, v in fresh.items() if k != "backbone"})
    assert info.preprocessing == "caffe"

    fcn = random_tensors("fcn", "fcn32s", num_classes=21, seed=8)  # 21 classes -> a 3-class fcn16s
    params, _ = loading.init_variables(target_cfg, fresh, str(_write(tmp_path / "fcn32s_voc.npz", fcn)))
    np.testing.assert_array_equal(params["backbone"]["fc6"]["kernel"], fcn["fc6.weight"].transpose(2, 3, 1, 0))
    for name in ("score_fr", "score_pool4", "upscore2", "upscore16"):  # shapes differ or absent: at init
        jax.tree.map(np.testing.assert_array_equal, params[name], fresh[name])

    ckpt = str(tmp_path / "ck")
    source = fcn_jax.load_weights(str(tmp_path / "fcn32s_voc.npz"), width=WIDTH)
    checkpoint.save_model(ckpt, source, checkpoint.model_meta(ModelConfig("fcn32s", 21, width=WIDTH),
                                                              [f"c{i}" for i in range(21)], "caffe"))
    from_dir, info = loading.init_variables(target_cfg, fresh, ckpt)
    jax.tree.map(np.testing.assert_array_equal, from_dir, params)
    assert info.class_names[3] == "c3"


def _reference_bilinear(size: int, channels: int) -> np.ndarray:
    """The reference's surgery.upsample_filt written out: (size, size, C, C) HWIO, the filter on the
    channel diagonal, zero elsewhere."""
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    og = np.ogrid[:size, :size]
    filt = (1 - abs(og[0] - center) / factor) * (1 - abs(og[1] - center) / factor)
    kernel = np.zeros((size, size, channels, channels), np.float32)
    for c in range(channels):
        kernel[:, :, c, c] = filt
    return kernel


def test_fine_tune_from_voc_fcn8s_to_new_classes(tmp_path: Path) -> None:
    """Fine-tuning the reference's 21-class FCN-8s file to a 5-class fcn8s: every layer whose shape fits is
    the source tensor, score layers are zeros (as the reference initialises new score layers), upsamplers the
    bilinear kernel for 5 classes; the report names each group."""
    fcn = random_tensors("fcn", "fcn8s", num_classes=21, seed=11)
    path = str(_write(tmp_path / "fcn8s_voc.npz", fcn))
    target_cfg = ModelConfig("fcn8s", 5, width=WIDTH)
    fresh = dict(initial_variables(target_cfg.build(), jax.random.PRNGKey(0))["params"])
    fresh["backbone"] = jax.tree.map(lambda a: np.full(a.shape, 7.0, np.float32), fresh["backbone"])  # sentinel
    lines: list[str] = []
    params, info = loading.init_variables(target_cfg, fresh, path, report=lines.append)
    for layer in ("conv1_1", "conv3_3", "conv5_3", "fc6", "fc7"):
        np.testing.assert_array_equal(params["backbone"][layer]["kernel"], fcn[f"{layer}.weight"].transpose(2, 3, 1, 0))
        np.testing.assert_array_equal(params["backbone"][layer]["bias"], fcn[f"{layer}.bias"])
    assert not any(np.any(np.asarray(a) == 7.0) for a in jax.tree.leaves(params["backbone"]))  # all copied
    for name in ("score_fr", "score_pool4", "score_pool3"):
        assert params[name]["kernel"].shape[-1] == 5
        assert not np.any(params[name]["kernel"]) and not np.any(params[name]["bias"]), name
    for name, size in (("upscore2", 4), ("upscore_pool4", 4), ("upscore8", 16)):
        np.testing.assert_array_equal(params[name]["kernel"], _reference_bilinear(size, 5), err_msg=name)
    assert info.config.num_classes == 21 and info.config.variant == "fcn8s"
    text = "\n".join(lines)
    assert f"init from {path} (fcn8s, 21 classes)" in text
    assert "copied 15 of 21 layers: backbone (15 layers)" in text
    assert ("re-initialised for fcn8s with 5 classes: score_fr (zeros), score_pool3 (zeros), score_pool4 (zeros), "
            "upscore2 (bilinear), upscore8 (bilinear), upscore_pool4 (bilinear)") in text


def _write(path: Path, tensors: dict[str, np.ndarray]) -> Path:
    np.savez(path, **tensors)
    return path


def test_non_finite_weights_are_refused_naming_the_key(tmp_path: Path) -> None:
    tensors = random_tensors("fcn", "fcn32s", seed=9)
    tensors["conv3_2.weight"][0, 0, 1, 1] = np.nan
    tensors["score_fr.bias"][:2] = np.inf
    path = _write(tmp_path / "fcn32s_broken.npz", tensors)
    with pytest.raises(WeightsError, match=r"fcn32s_broken.npz: non-finite values \(NaN or inf\) in "
                                           r"conv3_2.weight \(1 of \d+ values\), score_fr.bias \(2 of 5 values\)"):
        fcn_jax.load_weights(str(path), width=WIDTH)


@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
@pytest.mark.parametrize("dtype", [np.int32, np.bool_])
def test_non_float_weights_are_refused_naming_the_key(suffix: str, dtype: type, tmp_path: Path) -> None:
    """Integer or boolean arrays under weight keys are a broken file, not a float32 model (issue 24, item 10)."""
    tensors = random_tensors("fcn", "fcn32s")
    tensors["score_fr.weight"] = (tensors["score_fr.weight"] > 0).astype(dtype)
    path = tmp_path / f"fcn32s_from_caffe{suffix}"
    if suffix == ".npz":
        np.savez(path, **tensors)
    else:
        from safetensors.numpy import save_file
        save_file(tensors, str(path))
    with pytest.raises(WeightsError, match=rf"must be floating point: score_fr\.weight is {np.dtype(dtype).name}"):
        fcn_jax.load_weights(str(path), width=WIDTH)


def test_non_float_pth_tensor_is_refused(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    tensors = random_tensors("fcn", "fcn32s")
    state = {k: torch.from_numpy(v) for k, v in tensors.items()}
    state["fc7.bias"] = torch.zeros(state["fc7.bias"].shape, dtype=torch.int64)
    torch.save(state, tmp_path / "fcn32s_from_caffe.pth")
    with pytest.raises(WeightsError, match=r"must be floating point: fc7\.bias is int64"):
        fcn_jax.load_weights(str(tmp_path / "fcn32s_from_caffe.pth"), width=WIDTH)


def test_torch_refusals_are_one_clean_line(tmp_path: Path) -> None:
    """Random bytes and a pickled whole module: one line saying what the file is, no ANSI escapes, nothing cut
    mid-word (torch's own message is several paragraphs with terminal colour codes)."""
    torch = pytest.importorskip("torch")
    (tmp_path / "random.pth").write_bytes(np.random.RandomState(0).bytes(3000))
    torch.save(torch.nn.Conv2d(3, 4, 3), tmp_path / "module.pth")
    for name, expected in (("random.pth", r"random\.pth: cannot read as a \.pth weights file \(unpickling failed: [^)]+\)$"),
                           ("module.pth", r"module\.pth: holds a pickled Python object \(torch\.nn\.modules\.conv"
                                          r"\.Conv2d\), not a state dict of tensors; save model\.state_dict\(\)")):
        with pytest.raises(WeightsError) as e:
            fcn_jax.load_weights(str(tmp_path / name), "fcn32s")
        text = str(e.value)
        assert "\n" not in text and "\x1b" not in text and "weights_only" not in text, text
        assert __import__("re").search(expected, text), text


def test_long_reader_errors_are_cut_at_a_word() -> None:
    text = weights.one_line("\x1b[1mbold\x1b[0m " + "word " * 100)
    assert text.startswith("bold word") and text.endswith("word ...") and "\x1b" not in text and len(text) <= 164


def test_a_prototxt_is_named_a_network_definition(tmp_path: Path) -> None:
    (tmp_path / "deploy.prototxt").write_text('name: "voc-fcn8s"\n')
    with pytest.raises(WeightsError, match=r"deploy\.prototxt: a \.prototxt file is a Caffe network definition, "
                                           r"not weights; pass the \.caffemodel"):
        fcn_jax.load_weights(str(tmp_path / "deploy.prototxt"), "fcn8s")
