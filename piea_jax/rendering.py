"""Rendering found strategies at full resolution over sets of images of any size.

The search (`enhance`) finds physical filter parameters; what users run on large sets is the
render: the filter chain once per pixel at full resolution (a preset applied to a folder, or
the final images of a batch search). All eight filters act per pixel, so `render_images`
streams every image, flattened to pixels, through programs of one fixed chunk shape (3 planes
of `chunk_pixels`), compiled once per mesh and chain: images of any size share them, nothing
recompiles per size, and the buffers stay a few MB whatever the image (XLA:CPU allocates its
buffers afresh on every call, and page faults on 12 MP buffers cost more than the filters).
Each call renders one chunk per device of a mesh, each chunk with its own image's parameters
(`jax.shard_map`).

The programs are the filters of `piea_jax.filters` unchanged, `jax.vmap`-ed over single
pixels of a planar chunk (R, G and B planes, transposed on the host), so XLA computes on
planes, whose loops it vectorises, instead of on interleaved (..., 3) arrays, whose fusions
mixing the channels it emits as scalar loops of three. Two measures apply on the CPU
platform only (elsewhere the whole chain is one program of the filters as they are):
  * the two curves find their segment's table entries with comparisons and selects instead of
    the gather of `piea_jax.filters`, which XLA:CPU emits as scalar code; the selects pick
    exactly the entries the gather reads;
  * each filter is its own program, the chunk staying on the device between them: fused into
    one program, XLA:CPU moves the channel-mixing filters' intermediates between planar and
    interleaved layouts inside its fusions, which costs more than the extra passes over a
    chunk that stays in cache.
Values are those of `piea_jax.enhance.render` up to float32 rounding (tested; jitted and eager
`render` differ as much). Measured on the project's 2-core CPU (process CPU nanoseconds per
pixel, 256K-pixel chunks, all eight filters active): interleaved with the gather 130,
interleaved with the selects 100 (these two with XLA's thread pool), one planar program with
the selects 41, one planar program per filter 26 (single-threaded). Of those 26, the
contrast's `cos` takes about 5.6: XLA:CPU evaluates it with scalar library calls.
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


def local_mesh(devices: Sequence[jax.Device] | None = None, axis: str = "data") -> Mesh:
    """A 1-D mesh over `devices` (default: every device of this process)."""
    devices = list(devices) if devices is not None else jax.local_devices()
    return Mesh(np.asarray(devices), (axis,))


def render_planes(
    planes, physical, order: Sequence[str] = FILTER_ORDER, *, cpu: bool = False, clip: bool = True
):
    """The chain `order` on pixels given as planes (3, C) -> (3, C), clipped to [0, 1] unless
    `clip=False`: a `vmap` over pixels, so XLA computes on planes (see the module docstring).
    `cpu=True` uses the select-based curve lookup."""
    filters = _CPU_FILTERS if cpu else FILTERS

    def pixel(rgb):  # (3,) -> (3,): the chain on a 1 × 1 image
        x = rgb[None, None]
        for name in order:
            x = filters[name](x, physical[name])
        return (jnp.clip(x, 0.0, 1.0) if clip else x)[0, 0]

    return jax.vmap(pixel, in_axes=1, out_axes=1)(planes)


@functools.cache
def _compiled_stages(mesh: Mesh, order: tuple[str, ...]):
    """[(filter names, jitted program)]: each program maps the (D, 3, C) chunks, one per
    device, with their own parameters {name: (D, ...)}; the last stage clips. On CPU one
    stage per filter, elsewhere one stage for the whole chain (see the module docstring)."""
    axis = mesh.axis_names[0]
    cpu = all(d.platform == "cpu" for d in mesh.devices.flat)
    stages = [(name,) for name in order] if cpu and order else [order]
    programs = []
    for k, names in enumerate(stages):
        last = k == len(stages) - 1

        def local(chunk, physical, names=names, last=last):
            global _chunk_traces
            _chunk_traces += 1
            one = jax.tree.map(lambda p: p[0], physical)
            return render_planes(chunk[0], one, names, cpu=cpu, clip=last)[None]

        spec = P(axis)
        program = jax.shard_map(local, mesh=mesh, in_specs=(spec, spec), out_specs=spec)
        programs.append((names, jax.jit(program)))
    return programs


def is_shared(physical: Mapping[str, object], order: Sequence[str] = FILTER_ORDER) -> bool:
    """Whether `physical` is one set of parameters (unbatched) rather than one per image."""
    if not order:
        return True  # nothing to render with: the images are only clipped
    return np.ndim(physical[order[0]]) == len(PHYSICAL_SHAPES[order[0]])


def render_images(
    images: Sequence[np.ndarray] | np.ndarray,
    physical: Mapping[str, object],
    *,
    order: Sequence[str] = FILTER_ORDER,
    mesh: Mesh | None = None,
    chunk_pixels: int = DEFAULT_CHUNK_PIXELS,
) -> list[np.ndarray]:
    """Render images of any sizes at full resolution with given physical parameters.

    Every image goes, in chunks of `chunk_pixels` pixels, through programs compiled once per
    mesh, chain order and chunk size, so a set of mixed sizes compiles once; each call renders
    one chunk per device of `mesh`. Values equal `piea_jax.enhance.render(image, params)` per
    image up to float32 rounding (see the module docstring).

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
    stages = _compiled_stages(mesh, order)
    by_device = NamedSharding(mesh, P(mesh.axis_names[0]))
    n_devices = mesh.shape[mesh.axis_names[0]]

    flat = [np.ascontiguousarray(x, np.float32).reshape(-1, 3) for x in images]
    outputs = [np.empty(x.shape, np.float32) for x in flat]
    jobs = [(i, s) for i, x in enumerate(flat) for s in range(0, len(x), chunk_pixels)]
    # Two host buffers in turn: the call in flight may still read the other one (on CPU the
    # transfer can alias host memory). Its result is collected after the next call is queued.
    buffers = np.zeros((2, n_devices, 3, chunk_pixels), np.float32)
    pending = None
    placed = {}
    for start in range(0, len(jobs), n_devices):
        buffer = buffers[(start // n_devices) % 2]
        group = jobs[start : start + n_devices]
        group += [group[-1]] * (n_devices - len(group))  # pad the last call; dropped below
        for d, (i, s) in enumerate(group):
            piece = flat[i][s : s + chunk_pixels]
            buffer[d, :, : len(piece)] = piece.T
            buffer[d, :, len(piece) :] = 0.0
        key = () if shared else tuple(i for i, _ in group)  # whose parameters, per device
        if key not in placed:  # transferred once per combination, not once per chunk
            placed[key] = jax.device_put(
                {
                    name: np.broadcast_to(p, (n_devices, *p.shape)) if shared else p[list(key)]
                    for name, p in params.items()
                },
                by_device,
            )
        chunk_params = placed[key]
        result = jax.device_put(buffer, by_device)
        for names, program in stages:
            result = program(result, {name: chunk_params[name] for name in names})
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
