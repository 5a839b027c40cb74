"""QAGAN losses as pure `jax.numpy` functions (spec/qagan.md section 6).

Relativistic average hinge (RaHinge) per discriminator head, its multi-scale sum, the VGG
feature cycle-consistency loss and the total generator loss. Means run over every element of
their arguments (batch and positions), so the functions are independent of how the batch is
sharded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp


def rahinge_d(real_logits: jax.Array, fake_logits: jax.Array, *, scale: float = 0.5) -> jax.Array:
    """Discriminator RaHinge loss for one head.

    `scale * [mean relu(1 - (r - mean f)) + mean relu(1 + (f - mean r))]`, r = real_logits,
    f = fake_logits (any equal or different shapes; means over all elements). `scale=0.5` is
    the authors' UEGAN form (the default); 1.0 is the paper's Eq. 6. Returns a scalar.
    """
    r, f = jnp.asarray(real_logits), jnp.asarray(fake_logits)
    real_term = jnp.mean(jax.nn.relu(1.0 - (r - jnp.mean(f))))
    fake_term = jnp.mean(jax.nn.relu(1.0 + (f - jnp.mean(r))))
    return scale * (real_term + fake_term)


def rahinge_g(real_logits: jax.Array, fake_logits: jax.Array, *, scale: float = 0.5) -> jax.Array:
    """Generator RaHinge loss for one head (the roles of real and fake swapped).

    `scale * [mean relu(1 + (r - mean f)) + mean relu(1 - (f - mean r))]`. Returns a scalar.
    """
    r, f = jnp.asarray(real_logits), jnp.asarray(fake_logits)
    real_term = jnp.mean(jax.nn.relu(1.0 + (r - jnp.mean(f))))
    fake_term = jnp.mean(jax.nn.relu(1.0 - (f - jnp.mean(r))))
    return scale * (real_term + fake_term)


def multiscale_rahinge_d(
    real_heads: Sequence[jax.Array], fake_heads: Sequence[jax.Array], *, scale: float = 0.5
) -> jax.Array:
    """Sum of `rahinge_d` over the discriminator's heads (paired by position)."""
    _check_heads(real_heads, fake_heads)
    return sum(rahinge_d(r, f, scale=scale) for r, f in zip(real_heads, fake_heads, strict=True))


def multiscale_rahinge_g(
    real_heads: Sequence[jax.Array], fake_heads: Sequence[jax.Array], *, scale: float = 0.5
) -> jax.Array:
    """Sum of `rahinge_g` over the discriminator's heads (paired by position)."""
    _check_heads(real_heads, fake_heads)
    return sum(rahinge_g(r, f, scale=scale) for r, f in zip(real_heads, fake_heads, strict=True))


def _check_heads(real_heads, fake_heads):
    if len(real_heads) != len(fake_heads) or not real_heads:
        raise ValueError(f"need matching non-empty heads, got {len(real_heads)} and "
                         f"{len(fake_heads)}")  # fmt: skip


def cycle_loss(
    feats_a: Mapping[str, jax.Array], feats_b: Mapping[str, jax.Array], *, distance: str = "mse"
) -> jax.Array:
    """Feature cycle-consistency: mean over the taps of a per-tap distance.

    `feats_a`, `feats_b`: dicts with the same keys (QAGAN: `relu1_1 ... relu5_1`), arrays
    (N, H, W, C) of equal shapes per key. `distance="mse"` (default [choice]) is the mean
    squared difference over all elements; `"l2"` is the unsquared l2 norm of each sample's
    difference, averaged over the batch (paper Eq. 8 as printed). Returns a scalar.
    """
    if set(feats_a) != set(feats_b) or not feats_a:
        raise ValueError(f"feature taps differ: {sorted(feats_a)} vs {sorted(feats_b)}")
    per_tap = []
    for name in sorted(feats_a):
        diff = jnp.asarray(feats_a[name]) - jnp.asarray(feats_b[name])
        if distance == "mse":
            per_tap.append(jnp.mean(jnp.square(diff)))
        elif distance == "l2":
            sq = jnp.sum(jnp.square(diff.reshape(diff.shape[0], -1)), axis=1)
            # sqrt'(0) is infinite; the tiny floor keeps the gradient finite at a perfect cycle.
            per_tap.append(jnp.mean(jnp.sqrt(sq + 1e-12)))
        else:
            raise ValueError(f"unknown cycle distance {distance!r}: mse | l2")
    return jnp.mean(jnp.stack(per_tap))


def generator_loss(
    adv_h: jax.Array, adv_l: jax.Array, cycle: jax.Array, *, lambda_cc: float
) -> jax.Array:
    """Total generator loss, paper Eq. 9: `adv_h + adv_l + lambda_cc * cycle`.

    `adv_h`, `adv_l`: multi-scale generator RaHinge losses against D_H and D_L; `cycle`: the
    sum of the two domains' `cycle_loss` terms (spec L_cc).
    """
    return adv_h + adv_l + lambda_cc * cycle
