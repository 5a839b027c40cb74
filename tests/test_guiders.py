"""Guiders: the photographic critic on real photos, and the NIMA wrapper on tiny random models."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import skimage.data
from flax import nnx

from common.nima import Nima, mean_score, random_nima_vgg16
from piea_jax.filters import luminance
from piea_jax.guiders import NimaGuider, critic_terms, nima_guider, photo_critic

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


def _photo(name: str) -> jnp.ndarray:
    return jnp.asarray(getattr(skimage.data, name)()[..., :3], jnp.float32) / 255.0


def _degraded(x: jnp.ndarray) -> dict[str, jnp.ndarray]:
    lum = luminance(x)[..., None]
    mean = jnp.mean(lum)
    return {
        "under-exposed (x0.35)": x * 0.35,
        "over-exposed (+2 EV, clipped)": jnp.clip(x * 4.0, 0.0, 1.0),
        "flattened (40 % contrast)": mean + 0.4 * (x - mean),
        "desaturated (20 % colour)": lum + 0.2 * (x - lum),
    }


@pytest.mark.parametrize("name", PHOTOS)
def test_critic_prefers_the_photo_to_its_degraded_versions(name):
    x = _photo(name)
    score = float(photo_critic(x))
    assert 1.0 < score < 10.0
    for what, worse in _degraded(x).items():
        assert float(photo_critic(worse)) < score - 0.3, f"{name}: {what} scored too high"


def test_critic_terms_react_to_what_they_measure():
    x = _photo("coffee")
    base = critic_terms(x)
    degraded = _degraded(x)
    assert critic_terms(degraded["under-exposed (x0.35)"])["exposure"] < base["exposure"]
    assert critic_terms(degraded["flattened (40 % contrast)"])["spread"] < base["spread"]
    assert (
        critic_terms(degraded["desaturated (20 % colour)"])["colourfulness"]
        < base["colourfulness"] - 0.3
    )
    assert critic_terms(degraded["over-exposed (+2 EV, clipped)"])["highlights"] > 0.3
    assert base["highlights"] < 0.05


def test_critic_is_resolution_independent_jit_and_vmap_safe():
    x = _photo("chelsea")
    half = jax.image.resize(x, (150, 226, 3), "linear", antialias=True)
    assert abs(float(photo_critic(x)) - float(photo_critic(half))) < 0.05
    np.testing.assert_allclose(jax.jit(photo_critic)(x), photo_critic(x), rtol=1e-5)
    batch = jnp.stack([x, x * 0.5])
    np.testing.assert_allclose(
        jax.vmap(photo_critic)(batch), [photo_critic(x), photo_critic(x * 0.5)], rtol=1e-5
    )


def test_critic_gradient_brightens_a_dark_photo():
    dark = _photo("astronaut")[::4, ::4] * 0.3

    def score_at_exposure(ev):
        return photo_critic(jnp.clip(dark * 2.0**ev, 0.0, 1.0))

    grad = jax.grad(score_at_exposure)(0.0)
    assert np.isfinite(grad) and grad > 0.5
    # The gradient matches a central finite difference.
    eps = 1e-2
    fd = (score_at_exposure(eps) - score_at_exposure(-eps)) / (2 * eps)
    np.testing.assert_allclose(grad, fd, rtol=2e-2)


def test_critic_is_finite_on_constant_images():
    for value in (0.0, 0.5, 1.0):
        x = jnp.full((16, 16, 3), value)
        s, g = jax.value_and_grad(photo_critic)(x)
        assert 1.0 <= float(s) <= 10.0
        assert np.all(np.isfinite(g))


def test_mean_score():
    probs = jnp.stack([jnp.full(10, 0.1), jax.nn.one_hot(9, 10), jax.nn.one_hot(0, 10)])
    np.testing.assert_allclose(mean_score(probs), [5.5, 10.0, 1.0], rtol=1e-6)


class _TinyBackbone(nnx.Module):
    def __init__(self, *, rngs):
        self.conv = nnx.Conv(3, 8, (3, 3), strides=2, rngs=rngs)

    def __call__(self, x):
        return jax.nn.relu(self.conv(x))


def _tiny_nima(input_size=32):
    return Nima(
        _TinyBackbone(rngs=nnx.Rngs(0)), features=8, input_size=input_size, rngs=nnx.Rngs(1)
    )


def test_random_nima_vgg16_is_vgg16_shaped():
    # Abstract evaluation: the structure and shapes without paying for random initialisation.
    model = nnx.eval_shape(lambda: random_nima_vgg16(width=16))
    assert model.input_size == 224
    assert model.head.kernel.shape == (32, 10)  # 512 // 16 channels at pool5
    out = nnx.eval_shape(lambda: random_nima_vgg16(width=16)(jnp.zeros((2, 64, 64, 3))))
    assert out.shape == (2, 10)
    full = nnx.eval_shape(lambda: random_nima_vgg16())
    assert full.head.kernel.shape == (512, 10)
    n_params = sum(p.size for p in jax.tree_util.tree_leaves(nnx.state(full, nnx.Param)))
    assert n_params == 14_714_688 + 512 * 10 + 10  # torchvision VGG16 features + Linear(512, 10)


def test_nima_guider_resizes_inside_the_gradient():
    model = _tiny_nima(input_size=32)
    guider = nima_guider(model)
    x = _photo("coffee")[::8, ::8]  # (50, 75, 3)
    model.eval()
    probs = model(jax.image.resize(x, (32, 32, 3), "linear", antialias=True)[None])
    assert probs.shape == (1, 10)
    np.testing.assert_allclose(jnp.sum(probs, -1), 1.0, rtol=1e-5)
    expected = mean_score(probs)
    np.testing.assert_allclose(guider(x), expected[0], rtol=1e-5)
    score, grad = jax.value_and_grad(guider)(x)
    assert 1.0 <= float(score) <= 10.0
    assert grad.shape == x.shape and np.all(np.isfinite(grad)) and np.any(grad != 0)


def test_nima_guider_native_resolution_and_pytree():
    model = _tiny_nima(input_size=None)
    guider = nima_guider(model)
    model.eval()
    assert guider.input_size is None
    x = _photo("rocket")[::8, ::8]
    np.testing.assert_allclose(guider(x), mean_score(model(x[None]))[0], rtol=1e-5)
    # The weights are the pytree's leaves, so jit takes them as arguments, not constants.
    leaves = jax.tree_util.tree_leaves(guider)
    assert any(leaf.shape == (3, 3, 3, 8) for leaf in leaves)
    rebuilt = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(guider), leaves)
    assert isinstance(rebuilt, NimaGuider)
    np.testing.assert_allclose(jax.jit(lambda g, im: g(im))(guider, x), guider(x), rtol=1e-5)


def test_nima_guider_runs_in_eval_mode_without_touching_the_model():
    model = _tiny_nima()
    model.train()
    guider = nima_guider(model)
    x = _photo("chelsea")[::8, ::8]
    assert float(guider(x)) == float(guider(x))  # dropout off: deterministic
    assert model.dropout.deterministic is False  # the caller's model keeps its mode
