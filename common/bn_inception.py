"""BN-Inception (Inception-v2, Ioffe & Szegedy 2015), the paper's NIMA backbone, in flax.nnx.

The network is the one of Cadene's `pretrainedmodels` (`pretrainedmodels/models/bninception.py`,
read for this port), itself a conversion of the Caffe model behind yjxiong's
`bn_inception-9f5701afb96c8044.pth` (tsn-pytorch's `bn_inception.yaml`), with its layer names,
so that its ImageNet checkpoint loads by name:

* every convolution has a bias and is followed by `BatchNorm2d(eps=1e-5, affine=True)` and a
  ReLU. (The torch forward feeds the `*_bn` outputs on while its in-place ReLUs have already
  rectified them, so the next layer always sees the rectified map.)
* stem: `conv1_7x7_s2` (7×7, stride 2, pad 3, 64) -> `pool1_3x3_s2` (3×3 max, stride 2,
  ceil_mode) -> `conv2_3x3_reduce` (1×1, 64) -> `conv2_3x3` (3×3, pad 1, 192) ->
  `pool2_3x3_s2` (3×3 max, stride 2, ceil_mode).
* ten inception blocks, `inception_{3a,3b,3c,4a,4b,4c,4d,4e,5a,5b}`, each the concatenation of
  a 1×1 branch (`_1x1`), a 1×1 -> 3×3 branch (`_3x3_reduce`, `_3x3`), a 1×1 -> 3×3 -> 3×3 branch
  (`_double_3x3_reduce`, `_double_3x3_1`, `_double_3x3_2`) and a pool branch (`_pool`, then a
  1×1 `_pool_proj`), in that order. The pool is a 3×3 average (stride 1, pad 1,
  count_include_pad) in 3a, 3b, 4a, 4b, 4c, 4d, 5a, and a 3×3 max (stride 1, pad 1) in 5b. The
  two reduction blocks 3c and 4e have no 1×1 branch, stride 2 in `_3x3` and `_double_3x3_2`,
  and a 3×3 stride-2 max pool (ceil_mode) passed through without projection.
* `global_pool` (7×7 average at 224) and `last_linear` (1000 classes) are not part of the
  backbone: `common.nima.Nima` averages the (N, 7, 7, 1024) map at 224 (the same as the 7×7
  pool there; any map size elsewhere).

Input: RGB in [0, 1]. The checkpoint's preprocessing is inside the model (pretrainedmodels'
`pretrained_settings`: input_space BGR, input_range [0, 255], mean [104, 117, 128] in that BGR
order, std 1): x -> BGR(x) · 255 − (104, 117, 128).

Batch norm follows nnx's training switch: a new model is in training mode (batch statistics,
running averages updated, as a new torch module and `nnx.Dropout` in `Nima` are); `.eval()`
uses the running statistics (the loaders return models in evaluation mode). Deviations from the
torch module, both only in training: the running averages use momentum 0.9 in flax's
convention (new = 0.9 · old + 0.1 · batch, torch's default), while pretrainedmodels writes
`momentum=0.9` in torch's convention (new = 0.1 · old + 0.9 · batch), a transcription of the
Caffe model's 0.9 that makes torch's running statistics little more than the last batch's; and
flax's running variance is the biased batch variance (torch's the unbiased one, n/(n − 1)
larger). Normalisation with batch statistics (biased variance) is the same in both.

`width` scales every convolution's output channels (`scaled_channels`) for narrow smoke-test
networks; the pass-through pools carry whatever their input has. ImageNet weights need
width 1.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from common import weights
from common.mobilenet import conv2d, he_normal
from common.nima import Nima
from common.weights import CONV, LINEAR, Entry

BGR_MEAN = (104.0, 117.0, 128.0)  # B, G, R, on the 0..255 scale (pretrained_settings)
TORCH_BN_EPS = 1e-5
BN_MOMENTUM = 0.9  # flax's convention: weight of the old running value (see the module doc)
INPUT_SIZE = 224
FEATURES = 1024
IMAGENET_FORMAT = "bn_inception_imagenet"  # converted directories of `load_bn_inception`


def scaled_channels(channels: int, width: float) -> int:
    """A convolution's output channels at `width`: round(channels · width), at least 1."""
    return max(1, int(round(channels * width)))


@dataclasses.dataclass(frozen=True)
class Block:
    """One inception block of the definition: channels of each branch's convolutions.

    b1x1: the 1×1 branch's output, or None (reduction blocks have none).
    b3x3: (reduce, 3×3) outputs. double: (reduce, first 3×3, second 3×3) outputs.
    pool: "avg" (3×3, stride 1, pad 1, zeros counted) or "max" (3×3, stride 1 with pad 1, or
      stride 2 with ceil_mode in the reduction blocks).
    pool_proj: the 1×1 after the pool, or None (pass-through).
    stride: 2 for the reduction blocks (in `_3x3`, `_double_3x3_2` and the pool).
    """

    name: str
    b1x1: int | None
    b3x3: tuple[int, int]
    double: tuple[int, int, int]
    pool: str
    pool_proj: int | None
    stride: int = 1


# pretrainedmodels/models/bninception.py, __init__ (each number checked against its Conv2d).
BLOCKS = (
    Block("inception_3a", 64, (64, 64), (64, 96, 96), "avg", 32),
    Block("inception_3b", 64, (64, 96), (64, 96, 96), "avg", 64),
    Block("inception_3c", None, (128, 160), (64, 96, 96), "max", None, stride=2),
    Block("inception_4a", 224, (64, 96), (96, 128, 128), "avg", 128),
    Block("inception_4b", 192, (96, 128), (96, 128, 128), "avg", 128),
    Block("inception_4c", 160, (128, 160), (128, 160, 160), "avg", 128),
    Block("inception_4d", 96, (128, 192), (160, 192, 192), "avg", 128),
    Block("inception_4e", None, (128, 192), (192, 256, 256), "max", None, stride=2),
    Block("inception_5a", 352, (192, 320), (160, 224, 224), "avg", 128),
    Block("inception_5b", 352, (192, 320), (192, 224, 224), "max", 128),
)


def block_convs(block: Block) -> list[tuple[str, int, int, int]]:
    """(layer name, output channels, kernel, stride) of a block's convolutions, in torch's
    concatenation order; the input of each is the previous one of its branch."""
    n, convs = block.name, []
    if block.b1x1 is not None:
        convs.append((f"{n}_1x1", block.b1x1, 1, 1))
    convs += [
        (f"{n}_3x3_reduce", block.b3x3[0], 1, 1),
        (f"{n}_3x3", block.b3x3[1], 3, block.stride),
    ]
    d = block.double
    convs += [
        (f"{n}_double_3x3_reduce", d[0], 1, 1),
        (f"{n}_double_3x3_1", d[1], 3, 1),
        (f"{n}_double_3x3_2", d[2], 3, block.stride),
    ]
    if block.pool_proj is not None:
        convs.append((f"{n}_pool_proj", block.pool_proj, 1, 1))
    return convs


STEM = (("conv1_7x7_s2", 64, 7, 2), ("conv2_3x3_reduce", 64, 1, 1), ("conv2_3x3", 192, 3, 1))


def layer_names() -> tuple[str, ...]:
    """Every convolution's name (its torch attribute; its batch norm is `<name>_bn`), in order."""
    return tuple(name for name, *_ in STEM) + tuple(
        name for block in BLOCKS for name, *_ in block_convs(block)
    )


class ConvBNReLU(nnx.Module):
    """torch Conv2d (with bias; square kernel, zero padding k // 2) -> BatchNorm2d -> ReLU."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, *, rngs: nnx.Rngs):
        self.conv = nnx.Conv(
            cin,
            cout,
            (kernel, kernel),
            strides=stride,
            padding=kernel // 2,
            kernel_init=he_normal,
            bias_init=jax.nn.initializers.zeros,
            rngs=rngs,
        )
        self.bn = nnx.BatchNorm(
            cout,
            epsilon=TORCH_BN_EPS,
            momentum=BN_MOMENTUM,
            use_running_average=False,
            rngs=rngs,
        )
        self.stride = stride
        self.pad = kernel // 2

    def __call__(self, x_nhwc: jax.Array) -> jax.Array:
        p = self.pad
        x = conv2d(x_nhwc, self.conv.kernel[...], self.stride, ((p, p), (p, p)))
        return jax.nn.relu(self.bn(x + self.conv.bias[...]))


def _window_reduce(x_nhwc, stride: int, pads, fill: float, reduce):
    """`reduce` over the 3×3 windows of `x` padded by `pads` with `fill`, as 9 strided slices
    (elementwise work XLA:CPU fuses, whose gradient is elementwise too)."""
    xp = jnp.pad(x_nhwc, ((0, 0), *pads, (0, 0)), constant_values=fill)
    n, hp, wp, c = xp.shape
    ho, wo = (hp - 3) // stride + 1, (wp - 3) // stride + 1
    out = None
    for i in range(3):
        for j in range(3):
            end = (n, i + stride * (ho - 1) + 1, j + stride * (wo - 1) + 1, c)
            tap = jax.lax.slice(xp, (0, i, j, 0), end, (1, stride, stride, 1))
            out = tap if out is None else reduce(out, tap)
    return out


def ceil_mode_size(size: int, kernel: int = 3, stride: int = 2) -> int:
    """torch's pooled size with ceil_mode=True and no padding (a last window may overhang)."""
    out = -(-(size - kernel) // stride) + 1
    if (out - 1) * stride >= size:  # torch: the last window must start inside the input
        out -= 1
    return out


def max_pool_3x3_s2_ceil(x_nhwc: jax.Array) -> jax.Array:
    """torch MaxPool2d(3, stride=2, ceil_mode=True): windows overhanging the bottom/right edge
    take the max of their part inside the input."""
    h, w = x_nhwc.shape[1:3]
    if min(h, w) < 2:
        raise ValueError(f"BNInception: a {h}×{w} map is too small to pool; use inputs >= 32")
    pads = tuple((0, (ceil_mode_size(n) - 1) * 2 + 3 - n) for n in (h, w))
    return _window_reduce(x_nhwc, 2, pads, -jnp.inf, jnp.maximum)


def max_pool_3x3_same(x_nhwc: jax.Array) -> jax.Array:
    """torch MaxPool2d(3, stride=1, padding=1): padding never wins a max."""
    return _window_reduce(x_nhwc, 1, ((1, 1), (1, 1)), -jnp.inf, jnp.maximum)


def avg_pool_3x3_same(x_nhwc: jax.Array) -> jax.Array:
    """torch AvgPool2d(3, stride=1, padding=1, count_include_pad=True): always divided by 9."""
    return _window_reduce(x_nhwc, 1, ((1, 1), (1, 1)), 0.0, jnp.add) / 9.0


class BNInception(nnx.Module):
    """BN-Inception features up to `inception_5b_output` (pretrainedmodels' `features()`).

    Args:
      width: multiplies every convolution's output channels (`scaled_channels`; 1 = the real
        network, 11.2 M parameters; e.g. 0.25 for smoke runs). Positive.
      rngs: `nnx.Rngs` for the random initialisation (Kaiming normal, fan-in; zero biases;
        batch norms at mean 0, variance 1).

    Each convolution is the attribute named as in torch (`conv1_7x7_s2`, `inception_3a_1x1`,
    ...) with its `conv` (kernel, bias) and its batch norm `bn`. Calling the model on
    (N, H, W, 3) RGB images in [0, 1] returns the (N, h, w, `features`) map before global
    pooling: h = 7 at H = 224, 2 at 64, 1 at 32. Sizes whose reduction blocks would
    concatenate maps of different sizes (torch fails on them too: the stride-2 conv gives
    ⌈n/2⌉, the ceil-mode pool ⌈(n − 1)/2⌉) raise ValueError; multiples of 32 always work.
    """

    def __init__(self, *, width: float = 1.0, rngs: nnx.Rngs):
        if not width > 0:
            raise ValueError(f"BNInception width must be positive, got {width!r}")
        self.width = float(width)
        cin = 3
        for name, cout, kernel, stride in STEM:
            cout = scaled_channels(cout, width)
            setattr(self, name, ConvBNReLU(cin, cout, kernel, stride, rngs=rngs))
            cin = cout
        for block in BLOCKS:
            outputs, branch_in = [], cin
            for name, cout, kernel, stride in block_convs(block):
                cout = scaled_channels(cout, width)
                first = name.endswith(("_1x1", "_reduce", "_pool_proj"))
                setattr(self, name, ConvBNReLU(cin if first else branch_in, cout, kernel, stride,
                                               rngs=rngs))  # fmt: skip
                branch_in = cout
                if not name.endswith("_reduce") and not name.endswith("_double_3x3_1"):
                    outputs.append(cout)
            if block.pool_proj is None:
                outputs.append(cin)  # the pass-through pool keeps the input's channels
            cin = sum(outputs)
        self.features = cin

    def _block(self, block: Block, x: jax.Array) -> jax.Array:
        n = block.name
        branches = []
        if block.b1x1 is not None:
            branches.append(getattr(self, f"{n}_1x1")(x))
        branches.append(getattr(self, f"{n}_3x3")(getattr(self, f"{n}_3x3_reduce")(x)))
        y = getattr(self, f"{n}_double_3x3_reduce")(x)
        branches.append(getattr(self, f"{n}_double_3x3_2")(getattr(self, f"{n}_double_3x3_1")(y)))
        if block.stride == 2:
            branches.append(max_pool_3x3_s2_ceil(x))
        else:
            pool = avg_pool_3x3_same if block.pool == "avg" else max_pool_3x3_same
            branches.append(getattr(self, f"{n}_pool_proj")(pool(x)))
        sizes = {b.shape[1:3] for b in branches}
        if len(sizes) > 1:
            raise ValueError(
                f"BNInception: {n} gets a {x.shape[1]}×{x.shape[2]} map, whose branches come out "
                f"at different sizes {sorted(sizes)}; the input size does not fit the network "
                "(torch's model fails on it too): use a multiple of 32, e.g. 224"
            )
        return jnp.concatenate(branches, axis=-1)

    def __call__(self, images_nhwc: jax.Array) -> jax.Array:
        x = jnp.asarray(images_nhwc, jnp.float32)
        x = x[..., ::-1] * 255.0 - jnp.asarray(BGR_MEAN, jnp.float32)  # RGB [0, 1] -> BGR - mean
        x = max_pool_3x3_s2_ceil(self.conv1_7x7_s2(x))
        x = max_pool_3x3_s2_ceil(self.conv2_3x3(self.conv2_3x3_reduce(x)))
        for block in BLOCKS:
            x = self._block(block, x)
        return x


def make_nima_bn_inception(
    *,
    rngs: nnx.Rngs | None = None,
    width: float = 1.0,
    dropout: float = 0.75,
    input_size: int = INPUT_SIZE,
) -> Nima:
    """NIMA on BN-Inception with random weights: global average pool of the 1024-d map (at
    width 1), Dropout(`dropout`), Dense(10), softmax (the NIMA paper's head). `input_size` is
    the size it is trained and scored at (224; a smoke run may train smaller). In training
    mode, as built (`.eval()` for inference)."""
    rngs = nnx.Rngs(0) if rngs is None else rngs
    backbone = BNInception(width=width, rngs=rngs)
    return Nima(
        backbone,
        features=backbone.features,
        pool="avg",
        input_size=input_size,
        dropout=dropout,
        rngs=rngs,
    )


# --- Checkpoint keys ---------------------------------------------------------------------------

_BN_PARAMS = (
    ("weight", "scale"),
    ("bias", "bias"),
    ("running_mean", "mean"),
    ("running_var", "var"),
)


def bn_inception_entries(*, path: tuple = ()) -> list[Entry]:
    """pretrainedmodels `BNInception.state_dict()` keys -> `BNInception` variables under `path`.

    For every convolution NAME of `layer_names()` (`conv1_7x7_s2`, `conv2_3x3_reduce`,
    `conv2_3x3`, then per block `inception_XY_{1x1, 3x3_reduce, 3x3, double_3x3_reduce,
    double_3x3_1, double_3x3_2, pool_proj}` where the block has them):

        NAME.weight                      (O, I, k, k) -> (*path, NAME, "conv", "kernel") HWIO
        NAME.bias                        (O,)         -> (*path, NAME, "conv", "bias")
        NAME_bn.weight / .bias           (O,)         -> (*path, NAME, "bn", "scale" / "bias")
        NAME_bn.running_mean / _var      (O,)         -> (*path, NAME, "bn", "mean" / "var")

    Every name and shape is confirmed from pretrainedmodels/models/bninception.py (the
    attribute names of `BNInception.__init__`, each conv and its `_bn`) and agrees with the
    layer ids of tsn-pytorch's bn_inception.yaml, from which yjxiong's file was made. Not
    entries (see `load_bn_inception`): `last_linear.*` / `fc.*` and `*.num_batches_tracked`.
    """
    entries = []
    for name in layer_names():
        entries.append(Entry(f"{name}.weight", (*path, name, "conv", "kernel"), CONV))
        entries.append(Entry(f"{name}.bias", (*path, name, "conv", "bias")))
        for torch_name, flax_name in _BN_PARAMS:
            entries.append(Entry(f"{name}_bn.{torch_name}", (*path, name, "bn", flax_name)))
    return entries


_BN_KEY = re.compile(r".+_bn\.(weight|bias|running_mean|running_var)")


def _squeeze_bn(tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    # yjxiong's bn_inception-9f5701afb96c8044.pth stores batch-norm vectors as (1, C) (from
    # Caffe's blobs): tsn-pytorch squeezes dim 0 of every tensor before `load_state_dict`.
    return {
        k: v[0] if _BN_KEY.fullmatch(k) and np.ndim(v) == 2 and np.shape(v)[0] == 1 else v
        for k, v in tensors.items()
    }


def _imagenet_unused(key: str) -> bool:
    return key.endswith(".num_batches_tracked") or key.startswith(("last_linear.", "fc."))


def _imagenet_tensors(path) -> tuple[dict[str, np.ndarray], str]:
    source = str(path)
    tensors = weights.unwrap_state_dict(
        weights.read_checkpoint(path), probe="conv1_7x7_s2.weight", source=source
    )
    return _squeeze_bn(tensors), source


def _full_width_backbone() -> BNInception:
    return BNInception(rngs=nnx.Rngs(0))


def load_bn_inception(path) -> BNInception:
    """The ImageNet BN-Inception backbone (width 1), in evaluation mode.

    Args:
      path: pretrainedmodels' `bn_inception-*.pth` (yjxiong's `bn_inception-9f5701afb96c8044
        .pth`, or Cadene's re-save `bn_inception-52deb4733.pth` / `-239d2248.pth`), a
        `.safetensors` with the same keys, or a directory written by `python -m common.weights
        convert SRC --format bn_inception_imagenet`.

    Keys are those of `bn_inception_entries()`, strictly: a missing, unexpected or wrongly
    shaped key raises `CheckpointMismatchError` naming it and both shapes. Allowed and ignored:
    the ImageNet classifier (`last_linear.{weight,bias}` in pretrainedmodels' files; `fc.*` in
    yjxiong's, whose yaml names the layer "fc" — inferred, not seen in the file) and
    `*.num_batches_tracked`. Batch-norm vectors stored as (1, C), as in yjxiong's file (inferred
    from tsn-pytorch's loader, which squeezes them), are read as (C,). Wrappers ("state_dict",
    DataParallel's "module.") are removed first.
    """
    model = weights.cached_empty_module(_full_width_backbone)
    _fill(model, path)
    model.eval()
    return model


def _fill(backbone: BNInception, path) -> None:
    if weights.is_converted(path):
        tensors = weights.read_converted(path, format=IMAGENET_FORMAT)
        entries, source, ignore = weights.module_entries(backbone), str(path), lambda k: False
    else:
        tensors, source = _imagenet_tensors(path)
        entries, ignore = bn_inception_entries(), _imagenet_unused
    weights.load_entries(backbone, tensors, entries, source=source, ignore=ignore)


def load_imagenet_into(backbone: BNInception, path) -> None:
    """Copies the ImageNet weights at `path` (as `load_bn_inception` reads them) into
    `backbone` in place, strictly. Its training/evaluation mode is kept.

    Raises:
      ValueError: `backbone` is not full width.
      CheckpointError: an unreadable or mismatching checkpoint.
    """
    if backbone.width != 1.0:
        raise ValueError(
            f"ImageNet BN-Inception weights fit only the full-width network; this one has "
            f"width {backbone.width} (a smoke configuration trains from random weights)"
        )
    _fill(backbone, path)


def nima_bn_inception(tensors: Mapping[str, np.ndarray], *, source: str) -> Nima:
    """A NIMA on BN-Inception from a state dict in pretrainedmodels' layout (unwrapped).

    The keys of `bn_inception_entries()` plus the NIMA head as torch NIMA ports on
    `pretrainedmodels.bninception` make it, by replacing the classifier:
    `last_linear.weight` (10, 1024) and `last_linear.bias` (10,) (a `Linear(1024, 10)`; the
    dropout before it has no weights). `*.num_batches_tracked` is ignored and (1, C)
    batch-norm vectors are squeezed, as in `load_bn_inception`. Width 1, input size 224.

    Raises:
      CheckpointMismatchError: a missing, unexpected or wrongly shaped key (named, with shapes).
    """
    model = weights.cached_empty_module(make_nima_bn_inception)
    entries = bn_inception_entries(path=("backbone",)) + [
        Entry("last_linear.weight", ("head", "kernel"), LINEAR),
        Entry("last_linear.bias", ("head", "bias")),
    ]
    weights.load_entries(
        model,
        _squeeze_bn(tensors),
        entries,
        source=source,
        ignore=lambda k: k.endswith(".num_batches_tracked"),
    )
    return model
