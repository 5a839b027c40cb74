"""The built-in demo set: unpaired low/high domains and paired val/test crops made offline from
the colour photographs that ship with scikit-image.

It is a runnable end-to-end example for a laptop CPU, not a benchmark: every report made on
it must say so. The recipe (`RECIPE`), for each photo of `RECIPE["photos"]` (public domain /
CC0 per scikit-image's docstrings):

* The photo is cut in two halves across its long side; a seeded coin picks which half feeds
  the low domain, the other feeds the high domain, so the domains never share pixels
  (unpaired, as in FiveK).
* Training: `train_per_photo` random crops per half, each side drawn in `train_crop` (capped
  by the half), so short sides are >= 256 except for chelsea, whose halves are 300 x 225.
  Low-domain crops are degraded (below); high-domain crops are untouched.
* Val/test: square crops of `eval_crop` (chelsea: 224, the largest multiple of 16 in its half)
  at seeded positions inside the *low* halves, as (degraded crop, original crop) pairs. So a
  val/test region overlaps low-domain training crops (seen there degraded with other random
  parameters), but its clean original is never in the high domain; val and test crops may
  overlap each other. Pair k uses photo k modulo the number of photos.
* Degradation, one seeded draw per image, in this order on [0, 1] floats: a colour cast
  (per-channel gains exp(U(-cast, cast)), normalised so grey keeps its luminance), lowered
  saturation (blend towards luminance by s), lowered contrast (blend towards the mean
  luminance by c), then under-exposure by a gamma > 1, a scale k, or both (one of the three at
  random); clipped and rounded to 8 bits. Luminance is Rec. 709 (0.2126 R + 0.7152 G +
  0.0722 B).

Sizes with the default recipe: 40 training images per domain and 4 val / 8 test pairs; about
20 MB decoded, 13 MB as stored PNGs. Built in about 3 s into the user's cache
(`records.cache_dir()/demo/<recipe hash>`, never the repository) as the same TFDS
`array_record` format as FiveK; a changed recipe gets a new hash and is built afresh.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import secrets
import shutil
from pathlib import Path

import numpy as np
import skimage
import skimage.data
import tensorflow_datasets as tfds

from common.data import records

logger = logging.getLogger(__name__)

# Bump "version" whenever the code below changes what a recipe builds.
RECIPE = {
    "version": 1,
    "photos": ["astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field"],
    "seed": 0,
    "train_per_photo": 8,
    "train_crop": [256, 384],  # inclusive range of each training crop side
    "eval_crop": 256,  # val/test crop side (rounded down to a multiple of 16 when needed)
    "val_pairs": 4,
    "test_pairs": 8,
    "degradation": {
        "cast": 0.15,  # per-channel log-gain range
        "saturation": [0.5, 0.9],
        "contrast": [0.6, 0.9],
        "gamma": [1.2, 1.8],
        "exposure_scale": [0.25, 0.6],
    },
    "skimage": skimage.__version__,  # the photos come from this version's wheel
}
LUMINANCE_WEIGHTS = np.array([0.2126, 0.7152, 0.0722], np.float32)  # Rec. 709
DESCRIPTION = "built-in demo set (scikit-image photos, degraded); not FiveK"


def recipe_hash(recipe: dict | None = None) -> str:
    """A short hash of a recipe (default `RECIPE`): the cache key."""
    text = json.dumps(RECIPE if recipe is None else recipe, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _luminance(image: np.ndarray) -> np.ndarray:
    return image @ LUMINANCE_WEIGHTS


def degrade(image: np.ndarray, rng: np.random.Generator, params: dict) -> tuple[np.ndarray, dict]:
    """One seeded degradation of uint8 (H, W, 3) (see the module docstring).

    Returns:
      The degraded uint8 image and the drawn parameters.
    """
    x = image.astype(np.float32) / 255.0
    gains = np.exp(rng.uniform(-params["cast"], params["cast"], 3)).astype(np.float32)
    gains /= gains @ LUMINANCE_WEIGHTS
    saturation = rng.uniform(*params["saturation"])
    contrast = rng.uniform(*params["contrast"])
    mode = rng.choice(["gamma", "scale", "both"])
    gamma = rng.uniform(*params["gamma"]) if mode != "scale" else 1.0
    scale = rng.uniform(*params["exposure_scale"]) if mode != "gamma" else 1.0

    x = x * gains
    lum = _luminance(x)[..., None]
    x = lum + saturation * (x - lum)
    x = lum.mean() + contrast * (x - lum.mean())
    x = scale * np.clip(x, 0.0, 1.0) ** gamma
    drawn = {
        "gains": gains.round(4).tolist(),
        "saturation": round(float(saturation), 4),
        "contrast": round(float(contrast), 4),
        "gamma": round(float(gamma), 4),
        "exposure_scale": round(float(scale), 4),
    }
    return np.floor(np.clip(x, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8), drawn


def _halves(photo: np.ndarray, low_first: bool) -> tuple[np.ndarray, np.ndarray]:
    height, width = photo.shape[:2]
    if width >= height:
        a, b = photo[:, : width // 2], photo[:, width // 2 :]
    else:
        a, b = photo[: height // 2], photo[height // 2 :]
    return (a, b) if low_first else (b, a)


def _random_crop(image, height, width, rng):
    top = rng.integers(0, image.shape[0] - height + 1)
    left = rng.integers(0, image.shape[1] - width + 1)
    return image[top : top + height, left : left + width]


def make_examples(recipe: dict) -> tuple[dict[str, list], dict[str, dict]]:
    """Builds the demo set of `recipe` (see `RECIPE`) in memory.

    Returns:
      split -> [(id, image, label or None)] (uint8 arrays), and id -> the degradation
      parameters drawn for that image.
    """
    rng = np.random.default_rng(recipe["seed"])
    low_lo, low_hi = recipe["train_crop"]
    out = {split: [] for split in records.SPLITS}
    params = {}
    low_halves = []
    for name in recipe["photos"]:
        photo = getattr(skimage.data, name)()[..., :3]
        low_half, high_half = _halves(photo, bool(rng.integers(2)))
        low_halves.append((name, low_half))
        for split, half in (("train_low", low_half), ("train_high", high_half)):
            for k in range(recipe["train_per_photo"]):
                h = rng.integers(min(low_lo, half.shape[0]), min(low_hi, half.shape[0]) + 1)
                w = rng.integers(min(low_lo, half.shape[1]), min(low_hi, half.shape[1]) + 1)
                crop = _random_crop(half, h, w, rng)
                if split == "train_low":
                    crop, params[f"{name}_{k}"] = degrade(crop, rng, recipe["degradation"])
                out[split].append((f"{name}_{k}", np.ascontiguousarray(crop), None))
    for split, count in (("val", recipe["val_pairs"]), ("test", recipe["test_pairs"])):
        for k in range(count):
            name, half = low_halves[k % len(low_halves)]
            side = min(recipe["eval_crop"], *half.shape[:2])
            side -= side % records.EVAL_MULTIPLE
            clean = np.ascontiguousarray(_random_crop(half, side, side, rng))
            degraded, params[f"{name}_{split}{k}"] = degrade(clean, rng, recipe["degradation"])
            out[split].append((f"{name}_{split}{k}", degraded, clean))
    return out, params


class EnhanceDemo(tfds.core.GeneratorBasedBuilder):
    """The built-in demo set (see `common.data.demo`); same splits and features as FiveK."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=DESCRIPTION,
            features=records.features(),
            homepage="https://scikit-image.org/docs/stable/api/skimage.data.html",
            metadata=tfds.core.MetadataDict(),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Nothing to download: the photos ship with scikit-image.
        examples, degradations = make_examples(RECIPE)
        self.info.metadata.update(
            {
                "dataset": "enhance_demo",
                "description": DESCRIPTION,
                "recipe": RECIPE,
                "recipe_hash": recipe_hash(),
                "ids": {split: [e[0] for e in items] for split, items in examples.items()},
                "shapes": {
                    split: [list(e[1].shape) for e in items] for split, items in examples.items()
                },
                "degradations": degradations,
            }
        )
        return {split: self._generate_examples(items) for split, items in examples.items()}

    def _generate_examples(self, items):
        for image_id, image, label in items:
            yield image_id, records.tfds_example(image_id, image, label)


def demo_dir(cache: str | os.PathLike | None = None) -> Path:
    """Where the current recipe's demo set lives (a TFDS data directory)."""
    return Path(cache or records.cache_dir()) / "demo" / recipe_hash()


def build_demo(cache: str | os.PathLike | None = None) -> EnhanceDemo:
    """Builds the demo set into the cache (or finds it there) and returns its builder.

    The set is built into a private temporary folder beside its final place and renamed into
    place, so two processes starting at once cannot corrupt it: the second rename fails,
    and that process uses the first one's set and removes its own copy.
    """
    final = demo_dir(cache)
    if not (final / "enhance_demo").is_dir():
        final.parent.mkdir(parents=True, exist_ok=True)
        temp = final.parent / f".building-{final.name}-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            logger.info("Building the demo set (recipe %s) into %s", recipe_hash(), final)
            EnhanceDemo(data_dir=os.fspath(temp), file_format="array_record").download_and_prepare()
            try:
                os.rename(temp, final)
            except OSError:
                if not (final / "enhance_demo").is_dir():
                    raise
                logger.info("Another process built the demo set first; using it")
        finally:
            shutil.rmtree(temp, ignore_errors=True)
    return EnhanceDemo(data_dir=os.fspath(final))


@functools.lru_cache(maxsize=4)
def _prepared_in(cache: str, recipe_key: str) -> EnhanceDemo:
    del recipe_key  # Part of the cache key only.
    return build_demo(cache)


def _prepared(cache: str | os.PathLike | None) -> EnhanceDemo:
    return _prepared_in(os.fspath(cache or records.cache_dir()), recipe_hash())


def demo_metadata(*, cache: str | os.PathLike | None = None) -> dict:
    """The demo set's metadata (JSON-serialisable): recipe, its hash, the ids, shapes and
    degradation parameters of every image."""
    return dict(_prepared(cache).info.metadata)


def demo_source(split: str, *, cache: str | os.PathLike | None = None) -> records.TfdsSource:
    """One split of the built-in demo set as a random-access source of records.

    The first call builds the set into the user cache (seconds; see `build_demo`).

    Args:
      split: "train_low" | "train_high" | "val" | "test".
      cache: the cache folder (default `records.cache_dir()`, which honours
        $AESTHETIC_ENHANCE_CACHE_DIR).

    Returns:
      A source of `{"id": str, "image": uint8 (H, W, 3)}`; val/test also carry `"label"` (the
      clean crop, same shape, sides multiples of 16).
    """
    if split not in records.SPLITS:
        raise ValueError(f"unknown split {split!r}: {', '.join(records.SPLITS)}")
    return records.TfdsSource(_prepared(cache), split)
