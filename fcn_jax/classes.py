"""Class names that models and checkpoints need without reading a dataset (no TensorFlow on this path)."""
from __future__ import annotations

VOC_CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)
# SIFT Flow's geometric labels (the reference's data/sift-flow/classes.txt)
GEOMETRIC_CLASSES: tuple[str, ...] = ("sky", "horizontal", "vertical")


def default_class_names(num_classes: int) -> tuple[str, ...]:
    """Class names for weights that record none: PASCAL VOC's for 21 classes, else 'class_<i>'."""
    if num_classes == len(VOC_CLASSES):
        return VOC_CLASSES
    return tuple(f"class_{i}" for i in range(num_classes))
