"""Throughput of the full stage-2 input pipeline on this machine.

Writes 256-px JPEGs with captions (synthetic shapes) into a temporary folder,
then times the loader: JPEG decode, RandomResizedCrop / flip / colour jitter,
stage-2 mask, tokenisation (byte-level stand-in) and batching with
normalisation. Prints a Markdown table and a final JSON line.

    python tools/bench_data.py [--workers 2] [--batch-size 32] [--batches 30]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

from PIL import Image

from lip_jax.data import ImageFolder, Loader, PipelineConfig, Shapes


def write_jpegs(directory: str, count: int, size: int) -> None:
    shapes = Shapes(count, size)
    for i in range(count):
        example = shapes[i]
        Image.fromarray(example["image"]).save(os.path.join(directory, f"{i:05d}.jpg"), quality=90)
        with open(os.path.join(directory, f"{i:05d}.txt"), "w") as f:
            f.write(example["text"])


def measure(directory: str, workers: int, batch_size: int, batches: int,
            size: int) -> tuple[float, float]:
    """(images/s, CPU ms per image of this process); the CPU figure counts all
    the work only when workers == 0."""
    config = PipelineConfig(image_size=size, batch_size=batch_size, mask="stage2",
                            worker_count=workers)
    iterator = iter(Loader(ImageFolder(directory), config, process_index=0, process_count=1))
    for _ in range(3):  # worker start-up and first buffers are not steady state
        next(iterator)
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(batches):
        next(iterator)
    images = batches * batch_size
    return (images / (time.perf_counter() - start),
            1000 * (time.process_time() - cpu_start) / images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--files", type=int, default=512)
    args = parser.parse_args()
    load_before = round(os.getloadavg()[0], 2)
    with tempfile.TemporaryDirectory() as directory:
        write_jpegs(directory, args.files, args.size)
        rows = [(w, *measure(directory, w, args.batch_size, args.batches, args.size))
                for w in sorted({0, args.workers})]
    print("| workers | batch | image | images/s | main-process CPU ms/image |")
    print("|---|---|---|---|---|")
    for workers, rate, cpu_ms in rows:
        print(f"| {workers} | {args.batch_size} | {args.size}x{args.size} JPEG | {rate:.0f} "
              f"| {cpu_ms:.2f} |")
    serial_cpu_ms = rows[0][2]
    print(json.dumps({
        "benchmark": "data_pipeline_stage2", "backend": "cpu (numpy/PIL, grain)",
        "machine_cores": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
        "image_size": args.size, "batch_size": args.batch_size,
        "images_per_s": {str(w): round(r, 1) for w, r, _ in rows},
        # All work done in one process: the CPU cost of one image, and what the
        # machine's cores could sustain if nothing else ran.
        "cpu_ms_per_image": round(serial_cpu_ms, 2),
        "idle_machine_bound_images_per_s": round(os.cpu_count() * 1000 / serial_cpu_ms, 1),
        "goal_images_per_s": 200,
        # Other jobs on the machine slow the workers down; say how busy it was.
        "load_avg_1m_before": load_before,
    }))


if __name__ == "__main__":
    main()
