"""PIEA's progressive enhancer: M optimiser steps on the filter parameters of every image at once.

    L = (10 − S)²,  S = guider(clip(apply_filters(image, to_physical(raw)), 0, 1))

(paper Eq. 3–5; spec/piea.md §6). One `jax.jit`-compiled search: `jax.vmap` over images (each
image has its own raw parameters and optimiser state), `jax.lax.scan` over the M steps, and, for
a learning-rate sweep, a second `vmap` over rates. The search is compiled once per combination
of preview shape, batch size, steps, optimiser, filter order and guider structure; a second call
with the same shapes reuses it.

Resolution independence: all eight filters act per pixel, so the search runs on a *preview*
(short side `preview_size`, antialiased bilinear, computed on the host side before the search)
and the final parameters are rendered once at full resolution. Images of different sizes share
one compiled batch: when the shapes in a batch differ, every image is resized to one square
`preview_size × preview_size` preview (the aspect ratio is not kept — the filters do not care,
and a fixed-resize guider such as NIMA at 224 squares the image anyway; a native-resolution
guider does see the stretch). `preview_size=None` searches at full resolution (all images must
then have one shape).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from common import xla_options
from piea_jax.filters import clip_passing_bounds
from piea_jax.params import FILTER_ORDER, apply_filters, initial_raw_params, to_physical
from piea_jax.rendering import render_images

logger = logging.getLogger(__name__)

MAX_SCORE = 10.0  # S̄, the guider's best score (paper Eq. 3).
DEFAULT_PREVIEW_SIZE = 256

# Incremented each time the search is traced (i.e. compiled); tests use it to check caching.
_search_traces = 0


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["params", "scores", "losses"],
    meta_fields=[],
)
@dataclasses.dataclass(frozen=True)
class Trajectory:
    """The search at every step t = 0..M (t = 0 is the start, t = M the result).

    params: physical parameters, each (N, M + 1, ...) — as in `EnhanceResult.params`.
    scores, losses: (N, M + 1) guider score S and loss (10 − S)², on the preview.
    """

    params: dict[str, jax.Array]
    scores: jax.Array
    losses: jax.Array


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["images", "params", "raw_params", "scores", "trajectory"],
    meta_fields=["preview_shape"],
)
@dataclasses.dataclass(frozen=True)
class EnhanceResult:
    """What `enhance` returns. N images; with a learning-rate sweep of K rates every field gets
    a leading K axis (before N).

    images: the enhanced images at full resolution, clipped to [0, 1]: an (N, H, W, 3) array,
      or a list of N (H_i, W_i, 3) arrays when the inputs had different shapes.
    params: final physical filter parameters, {name: (N, ...)}.
    raw_params: final raw (optimised) parameters, {name: (N, ...)}.
    scores: (N, M + 1) guider scores on the preview at steps 0..M.
    trajectory: `Trajectory` — physical parameters, scores and losses at steps 0..M.
    preview_shape: (h, w) of the previews the search ran on.
    """

    images: jax.Array | list[jax.Array]
    params: dict[str, jax.Array]
    raw_params: dict[str, jax.Array]
    scores: jax.Array
    trajectory: Trajectory
    preview_shape: tuple[int, int]


def render(image, physical, order: Sequence[str] = FILTER_ORDER) -> jax.Array:
    """The filter chain on ONE image (H, W, 3) with physical parameters, clipped to [0, 1].

    The clip passes the whole gradient for a value exactly on 0 or 1 and none outside
    (spec/piea.md §2): the filters leave highlights exactly on 1.0 at PIEA's start.
    """
    return clip_passing_bounds(apply_filters(image, physical, order), 0.0, 1.0)


def loss_and_score(raw, image, guider, order: Sequence[str] = FILTER_ORDER):
    """(loss (10 − S)², score S) of ONE image under raw parameters `raw`."""
    score = guider(render(image, to_physical(raw), order))
    return (MAX_SCORE - score) ** 2, score


def make_optimizer(optimizer: str | optax.GradientTransformation, learning_rate):
    """An optax transformation from a name (any optax optimiser taking `learning_rate`, e.g.
    "sgd", "adam", "rmsprop") or an existing transformation (returned as is)."""
    if isinstance(optimizer, optax.GradientTransformation):
        return optimizer
    factory = getattr(optax, optimizer, None)
    if not callable(factory):
        raise ValueError(f"unknown optax optimiser {optimizer!r} (try 'sgd' or 'adam')")
    return factory(learning_rate=learning_rate)


def _physical(raw, batch_ndim: int):
    """`to_physical` mapped over `batch_ndim` leading axes."""
    fn = to_physical
    for _ in range(batch_ndim):
        fn = jax.vmap(fn)
    return fn(raw)


def _search_one(raw0, preview, learning_rate, guider, *, steps, optimizer, order, unroll):
    """M steps on ONE image's raw parameters -> (final raw, trajectory raws, scores, losses)."""
    opt = make_optimizer(optimizer, learning_rate)
    value_and_grad = jax.value_and_grad(loss_and_score, has_aux=True)

    def step(carry, _):
        raw, opt_state = carry
        (loss, score), grads = value_and_grad(raw, preview, guider, order)
        updates, opt_state = opt.update(grads, opt_state, raw)
        return (optax.apply_updates(raw, updates), opt_state), (raw, score, loss)

    (raw, _), (raws, scores, losses) = jax.lax.scan(
        step, (raw0, opt.init(raw0)), length=steps, unroll=unroll
    )
    final_loss, final_score = loss_and_score(raw, preview, guider, order)
    append = lambda seq, last: jnp.concatenate([seq, last[None]])  # noqa: E731
    raws = jax.tree.map(append, raws, raw)
    return raw, raws, append(scores, final_score), append(losses, final_loss)


def _search(raw0, previews, learning_rates, guider, *, steps, optimizer, order, unroll=1):
    """The search: vmap over images (and over rates when `learning_rates` is 1-D)."""
    global _search_traces
    _search_traces += 1
    one = functools.partial(
        _search_one, steps=steps, optimizer=optimizer, order=order, unroll=unroll
    )
    batched = jax.vmap(one, in_axes=(0, 0, None, None))
    if learning_rates.ndim == 1:
        batched = jax.vmap(batched, in_axes=(None, None, 0, None))
    raw, raws, scores, losses = batched(raw0, previews, learning_rates, guider)
    batch_ndim = learning_rates.ndim + 1  # (images) or (rates, images)
    return raw, _physical(raw, batch_ndim), _physical(raws, batch_ndim + 1), scores, losses


@functools.cache
def _jit_search(options: tuple[tuple[str, object], ...]):
    """`_search` under `jax.jit` with these compile options; one jit object (and cache) each."""
    return jax.jit(
        _search,
        static_argnames=("steps", "optimizer", "order", "unroll"),
        compiler_options=dict(options) or None,
    )


def compiled_search(devices: Sequence[jax.Device]):
    """The jitted search for a program on `devices`, with `common.xla_options`' options."""
    options = xla_options.compiler_options(devices) or {}
    return _jit_search(tuple(sorted(options.items())))


@functools.partial(jax.jit, static_argnames=("order",))
def _render_batch(images, physical, order):
    """Render (..., H, W, 3) images of one shape with parameters of matching leading axes.

    (`enhance` renders with `piea_jax.rendering.render_images`; this direct form is kept for
    benchmarks that time the plain vmapped chain.)"""
    fn = functools.partial(render, order=order)
    for _ in range(images.ndim - 3):
        fn = jax.vmap(fn)
    return fn(images, physical)


@functools.partial(jax.jit, static_argnames=("shape",))
def resize_preview(image, shape: tuple[int, int]) -> jax.Array:
    """Antialiased bilinear resize of ONE image (H, W, 3) to `shape` (h, w)."""
    return jax.image.resize(image, (*shape, image.shape[-1]), method="linear", antialias=True)


def preview_shape(shapes: Sequence[tuple[int, ...]], preview_size: int | None) -> tuple[int, int]:
    """The common preview (h, w) for images of the given (H, W, ...) shapes.

    One shape: short side `preview_size`, aspect kept, never upscaled. Mixed shapes: a square
    `preview_size` preview. `preview_size=None`: full resolution (one shape only).
    """
    sizes = {tuple(s[:2]) for s in shapes}
    if preview_size is None:
        if len(sizes) != 1:
            raise ValueError(
                f"images of different shapes {sorted(sizes)} need a preview_size to share a batch"
            )
        return sizes.pop()
    if len(sizes) > 1:
        return (preview_size, preview_size)
    h, w = sizes.pop()
    scale = min(1.0, preview_size / min(h, w))
    return (max(1, round(h * scale)), max(1, round(w * scale)))


def _as_pytree_guider(guider: Callable) -> Callable:
    """Guiders that carry arrays (e.g. `NimaGuider`) are pytrees of arrays and pass through;
    any other callable is wrapped in a leafless `Partial` so it is part of the compiled
    program's identity (the same function object reuses the compiled search)."""
    leaves = jax.tree_util.tree_leaves(guider)
    if leaves and all(isinstance(x, (jax.Array, np.ndarray)) for x in leaves):
        return guider
    return jax.tree_util.Partial(guider)


@jax.jit
def _score(guider, image):
    return guider(image)


def guider_score(guider: Callable, image) -> jax.Array:
    """The guider's score of ONE image (H, W, 3), compiled once per shape and guider."""
    return _score(_as_pytree_guider(guider), jnp.asarray(image, jnp.float32))


def _split_images(images) -> list[np.ndarray]:
    if isinstance(images, (np.ndarray, jax.Array)):
        images = np.asarray(images, np.float32)
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected (N, H, W, 3) or (H, W, 3) images, got {images.shape}")
        return list(images)
    out = [np.asarray(x, np.float32) for x in images]
    for x in out:
        if x.ndim != 3 or x.shape[-1] != 3:
            raise ValueError(f"expected (H, W, 3) images, got {x.shape}")
    if not out:
        raise ValueError("no images to enhance")
    return out


def enhance(
    images,
    guider: Callable,
    *,
    steps: int = 20,
    learning_rate=1e-3,
    optimizer: str | optax.GradientTransformation = "sgd",
    preview_size: int | None = DEFAULT_PREVIEW_SIZE,
    initial_raw: dict | None = None,
    order: Sequence[str] = FILTER_ORDER,
    mesh: Mesh | None = None,
    unroll: int | bool = 1,
) -> EnhanceResult:
    """Enhance images by M gradient steps on their filter parameters against a guider.

    Args:
      images: (N, H, W, 3) or (H, W, 3) float array in [0, 1], or a sequence of (H_i, W_i, 3)
        arrays of any sizes.
      guider: image (h, w, 3) in [0, 1] -> score in [1, 10], differentiable (`photo_critic`,
        `nima_guider(model)`, or any such function). Pass the same object again to reuse the
        compiled search (a new lambda each call recompiles).
      steps: M, the number of optimiser steps (paper: 20).
      learning_rate: λ (paper: 1e-3), a scalar, or a 1-D array of K rates for a sweep run in
        one compiled call (paper Fig. 5); results then get a leading K axis.
      optimizer: an optax optimiser name taking `learning_rate` ("sgd" = the paper's plain
        gradient descent, "adam", ...) or an `optax.GradientTransformation` (its own rate is
        used; `learning_rate` must then be left at its default).
      preview_size: short side of the preview the search runs on (see the module docstring);
        None searches at full resolution.
      initial_raw: raw parameters to start from, {name: unbatched array}; default PIEA's start
        (`initial_raw_params()`: identity except exposure +1 EV).
      order: the filter chain.
      mesh: a `jax.sharding.Mesh`; the image axis is sharded over its first axis (the batch is
        padded to a multiple of that axis' size and the padding dropped from the results).
      unroll: `jax.lax.scan`'s unroll of the step loop. The default keeps one loop (small
        program, fast compile, one step's buffers). Unrolling costs compile time and memory that
        grow with `steps` (XLA kept every step's buffers: ~2.5 GB per image for VGG16 at 224
        and 20 steps). It used to pay off for convolutional guiders on XLA:CPU, whose kernel
        layout inside loops made gradient convolutions 3-4x slower; `common.vgg.conv3x3` now
        avoids that, so the loop is about as fast (VGG16, batch 1, 333×500: 9.9 s/image looped
        vs 9.1 s unrolled on the project's 2-core CPU) with one step's memory.

    Returns:
      `EnhanceResult` (images rendered once at full resolution with the final parameters).
    """
    if isinstance(optimizer, optax.GradientTransformation) and np.ndim(learning_rate) != 0:
        raise ValueError("a learning-rate sweep needs an optimiser name, not a transformation")
    if isinstance(optimizer, optax.GradientTransformation) and learning_rate != 1e-3:
        raise ValueError("pass learning_rate inside the optax transformation, not both")
    make_optimizer(optimizer, 1e-3)  # Fails early on an unknown name.
    learning_rates = jnp.asarray(learning_rate, jnp.float32)
    if learning_rates.ndim > 1:
        raise ValueError(f"learning_rate must be a scalar or 1-D, got {learning_rates.shape}")
    originals = _split_images(images)
    n = len(originals)
    shapes = [x.shape for x in originals]
    target = preview_shape(shapes, preview_size)
    previews = jnp.stack(
        [jnp.asarray(x) if x.shape[:2] == target else resize_preview(x, target) for x in originals]
    )
    logger.debug("searching %d image(s) on %s previews", n, target)
    start = initial_raw_params() if initial_raw is None else initial_raw
    raw0 = jax.tree.map(
        lambda r: jnp.broadcast_to(jnp.asarray(r, jnp.float32), (n, *r.shape)), start
    )
    guider = _as_pytree_guider(guider)
    if mesh is not None:
        previews, raw0, learning_rates, guider = _shard(
            mesh, previews, raw0, learning_rates, guider
        )

    devices = list(mesh.devices.flat) if mesh is not None else jax.devices()[:1]
    outputs = compiled_search(devices)(
        raw0,
        previews,
        learning_rates,
        guider,
        steps=steps,
        optimizer=optimizer,
        order=tuple(order),
        unroll=unroll,
    )
    sweep = learning_rates.ndim == 1
    if mesh is not None:  # Drop the padding; gather onto the default device.
        image_axis = 1 if sweep else 0
        outputs = jax.tree.map(
            lambda x: jnp.asarray(np.take(np.asarray(x), np.arange(n), axis=image_axis)), outputs
        )
    raw, params, params_t, scores, losses = outputs

    final = _render_full_resolution(originals, params, tuple(order), learning_rates, mesh)
    return EnhanceResult(
        images=final,
        params=params,
        raw_params=raw,
        scores=scores,
        trajectory=Trajectory(params=params_t, scores=scores, losses=losses),
        preview_shape=target,
    )


def _render_full_resolution(originals, params, order, learning_rates, mesh):
    """The final images: (N, H, W, 3) (or (K, N, H, W, 3) for a sweep of K rates) when all
    inputs have one shape, else a list of N arrays (H_i, W_i, 3) (or (K, H_i, W_i, 3)).
    Rendered by `piea_jax.rendering.render_images`: one compiled program whatever the sizes,
    spread over `mesh`'s devices."""
    n = len(originals)
    rates = learning_rates.shape[0] if learning_rates.ndim == 1 else 1
    batch_ndim = learning_rates.ndim + 1  # (images) or (rates, images)
    flat = jax.tree.map(lambda p: np.asarray(p).reshape(rates * n, *p.shape[batch_ndim:]), params)
    rendered = render_images(originals * rates, flat, order=order, mesh=mesh)
    by_rate = [rendered[k * n : (k + 1) * n] for k in range(rates)]  # [rate][image]
    if len({x.shape for x in originals}) == 1:
        stacked = np.stack([np.stack(images) for images in by_rate])
        return jnp.asarray(stacked if learning_rates.ndim == 1 else stacked[0])
    if learning_rates.ndim == 1:
        return [jnp.asarray(np.stack([by_rate[k][i] for k in range(rates)])) for i in range(n)]
    return [jnp.asarray(x) for x in by_rate[0]]


def _shard(mesh: Mesh, previews, raw0, learning_rates, guider):
    """Pad the image axis to a multiple of the mesh's first axis and shard it there; replicate
    the rates and the guider's weights."""
    axis = mesh.axis_names[0]
    n = previews.shape[0]
    padded = -(-n // mesh.shape[axis]) * mesh.shape[axis]
    pad = lambda x: jnp.concatenate([x, jnp.repeat(x[-1:], padded - n, axis=0)])  # noqa: E731
    by_image = NamedSharding(mesh, P(axis))
    replicated = NamedSharding(mesh, P())
    previews = jax.device_put(pad(previews), by_image)
    raw0 = jax.device_put(jax.tree.map(pad, raw0), by_image)
    return (
        previews,
        raw0,
        jax.device_put(learning_rates, replicated),
        jax.device_put(guider, replicated),
    )
