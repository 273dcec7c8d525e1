"""The README's model table (``docs/model_table.py``) against published figures: torchvision's parameter counts
of fcn_resnet50/101 (with the aux head; BatchNorm statistics are buffers, not parameters) and its GFLOPS at 520
(multiply-adds of the eval forward, which runs the aux head too), from XLA's count of the lowered forward."""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "docs"))

import model_table  # noqa: E402

# torchvision's weight metadata: num_params, _ops (GFLOPS = multiply-adds, at 520x520)
TORCHVISION = {"fcn-resnet50": (35_322_218, 152.717), "fcn-resnet101": (54_314_346, 232.738)}


@pytest.mark.parametrize("variant", sorted(TORCHVISION))
def test_fcn_resnet_counts_are_torchvisions(variant):
    params, gmacs = TORCHVISION[variant]
    assert model_table.parameter_count(variant, 21) == params
    # torchvision's eval forward also runs the aux FCNHead on layer3 (65 x 65 at 520): 3x3 1024 -> 256, 1x1 -> 21
    aux = 65 * 65 * (9 * 1024 * 256 + 256 * 21) / 1e9
    ours = model_table.forward_gflop(variant, 21, 520) / 2 + aux
    # XLA counts only the taps that read the image (not the zero padding): 1.8% below a count of every tap
    assert ours == pytest.approx(gmacs, rel=0.02)
    assert ours < gmacs

