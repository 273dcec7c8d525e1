"""The FCN model family against independent references: naive loops, autodiff identities, sizes."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fcn_jax
from fcn_jax.models import VGG16, Upsample, bilinear_filter, conv_transpose, upsampler_names

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
    assert feats["fc7"].shape == (1, 16, 16, 4096)


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
    real = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 1, 1, 3)))["params"]
    assert not np.any(np.asarray(real["score_pool4"]["kernel"])) and not np.any(np.asarray(real["score_fr"]["bias"]))
    np.testing.assert_array_equal(np.asarray(real["upscore16"]["kernel"])[:, :, 2, 2], bilinear_filter(32))


def test_bfloat16_compute_keeps_float32_params_and_logits():
    model = fcn_jax.create_model("fcn8s", num_classes=3, width=1 / 16, dtype="bfloat16")
    out, variables = jax.eval_shape(lambda: model.init_with_output(jax.random.PRNGKey(0), jnp.zeros((1, 9, 9, 3))))
    assert out.dtype == jnp.float32
    assert {x.dtype for x in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}


def test_atonce_differs_from_fcn8s_only_by_pool_scaling():
    """With identical weights, fcn8s-atonce equals fcn8s whose score_pool4/3 kernels are pre-scaled."""
    x = jax.random.normal(jax.random.PRNGKey(1), (1, 21, 19, 3))
    at_once = fcn_jax.create_model("fcn8s-atonce", num_classes=3, width=1 / 16)
    plain = fcn_jax.create_model("fcn8s", num_classes=3, width=1 / 16)
    params = at_once.init(jax.random.PRNGKey(0), x)["params"]
    keys = iter(jax.random.split(jax.random.PRNGKey(2), 4))
    for name in ("score_pool4", "score_pool3"):
        params[name] = {k: jax.random.normal(next(keys), v.shape) for k, v in params[name].items()}
    scaled = dict(params)
    for name, factor in (("score_pool4", 0.01), ("score_pool3", 1e-4)):
        scaled[name] = {"kernel": params[name]["kernel"] * factor, "bias": params[name]["bias"]}
    a = at_once.apply({"params": params}, x)
    b = plain.apply({"params": scaled}, x)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
    assert float(jnp.abs(a - plain.apply({"params": params}, x)).max()) > 1e-3


def test_dropout_only_in_training():
    model = fcn_jax.create_model("fcn32s", num_classes=2, width=1 / 16)
    x = jax.random.normal(jax.random.PRNGKey(0), (1, 5, 5, 3))
    variables = model.init(jax.random.PRNGKey(0), x)
    variables = jax.tree.map(lambda v: v + 0.1, variables)  # non-zero score layer so fc7 matters
    a, b = model.apply(variables, x), model.apply(variables, x)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    c = model.apply(variables, x, train=True, rngs={"dropout": jax.random.PRNGKey(1)})
    d = model.apply(variables, x, train=True, rngs={"dropout": jax.random.PRNGKey(2)})
    assert float(jnp.abs(c - d).max()) > 0
