"""piea_jax.rendering: full-resolution rendering of found parameters over images of any size."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from piea_jax import FILTER_ORDER, initial_raw_params, to_physical
from piea_jax import rendering as render_module
from piea_jax.enhance import render
from piea_jax.rendering import local_mesh, render_images

SHAPES = [(37, 51), (5, 300), (64, 48)]
CHUNK = 1024  # smaller than the images, so they span several chunks with a partial last one


def _params(shift: float = 0.0):
    """Every filter away from its identity, so none can be skipped."""
    raw = jax.tree.map(lambda r: r + 0.1 + shift, initial_raw_params())
    raw["tone_curve"] = raw["tone_curve"] + jnp.linspace(-0.4, 0.4, 8)
    raw["color_curve"] = raw["color_curve"] + jnp.linspace(-0.6, 0.6, 8) * jnp.arange(1, 4)[:, None]
    return to_physical(raw)


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return [rng.uniform(0.0, 1.0, (*s, 3)).astype(np.float32) for s in SHAPES]


_render = jax.jit(render)


def test_shared_parameters_equal_render_per_image(images):
    physical = _params()
    out = render_images(images, physical, chunk_pixels=CHUNK)
    for x, y in zip(images, out, strict=True):
        assert y.shape == x.shape and y.dtype == np.float32
        # float32 rounding only (jitted and eager `render` differ by as much)
        np.testing.assert_allclose(y, _render(x, physical), atol=1e-6, rtol=0)


def test_per_image_parameters_over_four_devices_equal_one(images):
    per_image = jax.tree.map(lambda *p: jnp.stack(p), *[_params(s) for s in (-0.2, 0.0, 0.3)])
    one = render_images(images, per_image, chunk_pixels=CHUNK)
    four = render_images(images, per_image, chunk_pixels=CHUNK, mesh=local_mesh())
    assert local_mesh().size == 4  # tests/conftest.py
    for i, x in enumerate(images):
        np.testing.assert_array_equal(four[i], one[i])
        expected = _render(x, jax.tree.map(lambda p, i=i: p[i], per_image))
        np.testing.assert_allclose(one[i], expected, atol=1e-6, rtol=0)


def test_values_on_the_curve_segment_boundaries(images):
    # Inputs exactly on k/8 hit the curves' segment boundaries, where the select-based lookup
    # must agree with the gather of `piea_jax.filters`.
    physical = _params()
    identity = to_physical(jax.tree.map(jnp.zeros_like, initial_raw_params()))
    physical = {
        **identity,
        "tone_curve": physical["tone_curve"],
        "color_curve": physical["color_curve"],
    }
    grid = np.stack(np.meshgrid(*[np.arange(9) / 8] * 3, indexing="ij"), -1).reshape(27, 27, 3)
    grid = grid.astype(np.float32)
    (out,) = render_images([grid], physical, chunk_pixels=CHUNK)
    np.testing.assert_allclose(out, _render(grid, physical), atol=1e-6, rtol=0)


def test_no_recompilation_for_other_sizes(images):
    order = FILTER_ORDER[::-1]  # an order no other test compiles
    physical = _params()
    before = render_module._chunk_traces
    render_images(images[:1], physical, order=order, chunk_pixels=CHUNK)
    compiled = render_module._chunk_traces
    assert before < compiled <= before + len(order)  # one per filter on CPU, else one
    render_images(images, physical, order=order, chunk_pixels=CHUNK)
    render_images([images[2][:7, :3]], physical, order=order, chunk_pixels=CHUNK)
    assert render_module._chunk_traces == compiled


def test_bad_arguments_are_refused(images):
    physical = jax.tree.map(lambda p: jnp.stack([p, p]), _params())
    with pytest.raises(ValueError, match="3 images but parameters for 2"):
        render_images(images, physical)
    with pytest.raises(ValueError, match="unknown filter"):
        render_images(images, _params(), order=("exposure", "vignette"))
