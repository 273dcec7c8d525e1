"""Measures the training input pipeline's throughput (images/s), end to end to device arrays.

The source is a VOC-sized ``shapes`` variant (sides 333..500 px, like VOC's 500x375 photos) built
once into array_record files, so the numbers include tfds decoding, augmentation (random scale,
crop, flip), preprocessing, batching and the host-to-device copy.

    python benchmarks/pipeline_throughput.py                     # modern mode, 512 crops, batch 16
    python benchmarks/pipeline_throughput.py --mode reference --batch-size 1
    python benchmarks/pipeline_throughput.py --folder --rounds 3   # tfds vs folder: source, side by side
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from fcn_jax import data  # noqa: E402
from fcn_jax.data.pipeline import TrainInput, train_iterator  # noqa: E402

VOC_LIKE = data.ShapesConfig(name="bench_voc_like", num_train=96, num_validation=1, min_size=333, max_size=500)


def write_folder(source, folder: str) -> None:
    """Every example of ``source`` as ``folder/images/train/<i>.jpg`` (quality 90, like VOC's photos) and
    ``folder/masks/train/<i>.png`` (palette PNG), plus one validation pair (a folder needs both splits)."""
    from PIL import Image

    from fcn_jax.viz import colorize
    for split, indices in (("train", range(len(source))), ("val", range(1))):
        os.makedirs(os.path.join(folder + ".tmp", "images", split))
        os.makedirs(os.path.join(folder + ".tmp", "masks", split))
        for i in indices:
            example = source[i]
            Image.fromarray(example["image"]).save(os.path.join(folder + ".tmp", "images", split, f"{i:05d}.jpg"),
                                                   quality=90)
            colorize(example["segmentation"]).save(os.path.join(folder + ".tmp", "masks", split, f"{i:05d}.png"))
    os.replace(folder + ".tmp", folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", default="modern", choices=("modern", "reference"))
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--crop-size", type=int, default=512)
    parser.add_argument("--batches", type=int, default=12, help="timed batches (after 2 warm-up batches)")
    parser.add_argument("--threads", type=int, default=None, help="host worker threads (default: CPU count)")
    parser.add_argument("--data-dir", default=os.path.join(tempfile.gettempdir(), "fcn_jax_bench_tfds"))
    parser.add_argument("--folder", action="store_true", help="also measure the same images read as a folder: "
                        "dataset (JPEG + PNG masks decoded on access) beside the tfds source")

    parser.add_argument("--rounds", type=int, default=1, help="measure each source this many times, alternating")
    args = parser.parse_args()

    sources = {"tfds": data.load_split("shapes", "train", data_dir=args.data_dir, config=VOC_LIKE)}
    if args.folder:  # the same images as a folder dataset: JPEG photos (quality 90) + palette PNG masks
        folder = os.path.join(args.data_dir, "folder_voc_like")
        if not os.path.isdir(folder):
            write_folder(sources["tfds"], folder)
        sources["folder"] = data.load_split(f"folder:{folder}", "train", progress=False)
    cfg = TrainInput(mode=args.mode, batch_size=args.batch_size, crop_size=args.crop_size,
                     bucket_multiple=None if args.batch_size == 1 else 128)
    for round_ in range(args.rounds):
        for name, source in sources.items():
            with train_iterator(source, cfg, num_threads=args.threads) as batches:
                for _ in range(2):
                    jax.block_until_ready(next(batches))
                start = time.perf_counter()
                for _ in range(args.batches):
                    jax.block_until_ready(next(batches))
                elapsed = time.perf_counter() - start
            images = args.batches * args.batch_size
            print(f"{name} source, round {round_}: {args.mode} mode, crop {args.crop_size}, batch "
                  f"{args.batch_size}, {os.cpu_count()} CPUs, threads {args.threads or 'default'}: "
                  f"{images / elapsed:.1f} images/s ({images} images in {elapsed:.2f} s)")


if __name__ == "__main__":
    main()
