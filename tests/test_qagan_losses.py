"""QAGAN losses against the spec's formulas, written out independently in numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qagan_jax import losses


def _relu(x):
    return np.maximum(x, 0.0)


def _rahinge_d_ref(r, f, scale=0.5):
    return scale * (np.mean(_relu(1 - (r - f.mean()))) + np.mean(_relu(1 + (f - r.mean()))))


def _rahinge_g_ref(r, f, scale=0.5):
    return scale * (np.mean(_relu(1 + (r - f.mean()))) + np.mean(_relu(1 - (f - r.mean()))))


@pytest.fixture
def logits():
    rng = np.random.default_rng(0)
    # Two heads' worth of shapes; real and fake may differ in batch size.
    r = np.tanh(rng.normal(0, 1.5, (3, 4, 4, 1))).astype(np.float32)
    f = np.tanh(rng.normal(0.3, 1.5, (2, 4, 4, 1))).astype(np.float32)
    return r, f


@pytest.mark.parametrize("scale", [0.5, 1.0])
def test_rahinge_matches_formula(logits, scale):
    r, f = logits
    np.testing.assert_allclose(
        losses.rahinge_d(r, f, scale=scale), _rahinge_d_ref(r, f, scale), rtol=1e-6
    )
    np.testing.assert_allclose(
        losses.rahinge_g(r, f, scale=scale), _rahinge_g_ref(r, f, scale), rtol=1e-6
    )


def test_rahinge_default_is_half_scaled_and_known_values():
    r, f = jnp.ones((2, 3, 3, 1)), -jnp.ones((2, 3, 3, 1))
    # A perfectly separating discriminator: D loss 0, G loss 1/2 (3 + 3) = 3.
    assert float(losses.rahinge_d(r, f)) == 0.0
    assert float(losses.rahinge_g(r, f)) == pytest.approx(3.0)
    # Indistinguishable logits: both losses 1/2 (1 + 1) = 1.
    z = jnp.zeros((2, 3, 3, 1))
    assert float(losses.rahinge_d(z, z)) == pytest.approx(1.0)
    assert float(losses.rahinge_g(z, z)) == pytest.approx(1.0)


def test_multiscale_is_sum_over_heads(logits):
    r, f = logits
    r2, f2 = r[:, :2, :2] * 0.5, f[:, :2, :2] * 0.5
    want = _rahinge_d_ref(r, f) + _rahinge_d_ref(r2, f2)
    np.testing.assert_allclose(losses.multiscale_rahinge_d([r, r2], [f, f2]), want, rtol=1e-6)
    want_g = _rahinge_g_ref(r, f) + _rahinge_g_ref(r2, f2)
    np.testing.assert_allclose(losses.multiscale_rahinge_g([r, r2], [f, f2]), want_g, rtol=1e-6)
    with pytest.raises(ValueError):
        losses.multiscale_rahinge_d([r], [f, f2])


def _feats(seed):
    rng = np.random.default_rng(seed)
    shapes = {"relu1_1": (2, 16, 16, 4), "relu2_1": (2, 8, 8, 8), "relu3_1": (2, 4, 4, 16),
              "relu4_1": (2, 2, 2, 32), "relu5_1": (2, 1, 1, 32)}  # fmt: skip
    return {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}


def test_cycle_loss_is_mean_over_taps_of_mse():
    a, b = _feats(1), _feats(2)
    want = np.mean([np.mean((a[k] - b[k]) ** 2) for k in a])
    np.testing.assert_allclose(losses.cycle_loss(a, b), want, rtol=1e-6)
    assert float(losses.cycle_loss(a, a)) == 0.0


def test_cycle_loss_l2_option_and_bad_taps():
    a, b = _feats(1), _feats(2)
    want = np.mean([np.mean(np.linalg.norm((a[k] - b[k]).reshape(2, -1), axis=1)) for k in a])
    l2 = jax.jit(lambda a, b: losses.cycle_loss(a, b, distance="l2"))
    np.testing.assert_allclose(l2(a, b), want, rtol=1e-5)
    g = jax.jit(jax.grad(lambda x: l2(x, x)))(a)
    assert all(np.isfinite(v).all() for v in jax.tree.leaves(g))  # finite at a perfect cycle
    with pytest.raises(ValueError, match="taps differ"):
        losses.cycle_loss(a, {k: v for k, v in b.items() if k != "relu5_1"})


def test_generator_loss_and_jit_equals_eager(logits):
    r, f = logits
    assert float(losses.generator_loss(1.0, 2.0, 0.5, lambda_cc=10.0)) == 8.0
    jitted = jax.jit(losses.rahinge_g)(r, f)
    np.testing.assert_allclose(jitted, losses.rahinge_g(r, f), rtol=1e-6)
    grad_f = jax.grad(losses.rahinge_g, argnums=1)(r, f)
    assert np.isfinite(grad_f).all() and np.abs(grad_f).sum() > 0
