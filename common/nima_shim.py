"""TEMPORARY stand-in for helper A's NIMA interface (issue 13, branch issue13-bninception).

Provides the agreed names — `make_nima`, `load_imagenet_backbone`, `save_nima`, `load_nima`,
`NIMA_EXPORT_DIR` — for the backbones that exist on main (VGG16 with a width divisor,
MobileNetV2), so that the NIMA trainer can be written and tested before A's branch is merged.
Deleted when `common.nima` provides them; nothing outside `common.nima_training` imports it.
"""

from __future__ import annotations

import json
from pathlib import Path

from flax import nnx

from common import nima, weights
from common.vgg import VGG

NIMA_EXPORT_DIR = "export"
_RUN_FILE = "run.json"


def make_nima(backbone: str, *, rngs: nnx.Rngs | None = None, **arch) -> nima.Nima:
    """A trainable NIMA (dropout 0.75) with random weights."""
    rngs = rngs or nnx.Rngs(0)
    if backbone == "vgg16_gap":
        width = int(arch.get("width", 1))
        vgg = VGG("vgg16", taps=("pool5",), width=width, rngs=rngs)
        return nima.Nima(vgg, features=vgg.channels["pool5"], tap="pool5", rngs=rngs)
    if backbone == "mobilenet_v2":
        from common.mobilenet import make_nima_mobilenet_v2  # noqa: PLC0415

        return make_nima_mobilenet_v2(rngs=rngs)
    raise NotImplementedError(f"shim: backbone {backbone!r} arrives with helper A's branch")


def load_imagenet_backbone(model: nima.Nima, path, *, backbone: str) -> None:
    raise NotImplementedError("shim: ImageNet backbone weights arrive with helper A's branch")


def save_nima(model, out_dir, *, backbone: str, arch: dict, run=None, overwrite=False) -> dict:
    """Params + BatchStats into `out_dir` (common.weights' converted layout) and run.json."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    from safetensors.numpy import save_file  # noqa: PLC0415

    (out / _RUN_FILE).write_text(json.dumps({"backbone": backbone, "arch": arch, "run": run}))
    source = out / "trained.safetensors"
    save_file(weights.module_arrays(model), source)
    return weights.save_converted(
        model, out, format=backbone, source=source, input_size=model.input_size, overwrite=True
    )


def load_nima(path, *, backbone: str) -> nima.Nima:
    """A NIMA from `path/export` (a trainer's work directory) or an export directory."""
    path = Path(path)
    if (path / NIMA_EXPORT_DIR).is_dir():
        path = path / NIMA_EXPORT_DIR
    meta = json.loads((path / _RUN_FILE).read_text())
    tensors = weights.read_converted(path, format=backbone)
    model = weights.empty_module(lambda: make_nima(backbone, **meta["arch"]))
    weights.load_entries(model, tensors, weights.module_entries(model), source=str(path))
    model.eval()
    return model
