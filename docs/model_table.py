"""Prints the README's model table: every reference model (``fcn_jax.models.zoo``) with its parameter count
and forward cost at 500x500, counted here.

    python docs/model_table.py

Parameters: ``jax.eval_shape`` of the model's init (nothing is computed). Forward GFLOP: XLA's cost analysis of
the lowered ``apply`` on one 500x500 input (multiply and add counted as two), without compiling it.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this clone's fcn_jax

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from fcn_jax.models import FCN, get_variant, input_shape  # noqa: E402
from fcn_jax.models.zoo import REFERENCE_MODELS  # noqa: E402

SIZE = 500


def count(variant: str, num_classes: int) -> tuple[int, float]:
    """(parameters, forward GFLOP at SIZE x SIZE) of the full-width model."""
    model = FCN(variant, num_classes)
    params = jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct(input_shape(variant), jnp.float32))
    n = sum(int(x.size) for x in jax.tree.leaves(params))
    x = jax.ShapeDtypeStruct(input_shape(variant, SIZE, SIZE), jnp.float32)
    costs = jax.jit(model.apply).lower(params, x).cost_analysis()
    costs = costs[0] if isinstance(costs, (list, tuple)) else costs
    return n, float(costs["flops"]) / 1e9


def main() -> None:
    print(f"| model | variant | backbone | dataset | classes | input | published mean IU | GFLOP at {SIZE}x{SIZE} "
          f"| parameters | trained weights | starts from |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for m in REFERENCE_MODELS:
        spec = get_variant(m.variant)
        n, gflop = count(m.variant, m.num_classes)
        input_ = {"nyud-fcn32s-hha": "HHA"}.get(m.name, spec.inputs)
        weights = f"`{m.weights}`" if m.weights else "none released"
        print(f"| {m.name} | `{m.variant}` | {spec.backbone} | `{m.dataset}` | {m.num_classes} | {input_} | "
              f"{m.published or 'none published'} | {gflop:.0f} | {n / 1e6:.2f} M | {weights} | {m.start} |")


if __name__ == "__main__":
    main()
