"""A trained FCN as a serialized program that runs without fcn-jax: StableHLO through ``jax.export``, and ONNX
through jax2onnx (the same traced function: one source of truth, no second graph of the network).

::

    fcn_jax.export_model("runs/fcn16s", "fcn16s.stablehlo", image_size=(375, 500))
    # anywhere with jax (no fcn-jax, no flax):
    exported = jax.export.deserialize(open("fcn16s.stablehlo", "rb").read())
    logits = exported.call(x)              # x: (B, 375, 500, 3) float32, preprocessed, NHWC

The artifact is one file holding the network with its weights embedded (the variables are constants of the
program: nothing else to ship), lowered for cpu, cuda and tpu at once; ``exported.call`` runs it on the default
device. The batch dimension is symbolic unless ``batch_size`` is given, and so are height and width (sizes of at
least :data:`MIN_SYMBOLIC_SIZE`) unless ``image_size`` is: one artifact serves every image size, computing at
each what the network computes at it (Caffe's ceil-mode pools and crops included). Networks with
``padding='same'`` (inputs padded to a multiple of 32) need a fixed ``image_size``
(:func:`supports_symbolic_size`). Calling an artifact with a size it was not exported for is an error from
``jax.export`` naming the expected shape (a fixed size), or the constraint ``h >= 32`` (a symbolic one: the
ValueError's cause says "Input shapes do not match the symbolic shape constraint").

Inputs and outputs (NHWC):

- plain: float32 (B, H, W, C_in) preprocessed input (the model's convention, :func:`fcn_jax.preprocess`) ->
  float32 logits (B, H, W, classes) of the main output;
- ``with_preprocessing``: uint8 RGB (B, H, W, 3) -> int32 labels (B, H, W), and with ``probabilities`` also
  float32 softmax probabilities (B, H, W, classes).

Beside ``FILE`` goes ``FILE.json``: the variant, classes, class names, colours, preprocessing convention, input
and output signature and the fcn-jax version. The two are written together (:func:`fcn_jax.io.atomic_group`):
both whole, or neither.
Serialization needs the ``flatbuffers`` package (a dependency of fcn-jax).

ONNX (:func:`export_onnx`, the optional extra ``fcn-jax[onnx]``): the same inputs and outputs (NHWC; names
``input`` / ``images`` and ``logits`` / ``labels``, ``probabilities``), the variables as initializers, the
metadata in the model's ``metadata_props``; fixed height and width, a dynamic batch ``B`` where the network
allows it (the VGG16 FCNs, FCN-AlexNet, FCN-GoogLeNet; the FCN-ResNets and fcn-vgg11bn need ``batch_size``).
Every max pooling is a ``jnp.pad`` + VALID ``nn.max_pool`` (:func:`fcn_jax.models.layers.max_pool`) so that it
becomes an ONNX MaxPool that onnxruntime runs.
"""
from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from fcn_jax import io, onnx_model
from fcn_jax.inference import forward
from fcn_jax.loading import ModelInfo, load
from fcn_jax.config import ModelConfig
from fcn_jax.models.registry import input_shape, main_output, require
from fcn_jax.preprocess import preprocess

__all__ = ["FORMATS", "MIN_SYMBOLIC_SIZE", "PLATFORMS", "ExportResult", "export_model", "export_onnx",
           "export_stablehlo", "supports_symbolic_size"]

FORMATS = ("stablehlo", "onnx")
PLATFORMS = ("cpu", "cuda", "tpu")
MIN_SYMBOLIC_SIZE = 32  # the smallest height / width a symbolic-size artifact accepts (the output stride)


def supports_symbolic_size(config: ModelConfig) -> bool:
    """Whether ``config``'s network exports with symbolic height and width (else a fixed ``image_size`` is
    needed). Every reference-geometry network does: its sizes are nested floor divisions of H and W, which JAX's
    shape polymorphism compares (the ceil-mode pools pad one -inf row and column whatever the parity, see
    :func:`fcn_jax.models.layers.max_pool_ceil`); ``padding='same'`` pads the input to a multiple of 32, whose
    ``mod`` terms it cannot compare."""
    return config.padding == "reference"


@dataclasses.dataclass(frozen=True)
class ExportResult:
    """What :func:`export_model` wrote: ``path`` (the artifact), ``metadata_path`` (its JSON; None for ONNX,
    whose metadata are in the file), ``nbytes`` (the artifact's size), ``input_shape`` / ``output_shapes``
    (symbolic dimensions as names: StableHLO's 'b', 'h', 'w', ONNX's 'B')."""

    path: str
    metadata_path: str | None
    nbytes: int
    input_shape: tuple[int | str, ...]
    output_shapes: tuple[tuple[int | str, ...], ...]


def _check_sizes(image_size: tuple[int, int] | None, batch_size: int | None) -> None:
    """ValueError unless ``image_size`` is None or two positive integers and ``batch_size`` None or positive."""
    if image_size is not None and (len(image_size) != 2 or min(image_size) < 1):
        raise ValueError(f"image size must be two positive integers, got {image_size}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")


def _onnx_exporter(image_size: tuple[int, int] | None) -> Any:
    """jax2onnx's ``to_onnx``, once the request is one ONNX export serves: a fixed image size (ValueError
    without one) and the extra installed (ImportError naming it)."""
    if image_size is None:
        raise ValueError("ONNX export needs a fixed height and width (jax2onnx does not trace these networks' "
                         "symbolic sizes); pass an image size (--image-size HxW)")
    try:
        from jax2onnx import to_onnx
    except ImportError:
        raise ImportError(f"ONNX export needs jax2onnx and onnx: {onnx_model.INSTALL}") from None
    return to_onnx


def _input_spec(config: ModelConfig, image_size: tuple[int, int] | None, batch_size: int | None,
                dtype: Any) -> jax.ShapeDtypeStruct:
    """The exported function's input: (B, H, W, C) with symbolic B (unless ``batch_size``) and H, W (unless
    ``image_size``). ValueError where the network needs a fixed size."""
    channels = input_shape(config.variant)[-1]
    if image_size is None and not supports_symbolic_size(config):
        raise ValueError(f"{config.variant} with padding 'same' pads its input to a multiple of 32, which cannot be "
                         f"exported with symbolic height and width; pass --image-size HxW (a fixed size)")
    _check_sizes(image_size, batch_size)
    dims = ["b" if batch_size is None else str(batch_size)]
    dims += ["h", "w"] if image_size is None else [str(image_size[0]), str(image_size[1])]
    constraints = (f"h >= {MIN_SYMBOLIC_SIZE}", f"w >= {MIN_SYMBOLIC_SIZE}") if image_size is None else ()
    shape = jax.export.symbolic_shape(", ".join(dims + [str(channels)]), constraints=constraints)
    return jax.ShapeDtypeStruct(shape, dtype)


def export_stablehlo(model: Any, variables: Mapping[str, Any], info: ModelInfo, *,
                     image_size: tuple[int, int] | None = None, batch_size: int | None = None,
                     with_preprocessing: bool = False, probabilities: bool = False) -> jax.export.Exported:
    """The :class:`jax.export.Exported` of ``model`` with ``variables`` embedded (see the module docstring for
    inputs and outputs). ValueError for a network without a single RGB output when ``with_preprocessing``."""
    fn = _segmenter(model, variables, info, with_preprocessing, probabilities)
    spec = _input_spec(info.config, image_size, batch_size, jnp.uint8 if with_preprocessing else jnp.float32)
    return jax.export.export(jax.jit(fn), platforms=PLATFORMS)(spec)


def _segmenter(model: Any, variables: Mapping[str, Any], info: ModelInfo, with_preprocessing: bool,
               probabilities: bool) -> Any:
    """The function to export: preprocessed float32 (B, H, W, C_in) -> float32 logits, or with preprocessing
    uint8 RGB (B, H, W, 3) -> int32 labels (and float32 probabilities)."""
    variant = info.config.variant
    output = main_output(variant, info.config.num_classes).name
    if with_preprocessing:
        require(variant, rgb=True, single_output=True, tool="export --with-preprocessing")
    elif probabilities:
        raise ValueError("probabilities: only with with_preprocessing (the plain artifact returns logits)")
    variables = jax.tree.map(jnp.asarray, dict(variables))

    def logits(x: jax.Array) -> jax.Array:
        return forward(model, variables, x)[output].astype(jnp.float32)

    def segment(images: jax.Array) -> Any:
        scores = logits(preprocess(images, info.preprocessing))
        labels = jnp.argmax(scores, axis=-1).astype(jnp.int32)
        return (labels, jax.nn.softmax(scores, axis=-1)) if probabilities else labels

    return segment if with_preprocessing else logits


def export_onnx(model: Any, variables: Mapping[str, Any], info: ModelInfo, *, image_size: tuple[int, int] | None,
                batch_size: int | None = None, with_preprocessing: bool = False,
                probabilities: bool = False) -> Any:
    """The ``onnx.ModelProto`` of ``model`` with ``variables`` as initializers, traced by jax2onnx from the same
    function as the StableHLO export (inputs and outputs as in the module docstring; NHWC). Height and width are
    fixed (``image_size``: ValueError without it); the batch is dynamic ('B') unless ``batch_size``, where the
    network allows it (the bilinear resizes of the FCN-ResNets and fcn-vgg11bn need a fixed batch: ValueError
    saying to pass one). The model's metadata go into ``metadata_props``. ImportError naming the extra to
    install without jax2onnx / onnx."""
    to_onnx = _onnx_exporter(image_size)
    _check_sizes(image_size, batch_size)
    variant = info.config.variant
    fn = _segmenter(model, variables, info, with_preprocessing, probabilities)
    channels = 3 if with_preprocessing else input_shape(variant)[-1]
    shape = ("B" if batch_size is None else batch_size, *image_size, channels)
    spec = jax.ShapeDtypeStruct(jax.export.symbolic_shape(", ".join(map(str, shape))),
                                jnp.uint8 if with_preprocessing else jnp.float32)
    outputs = ["labels", "probabilities"] if probabilities else ["labels"] if with_preprocessing else ["logits"]
    try:
        proto = to_onnx(fn, [spec], model_name=variant, input_names=["images" if with_preprocessing else "input"],
                        output_names=outputs)
    except jax.errors.InconclusiveDimensionOperation:
        if batch_size is None:
            raise ValueError(f"{variant}: its graph needs a fixed batch size for ONNX; pass --batch-size N") from None
        raise
    _set_metadata(proto, _metadata(info, "onnx", with_preprocessing))
    return proto


def _metadata(info: ModelInfo, format: str, with_preprocessing: bool) -> dict[str, Any]:
    """What a deployment needs to know besides the graph: model, classes, colours, input convention, versions."""
    from fcn_jax import __version__
    return {"format": format, "fcn_jax_version": __version__, "jax_version": jax.__version__,
            "source": info.source, "step": info.step, "model": dataclasses.asdict(info.config),
            "variant": info.config.variant, "class_names": list(info.class_names),
            "colours": None if info.colours is None else [list(c) for c in info.colours],
            "preprocessing": info.preprocessing, "with_preprocessing": with_preprocessing}


def _set_metadata(proto: Any, meta: Mapping[str, Any]) -> None:
    """``meta`` as the ONNX model's ``metadata_props`` (strings as they are, anything else as JSON)."""
    del proto.metadata_props[:]
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value if isinstance(value, str) else json.dumps(value)


def _dims(shape: Any) -> tuple[int | str, ...]:
    """A shape with symbolic dimensions as their names."""
    return tuple(d if isinstance(d, int) else str(d) for d in shape)


def export_model(model: str | os.PathLike, out: str | os.PathLike, *, format: str = "stablehlo",
                 image_size: tuple[int, int] | None = None, batch_size: int | None = None,
                 dtype: str | None = None, with_preprocessing: bool = False, probabilities: bool = False,
                 step: str | int = "best") -> ExportResult:
    """Exports ``model`` (anything :func:`fcn_jax.load_model` loads: a training workdir, a checkpoint, a weights
    file) to ``out`` in ``format``: 'stablehlo' with its metadata in ``out + '.json'`` (both files appear
    together or not at all), or 'onnx' (one file, metadata in ``metadata_props``; written atomically).
    ``dtype`` overrides the compute dtype (float32 / bfloat16; the outputs stay float32)."""
    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}; expected one of {', '.join(FORMATS)}")
    if format == "onnx":
        _onnx_exporter(image_size)  # what can be refused before the (slow) loading
    _check_sizes(image_size, batch_size)
    variables, info = load(model, step=step, dtype=dtype)
    out = os.fspath(out)
    if format == "onnx":
        proto = export_onnx(info.config.build(), variables, info, image_size=image_size, batch_size=batch_size,
                            with_preprocessing=with_preprocessing, probabilities=probabilities)
        blob = proto.SerializeToString()
        value_dims = [tuple(d.dim_value if d.HasField("dim_value") else d.dim_param
                            for d in v.type.tensor_type.shape.dim) for v in (*proto.graph.input, *proto.graph.output)]
        io.write_bytes(out, blob)
        return ExportResult(out, None, len(blob), value_dims[0], tuple(value_dims[1:]))
    exported = export_stablehlo(info.config.build(), variables, info, image_size=image_size, batch_size=batch_size,
                                with_preprocessing=with_preprocessing, probabilities=probabilities)
    blob = exported.serialize()
    inputs = _dims(exported.in_avals[0].shape)
    outputs = tuple(_dims(a.shape) for a in exported.out_avals)
    meta = {**_metadata(info, format, with_preprocessing), "platforms": list(exported.platforms),
            "input": {"shape": list(inputs), "dtype": str(exported.in_avals[0].dtype),
                      "layout": "NHWC, uint8 RGB" if with_preprocessing else
                                f"NHWC, float32, preprocessed ({info.preprocessing})"},
            "outputs": [{"shape": list(s), "dtype": str(a.dtype)} for s, a in zip(outputs, exported.out_avals)],
            "weights": "embedded", "nbytes": len(blob)}
    text = json.dumps(meta, indent=2) + "\n"
    with io.atomic_group([out + ".json", out]) as (meta_tmp, blob_tmp):  # both files or neither
        io.write_new(meta_tmp, text.encode("utf8"))
        io.write_new(blob_tmp, blob)
    return ExportResult(out, out + ".json", len(blob), inputs, outputs)
