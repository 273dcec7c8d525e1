"""What a head produces: one named output of a model, its classes, the labels it learns from, how it counts.

Every consumer (the loss, the evaluator, inference, the pipeline's batches) reads a model's outputs as this
one record, so a new head kind (an auxiliary training-only head, a second task) needs no branch anywhere.
"""
from __future__ import annotations

import dataclasses

from fcn_jax.classes import GEOMETRIC_CLASSES

SEGMENTATION = "segmentation"  # the example field of the semantic labels
LABEL = "label"  # the batch key of the semantic labels
SIZES = "sizes"  # the batch key of padded training batches' (B, 2) int32 own (h, w) of each image

# example field -> class names of label fields whose classes are fixed (SIFT Flow's geometric labels)
FIELD_CLASS_NAMES: dict[str, tuple[str, ...]] = {"geometric": GEOMETRIC_CLASSES}


@dataclasses.dataclass(frozen=True)
class Output:
    """One output of a model.

    name: its key in the model's output dict ('out'; SIFT Flow's 'sem', 'geo'; torchvision's 'aux').
    classes: its number of classes; None in a variant's declaration means the model's ``num_classes``
      (:meth:`resolve` fills it in).
    label_field: the example field its labels come from ('segmentation'; SIFT Flow's 'geometric').
    loss_weight: its cross-entropy's weight in the training loss (Caffe's ``loss_weight``; torchvision
      trains its auxiliary head at 0.5).
    evaluated: scored by evaluation and produced at inference; False for a training-only output (an
      auxiliary head), which the model computes only with ``train=True``.
    """

    name: str = "out"
    classes: int | None = None
    label_field: str = SEGMENTATION
    loss_weight: float = 1.0
    evaluated: bool = True

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("_", "").isalnum():
            raise ValueError(f"output name must be a non-empty identifier, got {self.name!r}")
        if self.classes is not None and (not isinstance(self.classes, int) or self.classes < 1):
            raise ValueError(f"output {self.name}: classes must be an integer >= 1, got {self.classes!r}")
        if not self.loss_weight >= 0:
            raise ValueError(f"output {self.name}: loss_weight must be >= 0, got {self.loss_weight!r}")

    @property
    def batch_key(self) -> str:
        """The key of its labels in a batch: 'label' for the semantic labels (every output learning from
        them shares it), 'label_<name>' for any other field (SIFT Flow's 'label_geo')."""
        return LABEL if self.label_field == SEGMENTATION else f"{LABEL}_{self.name}"

    def resolve(self, num_classes: int) -> Output:
        """This output with ``classes`` filled in from the model's ``num_classes`` where it declares none."""
        return self if self.classes is not None else dataclasses.replace(self, classes=int(num_classes))

    def class_names(self, dataset_names: tuple[str, ...] | list[str]) -> tuple[str, ...]:
        """Its class names: the dataset's for semantic labels, the field's own where it has fixed ones
        (SIFT Flow's geometric classes), else 'class_<i>'."""
        if self.label_field == SEGMENTATION and len(dataset_names) == self.classes:
            return tuple(dataset_names)
        names = FIELD_CLASS_NAMES.get(self.label_field)
        if names is not None and len(names) == self.classes:
            return names
        return tuple(f"class_{i}" for i in range(self.classes or 0))


def evaluated(outputs: tuple[Output, ...]) -> tuple[Output, ...]:
    """The outputs that evaluation scores and inference produces, in declaration order."""
    return tuple(o for o in outputs if o.evaluated)


def label_fields(outputs: tuple[Output, ...]) -> tuple[tuple[str, str], ...]:
    """(batch key, example field) of every label a batch for ``outputs`` carries, each once."""
    seen: dict[str, str] = {}
    for o in outputs:
        seen.setdefault(o.batch_key, o.label_field)
    return tuple(seen.items())
