"""VALID NHWC/HWIO convolution whose input gradient avoids one slow XLA:CPU formulation.

`conv2d(x, w, stride)` is `lax.conv_general_dilated` in the forward pass on every platform.
Its VJP is chosen per platform with `lax.platform_dependent`: on GPU/TPU it is the plain
conv's VJP (what autodiff produces anyway); on CPU too, except for one case. The input
gradient of a strided conv whose output map is smaller than its kernel (the discriminator's
last block: 5x5 kernel, stride 2, 4x4 output) is lowered by XLA:CPU as a convolution with the
output gradient as the window, 10-16x slower than dpatches = dy @ W^T followed by col2im (each
tap's slab added at its strided offset): fwd + grads at batch 2/4/12 take 104/210/605 ms
plain and 10/16/37 ms here (`benchmarks/xla_cpu_conv_bench.py`). Every other conv gradient of
the networks is fastest as XLA's own, with the CPU options of `common.xla_options`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

_DIMS = ("NHWC", "HWIO", "NHWC")


def plain_conv(x: jax.Array, w: jax.Array, stride: int = 1) -> jax.Array:
    """`lax.conv_general_dilated`, VALID padding, NHWC input, HWIO kernel."""
    return lax.conv_general_dilated(x, w, (stride, stride), "VALID", dimension_numbers=_DIMS)


def col2im_input_grad(x_shape, w: jax.Array, dy: jax.Array, stride: int = 1) -> jax.Array:
    """dx of `plain_conv(x, w, stride)`: dy @ W^T per pixel, each tap's slab padded in place."""
    n, h, wd, c = x_shape
    kh, kw, _, o = w.shape
    _, ho, wo, _ = dy.shape
    dpatch = (dy.reshape(-1, o) @ w.reshape(-1, o).T).reshape(n, ho, wo, kh, kw, c)
    dx = jnp.zeros(x_shape, dy.dtype)
    zero = jnp.zeros((), dy.dtype)
    for i in range(kh):
        for j in range(kw):
            span_h, span_w = stride * (ho - 1) + 1, stride * (wo - 1) + 1
            pads = [
                (0, 0, 0),
                (i, h - i - span_h, stride - 1),
                (j, wd - j - span_w, stride - 1),
                (0, 0, 0),
            ]
            dx = dx + lax.pad(dpatch[:, :, :, i, j], zero, pads)
    return dx


def use_col2im_input_grad(w_shape, dy_shape, stride: int) -> bool:
    """True for a strided conv whose output map is smaller than its kernel (see above)."""
    kh, kw = w_shape[:2]
    return stride > 1 and dy_shape[1] < kh and dy_shape[2] < kw


def vjp_path(platform: str) -> str:
    """Which conv gradients `conv2d` uses on `platform` (reported by the benchmark)."""
    if platform == "cpu":
        return "cpu: col2im dx (strided conv, output smaller than kernel), else XLA's"
    return "plain: XLA's conv VJP"


def _plain_vjp(stride, x, w, dy):
    _, pull = jax.vjp(functools.partial(plain_conv, stride=stride), x, w)
    return pull(dy)


def _cpu_vjp(stride, x, w, dy):
    dx, dw = _plain_vjp(stride, x, w, dy)  # an unused dx is removed by XLA's DCE
    if use_col2im_input_grad(w.shape, dy.shape, stride):
        dx = col2im_input_grad(x.shape, w, dy, stride)
    return dx, dw


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv2d(x: jax.Array, w: jax.Array, stride: int = 1) -> jax.Array:
    """VALID NHWC/HWIO conv: `lax.conv_general_dilated` forward, col2im dx where it pays."""
    return plain_conv(x, w, stride)


def _fwd(x, w, stride):
    return plain_conv(x, w, stride), (x, w)


def _bwd(stride, res, dy):
    x, w = res
    cpu = functools.partial(_cpu_vjp, stride)
    return lax.platform_dependent(x, w, dy, cpu=cpu, default=functools.partial(_plain_vjp, stride))


conv2d.defvjp(_fwd, _bwd)
