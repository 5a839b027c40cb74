"""Image-quality metrics of the two papers' evaluations.

- `psnr`, `ssim`: full-reference fidelity against expert C (QAGAN Table 1). Conventions follow
  `spec/qagan.md` §8: PSNR over the joint RGB mean squared error; SSIM with scikit-image's
  defaults (7×7 uniform window, K1 = 0.01, K2 = 0.03, sample covariance, mean over channels).
  Both take an optional `border` (UEGAN crops 4 pixels) and return Python floats.
- `sample_patches`, `patch_statistics`, `histogram_intersection`: PIEA's patch-based
  histogram intersection (`spec/piea.md` §7, after EXPOSURE).

The maths is plain `jax.numpy`; inputs may be numpy or JAX arrays, (H, W, 3), any real dtype
(uint8 is not rescaled: pass `data_range=255` for 8-bit values).
"""

import functools

import dm_pix
import jax
import jax.numpy as jnp
import numpy as np

from common.color import hls_saturation, luminance

SSIM_WINDOW = 7
SSIM_K1, SSIM_K2 = 0.01, 0.03

PATCH_CROPS = 4  # square crops per image
PATCH_RESIZE = 80  # each square crop is area-resized to this side
PATCHES_PER_CROP = 4  # random crops of each resized square
PATCH_SIZE = 64


def _prepare(a, b, border: int):
    a = jnp.asarray(a, jnp.float32)
    b = jnp.asarray(b, jnp.float32)
    if a.shape != b.shape or a.ndim != 3:
        raise ValueError(f"expected two (H, W, C) images of one shape, got {a.shape} and {b.shape}")
    if border:
        a, b = a[border:-border, border:-border], b[border:-border, border:-border]
    return a, b


def psnr(a, b, *, data_range: float = 1.0, border: int = 0) -> float:
    """Peak signal-to-noise ratio in dB, 10·log10(data_range² / MSE), MSE over all pixels and
    channels jointly (not a mean of per-channel PSNRs). `border` pixels are cropped per side."""
    a, b = _prepare(a, b, border)
    return float(dm_pix.psnr(a / data_range, b / data_range))


@functools.partial(jax.jit, static_argnames="data_range")
def _ssim(a, b, data_range):
    def local_mean(x):  # mean over each valid 7×7 window, per channel
        window = jnp.ones((SSIM_WINDOW, SSIM_WINDOW, 1, 1), x.dtype) / SSIM_WINDOW**2
        x_nchw = jnp.moveaxis(x, -1, 0)[:, None]
        out = jax.lax.conv_general_dilated(
            x_nchw, window, (1, 1), "VALID", dimension_numbers=("NCHW", "HWIO", "NCHW")
        )
        return out[:, 0]

    n = SSIM_WINDOW**2
    cov_norm = n / (n - 1)  # sample covariance, as scikit-image's default
    ux, uy = local_mean(a), local_mean(b)
    vx = cov_norm * (local_mean(a * a) - ux * ux)
    vy = cov_norm * (local_mean(b * b) - uy * uy)
    vxy = cov_norm * (local_mean(a * b) - ux * uy)
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    # Valid windows only = scikit-image's map with its (win − 1)/2 border cropped.
    return jnp.mean(s, axis=(1, 2)).mean()


def ssim(a, b, *, data_range: float = 1.0, border: int = 0) -> float:
    """Structural similarity with scikit-image's defaults (`structural_similarity(a, b,
    channel_axis=-1, data_range=...)`): 7×7 uniform window, K1 0.01, K2 0.03, sample
    covariance, SSIM map averaged over valid windows, then over channels. Images need at
    least 7×7 pixels after cropping `border`."""
    a, b = _prepare(a, b, border)
    if min(a.shape[:2]) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs at least {SSIM_WINDOW}×{SSIM_WINDOW} pixels, got {a.shape}")
    return float(_ssim(a, b, float(data_range)))


def _area_resize_matrix(size_in: int, size_out: int) -> np.ndarray:
    """(size_out, size_in) weights of area (box) resampling: each output pixel averages the
    input pixels its footprint covers, partial pixels by their covered fraction."""
    edges = np.arange(size_out + 1) * (size_in / size_out)
    lo, hi = edges[:-1, None], edges[1:, None]
    pixel = np.arange(size_in)[None, :]
    overlap = np.clip(np.minimum(hi, pixel + 1) - np.maximum(lo, pixel), 0, None)
    return (overlap / overlap.sum(axis=1, keepdims=True)).astype(np.float32)


def sample_patches(image, *, key) -> jax.Array:
    """PIEA's evaluation patches of one image (H, W, 3) -> (16, 64, 64, 3).

    4 times: a random square crop with side = the shorter edge, area-resized to 80×80, then
    4 random 64×64 crops of it. Deterministic given `key`; values keep the image's scale.
    """
    image = jnp.asarray(image, jnp.float32)
    h, w = image.shape[:2]
    side = min(h, w)
    resize = jnp.asarray(_area_resize_matrix(side, PATCH_RESIZE))
    patches = []
    for crop_key in jax.random.split(key, PATCH_CROPS):
        key_square, key_patch = jax.random.split(crop_key)
        ky, kx = jax.random.split(key_square)
        y0 = jax.random.randint(ky, (), 0, h - side + 1)
        x0 = jax.random.randint(kx, (), 0, w - side + 1)
        square = jax.lax.dynamic_slice(image, (y0, x0, 0), (side, side, 3))
        small = jnp.einsum("ij,jkc,lk->ilc", resize, square, resize)
        offsets = jax.random.randint(
            key_patch, (PATCHES_PER_CROP, 2), 0, PATCH_RESIZE - PATCH_SIZE + 1
        )
        for oy, ox in offsets:
            patches.append(jax.lax.dynamic_slice(small, (oy, ox, 0), (PATCH_SIZE, PATCH_SIZE, 3)))
    return jnp.stack(patches)


def patch_statistics(patches) -> jax.Array:
    """Per patch (N, h, w, 3) in [0, 1] -> (N, 3): mean luminance, contrast (2 × population
    std of luminance) and mean HLS saturation. Values are clipped to [0, 1] first; luminance is
    PIEA's (0.27 R + 0.67 G + 0.06 B)."""
    patches = jnp.clip(jnp.asarray(patches, jnp.float32), 0.0, 1.0)
    lum = luminance(patches)
    return jnp.stack(
        [
            jnp.mean(lum, axis=(1, 2)),
            2.0 * jnp.std(lum, axis=(1, 2)),
            jnp.mean(hls_saturation(patches), axis=(1, 2)),
        ],
        axis=-1,
    )


def histogram_intersection(stats_a, stats_b, *, bins: int = 32) -> jax.Array:
    """Per statistic (column), Σ_bins min(h_a, h_b) of `bins`-bin histograms on [0, 1], each
    divided by its number of patches -> (3,) in [0, 1]. stats_*: (N, 3) from `patch_statistics`.

    Sets of equal size (Table 1 compares paired sets) are scored as Σ min(counts) / N, one
    rounding only, so identical sets score exactly 1; otherwise the float32 sum is capped at 1,
    which rounding could pass by an ulp.
    """
    stats_a, stats_b = jnp.asarray(stats_a), jnp.asarray(stats_b)
    n_a, n_b = stats_a.shape[0], stats_b.shape[0]

    def counts(values):
        return jnp.histogram(jnp.clip(values, 0.0, 1.0), bins=bins, range=(0.0, 1.0))[0]

    scores = []
    for k in range(stats_a.shape[1]):
        counts_a, counts_b = counts(stats_a[:, k]), counts(stats_b[:, k])
        if n_a == n_b:
            scores.append(jnp.minimum(counts_a, counts_b).sum() / n_a)
        else:
            scores.append(jnp.minimum(jnp.minimum(counts_a / n_a, counts_b / n_b).sum(), 1.0))
    return jnp.stack(scores)
