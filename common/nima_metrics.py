"""NIMA's loss and its AVA evaluation metrics (Talebi & Milanfar, 2018), as pure jax functions.

* `emd(p, q)` — the Earth Mover's Distance between two score distributions over the ordered
  scores 1..10, with r = 2 on the cumulative distributions: per sample
  (1/N Σ_k |CDF_p(k) − CDF_q(k)|²)^½, N = 10; `emd_loss` averages it over the batch (the NIMA
  loss; the paper's AVA table reports this mean).
* `lcc(x, y)` — Pearson's linear correlation of two score vectors (e.g. predicted and
  ground-truth mean scores).
* `srcc(x, y)` — Spearman's rank correlation: Pearson's correlation of the ranks, ties given
  their average rank (as scipy.stats.spearmanr).
* `binary_accuracy(pred, true)` — the share of images put on the right side of the threshold 5:
  a mean score strictly above 5 is "high quality" (> 5, not ≥ 5; the NIMA paper's AVA
  two-class split at 5).

All take and return `jax.Array`s (numpy arrays accepted), work under `jit` and have no
value-dependent shapes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# Mean scores strictly above this are "high quality" in the binary accuracy.
ACCURACY_THRESHOLD = 5.0


def emd(p, q, *, r: float = 2.0) -> jax.Array:
    """Per-sample EMD of (..., K) distributions over K ordered scores -> (...).

    (1/K Σ_k |CDF_p(k) − CDF_q(k)|^r)^(1/r), the cumulative sums taken along the last axis.
    Inputs are not renormalised. At r = 2 the gradient of the square root at a zero distance
    is taken as zero (a `where` guard), so identical distributions give a finite gradient.
    """
    p, q = jnp.asarray(p), jnp.asarray(q)
    diff = jnp.abs(jnp.cumsum(p, axis=-1) - jnp.cumsum(q, axis=-1))
    mean_power = jnp.mean(diff**r, axis=-1)
    # Guard on == 0, not > 0: a NaN must stay NaN (training stops on it), not become 0.
    zero = mean_power == 0
    return jnp.where(zero, 0.0, jnp.where(zero, 1.0, mean_power) ** (1.0 / r))


def emd_loss(p, q, *, r: float = 2.0) -> jax.Array:
    """The NIMA loss: `emd(p, q, r=r)` averaged over the batch (a scalar)."""
    return jnp.mean(emd(p, q, r=r))


def lcc(x, y) -> jax.Array:
    """Pearson's linear correlation coefficient of two (N,) vectors (NaN if one is constant)."""
    x, y = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)
    dx, dy = x - jnp.mean(x), y - jnp.mean(y)
    return jnp.sum(dx * dy) / jnp.sqrt(jnp.sum(dx * dx) * jnp.sum(dy * dy))


def average_ranks(x) -> jax.Array:
    """1-based ranks of an (N,) vector, tied values sharing their average rank.

    The values equal to x_i occupy sorted positions [lo, hi) (`searchsorted` left and right),
    so their average 1-based rank is (lo + hi + 1) / 2.
    """
    x = jnp.asarray(x)
    ordered = jnp.sort(x)
    lo = jnp.searchsorted(ordered, x, side="left")
    hi = jnp.searchsorted(ordered, x, side="right")
    return (lo + hi + 1).astype(jnp.float32) / 2.0


def srcc(x, y) -> jax.Array:
    """Spearman's rank correlation of two (N,) vectors (ties: average ranks)."""
    return lcc(average_ranks(x), average_ranks(y))


def binary_accuracy(pred_mean, true_mean, *, threshold: float = ACCURACY_THRESHOLD) -> jax.Array:
    """Share of (N,) predicted mean scores on the same side of `threshold` as the true ones
    (a mean strictly above the threshold is "high")."""
    pred_high = jnp.asarray(pred_mean) > threshold
    true_high = jnp.asarray(true_mean) > threshold
    return jnp.mean((pred_high == true_high).astype(jnp.float32))
