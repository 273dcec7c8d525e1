"""The BatchNorm FCNs of issue 21 against independent references.

- ``fcn-vgg11bn``: seed 002's own PyTorch classes (``benchmarks/torch_bn.py``, written out from the seed's text), random weights and
  random BatchNorm running statistics, eval mode: equal logits at 224x224 and another multiple of 16, and at odd
  sizes the seed's backbone and ``conv_out`` followed by ``F.interpolate(size=input)`` (output size = input).
- ``fcn-resnet50`` / ``fcn-resnet101``: torchvision's model code (``fcn_resnet50`` itself at full width, and
  at width 1/8 a ResNet-101 FCN built from torchvision's own ``ResNet``, ``Bottleneck``, ``FCNHead``, ``FCN``
  and ``IntermediateLayerGetter`` with every layer's planes scaled), at odd sizes, 1e-4 relative; the
  auxiliary head's logits too; BatchNorm training statistics against NumPy over the batch; parameter counts
  at width 1 through ``jax.eval_shape``.

torch's weights are copied into the flax variables by :func:`flax_path` and :func:`torch_to_flax`, the name
map a weight import needs (every flax leaf and every torch array but ``num_batches_tracked`` covered).
"""
import sys
from pathlib import Path

import numpy as np
import pytest

import flax.linen
import jax
import jax.numpy as jnp
from flax import traverse_util

import fcn_jax
from fcn_jax.models import Output
from fcn_jax.models.backbones.resnet import ResNet, layer_dilations
from fcn_jax.models.backbones.vgg_bn import VGG11BN
from fcn_jax.models.heads.fcnhead import FCNHead, FCNHeadSpec
from fcn_jax.models.layers import BatchNorm

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # benchmarks/ is a dev-only package at the repository root
    sys.path.insert(0, str(ROOT))
from benchmarks import torch_bn  # noqa: E402
from benchmarks.torch_bn import VGG11Segmentation, narrow_torchvision_fcn  # noqa: E402

SEED_CLASSES = 7  # the seed's num_classes
VOC = 21


# ---------------------------------------------------------------------------------------- torchvision

@pytest.fixture(scope="module")
def tv():
    """torchvision, imported beside the CPU torch (:func:`benchmarks.torch_bn.import_torchvision`)."""
    try:
        return torch_bn.import_torchvision()
    except ImportError:
        pytest.skip("torchvision is not installed")


# ------------------------------------------------------------------------------------------ the name map

HEAD_LAYERS = {"0": "conv", "1": "bn", "4": "score"}  # torchvision FCNHead's Sequential indices
DOWNSAMPLE = {"0": "downsample_conv", "1": "downsample_bn"}


def flax_path(module: str) -> tuple:
    """A torch module name -> the flax module path (``backbone.layer3.0.downsample.0`` ->
    ``backbone/layer3_0/downsample_conv``, ``classifier.4`` -> ``classifier/score``, seed ``conv_out``)."""
    parts = module.split(".")
    if parts[0] in ("classifier", "aux_classifier"):
        return (parts[0], HEAD_LAYERS[parts[1]])
    if parts == ["conv_out"]:
        return ("conv_out",)
    assert parts[0] == "backbone", module
    if parts[1].startswith("layer"):
        name = DOWNSAMPLE[parts[4]] if parts[3] == "downsample" else parts[3]
        return ("backbone", f"{parts[1]}_{parts[2]}", name)
    assert len(parts) == 2, module
    return ("backbone", parts[1])


def torch_to_flax(state_dict) -> dict:
    """A torch state dict -> flax variables {'params', 'batch_stats'} (conv OIHW -> HWIO)."""
    flat = {}
    for key, value in state_dict.items():
        module, leaf = key.rsplit(".", 1)
        if leaf == "num_batches_tracked":
            continue
        value = value.detach().numpy()
        path = flax_path(module)
        if leaf == "weight":
            flat[("params",) + path + (("kernel",) if value.ndim == 4 else ("scale",))] = (
                value.transpose(2, 3, 1, 0) if value.ndim == 4 else value)
        else:
            collection, name = {"bias": ("params", "bias"), "running_mean": ("batch_stats", "mean"),
                                "running_var": ("batch_stats", "var")}[leaf]
            flat[(collection,) + path + (name,)] = value
    return traverse_util.unflatten_dict(flat)


def variables_for(model, torch_model, shape=(1, 64, 64, 3)):
    """``torch_model``'s weights as ``model``'s variables, after checking that the name map gives exactly the
    model's leaves with their shapes."""
    variables = torch_to_flax(torch_model.state_dict())
    want = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape)))
    got_shapes = {k: v.shape for k, v in traverse_util.flatten_dict(variables).items()}
    want_shapes = {k: v.shape for k, v in traverse_util.flatten_dict(dict(want)).items()}
    assert got_shapes == want_shapes
    return jax.tree.map(jnp.asarray, variables)


def randomise(module, seed):
    """Random weights (torch's init under ``seed``) and random BatchNorm affine parameters, running
    statistics and conv biases, so that eval mode uses statistics that are not the identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.normal_(0.0, 0.2, generator=g)
                m.running_mean.normal_(0.0, 0.2, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
            elif isinstance(m, nn.Conv2d) and m.bias is not None:
                m.bias.normal_(0.0, 0.1, generator=g)
    return module.eval()


def nchw(x):
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def nhwc(t):
    return t.detach().numpy().transpose(0, 2, 3, 1)


def assert_close(got, want, rtol=1e-4):
    """Equal to ``rtol`` of the reference's largest magnitude (and the shapes equal)."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape
    scale = float(np.abs(want).max())
    assert scale > 0
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * scale)


def images(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def random_variables(module, *inputs, seed=0):
    """Random variables for ``module`` called on ``inputs`` (its tree from ``jax.eval_shape``, values from
    NumPy: no compile): He-scaled kernels, BatchNorm scales in [0.5, 1.5] and variances in [0.5, 2], biases and
    means in [-0.3, 0.3]."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), *inputs))

    def value(path, leaf):
        name = path[-1].key
        if name == "kernel":
            return rng.standard_normal(leaf.shape) * np.sqrt(2 / np.prod(leaf.shape[:-1]))
        low, high = {"scale": (0.5, 1.5), "var": (0.5, 2.0)}.get(name, (-0.3, 0.3))
        return rng.uniform(low, high, leaf.shape)
    return jax.tree_util.tree_map_with_path(lambda p, v: jnp.asarray(value(p, v), jnp.float32), dict(shapes))


# -------------------------------------------------------------------------------------------- fcn-vgg11bn

@pytest.fixture(scope="module")
def seed_net():
    torch.manual_seed(0)
    net = randomise(VGG11Segmentation(SEED_CLASSES), 1)
    model = fcn_jax.create_model("fcn-vgg11bn", num_classes=SEED_CLASSES)
    return net, model, variables_for(model, net)


@pytest.mark.parametrize("shape", [(1, 224, 224), (2, 96, 160)])
def test_vgg11bn_is_the_seeds_segmentation_network(seed_net, shape):
    net, model, variables = seed_net
    x = images(shape + (3,))
    with torch.no_grad():
        want = nhwc(net(nchw(x)))
    assert want.shape == shape + (SEED_CLASSES,)
    assert_close(jax.jit(model.apply)(variables, x), want)


def test_vgg11bn_output_is_the_input_size_at_odd_sizes(seed_net):
    net, model, variables = seed_net
    x = images((2, 37, 53, 3), 1)
    with torch.no_grad():  # the seed's layers, resized to the input as F.interpolate(size=...) does
        want = nhwc(F.interpolate(net.conv_out(net.backbone(nchw(x))), size=(37, 53), mode="bilinear",
                                  align_corners=False))
    got = jax.jit(model.apply)(variables, x)
    assert got.shape == (2, 37, 53, SEED_CLASSES)
    assert_close(got, want)
    # 'same': the input zero-padded to a multiple of 16 (here 48x64), the seed's exact x16, cropped to 37x53
    same = fcn_jax.create_model("fcn-vgg11bn", num_classes=SEED_CLASSES, padding="same")
    padded = np.pad(x[:1], ((0, 0), (0, 11), (0, 11), (0, 0)))
    with torch.no_grad():
        want = nhwc(net(nchw(padded)))[:, :37, :53]
    assert_close(jax.jit(same.apply)(variables, x[:1]), want)
    assert jax.eval_shape(same.apply, variables, jnp.zeros((1, 5, 9, 3))).shape == (1, 5, 9, SEED_CLASSES)
    with pytest.raises(ValueError, match="at least 16x16 pixels .* got 15x40"):
        jax.eval_shape(model.apply, variables, jnp.zeros((1, 15, 40, 3)))


def test_vgg11bn_parameters_are_the_seeds():
    torch_count = sum(p.numel() for p in VGG11Segmentation(SEED_CLASSES).parameters())
    model = fcn_jax.create_model("fcn-vgg11bn", num_classes=SEED_CLASSES)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
    assert sum(v.size for v in jax.tree.leaves(variables["params"])) == torch_count == 9_229_575
    assert set(variables["params"]) == {"backbone", "conv_out"}
    assert [o.name for o in model.outputs] == ["out"]


# ------------------------------------------------------------------------------------- fcn-resnet50 / 101

def resnet_outputs(model, variables, x):
    """(out, aux) of ``model`` in eval mode: ``apply`` gives 'out' only, so the auxiliary head is called on
    the backbone's maps directly."""
    def both(m, x):
        feats = [m.backbone(x)]
        aux = m.heads[1](feats, x.shape[1], x.shape[2])
        return m(x), aux
    return jax.jit(lambda v, x: model.apply(v, x, method=both))(variables, x)


def test_fcn_resnet50_is_torchvisions(tv):
    torch.manual_seed(0)
    net = randomise(tv.models.segmentation.fcn_resnet50(weights=None, weights_backbone=None, num_classes=VOC,
                                                        aux_loss=True), 2)
    model = fcn_jax.create_model("fcn-resnet50", num_classes=VOC)
    variables = variables_for(model, net)
    x = images((1, 33, 47, 3), 3)
    with torch.no_grad():
        want = {k: nhwc(v) for k, v in net(nchw(x)).items()}
    out, aux = resnet_outputs(model, variables, x)
    assert_close(out, want["out"])
    assert_close(aux, want["aux"])


def test_fcn_resnet101_is_torchvisions_at_width_one_eighth(tv):
    torch.manual_seed(0)
    net = randomise(narrow_torchvision_fcn("fcn-resnet101", 5, 0.125), 3)
    model = fcn_jax.create_model("fcn-resnet101", num_classes=5, width=0.125)
    variables = variables_for(model, net)
    x = images((2, 41, 29, 3), 4)
    with torch.no_grad():
        want = {k: nhwc(v) for k, v in net(nchw(x)).items()}
    out, aux = resnet_outputs(model, variables, x)
    assert_close(out, want["out"])
    assert_close(aux, want["aux"])


@pytest.fixture(scope="module")
def tiny50():
    """fcn-resnet50 at width 1/8, 5 classes, random variables (running statistics included)."""
    model = fcn_jax.create_model("fcn-resnet50", num_classes=5, width=0.125)
    return model, random_variables(model, jnp.zeros((1, 32, 32, 3)))


def test_batchnorm_training_statistics_are_over_the_batch(tiny50):
    """One training forward: every BatchNorm's new running statistics are 0.9 old + 0.1 batch (the mean, and
    the unbiased variance over N, H, W), computed in NumPy from the layer's input in that forward."""
    model, variables = tiny50

    def train_forward(v, x):
        inputs = {}

        def record(next_fun, args, kwargs, context):
            if isinstance(context.module, BatchNorm) and context.method_name == "__call__":
                inputs[context.module.path] = args[0]
            return next_fun(*args, **kwargs)

        with flax.linen.intercept_methods(record):
            out, updates = model.apply(v, x, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(0)})
        return out, updates, inputs

    out, updates, inputs = jax.jit(train_forward)(variables, images((2, 23, 30, 3), 5))
    assert set(out) == {"out", "aux"} and out["aux"].shape == (2, 23, 30, 5)
    old = traverse_util.flatten_dict(dict(variables["batch_stats"]))
    new = traverse_util.flatten_dict(dict(updates["batch_stats"]))
    assert len(new) == 2 * len(inputs) == 2 * (1 + 3 * 16 + 4 + 2)  # stem, 16 bottlenecks, 4 downsamples, heads
    for path, value in inputs.items():
        value = np.asarray(value, np.float64)
        n = value.size // value.shape[-1]
        mean, var = value.mean(axis=(0, 1, 2)), value.var(axis=(0, 1, 2)) * n / (n - 1)
        for name, batch in (("mean", mean), ("var", var)):
            want = 0.9 * np.asarray(old[path + (name,)], np.float64) + 0.1 * batch
            np.testing.assert_allclose(new[path + (name,)], want, rtol=1e-5, atol=1e-6, err_msg=str(path + (name,)))


def test_aux_is_a_training_only_output_at_half_weight(tiny50):
    model, variables = tiny50
    assert [(o.name, o.classes, o.loss_weight, o.evaluated) for o in model.outputs] == [
        ("out", 5, 1.0, True), ("aux", 5, 0.5, False)]
    x = images((1, 17, 19, 3), 6)
    assert jax.eval_shape(model.apply, variables, x).shape == (1, 17, 19, 5)  # one evaluated output: its logits
    evaluated = jax.eval_shape(lambda v: model.apply(v, x, return_dict=True), variables)
    trained, _ = jax.eval_shape(lambda v: model.apply(v, x, train=True, mutable=["batch_stats"],
                                                      rngs={"dropout": jax.random.key(1)}), variables)
    assert set(evaluated) == {"out"} and set(trained) == {"out", "aux"} and trained["aux"].shape == (1, 17, 19, 5)
    fcn_jax.models.require("fcn-resnet50", rgb=True, single_output=True)  # aux is not scored
    same = fcn_jax.create_model("fcn-resnet50", num_classes=5, width=0.125, padding="same")  # padded to 24x24
    assert jax.eval_shape(same.apply, variables, x).shape == (1, 17, 19, 5)


def test_full_width_parameters_are_torchvisions(tv):
    """Width 1 through jax.eval_shape: torchvision's parameter counts with the aux head (35,322,218 and
    54,314,346 at 21 classes); the name map covers fcn_resnet101's every array; and the narrow reference
    builder at width 1 is fcn_resnet101."""
    model = fcn_jax.create_model("fcn-resnet50", num_classes=VOC)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
    assert sum(v.size for v in jax.tree.leaves(shapes["params"])) == 35_322_218
    net = tv.models.segmentation.fcn_resnet101(weights=None, weights_backbone=None, num_classes=VOC, aux_loss=True)
    model = fcn_jax.create_model("fcn-resnet101", num_classes=VOC)
    variables = variables_for(model, net, (1, 32, 32, 3))  # every name and shape
    assert sum(v.size for v in jax.tree.leaves(variables["params"])) == sum(
        p.numel() for p in net.parameters()) == 54_314_346
    ours = narrow_torchvision_fcn("fcn-resnet101", VOC, 1.0)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in net.state_dict().items()}


def test_resnet_dilations_are_torchvisions(tv):
    """The (stride, dilation) of every bottleneck's 3x3 conv against torchvision's built fcn_resnet50."""
    net = tv.models.segmentation.fcn_resnet50(weights=None, weights_backbone=None, num_classes=VOC)
    want = tuple(tuple((b.conv2.stride[0], b.conv2.dilation[0]) for b in getattr(net.backbone, f"layer{i}"))
                 for i in range(1, 5))
    assert layer_dilations((3, 4, 6, 3)) == want == (
        ((1, 1),) * 3, ((2, 1),) + ((1, 1),) * 3, ((1, 1),) + ((1, 2),) * 5, ((1, 2),) + ((1, 4),) * 2)


def test_frozen_batchnorm_keeps_every_statistic():
    """frozen_bn: training uses the running statistics and leaves every one bit-identical (both backbones, on
    a ResNet of one bottleneck per layer, and the FCN head)."""
    x = images((2, 16, 24, 3), 9)
    for backbone in (ResNet(blocks=(1, 1, 1, 1), width=0.125, frozen_bn=True), VGG11BN(width=0.125, frozen_bn=True)):
        variables = random_variables(backbone, x)
        trained, updates = jax.jit(lambda v: backbone.apply(v, x, train=True, mutable=["batch_stats"]))(variables)
        jax.tree.map(np.testing.assert_array_equal, dict(updates["batch_stats"]), variables["batch_stats"])
        if isinstance(backbone, ResNet):  # and the running statistics are what normalises
            evaluated = jax.jit(lambda v: backbone.apply(v, x))(variables)
            jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6), trained, evaluated)
    head = FCNHead(Output("out", 3), FCNHeadSpec("top", 8), frozen_bn=True)
    feats = [{"top": jnp.asarray(images((2, 4, 6, 16), 10))}]
    variables = random_variables(head, feats, 32, 48)
    _, updates = head.apply(variables, feats, 32, 48, train=True, mutable=["batch_stats"],
                            rngs={"dropout": jax.random.key(0)})
    jax.tree.map(np.testing.assert_array_equal, dict(updates["batch_stats"]), variables["batch_stats"])


def test_bfloat16_compute_keeps_float32_statistics():
    model = fcn_jax.create_model("fcn-resnet50", num_classes=3, width=0.125, dtype="bfloat16")
    x = jnp.zeros((2, 24, 24, 3))
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
    out, updates = jax.eval_shape(lambda v: model.apply(v, x, train=True, mutable=["batch_stats"],
                                                        rngs={"dropout": jax.random.key(0)}), variables)
    assert {v.dtype for v in jax.tree.leaves(updates)} == {v.dtype for v in jax.tree.leaves(variables)} == {
        jnp.dtype(jnp.float32)}
    assert out["out"].dtype == jnp.float32 and out["out"].shape == (2, 24, 24, 3)


def test_head_strides_are_the_backbones():
    """Each head's resize stride (its spec) is the stride of the backbone map it reads."""
    for variant in ("fcn-vgg11bn", "fcn-resnet50", "fcn-resnet101"):
        spec = fcn_jax.models.get_variant(variant)
        strides = fcn_jax.models.BACKBONES[spec.backbone].STRIDES
        assert [h.args.stride for h in spec.heads] == [strides[h.args.feature] for h in spec.heads], variant


def test_frozen_bn_config_trains_with_every_statistic_and_frozen_affine_unchanged():
    """``--frozen-bn`` (ModelConfig.frozen_bn) reaches every BatchNorm of the network: after two SGD steps of
    the train step every running statistic is bit-identical, and with ``--frozen '.*bn.*'`` so are the
    BatchNorm scales and biases, while the convolutions train. Refused for a network without BatchNorm."""
    from fcn_jax import parallel
    from fcn_jax.config import ModelConfig
    from fcn_jax.configs import get_config
    from fcn_jax.train_lib import create_train_state, init_variables, make_train_step
    cfg = get_config("shapes", "fcn-vgg11bn", model={"num_classes": 3, "width": 0.125, "padding": "same",
                                                     "frozen_bn": True},
                     frozen=r".*/bn[^/]*/.*", optimizer="sgd", lr=0.1, schedule="fixed", warmup_steps=0, batch_size=2)
    model = cfg.model.build()
    variables = init_variables(cfg, model)
    rng = np.random.RandomState(0)
    variables["batch_stats"] = traverse_util.unflatten_dict({  # random running statistics: small means, var > 0
        k: jnp.asarray(rng.uniform(0.5, 1.5, v.shape) if k[-1] == "var" else 0.01 * rng.standard_normal(v.shape),
                       jnp.float32) for k, v in traverse_util.flatten_dict(variables["batch_stats"]).items()})
    state = create_train_state(cfg, model, variables)
    variables = jax.tree.map(np.array, variables)  # copies: the step donates the state's arrays
    step = make_train_step(cfg, parallel.make_mesh(), state.params)
    batch = {"image": jnp.asarray(rng.standard_normal((2, 32, 32, 3)), jnp.float32),
             "label": jnp.asarray(rng.randint(0, 3, (2, 32, 32)), jnp.int32)}
    for _ in range(2):
        state, _ = step(state, batch)
    jax.tree.map(np.testing.assert_array_equal, state.model_state["batch_stats"], variables["batch_stats"])
    before, after = (traverse_util.flatten_dict(p, sep="/") for p in (variables["params"], state.params))
    bn = [k for k in before if "/bn" in k]
    assert len(bn) == 2 * 8  # scale and bias of the eight BatchNorms
    for key in before:
        same = np.array_equal(before[key], after[key])
        assert same == (key in bn), key
    with pytest.raises(ValueError, match="frozen_bn: fcn8s has no BatchNorm layers"):
        ModelConfig("fcn8s", 3, frozen_bn=True)
