"""The reference's models (shelhamer/fcn.berkeleyvision.org) and the paper's, as data: which variant, classes
and dataset each is, the numbers published for it and where its weights come from; and the BatchNorm FCNs
(torchvision's FCN-ResNets, seed 002's VGG11-BN FCN) in the same form (:data:`BATCHNORM_MODELS`).

A reference model is a variant of :mod:`fcn_jax.models.registry` with a class count and a dataset: the
PASCAL-Context nets are the VOC variants with 60 outputs, NYUD colour and HHA are FCN-32s with 40. The README's
model table is printed from this table (``python docs/model_table.py``). Published numbers are what the
reference README or the paper states, on the split named; none of them has been reproduced by fcn-jax.
"""
from __future__ import annotations

from typing import NamedTuple

from fcn_jax.models.registry import check_variant


class ReferenceModel(NamedTuple):
    """One published FCN.

    name: the reference's directory name (``voc-fcn8s``), or the paper's name where it released none
    (:data:`BATCHNORM_MODELS`: torchvision's builder, the seed's network).
    variant / num_classes: the fcn-jax model; dataset: the fcn-jax dataset name it trains and evaluates on
    (:data:`BATCHNORM_MODELS`: a description, their data having no fcn-jax reader).
    published: the figures (percent) published for it and where, or '' if none were.
    weights: where its trained weights come from (the reference's ``caffemodel-url`` file, torchvision's file), or ''.
    start: the ImageNet (or earlier-stage) weights its training starts from.
    preprocessing: the input convention of its data layer (``fcn_jax.preprocess``: the dataset's mean).
    """

    name: str
    variant: str
    num_classes: int
    dataset: str
    published: str
    weights: str
    start: str
    preprocessing: str = "caffe"


_URL = "{}/caffemodel-url"
_VGG = "VGG_ILSVRC_16_layers.caffemodel (ImageNet VGG16)"

REFERENCE_MODELS: tuple[ReferenceModel, ...] = (
    ReferenceModel("voc-fcn32s", "fcn32s", 21, "voc_segmentation/sbd_fcn", "63.6 seg11valid (reference README)",
                   _URL.format("voc-fcn32s"), _VGG),
    ReferenceModel("voc-fcn16s", "fcn16s", 21, "voc_segmentation/sbd_fcn", "65.0 seg11valid (reference README)",
                   _URL.format("voc-fcn16s"), "voc-fcn32s"),
    ReferenceModel("voc-fcn8s", "fcn8s", 21, "voc_segmentation/sbd_fcn",
                   "65.5 seg11valid, 67.2 seg12test (reference README)", _URL.format("voc-fcn8s"), "voc-fcn16s"),
    ReferenceModel("voc-fcn8s-atonce", "fcn8s-atonce", 21, "voc_segmentation/sbd_fcn",
                   "65.4 seg11valid (reference README)", _URL.format("voc-fcn8s-atonce"), _VGG),
    ReferenceModel("voc-fcn-alexnet", "fcn-alexnet", 21, "voc_segmentation/sbd_fcn",
                   "48.0 seg11valid (reference README)", _URL.format("voc-fcn-alexnet"),
                   "bvlc_reference_caffenet.caffemodel (ImageNet CaffeNet)"),
    ReferenceModel("FCN-GoogLeNet (paper only)", "fcn-googlenet", 21, "voc_segmentation/sbd_fcn",
                   "42.5 on the paper's VOC2011 val subset (paper Table 1)", "",
                   "bvlc_googlenet.caffemodel (ImageNet GoogLeNet)"),
    ReferenceModel("pascalcontext-fcn32s", "fcn32s", 60, "pascal_context", "", _URL.format("pascalcontext-fcn32s"),
                   _VGG),
    ReferenceModel("pascalcontext-fcn16s", "fcn16s", 60, "pascal_context", "", _URL.format("pascalcontext-fcn16s"),
                   "pascalcontext-fcn32s"),
    ReferenceModel("pascalcontext-fcn8s", "fcn8s", 60, "pascal_context", "37.8 on 59 classes (paper, FCN-8s)",
                   _URL.format("pascalcontext-fcn8s"), "pascalcontext-fcn16s"),
    ReferenceModel("siftflow-fcn32s", "siftflow-fcn32s", 33, "sift_flow", "", _URL.format("siftflow-fcn32s"), _VGG),
    ReferenceModel("siftflow-fcn16s", "siftflow-fcn16s", 33, "sift_flow",
                   "39.5 mean IU, 94.3 geometric accuracy (paper, FCN-16s)", _URL.format("siftflow-fcn16s"),
                   "siftflow-fcn32s"),
    ReferenceModel("siftflow-fcn8s", "siftflow-fcn8s", 33, "sift_flow", "", _URL.format("siftflow-fcn8s"),
                   "siftflow-fcn16s"),
    ReferenceModel("nyud-fcn32s-color", "fcn32s", 40, "nyud", "29.2 test (paper, RGB)",
                   _URL.format("nyud-fcn32s-color"), _VGG),
    ReferenceModel("nyud-fcn32s-hha", "fcn32s", 40, "nyud", "24.2 test (paper, HHA)", _URL.format("nyud-fcn32s-hha"),
                   _VGG),
    ReferenceModel("nyud-fcn32s-color-d", "nyud-fcn32s-color-d", 40, "nyud", "30.5 test (paper, RGB-D early fusion)",
                   _URL.format("nyud-fcn32s-color-d"), _VGG + ", conv1_1 widened to 4 channels"),
    ReferenceModel("nyud-fcn32s-color-hha", "nyud-fcn32s-color-hha", 40, "nyud",
                   "32.8 test (paper, RGB-HHA late fusion)", _URL.format("nyud-fcn32s-color-hha"),
                   "nyud-fcn32s-color + nyud-fcn32s-hha"),
)

# The data layers' means (pascalcontext_layers.py, siftflow_layers.py, nyud_layers.py; voc_layers.py: 'caffe').
DATASET_PREPROCESSING = {"pascal_context": "caffe-context", "sift_flow": "caffe-siftflow", "nyud": "caffe-nyud"}
REFERENCE_MODELS = tuple(m._replace(preprocessing=DATASET_PREPROCESSING.get(m.dataset, "caffe"))
                         for m in REFERENCE_MODELS)
for _model in REFERENCE_MODELS:
    check_variant(_model.variant)


_TV = "torchvision.models.segmentation"
_COCO_VOC = "COCO train2017, VOC's 20 categories (no fcn-jax reader)"
# torchvision's published figures (its weights' metadata, "COCO-val2017-VOC-labels"): mean IoU, pixel acc.
BATCHNORM_MODELS: tuple[ReferenceModel, ...] = (
    ReferenceModel("fcn_resnet50 (torchvision)", "fcn-resnet50", 21, _COCO_VOC,
                   "60.5 mIoU, 91.4 pixel acc. on COCO val2017, VOC's 20 categories (torchvision)",
                   f"{_TV}: fcn_resnet50_coco-1167a1af.pth", "resnet50-0676ba61.pth (ImageNet ResNet-50)",
                   "torchvision"),
    ReferenceModel("fcn_resnet101 (torchvision)", "fcn-resnet101", 21, _COCO_VOC,
                   "63.7 mIoU, 91.9 pixel acc. on COCO val2017, VOC's 20 categories (torchvision)",
                   f"{_TV}: fcn_resnet101_coco-7ecb50ca.pth", "resnet101-63fe2227.pth (ImageNet ResNet-101)",
                   "torchvision"),
    ReferenceModel("seed 002's VGG11-BN FCN", "fcn-vgg11bn", 7, "the seed's own 7 classes (not released)", "", "",
                   "the seed's VGG11Classification (fc_out -> conv_out), or torchvision's vgg11_bn-6002323d.pth",
                   "torchvision"),
)
for _model in BATCHNORM_MODELS:
    check_variant(_model.variant)


def match(variant: str, num_classes: int) -> ReferenceModel | None:
    """The reference model (of :data:`REFERENCE_MODELS`: the Caffe ones, whose files say nothing of their dataset
    and preprocessing) a (variant, class count) is, when the reference models with both agree on
    dataset and preprocessing (NYUD colour and HHA do: both ``nyud``, ``caffe-nyud``); None otherwise."""
    found = [m for m in REFERENCE_MODELS if m.variant == variant and m.num_classes == num_classes]
    if not found or len({(m.dataset, m.preprocessing) for m in found}) != 1:
        return None
    return found[0]


def reference_model(name: str) -> ReferenceModel:
    """The reference model called ``name``, else ValueError naming the choices."""
    for model in REFERENCE_MODELS:
        if model.name == name:
            return model
    raise ValueError(f"unknown reference model {name!r}; expected one of {', '.join(m.name for m in REFERENCE_MODELS)}")


__all__ = ["BATCHNORM_MODELS", "DATASET_PREPROCESSING", "REFERENCE_MODELS", "ReferenceModel", "match", "reference_model"]
