"""FCN-AlexNet (voc-fcn-alexnet): parity with an independent PyTorch net written here from the reference's
net.py, output sizes, the crop offset from Caffe's coord-map rules, the parameter count, the ImageNet
CaffeNet hook and the reference solver preset."""
from __future__ import annotations

from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fcn_jax
from fcn_jax import configs
from fcn_jax.models import FCN, get_variant
from fcn_jax.models.backbones import get_backbone
from fcn_jax.models.backbones import alexnet

torch = pytest.importorskip("torch")
F = torch.nn.functional

VARIANT = "fcn-alexnet"
WIDTH = 1 / 16  # convs 6, 16, 24, 24, 16; fc 256
NUM_CLASSES = 5
LRN_N, LRN_ALPHA, LRN_BETA = 5, 1e-4, 0.75  # net.py: L.LRN(local_size=5, alpha=1e-4, beta=0.75); Caffe's k = 1

# net.py, written out: (name, kernel, stride, pad, group, channels at full width)
CONVS = (("conv1", 11, 4, 100, 1, 96), ("conv2", 5, 1, 2, 2, 256), ("conv3", 3, 1, 1, 1, 384),
         ("conv4", 3, 1, 1, 2, 384), ("conv5", 3, 1, 1, 2, 256))
FC = 4096


def even(c: int, width: float) -> int:
    """The project's rule for grouped nets: channels rounded to an even number, at least 2."""
    return max(2, 2 * round(c * width / 2))


def fc_channels(width: float) -> int:
    return max(1, round(FC * width))


# ------------------------------------------------------------------------------ PyTorch reference

def caffe_lrn(x: torch.Tensor) -> torch.Tensor:
    """Caffe LRN ACROSS_CHANNELS on NCHW: x / (1 + alpha/n * sum of x^2 over n channels centred on c)^beta,
    zero beyond the first and last channel."""
    half = (LRN_N - 1) // 2
    sq = F.pad(x * x, (0, 0, 0, 0, half, half))
    window = sum(sq[:, i:i + x.shape[1]] for i in range(LRN_N))
    return x / (1 + LRN_ALPHA / LRN_N * window) ** LRN_BETA


class TorchFcnAlexNet(torch.nn.Module):
    """voc-fcn-alexnet/net.py in PyTorch (NCHW): conv-ReLU, pool (3/2 ceil) then LRN after conv1 and conv2,
    grouped conv2/4/5, VALID 6x6 fc6, 1x1 fc7, score_fr, upscore (63/32, no bias), crop 18 (val.prototxt)."""

    def __init__(self, num_classes: int, width: float):
        super().__init__()
        c_in = 3
        for name, k, s, p, g, c in CONVS:
            setattr(self, name, torch.nn.Conv2d(c_in, even(c, width), k, stride=s, padding=p, groups=g))
            c_in = even(c, width)
        fc = fc_channels(width)
        self.fc6 = torch.nn.Conv2d(c_in, fc, 6)
        self.fc7 = torch.nn.Conv2d(fc, fc, 1)
        self.score_fr = torch.nn.Conv2d(fc, num_classes, 1)
        self.upscore = torch.nn.ConvTranspose2d(num_classes, num_classes, 63, stride=32, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pool = lambda t: F.max_pool2d(t, 3, 2, ceil_mode=True)  # noqa: E731
        h = caffe_lrn(pool(F.relu(self.conv1(x))))
        h = caffe_lrn(pool(F.relu(self.conv2(h))))
        h = F.relu(self.conv5(F.relu(self.conv4(F.relu(self.conv3(h))))))
        h = F.relu(self.fc7(F.relu(self.fc6(pool(h)))))
        y = self.upscore(self.score_fr(h))
        return y[:, :, 18:18 + x.shape[2], 18:18 + x.shape[3]]


def to_flax(state: dict[str, torch.Tensor]) -> dict:
    """PyTorch weights -> the model's tree: Conv2d (O, I/g, kh, kw) and ConvTranspose2d (C_in, C_out, k, k)
    both HWIO by transpose (2, 3, 1, 0); the backbone's layers under 'backbone'."""
    params: dict = {}
    for key, value in state.items():
        layer, kind = key.split(".")
        a = value.numpy()
        leaf = ("kernel", a.transpose(2, 3, 1, 0)) if kind == "weight" else ("bias", a)
        node = params if layer in ("score_fr", "upscore") else params.setdefault("backbone", {})
        node.setdefault(layer, {})[leaf[0]] = jnp.asarray(leaf[1])
    return params


@pytest.fixture(scope="module")
def reference() -> TorchFcnAlexNet:
    torch.manual_seed(0)
    model = TorchFcnAlexNet(NUM_CLASSES, WIDTH).eval()
    with torch.no_grad():
        for p in model.state_dict().values():
            fan_in = p[0].numel() if p.ndim > 1 else 16
            p.copy_(torch.randn_like(p) * (2.0 / fan_in) ** 0.5)  # score_fr and upscore random too
    return model


# XLA:CPU spends seconds optimising fc6's im2col (36 shifted views); unoptimised, the test compiles in half the time.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


# ------------------------------------------------------------------------------------------- tests

def test_caffe_lrn_matches_a_loop_and_torch() -> None:
    """The two LRNs used here (torch, by formula; the model's, in JAX) against a plain loop over channels,
    with values large enough that the normaliser is far from 1; torch's own LRN agrees too."""
    x = np.random.RandomState(0).standard_normal((2, 7, 3, 4)).astype(np.float32) * 300  # NCHW
    expected = np.empty_like(x)
    for c in range(x.shape[1]):
        lo, hi = max(0, c - 2), min(x.shape[1], c + 3)
        expected[:, c] = x[:, c] / (1 + LRN_ALPHA / LRN_N * (x[:, lo:hi] ** 2).sum(1)) ** LRN_BETA
    assert np.abs(expected / x).min() < 0.5  # the normalisation matters at these values
    np.testing.assert_allclose(caffe_lrn(torch.from_numpy(x)).numpy(), expected, rtol=1e-5)
    np.testing.assert_allclose(F.local_response_norm(torch.from_numpy(x), LRN_N, LRN_ALPHA, LRN_BETA, 1.0).numpy(),
                               expected, rtol=1e-5)
    got = np.asarray(alexnet.lrn(jnp.asarray(x.transpose(0, 2, 3, 1)))).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(got, expected, rtol=1e-5)


@pytest.mark.parametrize("size", [(37, 53), (64, 64)])
def test_logits_match_torch_reference(reference, size: tuple[int, int]) -> None:
    model = FCN(VARIANT, NUM_CLASSES, width=WIDTH)
    params = to_flax(reference.state_dict())
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))["params"]
    assert jax.tree.map(lambda a: a.shape, shapes) == jax.tree.map(lambda a: a.shape, params)
    x = np.random.RandomState(1).uniform(-120, 120, (2, *size, 3)).astype(np.float32)
    with torch.no_grad():
        expected = reference(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
    assert expected.shape == (2, *size, NUM_CLASSES)
    apply = jax.jit(model.apply).lower({"params": params}, x).compile(compiler_options=FAST_COMPILE)
    got = np.asarray(apply({"params": params}, x))
    scale = float(np.abs(expected).max())
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * scale)


def test_output_size_equals_input_size_full_width() -> None:
    key = jax.random.PRNGKey(0)
    for padding in ("reference", "same"):
        model = FCN(VARIANT, 21, padding=padding, dtype=jnp.bfloat16 if padding == "same" else jnp.float32)
        for h, w in [(1, 1), (17, 333), (375, 500)]:
            out, _ = jax.eval_shape(model.init_with_output, key, jax.ShapeDtypeStruct((1, h, w, 3), jnp.float32))
            assert (out.shape, out.dtype) == ((1, h, w, 21), jnp.float32), (padding, h, w)


def test_same_padding_top_map_and_input_check() -> None:
    backbone = get_backbone("alexnet")
    assert backbone is alexnet.AlexNet and backbone.STRIDES == {"top": 32}
    model = backbone(width=WIDTH, padding="same")
    for h, w in [(32, 32), (64, 160), (480, 512)]:
        out, _ = jax.eval_shape(model.init_with_output, jax.random.PRNGKey(0), jnp.zeros((1, h, w, 3)))
        assert out["top"].shape == (1, h // 32, w // 32, fc_channels(WIDTH))
    with pytest.raises(ValueError, match="same.*multiples of 32"):
        jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 40, 32, 3)))


# Caffe's coord map (python/caffe/coord_map.py): Convolution / Pooling (scale 1/s, shift (pad - (k-1)/2) / s),
# Deconvolution (s, (k-1)/2 - pad), pass-through layers (ReLU, LRN, Dropout) (1, 0); compose(base, next) =
# (a1 a2, a1 b2 + b1); crop(upscore, data) = the inverse of data's map as seen from upscore.
def coord_map_offset(layers: list[tuple[str, int, int, int]]) -> Fraction:
    """The Crop offset of the last layer's top against the data, for layers (kind, kernel, stride, pad) in
    data-flow order."""
    a, b = Fraction(1), Fraction(0)  # map of the top, walking back to the data
    for kind, k, s, p in reversed(layers):
        if kind == "deconv":
            a2, b2 = Fraction(s), Fraction(k - 1, 2) - p
        else:
            a2, b2 = Fraction(1, s), (p - Fraction(k - 1, 2)) / s
        a, b = a * a2, a * b2 + b
    a_inv, b_inv = 1 / a, -b / a  # inverse(from_map): data's coordinates -> the top's
    assert a_inv == 1
    return -b_inv


def net_layers(conv1_pad: int, fc6_pad: int, upscore_pad: int) -> list[tuple[str, int, int, int]]:
    layers = []
    for name, k, s, p, _, _ in CONVS:
        layers.append(("conv", k, s, conv1_pad if name == "conv1" else p))
        if name in ("conv1", "conv2", "conv5"):
            layers.append(("pool", 3, 2, 0))
    return layers + [("conv", 6, 1, fc6_pad), ("conv", 1, 1, 0), ("conv", 1, 1, 0), ("deconv", 63, 32, upscore_pad)]


def test_crop_offset_from_caffe_coord_map() -> None:
    offset = coord_map_offset(net_layers(100, 0, 0))
    assert offset == 18 and get_variant(VARIANT).heads[0].args.final_offset == offset
    spec = get_variant(VARIANT)
    assert spec.backbone == "alexnet" and spec.heads[0].args.skips == ()
    assert tuple(spec.heads[0].args.upsamplers) == (("upscore", 63, 32),)
    # padding='same': the leading pads the model uses (conv1 1, pools 0, fc6 3) and the same head's upsampler
    # pad (63 - 32) // 2 = 15 put output pixel j on input pixel j, so the crop at 0 is aligned.
    assert alexnet.SAME_CONV1_PAD[0] == 1 and alexnet.SAME_FC6_PAD[0] == 3
    assert sum(alexnet.SAME_CONV1_PAD) == 7 and sum(alexnet.SAME_FC6_PAD) == 5  # H/32 cells (checked above)
    assert coord_map_offset(net_layers(1, 3, (63 - 32) // 2)) == 0


def test_parameter_count_full_width() -> None:
    expected, c_in = 0, 3
    for _, k, _, _, g, c in CONVS:
        expected += k * k * (c_in // g) * c + c
        c_in = c
    expected += 6 * 6 * 256 * FC + FC + FC * FC + FC  # fc6, fc7
    expected += FC * 21 + 21 + 63 * 63 * 21 * 21  # score_fr, upscore (no bias)
    assert expected == 58_704_590
    shapes = jax.eval_shape(FCN(VARIANT, 21).init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))["params"]
    assert sum(a.size for a in jax.tree.leaves(shapes)) == expected
    assert set(shapes["backbone"]) == {"conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7"}
    assert shapes["backbone"]["conv2"]["kernel"].shape == (5, 5, 48, 256)  # HWIO, 2 groups
    assert shapes["backbone"]["fc6"]["kernel"].shape == (6, 6, 256, 4096)


def caffenet_blobs(width: float, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Random blobs shaped as bvlc_reference_caffenet's (deploy.prototxt), scaled: conv (O, I/g, k, k),
    fc6 InnerProduct (fc, C5*6*6), fc7 (fc, fc), fc8 (1000-way stand-in of 10)."""
    rng = np.random.RandomState(seed)
    blobs, c_in = {}, 3
    for name, k, _, _, g, c in CONVS:
        c = even(c, width)
        blobs[name] = (rng.standard_normal((c, c_in // g, k, k)), rng.standard_normal(c))
        c_in = c
    fc = fc_channels(width)
    for name, shape in (("fc6", (fc, c_in * 36)), ("fc7", (fc, fc)), ("fc8", (10, fc))):
        blobs[name] = (rng.standard_normal(shape), rng.standard_normal(shape[0]))
    return {k: (w.astype(np.float32), b.astype(np.float32)) for k, (w, b) in blobs.items()}


def lax_conv(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray, groups: int = 1, pad: int = 0) -> np.ndarray:
    y = jax.lax.conv_general_dilated(jnp.asarray(x), jnp.asarray(kernel), (1, 1), ((pad, pad), (pad, pad)),
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups,
                                     precision=jax.lax.Precision.HIGHEST)
    return np.asarray(y + bias)


def test_caffe_imagenet_params_convolutionalise() -> None:
    blobs = caffenet_blobs(WIDTH)
    params = alexnet.caffe_imagenet_params(blobs, width=WIDTH)
    inferred = alexnet.caffe_imagenet_params(blobs)  # channel counts read from the file
    assert set(inferred) == set(params) and all(np.array_equal(inferred[k], params[k]) for k in params)
    assert set(params) == {("backbone", n, leaf) for n in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7")
                           for leaf in ("kernel", "bias")}
    assert all(a.dtype == np.float32 for a in params.values())
    model_shapes = jax.eval_shape(FCN(VARIANT, NUM_CLASSES, width=WIDTH).init, jax.random.PRNGKey(0),
                                  jnp.zeros((1, 32, 32, 3)))["params"]
    for path, a in params.items():
        assert a.shape == model_shapes[path[0]][path[1]][path[2]].shape, path
    rng = np.random.RandomState(2)
    # a grouped conv (conv4): torch Conv2d(groups=2) with the Caffe blob == lax conv with the HWIO kernel
    w, b = blobs["conv4"]
    x = rng.standard_normal((1, 5, 6, w.shape[1] * 2)).astype(np.float32)
    expected = F.conv2d(torch.from_numpy(x).permute(0, 3, 1, 2), torch.from_numpy(w), torch.from_numpy(b),
                        padding=1, groups=2).permute(0, 2, 3, 1).numpy()
    got = lax_conv(x, params[("backbone", "conv4", "kernel")], params[("backbone", "conv4", "bias")], 2, 1)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    # fc6: the InnerProduct on each flattened (C, H, W) 6x6 patch of pool5 == the 6x6 conv at that position
    w, b = blobs["fc6"]
    c5 = w.shape[1] // 36
    pool5 = rng.standard_normal((1, 8, 7, c5)).astype(np.float32)
    got = lax_conv(pool5, params[("backbone", "fc6", "kernel")], params[("backbone", "fc6", "bias")])
    linear = torch.nn.Linear(w.shape[1], w.shape[0])
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(w))
        linear.bias.copy_(torch.from_numpy(b))
        for i in range(3):
            for j in range(2):
                patch = torch.from_numpy(pool5[0, i:i + 6, j:j + 6].transpose(2, 0, 1).reshape(-1))
                np.testing.assert_allclose(got[0, i, j], linear(patch).numpy(), rtol=1e-4, atol=1e-3)
    # fc7: Linear == 1x1 conv
    w, b = blobs["fc7"]
    x = rng.standard_normal((1, 2, 3, w.shape[1])).astype(np.float32)
    got = lax_conv(x, params[("backbone", "fc7", "kernel")], params[("backbone", "fc7", "bias")])
    np.testing.assert_allclose(got, x @ w.T + b, rtol=1e-4, atol=1e-3)
    # fc6 / fc7 convolutionalised already (the reference's alexnet-fcn.caffemodel) give the same parameters
    conv_blobs = {**blobs, "fc6": (blobs["fc6"][0].reshape(-1, c5, 6, 6), blobs["fc6"][1]),
                  "fc7": (blobs["fc7"][0][:, :, None, None], blobs["fc7"][1])}
    again = alexnet.caffe_imagenet_params(conv_blobs, width=WIDTH)
    assert all(np.array_equal(again[k], params[k]) for k in params)


def test_caffe_imagenet_params_errors() -> None:
    blobs = caffenet_blobs(WIDTH)
    for width in (WIDTH, None):  # expected shapes from the width, or chained from the file's own channels
        call = lambda **change: alexnet.caffe_imagenet_params({**blobs, **change}, width=width)  # noqa: E731
        with pytest.raises(ValueError, match=r"conv3 weight: expected \(24, 16, 3, 3\), found \(24, 8, 3, 3\)"):
            call(conv3=(blobs["conv3"][0][:, :8], blobs["conv3"][1]))
        with pytest.raises(ValueError, match=r"fc6 weight: expected \(256, 576\) or \(256, 16, 6, 6\), found "
                                             r"\(256, 400\)"):
            call(fc6=(blobs["fc6"][0][:, :400], blobs["fc6"][1]))
        with pytest.raises(ValueError, match=r"fc7 bias: expected \(256,\), found \(255,\)"):
            call(fc7=(blobs["fc7"][0], blobs["fc7"][1][:255]))
        with pytest.raises(ValueError, match="conv2: expected 2 blobs"):
            call(conv2=blobs["conv2"][:1])
        with pytest.raises(ValueError, match="lack layer conv5"):
            alexnet.caffe_imagenet_params({k: v for k, v in blobs.items() if k != "conv5"}, width=width)
    with pytest.raises(ValueError, match=r"conv1 weight: expected \(96, 3, 11, 11\), found \(6, 3, 11, 11\)"):
        alexnet.caffe_imagenet_params(blobs, width=1.0)


def test_caffemodels_load_by_layer_name(reference, tmp_path) -> None:
    """The reference's voc-fcn-alexnet .caffemodel (its layer names, grouped convs, fc6 a 6x6 Convolution) and
    an ImageNet CaffeNet (fc6 / fc7 InnerProduct) load through ``fcn_jax.load_weights``."""
    from test_caffe import conv_param, layer, ld, text, vint

    state = {k: v.numpy() for k, v in reference.state_dict().items()}
    blobs = lambda name: tuple(state[k] for k in (f"{name}.weight", f"{name}.bias") if k in state)  # noqa: E731
    net, bottom = text(1, "voc-fcn-alexnet"), "data"
    for name, k, s, p, g, _ in CONVS:  # ConvolutionParameter: num_output 1, pad 3, kernel_size 4, group 5, stride 6
        param = ld(106, vint(1, state[f"{name}.bias"].size) + vint(3, p) + vint(4, k) + vint(5, g) + vint(6, s))
        net += layer(name, "Convolution", bottom, blobs(name), param)
        bottom = name
    fc = state["fc6.bias"].size
    net += layer("fc6", "Convolution", "pool5", blobs("fc6"), conv_param(fc, 6))
    net += layer("fc7", "Convolution", "fc6", blobs("fc7"), conv_param(fc, 1))
    net += layer("score_fr", "Convolution", "fc7", blobs("score_fr"), conv_param(NUM_CLASSES, 1))
    net += layer("upscore", "Deconvolution", "score_fr", blobs("upscore"), conv_param(NUM_CLASSES, 63, 0, 32, False))
    path = tmp_path / "fcn-alexnet-pascal.caffemodel"
    path.write_bytes(net)
    loaded = fcn_jax.load_weights(str(path), variant=VARIANT, width=WIDTH)["params"]
    expected = to_flax(reference.state_dict())
    assert jax.tree.structure(loaded) == jax.tree.structure(expected)
    assert all(jax.tree.leaves(jax.tree.map(np.array_equal, loaded, expected)))

    imagenet = caffenet_blobs(WIDTH)
    net = text(1, "CaffeNet") + b"".join(
        layer(name, "Convolution" if name.startswith("conv") else "InnerProduct", "x", pair)
        for name, pair in imagenet.items())
    path = tmp_path / "bvlc_reference_caffenet.caffemodel"
    path.write_bytes(net)
    loaded = fcn_jax.load_weights(str(path), variant=VARIANT, num_classes=NUM_CLASSES, width=WIDTH)["params"]
    for (_, name, leaf), value in alexnet.caffe_imagenet_params(imagenet).items():
        np.testing.assert_array_equal(loaded["backbone"][name][leaf], value)
    assert not np.any(loaded["score_fr"]["kernel"])  # the head keeps the model's own initialisation


def test_width_keeps_groups_even() -> None:
    assert [alexnet.channels(96, w) for w in (1.0, 1 / 16, 0.1, 1 / 96, 1 / 1000)] == [96, 6, 10, 2, 2]
    params = jax.eval_shape(alexnet.AlexNet(width=0.1).init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
    assert [params["params"][f"conv{i}"]["kernel"].shape[-1] for i in range(1, 6)] == [10, 26, 38, 38, 26]


def test_reference_alexnet_preset() -> None:
    cfg = configs.get_config("reference_alexnet", VARIANT)
    assert cfg.preset == "reference_alexnet" and cfg.model.variant == VARIANT and cfg.model.num_classes == 21
    # solver.prototxt: base_lr 1e-4 fixed, momentum 0.9, iter_size 20, max_iter 100000, weight_decay 0.0005,
    # snapshot 4000, display 20; net.py: normalize: true, upscore lr_mult 0, dropout 0.5
    assert (cfg.lr, cfg.schedule, cfg.momentum, cfg.grad_accum, cfg.batch_size) == (1e-4, "fixed", 0.9, 20, 20)
    assert (cfg.steps, cfg.weight_decay, cfg.loss, cfg.optimizer) == (100_000, 5e-4, "mean", "sgd")
    assert (cfg.checkpoint_every, cfg.eval_every, cfg.log_every) == (4000, 4000, 20)
    assert (cfg.model.freeze_upsamplers, cfg.model.dropout_rate, cfg.model.padding) == ("all", 0.5, "reference")
    assert (cfg.dataset, cfg.mode, cfg.sampling, cfg.preprocessing, cfg.seed) == (
        "voc_segmentation/sbd_fcn", "reference", "replacement", "caffe", 1337)
    # conv1 .. fc7 biases: Caffe's default lr_mult 1; the 20 accumulated images padded to one shape
    assert (cfg.bias_lr_mult, cfg.bucket_multiple, cfg.eval_bucket_multiple, cfg.eval_batch_size) == (1.0, 32, None, 1)
    from fcn_jax.data import pipeline
    pipeline.TrainInput(mode=cfg.mode, batch_size=cfg.batch_size, bucket_multiple=cfg.bucket_multiple,
                        sampling=cfg.sampling, convention=cfg.preprocessing, seed=cfg.seed)  # accepted
    with pytest.raises(ValueError, match="fcn-alexnet"):
        configs.get_config("reference_alexnet", "fcn32s")
