"""The one loader: any supported path -> (model config, variables, recorded facts).

Paths it takes, told apart by what is on disk:

- a training workdir (``runs/fcn16s``: ``checkpoints/`` and ``best/``), at ``step`` 'best', 'latest' or N;
- an fcn-jax model checkpoint (``python -m fcn_jax.convert`` output, or a workdir's ``best/``);
- a foreign weights file: pytorch-fcn FCN state dicts, torchvision / Keras VGG16 (see
  :mod:`fcn_jax.weights`, whose ``load()`` hook reads them).

:func:`load` is what ``eval.py``, ``predict.py``, ``python -m fcn_jax.convert`` and
:func:`fcn_jax.load_model` use; :func:`init_variables` is training's ``--init`` (copy what fits into a new
model, as the reference's staged training and fine-tuning need: big_vision's ``merge_params`` with regular
expressions for what not to load). Variables are every collection (``params`` and e.g. ``batch_stats``)
throughout. Errors are ValueErrors naming the path.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from flax import traverse_util

from fcn_jax import checkpoint, weights
from fcn_jax.classes import default_class_names
from fcn_jax.config import ModelConfig, check_dtype
from fcn_jax.preprocess import check_convention
from fcn_jax.variables import PARAMS, as_variables

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "checkpoint"
ONNX_SUFFIX = ".onnx"  # exported models (fcn_jax.onnx_model), which have no variables to load


class LoadError(ValueError):
    """A path that cannot be loaded as requested; the message is one line naming the path."""


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What a loaded model records besides its variables.

    ``config``: the network exactly as trained (variant, classes, width, padding, dtype);
    ``class_names``: one per output class; ``preprocessing``: the input convention ('caffe' |
    'torchvision', see :func:`fcn_jax.preprocess`); ``step``: the training step (None for foreign
    weights); ``source``: the absolute path loaded; ``meta``: everything recorded (format, training
    config, validation metrics, provenance).
    """

    config: ModelConfig
    class_names: tuple[str, ...]
    preprocessing: str
    step: int | None
    source: str
    meta: Mapping[str, Any]
    colours: tuple[tuple[int, int, int], ...] | None = None

    @property
    def training_config(self) -> Mapping[str, Any]:
        """The training run's config as recorded (``{}`` for converted or foreign weights)."""
        config = self.meta.get("config")
        return config if isinstance(config, Mapping) else {}


def _read_checkpoint(path: str, step: str | int) -> tuple[dict[str, Any], dict[str, Any]]:
    try:
        variables, meta = checkpoint.load_model(path, step)
    except (ValueError, KeyError, OSError) as e:  # CheckpointError names the path already
        message = str(e) if str(e).startswith(path) else f"{path}: {e}"
        raise LoadError(message) from None
    return variables, dict(meta, format=CHECKPOINT_FORMAT)


def _check_requested(path: str, meta: Mapping[str, Any], requested: Mapping[str, Any]) -> None:
    recorded = {**meta.get("model", {}), "preprocessing": meta.get("preprocessing")}
    clashes = [f"{k} {v!r} requested, checkpoint has {recorded.get(k)!r}"
               for k, v in requested.items() if v is not None and v != recorded.get(k)]
    if clashes:
        raise LoadError(f"{path}: checkpoint does not fit: {'; '.join(clashes)}")


def model_info(path: str, meta: Mapping[str, Any], dtype: str | None = None) -> ModelInfo:
    """The :class:`ModelInfo` of the metadata ``meta`` recorded with ``path`` (``dtype`` overrides the compute
    dtype); LoadError naming the path for bad metadata."""
    try:
        config = checkpoint.model_config_from_meta(meta)
        if dtype is not None:
            config = dataclasses.replace(config, dtype=check_dtype(dtype))
        names = tuple(meta.get("class_names") or default_class_names(config.num_classes))
        if len(names) != config.num_classes:
            raise ValueError(f"{len(names)} class names for {config.num_classes} classes")
        convention = check_convention(meta.get("preprocessing"))
        colours = meta.get("colours")
        if colours is not None:
            colours = tuple(tuple(int(v) for v in c) for c in colours)
            if len(colours) != config.num_classes or any(len(c) != 3 or not all(0 <= v <= 255 for v in c)
                                                         for c in colours):
                raise ValueError(f"colours: expected {config.num_classes} RGB triples in 0..255")
    except (ValueError, KeyError, TypeError) as e:
        raise LoadError(f"{path}: bad metadata: {e}") from None
    step = meta.get("step")
    return ModelInfo(config=config, class_names=names, preprocessing=convention,
                     step=None if step is None else int(step), source=os.path.abspath(path),
                     meta=dict(meta, class_names=list(names)), colours=colours)


def load(path: str | os.PathLike, *, step: str | int = "best", variant: str | None = None,
         num_classes: int | None = None, width: float | None = None, convention: str | None = None,
         dtype: str | None = None) -> tuple[dict[str, Any], ModelInfo]:
    """Loads ``path`` (see the module docstring) -> (variables, every collection, :class:`ModelInfo`).

    ``variant``, ``num_classes``, ``width`` and ``convention`` state what the caller expects: a source
    that records them (checkpoints; pytorch-fcn files record variant and classes) must agree, and a
    source that does not (VGG16 files: no head; foreign files: width 1 unless told) takes them.
    ``dtype`` overrides the compute dtype only. Parameters are float32 host or single-device arrays.
    """
    path = os.fspath(path)
    if path.lower().endswith(ONNX_SUFFIX):
        raise LoadError(f"{path}: an exported ONNX model runs in predict.py and fcn_jax.Inference only; here give "
                        f"the checkpoint or weights it was exported from")
    if os.path.isdir(path):
        variables, meta = _read_checkpoint(path, step)
        _check_requested(path, meta, {"variant": variant, "num_classes": num_classes, "width": width,
                                      "preprocessing": convention})
    elif os.path.isfile(path) or os.path.splitext(path)[1].lower() in weights.SUFFIXES:
        variables, meta = weights.load(path, variant, num_classes, width=1.0 if width is None else width,
                                       convention=convention)
    else:
        raise LoadError(f"{path}: no such file or directory")
    return variables, model_info(path, meta, dtype)


def _collection_path(path: tuple[str, ...]) -> str:
    """'backbone/conv1_1/kernel' for a parameter, 'batch_stats/backbone/bn1/mean' for another collection."""
    return "/".join(path[1:] if path[0] == PARAMS else path)


def file_arrays(variables: Mapping[str, Any], meta: Mapping[str, Any]) -> dict[str, Any]:
    """The variables :func:`fcn_jax.weights.load` read from the file: those it filled with the model's
    initialisation (``meta['initialised']``: a backbone file's heads, an aux head the file lacks) left out,
    so that :func:`transfer` keeps the target's own and reports them re-initialised."""
    drop = set(meta.get("initialised", ()))
    flat = traverse_util.flatten_dict(as_variables(variables))
    return traverse_util.unflatten_dict({p: v for p, v in flat.items() if _collection_path(p) not in drop})


def transfer(target: Mapping[str, Any], source: Mapping[str, Any], *, keep: Sequence[str] = (),
             dont_load: Sequence[str] = ()) -> tuple[dict[str, Any], list[str]]:
    """Copies every array of ``source`` whose path and shape exist in ``target``, except the top-level layers
    named in ``keep`` and the arrays whose path inside its collection ('backbone/conv1_1/kernel') fully
    matches a regular expression of ``dont_load`` (big_vision's ``merge_params``).

    ``target`` / ``source``: variables (every collection) or bare parameter trees. Returns the new tree
    (dtypes of ``target``, bare if ``target`` was) and the paths kept at ``target``'s values ('a/b/kernel'
    for parameters, 'batch_stats/a/b/mean' for other collections): new skip layers, score layers for another
    class count, ``keep``, ``dont_load``, statistics the source lacks. Raises :class:`LoadError` unless the
    backbone's parameters match, since nothing else makes a useful start.
    """
    bare = PARAMS not in target
    patterns = [re.compile(p) for p in dont_load]
    tflat = traverse_util.flatten_dict(as_variables(target))
    sflat = traverse_util.flatten_dict(as_variables(source))
    skipped = {p for p in tflat if any(r.fullmatch("/".join(p[1:])) for r in patterns)}
    fits = {p: p[1] not in keep and p not in skipped and p in sflat and tuple(sflat[p].shape) == tuple(v.shape)
            for p, v in tflat.items()}
    # the backbone's parameters must all fit; its other collections (BatchNorm statistics) a source without
    # them (ImageNet weights of parameters only) leaves at their initialisation
    bad = [f"{_collection_path(p)} {'missing' if p not in sflat else f'has shape {tuple(sflat[p].shape)}'}"
           f" (target {tuple(v.shape)})" for p, v in tflat.items()
           if p[1] == "backbone" and not fits[p] and p not in skipped and (p[0] == PARAMS or p in sflat)]
    if bad:
        raise LoadError(f"source params do not match the target's backbone: {'; '.join(bad)}")
    out = {p: (sflat[p] if sflat[p].dtype == v.dtype else sflat[p].astype(v.dtype)) if fits[p] else v
           for p, v in tflat.items()}
    kept = [_collection_path(p) for p in tflat if not fits[p]]
    unused = [_collection_path(p) for p in sflat if p not in tflat]
    log.info("init: copied %d arrays; kept at init: %s; unused from source: %s",
             len(tflat) - len(kept), ", ".join(kept) or "none", ", ".join(unused) or "none")
    new = traverse_util.unflatten_dict(out)
    return (new[PARAMS] if bare else new), kept


def describe_transfer(target: ModelConfig, variables: Mapping[str, Any], kept: Sequence[str],
                      keep: Sequence[str] = ()) -> str:
    """One line per outcome of :func:`transfer` into a ``target`` model with variables (or parameters)
    ``variables``: the layers copied and the layers left at their initialisation, with what that is (score
    layers: zeros, as the reference initialises new score layers; upsamplers: bilinear). A layer counts as
    copied when all its arrays, in every collection, were. Layers: a backbone's top-level modules
    ('backbone/conv1_1', a ResNet block 'backbone/layer3_0'), a head's modules ('score_fr', 'classifier/score');
    a head whose layers all share an outcome is named once ('classifier'), else layer by layer."""
    from fcn_jax.models import upsampler_names
    layers: dict[str, bool] = {}  # layer path ('backbone/conv1_1', 'score_fr', 'classifier/score') -> copied entirely
    for path in traverse_util.flatten_dict(as_variables(variables)):
        inner = path[1:]
        layer = "/".join(inner[:2] if inner[0].startswith("backbone") else inner[:-1])
        layers[layer] = layers.get(layer, True) and _collection_path(path) not in kept
    copied = [name for name, ok in layers.items() if ok]
    backbones: dict[str, int] = {}  # 'backbone' (or a late-fusion stream's 'backbone_color') -> layers copied
    for name in copied:
        if name.startswith("backbone"):
            backbones[name.split("/")[0]] = backbones.get(name.split("/")[0], 0) + 1
    heads = {name: ok for name, ok in layers.items() if not name.startswith("backbone")}
    parts = [f"{name} ({n} layers)" for name, n in backbones.items()] + _grouped(heads, True)
    ups = set(upsampler_names(target.variant))

    def how(name: str) -> str:
        if name in keep:
            return "bilinear, fixed"
        if name in ups:
            return "bilinear"
        return "zeros" if name.startswith("score") else "initialised"

    fresh = [f"{name} ({how(name)})" for name, ok in layers.items() if name.startswith("backbone") and not ok]
    fresh += [f"{name} ({how(name)})" for name in _grouped(heads, False)]
    return (f"copied {len(copied)} of {len(layers)} layers: {', '.join(parts) or 'none'}\n"
            f"re-initialised for {target.variant} with {target.num_classes} classes: {', '.join(fresh) or 'none'}")


def _grouped(layers: Mapping[str, bool], copied: bool) -> list[str]:
    """The names of the head layers whose outcome is ``copied``, a head whose layers all share it by its own
    name ('classifier'), the others layer by layer ('classifier/score')."""
    heads: dict[str, list[str]] = {}
    for name in layers:
        heads.setdefault(name.split("/")[0], []).append(name)
    names = []
    for head, members in heads.items():
        same = [m for m in members if layers[m] == copied]
        names += [head] if len(same) == len(members) else same
    return names


def stream_sources(target: ModelConfig, init: str) -> dict[str, str]:
    """``{stream: path}`` of a late-fusion ``--init`` ``'color=PATH,hha=PATH'`` (one single-stream FCN per
    stream of ``target``'s variant, as the reference's nyud-fcn32s-color-hha/solve.py transplants its colour
    and HHA nets), or ``{}`` when ``init`` is one path. Raises ValueError naming the streams expected."""
    from fcn_jax.models import get_variant
    suffixes = [s.suffix for s in get_variant(target.variant).streams if s.suffix]
    pairs = [part.partition("=") for part in init.split(",")]
    if not suffixes or not all(sep and key in suffixes for key, sep, _ in pairs):
        if suffixes and "=" in init and not os.path.exists(init):
            raise ValueError(f"--init {init!r}: expected {','.join(f'{s}=PATH' for s in suffixes)} (one FCN per "
                             f"stream of {target.variant}) or one weights file or directory")
        return {}
    found = {key: value for key, _, value in pairs}
    if sorted(found) != sorted(suffixes) or len(pairs) != len(suffixes):
        raise ValueError(f"--init {init!r}: {target.variant} needs exactly one source per stream: "
                         f"{','.join(f'{s}=PATH' for s in suffixes)}")
    return found


def _init_streams(target: ModelConfig, variables: Mapping[str, Any], streams: Mapping[str, str], *,
                  step: str | int, keep: Sequence[str], dont_load: Sequence[str],
                  report: Callable[[str], None] | None) -> tuple[dict[str, Any], ModelInfo]:
    """Late fusion's ``--init``: each stream's backbone and ``score_fr`` from its own single-stream FCN
    (``backbone`` -> ``backbone_<stream>``, ``score_fr`` -> ``score_fr<stream>``, in every collection); the
    shared upsampler keeps ``variables``' value (bilinear). Returns (variables, the first source's info)."""
    source: dict[str, dict[str, Any]] = {}
    infos = []
    for suffix, path in streams.items():
        if os.path.isfile(path):  # the stream's own net is the single-input FCN-32s
            loaded, meta = weights.load(path, width=target.width, default_variant="fcn32s",
                                        default_classes=target.num_classes)
            loaded = file_arrays(loaded, meta)
            info = model_info(path, meta, None)
        else:
            loaded, info = load(path, step=step, width=target.width)
        infos.append(info)
        for collection, tree in as_variables(loaded).items():
            renamed = source.setdefault(collection, {})
            if "backbone" in tree:
                renamed[f"backbone_{suffix}"] = tree["backbone"]
            if "score_fr" in tree:
                renamed[f"score_fr{suffix}"] = tree["score_fr"]
    new, kept = transfer(variables, source, keep=keep, dont_load=dont_load)
    if report is not None:
        report(f"init from {', '.join(f'{k}={v}' for k, v in streams.items())}:\n"
               + describe_transfer(target, variables, kept, keep))
    return new, infos[0]


def init_variables(target: ModelConfig, variables: Mapping[str, Any], path: str | os.PathLike, *,
                   step: str | int = "latest", keep: Sequence[str] = (), dont_load: Sequence[str] = (),
                   report: Callable[[str], None] | None = None) -> tuple[dict[str, Any], ModelInfo]:
    """Training's ``--init``: ``variables`` (the new model's initial variables, every collection, or a bare
    parameter tree) with every array of ``path`` that fits copied in (see :func:`transfer`).

    ``path`` is anything :func:`load` takes: ImageNet VGG16 weights (the backbone; the heads keep
    their initialisation), an earlier stage (fcn32s -> fcn16s -> fcn8s: backbone, ``score_fr``,
    ``upscore2``), or an FCN with another class count (fine-tuning: score layers start afresh).
    A training workdir is read at ``step`` ('latest' by default). Layers named in ``keep`` stay at
    ``variables``' values: the reference's solve.py re-fills every fixed upsampler with the bilinear kernel
    after copying; so do arrays matching a ``dont_load`` regular expression. ``report`` (e.g. ``print``)
    receives :func:`describe_transfer`'s lines, prefixed by the source. Returns (variables in the form
    given, source info).
    """
    path = os.fspath(path)
    streams = stream_sources(target, path)
    if streams:
        return _init_streams(target, variables, streams, step=step, keep=keep, dont_load=dont_load, report=report)
    if os.path.isfile(path):  # a VGG16 file builds the target's head; an FCN file records its own
        source, meta = weights.load(path, width=target.width, default_variant=target.variant,
                                    default_classes=target.num_classes)
        source = file_arrays(source, meta)
        info = model_info(path, meta, None)
    else:
        source, info = load(path, step=step, width=target.width)
    new, kept = transfer(variables, source, keep=keep, dont_load=dont_load)
    if report is not None:
        what = (f"{info.config.variant}, {info.config.num_classes} classes"
                + ("" if info.step is None else f", step {info.step}")
                if info.meta.get("format") in (CHECKPOINT_FORMAT, weights.FCN_FORMAT) else info.meta.get("format"))
        report(f"init from {path} ({what}):\n"
               + describe_transfer(target, variables, kept, keep))
    return new, info
