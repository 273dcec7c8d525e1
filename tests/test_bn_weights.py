"""Weight import for the BatchNorm FCNs (issue 21): the seed's and torchvision's state dicts through the one loader.

Every file is written here from a PyTorch model built in the test, with random weights and random BatchNorm
running statistics, in eval mode: seed 002's own classes (``VGG11BackBone`` / ``VGG11Segmentation`` of
``test_bn_fcns``, ``VGG11Classification`` and ``copy_last_layer`` written out below from the seed's text),
torchvision's ``fcn_resnet50`` and, narrower, its ``ResNet``/``FCNHead``/``FCN`` code for the ResNet-101 layout
(``benchmarks.torch_bn.narrow_torchvision_fcn``), torchvision's ``make_layers`` for ``vgg11_bn``. Each is saved as ``.pth``,
``.npz`` or ``.safetensors`` and loaded through ``fcn_jax.load_weights`` / ``loading`` / ``train_lib``; the
logits are compared with the torch model's at odd sizes (1e-4 relative) and the variables with the name map
of ``test_bn_fcns.torch_to_flax``.
"""
from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

import fcn_jax
from fcn_jax import checkpoint, train_lib, weights
from fcn_jax.configs import get_config
from fcn_jax.convert import main as convert_main
from fcn_jax.weights import WeightsError

torch = pytest.importorskip("torch")
from test_bn_fcns import assert_close, images, nchw, nhwc, randomise, resnet_outputs, torch_to_flax, tv  # noqa: E402
from benchmarks.torch_bn import VGG11BackBone, VGG11Segmentation, narrow_torchvision_fcn  # noqa: E402

nn = torch.nn
F = torch.nn.functional

SEED_CLASSES = 7
WIDTH = 0.125  # the narrow ResNets
NARROW_CLASSES = 5

__all__ = ["tv"]  # the torchvision fixture, imported for this module's tests


# ------------------------------------------------------------------ seed 002's classes (its text, as written)

class VGG11Classification(nn.Module):
    def __init__(self, num_classes=7):
        super(VGG11Classification, self).__init__()
        self.backbone = VGG11BackBone()
        self.pool5 = nn.MaxPool2d(kernel_size=2, stride=2)  # 512 x 7 x 7
        self.gap = nn.AdaptiveAvgPool2d(1)  # 512 x 1 x 1
        self.fc_out = nn.Linear(512, num_classes)

    def forward(self, x):
        x = self.backbone(x)
        x = self.pool5(x)
        x = self.gap(x)
        x = torch.flatten(x, 1)
        x = self.fc_out(x)
        return x


class SeedSegmentation(VGG11Segmentation):
    """The seed's ``VGG11Segmentation`` with its ``copy_last_layer``, as written."""

    def copy_last_layer(self, fc_out):
        reshaped_fc_out = fc_out.weight.detach()
        reshaped_fc_out = torch.reshape(reshaped_fc_out, (7, 512, 1, 1))
        self.conv_out.weight = torch.nn.Parameter(reshaped_fc_out)
        assert self.conv_out.weight[0][0] == fc_out.weight[0][0]
        return


# ----------------------------------------------------------------------------------------------- helpers

def save(state_dict, path: Path) -> Path:
    """A state dict as the file ``path`` names: .pth (torch.save), .npz or .safetensors (same keys)."""
    if path.suffix == ".pth":
        torch.save(state_dict, path)
    elif path.suffix == ".npz":
        np.savez(path, **{k: v.numpy() for k, v in state_dict.items()})
    else:
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in state_dict.items()}, str(path))
    return path


def flat(tree) -> dict:
    return {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(dict(tree)).items()}


def assert_same(got, want) -> None:
    got, want = flat(got), flat(want)
    assert sorted(got) == sorted(want)
    for key in got:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def init_with_sentinel(cfg, monkeypatch):
    """``train_lib.initial_variables_for(cfg)`` with the target's own initialisation replaced by a sentinel (every
    array 7.0): (variables started, the sentinel variables, the convention, the report's lines)."""
    model = cfg.model.build()
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
    fresh = jax.tree.map(lambda s: np.full(s.shape, 7.0, np.float32), dict(shapes))
    monkeypatch.setattr(train_lib, "init_variables", lambda *_: fresh)
    lines = []
    started, convention = train_lib.initial_variables_for(cfg, model, report=lines.append)
    return started, fresh, convention, lines


def seed_forward_at(net_backbone, conv_out, x):
    """The seed's layers at any size: backbone, conv_out, then F.interpolate to the input (what the seed's
    Upsample(scale_factor=16) is at multiples of 16)."""
    with torch.no_grad():
        y = conv_out(net_backbone(nchw(x)))
        return nhwc(F.interpolate(y, size=x.shape[1:3], mode="bilinear", align_corners=False))


def backbone_features(variant, variables, x, width=1.0, num_classes=SEED_CLASSES):
    model = fcn_jax.create_model(variant, num_classes=num_classes, width=width)
    return jax.jit(lambda v, x: model.apply(v, x, method=lambda m, x: m.backbone(x)["top"]))(variables, x)


# --------------------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def seed_seg():
    torch.manual_seed(0)
    return randomise(VGG11Segmentation(SEED_CLASSES), 1)


@pytest.fixture(scope="module")
def seed_cls():
    torch.manual_seed(1)
    return randomise(VGG11Classification(SEED_CLASSES), 2)


@pytest.fixture(scope="module")
def vgg11_bn(tv):
    """torchvision's ``vgg11_bn`` layout: its ``make_layers(cfg 'A', batch_norm=True)`` as ``features`` and an
    ImageNet-style ``classifier`` Sequential (Linear, ReLU, Dropout, Linear, ReLU, Dropout, Linear: keys
    classifier.0/3/6), made small (10 classes, 16 hidden) so that the test stays fast."""
    from torchvision.models.vgg import cfgs, make_layers
    torch.manual_seed(2)
    net = nn.Module()
    net.features = make_layers(cfgs["A"], batch_norm=True)
    net.classifier = nn.Sequential(nn.Linear(512 * 7 * 7, 16), nn.ReLU(True), nn.Dropout(),
                                   nn.Linear(16, 16), nn.ReLU(True), nn.Dropout(), nn.Linear(16, 10))
    return randomise(net, 3)


@pytest.fixture(scope="module")
def resnet101_narrow(tv):
    torch.manual_seed(3)
    return randomise(narrow_torchvision_fcn("fcn-resnet101", NARROW_CLASSES, WIDTH), 4)


@pytest.fixture(scope="module")
def resnet50_narrow(tv):
    torch.manual_seed(4)
    return randomise(narrow_torchvision_fcn("fcn-resnet50", NARROW_CLASSES, WIDTH), 5)


def imagenet_resnet(fcn) -> dict:
    """An ImageNet ``resnet50/101`` state dict (``conv1.weight``, ``layer1.0...``, ``fc.*``) with ``fcn``'s
    backbone: torchvision's classification ResNet has the same arrays (dilation changes no shape)."""
    state = {k[len("backbone."):]: v for k, v in fcn.state_dict().items() if k.startswith("backbone.")}
    channels = state["layer4.0.conv3.weight"].shape[0]
    g = torch.Generator().manual_seed(9)
    return {**state, "fc.weight": torch.randn(10, channels, generator=g), "fc.bias": torch.randn(10, generator=g)}


# ----------------------------------------------------------------------------------------------- the seed

@pytest.fixture(scope="module")
def seed_loaded(seed_seg, tmp_path_factory):
    """The seed's segmentation state dict in each container, loaded without telling the variant."""
    folder = tmp_path_factory.mktemp("seed")
    out = {}
    for suffix in (".pth", ".npz", ".safetensors"):
        path = save(seed_seg.state_dict(), folder / f"vgg11_segmentation{suffix}")
        out[suffix] = (path,) + fcn_jax.load_weights(str(path), return_meta=True)
    return out


def test_seed_segmentation_state_dict_is_the_seeds_network(seed_seg, seed_loaded):
    _, variables, meta = seed_loaded[".pth"]
    assert meta["format"] == "vgg11bn-seed" and meta["initialised"] == []
    assert (meta["model"]["variant"], meta["model"]["num_classes"]) == ("fcn-vgg11bn", SEED_CLASSES)
    assert meta["preprocessing"] == "torchvision"
    assert set(variables) == {"params", "batch_stats"}
    assert_same(variables, torch_to_flax(seed_seg.state_dict()))  # BN running stats -> batch_stats (mean, var)
    model = fcn_jax.create_model("fcn-vgg11bn", num_classes=SEED_CLASSES)
    x = images((1, 37, 53, 3), 7)  # odd: F.interpolate(size=input) after the seed's layers
    assert_close(jax.jit(model.apply)(variables, x), seed_forward_at(seed_seg.backbone, seed_seg.conv_out, x))
    for suffix in (".npz", ".safetensors"):  # the same keys in another container: the same variables
        path, other, other_meta = seed_loaded[suffix]
        assert other_meta["format"] == "vgg11bn-seed" and other_meta["source"] == str(path)
        assert_same(other, variables)


def test_seed_classifier_becomes_the_segmentation_network_as_copy_last_layer_does(seed_cls, tmp_path):
    """fc_out (Linear 512 -> 7) -> the 1x1 conv_out: the seed's copy_last_layer (weight) plus the bias."""
    path = save(seed_cls.state_dict(), tmp_path / "vgg11_classification.safetensors")
    variables, meta = fcn_jax.load_weights(str(path), return_meta=True)
    assert meta["format"] == "vgg11bn-seed-classifier"
    assert (meta["model"]["variant"], meta["model"]["num_classes"]) == ("fcn-vgg11bn", SEED_CLASSES)
    torch.manual_seed(5)
    seg = randomise(SeedSegmentation(SEED_CLASSES), 6)
    seg.backbone.load_state_dict(seed_cls.backbone.state_dict())
    seg.copy_last_layer(seed_cls.fc_out)  # the seed's conversion: the weight only
    seeds_bias = seg.conv_out.bias.detach().clone()
    with torch.no_grad():
        seg.conv_out.bias.copy_(seed_cls.fc_out.bias)  # and the bias, as fcn-jax copies it
    x = images((2, 32, 48, 3), 8)  # multiples of 16: the seed's own forward (Upsample x16)
    with torch.no_grad():
        want = nhwc(seg(nchw(x)))
    model = fcn_jax.create_model("fcn-vgg11bn", num_classes=SEED_CLASSES)
    assert_close(jax.jit(model.apply)(variables, x), want)
    np.testing.assert_array_equal(variables["params"]["conv_out"]["bias"], seed_cls.fc_out.bias.detach().numpy())
    assert not np.allclose(seeds_bias.numpy(), seed_cls.fc_out.bias.detach().numpy())  # what the seed leaves


def test_torchvision_vgg11_bn_fills_the_backbone(vgg11_bn, tmp_path):
    """features.{0,4,...,25} and their BatchNorms -> the backbone (the seed's backbone is features[:28]);
    classifier.* dropped; conv_out at its initialisation, and said so."""
    path = save(vgg11_bn.state_dict(), tmp_path / "vgg11_bn-6002323d.npz")
    variables, meta = fcn_jax.load_weights(str(path), num_classes=SEED_CLASSES, return_meta=True)
    assert meta["format"] == "vgg11bn-torchvision" and meta["model"]["variant"] == "fcn-vgg11bn"
    assert meta["preprocessing"] == "torchvision" and meta["initialised"] == ["conv_out/bias", "conv_out/kernel"]
    x = images((1, 37, 53, 3), 9)
    with torch.no_grad():
        want = nhwc(vgg11_bn.features[:28](nchw(x)))
    assert_close(backbone_features("fcn-vgg11bn", variables, x), want)
    # the seed's backbone modules, state by state, are the same layers: load them by index into the seed's
    seed = VGG11Segmentation(SEED_CLASSES)
    convs = [m for m in vgg11_bn.features if isinstance(m, (nn.Conv2d, nn.BatchNorm2d))]
    mine = [m for m in seed.backbone.children() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d))]
    for src, dst in zip(convs, mine, strict=True):
        dst.load_state_dict(src.state_dict())
    assert_same(variables["batch_stats"], torch_to_flax(seed.state_dict())["batch_stats"])
    assert_same(variables["params"]["backbone"], torch_to_flax(seed.state_dict())["params"]["backbone"])


# ------------------------------------------------------------------------------------------ the ResNets

def test_fcn_resnet50_coco_layout_is_torchvisions(tv, tmp_path):
    """torchvision's fcn_resnet50 (aux head included), full width, .pth: the variant and classes from the
    keys, logits and aux logits equal to torchvision's at an odd size."""
    torch.manual_seed(0)
    net = randomise(tv.models.segmentation.fcn_resnet50(weights=None, weights_backbone=None, num_classes=21,
                                                        aux_loss=True), 2)
    path = save(net.state_dict(), tmp_path / "fcn_resnet50_coco-1167a1af.pth")
    variables, meta = fcn_jax.load_weights(str(path), return_meta=True)
    assert meta["format"] == "fcn-resnet-torchvision" and meta["initialised"] == []
    assert (meta["model"]["variant"], meta["model"]["num_classes"]) == ("fcn-resnet50", 21)
    assert sum(v.size for v in jax.tree.leaves(variables["params"])) == 35_322_218
    x = images((1, 33, 47, 3), 3)
    with torch.no_grad():
        want = {k: nhwc(v) for k, v in net(nchw(x)).items()}
    out, aux = resnet_outputs(fcn_jax.create_model("fcn-resnet50", num_classes=21), variables, x)
    assert_close(out, want["out"])
    assert_close(aux, want["aux"])


def test_fcn_resnet101_without_aux_or_batch_counters(resnet101_narrow, tmp_path, caplog):
    """The ResNet-101 layout (23 blocks in layer3, width 1/8), .safetensors, without aux_classifier.* and
    without num_batches_tracked (older files): fcn-resnet101, every array where the name map puts it; the aux
    head at its initialisation, recorded and logged."""
    state = {k: v for k, v in resnet101_narrow.state_dict().items()
             if not k.startswith("aux_classifier.") and not k.endswith("num_batches_tracked")}
    path = save(state, tmp_path / "fcn_resnet101_coco.safetensors")
    with caplog.at_level("INFO", logger="fcn_jax.weights"):
        variables, meta = fcn_jax.load_weights(str(path), width=WIDTH, return_meta=True)
    assert (meta["model"]["variant"], meta["model"]["num_classes"]) == ("fcn-resnet101", NARROW_CLASSES)
    assert sorted(meta["initialised"]) == sorted(
        ["aux_classifier/conv/kernel", "aux_classifier/bn/scale", "aux_classifier/bn/bias",
         "aux_classifier/score/kernel", "aux_classifier/score/bias", "batch_stats/aux_classifier/bn/mean",
         "batch_stats/aux_classifier/bn/var"])
    assert "not in the file, at their initialisation: aux_classifier" in caplog.text
    np.testing.assert_array_equal(variables["batch_stats"]["aux_classifier"]["bn"]["var"], 1.0)  # BN's init
    want = torch_to_flax(resnet101_narrow.state_dict())
    del want["params"]["aux_classifier"], want["batch_stats"]["aux_classifier"]
    got = {c: {k: v for k, v in t.items() if k != "aux_classifier"} for c, t in variables.items()}
    assert_same(got, want)  # (the name map's logits are torchvision's: test_bn_fcns, this same builder)


def test_imagenet_resnet50_starts_the_backbone_through_init(resnet50_narrow, tmp_path, monkeypatch):
    """--init with an ImageNet resnet50 file (train_lib.initial_variables_for -> loading.init_variables): the
    backbone's params and batch_stats copied, both heads at the target's own initialisation and reported as
    re-initialised; fc.* dropped. Through load_weights the backbone's features equal torchvision's."""
    path = save(imagenet_resnet(resnet50_narrow), tmp_path / "resnet50-11ad3fa6.npz")
    variables, meta = fcn_jax.load_weights(str(path), width=WIDTH, num_classes=NARROW_CLASSES, return_meta=True)
    assert meta["format"] == "resnet-torchvision" and meta["model"]["variant"] == "fcn-resnet50"
    assert {p.removeprefix("batch_stats/").split("/")[0] for p in meta["initialised"]} == {"classifier",
                                                                                          "aux_classifier"}
    x = images((1, 35, 27, 3), 10)
    with torch.no_grad():
        want = nhwc(resnet50_narrow.backbone(nchw(x))["out"])
    assert_close(backbone_features("fcn-resnet50", variables, x, WIDTH, NARROW_CLASSES), want)

    cfg = get_config("shapes", "fcn-resnet50", init=str(path),
                     model=dict(variant="fcn-resnet50", num_classes=NARROW_CLASSES, width=WIDTH))
    started, fresh, convention, lines = init_with_sentinel(cfg, monkeypatch)
    mapped = torch_to_flax(resnet50_narrow.state_dict())
    for collection in ("params", "batch_stats"):
        assert_same(started[collection]["backbone"], mapped[collection]["backbone"])  # every array copied
        for head in ("classifier", "aux_classifier"):
            assert_same(started[collection][head], fresh[collection][head])  # left at the target's own
    assert convention == "torchvision"
    assert lines == [f"init from {path} (resnet-torchvision):\ncopied 18 of 24 layers: backbone (18 layers)\n"
                     f"re-initialised for fcn-resnet50 with {NARROW_CLASSES} classes: aux_classifier (initialised), "
                     f"classifier (initialised)"]


def test_fcn_resnet50_coco_fine_tunes_to_new_classes_with_statistics_copied(resnet50_narrow, tmp_path, monkeypatch):
    """--init with a torchvision fcn_resnet50 file (5 classes) for a 3-class dataset: every BatchNorm's
    parameters and running statistics and both heads' 3x3 conv copied from the file; only the two score layers
    (the class-count-shaped 1x1 convs) at the target's own initialisation, and reported so."""
    path = save(resnet50_narrow.state_dict(), tmp_path / "fcn_resnet50_coco.pth")
    cfg = get_config("shapes", "fcn-resnet50", init=str(path),
                     model=dict(variant="fcn-resnet50", num_classes=3, width=WIDTH))
    started, fresh, convention, lines = init_with_sentinel(cfg, monkeypatch)
    mapped = flat(torch_to_flax(resnet50_narrow.state_dict()))
    got, sentinel = flat(started), flat(fresh)
    assert sorted(got) == sorted(sentinel)
    scores = {f"params/{head}/score/{leaf}" for head in ("classifier", "aux_classifier") for leaf in ("kernel", "bias")}
    for key in got:
        np.testing.assert_array_equal(got[key], sentinel[key] if key in scores else mapped[key], err_msg=key)
    assert any(k.startswith("batch_stats/classifier/bn/") for k in got)  # the heads' BatchNorm statistics too
    assert convention == "torchvision"
    assert lines[0].startswith(f"init from {path} (fcn-resnet-torchvision):")
    assert lines[0].endswith("\ncopied 22 of 24 layers: backbone (18 layers), aux_classifier/bn, aux_classifier/conv, "
                             "classifier/bn, classifier/conv\nre-initialised for fcn-resnet50 with 3 classes: "
                             "aux_classifier/score (initialised), classifier/score (initialised)")


# ------------------------------------------------------------------------------------ detection, errors

def test_each_format_is_detected_from_its_keys(seed_seg, seed_cls, vgg11_bn, resnet50_narrow):
    keys = {"vgg11bn-seed": seed_seg.state_dict(), "vgg11bn-seed-classifier": seed_cls.state_dict(),
            "vgg11bn-torchvision": vgg11_bn.state_dict(), "fcn-resnet-torchvision": resnet50_narrow.state_dict(),
            "resnet-torchvision": imagenet_resnet(resnet50_narrow)}
    for fmt, state in keys.items():
        assert weights.detect_format(state) == fmt
    no_aux = {k: v for k, v in resnet50_narrow.state_dict().items() if not k.startswith("aux_")}
    assert weights.detect_format(no_aux) == "fcn-resnet-torchvision"
    assert weights.detect_format(["features.0.weight", "features.2.weight"]) == "vgg16-torch"  # VGG16: no BN
    with pytest.raises(WeightsError, match=r"x.pth: unrecognised weights: .*seed 002's VGG11-BN .*found fc.weight"):
        weights.detect_format(["fc.weight"], "x.pth")


def _npz(tmp_path: Path, name: str, state: dict) -> str:
    path = tmp_path / name
    np.savez(path, **{k: np.asarray(v) for k, v in state.items()})
    return str(path)


def test_errors_name_the_keys(seed_seg, resnet50_narrow, tmp_path):
    state = {k: v.numpy() for k, v in seed_seg.state_dict().items()}
    missing = dict(state)
    del missing["backbone.bn3_1.running_var"], missing["conv_out.bias"]
    extra = dict(state, **{"backbone.conv6.weight": np.zeros((1, 1, 1, 1), np.float32)})
    with pytest.raises(WeightsError, match=r"m.npz: vgg11bn-seed weights do not fit fcn-vgg11bn \(7 classes, "
                                           r"width 1\): missing keys backbone.bn3_1.running_var, conv_out.bias$"):
        fcn_jax.load_weights(_npz(tmp_path, "m.npz", missing))
    with pytest.raises(WeightsError, match=r"unexpected keys backbone.conv6.weight$"):
        fcn_jax.load_weights(_npz(tmp_path, "u.npz", extra))
    with pytest.raises(ValueError, match=r"variant fcn-resnet50 requested, but the file is fcn-vgg11bn \(seed 002's "
                                         r"keys with conv_out.weight\)"):
        fcn_jax.load_weights(_npz(tmp_path, "s.npz", state), "fcn-resnet50")
    with pytest.raises(ValueError, match=r"num_classes 21 requested, but the weights have 7 classes "
                                         r"\(conv_out.weight has shape \(7, 512, 1, 1\)\)"):
        fcn_jax.load_weights(str(tmp_path / "s.npz"), num_classes=21)
    integer = dict(state, **{"backbone.bn1.running_mean": np.zeros(64, np.int64)})
    with pytest.raises(WeightsError, match=r"weights must be floating point: backbone.bn1.running_mean is int64"):
        fcn_jax.load_weights(_npz(tmp_path, "i.npz", integer))
    shape = dict(state, **{"backbone.bn2.running_var": np.ones(64, np.float32)})
    with pytest.raises(WeightsError, match=r"backbone.bn2.running_var has shape \(64\), expected \(128\)"):
        fcn_jax.load_weights(_npz(tmp_path, "h.npz", shape))

    resnet = {k: v.numpy() for k, v in resnet50_narrow.state_dict().items()}
    partial_aux = {k: v for k, v in resnet.items() if k != "aux_classifier.1.running_mean"}
    with pytest.raises(WeightsError, match=r"missing keys aux_classifier.1.running_mean$"):
        fcn_jax.load_weights(_npz(tmp_path, "a.npz", partial_aux), width=WIDTH)
    short = {k: v for k, v in resnet.items() if not k.startswith("backbone.layer3.5.")}
    with pytest.raises(WeightsError, match=r"fcn-resnet-torchvision weights with 5 blocks in backbone.layer3: "
                                           r"expected 6 \(ResNet-50\) or 23 \(ResNet-101\)"):
        fcn_jax.load_weights(_npz(tmp_path, "b.npz", short), width=WIDTH)
    imagenet = {k: v.numpy() for k, v in imagenet_resnet(resnet50_narrow).items()}
    with pytest.raises(WeightsError, match=r"ImageNet resnet50 weights \(layer3 has 6 blocks\) cannot start "
                                           r"fcn-resnet101, whose backbone is resnet101"):
        fcn_jax.load_weights(_npz(tmp_path, "r.npz", imagenet), "fcn-resnet101", width=WIDTH)
    with pytest.raises(WeightsError, match=r"weights do not fit fcn-resnet50 \(21 classes, width 0.25\): "
                                           r"bn1.bias has shape \(8\), expected \(16\); .*; and \d+ more arrays "
                                           r"of other shapes$"):
        fcn_jax.load_weights(str(tmp_path / "r.npz"), width=2 * WIDTH)


# ------------------------------------------------------------------------------------------------ convert

def test_convert_writes_each_format_as_a_checkpoint(seed_loaded, seed_cls, vgg11_bn, resnet50_narrow, tmp_path,
                                                    capsys):
    """python -m fcn_jax.convert FILE --out DIR for every format: the checkpoint holds exactly the loader's
    variables (batch_stats included) and records the torchvision convention."""
    names, narrow = _names(tmp_path, SEED_CLASSES), ["--width", str(WIDTH), "--class-names",
                                                     str(_names(tmp_path, NARROW_CLASSES))]
    sources = [  # (class counts as in the tests above: the heads' initial values are computed once)
        (seed_loaded[".pth"][0], ["--class-names", str(names)], "fcn-vgg11bn, 7 classes, width 1"),
        (save(seed_cls.state_dict(), tmp_path / "cls.npz"), ["--class-names", str(names)], "fcn-vgg11bn, 7 classes"),
        (save(vgg11_bn.state_dict(), tmp_path / "vgg11_bn.safetensors"),
         ["--num-classes", str(SEED_CLASSES), "--class-names", str(names)], "fcn-vgg11bn, 7 classes"),
        (save(resnet50_narrow.state_dict(), tmp_path / "fcn_resnet50.npz"), narrow,
         f"fcn-resnet50, {NARROW_CLASSES} classes, width 0.125"),
        (save(imagenet_resnet(resnet50_narrow), tmp_path / "resnet50.pth"),
         narrow + ["--num-classes", str(NARROW_CLASSES)], f"fcn-resnet50, {NARROW_CLASSES} classes, width 0.125")]
    formats = []
    for i, (src, extra, summary) in enumerate(sources):
        out = tmp_path / f"ckpt{i}"
        assert convert_main([str(src), "--out", str(out), *extra]) == 0
        printed = capsys.readouterr().out
        assert printed.startswith(f"wrote {out}: {summary}") and "preprocessing torchvision" in printed, printed
        saved, meta = checkpoint.load_model(str(out))
        assert_same(saved, fcn_jax.load_weights(str(src), width=WIDTH if "--width" in extra else None,
                                                num_classes=meta["model"]["num_classes"]))
        assert set(saved) == {"params", "batch_stats"} and meta["preprocessing"] == "torchvision"
        formats.append(meta["source_format"])
    assert formats == ["vgg11bn-seed", "vgg11bn-seed-classifier", "vgg11bn-torchvision", "fcn-resnet-torchvision",
                       "resnet-torchvision"]


def _names(tmp_path: Path, n: int) -> Path:
    path = tmp_path / f"classes{n}.txt"
    path.write_text("\n".join(f"c{i}" for i in range(n)) + "\n")
    return path
