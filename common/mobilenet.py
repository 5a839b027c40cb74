"""MobileNet backbones of two public NIMA checkpoints, ported to flax.nnx (NHWC, inference BN).

Two formats (spec/weights.md), each a backbone class, a random builder `make_nima_NAME` and a
strict loader `nima_NAME(tensors, *, source)` that fills the builder's model with
`common.weights.load_entries`:

* ``mobilenet_v2`` — nima.pytorch v1 (truskovskiyk/nima.pytorch at "move to pytorch0.4", May
  2018; the identical copy UEGAN ships in `metrics/NIMA/` and scores FiveK with). Its
  MobileNetV2 is tonylins' early port, which differs from torchvision's `mobilenet_v2`: the
  t = 1 block keeps its 1×1 expansion conv, the stem and the last 1×1 conv use ReLU (not
  ReLU6), and `features` ends in `AvgPool2d(7)`. NIMA keeps `features` as
  `base_model = nn.Sequential(*list(mobilenet.children())[:-1])` and adds
  `head = Sequential(ReLU, Dropout(0.75), Linear(1280, 10), Softmax)`.
* ``mobilenet_keras`` — idealo/image-quality-assessment and titu1994/neural-image-assessment:
  `keras.applications.MobileNet(alpha=1, include_top=False, pooling="avg")`, then
  `Dropout(0.75)` and an unnamed `Dense(10, activation="softmax")`, saved by
  `ModelCheckpoint(save_weights_only=True)` as a Keras 2 `.h5` (read by
  `common.keras_h5.read_keras_h5`).

Both backbones return their last feature map; `common.nima.Nima` pools it globally. At the
224×224 input both formats were trained and evaluated at, the map is 7×7 and that pool is
exactly nima.pytorch's `AvgPool2d(7)` and Keras' `GlobalAveragePooling2D`. (At other sizes
nima.pytorch's `AvgPool2d(7)` + `view` either fails or averages only one 7×7 window; the port
averages the whole map.)
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from common.nima import Nima
from common.vgg import IMAGENET_MEAN, IMAGENET_STD
from common.weights import (
    CONV,
    COPY,
    LINEAR,
    CheckpointMismatchError,
    Entry,
    Layout,
    load_entries,
)

_DIMS = ("NHWC", "HWIO", "NHWC")

# Keras DepthwiseConv2D kernel (kh, kw, C, depth_multiplier=1) -> flax grouped HWIO (kh, kw, 1, C).
KERAS_DEPTHWISE = Layout(
    "keras_depthwise", lambda a: a.transpose(0, 1, 3, 2), lambda s: (s[0], s[1], s[3], s[2])
)

ACTIVATIONS = {
    None: lambda x: x,
    "relu": jax.nn.relu,
    "relu6": jax.nn.relu6,
}


def he_normal(key, shape, dtype=jnp.float32) -> jax.Array:
    """Kaiming-normal, fan-in, for an HWIO kernel (I = inputs per group), drawn by numpy.

    Fan-in keeps activations O(1) through the depth of a random network whose batch norms hold
    their initial statistics (mean 0, variance 1); torchvision's fan-out init shrinks each
    depthwise conv's output 3× per layer (fan-out counts all C outputs), so a random
    MobileNetV2 ends in denormal activations and flat scores. The same distribution as
    `jax.nn.initializers.he_normal()` (truncation aside); numpy draws it because jax.random
    compiles one XLA program per kernel shape (Inception-ResNet-v2 has 91 shapes: 21 s of
    compiling for random weights). Under a trace (`eval_shape`, `jit`) it falls back to
    jax.random.
    """
    if isinstance(key, jax.core.Tracer):
        return jax.nn.initializers.variance_scaling(2.0, "fan_in", "normal")(key, shape, dtype)
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel())
    fan_in = int(np.prod(shape[:-1]))
    return jnp.asarray(rng.standard_normal(shape, np.float32) * np.sqrt(2.0 / fan_in), dtype)


def conv2d(x_nhwc, kernel_hwio, stride: int, padding, groups: int = 1) -> jax.Array:
    """`lax.conv_general_dilated` on NHWC/HWIO with explicit ((top, bottom), (left, right))."""
    return jax.lax.conv_general_dilated(
        x_nhwc,
        kernel_hwio,
        (stride, stride),
        padding,
        dimension_numbers=_DIMS,
        feature_group_count=groups,
    )


def _taps(x_nhwc, kernel, stride: int, padding) -> jax.Array:
    """Depthwise conv as kh·kw shifted, strided slices of the padded input, each scaled by its
    tap's per-channel weights and summed: elementwise work that XLA fuses into one loop."""
    kh, kw, _, channels = kernel.shape
    xp = jnp.pad(x_nhwc, ((0, 0), *padding, (0, 0)))
    n, hp, wp, _ = xp.shape
    ho, wo = (hp - kh) // stride + 1, (wp - kw) // stride + 1
    out = None
    for i in range(kh):
        for j in range(kw):
            end = (n, i + stride * (ho - 1) + 1, j + stride * (wo - 1) + 1, channels)
            tap = jax.lax.slice(xp, (0, i, j, 0), end, (1, stride, stride, 1)) * kernel[i, j, 0]
            out = tap if out is None else out + tap
    return out


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _depthwise_taps(x_nhwc, kernel, stride, padding):
    return _taps(x_nhwc, kernel, stride, padding)


def _depthwise_taps_fwd(x_nhwc, kernel, stride, padding):
    return _taps(x_nhwc, kernel, stride, padding), (x_nhwc, kernel)


def _depthwise_taps_bwd(stride, padding, residuals, dy):
    # Autodiff's transpose of the taps, behind an XLA conditional so that dy is materialised.
    # Otherwise XLA:CPU fuses dy's producer (the ReLU6 mask and batch norm of this conv's
    # output, which recompute the forward taps) into each of the kh·kw shifted reads of dy:
    # 81 multiply-adds per element instead of 18, and the MobileNetV2 guider's forward +
    # input gradient took 1.8 s instead of 0.46 s at batch 8 (an optimisation barrier does
    # not stop the fusion on CPU; a conditional's operands are buffers). Both branches are the
    # same function, so the predicate only has to be one XLA cannot fold: it reads the kernel
    # (not dy, which a vmap over images would batch, turning the conditional into a select).
    # Weights baked into a program as constants fold it: still correct, only slower (the
    # guider and `nnx.jit` pass weights as arguments).
    x, kernel = residuals
    _, pull = jax.vjp(lambda x, k: _taps(x, k, stride, padding), x, kernel)
    unfoldable = jnp.isnan(kernel[0, 0, 0, 0])
    return jax.lax.cond(unfoldable, pull, pull, dy)


_depthwise_taps.defvjp(_depthwise_taps_fwd, _depthwise_taps_bwd)


def depthwise_conv2d(x_nhwc, kernel_hwio, stride: int, padding) -> jax.Array:
    """Depthwise conv (`feature_group_count` = channels; kernel (kh, kw, 1, C)), no bias.

    On CPU it is computed as shifted multiply-adds (`_depthwise_taps`); elsewhere it is XLA's
    grouped convolution. XLA:CPU has no fast depthwise kernel: on six of MobileNetV2's
    depthwise layers at batch 8 its grouped convolution took 600 ms forward and 2.2 s for the
    input gradient (the two stride-2 layers' input gradients 1.8 s), the multiply-adds 46 ms
    and 24 ms (2-core x86 VM, shared). Same values up to float32 summation order. GPU and TPU
    programs keep the convolution (cuDNN and the TPU have depthwise kernels).
    """
    channels = x_nhwc.shape[-1]
    padding = tuple(tuple(p) for p in padding)
    return jax.lax.platform_dependent(
        x_nhwc,
        kernel_hwio,
        cpu=lambda x, k: _depthwise_taps(x, k, stride, padding),
        default=lambda x, k: conv2d(x, k, stride, padding, channels),
    )


class ConvBN(nnx.Module):
    """Conv (no bias) -> BatchNorm -> activation, the unit of every backbone here.

    Args:
      in_channels, out_channels: channels in and out.
      kernel: (kh, kw).
      stride: one stride for both axes.
      padding: ((top, bottom), (left, right)) zeros, explicit so asymmetric pads are exact.
      groups: `feature_group_count` (= channels for a depthwise conv).
      epsilon: the batch norm's epsilon (torch 1e-5, Keras and timm 1e-3).
      activation: None, "relu" or "relu6".
      rngs: `nnx.Rngs` for the random initialisation (`he_normal`: Kaiming normal, fan-in).

    The batch norm uses its running statistics (`use_running_average=True`): every model here
    is a frozen, pretrained network. `.train()` switches it to batch statistics, as torch's
    train mode does.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: tuple[int, int],
        *,
        stride: int = 1,
        padding: tuple[tuple[int, int], tuple[int, int]] = ((0, 0), (0, 0)),
        groups: int = 1,
        epsilon: float,
        activation: str | None,
        rngs: nnx.Rngs,
    ):
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}: {sorted(map(str, ACTIVATIONS))}")
        self.conv = nnx.Conv(
            in_channels,
            out_channels,
            kernel,
            strides=stride,
            padding=padding,
            feature_group_count=groups,
            use_bias=False,
            kernel_init=he_normal,
            rngs=rngs,
        )
        self.bn = nnx.BatchNorm(out_channels, epsilon=epsilon, use_running_average=True, rngs=rngs)
        self.stride = stride
        self.padding = tuple(tuple(p) for p in padding)
        self.groups = groups
        self.activation = activation

    def __call__(self, x_nhwc: jax.Array) -> jax.Array:
        kernel = self.conv.kernel[...]
        if self.groups > 1 and kernel.shape[2] == 1 and kernel.shape[3] == self.groups:
            x = depthwise_conv2d(x_nhwc, kernel, self.stride, self.padding)
        else:
            x = conv2d(x_nhwc, kernel, self.stride, self.padding, self.groups)
        return ACTIVATIONS[self.activation](self.bn(x))


def _same(kernel: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Symmetric zero padding that keeps the size of an odd kernel at stride 1."""
    p = kernel // 2
    return ((p, p), (p, p))


# --- MobileNetV2, nima.pytorch v1 ---------------------------------------------------------------

# (expansion t, output channels c, repeats n, first stride s) — the MobileNetV2 paper's Table 2.
MOBILENET_V2_BLOCKS = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
MOBILENET_V2_FEATURES = 1280
TORCH_BN_EPS = 1e-5
# What torch's `features.i` is, i = 0..18: the stem and last conv are `conv_bn` Sequentials.
MOBILENET_V2_FEATURES_LAYOUT = (
    ("conv_bn",) + ("inverted_residual",) * sum(n for _, _, n, _ in MOBILENET_V2_BLOCKS)
    + ("conv_bn",)
)  # fmt: skip


class InvertedResidual(nnx.Module):
    """1×1 expansion (ReLU6) -> 3×3 depthwise, stride s (ReLU6) -> 1×1 projection (linear),
    plus the input when s = 1 and the channels match. The expansion is built even for t = 1
    (nima.pytorch v1's MobileNetV2; torchvision drops it)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expand: int, *, rngs: nnx.Rngs):
        hidden = in_ch * expand
        bn = {"epsilon": TORCH_BN_EPS, "rngs": rngs}
        self.expand = ConvBN(in_ch, hidden, (1, 1), activation="relu6", **bn)
        self.depthwise = ConvBN(
            hidden, hidden, (3, 3), stride=stride, padding=_same(3), groups=hidden,
            activation="relu6", **bn,
        )  # fmt: skip
        self.project = ConvBN(hidden, out_ch, (1, 1), activation=None, **bn)
        self.residual = stride == 1 and in_ch == out_ch

    def __call__(self, x):
        y = self.project(self.depthwise(self.expand(x)))
        return x + y if self.residual else y


class MobileNetV2(nnx.Module):
    """nima.pytorch v1's MobileNetV2 `features` without its final AvgPool2d(7).

    `features[i]` is torch's `features.i` (i = 0..18): 0 the 3×3 stride-2 stem (ReLU), 1..17
    the inverted residuals, 18 the 1×1 conv to 1280 channels (ReLU). Batch norm eps 1e-5,
    zero padding 1 on every 3×3 conv (symmetric, as torch).

    Args:
      normalize: (mean, std) applied to [0, 1] inputs first, or None. UEGAN's evaluation (and
        QAGAN's, after it) feeds [0, 1] tensors without any normalisation, so None is this
        format's default (spec/weights.md); nima.pytorch's own training and inference used
        ImageNet mean/std (`IMAGENET_NORMALIZE`).
      rngs: `nnx.Rngs` for the random initialisation.

    Calling it on (N, H, W, 3) images in [0, 1] returns the (N, ⌈H/32⌉, ⌈W/32⌉, 1280) map.
    """

    def __init__(
        self,
        *,
        normalize: tuple[Sequence[float], Sequence[float]] | None = None,
        rngs: nnx.Rngs,
    ):
        layers = [ConvBN(3, 32, (3, 3), stride=2, padding=_same(3), epsilon=TORCH_BN_EPS,
                         activation="relu", rngs=rngs)]  # fmt: skip
        in_ch = 32
        for t, c, n, s in MOBILENET_V2_BLOCKS:
            for i in range(n):
                layers.append(InvertedResidual(in_ch, c, s if i == 0 else 1, t, rngs=rngs))
                in_ch = c
        layers.append(ConvBN(in_ch, MOBILENET_V2_FEATURES, (1, 1), epsilon=TORCH_BN_EPS,
                             activation="relu", rngs=rngs))  # fmt: skip
        self.features = nnx.List(layers)
        self.normalize = (
            None if normalize is None else tuple(tuple(float(v) for v in a) for a in normalize)
        )

    def __call__(self, images_nhwc: jax.Array) -> jax.Array:
        x = jnp.asarray(images_nhwc, jnp.float32)
        if self.normalize is not None:
            mean, std = (jnp.asarray(a, jnp.float32) for a in self.normalize)
            x = (x - mean) / std
        for layer in self.features:
            x = layer(x)
        return x


IMAGENET_NORMALIZE = (IMAGENET_MEAN, IMAGENET_STD)


def make_nima_mobilenet_v2(*, rngs: nnx.Rngs | None = None) -> Nima:
    """nima.pytorch v1's NIMA with random weights: MobileNetV2 features, global average pool
    (= AvgPool2d(7) at 224), ReLU, Dropout(0.75), Linear(1280, 10), softmax. No input
    normalisation (UEGAN's protocol); input size 224. 2.24 M parameters."""
    rngs = nnx.Rngs(0) if rngs is None else rngs
    return Nima(
        MobileNetV2(rngs=rngs),
        features=MOBILENET_V2_FEATURES,
        pool="avg",
        head_relu=True,
        input_size=224,
        dropout=0.75,
        rngs=rngs,
    )


def torch_conv_bn_entries(conv: str, bn: str, path: tuple) -> list[Entry]:
    """Entries of a torch Conv2d (no bias) `conv` and BatchNorm2d `bn` -> a `ConvBN` at `path`."""
    return [
        Entry(f"{conv}.weight", (*path, "conv", "kernel"), CONV),
        Entry(f"{bn}.weight", (*path, "bn", "scale")),
        Entry(f"{bn}.bias", (*path, "bn", "bias")),
        Entry(f"{bn}.running_mean", (*path, "bn", "mean")),
        Entry(f"{bn}.running_var", (*path, "bn", "var")),
    ]


def mobilenet_v2_entries() -> list[Entry]:
    """nima.pytorch v1 state-dict keys -> `make_nima_mobilenet_v2()` variables."""
    entries = []
    for i in range(len(MOBILENET_V2_FEATURES_LAYOUT)):
        torch_prefix, path = f"base_model.0.{i}", ("backbone", "features", i)
        if MOBILENET_V2_FEATURES_LAYOUT[i] == "conv_bn":  # Sequential(Conv2d, BN, ReLU)
            entries += torch_conv_bn_entries(f"{torch_prefix}.0", f"{torch_prefix}.1", path)
        else:  # InvertedResidual: .conv = Sequential(conv, bn, relu6, dw, bn, relu6, conv, bn)
            for part, (c, b) in (("expand", (0, 1)), ("depthwise", (3, 4)), ("project", (6, 7))):
                entries += torch_conv_bn_entries(
                    f"{torch_prefix}.conv.{c}", f"{torch_prefix}.conv.{b}", (*path, part)
                )
    entries += [
        Entry("head.2.weight", ("head", "kernel"), LINEAR),
        Entry("head.2.bias", ("head", "bias")),
    ]
    return entries


def _ignore_num_batches_tracked(key: str) -> bool:
    return key.endswith(".num_batches_tracked")


def nima_mobilenet_v2(tensors: Mapping[str, np.ndarray], *, source: str) -> Nima:
    """nima.pytorch v1 NIMA (MobileNetV2) from its state dict; strict (all keys, all shapes).

    `tensors` holds the `state_dict()` keys of nima.pytorch's `NIMA` module, unwrapped:

        base_model.0.0.0.weight                    stem conv (32, 3, 3, 3), stride 2, pad 1
        base_model.0.0.1.{weight,bias,running_mean,running_var}    its BatchNorm2d (eps 1e-5)
        base_model.0.{i}.conv.{0,3,6}.weight      block i = 1..17: 1×1 expand (t·C, C, 1, 1),
                                                   3×3 depthwise (t·C, 1, 3, 3), 1×1 project
        base_model.0.{i}.conv.{1,4,7}.{weight,bias,running_mean,running_var}   their BNs
        base_model.0.18.0.weight                   1×1 conv (1280, 320, 1, 1)
        base_model.0.18.1.{weight,bias,running_mean,running_var}
        head.2.weight, head.2.bias                 Linear(1280, 10)
        *.num_batches_tracked                      ignored (written by torch >= 0.4.1 only)

    Confirmed from the format's definition (nima/model.py and nima/mobile_net_v2.py of
    nima.pytorch v1, the same files UEGAN ships and `load_state_dict`s strictly): every name
    above follows from those modules (`base_model.0` is the `features` Sequential, index 19 the
    parameter-free AvgPool2d; `head.2` the Linear after ReLU and Dropout). Inferred, not seen
    in a real file: whether the published `pretrain-model.pth` carries `num_batches_tracked`
    (it was trained with torch 0.4.0, which did not write it); both are accepted.

    Raises:
      CheckpointMismatchError: a missing, unexpected or wrongly shaped key (named, with shapes).
    """
    model = make_nima_mobilenet_v2()
    load_entries(
        model, tensors, mobilenet_v2_entries(), source=source, ignore=_ignore_num_batches_tracked
    )
    return model


# --- Keras MobileNet (v1), idealo / titu1994 -----------------------------------------------------

# (pointwise output channels, depthwise stride) of conv_dw_N / conv_pw_N, N = 1..13.
MOBILENET_V1_BLOCKS = (
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1),
)  # fmt: skip
MOBILENET_V1_FEATURES = 1024
KERAS_BN_EPS = 1e-3
# Keras' ZeroPadding2D(((0, 1), (0, 1))) before every stride-2 conv, then a VALID conv.
KERAS_STRIDE2_PADDING = ((0, 1), (0, 1))


class DepthwiseSeparable(nnx.Module):
    """Keras `_depthwise_conv_block`: 3×3 depthwise (BN, ReLU6) -> 1×1 conv (BN, ReLU6)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, *, rngs: nnx.Rngs):
        pad = KERAS_STRIDE2_PADDING if stride == 2 else _same(3)
        self.dw = ConvBN(in_ch, in_ch, (3, 3), stride=stride, padding=pad, groups=in_ch,
                         epsilon=KERAS_BN_EPS, activation="relu6", rngs=rngs)  # fmt: skip
        self.pw = ConvBN(in_ch, out_ch, (1, 1), epsilon=KERAS_BN_EPS, activation="relu6",
                         rngs=rngs)  # fmt: skip

    def __call__(self, x):
        return self.pw(self.dw(x))


class KerasMobileNet(nnx.Module):
    """`keras.applications.MobileNet(alpha=1, include_top=False)` up to `conv_pw_13_relu`.

    `conv1` is Keras' `conv1` (3×3, 32 channels, stride 2) with `conv1_bn`, `blocks[N - 1]`
    its `conv_dw_N`/`conv_pw_N` pair. Every stride-2 conv is preceded by Keras'
    `ZeroPadding2D(((0, 1), (0, 1)))` (one zero row at the bottom, one column at the right)
    and is VALID; the stride-1 depthwise convs are 'same' (pad 1 all round). On even sizes
    (224, 112, ... 14) this is also exactly TensorFlow's 'SAME' of Keras <= 2.1, which
    titu1994 trained with. (Keras 2.2.0 alone padded symmetrically, a bug fixed in
    keras-applications 1.0.2.) BN epsilon 1e-3, ReLU6 after every BN.

    Inputs are RGB in [0, 1]; Keras' `mobilenet.preprocess_input` (x / 127.5 − 1 of [0, 255]
    values, i.e. 2x − 1 here) happens inside. Returns the (N, H/32, W/32, 1024) map.
    """

    def __init__(self, *, rngs: nnx.Rngs):
        self.conv1 = ConvBN(3, 32, (3, 3), stride=2, padding=KERAS_STRIDE2_PADDING,
                            epsilon=KERAS_BN_EPS, activation="relu6", rngs=rngs)  # fmt: skip
        blocks, in_ch = [], 32
        for out_ch, stride in MOBILENET_V1_BLOCKS:
            blocks.append(DepthwiseSeparable(in_ch, out_ch, stride, rngs=rngs))
            in_ch = out_ch
        self.blocks = nnx.List(blocks)

    def __call__(self, images_nhwc: jax.Array) -> jax.Array:
        x = self.conv1(2.0 * jnp.asarray(images_nhwc, jnp.float32) - 1.0)
        for block in self.blocks:
            x = block(x)
        return x


def make_nima_mobilenet_keras(*, rngs: nnx.Rngs | None = None) -> Nima:
    """idealo / titu1994's Keras NIMA with random weights: MobileNet v1 features, global
    average pool, Dropout(0.75), Dense(1024 -> 10), softmax; input size 224. 3.22 M parameters."""
    rngs = nnx.Rngs(0) if rngs is None else rngs
    return Nima(
        KerasMobileNet(rngs=rngs),
        features=MOBILENET_V1_FEATURES,
        pool="avg",
        input_size=224,
        dropout=0.75,
        rngs=rngs,
    )


def keras_conv_bn_entries(conv: str, kernel: str, layout: Layout, path: tuple) -> list[Entry]:
    """Entries of Keras layer `conv` (weight `kernel`) and its batch norm `{conv}_bn`."""
    return [
        Entry(f"{conv}/{kernel}:0", (*path, "conv", "kernel"), layout),
        Entry(f"{conv}_bn/gamma:0", (*path, "bn", "scale")),
        Entry(f"{conv}_bn/beta:0", (*path, "bn", "bias")),
        Entry(f"{conv}_bn/moving_mean:0", (*path, "bn", "mean")),
        Entry(f"{conv}_bn/moving_variance:0", (*path, "bn", "var")),
    ]


def mobilenet_keras_backbone_entries() -> list[Entry]:
    """Keras MobileNet weight keys ("layer/weight:0") -> `KerasMobileNet` variables under
    ("backbone", ...)."""
    entries = keras_conv_bn_entries("conv1", "kernel", COPY, ("backbone", "conv1"))
    for n in range(1, len(MOBILENET_V1_BLOCKS) + 1):
        path = ("backbone", "blocks", n - 1)
        entries += keras_conv_bn_entries(
            f"conv_dw_{n}", "depthwise_kernel", KERAS_DEPTHWISE, (*path, "dw")
        )
        entries += keras_conv_bn_entries(f"conv_pw_{n}", "kernel", COPY, (*path, "pw"))
    return entries


def _keras_dense_layer(tensors: Mapping[str, np.ndarray], backbone: set[str], source: str) -> str:
    """The name of the one dense layer outside the MobileNet (Keras names it `dense_1`, or
    `dense` in tf.keras, since neither project names it)."""
    layers = {key.rsplit("/", 1)[0] for key in tensors if key not in backbone}
    candidates = sorted(
        name for name in layers if f"{name}/kernel:0" in tensors and f"{name}/bias:0" in tensors
    )
    if len(candidates) != 1:
        found = ", ".join(candidates) or "none"
        raise CheckpointMismatchError(
            f"{source}: expected exactly one dense layer (weights 'NAME/kernel:0' and "
            f"'NAME/bias:0', shapes ({MOBILENET_V1_FEATURES}, 10) and (10,)) besides the "
            f"MobileNet layers; found {found}"
        )
    return candidates[0]


def nima_mobilenet_keras(tensors: Mapping[str, np.ndarray], *, source: str) -> Nima:
    """idealo / titu1994 Keras NIMA (MobileNet v1) from its `.h5` weights; strict.

    `tensors` holds `common.keras_h5.read_keras_h5`'s keys, "layer/weight:0" (Keras HWIO
    kernels, used as they are):

        conv1/kernel:0                          (3, 3, 3, 32), stride 2 after conv1_pad
        conv1_bn/{gamma,beta,moving_mean,moving_variance}:0          (32,), epsilon 1e-3
        conv_dw_N/depthwise_kernel:0            (3, 3, C, 1), N = 1..13
        conv_dw_N_bn/{gamma,beta,moving_mean,moving_variance}:0
        conv_pw_N/kernel:0                      (1, 1, C, C')
        conv_pw_N_bn/{gamma,beta,moving_mean,moving_variance}:0
        DENSE/kernel:0, DENSE/bias:0            (1024, 10), (10,)

    Confirmed from the format's definition: the MobileNet layer and weight names are those of
    keras-applications' `mobilenet.py` (`conv1`, `conv1_bn`, `conv_dw_N`, `conv_dw_N_bn`,
    `conv_pw_N`, `conv_pw_N_bn`; Keras' weight names `kernel`, `depthwise_kernel`, `gamma`,
    `beta`, `moving_mean`, `moving_variance`); both projects build
    `Model(base_model.input, Dense(Dropout(base_model.output)))`, so the MobileNet layers are
    top-level layers of the saved model, not a nested model. Inferred, not seen in a real file
    (the published `.hdf5`/`.h5` are not in either repository snapshot): the dense layer's name
    DENSE — neither project names it, so Keras picks `dense_1` (Keras 2.x) or `dense`
    (tf.keras); the loader takes the one layer with a kernel and a bias outside the MobileNet,
    whatever its name.

    Raises:
      CheckpointMismatchError: a missing, unexpected or wrongly shaped key, or no single dense
        layer.
    """
    model = make_nima_mobilenet_keras()
    entries = mobilenet_keras_backbone_entries()
    dense = _keras_dense_layer(tensors, {e.key for e in entries}, source)
    entries += [
        Entry(f"{dense}/kernel:0", ("head", "kernel")),
        Entry(f"{dense}/bias:0", ("head", "bias")),
    ]
    load_entries(model, tensors, entries, source=source)
    return model
