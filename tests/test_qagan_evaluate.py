"""QAGAN evaluation: padding to a multiple of 16, G_H on any size, the protocol's averages."""

import jax
import numpy as np
import pytest

from common import metrics
from qagan_jax import config as qagan_config
from qagan_jax import evaluate, train

FAST_COMPILE = {"xla_backend_optimization_level": 0}


def _pairs(n=3, shape=(40, 56, 3), seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        label = rng.integers(0, 256, shape, dtype=np.uint8)
        image = (label * 0.5).astype(np.uint8)
        out.append({"id": f"a{i:04d}", "image": image, "label": label})
    return out


def test_pad_to_multiple_reflects_bottom_right_only():
    x = np.arange(2 * 5 * 7 * 1, dtype=np.float32).reshape(2, 5, 7, 1)
    y = evaluate.pad_to_multiple(x, 4)
    assert y.shape == (2, 8, 8, 1)
    np.testing.assert_array_equal(y[:, :5, :7], x)
    np.testing.assert_array_equal(y[:, 5, :7], x[:, 3])  # reflection without the edge row
    tiny = evaluate.pad_to_multiple(np.ones((1, 3, 3, 3), np.float32), 16)  # pad > size
    assert tiny.shape == (1, 16, 16, 3)


def test_evaluate_scores_and_baseline_against_direct_metrics():
    pairs = _pairs()
    identity = lambda images: np.asarray(images, np.float32) / 255.0  # noqa: E731
    result = evaluate.evaluate(identity, pairs, batch_size=2)
    assert result["n"] == 3
    expected_psnr = [metrics.psnr(p["image"] / 255.0, p["label"] / 255.0) for p in pairs]
    expected_ssim = [metrics.ssim(p["image"] / 255.0, p["label"] / 255.0, border=4) for p in pairs]
    np.testing.assert_allclose(result["input"]["psnr"], np.mean(expected_psnr), rtol=1e-6)
    np.testing.assert_allclose(result["input"]["psnr_n-1"], np.sum(expected_psnr) / 2, rtol=1e-6)
    np.testing.assert_allclose(result["input"]["ssim_border4"], np.mean(expected_ssim), rtol=1e-6)
    # The identity "enhancer" scores exactly like the input baseline.
    for key in ("psnr", "ssim", "psnr_border4", "ssim_border4_n-1"):
        assert result["enhanced"][key] == pytest.approx(result["input"][key], rel=1e-6)
    labels = {p["image"].tobytes(): p["label"] for p in pairs}
    oracle = lambda images: np.stack([labels[x.tobytes()] for x in images]) / 255.0  # noqa: E731
    perfect = evaluate.evaluate(oracle, pairs, batch_size=3)
    assert perfect["enhanced"]["ssim"] == pytest.approx(1.0)
    assert perfect["enhanced"]["psnr"] == float("inf")
    table = evaluate.format_table(result, title="test data")
    assert "22.59" in table and "0.8782" in table and "Input (this data)" in table


def test_headline_border_switch():
    pairs = _pairs(2)
    identity = lambda images: np.asarray(images, np.float32) / 255.0  # noqa: E731
    cropped = evaluate.evaluate(identity, pairs, border=4)
    assert cropped["input"]["psnr"] == cropped["input"]["psnr_border4"]
    with pytest.raises(ValueError):
        evaluate.evaluate(identity, pairs, border=3)


@pytest.fixture(scope="module")
def smoke_state():
    config = qagan_config.get_config("smoke")
    config.opt.steps_per_epoch = 2
    mesh = train.make_mesh(jax.devices()[:2])
    state = train.create_train_state(config, jax.random.key(0), mesh, compiler_options=FAST_COMPILE)
    return state, mesh


def test_enhancer_any_size_equals_padded_eval_step(smoke_state):
    state, mesh = smoke_state
    enhancer = evaluate.Enhancer(state, mesh, compiler_options=FAST_COMPILE)
    images = np.random.default_rng(0).integers(0, 256, (3, 20, 37, 3), dtype=np.uint8)
    out = enhancer(state, images)  # 3 images on 2 devices: padded batch, padded size
    assert out.shape == (3, 20, 37, 3) and out.dtype == np.float32
    assert 0.0 <= out.min() and out.max() <= 1.0
    padded = evaluate.pad_to_multiple(images.astype(np.float32) / 127.5 - 1.0)
    direct = np.asarray(train.eval_step(state, padded))[:, :20, :37]
    np.testing.assert_allclose(out, np.clip((direct + 1) / 2, 0, 1), atol=2e-5)
