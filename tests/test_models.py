"""The FCN model family against independent references: naive loops, autodiff identities, sizes."""
import itertools
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fcn_jax
from fcn_jax.models import (BACKBONES, FCN, INIT_SHAPE, PADDINGS, VGG16, Upsample, bilinear_filter, check_padding,
                            check_variant, conv_transpose, get_variant, initial_variables, upsampler_names, validate)
from test_evaluate import random_variables

VARIANTS = ("fcn32s", "fcn16s", "fcn8s", "fcn8s-atonce")


def naive_conv_transpose(x, w_torch, stride, padding):
    """Scatter-add definition of a transposed conv. x (H, W, Cin); w_torch (Cin, Cout, k, k)."""
    h, w, c_in = x.shape
    _, c_out, k, _ = w_torch.shape
    full = np.zeros(((h - 1) * stride + k, (w - 1) * stride + k, c_out), np.float64)
    for i, j, ci in itertools.product(range(h), range(w), range(c_in)):
        full[i * stride:i * stride + k, j * stride:j * stride + k, :] += x[i, j, ci] * w_torch[ci].transpose(1, 2, 0)
    return full[padding:full.shape[0] - padding, padding:full.shape[1] - padding]


@pytest.mark.parametrize("k,s,p,c_in,c_out", [(4, 2, 0, 3, 2), (3, 2, 1, 2, 3), (5, 3, 0, 1, 1), (4, 2, 1, 2, 2)])
def test_conv_transpose_matches_naive_loop(k, s, p, c_in, c_out):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 4, c_in)).astype(np.float32)
    w_torch = rng.standard_normal((c_in, c_out, k, k)).astype(np.float32)
    got = conv_transpose(jnp.asarray(x[None]), jnp.asarray(w_torch.transpose(2, 3, 1, 0)), s, p)[0]
    np.testing.assert_allclose(np.asarray(got), naive_conv_transpose(x, w_torch, s, p), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("k,s,p", [(4, 2, 0), (16, 8, 0), (4, 2, 1)])
def test_conv_transpose_is_gradient_of_conv(k, s, p):
    rng = np.random.default_rng(1)
    c_small, c_big = 3, 2  # transposed conv: c_small -> c_big
    kernel = jnp.asarray(rng.standard_normal((k, k, c_big, c_small)), jnp.float32)  # HWIO of the forward conv
    z = jnp.asarray(rng.standard_normal((2, 4, 3, c_small)), jnp.float32)
    shape = (2, (4 - 1) * s + k - 2 * p, (3 - 1) * s + k - 2 * p, c_big)

    def conv(x):
        return jax.lax.conv_general_dilated(x, kernel, (s, s), ((p, p), (p, p)),
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))

    assert conv(jnp.zeros(shape)).shape == z.shape
    _, vjp = jax.vjp(conv, jnp.zeros(shape))
    np.testing.assert_allclose(np.asarray(conv_transpose(z, kernel, s, p)), np.asarray(vjp(z)[0]),
                               rtol=1e-5, atol=1e-5)


def test_bilinear_filter_formula():
    np.testing.assert_allclose(bilinear_filter(4)[0], np.outer([0.25, 0.75, 0.75, 0.25], [0.25, 0.75, 0.75, 0.25])[0])
    f3 = bilinear_filter(3)
    np.testing.assert_allclose(f3, np.outer([0.5, 1, 0.5], [0.5, 1, 0.5]))
    assert bilinear_filter(64).shape == (64, 64)


@pytest.mark.parametrize("k,s", [(4, 2), (32, 16), (64, 32)])
def test_bilinear_upsampling_keeps_constants(k, s):
    module = Upsample(features=2, kernel_size=k, stride=s)
    x = jnp.full((1, 6, 5, 2), 3.0)
    variables = module.init(jax.random.PRNGKey(0), x)
    y = np.asarray(module.apply(variables, x))[0]
    inner = y[k:-k, k:-k]  # away from the borders every output pixel has full support
    np.testing.assert_allclose(inner, 3.0, rtol=1e-6)
    kernel = np.asarray(variables["params"]["kernel"])
    assert np.all(kernel[:, :, 0, 1] == 0) and np.all(kernel[:, :, 1, 0] == 0)  # one kernel per class


def test_bilinear_k4_s2_of_ramp_is_linear():
    module = Upsample(features=1, kernel_size=4, stride=2)
    ramp = jnp.arange(8, dtype=jnp.float32)
    x = (ramp[:, None] * 2 + ramp[None, :] * 5)[None, :, :, None]
    y = np.asarray(module.apply(module.init(jax.random.PRNGKey(0), x), x))[0, 2:-2, 2:-2, 0]
    # second differences of a linear function vanish along both axes
    np.testing.assert_allclose(np.diff(y, 2, axis=0), 0, atol=1e-4)
    np.testing.assert_allclose(np.diff(y, 2, axis=1), 0, atol=1e-4)
    np.testing.assert_allclose(np.diff(y, axis=0), 1.0, atol=1e-4)  # half the input step per output pixel
    np.testing.assert_allclose(np.diff(y, axis=1), 2.5, atol=1e-4)


def _shape(variant, height, width, channel_width=1.0, padding="reference"):
    model = fcn_jax.create_model(variant, num_classes=21, width=channel_width, padding=padding)
    out, _ = jax.eval_shape(lambda: model.init_with_output(jax.random.PRNGKey(0), jnp.zeros((1, height, width, 3))))
    return out.shape


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("size", [(1, 1), (37, 53), (500, 375)])
def test_output_is_input_size(variant, size):
    assert _shape(variant, *size) == (1, *size, 21)
    assert _shape(variant, *size, channel_width=0.125) == (1, *size, 21)
    assert _shape(variant, *size, padding="same") == (1, *size, 21)


def test_vgg_worked_sizes_500():
    feats = jax.eval_shape(lambda: VGG16().init_with_output(jax.random.PRNGKey(0), jnp.zeros((1, 500, 500, 3))))[0]
    # conv1_1 gives 698; pools 349 / 175 / 88 / 44 / 22 (ceil mode); fc6 (7x7 VALID) 16
    assert feats["pool3"].shape == (1, 88, 88, 256)
    assert feats["pool4"].shape == (1, 44, 44, 512)
    assert feats["top"].shape == (1, 16, 16, 4096)  # fc7


def test_parameter_count_full_width():
    # Independent count from the layer table: 13 convs 3x3, fc6 7x7x512x4096, fc7, score layers, upsamplers.
    chans = [3, 64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    convs = sum(9 * i * o + o for i, o in zip(chans[:-1], chans[1:]))
    fc = 7 * 7 * 512 * 4096 + 4096 + 4096 * 4096 + 4096
    n = 21
    score = (4096 + 1) * n + (512 + 1) * n + (256 + 1) * n
    ups = (4 * 4 + 4 * 4 + 16 * 16) * n * n
    model = fcn_jax.create_model("fcn8s")
    variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3))))
    count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables))
    assert count == convs + fc + score + ups == 134_489_759
    assert round(count / 1e6, 1) == 134.5
    fc6 = variables["params"]["backbone"]["fc6"]["kernel"]
    assert fc6.shape == (7, 7, 512, 4096) and round((np.prod(fc6.shape) + 4096) / 1e6, 1) == 102.8


def test_upsampler_names_and_score_init():
    assert upsampler_names("fcn32s") == ("upscore",)
    assert upsampler_names("fcn8s-atonce") == ("upscore2", "upscore_pool4", "upscore8")
    model = fcn_jax.create_model("fcn16s", num_classes=5, width=1 / 16)
    variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3))))
    assert set(variables["params"]) == {"backbone", "score_fr", "score_pool4", "upscore2", "upscore16"}
    real = initial_variables(model, jax.random.PRNGKey(0))["params"]  # the init training uses, one program
    assert not np.any(np.asarray(real["score_pool4"]["kernel"])) and not np.any(np.asarray(real["score_fr"]["bias"]))
    np.testing.assert_array_equal(np.asarray(real["upscore16"]["kernel"])[:, :, 2, 2], bilinear_filter(32))


def test_bfloat16_compute_keeps_float32_params_and_logits():
    model = fcn_jax.create_model("fcn8s", num_classes=3, width=1 / 16, dtype="bfloat16")
    out, variables = jax.eval_shape(lambda: model.init_with_output(jax.random.PRNGKey(0), jnp.zeros((1, 9, 9, 3))))
    assert out.dtype == jnp.float32
    assert {x.dtype for x in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}


def test_atonce_differs_from_fcn8s_only_by_pool_scaling():
    """With identical weights, fcn8s-atonce equals fcn8s whose score_pool4/3 kernels are pre-scaled."""
    rng = np.random.default_rng(1)  # NumPy draws: nothing to compile
    x = jnp.asarray(rng.standard_normal((1, 21, 19, 3)), jnp.float32)
    at_once = fcn_jax.create_model("fcn8s-atonce", num_classes=3, width=1 / 16)
    plain = fcn_jax.create_model("fcn8s", num_classes=3, width=1 / 16)
    params = random_variables(at_once)["params"]  # every layer random (no init program to compile)
    for name in ("score_pool4", "score_pool3"):
        params[name] = {k: jnp.asarray(rng.standard_normal(v.shape), jnp.float32) for k, v in params[name].items()}
    scaled = dict(params)
    for name, factor in (("score_pool4", 0.01), ("score_pool3", 1e-4)):
        scaled[name] = {"kernel": params[name]["kernel"] * factor, "bias": params[name]["bias"]}
    plain_apply = jax.jit(plain.apply)  # one program for both parameter sets
    a = jax.jit(at_once.apply)({"params": params}, x)
    b = plain_apply({"params": scaled}, x)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
    assert float(jnp.abs(a - plain_apply({"params": params}, x)).max()) > 1e-3


def test_dropout_only_in_training():
    model = fcn_jax.create_model("fcn32s", num_classes=2, width=1 / 16)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((1, 5, 5, 3)), jnp.float32)
    variables = random_variables(model)  # every layer random, so fc7 matters (no init program to compile)
    apply = jax.jit(model.apply, static_argnames="train")
    a, b = apply(variables, x), apply(variables, x)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    c = apply(variables, x, train=True, rngs={"dropout": jax.random.PRNGKey(1)})
    d = apply(variables, x, train=True, rngs={"dropout": jax.random.PRNGKey(2)})
    assert float(jnp.abs(c - d).max()) > 0


# ---- layout: parameter tree, backbone geometry, registry, validation --------------------------------------------

BACKBONE_LAYERS = ("conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3",
                   "conv4_1", "conv4_2", "conv4_3", "conv5_1", "conv5_2", "conv5_3", "fc6", "fc7")
# Head parameters at width 0.125 (fc7 512, pool4 64, pool3 32 channels), 21 classes.
HEAD_PARAMS = {
    "fcn32s": {"score_fr/kernel": (1, 1, 512, 21), "score_fr/bias": (21,), "upscore/kernel": (64, 64, 21, 21)},
    "fcn16s": {"score_fr/kernel": (1, 1, 512, 21), "score_fr/bias": (21,),
               "score_pool4/kernel": (1, 1, 64, 21), "score_pool4/bias": (21,),
               "upscore2/kernel": (4, 4, 21, 21), "upscore16/kernel": (32, 32, 21, 21)},
    "fcn8s": {"score_fr/kernel": (1, 1, 512, 21), "score_fr/bias": (21,),
              "score_pool4/kernel": (1, 1, 64, 21), "score_pool4/bias": (21,),
              "score_pool3/kernel": (1, 1, 32, 21), "score_pool3/bias": (21,),
              "upscore2/kernel": (4, 4, 21, 21), "upscore_pool4/kernel": (4, 4, 21, 21),
              "upscore8/kernel": (16, 16, 21, 21)},
}
HEAD_PARAMS["fcn8s-atonce"] = HEAD_PARAMS["fcn8s"]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("padding", ["reference", "same"])
def test_parameter_tree_is_exactly_the_reference_layout(variant, padding):
    model = FCN(variant, num_classes=21, width=0.125, padding=padding)
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros(INIT_SHAPE))
    assert set(variables) == {"params"}
    leaves = jax.tree_util.tree_leaves_with_path(variables["params"])
    got = {"/".join(k.key for k in path): leaf.shape for path, leaf in leaves}
    backbone = {f"backbone/{layer}/{p}" for layer in BACKBONE_LAYERS for p in ("kernel", "bias")}
    assert set(got) == backbone | set(HEAD_PARAMS[variant])
    assert {k: got[k] for k in HEAD_PARAMS[variant]} == HEAD_PARAMS[variant]
    assert got["backbone/fc6/kernel"] == (7, 7, 64, 512) and got["backbone/conv1_1/kernel"] == (3, 3, 3, 8)


def test_init_shape_initialises_both_paddings():
    assert INIT_SHAPE == (1, 32, 32, 3)
    for padding in PADDINGS:
        out, _ = jax.eval_shape(lambda: FCN("fcn8s", 4, 0.125, padding).init_with_output(
            jax.random.PRNGKey(0), jnp.zeros(INIT_SHAPE)))
        assert out.shape == (1, 32, 32, 4) and out.dtype == jnp.float32


@pytest.mark.parametrize("name,cls", list(BACKBONES.items()))
def test_backbone_strides_match_feature_maps(name, cls):
    assert BACKBONES["vgg16"] is VGG16 and VGG16.STRIDES == {"pool3": 8, "pool4": 16, "top": 32}
    feats, _ = jax.eval_shape(lambda: cls(width=0.125, padding="same").init_with_output(
        jax.random.PRNGKey(0), jnp.zeros((1, 64, 96, 3))))
    assert set(feats) == set(cls.STRIDES)
    for key, stride in cls.STRIDES.items():
        assert feats[key].shape[1:3] == (64 // stride, 96 // stride), key


@pytest.mark.parametrize("variant", VARIANTS)
def test_registry_upsamplers_follow_backbone_strides(variant):
    """Each upsampler brings the running stride to the next skip's, and the last one to the input's."""
    spec = get_variant(variant)
    strides = BACKBONES[spec.backbone].STRIDES
    for head in spec.heads:
        skip, stride = head.args, strides["top"]
        for up, target in zip(skip.upsamplers, [strides[s] for s in skip.skips] + [1]):
            stride //= up.stride
            assert stride == target and up.kernel in (2 * up.stride, 2 * up.stride - 1)  # AlexNet's is 63
    assert upsampler_names(variant) == tuple(u.name + h.args.suffix for h in spec.heads for u in h.args.upsamplers)


# Caffe's coord_map (fcn.berkeleyvision.org, caffe/python/caffe/coord_map.py): a layer maps bottom coordinates to
# top coordinates as top = a * bottom + b with conv/pool: a = 1/s, b = (p - (k-1)/2) / s; deconv: a = s,
# b = (k-1)/2 - p. Layers (name, kernel, stride, pad) of REFERENCE.md's architecture table:
VGG_PATH = [("conv1_1", 3, 1, 100), ("conv1_2", 3, 1, 1), ("pool1", 2, 2, 0),
            ("conv2_1", 3, 1, 1), ("conv2_2", 3, 1, 1), ("pool2", 2, 2, 0),
            ("conv3_1", 3, 1, 1), ("conv3_2", 3, 1, 1), ("conv3_3", 3, 1, 1), ("pool3", 2, 2, 0),
            ("conv4_1", 3, 1, 1), ("conv4_2", 3, 1, 1), ("conv4_3", 3, 1, 1), ("pool4", 2, 2, 0),
            ("conv5_1", 3, 1, 1), ("conv5_2", 3, 1, 1), ("conv5_3", 3, 1, 1), ("pool5", 2, 2, 0),
            ("fc6", 7, 1, 0), ("fc7", 1, 1, 0), ("score", 1, 1, 0)]
# Deconvolutions (name, kernel, stride, pad 0) of each variant, REFERENCE.md's variant table.
DECONVS = {"fcn32s": [("upscore", 64, 32)],
           "fcn16s": [("upscore2", 4, 2), ("upscore16", 32, 16)],
           "fcn8s": [("upscore2", 4, 2), ("upscore_pool4", 4, 2), ("upscore8", 16, 8)]}
DECONVS["fcn8s-atonce"] = DECONVS["fcn8s"]


def _then(m, a2, b2):
    """Compose a bottom->top map m = (a, b) with a following layer (a2, b2)."""
    a, b = m
    return a * a2, a2 * b + b2


def _conv(m, k, s, p):
    return _then(m, Fraction(1, s), Fraction(2 * p - (k - 1), 2 * s))


def _deconv(m, k, s, p=0):
    return _then(m, Fraction(s), Fraction(k - 1, 2) - p)


def _crop_offset(m, like):
    """Caffe Crop offset of map m cropped to like: -(offset of the map from m's to like's coordinates)."""
    assert m[0] == like[0]  # same scale, so like = m + b
    b = like[1] - m[1]
    assert b.denominator == 1
    return int(-b)


def _maps_at(names):
    m, out = (Fraction(1), Fraction(0)), {}
    for name, k, s, p in VGG_PATH:
        m = _conv(m, k, s, p)
        out[name] = m
    return [out[n] for n in names]


@pytest.mark.parametrize("variant,skips,final", [("fcn32s", (), 19), ("fcn16s", (5,), 27), ("fcn8s", (5, 9), 31),
                                                 ("fcn8s-atonce", (5, 9), 31)])
def test_crop_offsets_from_caffe_coord_maps(variant, skips, final):
    spec = get_variant(variant).heads[0].args
    assert [tuple(u) for u in spec.upsamplers] == DECONVS[variant]
    data = (Fraction(1), Fraction(0))
    y, pool4, pool3 = _maps_at(["score", "pool4", "pool3"])  # score_pool* are 1x1: same map as the pool
    derived = []
    for (_, k, s), skip in zip(DECONVS[variant], [pool4, pool3][:len(DECONVS[variant]) - 1]):
        y = _deconv(y, k, s)
        derived.append(_crop_offset(skip, y))  # the fused sum keeps the upsampled map's coordinates
    y = _deconv(y, *DECONVS[variant][-1][1:])
    assert (tuple(derived), _crop_offset(y, data)) == (skips, final)
    assert (spec.skip_offsets, spec.final_offset) == (skips, final)
    assert spec.skips == ("pool4", "pool3")[:len(skips)]


def test_registry_table_and_checks():
    assert fcn_jax.models.VARIANTS[:4] == VARIANTS == ("fcn32s", "fcn16s", "fcn8s", "fcn8s-atonce")
    assert PADDINGS == ("reference", "same")
    for v in fcn_jax.models.VARIANTS:
        assert check_variant(v) == v and get_variant(v).backbone in BACKBONES and get_variant(v).description
    for v in VARIANTS:
        spec = get_variant(v)
        assert check_variant(v) == v and spec.backbone in BACKBONES and spec.description
        assert spec.heads[0].args.feature_scales == ((0.01, 0.0001) if v == "fcn8s-atonce" else None)
    assert check_padding("same") == "same"
    with pytest.raises(ValueError, match="unknown FCN variant 'fcn4s'.*fcn8s-atonce"):
        check_variant("fcn4s")
    with pytest.raises(ValueError, match="unknown FCN variant"):
        get_variant("vgg16")
    with pytest.raises(ValueError, match="unknown padding 'valid'.*'reference', 'same'"):
        check_padding("valid")
    with pytest.raises(ValueError, match="unknown padding"):
        VGG16(padding="valid").init(jax.random.PRNGKey(0), jnp.zeros(INIT_SHAPE))


@pytest.mark.parametrize("args,match", [
    (("fcn4s", 21, 1.0, "reference"), "unknown FCN variant"),
    (("fcn8s", 21, 1.0, "valid"), "unknown padding"),
    (("fcn8s", 0, 1.0, "reference"), "num_classes"),
    (("fcn8s", 2.5, 1.0, "reference"), "num_classes"),
    (("fcn8s", 21, 0.0, "reference"), r"width must be a number in \(0, 1\]"),
    (("fcn8s", 21, 1.5, "reference"), "width"),
    (("fcn8s", 21, float("nan"), "reference"), "width"),
])
def test_validate_rejects_bad_arguments(args, match):
    validate("fcn8s", 21, 1.0, "reference")
    validate("fcn32s", np.int64(3), 0.125, "same")
    with pytest.raises(ValueError, match=match):
        validate(*args)
    with pytest.raises(ValueError, match=match):  # the module validates at init too
        FCN(*args).init(jax.random.PRNGKey(0), jnp.zeros(INIT_SHAPE))
