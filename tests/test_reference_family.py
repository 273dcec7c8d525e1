"""SIFT Flow's two heads and NYUD's early and late fusion, against PyTorch nets written here from the
reference's siftflow-fcn*/net.py, nyud-fcn32s-color-d/net.py and nyud-fcn32s-color-hha/net.py, loaded
from .caffemodel files this module writes with the reference's layer names (tests/test_caffe.py's encoder).
"""
from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import pytest
from flax import traverse_util

import fcn_jax
from fcn_jax import train_lib
from fcn_jax.config import ModelConfig
from fcn_jax.models import final_upsampler_names, get_variant, upsampler_names
from test_caffe import conv_param, layer, text, write

torch = pytest.importorskip("torch")
nn = torch.nn

WIDTH = 1 / 16
BLOCKS = ((1, 2, 64), (2, 2, 128), (3, 3, 256), (4, 3, 512), (5, 3, 512))
HEIGHT, WIDTH_PX = 37, 45


def c(channels: int) -> int:
    return max(1, int(round(channels * WIDTH)))


class TorchVGG(nn.Module):
    """One modality's VGG16 of the reference nets (conv1_1 pad 100, 2x2/2 ceil pools, fc6 7x7 VALID, fc7):
    forward -> (pool3, pool4, fc7). Layer names get ``suffix`` (color-hha) or conv1_1 another name (color-d)."""

    def __init__(self, in_channels: int, suffix: str = "", conv1_1: str = "conv1_1"):
        super().__init__()
        self.names, channels = [], in_channels
        for block, n, out in BLOCKS:
            for i in range(1, n + 1):
                name = conv1_1 if (block, i) == (1, 1) else f"conv{block}_{i}{suffix}"
                self.add_module(name, nn.Conv2d(channels, c(out), 3, padding=100 if (block, i) == (1, 1) else 1))
                self.names.append((block, name))
                channels = c(out)
        self.fc = (f"fc6{suffix}", f"fc7{suffix}")
        self.add_module(self.fc[0], nn.Conv2d(channels, c(4096), 7))
        self.add_module(self.fc[1], nn.Conv2d(c(4096), c(4096), 1))

    def forward(self, x):
        pools, h = {}, x
        for block, n, _ in BLOCKS:
            for name in [nm for b, nm in self.names if b == block]:
                h = torch.relu(getattr(self, name)(h))
            h = nn.functional.max_pool2d(h, 2, 2, ceil_mode=True)
            pools[block] = h
        h = torch.relu(getattr(self, self.fc[1])(torch.relu(getattr(self, self.fc[0])(h))))
        return pools[3], pools[4], h


def crop(x, offset: int, like):
    return x[:, :, offset:offset + like.shape[2], offset:offset + like.shape[3]]


class TorchSiftFlow(nn.Module):
    """siftflow-fcn{32,16,8}s/net.py: score_fr_sem / _geo, upscore2, score_pool4, upscore_pool4, score_pool3,
    upscore8 per head (fcn8s), crops 5, 9, 31 (16s: 5, 27; 32s: 19)."""

    def __init__(self, stride: int, classes=(("sem", 33), ("geo", 3))):
        super().__init__()
        self.stride, self.classes = stride, classes
        self.vgg = TorchVGG(3)
        for head, n in classes:
            self.add_module(f"score_fr_{head}", nn.Conv2d(c(4096), n, 1))
            if stride == 32:
                self.add_module(f"upscore_{head}", nn.ConvTranspose2d(n, n, 64, 32, bias=False))
                continue
            self.add_module(f"upscore2_{head}", nn.ConvTranspose2d(n, n, 4, 2, bias=False))
            self.add_module(f"score_pool4_{head}", nn.Conv2d(c(512), n, 1))
            if stride == 16:
                self.add_module(f"upscore16_{head}", nn.ConvTranspose2d(n, n, 32, 16, bias=False))
                continue
            self.add_module(f"upscore_pool4_{head}", nn.ConvTranspose2d(n, n, 4, 2, bias=False))
            self.add_module(f"score_pool3_{head}", nn.Conv2d(c(256), n, 1))
            self.add_module(f"upscore8_{head}", nn.ConvTranspose2d(n, n, 16, 8, bias=False))

    def forward(self, x):
        pool3, pool4, fc7 = self.vgg(x)
        out = {}
        for head, _ in self.classes:
            m = lambda name: getattr(self, f"{name}_{head}")  # noqa: E731
            h = m("score_fr")(fc7)
            if self.stride == 32:
                out[head] = crop(m("upscore")(h), 19, x)
                continue
            up = m("upscore2")(h)
            h = up + crop(m("score_pool4")(pool4), 5, up)
            if self.stride == 16:
                out[head] = crop(m("upscore16")(h), 27, x)
                continue
            up = m("upscore_pool4")(h)
            h = up + crop(m("score_pool3")(pool3), 9, up)
            out[head] = crop(m("upscore8")(h), 31, x)
        return out


class TorchColorD(nn.Module):
    """nyud-fcn32s-color-d/net.py: Concat(color, depth) -> conv1_1_bgrd ... score_fr -> upscore -> crop 19."""

    def __init__(self, n: int = 40):
        super().__init__()
        self.vgg = TorchVGG(4, conv1_1="conv1_1_bgrd")
        self.score_fr = nn.Conv2d(c(4096), n, 1)
        self.upscore = nn.ConvTranspose2d(n, n, 64, 32, bias=False)

    def forward(self, x):
        return crop(self.upscore(self.score_fr(self.vgg(x)[2])), 19, x)


class TorchColorHHA(nn.Module):
    """nyud-fcn32s-color-hha/net.py: a VGG16 per modality (layers suffixed 'color' / 'hha'), score_frcolor
    and score_frhha summed by Eltwise SUM with coeff 0.5, 0.5, one upscore, crop 19 against the colour input."""

    def __init__(self, n: int = 40):
        super().__init__()
        self.color = TorchVGG(3, "color", "conv1_1color")
        self.hha = TorchVGG(3, "hha", "conv1_1hha")
        self.score_frcolor = nn.Conv2d(c(4096), n, 1)
        self.score_frhha = nn.Conv2d(c(4096), n, 1)
        self.upscore = nn.ConvTranspose2d(n, n, 64, 32, bias=False)

    def forward(self, x):  # x: (N, 6, H, W), colour first
        color, hha = x[:, :3], x[:, 3:]
        fused = 0.5 * self.score_frcolor(self.color(color)[2]) + 0.5 * self.score_frhha(self.hha(hha)[2])
        return crop(self.upscore(fused), 19, color)


def randomised(model: nn.Module, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            fan_in = p[0].numel() if p.ndim > 1 else 16
            p.copy_(torch.randn_like(p) * (2.0 / fan_in) ** 0.5)
    return model.eval()


def caffe_layers(model: nn.Module) -> dict[str, tuple[np.ndarray, ...]]:
    """{Caffe layer name: (weight, bias?)} of a reference-named torch net (the attribute path's last part)."""
    layers: dict[str, list[np.ndarray]] = {}
    for key, value in model.state_dict().items():
        name, kind = key.split(".")[-2:]
        layers.setdefault(name, [None, None])[0 if kind == "weight" else 1] = value.numpy()
    return {name: tuple(b for b in blobs if b is not None) for name, blobs in layers.items()}


def caffemodel(name: str, layers: dict[str, tuple[np.ndarray, ...]]) -> bytes:
    """A net with these layers as the reference saves it (Convolution / Deconvolution, string types)."""
    out = text(1, name)
    for lname, blobs in layers.items():
        kind = "Deconvolution" if lname.startswith("upscore") else "Convolution"
        out += layer(lname, kind, "bottom", blobs, conv_param(blobs[0].shape[0], blobs[0].shape[-1]))
    return out


CASES = {  # variant: (torch net, input channels, expected classes)
    "siftflow-fcn8s": (lambda: TorchSiftFlow(8), 3, 33),
    "nyud-fcn32s-color-d": (lambda: TorchColorD(), 4, 40),
    "nyud-fcn32s-color-hha": (lambda: TorchColorHHA(), 6, 40),
}


@pytest.mark.parametrize("variant", list(CASES))
def test_caffemodel_is_detected_and_matches_the_reference_net(variant: str, tmp_path: Path) -> None:
    make, channels, classes = CASES[variant]
    net = randomised(make(), seed=len(variant))
    path = write(tmp_path / f"{variant}.caffemodel", caffemodel(variant, caffe_layers(net)))
    variables, meta = fcn_jax.load_weights(str(path), width=WIDTH, return_meta=True)  # nothing named: detected
    assert meta["model"]["variant"] == variant and meta["model"]["num_classes"] == classes
    # the data layer's mean of the reference model's dataset (siftflow_layers.py, nyud_layers.py)
    assert meta["preprocessing"] == ("caffe-siftflow" if variant.startswith("siftflow") else "caffe-nyud")
    x = np.random.RandomState(1).uniform(-100, 100, (1, HEIGHT, WIDTH_PX, channels)).astype(np.float32)
    with torch.no_grad():
        expected = net(torch.from_numpy(x).permute(0, 3, 1, 2))
    got = jax.jit(fcn_jax.create_model(variant, num_classes=classes, width=WIDTH).apply)(variables, x)
    if not isinstance(expected, dict):
        expected, got = {"": expected}, {"": got}
    assert set(got) == set(expected)
    for head, value in expected.items():
        value = value.permute(0, 2, 3, 1).numpy()
        assert got[head].shape == value.shape == (1, HEIGHT, WIDTH_PX, value.shape[-1])
        np.testing.assert_allclose(np.asarray(got[head]), value, rtol=1e-4, atol=1e-4 * float(np.abs(value).max()),
                                   err_msg=f"{variant} {head}")


def test_siftflow_heads_and_their_upsamplers() -> None:
    model = fcn_jax.create_model("siftflow-fcn16s", num_classes=33, width=WIDTH)
    out = jax.eval_shape(model.init_with_output, jax.random.key(0), jax.ShapeDtypeStruct((2, 31, 29, 3), np.float32))[0]
    assert {k: v.shape for k, v in out.items()} == {"sem": (2, 31, 29, 33), "geo": (2, 31, 29, 3)}
    assert upsampler_names("siftflow-fcn16s") == ("upscore2_sem", "upscore16_sem", "upscore2_geo", "upscore16_geo")
    assert final_upsampler_names("siftflow-fcn16s") == ("upscore16_sem", "upscore16_geo")
    params = jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 32, 32, 3), np.float32))["params"]
    labels = traverse_util.flatten_dict(train_lib.param_labels(params, ModelConfig("siftflow-fcn16s", 33, WIDTH)))
    frozen = sorted({path[0] for path, label in labels.items() if label == "frozen"})
    assert frozen == ["upscore16_geo", "upscore16_sem"]  # freeze_upsamplers='final': every head's last one


def test_vgg16_starts_the_fusion_nets_as_the_reference_does(tmp_path: Path) -> None:
    """color-d: conv1_1_bgrd's depth filter is the mean of VGG16's conv1_1 over its input channels
    (nyud-fcn32s-color-d/solve.py); color-hha: VGG16 in both streams."""
    vgg = randomised(TorchVGG(3), seed=3)
    index = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
    convs = [name for _, name in vgg.names]
    state = {}
    for name, i in zip(convs, index):
        state[f"features.{i}.weight"] = getattr(vgg, name).weight.detach().numpy()
        state[f"features.{i}.bias"] = getattr(vgg, name).bias.detach().numpy()
    state["classifier.0.weight"] = vgg.fc6.weight.detach().numpy().reshape(c(4096), -1)
    state["classifier.0.bias"] = vgg.fc6.bias.detach().numpy()
    state["classifier.3.weight"] = vgg.fc7.weight.detach().numpy()[:, :, 0, 0]
    state["classifier.3.bias"] = vgg.fc7.bias.detach().numpy()
    path = tmp_path / "vgg16_from_caffe.npz"
    np.savez(path, **state)
    conv1_1 = vgg.conv1_1.weight.detach().numpy()  # (O, 3, 3, 3) OIHW
    early = fcn_jax.load_weights(str(path), "nyud-fcn32s-color-d", 40, width=WIDTH)["params"]
    kernel = np.asarray(early["backbone"]["conv1_1"]["kernel"])  # HWIO (3, 3, 4, O)
    np.testing.assert_array_equal(kernel[:, :, :3], conv1_1.transpose(2, 3, 1, 0))
    np.testing.assert_allclose(kernel[:, :, 3], conv1_1.mean(axis=1).transpose(1, 2, 0), rtol=1e-6, atol=1e-7)
    late = fcn_jax.load_weights(str(path), "nyud-fcn32s-color-hha", 40, width=WIDTH)["params"]
    for stream in ("backbone_color", "backbone_hha"):
        np.testing.assert_array_equal(np.asarray(late[stream]["conv1_1"]["kernel"]), conv1_1.transpose(2, 3, 1, 0))
        np.testing.assert_array_equal(np.asarray(late[stream]["fc7"]["kernel"])[0, 0], state["classifier.3.weight"].T)
    assert not np.asarray(late["score_frcolor"]["kernel"]).any()


def test_fusion_specs_and_wrong_inputs() -> None:
    assert get_variant("nyud-fcn32s-color-hha").in_channels == 6
    model = fcn_jax.create_model("nyud-fcn32s-color-d", num_classes=40, width=WIDTH)
    with pytest.raises(ValueError, match=r"nyud-fcn32s-color-d expects NHWC input with 4 channels \(BGR image \+ "
                                         r"log depth \(4 channels\)\), got shape \(1, 32, 32, 3\)"):
        jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 32, 32, 3), np.float32))


def test_imagenet_googlenet_caffemodel_starts_fcn_googlenet(tmp_path: Path) -> None:
    """bvlc_googlenet.caffemodel (auxiliary classifiers and all) -> load_weights: the backbone is the file's
    blobs as HWIO kernels, the head the model's own initialisation (zero scores, bilinear upscore)."""
    from fcn_jax.models import bilinear_filter
    from fcn_jax.models.backbones.googlenet import caffe_shapes, param_name

    rng = np.random.RandomState(0)
    blobs = {name: tuple(rng.standard_normal(s).astype(np.float32) for s in shapes)
             for name, shapes in caffe_shapes(WIDTH).items()}
    extra = {"loss1/conv": (np.ones((4, 8, 1, 1), np.float32), np.ones(4, np.float32)),
             "loss3/classifier": (np.ones((10, 64), np.float32), np.ones(10, np.float32))}
    path = write(tmp_path / "bvlc_googlenet.caffemodel", caffemodel("GoogleNet", {**blobs, **extra}))
    with pytest.raises(ValueError, match=r"ImageNet googlenet weights hold no FCN head; pass variant= \(one of "
                                         r"fcn-googlenet\)"):
        fcn_jax.load_weights(str(path), width=WIDTH)
    with pytest.raises(ValueError, match="ImageNet googlenet weights cannot start fcn32s, whose backbone is vgg16"):
        fcn_jax.load_weights(str(path), "fcn32s", width=WIDTH)
    params, meta = fcn_jax.load_weights(str(path), "fcn-googlenet", 5, width=WIDTH, return_meta=True)
    params = params["params"]
    assert meta["format"] == "imagenet-backbone" and meta["preprocessing"] == "caffe"
    for name, (weight, bias) in blobs.items():
        layer = params["backbone"][param_name(name)]
        np.testing.assert_array_equal(np.asarray(layer["kernel"]), weight.transpose(2, 3, 1, 0), err_msg=name)
        np.testing.assert_array_equal(np.asarray(layer["bias"]), bias, err_msg=name)
    assert not np.asarray(params["score_fr"]["kernel"]).any()
    np.testing.assert_array_equal(np.asarray(params["upscore"]["kernel"])[:, :, 2, 2], bilinear_filter(63))


def test_late_fusion_starts_from_one_fcn_per_stream(tmp_path: Path) -> None:
    """--init color=A,hha=B: each stream's VGG16 and score_fr from its own FCN-32s (nyud-fcn32s-color-hha/
    solve.py's transplant with suffixes); the shared upscore stays bilinear and fixed."""
    from fcn_jax import loading
    from fcn_jax.models import bilinear_filter

    sources = {}
    for seed, stream in enumerate(("color", "hha")):
        net = randomised(TorchColorD(), seed)  # an FCN-32s, 40 classes ...
        state = {k.split(".", 1)[1] if k.startswith("vgg.") else k: v.numpy() for k, v in net.state_dict().items()}
        state["conv1_1.weight"] = state.pop("conv1_1_bgrd.weight")[:, :3]  # ... on RGB input
        state["conv1_1.bias"] = state.pop("conv1_1_bgrd.bias")
        sources[stream] = (tmp_path / f"nyud-fcn32s-{stream}.npz", state)
        np.savez(sources[stream][0], **state)
    cfg = ModelConfig("nyud-fcn32s-color-hha", 40, WIDTH)
    fresh = jax.tree.map(np.asarray, fcn_jax.models.initial_variables(cfg.build(), jax.random.key(0))["params"])
    lines = []
    init = ",".join(f"{stream}={path}" for stream, (path, _) in sources.items())
    params, _ = loading.init_variables(cfg, fresh, init, keep=("upscore",), report=lines.append)
    for stream, (_, state) in sources.items():
        np.testing.assert_array_equal(params[f"backbone_{stream}"]["conv2_1"]["kernel"],
                                      state["conv2_1.weight"].transpose(2, 3, 1, 0))
        np.testing.assert_array_equal(params[f"score_fr{stream}"]["kernel"][0, 0], state["score_fr.weight"][:, :, 0, 0].T)
        np.testing.assert_array_equal(params[f"score_fr{stream}"]["bias"], state["score_fr.bias"])
    np.testing.assert_array_equal(params["upscore"]["kernel"][:, :, 7, 7], bilinear_filter(64))
    assert "backbone_color (15 layers), backbone_hha (15 layers), score_frcolor, score_frhha" in lines[0]
    assert "upscore (bilinear, fixed)" in lines[0]
    with pytest.raises(ValueError, match=r"needs exactly one source per stream: color=PATH,hha=PATH"):
        loading.init_variables(cfg, fresh, f"color={sources['color'][0]}", keep=())


def test_convert_names_a_reference_models_classes_and_mean(tmp_path: Path) -> None:
    """python -m fcn_jax.convert on siftflow-fcn8s's .caffemodel: SIFT Flow's 33 class names and its mean go
    into the checkpoint, with no --class-names needed."""
    from fcn_jax.cli.convert import main as convert_main
    from fcn_jax.data.sift_flow import SIFT_FLOW_CLASSES

    net = randomised(TorchSiftFlow(32), seed=5)
    path = write(tmp_path / "siftflow-fcn32s-heavy.caffemodel", caffemodel("siftflow-fcn32s", caffe_layers(net)))
    out = tmp_path / "ckpt"
    assert convert_main([str(path), "--out", str(out), "--width", str(WIDTH)]) == 0
    _, info = fcn_jax.loading.load(str(out))
    assert (info.config.variant, info.config.num_classes, info.preprocessing) == ("siftflow-fcn32s", 33, "caffe-siftflow")
    assert tuple(info.class_names) == tuple(SIFT_FLOW_CLASSES) and len(SIFT_FLOW_CLASSES) == 33
