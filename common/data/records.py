"""The example format shared by every data source, and the TFDS plumbing both builders use.

A record is a dict `{"id": str, "image": uint8 (H, W, 3)}`; paired records (val/test) also
carry `"label": uint8 (H, W, 3)` (expert C for FiveK, the clean crop for the demo set). The
FiveK and demo TFDS builders store exactly this, as PNG, in `array_record` files, so building
and reading need no TensorFlow:

* TFDS can only encode a numpy image through TensorFlow (`tf.image.encode_png`), so the
  builders hand it PNG bytes encoded here with Pillow; TFDS stores them unchanged.
* Reading goes through `builder.as_data_source(split)` (array_record + numpy decoding with
  Pillow); `tfds.load` and tfrecord would need TensorFlow.
* One feature spec serves all four splits, so `label` is a `Sequence` of images: one image in
  val/test, none in the training splits. `TfdsSource` turns that back into a plain record.
"""

from __future__ import annotations

import collections
import concurrent.futures
import io
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from common.images import ImageLoadError

SPLITS = ("train_low", "train_high", "val", "test")
PAIRED_SPLITS = ("val", "test")

# Training images keep this short side (resized once, at build time, when larger) [P].
TRAIN_SHORT_SIDE = 512
# Val/test images are centre crops of this side [P].
EVAL_SIZE = 512
# Eval crops smaller than EVAL_SIZE (small sources) are rounded down to a multiple of this,
# because the generators halve the resolution four times.
EVAL_MULTIPLE = 16

# zlib level of the stored PNGs: level 1 encodes ~3x faster than Pillow's default 6 for files
# ~10 % larger (measured on 512x768 photos); decoding speed is the same.
_PNG_COMPRESS_LEVEL = 1

CACHE_ENV = "AESTHETIC_ENHANCE_CACHE_DIR"


def default_tfds_dir() -> Path:
    """Where built TFDS datasets live unless told: $TFDS_DATA_DIR, else ~/tensorflow_datasets."""
    return Path(os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets").expanduser()


def cache_dir() -> Path:
    """This project's cache: $AESTHETIC_ENHANCE_CACHE_DIR, else $XDG_CACHE_HOME/aesthetic-
    enhance-jax, else ~/.cache/aesthetic-enhance-jax. Never inside the repository."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(base).expanduser() / "aesthetic-enhance-jax"


def features():
    """The TFDS feature spec of every split (see the module docstring)."""
    import tensorflow_datasets as tfds

    def image(doc):
        return tfds.features.Image(shape=(None, None, 3), encoding_format="png", doc=doc)

    return tfds.features.FeaturesDict(
        {
            "id": tfds.features.Text(doc="FiveK image id (a0001..a5000) or the demo's name"),
            "image": image("8-bit sRGB; the input, or expert C in train_high"),
            "label": tfds.features.Sequence(
                image("expert C (FiveK) or the clean crop (demo)"),
                doc="one image in val/test, none in the training splits",
            ),
        }
    )


def encode_png(image: np.ndarray) -> bytes:
    """uint8 (H, W, 3) -> PNG bytes (Pillow; lossless)."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=_PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


def tfds_example(record_id: str, image: np.ndarray, label: np.ndarray | None = None) -> dict:
    """A record as the builders hand it to TFDS (PNG bytes; `label` only for val/test)."""
    labels = [] if label is None else [encode_png(label)]
    return {"id": record_id, "image": encode_png(image), "label": labels}


def resize_short_side(image: np.ndarray, short_side: int) -> np.ndarray:
    """Downscales uint8 (H, W, 3) so that min(H, W) == short_side (Pillow Lanczos,
    antialiased); an image already that small or smaller is returned unchanged."""
    height, width = image.shape[:2]
    if min(height, width) <= short_side:
        return image
    scale = short_side / min(height, width)
    size = (
        (short_side, max(1, round(width * scale)))
        if height <= width
        else (max(1, round(height * scale)), short_side)
    )
    resized = Image.fromarray(image).resize((size[1], size[0]), Image.Resampling.LANCZOS)
    return np.asarray(resized)


def eval_crop_size(height: int, width: int) -> int:
    """Side of the square val/test crop: EVAL_SIZE, or for a smaller image the largest multiple
    of EVAL_MULTIPLE that fits."""
    side = min(height, width)
    return EVAL_SIZE if side >= EVAL_SIZE else side - side % EVAL_MULTIPLE


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
    """The centred size x size square of (H, W, 3) (H, W >= size)."""
    height, width = image.shape[:2]
    top, left = (height - size) // 2, (width - size) // 2
    return image[top : top + size, left : left + size]


def ordered_map(fn: Callable, items: Iterable, workers: int | None = None) -> Iterator[object]:
    """Yields fn(item), or the ImageLoadError it raised, in order, computed by `workers`
    threads (Pillow decodes and encodes without the GIL) with a bounded look-ahead."""

    def call(item):
        try:
            return fn(item)
        except ImageLoadError as e:
            return e

    workers = workers or default_workers()
    if workers <= 1:
        yield from map(call, items)
        return
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        pending = collections.deque()
        for item in items:
            pending.append(pool.submit(call, item))
            if len(pending) >= 4 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def default_workers() -> int:
    """Threads for decoding and encoding: the CPU count, at most 8."""
    return max(1, min(8, os.cpu_count() or 1))


class TfdsSource:
    """A built TFDS split as a random-access source of records (`len`, `[i]`; usable by grain).

    Reading needs no TensorFlow. Records come in the order they were written (sorted by id).
    Picklable, so grain worker processes can read it.
    """

    def __init__(self, builder, split: str):
        self.split = split
        self.paired = split in PAIRED_SPLITS
        self._source = builder.as_data_source(split)

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict:
        example = self._source[index]
        record_id = example["id"]
        record = {
            "id": record_id.decode() if isinstance(record_id, bytes) else str(record_id),
            "image": example["image"],
        }
        if self.paired:
            record["label"] = example["label"][0]
        return record

    def __repr__(self) -> str:
        return f"TfdsSource({self._source!r}, split={self.split!r}, {len(self)} records)"
