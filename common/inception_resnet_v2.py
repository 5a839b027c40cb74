"""Inception-ResNet-v2 in timm's layout, and IQA-PyTorch's NIMA on it (flax.nnx, NHWC).

IQA-PyTorch (pyiqa) publishes `NIMA_InceptionV2_ava-b0c77c00.pth`; despite the name its
backbone is Inception-ResNet-v2 (spec/weights.md). pyiqa's `NIMA` (pyiqa/archs/nima_arch.py)
is

    base_model = timm.create_model("inception_resnet_v2", features_only=True)
    global_pool = AdaptiveAvgPool2d(1)
    classifier = Sequential(Flatten(), Dropout(0.0), Linear(1536, 10), Softmax(-1))

applied to the last feature map: timm's `FeatureListNet` keeps the model's modules under their
own names up to the last feature module, `conv2d_7b` (1536 channels, after its BN and ReLU),
and drops `global_pool`, `head_drop` and `classif`. Its preprocessing (inside `forward`, eval
mode) resizes the short side to 299, centre-crops 299 and normalises with timm's
`IMAGENET_INCEPTION_MEAN/STD` = 0.5/0.5: (x − 0.5) / 0.5. The normalisation is inside
`InceptionResNetV2` here; resizing and cropping are the caller's (`Nima` never resizes;
`input_size` 299 is recorded on it).

timm's network (timm/models/inception_resnet_v2.py, from Cadene's port of the TF-slim model):
every conv is a `ConvNormAct` (`.conv` without bias, `.bn` a BatchNorm with eps 1e-3 and a
ReLU); paddings are explicit and symmetric (0 unless given); max-pools are 3×3 stride 2 without
padding; the residual blocks add `scale · conv2d(concat(branches))` (a 1×1 conv with bias) to
their input, then ReLU (not after the last `block8`): scales 0.17 (`repeat`, 10 × Block35),
0.10 (`repeat_1`, 20 × Block17), 0.20 (`repeat_2`, 9 × Block8) and 1.0 (`block8`).
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from common.mobilenet import ConvBN, conv2d, he_normal
from common.nima import Nima
from common.weights import CONV, COPY, LINEAR, Entry, load_entries

BN_EPS = 1e-3  # timm's `norm_eps` for this model (TF-slim's)
INCEPTION_MEAN = INCEPTION_STD = (0.5, 0.5, 0.5)
FEATURES = 1536
INPUT_SIZE = 299
REPEATS = (10, 20, 9)  # Block35, Block17, Block8 in `repeat`, `repeat_1`, `repeat_2`


def _conv(in_ch, out_ch, kernel, *, stride=1, padding=(0, 0), rngs) -> ConvBN:
    """timm's `conv_block`: conv (no bias) -> BN (eps 1e-3) -> ReLU, symmetric `padding`."""
    kernel = (kernel, kernel) if isinstance(kernel, int) else tuple(kernel)
    padding = (padding, padding) if isinstance(padding, int) else tuple(padding)
    pads = ((padding[0], padding[0]), (padding[1], padding[1]))
    return ConvBN(in_ch, out_ch, kernel, stride=stride, padding=pads, epsilon=BN_EPS,
                  activation="relu", rngs=rngs)  # fmt: skip


def max_pool_3x3_s2(x_nhwc: jax.Array) -> jax.Array:
    """torch `MaxPool2d(3, stride=2)`: no padding, sizes floored."""
    return jax.lax.reduce_window(x_nhwc, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1), "VALID")


def avg_pool_3x3_same(x_nhwc: jax.Array) -> jax.Array:
    """torch `AvgPool2d(3, stride=1, padding=1, count_include_pad=False)`: each output is the
    mean of the window's pixels inside the image (the counts are static)."""
    pads = ((0, 0), (1, 1), (1, 1), (0, 0))
    sums = jax.lax.reduce_window(x_nhwc, 0.0, jax.lax.add, (1, 3, 3, 1), (1, 1, 1, 1), pads)
    _, h, w, _ = x_nhwc.shape

    def counts(n):  # window pixels inside the image along one axis
        c = np.full(n, 3.0)
        c[0] -= 1
        c[-1] -= 1
        return c if n > 1 else np.ones(1)

    count = np.outer(counts(h), counts(w)).astype(np.float32)
    return sums / count[None, :, :, None]


class _Sequential(nnx.Module):
    """Convs applied in order; `layers[i]` is torch's `branchK.i`."""

    def __init__(self, *layers):
        self.layers = nnx.List(layers)

    def __call__(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


class Mixed5b(nnx.Module):
    def __init__(self, *, rngs):
        self.branch0 = _conv(192, 96, 1, rngs=rngs)
        self.branch1 = _Sequential(
            _conv(192, 48, 1, rngs=rngs), _conv(48, 64, 5, padding=2, rngs=rngs)
        )
        self.branch2 = _Sequential(
            _conv(192, 64, 1, rngs=rngs),
            _conv(64, 96, 3, padding=1, rngs=rngs),
            _conv(96, 96, 3, padding=1, rngs=rngs),
        )
        self.branch3 = _conv(192, 64, 1, rngs=rngs)  # torch's branch3.1, after an avg-pool

    def __call__(self, x):
        b3 = self.branch3(avg_pool_3x3_same(x))
        return jnp.concatenate([self.branch0(x), self.branch1(x), self.branch2(x), b3], -1)


class _Residual(nnx.Module):
    """relu?(x + scale · conv2d(concat(branches(x)))), timm's Block35/Block17/Block8."""

    def __init__(self, branches, concat_ch, channels, scale, relu, *, rngs):
        for i, branch in enumerate(branches):
            setattr(self, f"branch{i}", branch)
        self.num_branches = len(branches)
        self.conv2d = nnx.Conv(concat_ch, channels, (1, 1), kernel_init=he_normal, rngs=rngs)
        self.scale = scale
        self.relu = relu

    def __call__(self, x):
        branches = [getattr(self, f"branch{i}")(x) for i in range(self.num_branches)]
        up = conv2d(jnp.concatenate(branches, -1), self.conv2d.kernel[...], 1, "VALID")
        out = x + (up + self.conv2d.bias[...]) * self.scale
        return jax.nn.relu(out) if self.relu else out


def block35(*, rngs) -> _Residual:
    branches = [
        _conv(320, 32, 1, rngs=rngs),
        _Sequential(_conv(320, 32, 1, rngs=rngs), _conv(32, 32, 3, padding=1, rngs=rngs)),
        _Sequential(
            _conv(320, 32, 1, rngs=rngs),
            _conv(32, 48, 3, padding=1, rngs=rngs),
            _conv(48, 64, 3, padding=1, rngs=rngs),
        ),
    ]
    return _Residual(branches, 128, 320, 0.17, True, rngs=rngs)


def block17(*, rngs) -> _Residual:
    branches = [
        _conv(1088, 192, 1, rngs=rngs),
        _Sequential(
            _conv(1088, 128, 1, rngs=rngs),
            _conv(128, 160, (1, 7), padding=(0, 3), rngs=rngs),
            _conv(160, 192, (7, 1), padding=(3, 0), rngs=rngs),
        ),
    ]
    return _Residual(branches, 384, 1088, 0.10, True, rngs=rngs)


def block8(scale: float = 0.20, relu: bool = True, *, rngs) -> _Residual:
    branches = [
        _conv(2080, 192, 1, rngs=rngs),
        _Sequential(
            _conv(2080, 192, 1, rngs=rngs),
            _conv(192, 224, (1, 3), padding=(0, 1), rngs=rngs),
            _conv(224, 256, (3, 1), padding=(1, 0), rngs=rngs),
        ),
    ]
    return _Residual(branches, 448, 2080, scale, relu, rngs=rngs)


class Mixed6a(nnx.Module):
    def __init__(self, *, rngs):
        self.branch0 = _conv(320, 384, 3, stride=2, rngs=rngs)
        self.branch1 = _Sequential(
            _conv(320, 256, 1, rngs=rngs),
            _conv(256, 256, 3, padding=1, rngs=rngs),
            _conv(256, 384, 3, stride=2, rngs=rngs),
        )

    def __call__(self, x):
        return jnp.concatenate([self.branch0(x), self.branch1(x), max_pool_3x3_s2(x)], -1)


class Mixed7a(nnx.Module):
    def __init__(self, *, rngs):
        self.branch0 = _Sequential(
            _conv(1088, 256, 1, rngs=rngs), _conv(256, 384, 3, stride=2, rngs=rngs)
        )
        self.branch1 = _Sequential(
            _conv(1088, 256, 1, rngs=rngs), _conv(256, 288, 3, stride=2, rngs=rngs)
        )
        self.branch2 = _Sequential(
            _conv(1088, 256, 1, rngs=rngs),
            _conv(256, 288, 3, padding=1, rngs=rngs),
            _conv(288, 320, 3, stride=2, rngs=rngs),
        )

    def __call__(self, x):
        branches = [self.branch0(x), self.branch1(x), self.branch2(x), max_pool_3x3_s2(x)]
        return jnp.concatenate(branches, -1)


class InceptionResNetV2(nnx.Module):
    """timm's `inception_resnet_v2` from `conv2d_1a` to `conv2d_7b` (its last feature map).

    Module names are timm's (`conv2d_1a`, ..., `mixed_5b`, `repeat[i]`, `mixed_6a`,
    `repeat_1[i]`, `mixed_7a`, `repeat_2[i]`, `block8`, `conv2d_7b`), so a checkpoint key maps
    to a variable path by renaming only (`timm_key`).

    Args:
      repeats: how many Block35, Block17 and Block8 make `repeat`, `repeat_1` and `repeat_2`:
        (10, 20, 9) is the network; fewer give shallow test models with every block type.
      rngs: `nnx.Rngs` for the random initialisation.

    Calling it on (N, H, W, 3) images in [0, 1] ((x − 0.5)/0.5 happens inside) returns the
    (N, H', W', 1536) map: 8×8 at 299; the smallest input is 75×75 (a 1×1 map).
    """

    def __init__(self, *, repeats: tuple[int, int, int] = REPEATS, rngs: nnx.Rngs):
        self.conv2d_1a = _conv(3, 32, 3, stride=2, rngs=rngs)
        self.conv2d_2a = _conv(32, 32, 3, rngs=rngs)
        self.conv2d_2b = _conv(32, 64, 3, padding=1, rngs=rngs)
        self.conv2d_3b = _conv(64, 80, 1, rngs=rngs)
        self.conv2d_4a = _conv(80, 192, 3, rngs=rngs)
        self.mixed_5b = Mixed5b(rngs=rngs)
        self.repeat = nnx.List([block35(rngs=rngs) for _ in range(repeats[0])])
        self.mixed_6a = Mixed6a(rngs=rngs)
        self.repeat_1 = nnx.List([block17(rngs=rngs) for _ in range(repeats[1])])
        self.mixed_7a = Mixed7a(rngs=rngs)
        self.repeat_2 = nnx.List([block8(rngs=rngs) for _ in range(repeats[2])])
        self.block8 = block8(1.0, relu=False, rngs=rngs)
        self.conv2d_7b = _conv(2080, FEATURES, 1, rngs=rngs)

    def __call__(self, images_nhwc: jax.Array) -> jax.Array:
        mean = jnp.asarray(INCEPTION_MEAN, jnp.float32)
        std = jnp.asarray(INCEPTION_STD, jnp.float32)
        x = (jnp.asarray(images_nhwc, jnp.float32) - mean) / std
        x = self.conv2d_2b(self.conv2d_2a(self.conv2d_1a(x)))
        x = self.conv2d_4a(self.conv2d_3b(max_pool_3x3_s2(x)))
        x = self.mixed_5b(max_pool_3x3_s2(x))
        for block in self.repeat:
            x = block(x)
        x = self.mixed_6a(x)
        for block in self.repeat_1:
            x = block(x)
        x = self.mixed_7a(x)
        for block in self.repeat_2:
            x = block(x)
        return self.conv2d_7b(self.block8(x))


def make_nima_inception_resnet_v2(*, rngs: nnx.Rngs | None = None) -> Nima:
    """IQA-PyTorch's NIMA with random weights: Inception-ResNet-v2 to `conv2d_7b`, global
    average pool, Dropout(0.0), Linear(1536, 10), softmax; input size 299. 54.3 M parameters."""
    rngs = nnx.Rngs(0) if rngs is None else rngs
    return Nima(
        InceptionResNetV2(rngs=rngs),
        features=FEATURES,
        pool="avg",
        input_size=INPUT_SIZE,
        dropout=0.0,  # pyiqa removed NIMA's dropout
        rngs=rngs,
    )


_BN_NAMES = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}


def timm_key(path: tuple) -> str:
    """A variable path of `make_nima_inception_resnet_v2()` -> pyiqa's state-dict key.

    ("backbone", "repeat", 3, "branch2", "layers", 1, "conv", "kernel")
        -> "base_model.repeat.3.branch2.1.conv.weight"
    ("backbone", "mixed_5b", "branch3", "bn", "mean")
        -> "base_model.mixed_5b.branch3.1.bn.running_mean"
    ("head", "kernel") -> "classifier.2.weight"
    """
    *parts, leaf = path
    if parts == ["head"]:
        return f"classifier.2.{'weight' if leaf == 'kernel' else 'bias'}"
    names = ["base_model"] + [str(p) for p in parts[1:] if p != "layers"]
    if names[1:3] == ["mixed_5b", "branch3"]:
        names.insert(3, "1")  # torch's branch3 = Sequential(AvgPool2d, conv_block)
    if parts[-1] == "bn":
        return ".".join(names + [_BN_NAMES[leaf]])
    return ".".join(names + ["weight" if leaf == "kernel" else "bias"])


def inception_resnet_v2_entries(model: Nima) -> list[Entry]:
    """One entry per variable of `model` (a `make_nima_inception_resnet_v2()`), by renaming."""
    state = nnx.to_flat_state(nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat)))
    entries = []
    for path, _ in state:
        if path == ("head", "kernel"):
            layout = LINEAR
        elif path[-1] == "kernel":
            layout = CONV
        else:
            layout = COPY
        entries.append(Entry(timm_key(path), path, layout))
    return entries


def nima_inception_resnet_v2(tensors: Mapping[str, np.ndarray], *, source: str) -> Nima:
    """IQA-PyTorch `NIMA_InceptionV2_ava` (Inception-ResNet-v2) from its state dict; strict.

    `tensors` holds the keys of pyiqa's `NIMA(base_model_name="inception_resnet_v2")`
    `state_dict()` (the checkpoint's "params" entry, unwrapped):

        base_model.conv2d_{1a,2a,2b,3b,4a,7b}.conv.weight        conv (O, I, kh, kw), no bias
        base_model.conv2d_{...}.bn.{weight,bias,running_mean,running_var}   BN, eps 1e-3
        base_model.mixed_5b.branch0.conv.weight, .branch{1,2}.{i}.conv.weight,
            .branch3.1.conv.weight (branch3.0 is the avg-pool), each with its .bn.*
        base_model.repeat.{0..9}.branch0.*, .branch{1,2}.{i}.*, .conv2d.{weight,bias}
        base_model.mixed_6a.branch0.*, .branch1.{0,1,2}.*        (branch2 is the max-pool)
        base_model.repeat_1.{0..19}.branch0.*, .branch1.{0,1,2}.*, .conv2d.{weight,bias}
        base_model.mixed_7a.branch{0,1}.{0,1}.*, .branch2.{0,1,2}.*   (branch3 is the max-pool)
        base_model.repeat_2.{0..8}.*, base_model.block8.*        as repeat_1, 2080 channels
        classifier.2.weight, classifier.2.bias                    Linear(1536, 10)
        *.num_batches_tracked                                     ignored

    Confirmed from the format's definition: pyiqa/archs/nima_arch.py (`base_model`,
    `classifier` = Flatten, Dropout, Linear, Softmax) and timm's inception_resnet_v2.py with
    `features_only=True` (timm/models/_features.py: `FeatureListNet` keeps the module names
    and stops at `conv2d_7b`; `ConvNormAct` names its parts `conv` and `bn`, "for backwards
    (weight) compatibility" with the older `BasicConv2d`). Inferred, not seen in a real file:
    that the published checkpoint was written by a timm whose `features_only` wrapper kept
    these names (timm has since 2020); a mismatch is reported key by key.

    Raises:
      CheckpointMismatchError: a missing, unexpected or wrongly shaped key (named, with shapes).
    """
    model = make_nima_inception_resnet_v2()
    load_entries(
        model,
        tensors,
        inception_resnet_v2_entries(model),
        source=source,
        ignore=lambda key: key.endswith(".num_batches_tracked"),
    )
    return model
