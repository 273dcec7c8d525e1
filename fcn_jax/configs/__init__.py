"""Training configs as files: ``get_config(variant) -> TrainConfig`` in a readable, copyable module each.

- :mod:`fcn_jax.configs.shapes`: the offline demo (the default of ``train.py``).
- :mod:`fcn_jax.configs.reference`: the Caffe reference solver exactly.
- :mod:`fcn_jax.configs.modern`: today's segmentation recipe on VOC2012 train_aug.
- :mod:`fcn_jax.configs.reference_fixed`: FCN-32s-fixed, the reference solver training the score layers only.
- :mod:`fcn_jax.configs.reference_alexnet`: FCN-AlexNet's reference solver (iter_size 20, normalised loss, momentum 0.9).
- :mod:`fcn_jax.configs.reference_context`: the PASCAL-Context FCNs' reference solvers (60 classes, 400k steps).
- :mod:`fcn_jax.configs.reference_siftflow`: the SIFT Flow FCNs' reference solvers (siftflow-fcn32s/16s/8s, two heads).
- :mod:`fcn_jax.configs.reference_nyud`: the NYUDv2 FCN-32s' reference solvers (colour, HHA, colour-D, colour-HHA).
- :mod:`fcn_jax.configs.torchvision`: torchvision's FCN-ResNet50/101 recipe (references/segmentation).
- :mod:`fcn_jax.configs.shapes_bn`: the BatchNorm FCNs' offline demo (torchvision's recipe at the shapes size).

Copy one (``python -c "import fcn_jax.configs as c; print(c.path('shapes'))"`` prints where it is),
edit it, and pass the copy to ``train.py --config my_config.py``; ``--config fields.json`` instead
layers a JSON object of fields over ``--preset``.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import traceback
from typing import Any

from fcn_jax.config import TrainConfig, override

PRESETS = ("shapes", "reference", "modern", "reference_fixed", "reference_alexnet", "reference_context",
           "reference_siftflow", "reference_nyud", "torchvision", "shapes_bn")


def path(name: str) -> str:
    """The file of the preset ``name``."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{check_preset(name)}.py")


def check_preset(name: str) -> str:
    """Returns ``name`` if it is a preset, else raises ValueError naming the choices."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; expected one of {PRESETS}")
    return name


def _from_file(file: str, variant: str) -> TrainConfig:
    """``get_config(variant)`` of a Python config file (a copy of one of the presets, say)."""
    if not os.path.isfile(file):
        raise ValueError(f"{file}: no such config file")
    spec = importlib.util.spec_from_file_location(f"fcn_jax_user_config_{abs(hash(file))}", file)
    if spec is None or spec.loader is None or not file.endswith(".py"):
        raise ValueError(f"{file}: expected a .py file defining get_config(variant)")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001  (the user's file: a syntax error, a failing import, ...)
        raise ValueError(_file_error(file, e)) from None
    if not callable(getattr(module, "get_config", None)):
        raise ValueError(f"{file}: defines no get_config(variant)")
    try:
        config = module.get_config(variant)
    except Exception as e:  # noqa: BLE001
        raise ValueError(_file_error(file, e, during=f"get_config({variant!r})")) from None
    if not isinstance(config, TrainConfig):
        raise ValueError(f"{file}: get_config must return a fcn_jax.config.TrainConfig, got {type(config).__name__}")
    return config


def _file_error(file: str, error: Exception, during: str | None = None) -> str:
    """One line for an exception raised by the config file ``file``: where (the file's line, from a syntax
    error or the innermost traceback frame in the file) and what (type and first line of the message)."""
    target, line = os.path.realpath(file), None
    if isinstance(error, SyntaxError) and error.filename and os.path.realpath(error.filename) == target:
        line, text = error.lineno, f"SyntaxError: {error.msg}"
    else:
        frames = traceback.extract_tb(error.__traceback__)
        line = next((f.lineno for f in reversed(frames) if os.path.realpath(f.filename) == target), None)
        message = (str(error).strip().splitlines() or [""])[0]
        text = f"{type(error).__name__}: {message}" if message else type(error).__name__
    where = f"{file}:{line}" if line else file
    return f"{where}: {text}" + (f" (in {during})" if during else "")


def get_config(name: str = "shapes", variant: str = "fcn32s", **overrides: Any) -> TrainConfig:
    """The config ``name`` (a preset name or a ``.py`` file) for ``variant``, with field
    ``overrides`` (``model={...}`` or ``'model.width'`` style keys for the network's fields)."""
    if name in PRESETS:
        config = importlib.import_module(f"fcn_jax.configs.{name}").get_config(variant)
    else:
        config = _from_file(name, variant)
    return override(config, overrides) if overrides else config
