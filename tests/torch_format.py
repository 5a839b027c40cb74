"""Writes `.pth` files laid out as `torch.save` lays them out, from numpy arrays, without torch.

Test fixtures for the torch-free readers (`common.weights.read_checkpoint`). Two layouts, as in
torch/serialization.py (torch 2.13, read for this; a torch-marked test compares the output
with real `torch.save` files record by record and pickle byte by byte):

* zip (`save_zip`, torch >= 1.6): records `<archive>/data.pkl`, `.format_version` ("1"),
  `.storage_alignment` ("64"), `byteorder`, `data/<key>` (keys "0", "1", ... in order of first
  use), `version` ("3\\n") and `.data/serialization_id`, stored uncompressed as torch's miniz
  writer stores them: zeroed local-header sizes with a data descriptor after non-empty data
  (flag 0x0808), an "FB" extra field padding every record's data to a 64-byte boundary, and
  zip64 end records.
* legacy (`save_legacy`, `torch.save(..., _use_new_zipfile_serialization=False)`): pickles of
  the magic number, the protocol version 1001 and the sys info, the object pickle, the sorted
  storage keys, then each storage as an int64 element count and its little-endian bytes.

Tensors are pickled as torch pickles them: `torch._utils._rebuild_tensor_v2(storage, offset,
size, stride, requires_grad=False, OrderedDict())`, the storage a persistent id `("storage",
torch.<Type>Storage, key, "cpu", numel)` (legacy: plus `None` view metadata). A numpy array is a
contiguous tensor with its own storage; `View` describes a strided view of a shared storage.
`save_zip_records` / `save_legacy_pickle` write raw pickles (for malicious-file tests).
"""

from __future__ import annotations

import dataclasses
import io
import pickle
import struct
import zlib
from collections import OrderedDict

import ml_dtypes
import numpy as np

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001
ALIGNMENT = 64

_STORAGE_NAMES = {
    np.dtype(np.float32): "FloatStorage",
    np.dtype(np.float64): "DoubleStorage",
    np.dtype(np.float16): "HalfStorage",
    np.dtype(ml_dtypes.bfloat16): "BFloat16Storage",
    np.dtype(np.int64): "LongStorage",
    np.dtype(np.int32): "IntStorage",
    np.dtype(np.int16): "ShortStorage",
    np.dtype(np.int8): "CharStorage",
    np.dtype(np.uint8): "ByteStorage",
    np.dtype(np.bool_): "BoolStorage",
}


@dataclasses.dataclass(frozen=True, eq=False)
class Global:
    """A global pickled by name (GLOBAL opcode), importable or not."""

    module: str
    name: str

    def __call__(self, *args):  # pickle's save_reduce insists on a callable; never called
        raise TypeError(f"{self.module}.{self.name} is a stand-in")


REBUILD_TENSOR_V2 = Global("torch._utils", "_rebuild_tensor_v2")
REBUILD_TENSOR = Global("torch._utils", "_rebuild_tensor")  # torch < 0.4
_STORAGE_TYPES = {dtype: Global("torch", name) for dtype, name in _STORAGE_NAMES.items()}
_CUDA_STORAGE_TYPES = {d: Global("torch.cuda", name) for d, name in _STORAGE_NAMES.items()}


@dataclasses.dataclass(eq=False)
class Storage:
    """A torch storage: a 1-D array; tensors that name the same Storage object share it."""

    data: np.ndarray


@dataclasses.dataclass(eq=False)
class View:
    """A tensor viewing `storage` from `offset` with `shape` and `stride` (in elements)."""

    storage: Storage
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _contiguous_strides(shape) -> tuple[int, ...]:
    # torch's rule: empty dimensions count as 1 (torch.zeros(2, 0).stride() == (1, 1)).
    return tuple(int(np.prod([max(n, 1) for n in shape[i + 1 :]])) for i in range(len(shape)))


class _TorchPickler(pickle._Pickler):  # the pure-Python pickler: GLOBAL opcodes are writable
    dispatch = pickle._Pickler.dispatch.copy()

    def __init__(self, file, *, storage_id, torch03: bool = False):
        super().__init__(file, protocol=2)
        self._storage_id = storage_id
        self._own_storages: dict[int, Storage] = {}
        self._torch03 = torch03

    def _save_str(self, obj: str):
        if not self._torch03:
            return pickle._Pickler.save_str(self, obj)
        # Python 2's pickler writes `str` as byte strings (SHORT_BINSTRING / BINSTRING).
        data = obj.encode()
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[str] = _save_str

    def _save_global_marker(self, obj: Global):
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
        self.memoize(obj)

    dispatch[Global] = _save_global_marker

    def persistent_id(self, obj):
        return self._storage_id(obj) if isinstance(obj, Storage) else None

    def reducer_override(self, obj):
        if isinstance(obj, np.ndarray):
            storage = self._own_storages.setdefault(id(obj), Storage(obj.reshape(-1)))
            view = View(storage, 0, obj.shape, _contiguous_strides(obj.shape))
        elif isinstance(obj, View):
            view = obj
        else:
            return NotImplemented
        # Fresh tuples, as torch's tensor.size() / stride() give: equal tuples of two tensors
        # are pickled twice, not memoised.
        shape, stride = tuple(list(view.shape)), tuple(list(view.stride))
        if self._torch03:  # Tensor.__reduce__ of torch 0.2 / 0.3
            return (REBUILD_TENSOR, (view.storage, view.offset, shape, stride))
        return (REBUILD_TENSOR_V2, (view.storage, view.offset, shape, stride, False, OrderedDict()))


def _pickle(obj, storage_id, *, torch03: bool = False) -> bytes:
    buffer = io.BytesIO()
    _TorchPickler(buffer, storage_id=storage_id, torch03=torch03).dump(obj)
    return buffer.getvalue()


def _storage_bytes(storage: Storage, byteorder: str) -> bytes:
    data = np.ascontiguousarray(storage.data)
    if byteorder == "big" and data.dtype.itemsize > 1:
        data = data.byteswap()
    return data.tobytes()


# --- zip layout ----------------------------------------------------------------------------------


def save_zip_records(path, records: list[tuple[str, bytes]], *, archive: str = "archive") -> None:
    """A zip written as torch's miniz writer writes it, holding `archive/<name>` records."""
    out = io.BytesIO()
    central = []
    for name, data in records:
        full = f"{archive}/{name}".encode()
        offset = out.tell()
        padding = (ALIGNMENT - (offset + 30 + len(full) + 4) % ALIGNMENT) % ALIGNMENT
        extra = b"FB" + struct.pack("<H", padding) + b"Z" * padding
        # Flags: UTF-8 names, and a data descriptor after non-empty data (whose crc and sizes
        # the local header leaves at zero); empty records have neither.
        flags = 0x0808 if data else 0x0800
        # signature, version needed, flags, stored, time, date, crc, sizes, name/extra lengths
        out.write(struct.pack("<IHHHHHIIIHH", 0x04034B50, 0, flags, 0, 0, 0, 0, 0, 0,
                              len(full), len(extra)))  # fmt: skip
        out.write(full + extra)
        out.write(data)
        crc = zlib.crc32(data)
        if data:
            out.write(struct.pack("<IIII", 0x08074B50, crc, len(data), len(data)))
        central.append((full, flags, crc, len(data), offset))
    cd_offset = out.tell()
    for full, flags, crc, size, offset in central:
        out.write(struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 0, 0, flags, 0, 0, 0, crc,
                              size, size, len(full), 0, 0, 0, 0, 0, offset))  # fmt: skip
        out.write(full)
    cd_size = out.tell() - cd_offset
    zip64_offset = out.tell()
    n = len(central)
    out.write(struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 0x031E, 0x2D, 0, 0, n, n, cd_size,
                          cd_offset))  # fmt: skip
    out.write(struct.pack("<IIQI", 0x07064B50, 0, zip64_offset, 1))
    out.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, n, n, cd_size, cd_offset, 0))
    with open(path, "wb") as f:
        f.write(out.getvalue())


def save_zip(obj, path, *, archive: str = "archive", byteorder: str = "little") -> None:
    """`torch.save(obj, path)` (zip layout) for containers of numpy arrays and `View`s.

    `archive` is the records' folder (torch uses the file name's stem); `byteorder` "big"
    writes big-endian storages with a "big" byte-order record, as torch does on such hosts.
    """
    keys: dict[int, str] = {}
    storages: dict[str, Storage] = {}

    def storage_id(storage: Storage):
        key = keys.setdefault(id(storage), str(len(keys)))
        storages[key] = storage
        dtype = storage.data.dtype
        return ("storage", _STORAGE_TYPES[dtype], key, "cpu", storage.data.size)

    data_pkl = _pickle(obj, storage_id)
    records = [
        ("data.pkl", data_pkl),
        (".format_version", b"1"),
        (".storage_alignment", b"64"),
        ("byteorder", byteorder.encode()),
    ]
    records += [(f"data/{k}", _storage_bytes(s, byteorder)) for k, s in storages.items()]
    records += [("version", b"3\n"), (".data/serialization_id", b"0" * 40)]
    save_zip_records(path, records, archive=archive)


# --- legacy layout -------------------------------------------------------------------------------

_SYS_INFO = {
    "protocol_version": PROTOCOL_VERSION,
    "little_endian": True,
    "type_sizes": {"short": 2, "int": 4, "long": 4},
}


def save_legacy_pickle(path, object_pickle: bytes, storages: dict[str, Storage] | None = None):
    """A legacy-layout file around a given object pickle (and its storages, by key)."""
    storages = storages or {}
    with open(path, "wb") as f:
        for header in (MAGIC_NUMBER, PROTOCOL_VERSION, _SYS_INFO):
            pickle.dump(header, f, protocol=2)
        f.write(object_pickle)
        keys = sorted(storages)
        pickle.dump(keys, f, protocol=2)
        for key in keys:
            f.write(struct.pack("<q", storages[key].data.size))
            f.write(_storage_bytes(storages[key], "little"))


def save_legacy(obj, path, *, torch03: bool = False, location: str = "cpu") -> None:
    """`torch.save(obj, path, _use_new_zipfile_serialization=False)` for numpy containers.

    `torch03=True` writes what torch 0.2 / 0.3 under Python 2 wrote (the era of torchvision's
    VGG files): tensors as `torch._utils._rebuild_tensor(storage, offset, size, stride)` and
    strings as Python 2 byte strings. `location="cuda:0"` names GPU storages (`torch.cuda.*`
    types in the torch03 style), as a file saved from a GPU does.
    """
    storages: dict[str, Storage] = {}
    pointers: dict[int, int] = {}
    types = _CUDA_STORAGE_TYPES if torch03 and location.startswith("cuda") else _STORAGE_TYPES

    def storage_id(storage: Storage):
        # torch keys legacy storages by their C pointer, as a new string at every use (so the
        # pickle repeats it rather than memoising it); any distinct numbers will do.
        key = str(pointers.setdefault(id(storage), 94_000_000_000_000 + 4096 * len(pointers)))
        storages[key] = storage
        return ("storage", types[storage.data.dtype], key, location, storage.data.size, None)

    save_legacy_pickle(path, _pickle(obj, storage_id, torch03=torch03), storages)
