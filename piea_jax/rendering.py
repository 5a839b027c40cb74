"""Rendering found strategies at full resolution over sets of images of any size.

The search (`enhance`) finds physical filter parameters; what users run on large sets is the
render: the filter chain once per pixel at full resolution (a preset applied to a folder, or
the final images of a batch search). All eight filters act per pixel, so `render_images`
streams every image, flattened to pixels, through ONE compiled program of a fixed chunk shape
(3 planes of `chunk_pixels`): images of any size share it, nothing recompiles per size, and
the buffers stay a few MB whatever the image (XLA:CPU allocates its buffers afresh on every
call, and page faults on 12 MP buffers cost more than the filters). Each call renders one
chunk per device of a mesh, each chunk with its own image's parameters (`jax.shard_map`).

The program is the filters of `piea_jax.filters` unchanged, `jax.vmap`-ed over single pixels
of a planar chunk (R, G and B planes of `chunk_pixels` values, transposed on the host). XLA
then computes on planes, whose loops it vectorises, instead of on interleaved (..., 3) arrays,
whose fusions mixing the channels it emits as scalar loops of three. On the CPU platform the
two curves also find their segment's table entries with comparisons and selects instead of
the gather `piea_jax.filters` uses, which XLA:CPU emits as scalar code. The selects pick
exactly the entries the gather reads, so values are those of `piea_jax.enhance.render` up to
float32 rounding (tested; jitted and eager `render` differ as much). Measured on the project's
2-core CPU (process CPU time per pixel, 256K-pixel chunks): interleaved with the gather 7.6
MP per CPU-second, interleaved with the selects 9.9, planar with the gather 6.5, planar with
the selects 24.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from piea_jax.params import FILTER_ORDER, FILTERS, PHYSICAL_SHAPES

# Incremented each time the chunk program is traced (i.e. compiled); tests use it.
_chunk_traces = 0

# Pixels per chunk: 2^18 (3 MB of float32 RGB) keeps every buffer of the compiled chunk small
# (reused by the allocator rather than page-faulted in) and the per-call overhead negligible.
DEFAULT_CHUNK_PIXELS = 1 << 18


def _curve_by_selects(x, slopes):
    """`piea_jax.filters._curve`, the same arithmetic, with its table lookup written as
    selects: the entry of segment k is taken where segment >= k, for k = 1..K-1 in turn."""
    num_segments = slopes.shape[-1]
    normalised = slopes / jnp.sum(slopes, axis=-1, keepdims=True)
    before = jnp.cumsum(normalised, axis=-1) - normalised
    u = jnp.clip(x * num_segments, 0.0, num_segments)
    segment = jnp.minimum(jnp.floor(u), num_segments - 1)
    frac = u - segment
    start, slope = before[..., 0], normalised[..., 0]  # (C,) tables broadcast over channels
    for k in range(1, num_segments):
        take = segment >= k
        start = jnp.where(take, before[..., k], start)
        slope = jnp.where(take, normalised[..., k], slope)
    return start + slope * frac


_CPU_FILTERS = {**FILTERS, "tone_curve": _curve_by_selects, "color_curve": _curve_by_selects}


def render_chain(image, physical, order: Sequence[str] = FILTER_ORDER, *, cpu: bool = False):
    """`piea_jax.enhance.render` on ONE image (H, W, 3), clipped to [0, 1]; `cpu=True` uses
    the select-based curve lookup (same values, vectorised by XLA:CPU)."""
    filters = _CPU_FILTERS if cpu else FILTERS
    x = jnp.asarray(image)
    for name in order:
        x = filters[name](x, physical[name])
    return jnp.clip(x, 0.0, 1.0)


def local_mesh(devices: Sequence[jax.Device] | None = None, axis: str = "data") -> Mesh:
    """A 1-D mesh over `devices` (default: every device of this process)."""
    devices = list(devices) if devices is not None else jax.local_devices()
    return Mesh(np.asarray(devices), (axis,))


def render_planes(planes, physical, order: Sequence[str] = FILTER_ORDER, *, cpu: bool = False):
    """`render_chain` on pixels given as planes (3, C) -> (3, C): a `vmap` over pixels, so XLA
    computes on planes (see the module docstring)."""

    def pixel(rgb):  # (3,) -> (3,), the chain on a 1 × 1 image
        return render_chain(rgb[None, None], physical, order, cpu=cpu)[0, 0]

    return jax.vmap(pixel, in_axes=1, out_axes=1)(planes)


@functools.cache
def _compiled_chunks(mesh: Mesh, order: tuple[str, ...]):
    """One jitted program: each device renders its (1, 3, C) chunk with its own parameters."""
    axis = mesh.axis_names[0]
    cpu = all(d.platform == "cpu" for d in mesh.devices.flat)

    def local(chunk, physical):
        global _chunk_traces
        _chunk_traces += 1
        one = jax.tree.map(lambda p: p[0], physical)
        return render_planes(chunk[0], one, order, cpu=cpu)[None]

    return jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P(axis), P(axis)), out_specs=P(axis)))


def is_shared(physical: Mapping[str, object], order: Sequence[str] = FILTER_ORDER) -> bool:
    """Whether `physical` is one set of parameters (unbatched) rather than one per image."""
    name = order[0] if order else "exposure"
    return np.ndim(physical[name]) == len(PHYSICAL_SHAPES[name])


def render_images(
    images: Sequence[np.ndarray] | np.ndarray,
    physical: Mapping[str, object],
    *,
    order: Sequence[str] = FILTER_ORDER,
    mesh: Mesh | None = None,
    chunk_pixels: int = DEFAULT_CHUNK_PIXELS,
) -> list[np.ndarray]:
    """Render images of any sizes at full resolution with given physical parameters.

    Every image goes, in chunks of `chunk_pixels` pixels, through one compiled program (one
    per mesh, chain order and chunk size), so a set of mixed sizes compiles once; each call
    renders one chunk per device of `mesh`. Values equal `piea_jax.enhance.render(image,
    params)` per image.

    Args:
      images: (H_i, W_i, 3) float arrays in [0, 1] of any sizes, or one (N, H, W, 3) array.
      physical: physical parameters, {name: (N, ...)} with one set per image, or {name:
        (...)} (`PHYSICAL_SHAPES`) shared by every image (a preset).
      order: the filter chain; every name in it must be in `physical`.
      mesh: devices to spread the chunks over (its first axis); default the first local
        device.
      chunk_pixels: pixels per chunk.

    Returns:
      A list of N float32 numpy arrays (H_i, W_i, 3), clipped to [0, 1].
    """
    order = tuple(order)
    unknown = [name for name in order if name not in FILTERS]
    if unknown:
        raise ValueError(f"unknown filter(s) {unknown}; known: {FILTER_ORDER}")
    images = list(images)
    shared = is_shared(physical, order)
    params = {name: np.asarray(physical[name], np.float32) for name in order}
    if not shared and any(len(p) != len(images) for p in params.values()):
        raise ValueError(f"{len(images)} images but parameters for {len(params[order[0]])}")
    mesh = mesh if mesh is not None else local_mesh(jax.local_devices()[:1])
    program = _compiled_chunks(mesh, order)
    by_device = NamedSharding(mesh, P(mesh.axis_names[0]))
    n_devices = mesh.shape[mesh.axis_names[0]]

    flat = [np.ascontiguousarray(x, np.float32).reshape(-1, 3) for x in images]
    outputs = [np.empty(x.shape, np.float32) for x in flat]
    jobs = [(i, s) for i, x in enumerate(flat) for s in range(0, len(x), chunk_pixels)]
    # Two host buffers in turn: the call in flight may still read the other one (on CPU the
    # transfer can alias host memory). Its result is collected after the next call is queued.
    buffers = np.zeros((2, n_devices, 3, chunk_pixels), np.float32)
    pending = None
    for start in range(0, len(jobs), n_devices):
        buffer = buffers[(start // n_devices) % 2]
        group = jobs[start : start + n_devices]
        group += [group[-1]] * (n_devices - len(group))  # pad the last call; dropped below
        for d, (i, s) in enumerate(group):
            piece = flat[i][s : s + chunk_pixels]
            buffer[d, :, : len(piece)] = piece.T
            buffer[d, :, len(piece) :] = 0.0
        chunk_params = {
            name: np.broadcast_to(p, (n_devices, *p.shape)) if shared else p[[i for i, _ in group]]
            for name, p in params.items()
        }
        result = program(jax.device_put(buffer, by_device), jax.device_put(chunk_params, by_device))
        if pending is not None:
            _collect(*pending, outputs, chunk_pixels)
        pending = (result, group[: len(jobs) - start])
    if pending is not None:
        _collect(*pending, outputs, chunk_pixels)
    return [out.reshape(x.shape) for out, x in zip(outputs, images, strict=True)]


def _collect(result, group, outputs, chunk_pixels) -> None:
    rendered = np.asarray(result)
    for d, (i, s) in enumerate(group):
        piece = outputs[i][s : s + chunk_pixels]
        piece[...] = rendered[d, :, : len(piece)].T
