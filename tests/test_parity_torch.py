"""Parity with an independent PyTorch FCN: pytorch-fcn-layout weights imported through the public API
give the same logits, for every variant and every container (.pth, .npz, .safetensors)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # benchmarks/ is a dev-only package at the repository root
    sys.path.insert(0, str(ROOT))

import jax  # noqa: E402

import fcn_jax  # noqa: E402
from benchmarks import torch_fcn  # noqa: E402

WIDTH = 1 / 16
NUM_CLASSES = 5
HEIGHT, WIDTH_PX = 37, 53  # odd, non-square: exercises ceil-mode pooling and the crops


def random_reference(variant: str, seed: int = 0) -> torch_fcn.FCN:
    """The torch reference with random normal weights in every layer (score and upscore layers too).

    fcn8s-atonce's skip layers are scaled up by the inverse of its fixed input scalings so that the
    skips contribute visibly to the logits.
    """
    torch.manual_seed(seed)
    model = torch_fcn.FCN(variant, NUM_CLASSES, width=WIDTH).eval()
    boost = {"score_pool4.weight": 100.0, "score_pool3.weight": 1e4} if variant == "fcn8s-atonce" else {}
    with torch.no_grad():
        for key, p in model.state_dict().items():
            fan_in = p[0].numel() if p.ndim > 1 else 16
            p.copy_(torch.randn_like(p) * (2.0 / fan_in) ** 0.5 * boost.get(key, 1.0))
    return model


@pytest.mark.parametrize("variant", torch_fcn.VARIANTS)  # the VOC nets; the others: test_reference_family
def test_logits_match_torch_reference(variant: str, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    model = random_reference(variant)
    state = model.state_dict()
    x = np.random.RandomState(1).uniform(-120, 120, (2, HEIGHT, WIDTH_PX, 3)).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
    assert expected.shape == (2, HEIGHT, WIDTH_PX, NUM_CLASSES)

    pth = tmp_path / f"{variant}_from_caffe.pth"
    torch.save(state, pth)
    npz = tmp_path / "weights.npz"
    np.savez(npz, **{k: v.numpy() for k, v in state.items()})
    st = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(st))

    jax_model = fcn_jax.create_model(variant, num_classes=NUM_CLASSES, width=WIDTH)
    apply = jax.jit(jax_model.apply)
    # .pth: variant and classes inferred from the file; .npz / .safetensors: named explicitly.
    loads = [(pth, {}), (npz, {"variant": variant, "num_classes": NUM_CLASSES}), (st, {"variant": variant})]
    for path, kwargs in loads:
        variables, meta = fcn_jax.load_weights(str(path), width=WIDTH, return_meta=True, **kwargs)
        assert meta["model"]["variant"] == variant and meta["model"]["num_classes"] == NUM_CLASSES
        assert meta["preprocessing"] == "caffe" and meta["format"] == "fcn"
        got = np.asarray(apply(variables, x))
        scale = float(np.abs(expected).max())
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * scale, err_msg=f"{variant} via {path.name}")


def test_reference_heads_start_at_zero_and_bilinear() -> None:
    """The torch reference's own init is the model's: zero scores, bilinear upsamplers (as HWIO)."""
    from fcn_jax.models import bilinear_init

    model = torch_fcn.FCN("fcn8s", NUM_CLASSES, width=WIDTH)
    for name in ("upscore2", "upscore_pool4", "upscore8"):
        weight = getattr(model, name).weight.detach().numpy()
        kernel = bilinear_init(None, weight.transpose(2, 3, 1, 0).shape)
        np.testing.assert_array_equal(weight.transpose(2, 3, 1, 0), np.asarray(kernel))
    for name in ("score_fr", "score_pool4", "score_pool3"):
        assert not getattr(model, name).weight.detach().any()


def test_torch_reference_full_size_keys_and_shapes() -> None:
    """Full-size state dict keys and shapes are pytorch-fcn's (shapes only; nothing is run)."""
    with torch.device("meta"):
        state = torch_fcn.FCN("fcn8s", 21).state_dict()
    assert tuple(state["conv1_1.weight"].shape) == (64, 3, 3, 3)
    assert tuple(state["fc6.weight"].shape) == (4096, 512, 7, 7)
    assert tuple(state["fc7.weight"].shape) == (4096, 4096, 1, 1)
    assert tuple(state["score_pool3.weight"].shape) == (21, 256, 1, 1)
    assert tuple(state["upscore8.weight"].shape) == (21, 21, 16, 16)
    assert "upscore_pool4.bias" not in state
    assert sum(v.numel() for v in state.values()) == pytest.approx(134.5e6, rel=2e-3)
