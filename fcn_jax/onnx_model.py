"""An exported ``.onnx`` file (``python -m fcn_jax.export ... --format onnx``) as a model run by onnxruntime.

::

    model, info = fcn_jax.onnx_model.load("fcn8s.onnx")   # info: a ModelInfo, from the file's metadata_props
    segment = fcn_jax.Inference.load("fcn8s.onnx")        # labels, probabilities, tiling, flips as for JAX

:class:`OnnxModel` has the ``apply`` of a JAX model (``{output: logits}`` of a preprocessed float32 NHWC
batch): the graph runs on onnxruntime's CPU provider through a host callback (:func:`jax.pure_callback`),
so :class:`fcn_jax.Inference`'s preprocessing, horizontal flips, window averaging and argmax run around it
unchanged. The graph's height and width are fixed at export: an image of that size runs whole, a larger one
as overlapping windows of that size, a smaller one is refused (a ValueError naming both sizes), and so are
test-time scales other than 1. A graph exported with a fixed batch runs any batch in chunks of it (the last
one padded). Only the logits graph runs here (not ``--with-preprocessing``'s labels graph).

onnxruntime comes with the optional extra ``fcn-jax[onnx]``; it is imported only when a file is opened.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fcn_jax.loading import ONNX_SUFFIX, LoadError, ModelInfo, model_info
from fcn_jax.models.registry import main_output

__all__ = ["INSTALL", "OnnxModel", "is_onnx", "load"]

INSTALL = "pip install 'fcn-jax[onnx]' (jax2onnx, onnx, onnxruntime)"
# metadata_props values that fcn_jax.deploy writes as JSON (the others are plain strings)
JSON_KEYS = ("step", "model", "class_names", "colours", "with_preprocessing")


def is_onnx(path: str | os.PathLike) -> bool:
    """Whether ``path`` names an ONNX file (by its suffix)."""
    return os.fspath(path).lower().endswith(ONNX_SUFFIX)


class OnnxModel:
    """An onnxruntime session of an fcn-jax ONNX graph with a JAX model's ``apply``.

    ``variant`` / ``num_classes``: the network exported; ``input_size``: the graph's fixed (H, W);
    ``batch``: its fixed batch size, or None where the batch is dynamic.
    """

    def __init__(self, session: Any, info: ModelInfo):
        graph_input = session.get_inputs()[0]
        batch, height, width, _ = graph_input.shape
        self.session, self.input_name = session, graph_input.name
        self.variant, self.num_classes = info.config.variant, info.config.num_classes
        self.output = main_output(self.variant, self.num_classes).name
        self.input_size = (int(height), int(width))
        self.batch = batch if isinstance(batch, int) else None

    def apply(self, variables: Any, x: jax.Array) -> dict[str, jax.Array]:
        """``{output name: logits (B, H, W, classes) float32}`` of preprocessed float32 ``x`` (B, H, W, C_in) at
        the graph's (H, W) (a ValueError naming both sizes otherwise). ``variables`` is ignored (the weights are
        in the graph)."""
        del variables
        if tuple(x.shape[1:3]) != self.input_size:
            height, width = self.input_size
            raise ValueError(f"this ONNX model takes {width}x{height} (WxH) inputs only, not "
                             f"{x.shape[2]}x{x.shape[1]}")
        out = jax.ShapeDtypeStruct((*x.shape[:3], self.num_classes), jnp.float32)
        logits = jax.pure_callback(self._run, out, x.astype(jnp.float32), vmap_method="sequential")
        return {self.output: logits}

    def _run(self, x: np.ndarray) -> np.ndarray:
        """The graph on a host batch, in chunks of the graph's fixed batch (the last padded with zeros)."""
        x = np.ascontiguousarray(x, np.float32)
        if self.batch is None or len(x) == self.batch:
            return self.session.run(None, {self.input_name: x})[0].astype(np.float32, copy=False)
        parts = []
        for start in range(0, len(x), self.batch):
            chunk = x[start:start + self.batch]
            padded = np.concatenate([chunk, np.zeros((self.batch - len(chunk), *x.shape[1:]), np.float32)])
            parts.append(self.session.run(None, {self.input_name: padded})[0][:len(chunk)])
        return np.concatenate(parts).astype(np.float32, copy=False)


def _metadata(props: Mapping[str, str], path: str) -> dict[str, Any]:
    """The metadata fcn_jax.deploy wrote into ``metadata_props`` (JSON values decoded); LoadError if absent."""
    if "model" not in props or "variant" not in props:
        raise LoadError(f"{path}: no fcn-jax metadata in this ONNX file (expected one written by "
                        f"python -m fcn_jax.export --format onnx)")
    try:
        return {key: json.loads(value) if key in JSON_KEYS else value for key, value in props.items()}
    except json.JSONDecodeError as e:
        raise LoadError(f"{path}: bad fcn-jax metadata in this ONNX file: {e}") from None


def load(path: str | os.PathLike) -> tuple[OnnxModel, ModelInfo]:
    """Opens the ONNX file at ``path`` on onnxruntime's CPU provider (graph optimisations on): the model and
    its :class:`~fcn_jax.loading.ModelInfo` (from the file's metadata). LoadError (one line naming the path)
    for a missing or unreadable file, one without fcn-jax metadata or one exported with preprocessing;
    ImportError naming the extra without onnxruntime."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise LoadError(f"{path}: no such file")
    try:
        import onnxruntime as ort
    except ImportError:
        raise ImportError(f"running an ONNX model needs onnxruntime: {INSTALL}") from None
    try:
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001  (onnxruntime raises its own exception types)
        lines = str(e).strip().splitlines()
        raise LoadError(f"{path}: not an ONNX model onnxruntime can run: {lines[0] if lines else e}") from None
    meta = _metadata(session.get_modelmeta().custom_metadata_map, path)
    if meta.get("with_preprocessing"):
        raise LoadError(f"{path}: exported with --with-preprocessing (uint8 images in, labels out); running it "
                        f"here needs the logits graph: export again without --with-preprocessing")
    info = model_info(path, meta)
    return OnnxModel(session, info), info
