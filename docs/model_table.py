"""Prints the README's model tables: every reference model and every BatchNorm FCN (``fcn_jax.models.zoo``) with
its parameter count and forward cost at 500x500, counted here.

    python docs/model_table.py

Parameters: the ``params`` of ``jax.eval_shape`` of the model's init (nothing is computed; BatchNorm running
statistics are not parameters, as in PyTorch's ``parameters()``; the FCN-ResNets' training-only aux head is, as in
torchvision's count). Forward GFLOP: XLA's cost analysis of the lowered ``apply`` on one 500x500 input
(inference: no aux head; multiply and add counted as two), without compiling it.
"""
from __future__ import annotations

import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this clone's fcn_jax

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from fcn_jax.models import FCN, get_variant, input_shape  # noqa: E402
from fcn_jax.models.zoo import BATCHNORM_MODELS, REFERENCE_MODELS, ReferenceModel  # noqa: E402

SIZE = 500
COLUMNS = ("model", "variant", "backbone", "dataset", "classes", "input", "published", f"GFLOP at {SIZE}x{SIZE}",
           "parameters", "trained weights", "starts from")


def _variables(variant: str, num_classes: int) -> dict[str, Any]:
    """The full-width model's variables as shapes (``jax.ShapeDtypeStruct``; every collection)."""
    model = FCN(variant, num_classes)
    return jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct(input_shape(variant), jnp.float32))


def parameter_count(variant: str, num_classes: int) -> int:
    """Parameters of the full-width model (``params`` only: BatchNorm statistics are not parameters)."""
    return sum(int(x.size) for x in jax.tree.leaves(_variables(variant, num_classes)["params"]))


def forward_gflop(variant: str, num_classes: int, size: int = SIZE) -> float:
    """XLA's FLOP count (multiply-add = 2) of the full-width model's inference on one size x size input."""
    model = FCN(variant, num_classes)
    x = jax.ShapeDtypeStruct(input_shape(variant, size, size), jnp.float32)
    costs = jax.jit(model.apply).lower(_variables(variant, num_classes), x).cost_analysis()
    costs = costs[0] if isinstance(costs, (list, tuple)) else costs
    return float(costs["flops"]) / 1e9


def _row(m: ReferenceModel, code_dataset: bool) -> str:
    """One markdown row; ``code_dataset``: the dataset is an fcn-jax dataset name (shown as code)."""
    spec = get_variant(m.variant)
    input_ = {"nyud-fcn32s-hha": "HHA"}.get(m.name, spec.inputs)
    weights = f"`{m.weights}`" if m.weights else "none released"
    dataset = f"`{m.dataset}`" if code_dataset else m.dataset
    return (f"| {m.name} | `{m.variant}` | {spec.backbone} | {dataset} | {m.num_classes} | {input_} | "
            f"{m.published or 'none published'} | {forward_gflop(m.variant, m.num_classes):.0f} | "
            f"{parameter_count(m.variant, m.num_classes) / 1e6:.2f} M | {weights} | {m.start} |")


def main() -> None:
    header = "| " + " | ".join(COLUMNS) + " |\n" + "|---" * len(COLUMNS) + "|"
    print(header)
    for m in REFERENCE_MODELS:
        print(_row(m, code_dataset=True))
    print("\nThe BatchNorm FCNs:\n")
    print(header)
    for m in BATCHNORM_MODELS:
        print(_row(m, code_dataset=False))


if __name__ == "__main__":
    main()
