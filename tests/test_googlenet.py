"""FCN-GoogLeNet: parity with an independent PyTorch net written here from BVLC's bvlc_googlenet prototxt,
output sizes, the crop offset from Caffe's coord-map rules, the parameter count and the ImageNet hook."""
from __future__ import annotations

import math
from fractions import Fraction
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

import fcn_jax
from fcn_jax import caffe
from fcn_jax.models import SPECS
from fcn_jax.models.backbones import BACKBONES
from fcn_jax.models.backbones.googlenet import GoogLeNet, caffe_imagenet_params, caffe_name, param_name
from fcn_jax.models.fcn import _FAST_COMPILE as FAST_COMPILE

torch = pytest.importorskip("torch")
nn, F = torch.nn, torch.nn.functional

WIDTH = 1 / 16
NUM_CLASSES = 5
CONV1_PAD = 18  # the backbone's documented reference pad (ImageNet GoogLeNet: 3)

# BVLC models/bvlc_googlenet/deploy.prototxt, inception modules: num_output of 1x1, 3x3_reduce, 3x3, 5x5_reduce,
# 5x5, pool_proj; a 3x3 / 2 max pool (pool3/3x3_s2, pool4/3x3_s2) follows 3b and 4e.
PROTOTXT_INCEPTIONS = """
3a 64 96 128 16 32 32
3b 128 128 192 32 96 64
4a 192 96 208 16 48 64
4b 160 112 224 24 64 64
4c 128 128 256 24 64 64
4d 112 144 288 32 64 64
4e 256 160 320 32 128 128
5a 256 160 320 32 128 128
5b 384 192 384 48 128 128
"""
MODULES = [(row.split()[0], [int(n) for n in row.split()[1:]]) for row in PROTOTXT_INCEPTIONS.strip().splitlines()]
LRN_SIZE, LRN_ALPHA, LRN_BETA = 5, 1e-4, 0.75


def ch(n: int, width: float) -> int:
    return max(1, int(round(n * width)))


def prototxt_convs(width: float = 1.0) -> list[tuple[str, int, int, int]]:
    """(Caffe layer, kernel, in, out) of every convolution of the main branch up to inception_5b/output."""
    out = [("conv1/7x7_s2", 7, 3, ch(64, width)), ("conv2/3x3_reduce", 1, ch(64, width), ch(64, width)),
           ("conv2/3x3", 3, ch(64, width), ch(192, width))]
    c_in = ch(192, width)
    for name, (n1, n3r, n3, n5r, n5, npool) in MODULES:
        n1, n3r, n3, n5r, n5, npool = (ch(n, width) for n in (n1, n3r, n3, n5r, n5, npool))
        p = f"inception_{name}/"
        out += [(p + "1x1", 1, c_in, n1), (p + "3x3_reduce", 1, c_in, n3r), (p + "3x3", 3, n3r, n3),
                (p + "5x5_reduce", 1, c_in, n5r), (p + "5x5", 5, n5r, n5), (p + "pool_proj", 1, c_in, npool)]
        c_in = n1 + n3 + n5 + npool
    return out


# ----------------------------------------------------------------------------------- PyTorch reference

class TorchFCNGoogLeNet(nn.Module):
    """FCN-GoogLeNet from the prototxt, NCHW. ``same``: input zero-padded to a multiple of 32 (bottom/right),
    conv1 pad 3, pool1..3 pad 1 (floor), pool4 pads (0, 1) with -inf, upscore pad 15, crop 0."""

    def __init__(self, width: float, num_classes: int, same: bool = False) -> None:
        super().__init__()
        self.same = same
        self.convs = nn.ModuleDict()
        for name, k, c_in, c_out in prototxt_convs(width):
            stride = 2 if name == "conv1/7x7_s2" else 1
            pad = (3 if same else CONV1_PAD) if name == "conv1/7x7_s2" else (k - 1) // 2
            self.convs[name.replace("/", "|")] = nn.Conv2d(c_in, c_out, k, stride, pad)
        self.score_fr = nn.Conv2d(c_out_total(width), num_classes, 1)
        self.upscore = nn.ConvTranspose2d(num_classes, num_classes, 63, 32, padding=15 if same else 0, bias=False)

    def conv(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.convs[name.replace("/", "|")](x))

    @staticmethod
    def lrn(x: torch.Tensor) -> torch.Tensor:
        """Caffe LRN ACROSS_CHANNELS: x / (1 + alpha / n * sum over n channels centred on c of x^2) ** beta."""
        sq = F.pad(x * x, (0, 0, 0, 0, LRN_SIZE // 2, LRN_SIZE // 2))
        window = sum(sq[:, i:i + x.shape[1]] for i in range(LRN_SIZE))
        return x / (1 + LRN_ALPHA / LRN_SIZE * window) ** LRN_BETA

    def pool(self, x: torch.Tensor, index: int) -> torch.Tensor:
        if not self.same:
            return F.max_pool2d(x, 3, 2, ceil_mode=True)
        if index < 4:
            return F.max_pool2d(x, 3, 2, padding=1)
        return F.max_pool2d(F.pad(x, (0, 1, 0, 1), value=-math.inf), 3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[2:]
        if self.same:
            x = F.pad(x, (0, -width % 32, 0, -height % 32))
        x = self.lrn(self.pool(self.conv("conv1/7x7_s2", x), 1))
        x = self.pool(self.lrn(self.conv("conv2/3x3", self.conv("conv2/3x3_reduce", x))), 2)
        for name, _ in MODULES:
            p = f"inception_{name}/"
            x = torch.cat([self.conv(p + "1x1", x), self.conv(p + "3x3", self.conv(p + "3x3_reduce", x)),
                           self.conv(p + "5x5", self.conv(p + "5x5_reduce", x)),
                           self.conv(p + "pool_proj", F.max_pool2d(x, 3, 1, 1))], 1)
            if name in ("3b", "4e"):
                x = self.pool(x, 3 if name == "3b" else 4)
        y = self.upscore(self.score_fr(x))
        offset = 0 if self.same else SPECS["fcn-googlenet"].heads[0].args.final_offset
        return y[:, :, offset:offset + height, offset:offset + width]


def c_out_total(width: float) -> int:
    _, (n1, _, n3, _, n5, npool) = MODULES[-1]
    return sum(ch(n, width) for n in (n1, n3, n5, npool))


def random_torch(same: bool = False, seed: int = 0) -> TorchFCNGoogLeNet:
    """Random normal weights everywhere (He-scaled; score_fr and upscore too, so nothing is zero or symmetric)."""
    torch.manual_seed(seed)
    model = TorchFCNGoogLeNet(WIDTH, NUM_CLASSES, same).eval()
    with torch.no_grad():
        for p in model.parameters():
            fan_in = p[0].numel() if p.ndim > 1 else 16
            p.copy_(torch.randn_like(p) * (2.0 / fan_in) ** 0.5)
    return model


def torch_blobs(model: TorchFCNGoogLeNet) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The backbone's weights as a bvlc_googlenet.caffemodel holds them: {Caffe layer: (weight OIHW, bias)}."""
    return {key.replace("|", "/"): (m.weight.detach().numpy().copy(), m.bias.detach().numpy().copy())
            for key, m in model.convs.items()}


def jax_variables(model: TorchFCNGoogLeNet, blobs: dict | None = None) -> dict:
    flat = caffe_imagenet_params(torch_blobs(model) if blobs is None else blobs, width=WIDTH)
    flat[("score_fr", "kernel")] = model.score_fr.weight.detach().numpy().transpose(2, 3, 1, 0)
    flat[("score_fr", "bias")] = model.score_fr.bias.detach().numpy()
    flat[("upscore", "kernel")] = model.upscore.weight.detach().numpy().transpose(2, 3, 1, 0)  # (in, out, k, k)
    return {"params": traverse_util.unflatten_dict(flat)}


def run_torch(model: TorchFCNGoogLeNet, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()


def assert_close(got: np.ndarray, want: np.ndarray, what: str) -> None:
    assert got.shape == want.shape, what
    err = float(np.abs(got - want).max()) / float(np.abs(want).max())
    assert err < 2e-5, f"{what}: max error {err:.2e} of the largest logit"


def images(n: int, height: int, width: int, seed: int = 1) -> np.ndarray:
    return np.random.RandomState(seed).uniform(-120, 120, (n, height, width, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def reference() -> TorchFCNGoogLeNet:
    return random_torch()


# ------------------------------------------------------------------------------------------------ parity

@pytest.mark.parametrize("padding", ["reference", "same"])
def test_logits_match_torch(padding: str, reference: TorchFCNGoogLeNet, full_width: dict) -> None:
    """Same arrays (through ``caffe_imagenet_params``, score_fr and upscore HWIO) give the same logits on an
    odd, non-square size (37 x 53: clipped ceil-pool windows in pool1 and pool4)."""
    same = padding == "same"
    torch_model = random_torch(same=True) if same else reference
    model = fcn_jax.create_model("fcn-googlenet", num_classes=NUM_CLASSES, width=WIDTH, padding=padding)
    variables = jax_variables(torch_model)
    assert jax.tree.structure(full_width[padding][1]) == jax.tree.structure(variables)  # (apply checks shapes)
    x = images(2, 37, 53)
    want = run_torch(torch_model, x)
    assert want.shape == (2, 37, 53, NUM_CLASSES) and np.abs(want).max() > 0
    apply = jax.jit(model.apply).lower(variables, x).compile(compiler_options=FAST_COMPILE)  # CPU: ~2x faster
    assert_close(np.asarray(apply(variables, x)), want, padding)


def test_imagenet_hook_layouts_and_caffemodel_round_trip(reference: TorchFCNGoogLeNet, tmp_path) -> None:
    """Blobs written into a real .caffemodel (with the auxiliary classifiers and loss3/classifier), decoded by
    fcn_jax.caffe, map to HWIO kernels named by ``param_name``; the classifiers are dropped."""
    from test_caffe import conv_param, layer, text

    blobs = torch_blobs(reference)
    rng = np.random.RandomState(3)
    extra = {"loss1/conv": ((8, 32, 1, 1), (8,)), "loss1/fc": ((16, 8 * 16), (16,)), "loss1/classifier": ((10, 16), (10,)),
             "loss2/conv": ((8, 33, 1, 1), (8,)), "loss2/fc": ((16, 8 * 16), (16,)), "loss2/classifier": ((10, 16), (10,)),
             "loss3/classifier": ((10, 64), (10,))}
    data = text(1, "GoogleNet")
    for name, (w, b) in blobs.items():
        data += layer(name, "Convolution", "x", (w, b), conv_param(b.size, w.shape[-1], (w.shape[-1] - 1) // 2))
    for name, shapes in extra.items():
        data += layer(name, "InnerProduct" if "/conv" not in name else "Convolution", "x",
                      tuple(rng.standard_normal(s).astype(np.float32) for s in shapes))
    path = tmp_path / "bvlc_googlenet.caffemodel"
    path.write_bytes(data)
    decoded = caffe.read_caffemodel(path)
    assert set(decoded) == set(blobs) | set(extra)
    flat = caffe_imagenet_params(decoded, width=WIDTH)
    assert len(flat) == 2 * 57 == 2 * len(blobs)
    for name, (w, b) in blobs.items():
        assert caffe_name(param_name(name)) == name and "/" not in param_name(name)
        np.testing.assert_array_equal(flat[("backbone", param_name(name), "kernel")], w.transpose(2, 3, 1, 0))
        np.testing.assert_array_equal(flat[("backbone", param_name(name), "bias")], b)
    assert ("backbone", "inception_3a__5x5_reduce", "kernel") in flat and ("backbone", "conv1__7x7_s2", "bias") in flat
    ref = jax_variables(reference)
    jax.tree.map(np.testing.assert_array_equal, {"params": {"backbone": traverse_util.unflatten_dict(flat)["backbone"]}},
                 {"params": {"backbone": ref["params"]["backbone"]}})


def test_imagenet_hook_errors(reference: TorchFCNGoogLeNet) -> None:
    blobs = torch_blobs(reference)
    missing = {k: v for k, v in blobs.items() if k != "inception_4c/5x5"}
    with pytest.raises(ValueError, match=r"^GoogLeNet weights lack layer inception_4c/5x5$"):
        caffe_imagenet_params(missing, width=WIDTH)
    bad = dict(blobs, **{"inception_3a/3x3": (np.zeros((8, 6, 5, 5), np.float32), blobs["inception_3a/3x3"][1])})
    with pytest.raises(ValueError, match=r"inception_3a/3x3 weight: expected \(8, 6, 3, 3\), found \(8, 6, 5, 5\)"):
        caffe_imagenet_params(bad, width=WIDTH)
    bad = dict(blobs, **{"conv2/3x3": (blobs["conv2/3x3"][0], np.zeros((1, 12), np.float32))})
    with pytest.raises(ValueError, match=r"conv2/3x3 bias: expected \(12,\), found \(1, 12\)"):
        caffe_imagenet_params(bad, width=WIDTH)
    with pytest.raises(ValueError, match=r"conv1/7x7_s2 weight: expected \(64, 3, 7, 7\), found \(4, 3, 7, 7\)"):
        caffe_imagenet_params(blobs)  # full width expected
    with pytest.raises(ValueError, match=r"unexpected layers \['fc6'\]"):
        caffe_imagenet_params(dict(blobs, fc6=blobs["conv1/7x7_s2"]), width=WIDTH)
    with pytest.raises(ValueError, match=r"conv2/3x3: expected 2 blobs \(weight, bias\), found 1"):
        caffe_imagenet_params(dict(blobs, **{"conv2/3x3": blobs["conv2/3x3"][:1]}), width=WIDTH)


# ---------------------------------------------------------------------------------------------- geometry

@pytest.fixture(scope="module")
def full_width() -> dict:
    """Abstract full-width models and parameters (nothing is computed), per padding."""
    models = {padding: fcn_jax.create_model("fcn-googlenet", num_classes=21, padding=padding)
              for padding in ("reference", "same")}
    variables = jax.eval_shape(models["same"].init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    return {padding: (model, variables) for padding, model in models.items()}


@pytest.mark.parametrize("padding", ["reference", "same"])
def test_output_is_input_size(padding: str, full_width: dict) -> None:
    """Logits are H x W for odd sizes; the backbone's top has floor((H + 31) / 32) cells ('reference': conv1
    pad 18, ceil pools) or ceil(H / 32) ('same': the FCN pads to a multiple of 32)."""
    model, variables = full_width[padding]
    capture = lambda mdl, _: isinstance(mdl, GoogLeNet)  # noqa: E731
    for height, width in ((1, 1), (31, 97), (500, 333)):
        out, state = jax.eval_shape(partial(model.apply, capture_intermediates=capture), variables,
                                    jax.ShapeDtypeStruct((1, height, width, 3), jnp.float32))
        assert out.shape == (1, height, width, 21) and out.dtype == jnp.float32, (padding, height, width)
        cells = [(n + 31) // 32 if padding == "reference" else -(-n // 32) for n in (height, width)]
        top = state["intermediates"]["backbone"]["__call__"][0]["top"]
        assert top.shape == (1, *cells, 1024), (padding, height, width)
    assert BACKBONES["googlenet"] is GoogLeNet and GoogLeNet.STRIDES == {"top": 32}
    assert GoogLeNet.dropout_rate == 0.4  # pool5/drop_7x7_s1


def test_same_padding_needs_multiples_of_32() -> None:
    with pytest.raises(ValueError, match=r"^GoogLeNet padding='same' needs H, W multiples of 32, got shape"):
        jax.eval_shape(GoogLeNet(width=WIDTH, padding="same").init, jax.random.key(0), jnp.zeros((1, 32, 48, 3)))


# Caffe's python/caffe/coord_map.py: a Convolution / Pooling maps (scale, shift) = (1/s, (p - (k-1)/2) / s), a
# Deconvolution (s, (k-1)/2 - p), pointwise layers (ReLU, LRN, Dropout) the identity; compose(a1, b1 | a2, b2) =
# (a1 a2, a1 b2 + b1); the crop of top_from onto top_to is -b of inverse(map walked back from top_from to
# their common ancestor), which must be an integer. Concat is not one of its mapped layers: mapping it is
# only sound when all its bottoms map alike, which is checked here. Asymmetric ('same') pads use the low pad.

def coord_map(kind: str, k: int = 1, s: int = 1, p: int = 0) -> tuple[Fraction, Fraction]:
    if kind == "Deconvolution":
        return Fraction(s), Fraction(k - 1, 2) - p
    return Fraction(1, s), (p - Fraction(k - 1, 2)) / s


def compose(base: tuple[Fraction, Fraction], nxt: tuple[Fraction, Fraction]) -> tuple[Fraction, Fraction]:
    return base[0] * nxt[0], base[0] * nxt[1] + base[1]


def walk_back(layers: list[tuple[Fraction, Fraction]], start=(Fraction(1), Fraction(0))) -> tuple[Fraction, Fraction]:
    m = start
    for layer in layers:
        m = compose(m, layer)
    return m


def crop_offset(upscore: tuple[int, int, int], conv1_pad: int, pool_pads: tuple[int, ...]) -> Fraction:
    """The crop of upscore onto data for the FCN-GoogLeNet net: the layers from upscore back to data."""
    k, s, p = upscore
    m = walk_back([coord_map("Deconvolution", k, s, p), coord_map("Convolution")])  # upscore, score_fr
    pools = iter(pool_pads[::-1])
    for name, spec in reversed(MODULES):
        if name in ("4e", "3b"):
            m = compose(m, coord_map("Pooling", 3, 2, next(pools)))
        branches = [walk_back([coord_map("Convolution", 1)], m),
                    walk_back([coord_map("Convolution", 3, 1, 1), coord_map("Convolution", 1)], m),
                    walk_back([coord_map("Convolution", 5, 1, 2), coord_map("Convolution", 1)], m),
                    walk_back([coord_map("Convolution", 1), coord_map("Pooling", 3, 1, 1)], m)]
        assert len(set(branches)) == 1, f"inception_{name} branches map differently: {branches}"
        m = branches[0]
    m = walk_back([coord_map("Pooling", 3, 2, next(pools)), coord_map("Convolution", 3, 1, 1),  # pool2, conv2
                   coord_map("Convolution", 1), coord_map("Pooling", 3, 2, next(pools)),  # pool1
                   coord_map("Convolution", 7, 2, conv1_pad)], m)
    scale, shift = m[0] ** -1, -m[1] / m[0]  # inverse
    assert scale == 1
    return -shift


def test_crop_offsets_follow_caffe_coord_maps() -> None:
    assert SPECS["fcn-googlenet"].backbone == "googlenet"
    spec = SPECS["fcn-googlenet"].heads[0].args
    assert spec.skips == () and len(spec.upsamplers) == 1
    name, k, s = spec.upsamplers[0]
    assert (name, k, s) == ("upscore", 63, 32)
    offset = crop_offset((k, s, 0), CONV1_PAD, (0, 0, 0, 0))
    assert offset.denominator == 1 and offset >= 0 and offset == spec.final_offset == 16
    # A 64 / 32 upsampler would sit half a pixel off: no integer crop (Caffe's crop() asserts).
    assert crop_offset((64, s, 0), CONV1_PAD, (0, 0, 0, 0)) == Fraction(33, 2)
    # padding='same': conv1 pad 3, pool1..3 (1, 1), pool4 (0, 1), the head's upsampler pad (k - s) // 2: crop 0.
    assert crop_offset((k, s, (k - s) // 2), 3, (1, 1, 1, 0)) == 0


# ---------------------------------------------------------------------------------------------- counting

def test_parameter_count(full_width: dict) -> None:
    """Full width: the prototxt's convs, score_fr and the 63x63 upscore; the backbone is BVLC GoogLeNet's
    main branch without loss3/classifier (6,998,552 - 1,025,000)."""
    backbone = sum(k * k * c_in * c_out + c_out for _, k, c_in, c_out in prototxt_convs())
    assert backbone == 5_973_552
    expected = backbone + 1024 * 21 + 21 + 63 * 63 * 21 * 21
    params = full_width["reference"][1]["params"]
    assert sum(math.prod(a.shape) for a in jax.tree.leaves(params)) == expected == 7_745_406
    assert set(params["backbone"]) == {param_name(name) for name, *_ in prototxt_convs()}
