"""PIEA's step-0 gradients against an independent PyTorch implementation of spec/piea.md.

The eight filters, the raw -> physical mappings and the final clip are written here from the
spec, literally (the curves as the K-term sum of `torch.clamp`s), in float64 PyTorch, whose
clamps pass the whole gradient on a bound and none outside (spec/piea.md §2). From PIEA's start
(+1 EV, every other filter the identity) on an image where over half the values land exactly on
1.0 after the tone curve (so on the colour curve's clamp and the final clip), the gradients of
a fixed weighted sum of the clipped output with respect to every raw parameter must agree.
(Values exactly on the curves' interior knots do not survive the chain: white balance's 1e-5
guard and gamma's exp(log x) move them by an ulp; tests/test_filters.py covers the knots.)
Skipped without torch.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import piea_jax
from piea_jax.enhance import render

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch

K = 8


def t_lum(x):
    return 0.27 * x[..., 0] + 0.67 * x[..., 1] + 0.06 * x[..., 2]


def t_curve(x, t):
    """(K / Σt) Σ_i t_i clamp(x − i/K, 0, 1/K), literally."""
    return K / t.sum() * sum(t[i] * torch.clamp(x - i / K, 0.0, 1.0 / K) for i in range(K))


def t_saturation(x, s):
    c = torch.clamp(x, max=1.0)
    v = c.amax(-1, keepdim=True)
    lo = c.amin(-1, keepdim=True)
    sat = torch.where(v > 0, (v - lo) / torch.where(v > 0, v, 1.0), 0.0)
    boosted = sat + (1 - sat) * (0.5 - torch.abs(0.5 - v)) * 0.8
    scale = boosted / torch.where(sat > 0, sat, 1.0)
    f = torch.where(sat > 0, v - scale * (v - c), c)  # F = c for greys
    return x + s * (f - c)


def t_contrast(x, a):
    lum = torch.clamp(t_lum(x), 0.0, 1.0)[..., None]
    enhanced = x * (1 - torch.cos(math.pi * lum)) / 2 / (lum + 1e-6)
    return x + a * (enhanced - x)


def t_render(image, raw):
    """spec §4's mappings, §3's filters in EXPOSURE's order, then the final clip to [0, 1]."""
    gains = torch.cat([torch.ones(1, dtype=image.dtype), torch.exp(0.5 * torch.tanh(raw["wb"]))])
    x = image * 2.0 ** (3.5 * torch.tanh(raw["exposure"]))
    x = torch.clamp(x, min=1e-3) ** (3.0 ** torch.tanh(raw["gamma"]))
    x = x * gains / (1e-5 + t_lum(gains))
    x = t_saturation(x, torch.tanh(raw["saturation"]))
    x = t_curve(x, 1.25 + 0.75 * torch.tanh(raw["tone_curve"]))
    x = t_contrast(x, torch.tanh(raw["contrast"]))
    x = x + torch.tanh(raw["black_and_white"]) * (t_lum(x)[..., None] - x)
    slopes = 1.0 + 0.1 * torch.tanh(raw["color_curve"])
    x = torch.stack([t_curve(x[..., k], slopes[k]) for k in range(3)], dim=-1)
    return torch.clamp(x, 0.0, 1.0)


TORCH_NAMES = {"white_balance": "wb"}


def torch_gradients(image, weights, raw):
    raw_t = {
        TORCH_NAMES.get(k, k): torch.tensor(np.asarray(v, np.float64), requires_grad=True)
        for k, v in raw.items()
    }
    loss = (torch.from_numpy(weights) * t_render(torch.from_numpy(image), raw_t)).sum()
    loss.backward()
    return {k: raw_t[TORCH_NAMES.get(k, k)].grad.numpy() for k in raw}


def jax_gradients(image, weights, raw):
    def loss(r):
        return jnp.sum(weights * render(image, piea_jax.to_physical(r)))

    return jax.jit(jax.grad(loss))(raw)


def on_the_bounds_image(seed=0, shape=(16, 16)):
    """8-bit values, over half of them above 0.5 (so exactly 1.0 after +1 EV and the tone
    curve), plus exact 0, 0.5, 1 and multiples of 1/16."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (*shape, 3)) / 255.0
    x[: shape[0] // 2] = 0.5 + x[: shape[0] // 2] / 2  # top half: (0.5, 1]
    x[-1, :, :] = (np.arange(shape[1] * 3).reshape(shape[1], 3) % 17) / 16  # 0, 1/16, ..., 1
    x[-2, 0] = [0.5, 0.5, 0.5]  # exactly white after +1 EV
    x[-2, 1] = [0.5, 0.25, 0.0]
    return x


@pytest.fixture(scope="module")
def case():
    image = on_the_bounds_image()
    weights = np.random.default_rng(1).normal(size=image.shape)
    start = {k: np.asarray(v, np.float64) for k, v in piea_jax.initial_raw_params().items()}
    start["exposure"] = np.float64(math.atanh(1.0 / 3.5))  # exactly +1 EV in float64
    return image, weights, start


def _raw_points(start):
    """PIEA's start, and a point near it where every filter is active."""
    rng = np.random.default_rng(2)
    moved = {k: v + 0.3 * rng.normal(size=np.shape(v)) for k, v in start.items()}
    return {"start": start, "moved": moved}


@pytest.mark.parametrize("point", ["start", "moved"])
def test_gradients_match_torch_in_float64(case, point):
    image, weights, start = case
    raw = _raw_points(start)[point]
    want = torch_gradients(image, weights, raw)
    if point == "start":  # the image does sit on the bounds
        with torch.no_grad():
            x = torch.from_numpy(image) * 2.0
            on_one = t_curve(x, torch.full((K,), 1.25, dtype=x.dtype)) == 1.0
            assert float(on_one.double().mean()) > 0.5
    with jax.enable_x64(True):
        got = jax_gradients(
            jnp.asarray(image), jnp.asarray(weights), jax.tree.map(jnp.asarray, raw)
        )
    for name in piea_jax.FILTER_ORDER:
        scale = np.abs(want[name]).max()
        assert scale > 1e-3, name  # every filter's parameters do get a gradient
        np.testing.assert_allclose(
            got[name], want[name], rtol=1e-9, atol=1e-9 * scale, err_msg=name
        )


def test_float32_start_gradients_within_1e4_of_torch_float64(case):
    """The production dtype: float32 JAX from `initial_raw_params()` against float64 torch."""
    image, weights, start = case
    want = torch_gradients(image, weights, start)
    raw = piea_jax.initial_raw_params()
    got = jax_gradients(jnp.asarray(image, jnp.float32), jnp.asarray(weights, jnp.float32), raw)
    for name in piea_jax.FILTER_ORDER:
        scale = np.abs(want[name]).max()
        np.testing.assert_allclose(
            got[name], want[name], rtol=1e-4, atol=1e-4 * scale, err_msg=name
        )
