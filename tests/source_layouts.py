"""The keys and shapes foreign weight files hold, written out from REFERENCE.md's layer table.

Independent of fcn_jax.weights: the tests write files with these keys and shapes and check that the
library reads them. Width-scaled channels follow the project's rule ``max(1, round(c * width))``.
"""
from __future__ import annotations

BLOCKS = ((1, 2, 64), (2, 2, 128), (3, 3, 256), (4, 3, 512), (5, 3, 512))
TORCH_FEATURE_INDEX = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
UPSAMPLERS = {"fcn32s": (("upscore", 64),), "fcn16s": (("upscore2", 4), ("upscore16", 32)),
              "fcn8s": (("upscore2", 4), ("upscore_pool4", 4), ("upscore8", 16))}
UPSAMPLERS["fcn8s-atonce"] = UPSAMPLERS["fcn8s"]


def _c(channels: int, width: float) -> int:
    return max(1, int(round(channels * width)))


def _convs(width: float) -> list[tuple[str, int, int]]:
    """(name, in, out) of the 13 3x3 convs."""
    out, c_in = [], 3
    for block, n, channels in BLOCKS:
        for i in range(1, n + 1):
            out.append((f"conv{block}_{i}", c_in, _c(channels, width)))
            c_in = _c(channels, width)
    return out


def source_layout(fmt: str, variant: str = "fcn32s", num_classes: int = 21,
                  width: float = 1.0) -> dict[str, tuple[int, ...]]:
    """{key: shape} of a ``fmt`` file ('fcn' | 'vgg16-torch' | 'vgg16-keras') for the model, in the
    source's own layout, without the ImageNet classifier of VGG16 files."""
    convs, fc, n = _convs(width), _c(4096, width), num_classes
    c3, c4, c5 = _c(256, width), _c(512, width), _c(512, width)
    if fmt == "fcn":
        keys = {}
        for name, c_in, c_out in convs:
            keys.update({f"{name}.weight": (c_out, c_in, 3, 3), f"{name}.bias": (c_out,)})
        keys.update({"fc6.weight": (fc, c5, 7, 7), "fc6.bias": (fc,), "fc7.weight": (fc, fc, 1, 1),
                     "fc7.bias": (fc,), "score_fr.weight": (n, fc, 1, 1), "score_fr.bias": (n,)})
        if variant != "fcn32s":
            keys.update({"score_pool4.weight": (n, c4, 1, 1), "score_pool4.bias": (n,)})
        if variant in ("fcn8s", "fcn8s-atonce"):
            keys.update({"score_pool3.weight": (n, c3, 1, 1), "score_pool3.bias": (n,)})
        keys.update({f"{name}.weight": (n, n, k, k) for name, k in UPSAMPLERS[variant]})
        return keys
    if fmt == "vgg16-torch":
        keys = {}
        for (_, c_in, c_out), index in zip(convs, TORCH_FEATURE_INDEX):
            keys.update({f"features.{index}.weight": (c_out, c_in, 3, 3), f"features.{index}.bias": (c_out,)})
        return {**keys, "classifier.0.weight": (fc, c5 * 49), "classifier.0.bias": (fc,),
                "classifier.3.weight": (fc, fc), "classifier.3.bias": (fc,)}
    if fmt == "vgg16-keras":
        keys = {}
        for name, c_in, c_out in convs:
            layer = "block{}_conv{}".format(*name[len("conv"):].split("_"))
            keys.update({f"{layer}/kernel": (3, 3, c_in, c_out), f"{layer}/bias": (c_out,)})
        return {**keys, "fc1/kernel": (c5 * 49, fc), "fc1/bias": (fc,), "fc2/kernel": (fc, fc), "fc2/bias": (fc,)}
    raise ValueError(f"unknown format {fmt!r}")
