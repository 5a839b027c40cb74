"""VALID NHWC/HWIO convolution whose gradients avoid XLA:CPU's slow conv-gradient kernels.

`conv2d(x, w, stride)` is `lax.conv_general_dilated` in the forward pass on every platform.
Its VJP is chosen per platform with `lax.platform_dependent`: on GPU/TPU it is the plain
conv's VJP (what autodiff produces anyway); on CPU, where XLA lowers both gradients as further
convolutions that run far below its GEMM speed on some shapes, it uses matmuls instead:

- kernel gradient of a stride-1 conv with >= 128 input and >= 64 output channels: one GEMM
  per kernel tap, dW[i, j] = x[:, i:, j:]^T @ dy over batch and space (XLA lowers dW as a conv
  contracting over the batch of 2-4 with a window covering the whole map: 15-20 GFLOP/s);
- input gradient when the output map has <= 64 pixels: dpatches = dy @ W^T, then col2im
  (each tap's slab added at its (strided) offset). XLA's dx for the discriminator's last
  stride-2 conv (256 -> 512, 4x4 output) takes 0.3-0.7 s for 0.2-0.4 GFLOP.
Other gradients stay XLA's: on the remaining shapes (64-channel maps, D blocks 1-4, 1- and
3-channel outputs) its conv gradients measured as fast or faster. Isolated fwd + both grads,
batch 2, CPU s plain -> conv2d: 3x3 256->256 @32 0.111 -> 0.066, 128->128 @64 0.190 -> 0.099,
D block 5 0.298 -> 0.027.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

_DIMS = ("NHWC", "HWIO", "NHWC")
GEMM_DW_MIN_IN, GEMM_DW_MIN_OUT = 128, 64  # channel thresholds for the GEMM kernel gradient
COL2IM_DX_MAX_PIXELS = 64  # output maps up to this many pixels use the col2im input gradient


def plain_conv(x: jax.Array, w: jax.Array, stride: int = 1) -> jax.Array:
    """`lax.conv_general_dilated`, VALID padding, NHWC input, HWIO kernel."""
    return lax.conv_general_dilated(x, w, (stride, stride), "VALID", dimension_numbers=_DIMS)


def _tap(i: int, j: int, stride: int, ho: int, wo: int) -> tuple[slice, ...]:
    """Index of the input pixels kernel tap (i, j) meets, for every output pixel."""
    rows = slice(i, i + stride * (ho - 1) + 1, stride)
    cols = slice(j, j + stride * (wo - 1) + 1, stride)
    return (slice(None), rows, cols)


def gemm_kernel_grad(x: jax.Array, w_shape, dy: jax.Array, stride: int = 1) -> jax.Array:
    """dW of `plain_conv(x, w, stride)` as one (C x N*Ho*Wo) @ (N*Ho*Wo x O) GEMM per tap."""
    kh, kw, c, o = w_shape
    _, ho, wo, _ = dy.shape
    dy2 = dy.reshape(-1, o)
    taps = [
        x[_tap(i, j, stride, ho, wo)].reshape(-1, c).T @ dy2 for i in range(kh) for j in range(kw)
    ]
    return jnp.stack(taps).reshape(kh, kw, c, o)


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


def use_gemm_kernel_grad(w_shape, stride: int) -> bool:
    _, _, c, o = w_shape
    return stride == 1 and c >= GEMM_DW_MIN_IN and o >= GEMM_DW_MIN_OUT


def use_col2im_input_grad(dy_shape) -> bool:
    return dy_shape[1] * dy_shape[2] <= COL2IM_DX_MAX_PIXELS


def vjp_path(platform: str) -> str:
    """Which conv gradients `conv2d` uses on `platform` (reported by the benchmark)."""
    if platform == "cpu":
        return "cpu: GEMM dW (stride 1, >=128 in, >=64 out), col2im dx (<=64 px), else XLA"
    return "plain: XLA's conv VJP"


def _plain_vjp(stride, x, w, dy):
    _, pull = jax.vjp(functools.partial(plain_conv, stride=stride), x, w)
    return pull(dy)


def _cpu_vjp(stride, x, w, dy):
    dx_plain, dw_plain = _plain_vjp(stride, x, w, dy)  # unused halves are removed by XLA's DCE
    if use_col2im_input_grad(dy.shape):
        dx = col2im_input_grad(x.shape, w, dy, stride)
    else:
        dx = dx_plain
    dw = (
        gemm_kernel_grad(x, w.shape, dy, stride)
        if use_gemm_kernel_grad(w.shape, stride)
        else dw_plain
    )
    return dx, dw


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv2d(x: jax.Array, w: jax.Array, stride: int = 1) -> jax.Array:
    """VALID NHWC/HWIO conv: `lax.conv_general_dilated` forward, GEMM-based VJP on CPU."""
    return plain_conv(x, w, stride)


def _fwd(x, w, stride):
    return plain_conv(x, w, stride), (x, w)


def _bwd(stride, res, dy):
    x, w = res
    cpu = functools.partial(_cpu_vjp, stride)
    return lax.platform_dependent(x, w, dy, cpu=cpu, default=functools.partial(_plain_vjp, stride))


conv2d.defvjp(_fwd, _bwd)
