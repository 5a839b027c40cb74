"""Reading Keras 2 `.h5` / `.hdf5` weight files into numpy, with h5py (an optional extra).

Keras 2 (standalone 2.x and tf.keras up to TF 2.15) writes weights the same way whether
`model.save_weights(path)` or `model.save(path)` (a full model) made the file; the full model
nests everything under a top-level group "model_weights" and adds the config and optimiser
state beside it:

    [model_weights/]                    attrs: layer_names = [b"input_1", b"conv1", ...]
        conv1/                          attrs: weight_names = [b"conv1/kernel:0"]
            conv1/kernel:0              dataset (3, 3, 3, 32)
        conv1_bn/                       attrs: weight_names = [b"conv1_bn/gamma:0", ...]
            conv1_bn/gamma:0 ...
        mobilenet_1.00_224/             a nested model is one layer of the outer model:
            conv1/kernel:0 ...          attrs: weight_names = [b"conv1/kernel:0", ...]

Keras splits an attribute too large for one HDF5 attribute into `name0`, `name1`, ...
(`save_attributes_to_hdf5_group`); both forms are read. Keras 3's `.weights.h5` layout
("layers/.../vars/0") is a different format and is refused with a clear error.
"""

from __future__ import annotations

import os

import numpy as np

from common.weights import CheckpointError


def _strings(group, name: str) -> list[str] | None:
    """A Keras string-list attribute (possibly chunked as name0, name1, ...), or None."""
    if name in group.attrs:
        values = [group.attrs[name]]
    else:
        values, chunk = [], 0
        while f"{name}{chunk}" in group.attrs:
            values.append(group.attrs[f"{name}{chunk}"])
            chunk += 1
        if not values:
            return None
    out = []
    for value in values:
        for item in np.atleast_1d(np.asarray(value)).tolist():
            out.append(item.decode("utf8") if isinstance(item, bytes) else str(item))
    return out


def _key(layer: str, weight: str, nested: bool) -> str:
    """The "layer/weight:0" key of one weight.

    A plain layer's weights are named "<layer>/<weight>:0" by Keras, but the variable-scope
    part can carry a suffix ("conv1_1/kernel:0") when the model was built twice in one TF
    graph; the group's own name is the layer's name, so the key is built from it. A nested
    model's weights keep their inner layer's name (the last scope component).
    """
    parts = weight.split("/")
    if nested and len(parts) >= 2:
        return "/".join(parts[-2:])
    return f"{layer}/{parts[-1]}"


def read_keras_h5(path) -> dict[str, np.ndarray]:
    """Reads the weights of a Keras 2 `.h5` file as {"layer/weight:0": numpy array}.

    Keys are the layer's name and Keras' weight name ("conv1/kernel:0",
    "conv1_bn/moving_mean:0", "dense_1/bias:0"); the weights of a nested model (e.g. a
    MobileNet used as one layer of the NIMA model) appear under their own layers' names, as
    if the nested model's layers were top-level layers. Arrays keep the file's layout (Keras
    kernels are HWIO) and dtype.

    Raises:
      CheckpointError: h5py missing, not an HDF5 file, not a Keras 2 weights layout, a weight
        listed but absent, or two weights with the same key; the message names the file.
    """
    try:
        import h5py
    except ImportError as err:
        raise CheckpointError(
            f"{path}: reading Keras .h5 files needs h5py, an optional extra (pip install h5py)"
        ) from err
    path = os.fspath(path)
    try:
        handle = h5py.File(path, "r")
    except OSError as err:
        raise CheckpointError(f"{path}: not a readable HDF5 file ({err})") from err
    with handle:
        root = handle["model_weights"] if "model_weights" in handle else handle
        layers = _strings(root, "layer_names")
        if layers is None:
            hint = (
                " (it looks like a Keras 3 .weights.h5 file, which is not supported)"
                if "layers" in root or "vars" in root
                else ""
            )
            raise CheckpointError(
                f"{path}: no 'layer_names' attribute: not a Keras 2 weights file{hint}"
            )
        tensors: dict[str, np.ndarray] = {}
        origin: dict[str, str] = {}
        for layer in layers:
            if layer not in root:
                raise CheckpointError(f"{path}: layer {layer!r} is listed but has no group")
            group = root[layer]
            weights = _strings(group, "weight_names") or []
            nested = len({w.split("/")[-2] for w in weights if "/" in w}) > 1
            for weight in weights:
                if weight not in group or not isinstance(group[weight], h5py.Dataset):
                    raise CheckpointError(
                        f"{path}: weight {weight!r} of layer {layer!r} is listed but not stored"
                    )
                key = _key(layer, weight, nested)
                where = f"{layer}/{weight}"
                if key in tensors:
                    raise CheckpointError(
                        f"{path}: two weights map to {key!r} ({origin[key]!r} and {where!r})"
                    )
                tensors[key] = np.asarray(group[weight][()])
                origin[key] = where
    return tensors
