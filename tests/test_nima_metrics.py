"""NIMA's EMD loss and the AVA metrics against plain-python / numpy references."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from common import nima_metrics


def _emd_loop(p, q, r=2.0):
    """EMD of two distributions, written out: cumulative sums by hand."""
    cp = cq = 0.0
    total = 0.0
    for pk, qk in zip(p, q, strict=True):
        cp += pk
        cq += qk
        total += abs(cp - cq) ** r
    return (total / len(p)) ** (1.0 / r)


def _pearson(x, y):
    n = len(x)
    mx, my = sum(x) / n, sum(y) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True))
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    return sxy / math.sqrt(sxx * syy)


def _ranks(x):
    """1-based average ranks, by counting: rank = #smaller + (#equal + 1) / 2."""
    return [sum(v < a for v in x) + (sum(v == a for v in x) + 1) / 2 for a in x]


def _dists(n, seed):
    rng = np.random.default_rng(seed)
    raw = rng.gamma(1.0, size=(n, 10))
    return (raw / raw.sum(-1, keepdims=True)).astype(np.float32)


def test_emd_matches_a_direct_loop():
    p, q = _dists(6, 0), _dists(6, 1)
    expected = [_emd_loop(a, b) for a, b in zip(p.astype(float), q.astype(float), strict=True)]
    np.testing.assert_allclose(nima_metrics.emd(p, q), expected, rtol=1e-5)
    np.testing.assert_allclose(nima_metrics.emd_loss(p, q), np.mean(expected), rtol=1e-5)
    # r = 1 too, and a known value: all mass at score 1 vs all at 10 differs in 9 of 10 CDFs.
    np.testing.assert_allclose(
        nima_metrics.emd(p, q, r=1.0),
        [_emd_loop(a, b, 1.0) for a, b in zip(p, q, strict=True)],
        rtol=1e-5,
    )
    one, ten = jax.nn.one_hot(0, 10), jax.nn.one_hot(9, 10)
    np.testing.assert_allclose(nima_metrics.emd(one, ten), math.sqrt(0.9), rtol=1e-6)


def test_emd_is_zero_with_a_finite_gradient_at_equal_distributions():
    p = jnp.asarray(_dists(3, 2))
    assert float(nima_metrics.emd_loss(p, p)) == 0.0
    grad = jax.grad(lambda x: nima_metrics.emd_loss(x, p))(p)
    assert np.all(np.isfinite(grad))
    assert np.isnan(float(nima_metrics.emd_loss(p.at[0, 0].set(jnp.nan), p)))  # NaN stays NaN
    # Away from zero the gradient equals a finite difference.
    q = jnp.asarray(_dists(3, 3))
    direction = jnp.asarray(np.random.default_rng(4).normal(size=q.shape), jnp.float32)
    g = jax.grad(lambda x: nima_metrics.emd_loss(x, p))(q)
    eps = 1e-3
    fd = (
        nima_metrics.emd_loss(q + eps * direction, p)
        - nima_metrics.emd_loss(q - eps * direction, p)
    ) / (2 * eps)
    np.testing.assert_allclose(jnp.sum(g * direction), fd, rtol=2e-2)
    jitted = jax.jit(nima_metrics.emd_loss)(q, p)
    np.testing.assert_allclose(jitted, nima_metrics.emd_loss(q, p), rtol=1e-6)


def test_lcc_and_srcc_match_plain_python_with_ties():
    rng = np.random.default_rng(5)
    x = rng.normal(size=30)
    y = 0.6 * x + rng.normal(size=30)
    # Ties in both: rounded values.
    xt, yt = np.round(x, 0), np.round(y, 0)
    for a, b in ((x, y), (xt, yt)):
        a, b = a.astype(np.float32), b.astype(np.float32)
        al, bl = [float(v) for v in a], [float(v) for v in b]
        np.testing.assert_allclose(nima_metrics.lcc(a, b), _pearson(al, bl), rtol=1e-5)
        np.testing.assert_allclose(
            nima_metrics.average_ranks(a), _ranks(al), rtol=0, atol=0
        )  # exact halves
        np.testing.assert_allclose(
            nima_metrics.srcc(a, b), _pearson(_ranks(al), _ranks(bl)), rtol=1e-5
        )
    assert len(set(np.asarray(xt).tolist())) < len(xt)  # the tie case really has ties
    np.testing.assert_allclose(nima_metrics.average_ranks([3.0, 1.0, 3.0, 2.0]), [3.5, 1, 3.5, 2])
    # Monotone but non-linear: SRCC 1, LCC below 1.
    z = np.linspace(0, 3, 20)
    assert float(nima_metrics.srcc(z, np.exp(z))) == pytest.approx(1.0)
    assert float(nima_metrics.lcc(z, np.exp(z))) < 0.95


def test_binary_accuracy_threshold_is_strictly_above_five():
    pred = np.array([5.0, 5.01, 4.2, 6.0])
    true = np.array([4.9, 5.5, 5.0, 4.0])
    # 5.0 is "low" (not > 5): agree, agree, agree (both low), disagree.
    assert float(nima_metrics.binary_accuracy(pred, true)) == pytest.approx(0.75)
    assert float(nima_metrics.binary_accuracy(true, true)) == 1.0
