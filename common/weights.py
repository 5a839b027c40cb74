"""Reading public checkpoints without torch or TensorFlow, and porting them into flax.nnx modules,
strictly (spec/weights.md).

Reading (`read_checkpoint(path) -> {name: numpy array}`, format by content, not by extension):

* torch `.pth` files written by `torch.save`, both layouts:
  - zip (torch >= 1.6): one top-level folder `<archive>/` holding `data.pkl` (the object
    pickle; tensors are `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`
    calls whose storages are persistent ids `("storage", torch.<Type>Storage, key, location,
    numel)`), the raw storages `data/<key>`, `byteorder` ("little"/"big"; absent = little),
    `version`, `.format_version`, `.storage_alignment` and `.data/serialization_id`; records
    are stored uncompressed (torch/serialization.py `_save`, `_load`);
  - legacy (torch < 1.6, and `_use_new_zipfile_serialization=False`): consecutive pickles of
    the magic number 0x1950a86a20f9469cfc6c, the protocol version 1001, a sys-info dict, the
    object (persistent ids `("storage", type, key, location, numel, view_metadata)`), the
    list of storage keys, then per key an int64 little-endian element count and the raw
    little-endian storage bytes (`_legacy_save`, `_legacy_load`). Pre-0.4 files rebuild tensors
    with `torch._utils._rebuild_tensor(storage, offset, size, stride)`; both are accepted.
  Pickles are read by a restricted unpickler: the only globals it resolves are the tensor and
  parameter rebuild functions, the `torch.<Type>Storage` dtype markers, `torch.Size`,
  `collections.OrderedDict`, `set`/`frozenset` and `_codecs.encode` (how protocol 2 stores
  bytes), each replaced by an inert stand-in of this module. Any other global raises
  `UnsafeCheckpointError` naming it and the file when the pickle first names it, so it is never
  called. Tensors come out as numpy arrays with their dtype, shape, strides, storage offset and
  byte order applied (views into a shared storage included; out-of-bounds views are refused).
  The pre-2017 tar layout of `torch.save` is not read.
* `.safetensors` through the `safetensors` package's numpy API.
* Keras `.h5`/`.hdf5` through `common.keras_h5.read_keras_h5` (h5py, the optional extra
  `keras`), imported only when such a file is read.

Nested containers are flattened with "." joins (`{"params": {"conv.weight": t}}` ->
`"params.conv.weight"`); leaves that are not tensors (epoch numbers, strings) are dropped.
`unwrap_state_dict` then picks the state dict out of the usual wrappers ("params",
"state_dict", "model", DataParallel's "module.").

Porting: a loader fills a module with `load_entries`: one `Entry` per checkpoint tensor says
which variable of the module it becomes and how its layout changes (`CONV`: torch OIHW -> HWIO,
`LINEAR`: torch (out, in) -> (in, out), `COPY`). Nothing is written unless everything matches:
a missing key, an unexpected key or a wrong shape raises `CheckpointMismatchError` naming the
key and both shapes, and a module variable that no entry covers is a loader bug (`ValueError`).

Converting once (`python -m common.weights convert SRC --format FORMAT --out DIR`): the ported
parameters go to `DIR/params.safetensors` (the module's Param and BatchStat variables by path,
`backbone.conv1_1.kernel`) with `DIR/manifest.json` (format, source file name and SHA-256,
input size, project version, the parameter file's SHA-256). Every loader accepts such a
directory and refuses one converted for another format or whose parameter file changed. A model
trained here is saved the same way (`common.nima.save_nima`) with no source file (`"source":
null`), the keyword arguments that rebuild its structure (`"arch"`) and free-form facts about
its run (`"run"`); a training work directory holds it as its `EXPORT_DIR` subdirectory
(`find_converted`).
safetensors rather than Orbax: a single file with one hash, no pickle, read by numpy with the
same dependency as the readers, and independent of devices and sharding (the ported
parameters are a few flat float32 arrays, never a training state).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import hashlib
import importlib.metadata
import io
import json
import logging
import os
import pickle
import secrets
import struct
import sys
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; `str()` names the file and the reason."""


class CheckpointMismatchError(CheckpointError):
    """The checkpoint's tensors do not match the model (missing, unexpected, wrong shape)."""


class UnsafeCheckpointError(CheckpointError):
    """A pickle names a global that a weights file has no business calling (it could run code)."""


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
        expected = e.layout.checkpoint_shape(tuple(np.shape(flat[e.path].get_value())))
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
        dtype = var.get_value().dtype  # works on an `empty_module`'s abstract variables too
        values[e.path] = var.replace(jnp.asarray(np.asarray(array, dtype=dtype)))
    nnx.update(module, nnx.from_flat_state(list(values.items())))


def empty_module(
    make: Callable[[], nnx.Module], variables: Iterable[type] = (nnx.Param, nnx.BatchStat)
) -> nnx.Module:
    """`make()`'s module with its weights left unallocated, for `load_entries` to fill.

    Random initialisation is wasted work before a load, and slow on first use (XLA compiles
    every initialiser's shape: about 9 s for VGG16 on a CPU). Here `make` is only traced
    (`nnx.eval_shape`): the `variables` stay abstract until `load_entries`, which must fill all
    of them, assigns them; other state (dropout RNG keys and counters) gets a fixed key and
    zeros. Use the module only after a successful `load_entries`.
    """
    graphdef, weights_state, rest = nnx.split(nnx.eval_shape(make), nnx.Any(*variables), ...)

    key = jax.random.key(0)

    def concrete(leaf):
        if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            return jnp.broadcast_to(key, leaf.shape)
        return jnp.asarray(np.zeros(leaf.shape, leaf.dtype))

    return nnx.merge(graphdef, weights_state, jax.tree.map(concrete, rest))


@functools.lru_cache(maxsize=16)
def _empty_parts(make: Callable[..., nnx.Module], kwargs: tuple) -> tuple:
    return nnx.split(empty_module(functools.partial(make, **dict(kwargs))))


def cached_empty_module(make: Callable[..., nnx.Module], **kwargs) -> nnx.Module:
    """`empty_module(functools.partial(make, **kwargs))`, traced once per (make, kwargs).

    Tracing a deep model's construction costs seconds (BN-Inception's 69 conv units: about
    3 s, mostly nnx's RNG counters under the trace); loading the same structure again then only
    merges the recorded graph with its abstract variables into a new module. `make` must be
    hashable by identity (a module-level function) and `kwargs` hashable values.
    """
    graphdef, state = _empty_parts(make, tuple(sorted(kwargs.items())))
    # New Variable objects (the leaves are shared, immutable): `merge` would otherwise put the
    # cached Variables themselves into the module, and a load would fill every later copy.
    return nnx.merge(graphdef, jax.tree.map(lambda leaf: leaf, state))


# --------------------------------------------------------------------------------------------
# torch.save files, read without torch

TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
TORCH_LEGACY_PROTOCOL = 1001

# torch.<Name>Storage (the dtype marker a storage carries in the pickle) -> numpy dtype.
_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
    "ComplexFloatStorage": np.complex64,
    "ComplexDoubleStorage": np.complex128,
    "UntypedStorage": np.uint8,
}


@dataclasses.dataclass(frozen=True)
class _StorageType:
    """Stand-in for a `torch.<Name>Storage` class: only its dtype matters (never called)."""

    name: str
    dtype: np.dtype


@dataclasses.dataclass(frozen=True)
class _Storage:
    """A storage named by a persistent id; its bytes are read after the pickle."""

    key: str
    dtype: np.dtype
    numel: int
    view_offset: int = 0  # legacy storage views: elements into the root storage
    view_numel: int | None = None


@dataclasses.dataclass(frozen=True)
class _Tensor:
    """What `_rebuild_tensor(_v2)` would build: a strided view of a storage."""

    storage: _Storage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]
    negate: bool = False
    conjugate: bool = False


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _int_tuple(x, what: str) -> tuple[int, ...]:
    if not isinstance(x, tuple | list) or not all(_is_int(v) for v in x):
        raise pickle.UnpicklingError(f"tensor {what} must be a tuple of ints, got {x!r}")
    return tuple(x)


def _rebuild_tensor(storage, storage_offset, size, stride):
    if not isinstance(storage, _Storage) or not _is_int(storage_offset):
        raise pickle.UnpicklingError("_rebuild_tensor: expected a storage and an int offset")
    return _Tensor(storage, storage_offset, _int_tuple(size, "size"), _int_tuple(stride, "stride"))


def _rebuild_tensor_v2(
    storage, storage_offset, size, stride, requires_grad, backward_hooks, metadata=None
):
    del requires_grad, backward_hooks  # training-time attributes; hooks are never restored
    tensor = _rebuild_tensor(storage, storage_offset, size, stride)
    if metadata:  # torch's lazy conjugate / negative bits (torch._utils.set_tensor_metadata)
        if not isinstance(metadata, dict):
            raise pickle.UnpicklingError(f"tensor metadata must be a dict, got {metadata!r}")
        tensor = dataclasses.replace(
            tensor, negate=bool(metadata.get("neg")), conjugate=bool(metadata.get("conj"))
        )
    return tensor


def _rebuild_parameter(data, requires_grad, backward_hooks):
    del requires_grad, backward_hooks
    if not isinstance(data, _Tensor):
        raise pickle.UnpicklingError("_rebuild_parameter: expected a tensor")
    return data


def _rebuild_parameter_with_state(data, requires_grad, backward_hooks, state):
    del state  # Python attributes of a Parameter subclass: not weights
    return _rebuild_parameter(data, requires_grad, backward_hooks)


def _codecs_encode(text, encoding="utf-8"):
    # Protocol 2 pickles store `bytes` as _codecs.encode(str, "latin1").
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("_codecs.encode is allowed only as protocol 2's bytes form")
    return text.encode("latin1")


_SAFE_GLOBALS = {
    "collections.OrderedDict": OrderedDict,
    "torch._utils._rebuild_tensor": _rebuild_tensor,
    "torch._utils._rebuild_tensor_v2": _rebuild_tensor_v2,
    "torch._utils._rebuild_parameter": _rebuild_parameter,
    "torch._utils._rebuild_parameter_with_state": _rebuild_parameter_with_state,
    "torch.Size": tuple,
    "_codecs.encode": _codecs_encode,
    "builtins.set": set,
    "builtins.frozenset": frozenset,
    "__builtin__.set": set,  # Python 2 pickles
    "__builtin__.frozenset": frozenset,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only `_SAFE_GLOBALS` and storage dtype markers; refuses everything else."""

    def __init__(self, file, *, source: str, persistent_load=None):
        # Python 2 pickles (old torchvision files) hold byte strings: decode them as torch does.
        super().__init__(file, encoding="utf-8")
        self._source = source
        self._persistent = persistent_load

    def find_class(self, module, name):
        full = f"{module}.{name}"
        if full in _SAFE_GLOBALS:
            return _SAFE_GLOBALS[full]
        if module in ("torch", "torch.cuda") and name in _STORAGE_DTYPES:
            return _StorageType(name, np.dtype(_STORAGE_DTYPES[name]))
        raise UnsafeCheckpointError(
            f"{self._source}: refusing to load: its pickle names the global {full!r}, and only "
            "tensors, OrderedDict and plain containers are allowed in a weights file (a pickle "
            "can run code). If the file is trusted, re-save it as a plain state dict "
            "(torch.save(model.state_dict(), path)) or as .safetensors."
        )

    def persistent_load(self, pid):
        if self._persistent is None:
            raise pickle.UnpicklingError("unexpected persistent id")
        return self._persistent(pid)


def _storage_from_pid(pid, storages: dict[str, _Storage], *, legacy: bool) -> _Storage:
    """A storage persistent id -> the (shared) `_Storage` it names, validated."""
    if not isinstance(pid, tuple) or not pid or pid[0] != "storage":
        kind = pid[0] if isinstance(pid, tuple) and pid else pid
        raise pickle.UnpicklingError(
            f"persistent id {kind!r} is not a storage (a pickled nn.Module class? save the "
            "state_dict instead)"
        )
    fields = pid[1:]
    if len(fields) != (5 if legacy else 4):
        raise pickle.UnpicklingError(f"malformed storage persistent id {pid!r}")
    storage_type, key, location, numel = fields[:4]
    if not isinstance(storage_type, _StorageType) or not _is_int(numel) or numel < 0:
        raise pickle.UnpicklingError(f"malformed storage persistent id {pid!r}")
    if not isinstance(key, str | int) or not isinstance(location, str):
        raise pickle.UnpicklingError(f"malformed storage persistent id {pid!r}")
    key = str(key)
    root = storages.setdefault(key, _Storage(key, storage_type.dtype, numel))
    if root.dtype != storage_type.dtype or root.numel != numel:
        raise pickle.UnpicklingError(f"storage {key!r} is named with two types or sizes")
    view = fields[4] if legacy else None
    if view is None:
        return root
    if (
        not isinstance(view, tuple)
        or len(view) != 3
        or not all(_is_int(v) and v >= 0 for v in view[1:])
        or view[1] + view[2] > numel
    ):
        raise pickle.UnpicklingError(f"malformed storage view {view!r}")
    return dataclasses.replace(root, view_offset=view[1], view_numel=view[2])


def _unpickle(data: io.BufferedIOBase, source: str, persistent_load=None):
    try:
        return _RestrictedUnpickler(data, source=source, persistent_load=persistent_load).load()
    except UnsafeCheckpointError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{source}: cannot read its pickle: {e}") from None
    except (IndexError, KeyError, RecursionError, OverflowError, MemoryError) as e:
        raise CheckpointError(f"{source}: corrupt pickle ({type(e).__name__}: {e})") from None


def _storage_array(data: bytes, storage: _Storage, *, big_endian: bool, source: str):
    expected = storage.numel * storage.dtype.itemsize
    if len(data) != expected:
        raise CheckpointError(
            f"{source}: storage {storage.key!r} holds {len(data)} bytes, its header says "
            f"{expected} (truncated or corrupt file)"
        )
    array = np.frombuffer(data, storage.dtype)
    return array.byteswap() if big_endian and storage.dtype.itemsize > 1 else array


def _tensor_to_numpy(t: _Tensor, roots: Mapping[str, np.ndarray], source: str) -> np.ndarray:
    """The strided view a `_Tensor` describes, bounds-checked, as a numpy array."""
    base = roots[t.storage.key]
    limit = (
        t.storage.view_offset + t.storage.view_numel
        if t.storage.view_numel is not None
        else len(base)
    )
    offset = t.storage.view_offset + t.offset
    size, stride = t.size, t.stride
    if len(size) != len(stride) or min((offset, *size, *stride)) < 0:
        raise CheckpointError(f"{source}: invalid tensor view {size} / {stride} at {offset}")
    if 0 in size:
        return np.zeros(size, base.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
    if last >= limit:
        raise CheckpointError(
            f"{source}: a tensor {size} (strides {stride}, offset {offset}) reads past its "
            f"storage of {limit} elements (corrupt file)"
        )
    contiguous = tuple(int(np.prod(size[i + 1 :])) for i in range(len(size)))
    if all(s == c or n == 1 for s, c, n in zip(stride, contiguous, size, strict=True)):
        array = base[offset : offset + int(np.prod(size))].reshape(size)
    else:
        byte_strides = [s * base.dtype.itemsize for s in stride]
        view = np.lib.stride_tricks.as_strided(base[offset:], size, byte_strides, writeable=False)
        array = view.copy()
    if t.conjugate:
        array = np.conj(array)
    if t.negate:
        array = -array
    return array


def _map_tensors(obj, fn):
    """`obj` with every `_Tensor` leaf replaced by `fn(leaf)` (containers rebuilt)."""
    if isinstance(obj, _Tensor):
        return fn(obj)
    if isinstance(obj, Mapping):
        return {k: _map_tensors(v, fn) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_map_tensors(v, fn) for v in obj]
    return obj


def _tensors_in(obj) -> list[_Tensor]:
    found = []
    _map_tensors(obj, found.append)
    return found


def _read_torch_zip(path: Path):
    source = str(path)
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise CheckpointError(
            f"{source}: starts like a zip archive (a torch.save file) but cannot be opened as "
            f"one ({e}); it is probably truncated or corrupt"
        ) from None
    with archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            hint = (
                " (a TorchScript archive from torch.jit.save: save the model's state_dict instead)"
                if any(n.endswith("/constants.pkl") for n in names)
                else ""
            )
            raise CheckpointError(
                f"{source}: a zip archive but not a torch.save checkpoint: no single "
                f"'<archive>/data.pkl' record{hint}; first records: {names[:5]}"
            )
        prefix = pickles[0][: -len("data.pkl")]

        def record(name: str, expected: int | None = None) -> bytes:
            try:
                info = archive.getinfo(prefix + name)
                if expected is not None and info.file_size != expected:
                    raise CheckpointError(
                        f"{source}: record {prefix + name} holds {info.file_size} bytes, "
                        f"expected {expected} (corrupt file)"
                    )
                return archive.read(info)
            except KeyError:
                raise CheckpointError(
                    f"{source}: record {prefix + name} is missing (truncated or corrupt file)"
                ) from None
            except (zipfile.BadZipFile, OSError, EOFError, zipfile.LargeZipFile) as e:
                raise CheckpointError(f"{source}: cannot read {prefix + name}: {e}") from None

        order = archive.read(prefix + "byteorder") if prefix + "byteorder" in names else b"little"
        if order not in (b"little", b"big"):
            raise CheckpointError(f"{source}: unknown byte order record {order!r}")
        storages: dict[str, _Storage] = {}
        obj = _unpickle(
            io.BytesIO(record("data.pkl")),
            source,
            lambda pid: _storage_from_pid(pid, storages, legacy=False),
        )
        roots = {}
        for t in _tensors_in(obj):
            s = t.storage
            if s.key not in roots:
                data = record(f"data/{s.key}", s.numel * s.dtype.itemsize)
                roots[s.key] = _storage_array(data, s, big_endian=order == b"big", source=source)
    return _map_tensors(obj, lambda t: _tensor_to_numpy(t, roots, source))


def _read_torch_legacy(path: Path):
    source = str(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        if _unpickle(f, source) != TORCH_LEGACY_MAGIC:
            raise CheckpointError(
                f"{source}: a pickle file, but not a torch.save checkpoint (no torch magic number)"
            )
        protocol = _unpickle(f, source)
        if protocol != TORCH_LEGACY_PROTOCOL:
            raise CheckpointError(f"{source}: unknown torch legacy protocol version {protocol!r}")
        _unpickle(f, source)  # sys info; storages are always written little-endian
        storages: dict[str, _Storage] = {}
        obj = _unpickle(f, source, lambda pid: _storage_from_pid(pid, storages, legacy=True))
        keys = _unpickle(f, source)
        if not isinstance(keys, list) or not all(isinstance(k, str | int) for k in keys):
            raise CheckpointError(f"{source}: malformed storage key list")
        roots = {}
        for key in map(str, keys):
            header = f.read(8)
            if len(header) != 8:
                raise CheckpointError(f"{source}: truncated before storage {key!r}")
            (numel,) = struct.unpack("<q", header)
            storage = storages.get(key)
            if storage is None or numel != storage.numel:
                raise CheckpointError(
                    f"{source}: storage {key!r} has {numel} elements in the file, but the "
                    "pickle names it differently (corrupt file)"
                )
            nbytes = numel * storage.dtype.itemsize
            if nbytes > size - f.tell():
                raise CheckpointError(f"{source}: truncated inside storage {key!r}")
            roots[key] = _storage_array(f.read(nbytes), storage, big_endian=False, source=source)
    missing = {t.storage.key for t in _tensors_in(obj)} - roots.keys()
    if missing:
        raise CheckpointError(f"{source}: storages {sorted(missing)[:5]} have no data")
    return _map_tensors(obj, lambda t: _tensor_to_numpy(t, roots, source))


# --------------------------------------------------------------------------------------------
# Any checkpoint file

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def checkpoint_format(path) -> str:
    """The format of a checkpoint file, from its first bytes (not its name).

    Returns one of "torch_zip", "torch_legacy", "safetensors", "hdf5".

    Raises:
      FileNotFoundError: no such file.
      CheckpointError: a directory, an empty file, the pre-2017 torch tar layout, or an unknown
        format (the message names the file).
    """
    path = Path(path)
    if path.is_dir():
        converted = " (a converted directory: pass it to load_vgg19/load_vgg16/load_nima)"
        hint = converted if (path / CONVERTED_MANIFEST).exists() else ""
        raise CheckpointError(f"{path}: is a directory, not a checkpoint file{hint}")
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{path}: empty file")
    with open(path, "rb") as f:
        head = f.read(4096)
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return "torch_zip"
    if any(head[o : o + 8] == _HDF5_SIGNATURE for o in (0, 512, 1024, 2048)):
        return "hdf5"
    if len(head) >= 10:
        (header_len,) = struct.unpack("<Q", head[:8])
        if 2 <= header_len <= size - 8 and head[8:9] == b"{":
            return "safetensors"
    if head.startswith(b"\x80"):  # a binary pickle: torch's legacy layout opens with its magic
        try:
            first = _RestrictedUnpickler(io.BytesIO(head), source=str(path)).load()
        except Exception:  # noqa: BLE001 - anything unreadable is simply not the magic number
            first = None
        if first == TORCH_LEGACY_MAGIC:
            return "torch_legacy"
        raise CheckpointError(f"{path}: a pickle file, but not a torch.save checkpoint")
    if head[257:262] == b"ustar":
        raise CheckpointError(
            f"{path}: the pre-2017 tar layout of torch.save is not supported; load it with an "
            "old torch and re-save it (torch.save(state_dict, path))"
        )
    raise CheckpointError(
        f"{path}: unknown checkpoint format (not a torch .pth zip or legacy file, .safetensors "
        f"or Keras .h5); first bytes {head[:8]!r}"
    )


def read_checkpoint(path) -> dict[str, np.ndarray]:
    """Reads a checkpoint file into a flat {name: numpy array} dict (format by content).

    torch `.pth` (zip or legacy layout, through the restricted unpickler), `.safetensors`, or
    Keras `.h5` (needs h5py: `pip install 'aesthetic-enhance-jax[keras]'`). Nested containers
    are flattened with "." joins; non-tensor leaves are dropped. Nothing of torch or TensorFlow
    is imported.

    Raises:
      FileNotFoundError: no such file.
      UnsafeCheckpointError: a pickle names a global outside the allow-list (nothing of it ran).
      CheckpointError: anything else that makes the file unreadable, with the file and reason.
    """
    path = Path(path)
    kind = checkpoint_format(path)
    if kind == "torch_zip":
        return flatten_tensors(_read_torch_zip(path), source=str(path))
    if kind == "torch_legacy":
        return flatten_tensors(_read_torch_legacy(path), source=str(path))
    if kind == "safetensors":
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        try:
            return dict(load_file(path))
        except (SafetensorError, ValueError, TypeError, OSError) as e:
            raise CheckpointError(f"{path}: cannot read as .safetensors: {e}") from None
    try:
        from common.keras_h5 import read_keras_h5
    except ModuleNotFoundError as e:
        raise CheckpointError(
            f"{path}: a Keras HDF5 file, but Keras .h5 reading is not available here "
            f"({e}); install the extra: pip install 'aesthetic-enhance-jax[keras]'"
        ) from None
    return read_keras_h5(path)


def flatten_tensors(obj, *, source: str = "checkpoint") -> dict[str, np.ndarray]:
    """Nested dicts/lists of numpy arrays -> {"a.b.0.c": array}; other leaves are dropped."""
    out: dict[str, np.ndarray] = {}

    def visit(value, key):
        if isinstance(value, np.ndarray):
            if key in out:
                raise CheckpointError(f"{source}: two tensors flatten to the same name {key!r}")
            out[key] = value
        elif isinstance(value, Mapping):
            for k, v in value.items():
                visit(v, f"{key}.{k}" if key else str(k))
        elif isinstance(value, list | tuple):
            for i, v in enumerate(value):
                visit(v, f"{key}.{i}" if key else str(i))

    visit(obj, "")
    return out


# Wrappers that training code puts around a state dict, outermost first.
STATE_DICT_WRAPPERS = ("", "params.", "state_dict.", "model.", "params_ema.", "net.")


def _strip_data_parallel(key: str) -> str:
    # nn.DataParallel / DistributedDataParallel insert a "module" level, also around a
    # submodule (Neural-IMage-Assessment wraps `features` on several GPUs).
    return ".".join(part for part in key.split(".") if part != "module")


def unwrap_state_dict(
    tensors: Mapping[str, np.ndarray], *, probe: str, source: str
) -> dict[str, np.ndarray]:
    """The state dict inside a checkpoint's wrapper, found by a key it must contain.

    Tries the wrappers in `STATE_DICT_WRAPPERS` (none, "params" as IQA-PyTorch saves,
    "state_dict", "model", ...) and takes the first under which `probe` (e.g.
    "features.0.weight") exists once DataParallel's "module" levels are removed. Keys outside
    that wrapper (optimiser state, epoch counters) are dropped; the keys inside are returned
    with the wrapper prefix and "module" levels removed, for a strict `load_entries`.

    Raises:
      CheckpointMismatchError: no wrapper holds `probe`, or two keys collide once "module"
        levels are removed.
    """
    for prefix in STATE_DICT_WRAPPERS:
        inner: dict[str, np.ndarray] = {}
        for key, value in tensors.items():
            if key.startswith(prefix):
                name = _strip_data_parallel(key[len(prefix) :])
                if name in inner:
                    raise CheckpointMismatchError(
                        f"{source}: keys collide once DataParallel's 'module.' is removed: {name!r}"
                    )
                inner[name] = value
        if probe in inner:
            if prefix:
                logging.info("%s: using the state dict under %r", source, prefix[:-1])
            return inner
    keys = list(tensors)
    raise CheckpointMismatchError(
        f"{source}: no state dict with the key {probe!r} (looked at the top level and under "
        f"{', '.join(repr(w[:-1]) for w in STATE_DICT_WRAPPERS[1:])}); is it the right "
        f"format? It holds {len(keys)} tensors, e.g. {keys[:6]}"
    )


# --------------------------------------------------------------------------------------------
# Converted directories: ported parameters in the project's own format

CONVERTED_MANIFEST = "manifest.json"
CONVERTED_PARAMS = "params.safetensors"
CONVERTED_LAYOUT = 1  # bumped when the directory layout or the variable naming changes
_CONVERTED_BY = "aesthetic-enhance-jax common.weights convert"


def _variable_name(path: tuple) -> str:
    return ".".join(str(part) for part in path)


def module_arrays(
    module: nnx.Module, variables: Iterable[type] = (nnx.Param, nnx.BatchStat)
) -> dict[str, np.ndarray]:
    """The module's variables as {"backbone.conv1_1.kernel": numpy array} (what is converted)."""
    state = nnx.state(module, nnx.Any(*variables))
    return {_variable_name(p): np.asarray(v[...]) for p, v in nnx.to_flat_state(state)}


def module_entries(
    module: nnx.Module, variables: Iterable[type] = (nnx.Param, nnx.BatchStat)
) -> list[Entry]:
    """One `COPY` entry per variable, keyed as `module_arrays` names them (converted loads)."""
    state = nnx.state(module, nnx.Any(*variables))
    return [Entry(_variable_name(p), tuple(p)) for p, _ in nnx.to_flat_state(state)]


def file_sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def is_converted(path) -> bool:
    """True for a directory written by `save_converted` (it holds a manifest)."""
    return Path(path).is_dir() and (Path(path) / CONVERTED_MANIFEST).is_file()


# The subdirectory of a training work directory that holds its exported model (a converted
# directory); `common.nima.NIMA_EXPORT_DIR`.
EXPORT_DIR = "export"


def find_converted(path) -> Path | None:
    """The converted directory `path` names: `path` itself, or `path/EXPORT_DIR` for a training
    work directory that holds one; None otherwise (a file, or any other directory)."""
    path = Path(path)
    if is_converted(path):
        return path
    if path.is_dir() and is_converted(path / EXPORT_DIR):
        return path / EXPORT_DIR
    return None


def read_manifest(path) -> dict:
    """The manifest of a converted directory (checked only for being one)."""
    file = Path(path) / CONVERTED_MANIFEST
    try:
        manifest = json.loads(file.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{file}: unreadable manifest ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("converted_by") != _CONVERTED_BY:
        raise CheckpointError(f"{file}: not a manifest written by `common.weights convert`")
    return manifest


def source_sha256(path) -> str:
    """SHA-256 of the checkpoint behind `path`: the file's own; for a converted directory (or a
    work directory holding one, `find_converted`) the one its manifest records for the file it
    was converted from, or, for a model trained here (no source file), its parameter file's
    SHA-256 as the manifest records it."""
    converted = find_converted(path)
    if converted is not None:
        manifest = read_manifest(converted)
        if manifest.get("source") is None:
            return str(manifest["params"]["sha256"])
        return str(manifest["source"]["sha256"])
    return file_sha256(path)


def _project_version() -> str:
    try:
        return importlib.metadata.version("aesthetic-enhance-jax")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


def _write_atomic(path: Path, data: bytes) -> None:
    temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        temp.write_bytes(data)
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def save_converted(
    module: nnx.Module,
    out_dir,
    *,
    format: str,
    source,
    input_size: int | None = None,
    arch: Mapping | None = None,
    run: Mapping | None = None,
    overwrite: bool = False,
) -> dict:
    """Writes `module`'s Param/BatchStat variables and a manifest into `out_dir`.

    Args:
      module: the ported (or trained) model.
      out_dir: the directory (created). An existing non-empty directory is refused unless
        `overwrite`, which replaces only this function's two files.
      format: what the directory holds ("vgg19", "vgg16", "bn_inception_imagenet", or a NIMA
        backbone name); loaders refuse a directory converted for another format.
      source: the checkpoint file the parameters came from (its name, size and SHA-256 are
        recorded), or None for a model trained here (recorded as null).
      input_size: the model's input size, recorded for the reader's information.
      arch: keyword arguments of the format's builder that rebuild the module's structure
        (JSON; recorded as "arch", {} by default).
      run: free-form JSON about how the parameters were made (recorded as "run", or null).

    Returns:
      The manifest (also written as `out_dir/manifest.json`).
    """
    from safetensors.numpy import save

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out}: directory exists and is not empty (use --overwrite)")
    if source is not None:
        source = Path(source)
        source = {
            "file": source.name,
            "sha256": file_sha256(source),
            "bytes": source.stat().st_size,
            "checkpoint_format": checkpoint_format(source),
        }
    extra = {"arch": dict(arch or {}), "run": dict(run) if run is not None else None}
    extra_json = json.dumps(extra)  # not JSON: a TypeError before anything is written
    out.mkdir(parents=True, exist_ok=True)
    params = save(module_arrays(module), metadata={"format": format})
    _write_atomic(out / CONVERTED_PARAMS, params)
    manifest = {
        "converted_by": _CONVERTED_BY,
        "layout": CONVERTED_LAYOUT,
        "format": format,
        "input_size": input_size,
        "source": source,
        "params": {"file": CONVERTED_PARAMS, "sha256": hashlib.sha256(params).hexdigest()},
        **json.loads(extra_json),
        "project_version": _project_version(),
        "created_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    _write_atomic(out / CONVERTED_MANIFEST, (json.dumps(manifest, indent=1) + "\n").encode())
    return manifest


def read_converted(path, *, format: str) -> dict[str, np.ndarray]:
    """The parameters of a converted directory, after checking its manifest and hash.

    Raises:
      CheckpointError: not a converted directory, converted for another `format` or by another
        layout version, or its parameter file does not match the SHA-256 in the manifest.
    """
    from safetensors.numpy import load

    path = Path(path)
    manifest = read_manifest(path)
    if manifest.get("layout") != CONVERTED_LAYOUT:
        raise CheckpointError(
            f"{path}: converted with layout {manifest.get('layout')!r}, this version reads "
            f"layout {CONVERTED_LAYOUT}; convert the checkpoint again"
        )
    if manifest.get("format") != format:
        source = manifest.get("source")
        origin = f"converted from {source.get('file')}" if source else "trained here"
        raise CheckpointError(
            f"{path}: holds {manifest.get('format')!r} parameters, not {format!r} ({origin})"
        )
    file = path / manifest["params"]["file"]
    try:
        data = file.read_bytes()
    except OSError as e:
        raise CheckpointError(f"{file}: cannot read ({e})") from None
    if hashlib.sha256(data).hexdigest() != manifest["params"]["sha256"]:
        raise CheckpointError(
            f"{file}: SHA-256 differs from the manifest's: the parameters changed after "
            "conversion; convert the checkpoint again"
        )
    try:
        return dict(load(data))
    except Exception as e:  # noqa: BLE001 - safetensors raises several types
        raise CheckpointError(f"{file}: cannot read as .safetensors: {e}") from None


def converted_formats() -> tuple[str, ...]:
    """The formats `convert` knows: the two VGGs, the ImageNet BN-Inception backbone, then the
    NIMA backbones."""
    from common.nima import NIMA_BACKBONES

    return ("vgg16", "vgg19", "bn_inception_imagenet", *NIMA_BACKBONES)


def convert(src, *, format: str, out, overwrite: bool = False) -> dict:
    """Ports the checkpoint `src` once (as its loader would) and saves it into `out`.

    `format` is "vgg19", "vgg16" (every conv layer is kept), "bn_inception_imagenet"
    (`common.bn_inception.load_bn_inception`) or a NIMA backbone name of
    `common.nima.load_nima`. Returns the manifest.
    """
    from common import nima, vgg

    if format not in converted_formats():
        raise ValueError(f"unknown format {format!r}: one of {', '.join(converted_formats())}")
    if find_converted(src) is not None:
        raise CheckpointError(f"{src}: already a converted directory (or a work directory)")
    if format in ("vgg16", "vgg19"):
        load = vgg.load_vgg16 if format == "vgg16" else vgg.load_vgg19
        model, input_size = load(src, taps=vgg.available_taps(format)), None
    elif format == "bn_inception_imagenet":
        from common.bn_inception import INPUT_SIZE, load_bn_inception

        model, input_size = load_bn_inception(src), INPUT_SIZE
    else:
        model = nima.load_nima(src, backbone=format)
        input_size = model.input_size
    return save_converted(
        model, out, format=format, source=src, input_size=input_size, overwrite=overwrite
    )


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m common.weights convert SRC --format FORMAT --out DIR [--overwrite]`."""
    parser = argparse.ArgumentParser(
        prog="python -m common.weights",
        description="Port a public VGG or NIMA checkpoint once into the project's format.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    conv = commands.add_parser(
        "convert",
        help="port SRC into DIR (params.safetensors + manifest.json)",
        description="Reads SRC (torch .pth, .safetensors or Keras .h5) as its loader would, "
        "checks every tensor against the model, and writes DIR/params.safetensors and "
        "DIR/manifest.json; load_vgg19/load_vgg16/load_nima then accept DIR.",
    )
    conv.add_argument("src", help="the checkpoint file")
    conv.add_argument("--format", required=True, choices=converted_formats())
    conv.add_argument("--out", required=True, help="output directory (created)")
    conv.add_argument("--overwrite", action="store_true", help="replace an earlier conversion")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        manifest = convert(args.src, format=args.format, out=args.out, overwrite=args.overwrite)
    except (CheckpointError, OSError, ValueError) as e:
        one_line = "; ".join(line.strip() for line in str(e).splitlines())
        print(f"error: {one_line}", file=sys.stderr)
        return 1
    print(
        f"{args.src} -> {args.out} ({manifest['format']}, source sha256 "
        f"{manifest['source']['sha256']})",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    # Run through the imported module, so that its error classes are the ones the loaders raise.
    from common.weights import main as _main

    sys.exit(_main())
