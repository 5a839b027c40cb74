"""Metrics against scikit-image, Pillow and literal numpy references."""

import colorsys

import jax
import numpy as np
import pytest
from skimage import data
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from common import metrics


def _pair(seed=0, shape=(40, 52, 3)):
    rng = np.random.default_rng(seed)
    a = rng.uniform(0, 1, shape).astype(np.float32)
    b = np.clip(a + rng.normal(0, 0.08, shape), 0, 1).astype(np.float32)
    return a, b


@pytest.mark.parametrize("border", [0, 4])
def test_psnr_matches_skimage_joint_rgb(border):
    a, b = _pair()
    crop = (slice(border, -border or None),) * 2
    want = peak_signal_noise_ratio(a[crop], b[crop], data_range=1.0)
    assert metrics.psnr(a, b, border=border) == pytest.approx(want, abs=1e-4)
    a8, b8 = (np.round(x * 255).astype(np.uint8) for x in (a, b))
    want8 = peak_signal_noise_ratio(a8, b8, data_range=255)
    assert metrics.psnr(a8, b8, data_range=255) == pytest.approx(want8, abs=1e-4)


@pytest.mark.parametrize("border", [0, 4])
def test_ssim_matches_skimage_defaults(border):
    a, b = _pair(1)
    crop = (slice(border, -border or None),) * 2
    want = structural_similarity(a[crop], b[crop], channel_axis=-1, data_range=1.0)
    assert metrics.ssim(a, b, border=border) == pytest.approx(want, abs=1e-5)
    assert metrics.ssim(a, a) == pytest.approx(1.0, abs=1e-6)


def test_ssim_on_a_real_photo_pair():
    photo = data.astronaut()[::4, ::4].astype(np.float64)
    darker = np.clip(photo * 0.6 + 10, 0, 255)
    want = structural_similarity(photo, darker, channel_axis=-1, data_range=255)
    assert metrics.ssim(photo, darker, data_range=255) == pytest.approx(want, abs=1e-4)


def test_metric_input_errors():
    with pytest.raises(ValueError, match="one shape"):
        metrics.psnr(np.zeros((8, 8, 3)), np.zeros((8, 9, 3)))
    with pytest.raises(ValueError, match="at least 7"):
        metrics.ssim(np.zeros((6, 30, 3)), np.zeros((6, 30, 3)))


def test_patch_statistics_match_colorsys():
    rng = np.random.default_rng(2)
    patches = rng.uniform(-0.05, 1.05, (3, 6, 5, 3)).astype(np.float32)
    patches[0, 0, 0] = [0.3, 0.3, 0.3]  # grey
    patches[0, 0, 1] = [1.0, 1.0, 1.0]  # white
    patches[0, 0, 2] = [0.0, 0.0, 0.0]  # black
    got = np.asarray(metrics.patch_statistics(patches))
    clipped = np.clip(patches.astype(np.float64), 0, 1)
    lum = clipped @ np.array([0.27, 0.67, 0.06])
    sat = np.array(
        [[[colorsys.rgb_to_hls(*px)[2] for px in row] for row in patch] for patch in clipped]
    )
    want = np.stack([lum.mean((1, 2)), 2 * lum.std((1, 2)), sat.mean((1, 2))], axis=-1)
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_histogram_intersection_matches_numpy():
    rng = np.random.default_rng(3)
    a = rng.uniform(0, 1, (64, 3))
    b = rng.beta(2, 5, (48, 3))
    b[0] = 1.0  # the right edge belongs to the last bin
    want = [
        np.minimum(
            np.histogram(a[:, k], 32, (0, 1))[0] / 64, np.histogram(b[:, k], 32, (0, 1))[0] / 48
        ).sum()
        for k in range(3)
    ]
    np.testing.assert_allclose(metrics.histogram_intersection(a, b), want, atol=1e-6)
    np.testing.assert_array_equal(metrics.histogram_intersection(a, a), 1.0)  # exactly
    want_equal_sizes = [
        np.minimum(
            np.histogram(a[:48, k], 32, (0, 1))[0], np.histogram(b[:, k], 32, (0, 1))[0]
        ).sum()
        / 48
        for k in range(3)
    ]
    np.testing.assert_allclose(
        metrics.histogram_intersection(a[:48], b), want_equal_sizes, atol=1e-7
    )


def test_area_resize_is_exact_area_averaging():
    # Exact area averaging (OpenCV's INTER_AREA): upsample 300 -> 1200 by repetition, then take
    # the mean of each 15×15 block (1200 = 80 × 15). Pillow's BOX rounds window bounds instead.
    photo = data.coffee()[:300, 100:400].astype(np.float64)
    fine = photo.repeat(4, axis=0).repeat(4, axis=1)
    want = fine.reshape(80, 15, 80, 15, 3).mean(axis=(1, 3))
    m = metrics._area_resize_matrix(300, 80)
    got = np.einsum("ij,jkc,lk->ilc", m, photo.astype(np.float32), m)
    np.testing.assert_allclose(got, want, atol=1e-3)


def test_sample_patches_shapes_determinism_and_content():
    photo = data.chelsea().astype(np.float32) / 255  # 300×451
    key = jax.random.key(0)
    patches = np.asarray(metrics.sample_patches(photo, key=key))
    assert patches.shape == (16, 64, 64, 3)
    np.testing.assert_array_equal(patches, metrics.sample_patches(photo, key=key))
    assert not np.allclose(patches, metrics.sample_patches(photo, key=jax.random.key(1)))
    # Area resampling keeps values inside the image's range and near its mean brightness.
    assert patches.min() >= photo.min() - 1e-6 and patches.max() <= photo.max() + 1e-6
    assert abs(patches.mean() - photo.mean()) < 0.15
