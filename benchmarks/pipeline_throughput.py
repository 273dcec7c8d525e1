"""Measures the training input pipeline's throughput (images/s), end to end to device arrays.

The source is a VOC-sized ``shapes`` variant (sides 333..500 px, like VOC's 500x375 photos) built
once into array_record files, so the numbers include tfds decoding, augmentation (random scale,
crop, flip), preprocessing, batching and the host-to-device copy.

    python benchmarks/pipeline_throughput.py                     # modern mode, 512 crops, batch 16
    python benchmarks/pipeline_throughput.py --mode reference --batch-size 1
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", default="modern", choices=("modern", "reference"))
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--crop-size", type=int, default=512)
    parser.add_argument("--batches", type=int, default=12, help="timed batches (after 2 warm-up batches)")
    parser.add_argument("--threads", type=int, default=None, help="host worker threads (default: CPU count)")
    parser.add_argument("--data-dir", default=os.path.join(tempfile.gettempdir(), "fcn_jax_bench_tfds"))
    args = parser.parse_args()

    source = data.load_split("shapes", "train", data_dir=args.data_dir, config=VOC_LIKE)
    cfg = TrainInput(mode=args.mode, batch_size=args.batch_size, crop_size=args.crop_size,
                     bucket_multiple=None if args.batch_size == 1 else 128)
    with train_iterator(source, cfg, num_threads=args.threads) as batches:
        for _ in range(2):
            jax.block_until_ready(next(batches))
        start = time.perf_counter()
        for _ in range(args.batches):
            jax.block_until_ready(next(batches))
        elapsed = time.perf_counter() - start
    images = args.batches * args.batch_size
    print(f"{args.mode} mode, crop {args.crop_size}, batch {args.batch_size}, {os.cpu_count()} CPUs, "
          f"threads {args.threads or 'default'}: {images / elapsed:.1f} images/s ({images} images in {elapsed:.2f} s)")


if __name__ == "__main__":
    main()
