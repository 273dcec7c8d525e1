"""Input pipeline: grain over a random-access source, sharded per process, resumable, prefetched.

Batches are NHWC: ``image`` (B, H, W, C) float32, the network input composed from the example's
fields (``inputs``, :func:`fcn_jax.preprocess.compose`: C = 3 for the colour ``image`` or ``hha``,
4 for ``image+depth``, 6 for ``image+hha``) and preprocessed per the weights' convention, ``label``
(B, H, W) int32 with 255 = void, and one more int32 label map per extra output head (``labels``:
batch key -> example field, e.g. SIFT Flow's ``label_geo`` from ``geometric``). B is the *global*
batch; each process builds its B / process_count rows and the rows become one global ``jax.Array``
sharded along the mesh's data axis (``jax.make_array_from_process_local_data``).

Order (training). ``sampling='epoch'``: the example order is the concatenation of epochs, epoch
``e`` being a permutation of the split seeded by (``seed``, ``e``) (grain's ``shuffle`` + ``repeat``).
``sampling='replacement'`` (Caffe's ``voc_layers.py``): position ``p`` is the ``p``-th
``random.Random(seed).randint(0, n - 1)`` draw (position 0 = the first draw after seeding).
Global batch ``i`` is positions ``[i*B, (i+1)*B)`` of that order: no example is dropped and a
batch may straddle two epochs. Process ``k`` of ``P`` holds rows ``[k*B/P, (k+1)*B/P)`` of every
global batch and reads only those examples, so the shards are disjoint, cover the split, and the
global batches do not depend on the number of processes. The augmentation of a position is
seeded by (``seed``, position), so it too is independent of sharding and of resumption. The
position is the number of batches consumed: ``TrainIterator.get_state()`` is a small JSON dict,
and ``set_state`` restarts from there by random access (no image is re-read; with replacement the
cheap RNG draws before that position are replayed once).

Modes. ``reference``: whole images, no augmentation. With ``bucket_multiple=None`` (the reference)
each image is used at its own size, unpadded (needs ``batch_size=1``); with an int, images are
padded to a bucket shape (H and W rounded up to ``bucket_multiple``; image padded with 0 = the
mean colour after preprocessing, label with 255) and the batch carries each image's own (h, w) as
``sizes`` (B, 2) int32, which the train step masks the network to (``FCN(x, sizes=...)``: the own-size
computation for the reference-geometry networks). ``modern``: random scale in ``scale_range``
(bilinear image, nearest-neighbour label, same sampling grid; with ``resize_base`` the shorter side is
drawn in pixels instead, as torchvision's ``RandomResize``), random ``crop_size`` square crop
(padded as above where the scaled image is smaller), random horizontal flip, all applied to image
and label together, and to every other field the same way: HHA bilinear as the image, labels
nearest-neighbour, depth nearest-neighbour (raw uint16 millimetres: interpolating across an
occlusion edge would invent depths that belong to neither surface, and the log is taken after
resampling, on the device, as for unscaled depth). Padding: every input field 0 (0 after
preprocessing: the mean), every label 255.

Evaluation: full resolution, no resizing. By default (``bucket_multiple=None``) at exact size, as
the reference: batches only group images of one (H, W), planned from the sizes of all examples
(groups in order of first appearance, each chunked into global batches, the last one completed
with all-void filler rows of the same shape), so the step compiles once per distinct size. With
``bucket_multiple=N`` consecutive images are padded to the bucket of the largest (fewer programs;
``EvalBatch.sizes`` lets the step mask a reference-geometry network to each image's size, which gives
the exact-size predictions, see :mod:`fcn_jax.models.extent`). Each example appears
exactly once over all processes.

Host work (decoding, resizing, cropping, padding; all uint8, depth uint16) runs in grain's thread
pool, where zlib, PIL and NumPy release the GIL. Batches cross to the device as uint8 and are preprocessed
there (one small jitted elementwise program per batch shape), which quarters the transfer and
takes the float conversion off the host. A background thread does the transfer ``prefetch``
batches ahead. When
several processes must agree on a padded shape (bucketed reference mode and bucketed evaluation
with ``jax.process_count() > 1``) that agreement is a collective, so it runs in the caller's thread.
"""
from __future__ import annotations

import array
import dataclasses
import functools
import os
import random
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import grain
import jax
import jax.numpy as jnp
import numpy as np
from grain.experimental import ThreadPrefetchIterDataset
from PIL import Image

from fcn_jax.models.outputs import LABEL, SEGMENTATION, SIZES
from fcn_jax.preprocess import DEPTH, IMAGE, VOID, check_convention, check_inputs, compose, input_fields
from fcn_jax.programs import bounded_jit

MODES = ("reference", "modern")
SAMPLINGS = ("epoch", "replacement")
Example = dict[str, Any]
HostBatch = dict[str, Any]
Fields = dict[str, np.ndarray]  # one example's arrays: input fields by name, labels by batch key
LabelMap = tuple[tuple[str, str], ...]  # (batch key, example field) per output head, 'label' first
DEFAULT_LABELS: LabelMap = ((LABEL, SEGMENTATION),)


@dataclasses.dataclass(frozen=True)
class TrainInput:
    """How training batches are made (the train config's data section)."""

    mode: str = "modern"  # 'reference' | 'modern' (see the module docstring)
    batch_size: int = 16  # global, split evenly over processes
    crop_size: int = 512  # modern: square crop side
    scale_range: tuple[float, float] = (0.5, 2.0)  # modern: uniform random scale
    resize_base: int | None = None  # modern: scales relative to a shorter side of this many pixels (torchvision)
    flip: bool = True  # modern: random horizontal flip
    bucket_multiple: int | None = None  # reference: None = exact size, else pad H, W up to a multiple
    convention: str = "caffe"  # preprocessing: fcn_jax.preprocess.CONVENTIONS
    seed: int = 1337
    sampling: str = "epoch"  # 'epoch' (per-epoch permutations) | 'replacement' (Caffe's random.randint)
    inputs: str = IMAGE  # the example fields forming the input: 'image' | 'hha' | 'image+depth' | 'image+hha'
    labels: LabelMap = DEFAULT_LABELS  # (batch key, example field) per output head

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"TrainInput.mode must be one of {MODES}, got {self.mode!r}")
        if self.sampling not in SAMPLINGS:
            raise ValueError(f"TrainInput.sampling must be one of {SAMPLINGS}, got {self.sampling!r}")
        if min(self.batch_size, self.crop_size, 1 if self.bucket_multiple is None else self.bucket_multiple) < 1:
            raise ValueError(f"TrainInput sizes must be >= 1, got batch_size={self.batch_size}, "
                             f"crop_size={self.crop_size}, bucket_multiple={self.bucket_multiple}")
        if self.mode == "reference" and self.bucket_multiple is None and self.batch_size != 1:
            raise ValueError(f"reference mode at exact size (bucket_multiple=None) needs batch_size 1, got "
                             f"{self.batch_size} (or set bucket_multiple to pad images to a common shape)")
        low, high = self.scale_range
        if not 0 < low <= high:
            raise ValueError(f"TrainInput.scale_range must satisfy 0 < low <= high, got {self.scale_range}")
        if self.resize_base is not None and round(low * self.resize_base) < 1:
            raise ValueError(f"TrainInput.resize_base must make a shorter side >= 1 px, got {self.resize_base} with "
                             f"scale_range {self.scale_range}")
        check_convention(self.convention)
        check_inputs(self.inputs)
        check_labels(self.labels)


# ------------------------------------------------------------------------------------------------
# Per-example transforms (NumPy / PIL on the host, uint8 throughout; depth uint16).

def check_labels(labels: LabelMap) -> LabelMap:
    """Returns ``labels`` ((batch key, example field) pairs, the first key 'label', keys 'label...' and
    distinct) if well formed, else raises ValueError."""
    keys = [key for key, _ in labels]
    if (not labels or keys[0] != LABEL or len(set(keys)) != len(keys)
            or not all(isinstance(f, str) and k.startswith(LABEL) for k, f in labels)):
        raise ValueError(f"labels must be (batch key, example field) pairs, the first key {LABEL!r}, all keys "
                         f"starting with {LABEL!r} and distinct; got {labels!r}")
    return labels


def _field(example: Example, name: str, needed_by: str) -> np.ndarray:
    if name not in example:
        raise ValueError(f"examples have no {name!r} field (they have {', '.join(map(str, example))}); "
                         f"{needed_by} needs it")
    return np.asarray(example[name])


def read_fields(example: Example, inputs: str = IMAGE, labels: LabelMap = DEFAULT_LABELS) -> Fields:
    """The arrays of ``example`` a batch is made of, checked: the input fields ``inputs`` names ('image'
    (H, W, 3) uint8 RGB, 'hha' (H, W, 3) uint8, 'depth' (H, W) uint16) and each label by its batch key
    ((H, W) uint8, 255 = void), all of one (H, W). ValueError (one line) for a missing or malformed field."""
    out: Fields = {}
    for key, name in labels:
        out[key] = _field(example, name, f"the labels {key!r}")
    size = out[LABEL].shape
    for name in input_fields(inputs):
        values = _field(example, name, f"inputs {inputs!r}")
        if name == DEPTH:
            if values.ndim != 2 or not np.issubdtype(values.dtype, np.unsignedinteger) or values.itemsize > 2:
                raise ValueError(f"expected an (H, W) uint16 depth, got {values.dtype} {values.shape}")
            values = values.astype(np.uint16, copy=False)
        elif values.dtype != np.uint8 or values.ndim != 3 or values.shape[-1] != 3:
            what = "image" if name == IMAGE else name
            raise ValueError(f"expected an (H, W, 3) uint8 {what}, got {values.dtype} {values.shape}")
        if values.shape[:2] != size:
            raise ValueError(f"label shape {size} does not match {name} shape {values.shape}")
        out[name] = values
    for key, _ in labels:
        if out[key].shape != size:
            raise ValueError(f"label {key!r} shape {out[key].shape} does not match label shape {size}")
        out[key] = out[key].astype(np.uint8, copy=False)
    return out


def as_uint8(example: Example) -> tuple[np.ndarray, np.ndarray]:
    """The example's (H, W, 3) uint8 image and (H, W) uint8 label, shapes checked."""
    fields = read_fields(example)
    return fields[IMAGE], fields[LABEL]


def _resample_filter(key: str) -> int:
    """PIL filter of a field under scaling: nearest for labels and depth, bilinear for image-like fields."""
    return Image.NEAREST if key.startswith(LABEL) or key == DEPTH else Image.BILINEAR


def _resample(values: np.ndarray, key: str, size: tuple[int, int], box: tuple[float, ...]) -> np.ndarray:
    """One field resampled to ``size`` (w, h) from the source ``box``, dtype kept. Depth goes through PIL's
    32-bit mode: its 16-bit nearest-neighbour rounds some coordinates differently from the 8-bit labels'."""
    if values.dtype == np.uint16:
        out = Image.fromarray(values.astype(np.int32)).resize(size, _resample_filter(key), box=box)
        return np.asarray(out).astype(np.uint16)
    return np.asarray(Image.fromarray(values).resize(size, _resample_filter(key), box=box))


def _scaled_size(height: int, width: int, rng: np.random.Generator, cfg: TrainInput) -> tuple[int, int]:
    """The random (h, w) an image of ``height`` x ``width`` is scaled to: by a factor uniform in
    ``cfg.scale_range``, or with ``cfg.resize_base`` its shorter side to a whole number of pixels uniform in
    [round(low * base), round(high * base)] and the longer one in proportion, truncated (torchvision's
    ``RandomResize`` with ``F.resize(image, size)``)."""
    if cfg.resize_base is None:
        scale = rng.uniform(*cfg.scale_range)
        return max(1, round(height * scale)), max(1, round(width * scale))
    low, high = (round(s * cfg.resize_base) for s in cfg.scale_range)
    short = int(rng.integers(low, high + 1))
    if height <= width:
        return short, max(1, int(short * width / height))
    return max(1, int(short * height / width)), short


def augment_fields(fields: Fields, rng: np.random.Generator, cfg: TrainInput) -> Fields:
    """Random scale, crop and flip of every field of one example (:func:`read_fields`): each (h, w[, c]),
    h, w <= crop size, dtypes kept.

    Scaling and cropping are one resampling of the crop window (PIL ``resize`` with a source ``box``) on
    one sampling grid for all fields: bilinear for the image and HHA, nearest-neighbour for labels and
    depth. The crop is smaller than ``crop_size`` where the scaled image is; batching pads it at the
    bottom and right (inputs to the mean, labels to 255).
    """
    height, width = fields[LABEL].shape
    crop = cfg.crop_size
    scaled_h, scaled_w = _scaled_size(height, width, rng, cfg)
    y0 = int(rng.integers(0, max(scaled_h - crop, 0) + 1))
    x0 = int(rng.integers(0, max(scaled_w - crop, 0) + 1))
    crop_h, crop_w = min(crop, scaled_h - y0), min(crop, scaled_w - x0)
    sy, sx = height / scaled_h, width / scaled_w
    box = (x0 * sx, y0 * sy, (x0 + crop_w) * sx, (y0 + crop_h) * sy)
    out = {key: _resample(values, key, (crop_w, crop_h), box) for key, values in fields.items()}
    if cfg.flip and rng.random() < 0.5:
        out = {key: values[:, ::-1] for key, values in out.items()}
    return out


def augment(example: Example, rng: np.random.Generator, cfg: TrainInput) -> tuple[np.ndarray, np.ndarray]:
    """:func:`augment_fields` of an example's colour image and label: uint8 image (h, w, 3) and label (h, w)."""
    out = augment_fields(read_fields(example), rng, cfg)
    return out[IMAGE], out[LABEL]


def bucket_shape(sizes: Sequence[tuple[int, int]], multiple: int) -> tuple[int, int]:
    """(H, W) covering every size, each rounded up to a multiple of ``multiple`` (>= one multiple)."""
    height = max([h for h, _ in sizes] + [1])
    width = max([w for _, w in sizes] + [1])
    return -(-height // multiple) * multiple, -(-width // multiple) * multiple


class Slot(NamedTuple):
    """One array of a host batch: its key, the per-pixel trailing shape, dtype and padding value."""

    key: str
    trailing: tuple[int, ...]
    dtype: Any
    fill: int


def batch_layout(inputs: str = IMAGE, labels: LabelMap = DEFAULT_LABELS) -> tuple[Slot, ...]:
    """The arrays of a host batch for ``inputs`` and ``labels``: inputs padded with 0, labels with 255."""
    slots = [Slot(key, (), np.uint8, VOID) for key, _ in labels]
    for name in input_fields(inputs):
        slots.append(Slot(name, (), np.uint16, 0) if name == DEPTH else Slot(name, (3,), np.uint8, 0))
    return tuple(slots)


DEFAULT_LAYOUT = batch_layout()


def _pad_to(records: Sequence[Fields | None], shape: tuple[int, int] | None = None, multiple: int | None = 1,
            layout: tuple[Slot, ...] = DEFAULT_LAYOUT) -> HostBatch:
    """:func:`pad_batch` to ``shape``, else to the bucket of the records' sizes, else (``multiple``
    None) to their one common size (no padding)."""
    sizes = [r[LABEL].shape for r in records if r is not None]
    if shape is None and multiple is None:
        if len(set(sizes)) != 1:
            raise ValueError(f"an exact-size batch needs images of one size, got {sorted(set(sizes))}")
        shape = sizes[0]
    return pad_batch(records, bucket_shape(sizes, multiple) if shape is None else shape, layout)


def pad_batch(records: Sequence[Fields | None], shape: tuple[int, int],
              layout: tuple[Slot, ...] = DEFAULT_LAYOUT) -> HostBatch:
    """Stacks examples' fields (:func:`read_fields`) top-left into ``shape``; None rows are filler.

    Returns the host batch: one (B, H, W[, c]) array per slot of ``layout`` ('image' (B, H, W, 3) uint8,
    'label' (B, H, W) uint8 (255 outside the examples), ...) and 'valid': (B, 2) int32 (h, w) of each
    example, (0, 0) for filler. Inputs outside ``valid`` are undefined until :func:`device_batch` sets
    them to the mean.
    """
    out: HostBatch = {s.key: np.full((len(records), *shape, *s.trailing), s.fill, s.dtype) for s in layout}
    valid = np.zeros((len(records), 2), np.int32)
    for row, record in enumerate(records):
        if record is not None:
            h, w = record[LABEL].shape
            for s in layout:
                out[s.key][row, :h, :w] = record[s.key]
            valid[row] = (h, w)
    out["valid"] = valid
    return out


# ------------------------------------------------------------------------------------------------
# Processes, devices, threads.

def _process_layout(batch_size: int, process_index: int | None, process_count: int | None) -> tuple[int, int, int]:
    """(process index, process count, local batch size)."""
    index = jax.process_index() if process_index is None else process_index
    count = jax.process_count() if process_count is None else process_count
    if not 0 <= index < count:
        raise ValueError(f"process_index {index} out of range for process_count {count}")
    if batch_size % count:
        raise ValueError(f"global batch size {batch_size} is not divisible by the process count {count}")
    return index, count, batch_size // count


def _agree_shape(shape: tuple[int, int]) -> tuple[int, int]:
    """The elementwise maximum of ``shape`` over all processes (a collective when there are several)."""
    if jax.process_count() == 1:
        return shape
    from jax.experimental import multihost_utils

    gathered = np.asarray(multihost_utils.process_allgather(np.asarray(shape, np.int32))).reshape(-1, 2)
    return int(gathered[:, 0].max()), int(gathered[:, 1].max())


def _grow(batch: HostBatch, shape: tuple[int, int]) -> HostBatch:
    """Pads a host batch's arrays at the bottom/right up to ``shape``: labels with 255, inputs with 0."""
    height, width = batch[LABEL].shape[1:]
    if (height, width) == shape:
        return batch
    pad = ((0, 0), (0, shape[0] - height), (0, shape[1] - width))
    grown = {}
    for key, values in batch.items():
        if key in ("valid", "indices", "names"):
            continue
        grown[key] = np.pad(values, pad + ((0, 0),) * (values.ndim - 3),
                            constant_values=VOID if key.startswith(LABEL) else 0)
    return dict(batch, **grown)


def _to_device(array: np.ndarray, sharding: jax.sharding.Sharding | None) -> jax.Array:
    if sharding is None:
        return jax.device_put(array)
    return jax.make_array_from_process_local_data(sharding, array)


def _preprocess_rows(arrays: dict[str, jax.Array], valid: jax.Array, *, convention: str, inputs: str,
                     label_keys: tuple[str, ...]) -> dict[str, jax.Array]:
    """Host-typed batch arrays -> {'image': (B, H, W, C) float32 network input (:func:`compose`) with 0 (the
    mean) outside ``valid``, each label key: (B, H, W) int32}."""
    label = arrays[LABEL]
    rows = jax.lax.broadcasted_iota(np.int32, label.shape, 1)
    cols = jax.lax.broadcasted_iota(np.int32, label.shape, 2)
    inside = (rows < valid[:, 0, None, None]) & (cols < valid[:, 1, None, None])
    x = compose({name: arrays[name] for name in input_fields(inputs)}, inputs, convention)
    out = {IMAGE: jnp.where(inside[..., None], x, 0.0)}
    out.update({key: arrays[key].astype(np.int32) for key in label_keys})
    return out


@functools.lru_cache(maxsize=None)
def _device_preprocessor(convention: str, sharding: jax.sharding.Sharding | None, inputs: str,
                         label_keys: tuple[str, ...]) -> Callable:
    """The jitted :func:`_preprocess_rows`, its outputs keeping the batch sharding."""
    body = functools.partial(_preprocess_rows, convention=convention, inputs=inputs, label_keys=label_keys)
    return bounded_jit(body) if sharding is None else bounded_jit(body, out_shardings=sharding)


def device_batch(host: HostBatch, convention: str, sharding: jax.sharding.Sharding | None = None,
                 inputs: str = IMAGE, label_keys: tuple[str, ...] = (LABEL,)) -> dict[str, jax.Array]:
    """Host batch (uint8, depth uint16) -> {'image': (B, H, W, C) float32 network input, 'label' and every
    other key of ``label_keys``: (B, H, W) int32}.

    Bytes cross to the device in their host types (uint8: a quarter of float32) and the preprocessing
    runs there, as one jitted elementwise computation (no collectives) per batch shape.
    """
    arrays = {key: _to_device(host[key], sharding) for key in (*label_keys, *input_fields(inputs))}
    return _device_preprocessor(convention, sharding, inputs, tuple(label_keys))(
        arrays, _to_device(host["valid"], sharding))


def _default_threads() -> int:
    return max(1, min(16, os.cpu_count() or 1))


def _open_stream(local: grain.MapDataset, finalize: Callable[[HostBatch], Any], *, background: bool,
                 prefetch: int, num_threads: int) -> grain.DatasetIterator:
    """Iterates ``local`` with grain's thread pool; ``finalize`` runs in a prefetch thread if ``background``."""
    ds = local.to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=num_threads + 1))
    if background:
        ds = ds.map(finalize)
        if prefetch > 0:
            ds = ThreadPrefetchIterDataset(ds, prefetch_buffer_size=prefetch)
    return iter(ds)


# ------------------------------------------------------------------------------------------------
# Training.

class ReplacementDraws:
    """Position ``p`` -> the ``p``-th ``random.Random(seed).randint(0, n - 1)`` draw (Caffe's voc_layers
    order: ``random.seed(seed)``, then one ``randint`` per image). Random access: draws are made lazily
    up to the highest position asked for and kept (8 bytes each); thread-safe."""

    def __init__(self, seed: int, n: int):
        if n < 1:
            raise ValueError("sampling from an empty source")
        self._rng, self._n = random.Random(seed), n
        self._draws = array.array("q")
        self._lock = threading.Lock()

    def __getitem__(self, position: int) -> int:
        with self._lock:
            missing = position + 1 - len(self._draws)
            if missing > 0:  # in blocks: the sequence is the same however it is cut
                randint, last = self._rng.randint, self._n - 1
                self._draws.extend(randint(0, last) for _ in range(max(missing, 1024)))
            return self._draws[position]


class TrainIterator:
    """Infinite iterator of training batches; see the module docstring for order and state.

    ``next()`` returns {'image': (B, H, W, C) float32, 'label': (B, H, W) int32, and any other label key
    of ``TrainInput.labels``: (B, H, W) int32} as jax.Arrays (global arrays when a sharding is given).
    Call ``close()`` (or use ``with``) to stop threads.
    """

    def __init__(self, local: grain.MapDataset, finalize: Callable[[HostBatch], dict], *, cfg: TrainInput,
                 num_examples: int, background: bool, prefetch: int, num_threads: int):
        self._local, self._finalize, self._cfg = local, finalize, cfg
        self._num_examples = num_examples
        self._background, self._prefetch, self._num_threads = background, prefetch, num_threads
        self._step = 0
        self._iterator: grain.DatasetIterator | None = None

    @property
    def step(self) -> int:
        """Number of batches returned so far (the position ``get_state`` saves)."""
        return self._step

    def __iter__(self) -> TrainIterator:
        return self

    def __next__(self) -> dict[str, jax.Array]:
        if self._iterator is None:
            self._iterator = _open_stream(self._local[self._step:], self._finalize, background=self._background,
                                          prefetch=self._prefetch, num_threads=self._num_threads)
        batch = next(self._iterator)
        if not self._background:
            batch = self._finalize(batch)
        self._step += 1
        return batch

    def get_state(self) -> dict[str, int | str]:
        """JSON-serialisable position: batches consumed, plus what must match on restore."""
        return {"step": self._step, "seed": self._cfg.seed, "batch_size": self._cfg.batch_size,
                "num_examples": self._num_examples, "sampling": self._cfg.sampling}

    def set_state(self, state: dict[str, int | str]) -> None:
        """Continues from ``state`` (from ``get_state``); the next batch is the one that followed it."""
        mine = self.get_state()
        for key in ("seed", "batch_size", "num_examples", "sampling"):
            if key in state and type(mine[key])(state[key]) != mine[key]:
                raise ValueError(f"iterator state has {key}={state[key]} but this pipeline has {key}={mine[key]}; "
                                 "resuming would not reproduce the uninterrupted batches")
        self.close()
        self._step = int(state["step"])

    def close(self) -> None:
        """Stops the worker threads; iteration may resume later from the current position."""
        if self._iterator is not None:
            self._iterator.close()
            self._iterator = None

    def __enter__(self) -> TrainIterator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: threads are daemons anyway
            pass


def train_iterator(source: Sequence[Example], cfg: TrainInput, *, sharding: jax.sharding.Sharding | None = None,
                   process_index: int | None = None, process_count: int | None = None, prefetch: int = 2,
                   num_threads: int | None = None) -> TrainIterator:
    """Training batches from ``source`` (random-access example dicts, e.g. ``load_split(...)``).

    ``sharding``: a NamedSharding splitting the batch axis over the mesh's data axis, or None for
    plain arrays on the default device. ``process_index`` / ``process_count`` default to jax's;
    each process reads only its rows. ``num_threads``: host worker threads (default: CPU count).
    """
    index, count, local_batch = _process_layout(cfg.batch_size, process_index, process_count)
    if len(source) == 0:
        raise ValueError("training source is empty")
    if cfg.sampling == "replacement":
        draws = ReplacementDraws(cfg.seed, len(source))
        ordered = grain.MapDataset.range(sys.maxsize).map(lambda position: source[draws[position]])
    else:
        ordered = grain.MapDataset.source(source).shuffle(seed=cfg.seed).repeat()
    labels = tuple(tuple(pair) for pair in check_labels(cfg.labels))
    layout = batch_layout(cfg.inputs, labels)
    read = functools.partial(read_fields, inputs=cfg.inputs, labels=labels)
    if cfg.mode == "modern":
        records = ordered.random_map(lambda example, rng: augment_fields(read(example), rng, cfg), seed=cfg.seed)
        batch_fn = functools.partial(_pad_to, shape=(cfg.crop_size, cfg.crop_size), layout=layout)
    else:
        records = ordered.map(read)
        batch_fn = functools.partial(_pad_to, multiple=cfg.bucket_multiple, layout=layout)
    # The order is infinite, so drop_remainder drops nothing (and keeps grain's length arithmetic integral).
    batches = records.batch(local_batch, drop_remainder=True, batch_fn=batch_fn)
    local = batches[index::count]  # rows [index*b, (index+1)*b) of every global batch
    agree = cfg.mode == "reference" and cfg.bucket_multiple is not None and jax.process_count() > 1
    label_keys = tuple(key for key, _ in labels)

    padded = cfg.mode == "reference" and cfg.bucket_multiple is not None

    def finalize(batch: HostBatch) -> dict[str, jax.Array]:
        if agree:
            batch = _grow(batch, _agree_shape(batch[LABEL].shape[1:]))
        out = device_batch(batch, cfg.convention, sharding, cfg.inputs, label_keys)
        if padded:  # each image's own (h, w): the train step masks the network to it
            out[SIZES] = _to_device(batch["valid"], sharding)
        return out

    return TrainIterator(local, finalize, cfg=cfg, num_examples=len(source), background=not agree,
                         prefetch=prefetch, num_threads=num_threads or _default_threads())


# ------------------------------------------------------------------------------------------------
# Evaluation.

@dataclasses.dataclass
class EvalBatch:
    """One evaluation batch. ``image`` / ``label`` / ``labels`` are global arrays when sharded; the NumPy
    fields describe this process's rows: original (h, w) (0 for filler), example index (-1 for filler),
    file name ('' for filler). Padding and filler rows are all 255 in every label map. ``labels``: every
    head's labels by batch key ('label', and e.g. 'label_geo'); ``label`` is ``labels['label']``."""

    image: jax.Array  # (B, H, W, C) float32
    label: jax.Array  # (B, H, W) int32
    sizes: np.ndarray  # (b, 2) int32
    names: list[str]
    indices: np.ndarray  # (b,) int64
    labels: dict[str, jax.Array] = dataclasses.field(default_factory=dict)  # batch key -> (B, H, W) int32


def _file_name(example: Example) -> str:
    name = example.get("file_name", "")
    name = name.item() if isinstance(name, np.ndarray) else name
    return name.decode() if isinstance(name, bytes) else str(name)


def example_sizes(source: Sequence[Example], num_threads: int | None = None) -> np.ndarray:
    """(N, 2) int64 (H, W) of every example of ``source``, in order: from ``source.sizes()`` when the
    source knows them (a folder dataset read them from the file headers), else each example is read
    once (a tfds array_record example is decoded whole), in grain's thread pool."""
    if callable(getattr(source, "sizes", None)):
        return np.asarray(source.sizes(), np.int64).reshape(-1, 2)
    shapes = grain.MapDataset.source(source).map(lambda e: np.shape(e["segmentation"])[:2])
    threads = num_threads or _default_threads()
    stream = shapes.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=2 * threads))
    return np.asarray(list(stream), np.int64).reshape(-1, 2)


def eval_plan(sizes: Sequence[tuple[int, int]] | np.ndarray,
              batch_size: int) -> list[tuple[tuple[int, int], np.ndarray]]:
    """Exact-size global batches: ``[(shape (H, W), example indices (B,) with -1 for filler), ...]``.

    Indices are grouped by size in order of first appearance; each group is chunked into batches of
    ``batch_size`` in index order, its last batch completed with filler (of the group's shape)."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, (h, w) in enumerate(np.asarray(sizes, np.int64).reshape(-1, 2).tolist()):
        groups.setdefault((h, w), []).append(i)
    plan = []
    for shape, members in groups.items():
        for start in range(0, len(members), batch_size):
            rows = members[start:start + batch_size]
            plan.append((shape, np.asarray(rows + [-1] * (batch_size - len(rows)), np.int64)))
    return plan


def eval_batches(source: Sequence[Example], *, batch_size: int, convention: str, bucket_multiple: int | None = None,
                 sizes: Sequence[tuple[int, int]] | np.ndarray | None = None,
                 sharding: jax.sharding.Sharding | None = None, process_index: int | None = None,
                 process_count: int | None = None, prefetch: int = 2, num_threads: int | None = None,
                 inputs: str = IMAGE, labels: LabelMap = DEFAULT_LABELS) -> Iterator[EvalBatch]:
    """Full-resolution evaluation batches covering every example of ``source`` exactly once.

    ``inputs``: the example fields forming the network input (:func:`fcn_jax.preprocess.compose`);
    ``labels``: (batch key, example field) of every output head, 'label' first (``EvalBatch.labels``).

    ``bucket_multiple=None`` (exact size, the reference's): the batches of :func:`eval_plan`, each of
    one image size, from ``sizes`` ((N, 2) (H, W) of every example, e.g. :func:`example_sizes`,
    computed here when None; pass them to reuse across calls). ``bucket_multiple=N``: global batch
    ``i`` holds examples ``[i*B, (i+1)*B)`` padded to the bucket of its largest image (fewer shapes,
    but the padding changes the predictions). Process ``k`` holds rows ``[k*b, (k+1)*b)`` of every
    global batch (b = B / process_count) and reads only those; missing rows are all-void filler.
    """
    check_convention(convention)
    check_inputs(inputs)
    labels = tuple(tuple(pair) for pair in check_labels(labels))
    layout = batch_layout(inputs, labels)
    label_keys = tuple(key for key, _ in labels)
    index, count, local_batch = _process_layout(batch_size, process_index, process_count)
    if bucket_multiple is not None and bucket_multiple < 1:
        raise ValueError(f"bucket_multiple must be >= 1 or None, got {bucket_multiple}")
    total = len(source)
    if bucket_multiple is None:
        sizes = example_sizes(source, num_threads) if sizes is None else np.asarray(sizes, np.int64).reshape(-1, 2)
        if len(sizes) != total:
            raise ValueError(f"{len(sizes)} sizes given for a source of {total} examples")
        plan = eval_plan(sizes, batch_size)
    else:
        plan = [(None, np.asarray([r if r < total else -1 for r in range(start, start + batch_size)], np.int64))
                for start in range(0, total, batch_size)]

    def local_rows(batch: int) -> HostBatch:
        shape, rows = plan[batch]
        rows = rows[index * local_batch:(index + 1) * local_batch]
        examples = [source[int(r)] if r >= 0 else None for r in rows]
        records = [read_fields(e, inputs, labels) if e is not None else None for e in examples]
        for r, record in zip(rows, records):
            if shape is not None and record is not None and record[LABEL].shape != shape:
                size = record[LABEL].shape
                raise ValueError(f"example {r} is {size[0]}x{size[1]}, but its size was "
                                 f"given as {shape[0]}x{shape[1]}")
        host = _pad_to(records, shape, bucket_multiple, layout)
        host["indices"] = rows.copy()
        host["names"] = [_file_name(e) if e is not None else "" for e in examples]
        return host

    agree = bucket_multiple is not None and jax.process_count() > 1

    def finalize(host: HostBatch) -> EvalBatch:
        if agree:
            host = _grow(host, _agree_shape(host[LABEL].shape[1:]))
        arrays = device_batch(host, convention, sharding, inputs, label_keys)
        return EvalBatch(image=arrays[IMAGE], label=arrays[LABEL], sizes=host["valid"], names=host["names"],
                         indices=host["indices"], labels={key: arrays[key] for key in label_keys})

    local = grain.MapDataset.range(len(plan)).map(local_rows)
    return _eval_stream(local, finalize, agree=agree, prefetch=prefetch, num_threads=num_threads or _default_threads())


def _eval_stream(local: grain.MapDataset, finalize: Callable[[HostBatch], EvalBatch], *, agree: bool,
                 prefetch: int, num_threads: int) -> Iterator[EvalBatch]:
    iterator = _open_stream(local, finalize, background=not agree, prefetch=prefetch, num_threads=num_threads)
    try:
        for batch in iterator:
            yield finalize(batch) if agree else batch
    finally:
        iterator.close()
