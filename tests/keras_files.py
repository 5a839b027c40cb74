"""Writes `.h5` files laid out exactly as Keras 2 writes them (for the reader's tests).

Keras 2's `save_weights_to_hdf5_group` (keras/engine/saving.py, tf.keras hdf5_format.py):
root attributes `layer_names`, `backend`, `keras_version`; one group per layer, in model order,
with a `weight_names` attribute (an array of byte strings; empty for a layer without weights)
and each weight stored as a dataset at `<layer>/<weight name>` (so "conv1/kernel:0" creates a
subgroup "conv1" inside the layer's group). `model.save` puts all of that under
"model_weights" and writes `model_config` and an "optimizer_weights" group beside it.
Attributes larger than HDF5's 64 KB object-header limit are split into `name0`, `name1`, ...
"""

from __future__ import annotations

import json

import h5py
import numpy as np

HDF5_OBJECT_HEADER_LIMIT = 64512


def _save_strings(group, name, values, *, chunks: int = 1):
    """Keras' `save_attributes_to_hdf5_group` for a list of strings (`chunks` > 1 splits it
    as Keras does for attributes over the header limit)."""
    data = np.asarray([v.encode("utf8") for v in values]) if values else np.asarray([])
    if chunks == 1:
        group.attrs[name] = data
        return
    for i, part in enumerate(np.array_split(data, chunks)):
        group.attrs[f"{name}{i}"] = part


def _write_layers(root, layers: dict, *, chunks: int = 1):
    """layers: {layer name: {weight name ("conv1/kernel:0"): array}} in model order."""
    _save_strings(root, "layer_names", list(layers), chunks=chunks)
    root.attrs["backend"] = b"tensorflow"
    root.attrs["keras_version"] = b"2.2.4"
    for layer, weights in layers.items():
        group = root.create_group(layer)
        _save_strings(group, "weight_names", list(weights))
        for name, value in weights.items():
            group.create_dataset(name, data=value)


def keras_layers(weights: dict, layer_order: list[str]) -> dict:
    """{"layer/w:0": array} -> {layer: {"layer/w:0": array}} in `layer_order` (layers with no
    weights, such as paddings and activations, get an empty entry)."""
    layers = {name: {} for name in layer_order}
    for key, value in weights.items():
        layers[key.split("/")[0]][key] = value
    return layers


def write_keras2_h5(path, layers: dict, *, full_model: bool = False, chunks: int = 1):
    """A Keras 2 weights file (`save_weights`) or, with `full_model`, a `model.save` file."""
    with h5py.File(path, "w") as f:
        if full_model:
            f.attrs["keras_version"] = b"2.2.4"
            f.attrs["backend"] = b"tensorflow"
            f.attrs["model_config"] = json.dumps({"class_name": "Model"}).encode("utf8")
            _write_layers(f.create_group("model_weights"), layers, chunks=chunks)
            f.create_group("optimizer_weights")
        else:
            _write_layers(f, layers, chunks=chunks)


def nest(layers: dict, model_name: str, outer: list[str]) -> dict:
    """The same weights as saved when the layers not in `outer` belong to a nested model
    `model_name` (e.g. `MobileNet(...)` called as one layer): the nested model is one layer
    whose weights are its trainable weights, then its non-trainable ones (batch-norm
    statistics), as `Model.weights` orders them."""
    inner = {k: v for layer, ws in layers.items() if layer not in outer for k, v in ws.items()}
    moving = [k for k in inner if "/moving_" in k]
    ordered = {k: inner[k] for k in inner if k not in moving} | {k: inner[k] for k in moving}
    out = {}
    for layer in outer:
        out[layer] = layers[layer]
        if layer == outer[0]:
            out[model_name] = ordered
    return out
