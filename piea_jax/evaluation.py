"""PIEA's Table 1 protocol over sets of images (spec/piea.md §7), and its per-step form (Fig. 5).

The metric itself is `common.metrics` (`sample_patches`, `patch_statistics`,
`histogram_intersection`); this module fixes how a *set* is scored:

* **Which patches.** Image `image_id` draws its 16 patches with the key
  `fold_in(key(seed), crc32(image_id) mod 2^31)` (`patch_key`). Every rendering of one image
  (input, output, expert C, the output after step t at rate k) gets the same key, hence patches
  at the same places: identical sets score exactly 1, and an image's patches do not depend on
  the order, batching or subset of the set. The seed is reported with every table.
* **8 bits.** Every image is quantised to 8 bits (`common.images.to_uint8`) before its
  statistics, as the paper computes on 8-bit images, so arrays and the 8-bit files written
  from them score the same.
* **Pooling.** The patches of all images of a set are pooled, one histogram per statistic.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from common.images import to_uint8
from common.metrics import histogram_intersection, patch_statistics, sample_patches
from piea_jax.params import FILTER_ORDER, PHYSICAL_SHAPES
from piea_jax.rendering import render_images

STATISTICS = ("luminance", "contrast", "saturation")
# The paper's Table 1 row for PIEA on expert C (FiveK, its NIMA guider), as fractions.
PAPER_TABLE1 = {"luminance": 0.864, "contrast": 0.878, "saturation": 0.878}
HISTOGRAM_BINS = 32


def patch_key(seed: int, image_id: str) -> jax.Array:
    """The key of the patches of image `image_id` under `seed` (see the module docstring)."""
    return jax.random.fold_in(jax.random.key(seed), zlib.crc32(image_id.encode()) & 0x7FFFFFFF)


@jax.jit
def _statistics(image_uint8, key):
    image = image_uint8.astype(jnp.float32) / 255.0
    return patch_statistics(sample_patches(image, key=key))


def image_statistics(image, key) -> np.ndarray:
    """The 16 patches' (luminance, contrast, saturation) of ONE image -> (16, 3).

    Args:
      image: (H, W, 3), float in [0, 1] (quantised to 8 bits first) or uint8.
      key: `patch_key(seed, image_id)`.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8:
        image = to_uint8(image)
    return np.asarray(_statistics(image, key))


def intersection(stats, target_stats, *, bins: int = HISTOGRAM_BINS) -> dict[str, float]:
    """Table 1's scores of a set against its targets: {statistic: fraction in [0, 1]}.

    Args:
      stats, target_stats: patch statistics of the two sets, (..., 3) (e.g. (N, 16, 3) from
        `image_statistics` per image); all patches of a set are pooled.
    """
    a = np.asarray(stats, np.float32).reshape(-1, len(STATISTICS))
    b = np.asarray(target_stats, np.float32).reshape(-1, len(STATISTICS))
    scores = np.asarray(histogram_intersection(a, b, bins=bins))
    return {name: float(s) for name, s in zip(STATISTICS, scores, strict=True)}


def trajectory_statistics(
    image,
    params: Mapping[str, object],
    key,
    *,
    order: Sequence[str] = FILTER_ORDER,
    mesh: Mesh | None = None,
    chunk: int = 8,
) -> np.ndarray:
    """Patch statistics of ONE image rendered at full resolution with many parameter sets.

    For the learning-rate sweep: the image after every step t at every rate k (Fig. 5), from
    the search's trajectory, with no search repeated.

    Args:
      image: the input (H, W, 3) in [0, 1].
      params: physical parameters with any leading axes L, {name: (*L, ...)} (e.g. (K, M + 1)
        from `EnhanceResult.trajectory.params[name][:, i]`).
      key: `patch_key(seed, image_id)`.
      order: the filter chain.
      mesh: devices the renders are spread over (`render_images`).
      chunk: renders held in memory at once.

    Returns:
      (*L, 16, 3).
    """
    order = tuple(order)
    first = np.asarray(params[order[0]])
    lead = first.shape[: first.ndim - len(PHYSICAL_SHAPES[order[0]])]
    flat = {name: np.asarray(params[name], np.float32) for name in order}
    flat = {name: p.reshape(-1, *p.shape[len(lead) :]) for name, p in flat.items()}
    count = int(np.prod(lead))
    out = []
    for start in range(0, count, chunk):
        stop = min(count, start + chunk)
        part = {name: p[start:stop] for name, p in flat.items()}
        for rendered in render_images([image] * (stop - start), part, order=order, mesh=mesh):
            out.append(image_statistics(rendered, key))
    return np.stack(out).reshape(*lead, *out[0].shape)
