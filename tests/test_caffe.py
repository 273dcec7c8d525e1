"""fcn_jax.caffe and the .caffemodel path of fcn_jax.weights: original Caffe files, decoded without protobuf.

The files are written here in the real wire format by this module's own minimal protobuf encoder (varints,
tags, length-delimited and packed fields; independent of the decoder under test), with the field numbers of
BVLC/caffe's caffe.proto and the reference nets' layer names, types and extra fields, at reduced width.
"""
from __future__ import annotations

import struct
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import traverse_util

import fcn_jax
from fcn_jax import caffe, checkpoint, weights
from fcn_jax.caffe import CaffeModelError
from fcn_jax.convert import main as convert_main
from fcn_jax.weights import WeightsError
from source_layouts import BLOCKS, source_layout

WIDTH = 1 / 16  # channels 4, 8, 16, 32, 32; fc 256
NUM_CLASSES = 5
IMAGENET = 10  # stand-in size of VGG16's 1000-way fc8


# ------------------------------------------------------------------------------- protobuf encoder

def varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # negative int32 / int64: ten bytes of two's complement
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def tag(field: int, wire: int) -> bytes:
    return varint(field << 3 | wire)


def vint(field: int, n: int) -> bytes:
    return tag(field, 0) + varint(n)


def ld(field: int, payload: bytes) -> bytes:
    return tag(field, 2) + varint(len(payload)) + payload


def text(field: int, s: str) -> bytes:
    return ld(field, s.encode())


def f32(field: int, x: float) -> bytes:
    return tag(field, 5) + struct.pack("<f", x)


def f64(field: int, x: float) -> bytes:
    return tag(field, 1) + struct.pack("<d", x)


def packed_varints(field: int, values) -> bytes:
    return ld(field, b"".join(varint(int(v)) for v in values))


# caffe.proto: BlobProto num 1, channels 2, height 3, width 4, data 5, shape 7, double_data 8; BlobShape dim 1.
def blob(a: np.ndarray, legacy: tuple[int, ...] | None = None, double: bool = False) -> bytes:
    if legacy is not None:
        head = b"".join(vint(field, d) for field, d in zip((1, 2, 3, 4), legacy))
    else:
        head = ld(7, packed_varints(1, a.shape))
    data = ld(8, np.asarray(a, "<f8").tobytes()) if double else ld(5, np.asarray(a, "<f4").tobytes())
    return head + data


# LayerParameter: name 1, type 2, bottom 3, top 4, loss_weight 5, param 6 (ParamSpec: lr_mult 3, decay_mult 4),
# blobs 7, include 8 (NetStateRule: phase 1), phase 10, convolution_param 106 (num_output 1, bias_term 2, pad 3,
# kernel_size 4, stride 6), and a few more *_param submessages.
def layer(name: str, kind: str, bottom: str, blobs: tuple[np.ndarray, ...] = (), extra: bytes = b"") -> bytes:
    body = text(1, name) + text(2, kind) + text(3, bottom) + text(4, name) + extra
    if blobs:
        body += ld(6, f32(3, 1.0) + f32(4, 1.0)) + ld(6, f32(3, 2.0) + f32(4, 0.0))
    return ld(100, body + b"".join(ld(7, blob(b)) for b in blobs) + vint(10, 1))


def conv_param(num_output: int, kernel: int, pad: int = 0, stride: int = 1, bias: bool = True) -> bytes:
    return ld(106, vint(1, num_output) + (b"" if bias else vint(2, 0)) + vint(3, pad) + vint(4, kernel)
              + vint(6, stride))


def convs(width: float = WIDTH) -> list[tuple[str, str]]:
    """(name, name of its bottom) of VGG16's 13 convs, pools between blocks."""
    out, bottom = [], "data"
    for block, n, _ in BLOCKS:
        for i in range(1, n + 1):
            out.append((f"conv{block}_{i}", bottom))
            bottom = f"conv{block}_{i}"
        bottom = f"pool{block}"
    return out


def fcn_arrays(variant: str, num_classes: int = NUM_CLASSES, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.RandomState(seed)
    return {k: rng.standard_normal(s).astype(np.float32)
            for k, s in source_layout("fcn", variant, num_classes, WIDTH).items()}


def fcn8s_caffemodel(arrays: dict[str, np.ndarray], atonce: tuple[float, float] | None = None) -> bytes:
    """The reference's voc-fcn8s net (LayerParameter, string types) with these weights, as Caffe saves it:
    every layer with its parameters, data and loss layers included."""
    def blobs(name: str) -> tuple[np.ndarray, ...]:
        return tuple(arrays[k] for k in (f"{name}.weight", f"{name}.bias") if k in arrays)

    n = arrays["score_fr.bias"].size
    out = text(1, "voc-fcn8s") + vint(5, 0) + ld(6, vint(1, 1))  # name, force_backward, state {phase: TEST}
    out += layer("data", "Python", "", extra=ld(130, text(1, "voc_layers") + text(2, "VOCSegDataLayer")
                                                  + text(3, "{'split': 'seg11valid', 'seed': 1337}")))
    for name, bottom in convs():
        pad = 100 if name == "conv1_1" else 1
        out += layer(name, "Convolution", bottom, blobs(name), conv_param(arrays[f"{name}.bias"].size, 3, pad))
        out += layer(f"relu{name[4:]}", "ReLU", name)
        if name.endswith(("1_2", "2_2", "3_3", "4_3", "5_3")):
            out += layer(f"pool{name[4]}", "Pooling", name, extra=ld(121, vint(1, 0) + vint(2, 2) + vint(3, 2)))
    fc = arrays["fc6.bias"].size
    out += layer("fc6", "Convolution", "pool5", blobs("fc6"), conv_param(fc, 7))
    out += layer("drop6", "Dropout", "fc6", extra=ld(108, f32(1, 0.5)))
    out += layer("fc7", "Convolution", "fc6", blobs("fc7"), conv_param(fc, 1))
    out += layer("score_fr", "Convolution", "fc7", blobs("score_fr"), conv_param(n, 1))
    out += layer("upscore2", "Deconvolution", "score_fr", blobs("upscore2"), conv_param(n, 4, 0, 2, bias=False))
    for pool, factor in zip(("pool4", "pool3"), atonce or ()):
        c = arrays[f"score_{pool}.weight"].shape[1]
        out += layer(f"scale_{pool}", "Scale", pool, (np.full(c, factor, np.float32),),
                     ld(142, ld(3, text(1, "constant") + f32(2, factor))))
    out += layer("score_pool4", "Convolution", "pool4", blobs("score_pool4"), conv_param(n, 1))
    out += layer("score_pool4c", "Crop", "score_pool4", extra=ld(144, vint(1, 2) + packed_varints(2, [5])))
    out += layer("fuse_pool4", "Eltwise", "upscore2", extra=ld(110, vint(1, 1)))
    out += layer("upscore_pool4", "Deconvolution", "fuse_pool4", blobs("upscore_pool4"),
                 conv_param(n, 4, 0, 2, bias=False))
    out += layer("score_pool3", "Convolution", "pool3", blobs("score_pool3"), conv_param(n, 1))
    out += layer("upscore8", "Deconvolution", "fuse_pool3", blobs("upscore8"), conv_param(n, 16, 0, 8, bias=False))
    out += layer("score", "Crop", "upscore8", extra=ld(144, vint(1, 2) + vint(2, 31)))
    out += layer("loss", "SoftmaxWithLoss", "score", extra=f32(5, 1.0) + ld(8, vint(1, 0))
                 + ld(101, vint(1, 255) + vint(2, 0)))
    return out


# V1LayerParameter: bottom 2, top 3, name 4, type 5 (enum: CONVOLUTION 4, DATA 5, DROPOUT 6, INNER_PRODUCT 14,
# POOLING 17, RELU 18, SOFTMAX 20), blobs 6, blobs_lr 7, weight_decay 8, convolution_param 10, data_param 11,
# dropout_param 12, inner_product_param 17, pooling_param 19, include 32.
def v1_layer(name: str, kind: int, bottom: str, blobs: tuple[bytes, ...] = (), extra: bytes = b"") -> bytes:
    body = text(2, bottom) + text(3, name) + text(4, name) + vint(5, kind) + extra
    if blobs:
        body += f32(7, 1.0) + f32(7, 2.0) + f32(8, 1.0) + f32(8, 0.0)  # unpacked repeated floats
    return ld(2, body + b"".join(ld(6, b) for b in blobs))


def vgg16_arrays(seed: int = 1) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{Caffe layer: (weight, bias)} of the ImageNet VGG16 at WIDTH, fc6/fc7/fc8 as InnerProduct (out, in)."""
    rng = np.random.RandomState(seed)
    layout = source_layout("fcn", "fcn32s", NUM_CLASSES, WIDTH)
    out = {name: (rng.standard_normal(layout[f"{name}.weight"]).astype(np.float32),
                  rng.standard_normal(layout[f"{name}.bias"]).astype(np.float32)) for name, _ in convs()}
    fc, c5 = layout["fc6.bias"][0], layout["conv5_3.bias"][0]
    for name, shape in (("fc6", (fc, c5 * 49)), ("fc7", (fc, fc)), ("fc8", (IMAGENET, fc))):
        out[name] = (rng.standard_normal(shape).astype(np.float32), rng.standard_normal(shape[:1]).astype(np.float32))
    return out


def vgg16_v1_caffemodel(arrays: dict[str, tuple[np.ndarray, np.ndarray]]) -> bytes:
    """VGG_ILSVRC_16_layers.caffemodel's layout: V1 layers, enum types, deprecated 4-d blob shapes (conv
    weights O x I x 3 x 3, biases 1 x 1 x 1 x O, InnerProduct weights 1 x 1 x out x in)."""
    def legacy_blobs(name: str) -> tuple[bytes, bytes]:
        w, b = arrays[name]
        return blob(w, (1,) * (4 - w.ndim) + w.shape), blob(b, (1, 1, 1, b.size))

    out = text(1, "VGG_ILSVRC_16_layers") + text(3, "data") + vint(4, 10) + vint(4, 3) + vint(4, 224) + vint(4, 224)
    out += v1_layer("data", 5, "", extra=ld(11, text(1, "ilsvrc12_train_lmdb")) + ld(32, vint(1, 0)))
    for name, bottom in convs():
        out += v1_layer(name, 4, bottom, legacy_blobs(name), ld(10, vint(1, arrays[name][1].size) + vint(3, 1)
                                                                  + vint(4, 3)))
        out += v1_layer(f"relu{name[4:]}", 18, name)
        if name.endswith(("1_2", "2_2", "3_3", "4_3", "5_3")):
            out += v1_layer(f"pool{name[4]}", 17, name, extra=ld(19, vint(1, 0) + vint(2, 2) + vint(3, 2)))
    for name, bottom in (("fc6", "pool5"), ("fc7", "fc6"), ("fc8", "fc7")):
        out += v1_layer(name, 14, bottom, legacy_blobs(name), ld(17, vint(1, arrays[name][1].size)))
        if name != "fc8":
            out += v1_layer(f"drop{name[2]}", 6, name, extra=ld(12, f32(1, 0.5)))
    return out + v1_layer("prob", 20, "fc8")


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# ------------------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def fcn8s(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    arrays = fcn_arrays("fcn8s")
    return write(tmp_path_factory.mktemp("fcn") / "fcn8s-heavy-pascal.caffemodel", fcn8s_caffemodel(arrays)), arrays


@pytest.fixture(scope="module")
def vgg16(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, tuple[np.ndarray, np.ndarray]]]:
    arrays = vgg16_arrays()
    path = tmp_path_factory.mktemp("vgg") / "VGG_ILSVRC_16_layers.caffemodel"
    return write(path, vgg16_v1_caffemodel(arrays)), arrays


# ------------------------------------------------------------------------------------------- decoding

def test_v2_fcn8s_decodes_to_the_encoded_arrays(fcn8s: tuple[Path, dict]) -> None:
    path, arrays = fcn8s
    net = caffe.read_net(path)
    assert (net.name, net.version) == ("voc-fcn8s", 2)
    kinds = {layer.name: layer.type for layer in net.layers}
    assert kinds["data"] == "Python" and kinds["upscore8"] == "Deconvolution" and kinds["loss"] == "SoftmaxWithLoss"
    blobs = caffe.read_caffemodel(path)
    assert list(blobs)[12:] == ["conv5_3", "fc6", "fc7", "score_fr", "upscore2", "score_pool4", "upscore_pool4",
                                "score_pool3", "upscore8"]  # the layers with weights, in file order
    assert set(blobs) == {k.rsplit(".", 1)[0] for k in arrays}
    for key, a in arrays.items():
        name, which = key.rsplit(".", 1)
        got = blobs[name][0 if which == "weight" else 1]
        assert got.dtype == np.float32 and got.flags.writeable  # a copy, not a view of the mapped file
        np.testing.assert_array_equal(got, a, err_msg=key)
    assert len(blobs["upscore2"]) == 1 and len(blobs["score_fr"]) == 2  # no Deconvolution bias


def test_v1_vgg16_legacy_shapes(vgg16: tuple[Path, dict]) -> None:
    path, arrays = vgg16
    net = caffe.read_net(path)
    assert (net.name, net.version) == ("VGG_ILSVRC_16_layers", 1)
    assert {layer.name: layer.type for layer in net.layers}["fc6"] == "InnerProduct"
    assert [layer.type for layer in net.layers[:3]] == ["Data", "Convolution", "ReLU"]
    blobs = caffe.read_caffemodel(path)
    assert list(blobs) == list(arrays)
    for name, (w, b) in arrays.items():
        np.testing.assert_array_equal(blobs[name][0], w, err_msg=name)  # fc: (out, in), as Caffe's LegacyShape
        np.testing.assert_array_equal(blobs[name][1], b, err_msg=name)  # bias: (out,)
    assert blobs["fc6"][0].shape == (256, 32 * 49) and blobs["conv1_1"][0].shape == (4, 3, 3, 3)


def test_unknown_fields_unpacked_and_split_data_double_data_and_v0(tmp_path: Path) -> None:
    """Every wire type as an unknown field at every level (large field numbers, 10-byte varints), blob data
    as unpacked floats and as several packed chunks, double_data (which wins over data, as in Caffe), an
    unpacked BlobShape, and a V1 layer wrapping a V0 layer (name 1, type 2, blobs 50)."""
    rng = np.random.RandomState(2)
    a, b, c, d = (rng.standard_normal(s).astype(np.float32) for s in ((2, 3, 3, 3), (7,), (5, 4), (3, 2)))
    unknown = vint(9999, 2**63 + 5) + f64(12345, 1.5) + f32(536870911, 2.5) + ld(77, b"\x00\xff junk") + vint(31, -1)
    split_chunks = ld(7, packed_varints(1, a.shape)) + unknown + ld(5, a.ravel()[:20].tobytes()) + ld(
        5, a.ravel()[20:].tobytes())
    unpacked = ld(7, vint(1, 7) + unknown) + b"".join(f32(5, float(x)) for x in b)
    double = ld(7, packed_varints(1, c.shape)) + ld(5, np.zeros(20, "<f4").tobytes()) + ld(8, c.astype("<f8").tobytes())
    body = (unknown + text(1, "conv") + ld(6, f32(3, 1.0)) + text(2, "Convolution") + ld(8, vint(1, 0))
            + ld(7, split_chunks) + ld(7, unpacked) + ld(106, vint(1, 2) + unknown))
    net = unknown + text(1, "toy") + ld(100, body) + ld(100, text(1, "ip") + text(2, "InnerProduct") + ld(7, double))
    path = write(tmp_path / "toy.caffemodel", net + unknown)
    blobs = caffe.read_caffemodel(path)
    for got, want in zip(blobs["conv"] + blobs["ip"], (a, b, c)):
        np.testing.assert_array_equal(got, want)
    assert caffe.read_net(path).name == "toy"

    v0 = ld(1, text(1, "conv1") + text(2, "conv") + vint(3, 3) + ld(50, blob(d, legacy=(1, 1, 3, 2))) + unknown)
    net = caffe.decode_net(ld(2, text(2, "data") + text(3, "conv1") + v0))
    assert net.version == 0 and net.layers[0].name == "conv1" and net.layers[0].type == "Convolution"
    np.testing.assert_array_equal(net.layers[0].blobs[0], d.reshape(1, 1, 3, 2))  # a conv weight stays 4-d


# --------------------------------------------------------------------------------------------- errors

def _one_line(e: pytest.ExceptionInfo, path: Path) -> str:
    msg = str(e.value)
    assert str(path) in msg and "\n" not in msg, msg
    return msg


def test_truncated_files(fcn8s: tuple[Path, dict], tmp_path: Path) -> None:
    data = fcn8s[0].read_bytes()
    for cut in (1, 3, len(data) // 2, len(data) - 5, len(data) - 1):
        path = write(tmp_path / f"cut{cut}.caffemodel", data[:cut])
        with pytest.raises(CaffeModelError) as e:
            caffe.read_caffemodel(path)
        msg = _one_line(e, path)
        assert "truncated .caffemodel" in msg and f"the file ends at byte {cut}" in msg and " at byte " in msg
    with pytest.raises(WeightsError) as e:  # the loader passes the same line on
        fcn_jax.load_weights(str(path))
    assert str(e.value) == msg


def test_not_a_caffemodel(tmp_path: Path) -> None:
    prototxt = b'name: "FCN8s"\nlayer {\n  name: "data"\n  type: "Input"\n}\n'
    cases = {"text.caffemodel": (prototxt, "invalid wire type 6 (field 13) at byte 0 (the file is text: a .prototxt"),
             "zip.caffemodel": (b"PK\x03\x04\x14\x00\x00\x00\x08\x00" + bytes(40), "field number 0"),
             "empty.caffemodel": (b"", "empty file at byte 0"),
             "nolayers.caffemodel": (text(1, "net") + vint(5, 1), "no layer (field 100) or layers (field 2)"),
             "wiretype.caffemodel": (vint(1, 3) + ld(100, b""), "NetParameter.name (field 1) has varint wire type"),
             "random.caffemodel": (np.random.RandomState(0).bytes(4096), "not a valid .caffemodel")}
    for name, (data, expected) in cases.items():
        path = write(tmp_path / name, data)
        with pytest.raises(ValueError) as e:
            caffe.read_caffemodel(path)
        msg = _one_line(e, path)
        assert expected in msg and " at byte " in msg, msg
    np.savez(tmp_path / "w.npz", a=np.zeros(3))
    path = write(tmp_path / "npz.caffemodel", (tmp_path / "w.npz").read_bytes())
    with pytest.raises(WeightsError, match=r"npz\.caffemodel: not a valid \.caffemodel .* at byte \d+"):
        fcn_jax.load_weights(str(path))


def test_blob_size_mismatch_and_other_nets(tmp_path: Path) -> None:
    bad = ld(100, text(1, "conv1_1") + text(2, "Convolution") + ld(7, vint(1, 2) + vint(2, 3) + vint(3, 3)
                                                                   + vint(4, 3) + ld(5, bytes(4 * 50))))
    path = write(tmp_path / "bad.caffemodel", bad)
    with pytest.raises(CaffeModelError, match=r"blob 0 of layer 'conv1_1': 50 values for shape \(2, 3, 3, 3\) at byte"):
        caffe.read_caffemodel(path)
    resnet = text(1, "ResNet-50") + b"".join(
        ld(100, text(1, name) + text(2, "Convolution") + ld(7, blob(np.zeros((2, 3, 1, 1), np.float32))))
        for name in ("res2a", "res2b"))
    path = write(tmp_path / "resnet50.caffemodel", resnet)
    with pytest.raises(WeightsError, match=r"Caffe model 'ResNet-50' is not an FCN \(no score or upscore layer\) nor "
                                           r"an ImageNet VGG16 \(conv1_1\), AlexNet \(conv1\) or GoogLeNet "
                                           r"\(conv1/7x7_s2\); layers with weights: res2a \(Convolution\), res2b"):
        fcn_jax.load_weights(str(path), "fcn32s")
    caffenet = text(1, "CaffeNet") + b"".join(  # an AlexNet, but not a whole one: its converter says what is wrong
        ld(100, text(1, name) + text(2, "Convolution") + ld(7, blob(np.zeros((2, 3, 1, 1), np.float32))))
        for name in ("conv1", "conv2"))
    path = write(tmp_path / "bvlc_reference_caffenet.caffemodel", caffenet)
    with pytest.raises(WeightsError, match=r"bvlc_reference_caffenet.caffemodel: Caffe model 'CaffeNet': .*conv1"):
        fcn_jax.load_weights(str(path), "fcn32s")


# -------------------------------------------------------------------------------------------- loading

def test_fcn8s_caffemodel_loads_like_pytorch_fcn(fcn8s: tuple[Path, dict], tmp_path: Path) -> None:
    """Every parameter is the Caffe blob transposed to HWIO (Deconvolution (C_in, C_out, k, k) included), and
    the whole tree equals the one loaded from pytorch-fcn's file of the same tensors."""
    path, arrays = fcn8s
    variables, meta = fcn_jax.load_weights(str(path), width=WIDTH, return_meta=True)
    params = variables["params"]
    assert (meta["model"]["variant"], meta["model"]["num_classes"], meta["format"]) == ("fcn8s", NUM_CLASSES, "fcn")
    assert meta["preprocessing"] == "caffe" and "Caffe model" in meta["preprocessing_from"]
    flat = traverse_util.flatten_dict(params, sep="/")
    assert len(flat) == len(arrays)
    for key, a in arrays.items():
        name, which = key.rsplit(".", 1)
        prefix = f"backbone/{name}" if name.startswith(("conv", "fc")) else name
        want = a.transpose(2, 3, 1, 0) if which == "weight" else a
        np.testing.assert_array_equal(flat[f"{prefix}/{'kernel' if which == 'weight' else 'bias'}"], want, err_msg=key)
    np.savez(tmp_path / "fcn8s_from_caffe.npz", **arrays)
    jax.tree.map(np.testing.assert_array_equal, fcn_jax.load_weights(str(tmp_path / "fcn8s_from_caffe.npz"),
                                                                      width=WIDTH), variables)


def test_fcn8s_atonce_is_told_by_its_scale_layers(tmp_path: Path) -> None:
    arrays = fcn_arrays("fcn8s", seed=3)
    path = write(tmp_path / "fcn8s-heavy-pascal.caffemodel", fcn8s_caffemodel(arrays, atonce=(0.01, 0.0001)))
    tensors, file_meta = weights.read_tensors(str(path))
    assert set(tensors) == set(arrays) and file_meta["variant"] == "fcn8s-atonce"  # Scale blobs checked, dropped
    variables, meta = fcn_jax.load_weights(str(path), width=WIDTH, return_meta=True)
    assert meta["model"]["variant"] == "fcn8s-atonce"
    np.testing.assert_array_equal(variables["params"]["score_pool3"]["kernel"],
                                  arrays["score_pool3.weight"].transpose(2, 3, 1, 0))
    with pytest.raises(WeightsError, match="variant fcn8s requested, but the file is fcn8s-atonce .it has the Scale"):
        fcn_jax.load_weights(str(path), "fcn8s", width=WIDTH)
    path = write(tmp_path / "fcn8s-atonce-wrong.caffemodel", fcn8s_caffemodel(arrays, atonce=(0.01, 0.5)))
    with pytest.raises(WeightsError, match=r"scale_pool3 \(Scale\) must be the constant 0.0001 of fcn8s-atonce"):
        fcn_jax.load_weights(str(path), width=WIDTH)
    path = write(tmp_path / "fcn8s-atonce-pascal.caffemodel", fcn8s_caffemodel(arrays))  # no Scale layers
    assert weights.read_tensors(str(path))[1]["variant"] == "fcn8s"  # the file, not its name, decides


def test_vgg16_caffemodel_equals_torchvision_pth(vgg16: tuple[Path, dict], tmp_path: Path) -> None:
    """The V1 ImageNet VGG16 and a torchvision-layout .pth of the same arrays load to bit-identical params;
    fc6 (InnerProduct on pool5 flattened C,H,W) becomes the 7x7 conv; fc8 is ignored; heads at init."""
    torch = pytest.importorskip("torch")
    path, arrays = vgg16
    state = {}
    for (name, _), index in zip(convs(), weights.TORCH_FEATURE_INDEX):
        state[f"features.{index}.weight"], state[f"features.{index}.bias"] = arrays[name]
    for name, index in (("fc6", 0), ("fc7", 3), ("fc8", 6)):
        state[f"classifier.{index}.weight"], state[f"classifier.{index}.bias"] = arrays[name]
    torch.save({k: torch.from_numpy(v) for k, v in state.items()}, tmp_path / "vgg16_from_caffe.pth")
    a, meta = fcn_jax.load_weights(str(path), "fcn16s", width=WIDTH, return_meta=True)
    b = fcn_jax.load_weights(str(tmp_path / "vgg16_from_caffe.pth"), "fcn16s", width=WIDTH)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    jax.tree.map(np.testing.assert_array_equal, a, b)
    assert (meta["format"], meta["preprocessing"], meta["model"]["num_classes"]) == ("vgg16-torch", "caffe", 21)
    backbone = a["params"]["backbone"]
    fc6_w, fc6_b = arrays["fc6"]
    np.testing.assert_array_equal(backbone["fc6"]["bias"], fc6_b)
    # InnerProduct weight (out, C*7*7) on pool5 flattened C,H,W: the 7x7 conv's (7, 7, C, out) kernel
    np.testing.assert_array_equal(backbone["fc6"]["kernel"], fc6_w.reshape(-1, 32, 7, 7).transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(backbone["fc7"]["kernel"][0, 0], arrays["fc7"][0].T)
    np.testing.assert_array_equal(backbone["conv3_2"]["kernel"], arrays["conv3_2"][0].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(backbone["conv5_3"]["bias"], arrays["conv5_3"][1])
    assert not np.any(a["params"]["score_fr"]["kernel"]) and not np.any(a["params"]["score_pool4"]["bias"])


def test_convert_cli_takes_a_caffemodel(fcn8s: tuple[Path, dict], tmp_path: Path,
                                        capsys: pytest.CaptureFixture) -> None:
    path, _ = fcn8s
    (tmp_path / "names.txt").write_text("\n".join(f"c{i}" for i in range(NUM_CLASSES)))
    out = tmp_path / "ckpt"
    assert convert_main([str(path), "--out", str(out), "--width", str(WIDTH), "--class-names",
                         str(tmp_path / "names.txt")]) == 0
    assert capsys.readouterr().out.startswith(f"wrote {out}: fcn8s, {NUM_CLASSES} classes")
    variables, meta = checkpoint.load_model(str(out))
    jax.tree.map(np.testing.assert_array_equal, variables, fcn_jax.load_weights(str(path), width=WIDTH))
    assert (meta["preprocessing"], meta["source_format"]) == ("caffe", "fcn") and len(meta["source_sha256"]) == 64
    assert ".caffemodel" in weights.SUFFIXES
    with pytest.raises(ValueError, match="nope.caffemodel: no such file"):
        fcn_jax.load_weights(str(tmp_path / "nope.caffemodel"))


def test_shape_errors_name_the_caffe_layer_and_blob(tmp_path: Path) -> None:
    """A .caffemodel's arrays are named as Caffe names them (layer, blob index), not by the pytorch-fcn keys
    they are read under (issue 24, item 13)."""
    arrays = fcn_arrays("fcn8s")
    arrays["upscore8.weight"] = arrays["upscore8.weight"][:, :, :8, :8]
    arrays["score_pool3.bias"] = arrays["score_pool3.bias"][:3]
    path = write(tmp_path / "fcn8s-heavy-pascal.caffemodel", fcn8s_caffemodel(arrays))
    with pytest.raises(WeightsError) as e:
        fcn_jax.load_weights(str(path), width=WIDTH)
    text = str(e.value)
    assert "layer upscore8 blob 0 has shape (5, 5, 8, 8), expected (5, 5, 16, 16)" in text, text
    assert "layer score_pool3 blob 1 has shape (3), expected (5)" in text, text
    assert "upscore8.weight" not in text and "score_pool3.bias" not in text
