"""PIEA filters against independent numpy references (spec/piea.md §3), plus jit/vmap/grad."""

import colorsys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import piea_jax
from piea_jax import filters

LUM = np.array([0.27, 0.67, 0.06])


# --- independent references: literal formulas in numpy, float64 -------------------------------


def ref_luminance(x):
    return x[..., 0] * 0.27 + x[..., 1] * 0.67 + x[..., 2] * 0.06


def ref_exposure(x, ev):
    return x * 2.0**ev


def ref_gamma(x, g):
    return np.maximum(x, 1e-3) ** g


def ref_white_balance(x, gains):
    gains = np.asarray(gains, np.float64)
    return x * gains / (1e-5 + gains @ LUM)


def ref_saturation(x, s):
    # Through Python's own HSV conversion: same hue and value, saturation S'.
    c = np.minimum(x, 1.0)
    boosted = np.empty_like(c)
    for idx in np.ndindex(c.shape[:-1]):
        h, sat, v = colorsys.rgb_to_hsv(*c[idx])
        sat2 = sat + (1 - sat) * (0.5 - abs(0.5 - v)) * 0.8
        # Greys have no hue; the spec leaves them unchanged (F = c where S = 0).
        boosted[idx] = colorsys.hsv_to_rgb(h, sat2, v) if sat > 0 else c[idx]
    return x + s * (boosted - c)


def ref_curve(x, t):
    t = np.asarray(t, np.float64)
    k = len(t)
    acc = sum(t[i] * np.clip(x - i / k, 0, 1 / k) for i in range(k))
    return k / t.sum() * acc


def ref_tone_curve(x, t):
    return ref_curve(x, t)


def ref_contrast(x, a):
    lum = np.clip(ref_luminance(x), 0, 1)[..., None]
    enhanced = x * ((1 - np.cos(np.pi * lum)) / 2) / (lum + 1e-6)
    return x + a * (enhanced - x)


def ref_black_and_white(x, b):
    return x + b * (ref_luminance(x)[..., None] - x)


def ref_color_curve(x, c):
    return np.stack([ref_curve(x[..., k], c[k]) for k in range(3)], axis=-1)


REFERENCES = {
    "exposure": ref_exposure,
    "gamma": ref_gamma,
    "white_balance": ref_white_balance,
    "saturation": ref_saturation,
    "tone_curve": ref_tone_curve,
    "contrast": ref_contrast,
    "black_and_white": ref_black_and_white,
    "color_curve": ref_color_curve,
}

# Non-trivial physical values per filter (several each), inside the §4 ranges.
CURVE_A = [0.6, 1.9, 1.0, 0.8, 1.5, 0.55, 1.2, 2.0]
CURVE_B = [2.0, 1.0, 0.5, 1.0, 1.3, 0.9, 0.7, 1.1]
COLOR_A = [[0.9 + 0.025 * i for i in range(8)], [1.1 - 0.02 * i for i in range(8)], [1.0] * 8]
PHYSICAL_CASES = {
    "exposure": [-2.3, 0.7, 1.45],
    "gamma": [0.4, 1 / 1.5, 2.7],
    "white_balance": [[1.0, 0.7, 1.5], [1.0, 1.3, 0.8]],
    "saturation": [-0.8, 0.5, 1.0],
    "tone_curve": [CURVE_A, CURVE_B],
    "contrast": [-0.9, 0.25, 1.0],
    "black_and_white": [-0.5, 0.3, 1.0],
    "color_curve": [COLOR_A],
}
IDENTITY = {
    "exposure": 0.0,
    "gamma": 1.0,
    "white_balance": [1.0, 1.0, 1.0],
    "saturation": 0.0,
    "tone_curve": [1.3] * 8,
    "contrast": 0.0,
    "black_and_white": 0.0,
    "color_curve": [[0.95] * 8, [1.0] * 8, [1.07] * 8],
}
CASES = [(name, p) for name, values in PHYSICAL_CASES.items() for p in values]


def make_image(seed=0, shape=(9, 11)):
    """Seeded image with exact zeros, exact greys, pure primaries and values slightly above 1."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.0, 1.05, size=(*shape, 3))
    x[0, 0] = 0.0  # black
    x[0, 1] = 0.5  # grey
    x[0, 2] = [1.0, 0.0, 0.0]  # primary
    x[0, 3] = [1.03, 1.02, 1.01]  # near-white above 1
    x[0, 4] = [0.0, 0.2, 0.9]
    x[1, 0] = [1.04, 0.3, 0.0]  # one channel above 1
    x[1, 1] = [0.125, 0.25, 0.375]  # exactly on curve knots
    return x.astype(np.float32)


@pytest.mark.parametrize("name,p", CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)])
def test_filter_matches_reference(name, p):
    x = make_image()
    got = np.asarray(getattr(filters, name)(jnp.asarray(x), jnp.asarray(p, jnp.float32)))
    want = REFERENCES[name](x.astype(np.float64), np.asarray(p, np.float64))
    assert got.shape == x.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=2e-6, rtol=2e-6)


def test_luminance_matches_reference():
    x = make_image()
    np.testing.assert_allclose(filters.luminance(x), ref_luminance(x), atol=1e-6)
    assert filters.luminance(x).shape == x.shape[:2]


@pytest.mark.parametrize("name", piea_jax.FILTER_ORDER)
def test_identity_at_neutral_parameters(name):
    x = make_image()
    if name == "gamma":
        x = np.maximum(x, 1e-3)  # the 1e-3 floor is part of the formula
    if name in ("tone_curve", "color_curve"):
        x = np.clip(x, 0.0, 1.0)  # the curves clamp by construction
    out = getattr(filters, name)(x, jnp.asarray(IDENTITY[name], jnp.float32))
    np.testing.assert_allclose(out, x, atol=2e-5)


def test_curves_clamp_outside_unit_interval():
    x = jnp.array([[[-0.2, 0.0, 1.0]], [[1.0, 1.3, 7.0]]], jnp.float32)
    out = filters.tone_curve(x, jnp.asarray(CURVE_A))
    np.testing.assert_array_equal(out, [[[0.0, 0.0, 1.0]], [[1.0, 1.0, 1.0]]])


def test_saturation_full_strength_is_exposures_filter():
    # At s = 1 and x <= 1 the output is the boosted colour itself (EXPOSURE's Saturation+).
    x = np.clip(make_image(), 0, 1)
    out = filters.saturation(x, 1.0)
    np.testing.assert_allclose(out, ref_saturation(x, 1.0), atol=2e-6)
    # ...which keeps HSV value and raises HSV saturation.
    np.testing.assert_allclose(np.max(out, -1), np.max(x, -1), atol=1e-6)


def test_saturation_leaves_greys_alone():
    greys = np.full((2, 3, 3), 0.37, np.float32)
    greys[0, 0] = 0.0
    np.testing.assert_allclose(filters.saturation(greys, 0.9), greys, atol=1e-7)


# --- jit, vmap, grad ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", piea_jax.FILTER_ORDER)
def test_jit_equals_eager(name):
    x = jnp.asarray(make_image())
    p = jnp.asarray(PHYSICAL_CASES[name][0], jnp.float32)
    f = getattr(filters, name)
    np.testing.assert_allclose(jax.jit(f)(x, p), f(x, p), atol=1e-6)


@pytest.mark.parametrize("name", piea_jax.FILTER_ORDER)
def test_vmap_over_per_image_params_equals_loop(name):
    images = jnp.stack([jnp.asarray(make_image(seed)) for seed in range(3)])
    values = PHYSICAL_CASES[name]
    params = jnp.asarray([values[i % len(values)] for i in range(3)], jnp.float32)
    f = getattr(filters, name)
    batched = jax.vmap(f)(images, params)
    looped = jnp.stack([f(images[i], params[i]) for i in range(3)])
    np.testing.assert_allclose(batched, looped, atol=1e-6)


def _raw_case(seed):
    """Raw parameters away from zero, so no gradient vanishes by symmetry."""
    keys = jax.random.split(jax.random.key(seed), len(piea_jax.RAW_SHAPES))
    return {
        name: 0.6 * jax.random.normal(k, shape, jnp.float64)
        for k, (name, shape) in zip(keys, piea_jax.RAW_SHAPES.items(), strict=True)
    }


@pytest.mark.parametrize("name", piea_jax.FILTER_ORDER)
def test_gradients_match_finite_differences(name):
    with jax.enable_x64(True):
        # The image gets kinks (0, 1, curve knots, greys); the parameters see smooth functions.
        kinky = jnp.asarray(make_image(3, (6, 7)), jnp.float64)
        # Kink-free image for the image gradient: values away from knots, 0, 1 and ties.
        rng = np.random.default_rng(4)
        knots = rng.integers(0, 8, (5, 6, 3)) / 8
        smooth = jnp.asarray(knots + rng.uniform(0.02, 0.105, knots.shape))
        raw = _raw_case(0)

        @jax.jit
        def loss(raw_value, image):
            physical = piea_jax.to_physical({**raw, name: raw_value})[name]
            out = getattr(filters, name)(image, physical)
            return jnp.sum(jnp.cos(3.0 * image[..., ::-1]) * out)

        check_grads(lambda r: loss(r, kinky), (raw[name],), order=1, eps=1e-6, atol=1e-6, rtol=1e-6)
        check_grads(lambda im: loss(raw[name], im), (smooth,), order=1, eps=1e-6, rtol=1e-6)
        g_raw, g_image = jax.grad(loss, argnums=(0, 1))(raw[name], kinky)
        assert np.all(np.isfinite(g_raw)) and np.all(np.isfinite(g_image))
        assert np.all(np.abs(g_raw) > 1e-8), f"{name}: a parameter gets no gradient: {g_raw}"


def test_chain_gradients_finite_and_nonzero_at_pieas_start():
    # Every raw parameter moves from PIEA's start on a real-looking image with 0s and >1 values.
    x = jnp.asarray(make_image(5, (16, 16)))
    weights = jax.random.normal(jax.random.key(2), x.shape)

    def loss(raw):
        return jnp.sum(weights * piea_jax.apply_filters(x, piea_jax.to_physical(raw)))

    grads = jax.jit(jax.grad(loss))(piea_jax.initial_raw_params())
    for name, g in grads.items():
        assert np.all(np.isfinite(g)), name
        assert np.all(np.abs(g) > 0), f"{name}: {g}"


# --- parameters and chain ----------------------------------------------------------------------


def test_initial_params_are_plus_one_ev_and_identity_elsewhere():
    raw = piea_jax.initial_raw_params()
    assert {k: v.shape for k, v in raw.items()} == piea_jax.RAW_SHAPES
    physical = piea_jax.to_physical(raw)
    np.testing.assert_allclose(physical["exposure"], 1.0, atol=1e-6)
    for name in piea_jax.FILTER_ORDER[1:]:
        x = np.clip(np.maximum(make_image(), 1e-3), 0, 1)
        out = piea_jax.FILTERS[name](x, physical[name])
        np.testing.assert_allclose(out, x, atol=2e-5, err_msg=name)
    x = np.clip(make_image(), 0.001, 0.5)
    np.testing.assert_allclose(piea_jax.apply_filters(x, physical), 2 * x, atol=2e-5)


def test_to_physical_ranges():
    big = {name: jnp.full(shape, 50.0) for name, shape in piea_jax.RAW_SHAPES.items()}
    small = {name: -v for name, v in big.items()}
    hi, lo = piea_jax.to_physical(big), piea_jax.to_physical(small)
    np.testing.assert_allclose(hi["exposure"], 3.5)
    np.testing.assert_allclose(lo["exposure"], -3.5)
    np.testing.assert_allclose([hi["gamma"], lo["gamma"]], [3.0, 1 / 3], rtol=1e-6)
    np.testing.assert_allclose(hi["white_balance"], [1, np.e**0.5, np.e**0.5], rtol=1e-6)
    np.testing.assert_allclose(lo["tone_curve"], 0.5)
    np.testing.assert_allclose(hi["color_curve"], 1.1)
    for name in ("saturation", "contrast", "black_and_white"):
        np.testing.assert_allclose([lo[name], hi[name]], [-1, 1])


def test_apply_filters_composes_in_order():
    x = make_image()
    physical = {name: jnp.asarray(PHYSICAL_CASES[name][0], jnp.float32) for name in IDENTITY}
    want = x.astype(np.float64)
    for name in piea_jax.FILTER_ORDER:
        want = REFERENCES[name](want, np.asarray(PHYSICAL_CASES[name][0], np.float64))
    np.testing.assert_allclose(piea_jax.apply_filters(x, physical), want, atol=1e-5)
    # A custom order applies only the named filters, in that order.
    order = ("contrast", "exposure")
    custom = ref_exposure(ref_contrast(x.astype(np.float64), -0.9), -2.3)
    np.testing.assert_allclose(piea_jax.apply_filters(x, physical, order), custom, atol=1e-6)
    with pytest.raises(ValueError, match="unknown filter"):
        piea_jax.apply_filters(x, physical, ("exposure", "vignette"))


def test_describe_lists_non_identity_filters_in_chain_order():
    physical = piea_jax.to_physical(piea_jax.initial_raw_params())
    assert piea_jax.describe(physical) == "Exposure +1.00 EV"
    physical = {
        **physical,
        "exposure": 1.45,
        "gamma": 1 / 1.5,
        "contrast": 0.25,
        "saturation": -0.3,
    }
    assert piea_jax.describe(physical) == (
        "Exposure +1.45 EV, Gamma 1/1.50, Saturation -0.30, Contrast +0.25"
    )
    physical = {**physical, "tone_curve": np.array([1, 1, 1, 1, 1, 1, 1.5, 0.5]) * 1.2}
    assert "Tone curve 1.00/1.00/1.00/1.00/1.00/1.00/1.50/0.50" in piea_jax.describe(physical)
    neutral = piea_jax.to_physical({k: jnp.zeros(s) for k, s in piea_jax.RAW_SHAPES.items()})
    assert piea_jax.describe(neutral) == "Identity (no change)"


def test_to_physical_passes_leading_batch_axes_through():
    raw = jax.tree.map(lambda a: jnp.stack([a, a + 0.3, a - 0.7]), piea_jax.initial_raw_params())
    batched, mapped = piea_jax.to_physical(raw), jax.vmap(piea_jax.to_physical)(raw)
    for name in piea_jax.FILTER_ORDER:
        np.testing.assert_allclose(batched[name], mapped[name], err_msg=name)


def test_describe_hides_changes_too_small_to_see():
    from piea_jax.strategy import VISIBLE_CHANGE

    physical = piea_jax.to_physical(piea_jax.initial_raw_params())
    tiny = np.array([0.99, 1.0, 1.01, 1.0, 0.995, 1.0, 1.005, 1.0])  # moves values < 1/255
    colour = np.ones((3, 8))
    colour[1] = [1, 1, 1, 1, 1.2, 0.8, 1, 1]  # green moves visibly, red and blue not at all
    physical = {**physical, "tone_curve": tiny, "color_curve": colour, "contrast": 0.004}
    text = piea_jax.describe(physical)
    assert text == "Exposure +1.00 EV, Colour curve G 1.00/1.00/1.00/1.00/1.20/0.80/1.00/1.00"
    # The threshold is on the change in values: an exposure just under it is hidden.
    hidden = float(np.log2(1 + 0.9 * VISIBLE_CHANGE))
    shown = float(np.log2(1 + 1.1 * VISIBLE_CHANGE))
    assert piea_jax.describe({"exposure": hidden}) == "Identity (no change)"
    assert piea_jax.describe({"exposure": shown}) == f"Exposure +{shown:.2f} EV"


# --- the gradient at a clamp bound (spec/piea.md §2) ------------------------------------------
# Every clamp passes the whole gradient for a value exactly on a bound (the gradient of the same
# expression without the clamp, i.e. the one-sided derivative from inside) and none strictly
# outside, as tf.clip_by_value and torch.clamp; jnp.clip passes half at a tie.


def test_clip_passing_bounds_values_and_gradients():
    x = jnp.array([-0.5, 0.0, 0.3, 1.0, 1.5, jnp.nan])
    clip = filters.clip_passing_bounds
    np.testing.assert_array_equal(clip(x, 0.0, 1.0), jnp.clip(x, 0.0, 1.0))
    grad = jax.grad(lambda v, *b: jnp.sum(clip(v, *b)))
    np.testing.assert_array_equal(grad(x[:5], 0.0, 1.0), [0, 1, 1, 1, 0])
    np.testing.assert_array_equal(grad(x[:5], 0.0, None), [0, 1, 1, 1, 1])
    np.testing.assert_array_equal(grad(x[:5], None, 1.0), [1, 1, 1, 1, 0])


def _inside_derivative(f, x, index, direction):
    """Second-order one-sided float64 difference of scalar f at x along e_index, from the side
    `direction` (-1: from below, +1: from above): the derivative of the unclamped expression
    when the other side is clamped."""
    step = np.zeros_like(x)
    step[index] = direction * 1e-6
    return float(direction * (4 * f(x + step) - f(x + 2 * step) - 3 * f(x)) / 2e-6)


@pytest.mark.parametrize(
    "name,p,pixel,channel,side",
    [
        # gamma: x exactly on the floor 1e-3 -> whole gradient (from above).
        ("gamma", 0.6, [1e-3, 0.4, 0.7], 0, +1),
        # saturation: min(x, 1) with R exactly 1 (no channel tie) -> from below.
        ("saturation", 0.7, [1.0, 0.4, 0.2], 0, -1),
        # contrast: lum exactly 1 (white). (At lum 0 the factor L'/(L + 1e-6) has zero slope,
        # so no rule changes the gradient there.)
        ("contrast", 0.6, [1.0, 1.0, 1.0], 0, -1),
        ("contrast", 0.6, [1.0, 1.0, 1.0], 1, -1),
        # curves: x exactly 0, an interior knot, and 1.
        ("tone_curve", CURVE_A, [0.0, 0.25, 1.0], 0, +1),
        ("tone_curve", CURVE_A, [0.0, 0.25, 1.0], 2, -1),
        ("color_curve", COLOR_A, [0.0, 0.625, 1.0], 0, +1),
        ("color_curve", COLOR_A, [0.0, 0.625, 1.0], 2, -1),
    ],
)
def test_gradient_on_a_clamp_bound_is_the_unclamped_one(name, p, pixel, channel, side):
    with jax.enable_x64(True):
        weights = jnp.array([0.7, -1.3, 0.4])
        x = np.array(pixel, np.float64)[None, None]
        if name == "contrast":
            assert float(filters.luminance(x)[0, 0]) == 1.0  # exactly on the bound

        def f(image):
            out = getattr(filters, name)(jnp.asarray(image), jnp.asarray(p, jnp.float64))
            return jnp.sum(weights * out)

        got = jax.grad(f)(x)[0, 0, channel]
        want = _inside_derivative(f, x, (0, 0, channel), side)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize(
    "name,p,pixel",
    [
        ("gamma", 0.6, [5e-4, 0.4, 0.7]),
        ("saturation", 0.7, [1.2, 0.4, 0.2]),
        ("contrast", 0.6, [1.3, 1.1, 1.2]),
        ("contrast", 0.6, [0.2, -0.3, 0.0]),
        ("tone_curve", CURVE_A, [-0.1, 1.2, 3.0]),
        ("color_curve", COLOR_A, [-0.1, 1.2, 3.0]),
    ],
)
def test_gradient_strictly_outside_a_clamp_sees_a_constant(name, p, pixel):
    """Outside the clamp the clamped value is the constant bound: the gradient equals the
    two-sided derivative there (smooth), with no contribution through the clamp."""
    with jax.enable_x64(True):
        weights = jnp.array([0.7, -1.3, 0.4])
        x = np.array(pixel, np.float64)[None, None]

        def f(image):
            out = getattr(filters, name)(jnp.asarray(image), jnp.asarray(p, jnp.float64))
            return jnp.sum(weights * out)

        got = jax.grad(f)(x)[0, 0]
        for channel in range(3):
            up = _inside_derivative(f, x, (0, 0, channel), +1)
            down = _inside_derivative(f, x, (0, 0, channel), -1)
            np.testing.assert_allclose(up, down, rtol=1e-5, atol=1e-8)  # smooth here
            np.testing.assert_allclose(got[channel], up, rtol=1e-5, atol=1e-8)
        if name.endswith("curve"):
            np.testing.assert_array_equal(got, 0.0)


def _literal_curve_and_gradients(x, t, weights):
    """The literal curve (K/Σt) Σ_i t_i clip(x − i/K, 0, 1/K) of values x (n,) for ONE slope
    row t, in float64 numpy, and the gradients of the loss Σ weights · T(x) in x and t under
    torch.clamp's rule (each clip passes the whole gradient on [0, 1/K], none outside)."""
    k, total = len(t), t.sum()
    offsets = x[..., None] - np.arange(k) / k
    clipped = np.clip(offsets, 0.0, 1.0 / k)
    passes = (offsets >= 0.0) & (offsets <= 1.0 / k)
    value = k / total * (clipped @ t)
    d_x = k / total * (passes @ t)
    d_t = k * (weights @ clipped) / total
    d_t -= k * np.sum(weights * (clipped @ t)) / total**2
    return value, weights * d_x, d_t


def test_curves_match_the_literal_form_on_knots_bounds_and_outside():
    """The O(1) curve against the literal sum with torch.clamp semantics, float64: values and
    gradients (in x and in the slopes) on 0, every interior knot i/K, 1, strictly outside
    [0, 1] and in between. At an interior knot two segments sit on a bound at once, so the
    literal gradient in x is (t_{i−1} + t_i) K/Σt."""
    k = filters.CURVE_SEGMENTS
    column = np.concatenate([[-0.3, -1e-9], np.arange(k + 1) / k, [0.3, 0.77, 1 + 1e-9, 1.4]])
    rng = np.random.default_rng(0)
    x = np.stack([column, column[::-1], rng.permutation(column)], axis=-1)  # (n, 3)
    weights = rng.normal(size=x.shape)
    color = np.asarray(COLOR_A) * np.array([[1.0], [0.95], [1.05]]) + 0.02 * np.arange(k)
    with jax.enable_x64(True):
        for name, slopes in (("tone_curve", np.asarray(CURVE_B)), ("color_curve", color)):
            f = getattr(filters, name)

            def loss(image, s, f=f):
                return jnp.sum(jnp.asarray(weights) * f(image, s))

            got = f(jnp.asarray(x), jnp.asarray(slopes))
            g_x, g_t = jax.grad(loss, argnums=(0, 1))(jnp.asarray(x), jnp.asarray(slopes))
            rows = [slopes] * 3 if slopes.ndim == 1 else list(slopes)
            want = [_literal_curve_and_gradients(x[:, c], rows[c], weights[:, c]) for c in range(3)]
            np.testing.assert_allclose(got, np.stack([w[0] for w in want], -1), atol=1e-14)
            np.testing.assert_allclose(g_x, np.stack([w[1] for w in want], -1), atol=1e-12)
            want_t = sum(w[2] for w in want) if slopes.ndim == 1 else np.stack([w[2] for w in want])
            np.testing.assert_allclose(g_t, want_t, atol=1e-12)


def test_render_clip_passes_the_whole_gradient_on_0_and_1():
    from piea_jax.enhance import render

    x = jnp.array([[[-0.2, 0.0, 0.5], [1.0, 1.3, 1.0]]])
    out = render(x, {}, order=())
    np.testing.assert_array_equal(out, jnp.clip(x, 0.0, 1.0))
    grad = jax.grad(lambda v: jnp.sum(render(v, {}, order=())))(x)
    np.testing.assert_array_equal(grad, [[[0.0, 1.0, 1.0], [1.0, 0.0, 1.0]]])
