"""PIEA's eight differentiable photo filters (after EXPOSURE, Hu et al. 2018).

Every filter is a pure `jax.numpy` function of ONE image and its *physical* parameters:

    image: float array (H, W, 3), RGB, nominally in [0, 1] (values slightly outside are allowed
           and are not clipped unless the formula says so);
    returns: float array (H, W, 3), same dtype.

Batch them with `jax.vmap`; there is no Python control flow on values, so `jit`, `vmap` and
`grad` all work. Formulas follow `spec/piea.md` §3; the mapping from unconstrained raw
variables to these physical values lives in `piea_jax.params`.

Every clamp (the curves', contrast's L, saturation's min(x, 1), gamma's floor, and the
enhancer's final clip) goes through `clip_passing_bounds`: the whole gradient for a value
exactly on a bound, none strictly outside (spec/piea.md §2), as EXPOSURE's `tf.clip_by_value`
and `torch.clamp` do.
"""

import jax
import jax.numpy as jnp

# EXPOSURE's luminance (0.27 R + 0.67 G + 0.06 B) lives in `common.color`, shared with the
# metrics; both names stay part of this module's API.
from common.color import LUMINANCE_WEIGHTS, luminance  # noqa: F401

# Number of equal segments of the piecewise-linear tone and colour curves.
CURVE_SEGMENTS = 8

# Floor of the gamma filter: keeps x**g and its gradient finite at x = 0.
GAMMA_FLOOR = 1e-3


def clip_passing_bounds(x, lo=None, hi=None):
    """clip(x, lo, hi) whose gradient is 1 on [lo, hi], bounds included, and 0 strictly outside.

    Either bound may be None (one-sided). Values equal `jnp.clip`'s (NaN stays NaN). The
    gradient is the rule of spec/piea.md §2 (as `tf.clip_by_value` and `torch.clamp`):
    `jnp.clip`, `jnp.minimum` and `jnp.maximum` pass only half the gradient at a tie, and
    PIEA's start (+1 EV) puts many highlights exactly on 1.0 after the tone curve.
    """
    # `where` selects: a value on the bound takes the `x` branch, so its gradient passes whole.
    if lo is not None:
        x = jnp.where(x < lo, lo, x)
    if hi is not None:
        x = jnp.where(x > hi, hi, x)
    return x


def exposure(image, ev):
    """Exposure in stops: x · 2^ev. Identity at ev = 0."""
    return image * jnp.exp2(ev)


def gamma(image, g):
    """Gamma: max(x, 1e-3)^g, g > 0. Identity at g = 1 up to the 1e-3 floor.

    The floor follows the clamp rule of `clip_passing_bounds`: x exactly 1e-3 gets the whole
    gradient (as EXPOSURE's `tf.maximum`, whose gradient goes to x at a tie, and
    `torch.clamp(x, min=1e-3)`), x below it none.
    """
    # exp(g · log m) rather than m ** g: its gradients reuse the output (g · y / m, y · log m)
    # instead of evaluating a second power.
    return jnp.exp(g * jnp.log(clip_passing_bounds(image, lo=GAMMA_FLOOR)))


def white_balance(image, gains):
    """Per-channel gains (3,), normalised to keep luminance: x_c · gains_c / (1e-5 + lum(gains)).

    Identity at gains = (1, 1, 1) (up to the 1e-5 guard).
    """
    gains = jnp.asarray(gains)
    return image * (gains / (1e-5 + luminance(gains)))


def _channel_max_min(c):
    """Per-pixel max and min over the 3 channels, as (..., 1) arrays.

    Pairwise extrema of channel slices, not `max(axis=-1)`: XLA fuses them with their
    neighbours, and their gradients are selects rather than reductions with tie masks.
    """
    r, g, b = c[..., 0], c[..., 1], c[..., 2]
    v = jnp.maximum(jnp.maximum(r, g), b)
    m = jnp.minimum(jnp.minimum(r, g), b)
    return v[..., None], m[..., None]


def saturation(image, s):
    """Signed Saturation+ strength s: x + s · (F − c), c = min(x, 1), F = boosted c.

    F is EXPOSURE's "Saturation+" colour: c's hue and HSV value V = max(c), with the HSV
    saturation S = (V − min c)/V raised to S' = S + (1 − S) · k, k = 0.8 (0.5 − |0.5 − V|).
    At fixed hue and value V − c scales with S, so F = V − (S'/S)(V − c), which simplifies to
    F − c = −k · min(c) · (V − c) / (V − min c). Greys (V = min c, black included) stay.

    At s = 1 (and x ≤ 1) this is EXPOSURE's filter at full strength; s < 0 desaturates away
    from the boosted colour; s = 0 is the identity. Highlights are clamped only inside (F − c).
    Negative inputs are not expected (no filter before it produces them). The clamp min(x, 1)
    passes the whole gradient at x = 1 and none above (`clip_passing_bounds`).
    """
    c = clip_passing_bounds(image, hi=1.0)
    v, m = _channel_max_min(c)
    chroma = v - m
    k = 0.8 * (0.5 - jnp.abs(0.5 - v))
    # Greys divide by +inf: value 0 and gradient 0, never NaN (a 0/0 would poison grad).
    m_over_chroma = m / jnp.where(chroma > 0, chroma, jnp.inf)
    return image - (s * k * m_over_chroma) * (v - c)


def _curve(x, slopes):
    """Piecewise-linear monotone curves on [0, 1] with K equal segments and the given slopes.

    T(x) = (K / Σ t) Σ_i t_i · clip(x − i/K, 0, 1/K) (spec/piea.md §3), evaluated in O(1) per
    value: segment index from x, cumulative slope sum before it, one multiply-add (the literal
    sum would touch every value K times, forward and backward). T(x ≤ 0) = 0 and T(x ≥ 1) = 1
    exactly. `slopes` is (K,) for one curve on every value, or (C, K) for one curve per
    channel of x (..., C). Only slope ratios matter.

    The gradient in x is the literal sum's under the clamp rule of spec/piea.md §2 (each clip
    passes the whole gradient on its bounds, none outside): t_i K/Σt inside segment i, t_0 K/Σt
    at x = 0, t_{K−1} K/Σt at x = 1, 0 outside [0, 1], and (t_{i−1} + t_i) K/Σt at an interior
    knot x = i/K, where segment i − 1 sits on its upper bound and segment i on its lower one.
    """
    num_segments = slopes.shape[-1]
    normalised = slopes / jnp.sum(slopes, axis=-1, keepdims=True)
    before = jnp.cumsum(normalised, axis=-1) - normalised
    # The slope of the segment below each knot (0 below the first): its term t_{i−1} · frac is 0
    # at the knot, so it adds the literal form's second gradient there and changes no value. No
    # gradient reaches the slopes through it either (frac = 0), so it is held constant for AD.
    below = jnp.concatenate([jnp.zeros_like(normalised[..., :1]), normalised[..., :-1]], axis=-1)
    below = jax.lax.stop_gradient(below)
    u = clip_passing_bounds(x * num_segments, 0.0, num_segments)
    segment = jnp.minimum(jnp.floor(u), num_segments - 1)
    frac = u - segment
    if slopes.ndim == 2:  # one table per channel, flattened: index = channel · K + segment
        segment = segment + num_segments * jnp.arange(slopes.shape[0], dtype=x.dtype)
    index = segment.astype(jnp.int32)
    slope = normalised.reshape(-1)[index] + jnp.where(frac == 0, below.reshape(-1)[index], 0.0)
    return before.reshape(-1)[index] + slope * frac


def tone_curve(image, slopes):
    """One piecewise-linear curve (8 slopes > 0) applied to R, G and B alike.

    Output is in [0, 1] by construction (the curve clamps). Identity when all slopes are equal.
    """
    return _curve(image, jnp.asarray(slopes))


def contrast(image, a):
    """Contrast strength a: x + a · (E − x), E = x · L' / (L + 1e-6), L = clip(lum(x), 0, 1),
    L' = (1 − cos(π L)) / 2. a < 0 lowers contrast; a = 0 is the identity.

    Computed as x · (1 + a · (L'/(L + 1e-6) − 1)), one per-pixel factor, which XLA fuses into
    a single pass forward and backward. L's clamp passes the whole gradient at lum 0 and 1 and
    none outside (`clip_passing_bounds`).
    """
    lum = clip_passing_bounds(luminance(image), 0.0, 1.0)
    ratio = 0.5 * (1.0 - jnp.cos(jnp.pi * lum)) / (lum + 1e-6)
    return image * (1.0 + a * (ratio - 1.0))[..., None]


def black_and_white(image, b):
    """Blend towards grey: x + b · (lum(x) − x), luminance unclamped. b = 1 is grey, 0 identity."""
    return image + b * (luminance(image)[..., None] - image)


def color_curve(image, slopes):
    """Per-channel piecewise-linear curves: channel k uses slopes[k] (shape (3, 8), > 0).

    Output is in [0, 1] by construction. Identity when each row is constant.
    """
    return _curve(image, jnp.asarray(slopes))
