"""`qagan_jax.conv`: the CPU col2im input gradient equals the plain conv's VJP (float32)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qagan_jax import conv

# (batch, input size, in channels, out channels, kernel, stride); odd sizes and strides that
# leave input rows unused exercise the zero borders of col2im.
SHAPES = [
    (2, 9, 3, 4, 3, 1),
    (2, 12, 5, 6, 5, 1),
    (1, 14, 4, 3, 7, 1),
    (2, 10, 3, 4, 3, 2),
    (2, 13, 4, 6, 5, 2),
    (1, 22, 3, 5, 7, 2),
]


def _case(n, h, c, o, k, s, seed=0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((n, h, h, c)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((k, k, c, o)) / k, jnp.float32)
    ho = (h - k) // s + 1
    dy = jnp.asarray(rng.standard_normal((n, ho, ho, o)), jnp.float32)
    _, pull = jax.vjp(lambda x_, w_: conv.plain_conv(x_, w_, s), x, w)
    dx, dw = pull(dy)
    return x, w, dy, dx, dw


@pytest.mark.parametrize("shape", SHAPES)
def test_col2im_input_grad_matches_plain(shape):
    x, w, dy, dx, _ = _case(*shape)
    got = conv.col2im_input_grad(x.shape, w, dy, shape[-1])
    np.testing.assert_allclose(got, dx, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "shape",
    # col2im dx (stride 2, 3x3 output under a 5x5 kernel), and the plain VJP (stride 1; a
    # stride-2 output larger than the kernel).
    [(1, 12, 16, 32, 5, 2), (2, 10, 8, 6, 3, 1), (1, 22, 3, 8, 7, 2)],
)
def test_conv2d_forward_and_grads_match_plain(shape):
    n, h, c, o, k, s = shape
    x, w, _, _, _ = _case(*shape)

    def loss(fn):
        return jax.jit(jax.value_and_grad(lambda x_, w_: jnp.sum(jnp.sin(fn(x_, w_, s))), (0, 1)))

    want, (dx, dw) = loss(conv.plain_conv)(x, w)
    got, (gx, gw) = loss(conv.conv2d)(x, w)
    np.testing.assert_array_equal(got, want)  # the forward is the same conv
    np.testing.assert_allclose(gx, dx, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gw, dw, rtol=1e-5, atol=1e-5)


def test_cpu_rules_cover_the_formulations():
    # The discriminator's last block (5x5, stride 2, 4x4 output) takes col2im; its block 4
    # (8x8 output), the stride-1 heads and the generators' 3x3 convs keep XLA's gradients.
    assert conv.use_col2im_input_grad((5, 5, 256, 512), (2, 4, 4, 512), 2)
    assert not conv.use_col2im_input_grad((5, 5, 128, 256), (2, 8, 8, 256), 2)
    assert not conv.use_col2im_input_grad((5, 5, 512, 1), (2, 4, 4, 1), 1)
    assert not conv.use_col2im_input_grad((3, 3, 64, 64), (2, 2, 2, 64), 1)


def test_conv2d_cpu_backward_uses_col2im_for_small_strided_outputs():
    # On CPU the col2im input gradient replaces XLA's dx convolution entirely: the only conv
    # left in the backward pass of x alone would be the forward one (needed for nothing here).
    x = jnp.ones((2, 12, 12, 16))
    w = jnp.ones((5, 5, 16, 32))
    grad = jax.jit(jax.grad(lambda x_: jnp.sum(conv.conv2d(x_, w, 2))))
    hlo = grad.lower(x).compile().as_text()
    assert jax.default_backend() != "cpu" or "convolution(" not in hlo
