"""NIMA (Talebi & Milanfar, 2018): an aesthetic-score head on an image backbone (flax.nnx).

NIMA = backbone -> global average pool (or a flatten) -> dropout -> Dense(10) -> softmax over
the scores 1..10; its score is the mean Σ i·p_i (`mean_score`). PIEA uses it as the guider,
QAGAN as a metric (`nima_quality`).

Pretrained NIMAs come from public checkpoints (spec/weights.md): `load_nima(path,
backbone=NAME)` for the formats in `NIMA_BACKBONES`. The two VGG16 formats are built here; the
MobileNet, Inception-ResNet-v2 and BN-Inception ones in `common.mobilenet`,
`common.inception_resnet_v2` and `common.bn_inception`, which are imported only when asked for.
The paper's own backbone (BN-Inception) has no public AVA checkpoint: it is trained here
(`experiments.nima_ava`) from `make_nima("bn_inception")`, optionally starting from ImageNet
weights (`load_imagenet_backbone`), and handed on with `save_nima`, whose directory (or the work
directory holding it as `export/`) `load_nima` reads. A NIMA made without a checkpoint
(`random_nima_vgg16`, `make_nima`) has random weights and its scores mean nothing.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import json
from collections.abc import Mapping
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from common import weights
from common.vgg import VGG, random_vgg16, torchvision_entries
from common.weights import CheckpointError

NUM_SCORES = 10


def mean_score(probs) -> jax.Array:
    """Mean score Σ_{i=1..10} i · p_i of (N, 10) score probabilities -> (N,), in [1, 10]."""
    probs = jnp.asarray(probs)
    return probs @ jnp.arange(1, NUM_SCORES + 1, dtype=probs.dtype)


class Nima(nnx.Module):
    """NIMA head on a backbone.

    Args:
      backbone: an `nnx.Module` mapping (N, H, W, 3) images in [0, 1] to an NHWC feature map,
        or to a dict of maps (then `tap` names the one to use). Any input normalisation the
        backbone expects happens inside it.
      features: inputs of the dense layer: the backbone's channels for `pool="avg"`, H·W·C
        of its map for `pool="flatten"`, its output width for `pool="none"`.
      tap: the key of the backbone's output dict; None when it returns an array.
      pool: "avg" - global average pool of an NHWC map (NIMA); "flatten" - flatten the NHWC
        map (heads trained on a fixed-size map; loaders reorder torch's NCHW-flatten
        kernels, `common.weights.nchw_flatten_linear`); "none" - the backbone already
        returns (N, features).
      head_relu: a ReLU before the dropout (nima.pytorch's head).
      input_size: the square size the model was trained at (e.g. 224), used by guiders and
        metrics that resize inside their differentiated function; None for native resolution.
        The model itself never resizes.
      dropout: dropout rate before the dense layer (active only in training mode).
      rngs: `nnx.Rngs` for the head's initialisation and dropout.

    Calling it on (N, H, W, 3) images returns (N, 10) probabilities of the scores 1..10.
    """

    def __init__(
        self,
        backbone: nnx.Module,
        *,
        features: int,
        tap: str | None = None,
        pool: str = "avg",
        head_relu: bool = False,
        input_size: int | None = 224,
        dropout: float = 0.75,
        rngs: nnx.Rngs,
    ):
        if pool not in ("avg", "flatten", "none"):
            raise ValueError(f"unknown NIMA pooling {pool!r}: avg | flatten | none")
        self.backbone = backbone
        self.tap = tap
        self.pool = pool
        self.head_relu = head_relu
        self.input_size = input_size
        self.dropout = nnx.Dropout(dropout, rngs=rngs)
        self.head = nnx.Linear(features, NUM_SCORES, rngs=rngs)

    def __call__(self, images_nhwc: jax.Array) -> jax.Array:
        features = self.backbone(images_nhwc)
        if self.tap is not None:
            features = features[self.tap]
        if self.pool == "avg":
            features = jnp.mean(features, axis=(1, 2))
        elif self.pool == "flatten":
            features = features.reshape(features.shape[0], -1)
        if self.head_relu:
            features = jax.nn.relu(features)
        return jax.nn.softmax(self.head(self.dropout(features)), axis=-1)


def random_nima_vgg16(seed: int = 0, *, width: int = 1, input_size: int | None = 224) -> Nima:
    """NIMA with a VGG16 backbone (features up to pool5, global average pool, Dense(10)) and
    random weights — the structure of IQA-PyTorch's `NIMA_VGG16_ava`.

    `width` divides the VGG channels for tiny test models (1 = the real 14.7 M-parameter
    backbone). Random weights: for tests and benchmarks only; its scores mean nothing.
    """
    backbone = random_vgg16(seed, taps=("pool5",), width=width)
    return Nima(
        backbone,
        features=backbone.channels["pool5"],
        tap="pool5",
        input_size=input_size,
        rngs=nnx.Rngs(seed + 1),
    )


# --- Public checkpoint formats ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Format:
    module: str  # holds make_nima_<name>(*, rngs, **arch) and nima_<name>(tensors, *, source)
    probe: str | None  # a key of the format's state dict (finds it inside wrappers); None: as is
    origin: str
    arch: tuple[str, ...] = ()  # keyword arguments of make_nima_<name> that change the model


_FORMATS = {
    "vgg16_gap": _Format(
        "common.nima",
        "classifier.2.weight",
        "IQA-PyTorch NIMA_VGG16_ava-dc4e8265.pth",
        arch=("width", "dropout"),
    ),
    "vgg16_flatten": _Format(
        "common.nima", "classifier.1.weight", "Neural-IMage-Assessment (2020 release)"
    ),
    "vgg16_flatten_imagenet": _Format(
        "common.nima", "classifier.1.weight", "Neural-IMage-Assessment (2021 release, epoch 34)"
    ),
    "mobilenet_v2": _Format("common.mobilenet", "head.2.weight", "nima.pytorch v1"),
    "inception_resnet_v2": _Format(
        "common.inception_resnet_v2",
        "classifier.2.weight",
        "IQA-PyTorch NIMA_InceptionV2_ava-b0c77c00.pth",
    ),
    "mobilenet_keras": _Format("common.mobilenet", None, "idealo / titu1994 Keras .h5"),
    "bn_inception": _Format(
        "common.bn_inception",
        "last_linear.weight",
        "trained here on AVA (experiments.nima_ava), or a torch NIMA on pretrainedmodels' "
        "bninception with last_linear = Linear(1024, 10)",
        arch=("width", "dropout", "input_size"),
    ),
}
NIMA_BACKBONES = tuple(_FORMATS)
# The subdirectory of a training work directory (experiments.nima_ava) that holds the model
# handed on: a `save_nima` directory. `load_nima(workdir)` reads it.
NIMA_EXPORT_DIR = weights.EXPORT_DIR


def _builders(backbone: str):
    if backbone not in _FORMATS:
        raise ValueError(f"unknown NIMA backbone {backbone!r}: one of {', '.join(_FORMATS)}")
    module_name = _FORMATS[backbone].module
    try:
        module = importlib.import_module(module_name)
        return getattr(module, f"make_nima_{backbone}"), getattr(module, f"nima_{backbone}")
    except (ImportError, AttributeError) as e:
        raise ImportError(
            f"NIMA backbone {backbone!r} is not available in this installation: it needs "
            f"{module_name}.make_nima_{backbone} and nima_{backbone} ({e})"
        ) from None


def load_nima(path, *, backbone: str) -> Nima:
    """A pretrained NIMA from a public checkpoint, a converted directory or a training run.

    Args:
      path: one of
        (a) the checkpoint file (torch `.pth`, `.safetensors` or Keras `.h5`, by content);
        (b) a converted directory: written by `python -m common.weights convert SRC --format
            BACKBONE`, or by `save_nima` for a model trained here (the model is rebuilt with
            the `arch` its manifest records, e.g. a narrow smoke network);
        (c) a training work directory of `experiments.nima_ava`, recognised by its
            `NIMA_EXPORT_DIR` ("export/") subdirectory, a directory of kind (b).
      backbone: the checkpoint's format, one of `NIMA_BACKBONES`:
        "vgg16_gap" (IQA-PyTorch `NIMA_VGG16_ava`, `nima_vgg16_gap`), "vgg16_flatten" and
        "vgg16_flatten_imagenet" (Neural-IMage-Assessment's 2020 and 2021 releases,
        `nima_vgg16_flatten`), "mobilenet_v2" (nima.pytorch v1), "inception_resnet_v2"
        (IQA-PyTorch `NIMA_InceptionV2_ava`, really Inception-ResNet-v2), "mobilenet_keras"
        (idealo / titu1994 `.h5`), "bn_inception" (the paper's backbone: trained here, or a
        torch state dict in pretrainedmodels' layout, `common.bn_inception.nima_bn_inception`).

    Returns:
      A `Nima` in evaluation mode (dropout off, batch norm on its running statistics) mapping
      (N, H, W, 3) images in [0, 1] to (N, 10) probabilities, with the format's input
      normalisation inside and its training input size as `input_size` (the model never
      resizes; guiders and `nima_quality` do).

    A file's state dict is first taken out of its wrapper ({"params": ...} as IQA-PyTorch
    saves, {"state_dict": ...}, DataParallel's "module.", see
    `common.weights.unwrap_state_dict`); then every key must match the format exactly
    (`CheckpointMismatchError` otherwise, naming the key and both shapes). A directory must
    have been converted or saved for `backbone`.

    Raises:
      ValueError: unknown backbone. ImportError: its builder module is not installed.
      FileNotFoundError, CheckpointError: unreadable, unsafe or mismatching checkpoints, a
        directory of another backbone, a work directory without `export/`.
    """
    make, from_tensors = _builders(backbone)
    converted = weights.find_converted(path)
    if converted is not None:
        tensors = weights.read_converted(converted, format=backbone)
        arch = weights.read_manifest(converted).get("arch") or {}
        _check_arch(backbone, arch, what=f"{converted}: manifest arch")
        try:
            model = weights.cached_empty_module(make, **arch)
        except TypeError:  # unhashable arch values (lists): trace the structure again
            model = weights.empty_module(functools.partial(make, **arch))
        weights.load_entries(model, tensors, weights.module_entries(model), source=str(converted))
    else:
        if Path(path).is_dir():
            raise CheckpointError(
                f"{path}: a directory, but neither a converted directory (no "
                f"{weights.CONVERTED_MANIFEST}) nor a training work directory with a finished "
                f"{NIMA_EXPORT_DIR}/ (has its training run finished?)"
            )
        source = str(path)
        tensors = weights.read_checkpoint(path)
        probe = _FORMATS[backbone].probe
        if probe is not None:
            tensors = weights.unwrap_state_dict(tensors, probe=probe, source=source)
        model = from_tensors(tensors, source=source)
    model.eval()  # a pretrained scorer: dropout off, batch norm on its running statistics
    return model


def _check_arch(backbone: str, arch: Mapping, *, what: str = "make_nima") -> None:
    allowed = _FORMATS[backbone].arch
    unexpected = sorted(set(arch) - set(allowed))
    if unexpected:
        takes = f"it takes {', '.join(allowed)}" if allowed else "it takes none"
        raise TypeError(
            f"{what}: unexpected architecture argument(s) {', '.join(map(repr, unexpected))} "
            f"for NIMA backbone {backbone!r} ({takes})"
        )


def make_nima(backbone: str, *, rngs: nnx.Rngs | None = None, **arch) -> Nima:
    """A NIMA of any `NIMA_BACKBONES` format with random weights (for training, or tests).

    Args:
      backbone: one of `NIMA_BACKBONES`.
      rngs: `nnx.Rngs` for the initialisation and dropout (default `nnx.Rngs(0)`).
      **arch: passed to the format's `make_nima_<backbone>`: "bn_inception" takes `width`
        (channel multiplier, 1.0), `dropout` (0.75) and `input_size` (224); "vgg16_gap" takes
        `width` (channel divisor, 1); the other formats take none.

    Returns:
      The model as its builder makes it (nnx's training mode: dropout on; BN-Inception's batch
      norm on batch statistics). `save_nima(model, ..., arch=arch)` records `arch` so that
      `load_nima` rebuilds the same structure.

    Raises:
      ValueError: unknown backbone, or a bad `arch` value. TypeError: an `arch` keyword the
        format does not take (named). ImportError: the builder module is not installed.
    """
    make, _ = _builders(backbone)
    _check_arch(backbone, arch)
    return make(rngs=rngs, **arch)


# --- ImageNet backbones (to train NIMA from) --------------------------------------------------


def _full_width(model: Nima, backbone: str) -> None:
    width = getattr(model.backbone, "width", 1)
    if width != 1:
        raise ValueError(
            f"ImageNet weights fit only the full-width {backbone} network; this model's "
            f"backbone has width {width} (a narrow smoke model trains from random weights)"
        )


def _imagenet_bn_inception(model: Nima, path) -> None:
    from common import bn_inception  # noqa: PLC0415  (imported only when asked for)

    bn_inception.load_imagenet_into(model.backbone, path)


def _imagenet_vgg16(model: Nima, path) -> None:
    from common.vgg import load_vgg16  # noqa: PLC0415

    pretrained = load_vgg16(path, taps=model.backbone.taps)
    if pretrained.imagenet_normalize != model.backbone.imagenet_normalize:
        raise ValueError("the model's VGG16 does not normalise its input as torchvision's does")
    nnx.update(model.backbone, nnx.state(pretrained, nnx.Param))


def mobilenet_v2_imagenet_entries() -> list[weights.Entry]:
    """Keys of nima.pytorch v1's ImageNet MobileNetV2 -> `MobileNetV2` (a NIMA's backbone).

    nima.pytorch v1 (nima/mobile_net_v2.py `mobile_net_v2(pretrained=True)`) builds its
    MobileNetV2 and `load_state_dict`s the public `mobilenetv2.pth.tar` (tonylins'
    pytorch-mobilenet-v2 ImageNet weights) into it, then keeps `features` as the NIMA's
    `base_model.0`. So that file holds the NIMA file's backbone keys with `features.` for
    `base_model.0.` (`features.{i}.0.weight`, `features.{i}.conv.{0,1,3,4,6,7}.*`, ...), plus
    `classifier.1.{weight,bias}` (1000 classes, ignored). Confirmed from the definition, not from
    the released file.
    """
    from common import mobilenet  # noqa: PLC0415

    prefix = "base_model.0."
    return [
        weights.Entry("features." + e.key[len(prefix) :], e.path[1:], e.layout)
        for e in mobilenet.mobilenet_v2_entries()
        if e.key.startswith(prefix)
    ]


def _imagenet_mobilenet_v2(model: Nima, path) -> None:
    source = str(path)
    tensors = weights.unwrap_state_dict(
        weights.read_checkpoint(path), probe="features.0.0.weight", source=source
    )
    weights.load_entries(
        model.backbone,
        tensors,
        mobilenet_v2_imagenet_entries(),
        source=source,
        ignore=lambda k: k.startswith("classifier.") or k.endswith(".num_batches_tracked"),
    )


_IMAGENET = {
    "bn_inception": _imagenet_bn_inception,
    "vgg16_gap": _imagenet_vgg16,
    "mobilenet_v2": _imagenet_mobilenet_v2,
}


def load_imagenet_backbone(model: Nima, path, *, backbone: str) -> None:
    """Copies ImageNet weights into `model.backbone` in place (the head is left as it is).

    Args:
      model: a NIMA built by `make_nima(backbone)` at full width.
      path: "bn_inception": pretrainedmodels' `bn_inception-*.pth` (or a `.safetensors` /
        converted directory, see `common.bn_inception.load_bn_inception`); "vgg16_gap":
        torchvision's `vgg16-397923af.pth`, timm's `vgg16.tv_in1k` safetensors or a directory
        converted with `--format vgg16` (`common.vgg.load_vgg16`); "mobilenet_v2": the
        ImageNet MobileNetV2 nima.pytorch v1 starts from, `mobilenetv2.pth.tar`
        (`mobilenet_v2_imagenet_entries`).
      backbone: the model's format.

    Every needed key must be there with its exact shape (`CheckpointMismatchError` naming key
    and shapes); the ImageNet classifier and `num_batches_tracked` are ignored. The model's
    training/evaluation mode is kept.

    Raises:
      ValueError: a backbone without an ImageNet loader, or a narrow (width != 1) model.
      FileNotFoundError, CheckpointError: unreadable or mismatching checkpoints.
    """
    if backbone not in _IMAGENET:
        raise ValueError(
            f"no ImageNet weights for NIMA backbone {backbone!r}: one of {', '.join(_IMAGENET)}"
        )
    _full_width(model, backbone)
    _IMAGENET[backbone](model, path)


# --- Handing a trained NIMA on ----------------------------------------------------------------


def _variable_shapes(module: nnx.Module) -> dict[str, tuple[int, ...]]:
    state = nnx.state(module, nnx.Any(nnx.Param, nnx.BatchStat))
    return {
        ".".join(map(str, p)): tuple(np.shape(v.get_value())) for p, v in nnx.to_flat_state(state)
    }


def save_nima(
    model: Nima,
    out_dir,
    *,
    backbone: str,
    arch: Mapping | None = None,
    run: Mapping | None = None,
    overwrite: bool = False,
) -> dict:
    """Writes a NIMA trained here as a converted directory that `load_nima` reads.

    Args:
      model: the trained NIMA (its Param and BatchStat variables are saved).
      out_dir: the directory (created; e.g. `<workdir>/NIMA_EXPORT_DIR`). A non-empty one is
        refused unless `overwrite`.
      backbone: its format, one of `NIMA_BACKBONES`.
      arch: the `make_nima` keyword arguments the model was built with (JSON values); they are
        recorded, and `load_nima` rebuilds the model with them.
      run: free-form JSON about the run (work directory, step, data set, test metrics, ...),
        recorded in the manifest as is.
      overwrite: replace an earlier export.

    Returns:
      The manifest (`out_dir/manifest.json`): format, `"source": null` (no checkpoint file;
      `common.weights.source_sha256` then names the parameters' SHA-256), arch, run, input size.

    Raises:
      ValueError: unknown backbone, or `model` is not what `make_nima(backbone, **arch)`
        builds (a variable missing or of another shape: the export could not be loaded).
      TypeError: an `arch` key the backbone does not take, or values that are not JSON.
      FileExistsError: `out_dir` exists and is not empty, without `overwrite`.
    """
    arch = dict(arch or {})
    make, _ = _builders(backbone)
    _check_arch(backbone, arch, what="save_nima")
    json.dumps({"arch": arch, "run": run})  # TypeError now, not a half-written directory
    try:
        abstract = weights.cached_empty_module(make, **arch)
    except TypeError:  # unhashable arch values
        abstract = nnx.eval_shape(functools.partial(make, **arch))
    expected = _variable_shapes(abstract)
    got = _variable_shapes(model)
    if got != expected:
        diff = sorted(set(got.items()) ^ set(expected.items()))[:4]
        raise ValueError(
            f"save_nima: the model is not make_nima({backbone!r}, **{arch}): variables differ "
            f"(e.g. {diff}); pass the arch it was built with"
        )
    return weights.save_converted(
        model,
        out_dir,
        format=backbone,
        source=None,
        input_size=model.input_size,
        arch=arch,
        run=dict(run) if run is not None else None,
        overwrite=overwrite,
    )


def make_nima_vgg16_gap(
    *, rngs: nnx.Rngs | None = None, width: int = 1, dropout: float = 0.0
) -> Nima:
    """IQA-PyTorch's `NIMA_VGG16_ava` structure with random weights: VGG16 features to pool5
    (ImageNet mean/std inside), global average pool, Linear(512, 10), softmax; 224 input.
    No dropout by default (IQA-PyTorch removed it; training here uses the NIMA paper's 0.75).
    `width` divides the VGG channels (`common.vgg.VGG`) for narrow smoke runs; checkpoints
    need 1."""
    if not isinstance(width, int) or width < 1:
        raise ValueError(f"vgg16_gap width is a channel divisor, an int >= 1; got {width!r}")
    rngs = rngs or nnx.Rngs(0)
    backbone = VGG("vgg16", taps=("pool5",), width=width, rngs=rngs)
    features = backbone.channels["pool5"]
    return Nima(
        backbone, features=features, tap="pool5", dropout=dropout, input_size=224, rngs=rngs
    )


def nima_vgg16_gap(tensors: Mapping[str, np.ndarray], *, source: str) -> Nima:
    """IQA-PyTorch `NIMA_VGG16_ava` from its state dict (already out of its "params" wrapper).

    Keys (from pyiqa/archs/nima_arch.py `NIMA(base_model_name="vgg16")`: `base_model` =
    `timm.create_model("vgg16", features_only=True)`, a `FeatureListNet` that flattens the
    `features` Sequential into `features_<N>` children and stops at the last feature module,
    features.30 = pool5; `classifier` = Sequential(Flatten, Dropout(0), Linear, Softmax)):
      base_model.features_{0,2,5,7,10,12,14,17,19,21,24,26,28}.weight (O, I, 3, 3), .bias (O,)
      classifier.2.weight (10, 512), classifier.2.bias (10,)
    Confirmed from the definitions (pyiqa nima_arch.py, timm vgg.py and _features.py), not
    from the released file, which could not be inspected here; "base_model.features.<N>."
    (an unflattened Sequential) is accepted too. The pooled map is pool5 (timm's last
    VGG feature is the final max-pool), averaged over space. Preprocessing (pyiqa
    `preprocess`): ImageNet mean/std of [0, 1] RGB at 224 (resize short side 224, centre crop).
    """
    model = weights.empty_module(make_nima_vgg16_gap)
    prefix = (
        "base_model.features."
        if "base_model.features.0.weight" in tensors
        else "base_model.features_"
    )
    entries = torchvision_entries(model.backbone, key_prefix=prefix, path=("backbone",))
    entries += [
        weights.Entry("classifier.2.weight", ("head", "kernel"), weights.LINEAR),
        weights.Entry("classifier.2.bias", ("head", "bias")),
    ]
    weights.load_entries(model, tensors, entries, source=source)
    return model


def make_nima_vgg16_flatten(
    *, rngs: nnx.Rngs | None = None, imagenet_normalize: bool = False
) -> Nima:
    """Neural-IMage-Assessment's structure with random weights: VGG16 features to pool5 (no
    input normalisation unless `imagenet_normalize`), flatten of the 7×7×512 map, Dropout(0.75),
    Linear(25088, 10), softmax; the input must be 224×224 (the flatten fixes the map size)."""
    rngs = rngs or nnx.Rngs(0)
    backbone = VGG("vgg16", taps=("pool5",), imagenet_normalize=imagenet_normalize, rngs=rngs)
    return Nima(
        backbone, features=7 * 7 * 512, tap="pool5", pool="flatten", input_size=224, rngs=rngs
    )


def make_nima_vgg16_flatten_imagenet(*, rngs: nnx.Rngs | None = None) -> Nima:
    """`make_nima_vgg16_flatten` with ImageNet mean/std inside (the 2021 release)."""
    return make_nima_vgg16_flatten(rngs=rngs, imagenet_normalize=True)


def nima_vgg16_flatten(
    tensors: Mapping[str, np.ndarray], *, source: str, imagenet_normalize: bool = False
) -> Nima:
    """Neural-IMage-Assessment (yunxiaoshi / kentsyx) NIMA from its state dict.

    Keys (model/model.py: `features` = torchvision vgg16's `features`, `classifier` =
    Sequential(Dropout(0.75), Linear(25088, 10), Softmax); main.py saves
    `model.state_dict()`):
      features.{0,2,5,7,10,12,14,17,19,21,24,26,28}.weight (O, I, 3, 3), .bias (O,)
      classifier.1.weight (10, 25088), classifier.1.bias (10,)
    Confirmed from the definition, not from a released file. Multi-GPU training wraps
    `features` in DataParallel ("features.module.<N>."); `load_nima` removes that level. The
    Linear reads torch's `view(N, -1)` of the NCHW pool5 map (index c·49 + y·7 + x); its rows
    are reordered for the NHWC flatten (`common.weights.nchw_flatten_linear`).

    Preprocessing: the 2020 release (the kentsyx fork's code, Google-Drive file
    1NISOS1a…) trained on `ToTensor()` values in [0, 1] with no mean/std ("vgg16_flatten",
    as spec/weights.md says); the 2021 retraining in yunxiaoshi's repository (epoch-34 file,
    commit ea37c87) added ImageNet `Normalize` ("vgg16_flatten_imagenet",
    `imagenet_normalize=True`). Both resize the short side to 256 and crop 224.
    """
    model = weights.empty_module(
        functools.partial(make_nima_vgg16_flatten, imagenet_normalize=imagenet_normalize)
    )
    entries = torchvision_entries(model.backbone, path=("backbone",))
    entries += [
        weights.Entry(
            "classifier.1.weight", ("head", "kernel"), weights.nchw_flatten_linear(512, 7, 7)
        ),
        weights.Entry("classifier.1.bias", ("head", "bias")),
    ]
    weights.load_entries(model, tensors, entries, source=source)
    return model


def nima_vgg16_flatten_imagenet(tensors: Mapping[str, np.ndarray], *, source: str) -> Nima:
    """`nima_vgg16_flatten` for the 2021 release (ImageNet mean/std inside)."""
    return nima_vgg16_flatten(tensors, source=source, imagenet_normalize=True)


# --- Scoring a set of images ---------------------------------------------------------------------

PROTOCOLS = ("uegan", "resize", "native")
UEGAN_RESIZE = 256  # torchvision Resize(256): the short side
UEGAN_CROP = 224  # then CenterCrop(224)


def uegan_geometry(height: int, width: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """((resized H, W), (crop top, left)) of UEGAN's `transforms.Resize(256)` followed by
    `transforms.CenterCrop(224)` (metrics/NIMA/CalcNIMA.py `prepare_image`), with
    torchvision's integer rules: the long side is int(256 · long / short), the crop offset
    int(round((size − 224) / 2)) (Python's round half to even)."""
    if height <= width:
        size = (UEGAN_RESIZE, int(UEGAN_RESIZE * width / height))
    else:
        size = (int(UEGAN_RESIZE * height / width), UEGAN_RESIZE)
    offset = tuple(int(round((n - UEGAN_CROP) / 2.0)) for n in size)
    return size, offset


def _prepare(image: jax.Array, protocol: str, input_size: int | None) -> jax.Array:
    if protocol == "uegan":
        (h, w), (top, left) = uegan_geometry(*image.shape[:2])
        if (h, w) != image.shape[:2]:
            image = jax.image.resize(image, (h, w, 3), method="linear", antialias=True)
        return image[top : top + UEGAN_CROP, left : left + UEGAN_CROP]
    if protocol == "resize" and input_size is not None:
        size = (input_size, input_size, 3)
        return jax.image.resize(image, size, method="linear", antialias=True)
    return image


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _batch_scores(graphdef, protocol, input_size, state, images):
    x = jax.vmap(lambda im: _prepare(im, protocol, input_size))(images)
    return mean_score(nnx.merge(graphdef, state)(x))


def _as_unit_float(image) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected (H, W, 3) images, got shape {image.shape}")
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255.0
    return image.astype(np.float32)


def nima_quality(
    images, model: nnx.Module, *, protocol: str = "uegan", batch_size: int = 16
) -> np.ndarray:
    """NIMA mean scores Σ i·p_i of a set of images, the way QAGAN's evaluation scores them.

    Args:
      images: (N, H, W, 3) array or a sequence of (H, W, 3) images (sizes may differ), RGB,
        float in [0, 1] or uint8.
      model: a NIMA (`load_nima`); run in evaluation mode (dropout off), not modified.
      protocol: "uegan" (spec/qagan.md §8; UEGAN's CalcNIMA: short side resized to 256, long
        side int(256·long/short), centre crop 224, no other scaling — the protocol of the
        MobileNetV2 model, "mobilenet_v2"); "resize" (square resize to `model.input_size`);
        "native" (as given; not for flatten heads, which need their training size).
      batch_size: images per compiled call; one program is compiled per image size.

    Returns:
      (N,) float32 scores in [1, 10], in input order. The set's average is the caller's:
      UEGAN divides its sum by N − 1 (`calc_nima`), not N.

    Resizing is antialiased bilinear (`jax.image.resize`), torchvision's PIL bilinear on float
    values; PIL additionally rounds the resized image to 8 bits, which is not reproduced.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}: one of {', '.join(PROTOCOLS)}")
    input_size = getattr(model, "input_size", None)
    if protocol == "native" and getattr(model, "pool", None) == "flatten":
        raise ValueError("a flatten head needs its training size: use protocol 'resize'")
    images = [_as_unit_float(image) for image in images]
    copy = nnx.merge(*nnx.split(model))
    copy.eval()
    graphdef, state = nnx.split(copy)
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, image in enumerate(images):
        groups.setdefault(image.shape, []).append(i)
    scores = np.empty(len(images), np.float32)
    for indices in groups.values():
        batch = min(batch_size, len(indices))
        for start in range(0, len(indices), batch):
            chunk = indices[start : start + batch]
            stacked = np.stack([images[i] for i in chunk])
            if len(chunk) < batch:  # keep one compiled shape: pad with copies of the last image
                stacked = np.concatenate([stacked, np.repeat(stacked[-1:], batch - len(chunk), 0)])
            result = _batch_scores(graphdef, protocol, input_size, state, stacked)
            scores[chunk] = np.asarray(result)[: len(chunk)]
    return scores
