"""PIEA's eight differentiable photo filters (after EXPOSURE, Hu et al. 2018).

Every filter is a pure `jax.numpy` function of ONE image and its *physical* parameters:

    image: float array (H, W, 3), RGB, nominally in [0, 1] (values slightly outside are allowed
           and are not clipped unless the formula says so);
    returns: float array (H, W, 3), same dtype.

Batch them with `jax.vmap`; there is no Python control flow on values, so `jit`, `vmap` and
`grad` all work. Formulas follow `spec/piea.md` §3; the mapping from unconstrained raw
variables to these physical values lives in `piea_jax.params`.
"""

import jax.numpy as jnp

# EXPOSURE's luminance weights (not Rec. 601/709), used by every filter that needs luminance.
LUMINANCE_WEIGHTS = (0.27, 0.67, 0.06)

# Number of equal segments of the piecewise-linear tone and colour curves.
CURVE_SEGMENTS = 8

# Floor of the gamma filter: keeps x**g and its gradient finite at x = 0.
GAMMA_FLOOR = 1e-3


def luminance(image):
    """EXPOSURE luminance 0.27 R + 0.67 G + 0.06 B of an (..., 3) array -> (...)."""
    image = jnp.asarray(image)
    # An explicit weighted sum, not a dot: XLA fuses it with the neighbouring elementwise ops.
    r, g, b = LUMINANCE_WEIGHTS
    return r * image[..., 0] + g * image[..., 1] + b * image[..., 2]


def exposure(image, ev):
    """Exposure in stops: x · 2^ev. Identity at ev = 0."""
    return image * jnp.exp2(ev)


def gamma(image, g):
    """Gamma: max(x, 1e-3)^g, g > 0. Identity at g = 1 up to the 1e-3 floor."""
    return jnp.maximum(image, GAMMA_FLOOR) ** g


def white_balance(image, gains):
    """Per-channel gains (3,), normalised to keep luminance: x_c · gains_c / (1e-5 + lum(gains)).

    Identity at gains = (1, 1, 1) (up to the 1e-5 guard).
    """
    gains = jnp.asarray(gains)
    return image * (gains / (1e-5 + luminance(gains)))


def _hsv_saturation_boost(c):
    """EXPOSURE's "Saturation+" target colour F for colours c in [0, 1].

    HSV value V = max(c), saturation S = (V − min(c)) / V; the boosted saturation is
    S' = S + (1 − S)(0.5 − |0.5 − V|)·0.8, and F is the colour with c's hue and value and
    saturation S'. Since V − c scales linearly with S at fixed hue and value,
    F = V − (S'/S)(V − c) = c − (1 − S)·k·(V − c)/S with k = 0.8(0.5 − |0.5 − V|), and
    (V − c)/S = V(V − c)/(V − min c). Greys (V = min c, including black) give F = c.
    """
    v = jnp.max(c, axis=-1, keepdims=True)
    m = jnp.min(c, axis=-1, keepdims=True)
    chroma = v - m
    is_colour = chroma > 0
    # Double-where: the untaken branch must not produce inf/NaN, or its gradient poisons grad.
    safe_chroma = jnp.where(is_colour, chroma, 1.0)
    saturation_hsv = jnp.where(is_colour, chroma / jnp.where(is_colour, v, 1.0), 0.0)
    k = 0.8 * (0.5 - jnp.abs(0.5 - v))
    shift = (1.0 - saturation_hsv) * k * v * (v - c) / safe_chroma
    return c - jnp.where(is_colour, shift, 0.0)


def saturation(image, s):
    """Signed Saturation+ strength s: x + s · (F − c), c = min(x, 1), F = boosted c.

    At s = 1 (and x ≤ 1) this is EXPOSURE's filter at full strength; s < 0 desaturates
    away from the boosted colour; s = 0 is the identity. Highlights are clamped only inside
    (F − c). Negative inputs are not expected (no filter before it produces them).
    """
    c = jnp.minimum(image, 1.0)
    return image + s * (_hsv_saturation_boost(c) - c)


def _curve(x, slopes):
    """Piecewise-linear monotone curve on [0, 1] with equal segments and the given slopes.

    Equals T(x) = (K / Σ t) Σ_i t_i · clip(x − i/K, 0, 1/K) (spec/piea.md §3), evaluated in
    O(1) per value: segment index from x, cumulative slope sum up to it, one multiply-add.
    T(x ≤ 0) = 0 and T(x ≥ 1) = 1 exactly. `slopes` (K,) > 0; only their ratios matter.
    """
    num_segments = slopes.shape[-1]
    u = jnp.clip(x * num_segments, 0.0, num_segments)
    segment = jnp.minimum(jnp.floor(u), num_segments - 1).astype(jnp.int32)
    before = jnp.concatenate([jnp.zeros((1,), slopes.dtype), jnp.cumsum(slopes)[:-1]])
    value = before[segment] + slopes[segment] * (u - segment)
    return value / jnp.sum(slopes)


def tone_curve(image, slopes):
    """One piecewise-linear curve (8 slopes > 0) applied to R, G and B alike.

    Output is in [0, 1] by construction (the curve clamps). Identity when all slopes are equal.
    """
    return _curve(image, jnp.asarray(slopes))


def contrast(image, a):
    """Contrast strength a: x + a · (E − x), E = x · L' / (L + 1e-6), L = clip(lum(x), 0, 1),
    L' = (1 − cos(π L)) / 2. a < 0 lowers contrast; a = 0 is the identity."""
    lum = jnp.clip(luminance(image), 0.0, 1.0)[..., None]
    enhanced_lum = 0.5 * (1.0 - jnp.cos(jnp.pi * lum))
    enhanced = image * enhanced_lum / (lum + 1e-6)
    return image + a * (enhanced - image)


def black_and_white(image, b):
    """Blend towards grey: x + b · (lum(x) − x), luminance unclamped. b = 1 is grey, 0 identity."""
    return image + b * (luminance(image)[..., None] - image)


def color_curve(image, slopes):
    """Per-channel piecewise-linear curves: channel k uses slopes[k] (shape (3, 8), > 0).

    Output is in [0, 1] by construction. Identity when each row is constant.
    """
    slopes = jnp.asarray(slopes)
    channels = [_curve(image[..., k], slopes[k]) for k in range(3)]
    return jnp.stack(channels, axis=-1)
