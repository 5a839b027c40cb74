"""Training-data pipeline benchmark: prints one JSON object.

    python benchmarks/data_bench.py [--images 200] [--batches 30] [--workers 0,2]

Measures, on the built-in demo set and on a generated folder of 512-px photos (crops of the
scikit-image photos, short side 512, PNG; half of them also form a FiveK-like export tree that
is built into TFDS): images per second delivered by `common.data.train_iterator` (low + high
images, after a warm-up batch), at the paper's batch 12 with 128-px outputs and at batch 4 with
64-px outputs (the demo config's scale), with the decoded images in memory and read through the
TFDS source (PNG decoded per example) with 0 and `--workers` worker processes. The demand
beside it is the paper step's (README speed table: QAGAN train step, paper networks, this
machine): batch / step time, for both domains. Also: the one-off costs (decoding into memory,
building TFDS), the memory held, and the per-example crop + resize against alternatives.
Everything is written to a temporary folder (nothing in the user's cache).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # fresh clone

import numpy as np  # noqa: E402
import skimage.data  # noqa: E402
from absl import flags  # noqa: E402
from PIL import Image  # noqa: E402

from common import data  # noqa: E402
from common.data import fivek, pipeline, records  # noqa: E402

# README speed table: QAGAN train step, paper networks, 128 x 128, this 2-core machine (s).
PAPER_STEP_S = {2: 4.2, 4: 8.6, 12: 25.7}
TARGET_RATIO = 5.0


def _cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(
            line.split(":", 1)[1].strip() for line in out.splitlines() if "Model name" in line
        )
    except (OSError, subprocess.CalledProcessError, StopIteration):
        return platform.processor() or "unknown"


def _photo_crops(count: int, rng: np.random.Generator):
    """512 x 768 (or 768 x 512) crops of the scikit-image photos, upscaled where needed, with a
    random tone change so that no two files are the same."""
    photos = [getattr(skimage.data, n)()[..., :3] for n in data.demo.RECIPE["photos"]]
    for k in range(count):
        photo = photos[k % len(photos)]
        scale = 800 / min(photo.shape[:2])
        size = (round(photo.shape[1] * scale), round(photo.shape[0] * scale))
        big = np.asarray(Image.fromarray(photo).resize(size, Image.Resampling.BICUBIC))
        h, w = (512, 768) if k % 3 else (768, 512)
        top = rng.integers(0, big.shape[0] - h + 1)
        left = rng.integers(0, big.shape[1] - w + 1)
        crop = big[top : top + h, left : left + w].astype(np.float32)
        yield np.clip(crop * rng.uniform(0.6, 1.2, 3), 0, 255).astype(np.uint8)


def make_folder_and_tree(root: Path, count: int) -> tuple[Path, Path]:
    """`count` PNGs in root/folder, and the first half again as a FiveK export tree."""
    rng = np.random.default_rng(0)
    folder, tree = root / "folder", root / "fivek"
    for d in (folder, tree / "original", tree / "expertC"):
        d.mkdir(parents=True)
    ids = [*range(1, count // 4 + 1), *range(2251, 2251 + count // 4)]
    for k, image in enumerate(_photo_crops(count, rng)):
        Image.fromarray(image).save(folder / f"photo_{k:04d}.png", compress_level=1)
        if k < len(ids):
            name = f"a{ids[k]:04d}-photo.png"
            for d in ("original", "expertC"):
                (tree / d / name).write_bytes((folder / f"photo_{k:04d}.png").read_bytes())
    for image_id, k in ((4501, 0), (4901, 1)):  # one test and one val pair
        for d in ("original", "expertC"):
            (tree / d / f"a{image_id:04d}-photo.png").write_bytes(
                (folder / f"photo_{k:04d}.png").read_bytes()
            )
    return folder, tree


def images_per_second(low, high, *, batch, size, crop, batches, **kwargs) -> dict:
    t0 = time.perf_counter()
    iterator = data.train_iterator(
        low,
        high,
        global_batch_size=batch,
        crop_size=crop,
        image_size=size,
        process_index=0,
        process_count=1,
        **kwargs,
    )
    next(iterator)
    startup_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    elapsed = time.perf_counter() - t0
    if hasattr(iterator, "close"):
        iterator.close()
    rate = 2 * batch * batches / elapsed  # low + high images
    result = {
        "batch": batch,
        "image_size": size,
        "crop_size": crop,
        "startup_s": round(startup_s, 2),
        "images_per_s": round(rate, 1),
        "ms_per_batch": round(1000 * elapsed / batches, 1),
    }
    if batch in PAPER_STEP_S and size == 128:
        demand = 2 * batch / PAPER_STEP_S[batch]
        result["paper_step_demand_images_per_s"] = round(demand, 2)
        result["ratio_to_demand"] = round(rate / demand, 1)
        result["meets_5x_target"] = rate >= TARGET_RATIO * demand
    return result


def per_example_ops(repeats: int = 300) -> dict:
    """ms per example for one 256 crop of a 512 x 768 image brought to 128 x 128."""
    rng = np.random.default_rng(0)
    image = next(_photo_crops(1, rng))
    out = {}

    def timed(fn):
        fn()
        t0 = time.perf_counter()
        for _ in range(repeats):
            fn()
        return round(1000 * (time.perf_counter() - t0) / repeats, 3)

    out["pipeline_pillow_bilinear_antialiased"] = timed(
        lambda: pipeline.random_crop_resize_flip(image, rng, 256, 128)
    )
    crop = image[:256, :256]
    out["pillow_reduce_2x_box"] = timed(
        lambda: np.asarray(Image.fromarray(crop).reduce(2)).astype(np.float32) / 127.5 - 1
    )
    import jax
    import jax.numpy as jnp

    resize = jax.jit(lambda x: jax.image.resize(x, (128, 128, 3), "linear", antialias=True))
    out["jax_image_resize_linear_antialias_host"] = timed(
        lambda: np.asarray(resize(jnp.asarray(crop, jnp.float32))) / 127.5 - 1
    )
    out["full_image_resize_then_crop_pillow"] = timed(
        lambda: np.asarray(Image.fromarray(image).resize((384, 256), Image.Resampling.BILINEAR))[
            :128, :128
        ]
    )
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=200, help="generated 512-px photos")
    parser.add_argument("--batches", type=int, default=30, help="timed batches per case")
    parser.add_argument("--workers", type=int, default=2, help="worker processes to compare")
    args = parser.parse_args(argv)
    flags.FLAGS.mark_as_parsed()  # grain's worker processes read grain's absl flags
    with contextlib.redirect_stdout(sys.stderr):  # TFDS prints progress to stdout
        report = run(args)
    print(json.dumps(report, indent=2))


def run(args) -> dict:
    """Every measurement of the module docstring, as a JSON-serialisable dict."""
    report = {
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "load_average_at_start": os.getloadavg()[0],
        "paper_step_s": PAPER_STEP_S,
        "per_example_ms": per_example_ops(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ[records.CACHE_ENV] = str(tmp / "cache")
        t0 = time.perf_counter()
        demo_set = data.open_dataset()
        report["demo_build_s"] = round(time.perf_counter() - t0, 2)
        low = data.hold_in_memory(demo_set.train_low)
        high = data.hold_in_memory(demo_set.train_high)
        report["demo_sizes"] = {
            "train_low": len(low),
            "train_high": len(high),
            "val": len(demo_set.val),
            "test": len(demo_set.test),
            "decoded_mib": round((low.nbytes + high.nbytes) / 2**20, 1),
            "cache_mib": round(
                sum(f.stat().st_size for f in (tmp / "cache").rglob("*") if f.is_file()) / 2**20,
                1,
            ),
        }
        report["demo"] = [
            images_per_second(low, high, batch=12, size=128, crop=256, batches=args.batches),
            images_per_second(low, high, batch=4, size=64, crop=128, batches=args.batches),
        ]

        t0 = time.perf_counter()
        folder, tree = make_folder_and_tree(tmp, args.images)
        report["generate_s"] = round(time.perf_counter() - t0, 1)
        t0 = time.perf_counter()
        photos = data.folder_source(folder)
        decode_s = time.perf_counter() - t0
        half = len(photos) // 2
        low = pipeline.InMemorySource([photos[i] for i in range(half)])
        high = pipeline.InMemorySource([photos[i] for i in range(half, len(photos))])
        report["folder"] = {
            "images": len(photos),
            "decode_into_memory_s": round(decode_s, 2),
            "decode_images_per_s": round(len(photos) / decode_s, 1),
            "held_mib": round(photos.nbytes / 2**20, 1),
            "mib_per_image": round(photos.nbytes / len(photos) / 2**20, 2),
            "in_memory": [
                images_per_second(low, high, batch=12, size=128, crop=256, batches=args.batches),
                images_per_second(low, high, batch=4, size=64, crop=128, batches=args.batches),
            ],
        }

        t0 = time.perf_counter()
        builder = fivek.build(tree, tfds_dir=tmp / "tfds")
        build_s = time.perf_counter() - t0
        written = sum(len(ids) for ids in builder.info.metadata["ids"].values())
        report["tfds_build"] = {
            "examples": written,
            "build_s": round(build_s, 2),
            "examples_per_s": round(written / build_s, 1),
        }
        low = data.fivek_source(tree, "train_low", tfds_dir=tmp / "tfds")
        high = data.fivek_source(tree, "train_high", tfds_dir=tmp / "tfds")
        cases = []
        for workers in sorted({0, args.workers}):
            cases.append(
                {
                    "worker_count": workers,
                    **images_per_second(
                        low,
                        high,
                        batch=12,
                        size=128,
                        crop=256,
                        batches=args.batches,
                        worker_count=workers,
                        in_memory=False,
                    ),
                }
            )
        report["tfds_read_through"] = cases
    report["load_average_at_end"] = os.getloadavg()[0]
    report["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return report


if __name__ == "__main__":
    main()
