"""Porting public checkpoints into flax.nnx modules, strictly (spec/weights.md).

A loader reads a checkpoint into a flat `{name: numpy array}` dict, then fills a module with
`load_entries`: one `Entry` per checkpoint tensor says which variable of the module it becomes
and how its layout changes (`CONV`: torch OIHW -> HWIO, `LINEAR`: torch (out, in) -> (in, out),
`COPY`). Nothing is written unless everything matches: a missing key, an unexpected key or a
wrong shape raises `CheckpointMismatchError` naming the key and both shapes, and a module
variable that no entry covers is a loader bug (`ValueError`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence

import jax.numpy as jnp
import numpy as np
from flax import nnx


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; `str()` names the file and the reason."""


class CheckpointMismatchError(CheckpointError):
    """The checkpoint's tensors do not match the model (missing, unexpected, wrong shape)."""


@dataclasses.dataclass(frozen=True)
class Layout:
    """How a checkpoint tensor becomes a module variable.

    to_model: checkpoint array -> module array.
    checkpoint_shape: module variable shape -> the shape the checkpoint must hold.
    """

    name: str
    to_model: Callable[[np.ndarray], np.ndarray]
    checkpoint_shape: Callable[[tuple[int, ...]], tuple[int, ...]]


COPY = Layout("copy", lambda a: a, lambda s: tuple(s))
# torch Conv2d weight (O, I/groups, kh, kw) -> flax HWIO (kh, kw, I/groups, O).
CONV = Layout("conv", lambda a: a.transpose(2, 3, 1, 0), lambda s: (s[3], s[2], s[0], s[1]))
# torch Linear weight (out, in) -> flax Dense kernel (in, out).
LINEAR = Layout("linear", lambda a: a.T, lambda s: (s[1], s[0]))


def nchw_flatten_linear(channels: int, height: int, width: int) -> Layout:
    """torch Linear on a flattened (C, H, W) map -> Dense kernel on a flattened NHWC map.

    torch's flatten of NCHW orders the inputs c-major (index c·H·W + y·W + x); the port
    flattens NHWC (index y·W·C + x·C + c), so the kernel rows are reordered accordingly.
    """

    def to_model(a):  # (out, C*H*W) -> (H*W*C, out)
        out = a.shape[0]
        return a.reshape(out, channels, height, width).transpose(2, 3, 1, 0).reshape(-1, out)

    return Layout(
        f"nchw_flatten_linear({channels},{height},{width})", to_model, LINEAR.checkpoint_shape
    )


@dataclasses.dataclass(frozen=True)
class Entry:
    """One checkpoint tensor `key` -> the module variable at `path` (a tuple of str/int)."""

    key: str
    path: tuple
    layout: Layout = COPY


def load_entries(
    module: nnx.Module,
    tensors: Mapping[str, np.ndarray],
    entries: Sequence[Entry],
    *,
    source: str,
    ignore: Callable[[str], bool] = lambda key: False,
    variables: Iterable[type] = (nnx.Param, nnx.BatchStat),
) -> None:
    """Fills `module`'s variables (of the `variables` types) from `tensors`, all or nothing.

    Args:
      module: the model to fill (modified in place).
      tensors: checkpoint name -> array, as read from the file.
      entries: the mapping; every variable of `module` must be the target of one entry.
      source: what to call the checkpoint in errors (usually its path).
      ignore: keys of `tensors` that no entry needs and that are not an error (e.g. a
        classifier the port does not use).
      variables: the variable types that must all be filled.

    Raises:
      CheckpointMismatchError: missing keys, unexpected keys or wrong shapes, all listed, each
        naming the key, the checkpoint's shape and the expected shape.
      ValueError: the entries do not cover the module's variables exactly (a loader bug).
    """
    state = nnx.state(module, nnx.Any(*variables))
    flat = dict(nnx.to_flat_state(state))
    targets = [e.path for e in entries]
    uncovered = [p for p in flat if p not in set(targets)]
    unknown = [p for p in targets if p not in flat]
    repeated = {p for p in targets if targets.count(p) > 1}
    if uncovered or unknown or repeated:
        raise ValueError(
            f"loader bug for {source}: module variables without an entry {uncovered[:5]}, "
            f"entries for no variable {unknown[:5]}, variables filled twice {sorted(repeated)[:5]}"
        )
    problems = []
    wanted = {e.key for e in entries}
    for e in entries:
        expected = e.layout.checkpoint_shape(tuple(flat[e.path].shape))
        if e.key not in tensors:
            problems.append(f"missing key {e.key!r} (expected shape {expected})")
        elif tuple(np.shape(tensors[e.key])) != expected:
            problems.append(
                f"wrong shape for {e.key!r}: checkpoint {tuple(np.shape(tensors[e.key]))}, "
                f"expected {expected}"
            )
    for key in tensors:
        if key not in wanted and not ignore(key):
            problems.append(f"unexpected key {key!r} (shape {tuple(np.shape(tensors[key]))})")
    if problems:
        shown = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise CheckpointMismatchError(
            f"{source}: checkpoint does not match the model ({len(problems)} problem(s)):\n  "
            f"{shown}{more}"
        )
    values = {}
    for e in entries:
        var = flat[e.path]
        array = e.layout.to_model(np.asarray(tensors[e.key]))
        values[e.path] = var.replace(jnp.asarray(array, dtype=var[...].dtype))
    nnx.update(module, nnx.from_flat_state(list(values.items())))


def read_checkpoint(path) -> dict[str, np.ndarray]:
    """Reads a checkpoint file into a flat {name: numpy array} dict (format by content)."""
    raise NotImplementedError("the checkpoint readers are issue 9's first deliverable")
