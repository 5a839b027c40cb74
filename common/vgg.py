"""VGG-16 / VGG-19 feature extractors in torchvision's layer structure (flax.nnx).

One implementation serves both variants: a variant is a layer table (`VGG16`, `VGG19`), and
`VGG` builds the convolutions of that table up to the deepest requested tap. Layers are named
`conv{block}_{index}` so that loading a torchvision checkpoint is one mapping (torch OIHW
weights transpose (2, 3, 1, 0) to Flax HWIO kernels):

    VGG-19  features.N  ->  module               tap after ReLU / pool
            0               conv1_1              relu1_1
            2               conv1_2              relu1_2
            4               (max-pool)           pool1
            5               conv2_1              relu2_1
            7               conv2_2              relu2_2
            9               (max-pool)           pool2
            10, 12, 14, 16  conv3_1 .. conv3_4   relu3_1 .. relu3_4
            18              (max-pool)           pool3
            19, 21, 23, 25  conv4_1 .. conv4_4   relu4_1 .. relu4_4
            27              (max-pool)           pool4
            28, 30, 32, 34  conv5_1 .. conv5_4   relu5_1 .. relu5_4
            36              (max-pool)           pool5

    VGG-16  features.N  ->  module
            0, 2            conv1_1, conv1_2     (pool1 = features.4)
            5, 7            conv2_1, conv2_2     (pool2 = features.9)
            10, 12, 14      conv3_1 .. conv3_3   (pool3 = features.16)
            17, 19, 21      conv4_1 .. conv4_3   (pool4 = features.23)
            24, 26, 28      conv5_1 .. conv5_3   (pool5 = features.30)

`torchvision_index(variant)` returns this table as a dict (module name -> features index), so
the checkpoint loaders (`load_vgg19`, `load_vgg16`, `torchvision_entries`) never hard-code
indices. Keys of a checkpoint beyond the deepest built layer (and its classifier) are not needed.

Convolutions are 3x3 with zero padding 1, each followed by ReLU; pooling is 2x2 max with
stride 2 (odd sizes are floored, as in torch). Inputs are RGB in [0, 1]; the ImageNet mean/std
normalisation happens inside the model (`imagenet_normalize=False` for heads trained on
unnormalised [0, 1] inputs). Random initialisation follows torchvision (Kaiming-normal,
fan-out, zero bias).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from common import weights

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Layer tables: numbers are conv output channels, "M" a 2x2 max-pool (torchvision cfgs "D", "E").
VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
VGG19 = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
    512, 512, 512, 512, "M", 512, 512, 512, 512, "M",
)  # fmt: skip
VARIANTS = {"vgg16": VGG16, "vgg19": VGG19}

# The five taps QAGAN's encoder and cycle loss use.
QAGAN_TAPS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")


def _layer_names(cfg: Sequence[int | str]) -> list[tuple[str, str, int | None, int]]:
    """(module name, tap name, out channels or None for a pool, torchvision features index)."""
    layers, block, conv, index = [], 1, 1, 0
    for item in cfg:
        if item == "M":
            layers.append((f"pool{block}", f"pool{block}", None, index))
            block, conv, index = block + 1, 1, index + 1
        else:
            layers.append((f"conv{block}_{conv}", f"relu{block}_{conv}", int(item), index))
            conv, index = conv + 1, index + 2  # conv, then ReLU
    return layers


def available_taps(variant: str | Sequence[int | str] = "vgg19") -> tuple[str, ...]:
    """Every tap name of a variant, in network order (`relu1_1`, ..., `pool5`)."""
    cfg = VARIANTS[variant] if isinstance(variant, str) else variant
    return tuple(tap for _, tap, _, _ in _layer_names(cfg))


def torchvision_index(variant: str | Sequence[int | str] = "vgg19") -> dict[str, int]:
    """Module name (`conv3_2`, `pool3`, ...) -> torchvision `features.N` index."""
    cfg = VARIANTS[variant] if isinstance(variant, str) else variant
    return {name: index for name, _, _, index in _layer_names(cfg)}


class VGG(nnx.Module):
    """VGG feature extractor returning a dict of intermediate activations (NHWC).

    Args:
      cfg: a variant name (`"vgg16"`, `"vgg19"`) or a layer table like `VGG19`.
      taps: tap names to return (`reluX_Y` after a conv's ReLU, `poolX` after a max-pool).
        Only the layers up to the deepest tap are built and run.
      width: channel divisor for tiny test networks (1 = the real network; 16 gives
        4, 8, 16, 32, 32 channels). Real checkpoints need `width=1`.
      imagenet_normalize: subtract the ImageNet mean and divide by its std first (torchvision
        and timm weights); False feeds the [0, 1] values as they are.
      rngs: `nnx.Rngs` for the random initialisation.

    Calling the model on `images` (N, H, W, 3) with values in [0, 1] returns
    `{tap: (N, H', W', C')}` for the requested taps.
    """

    def __init__(
        self,
        cfg: str | Sequence[int | str] = "vgg19",
        *,
        taps: Sequence[str] = QAGAN_TAPS,
        width: int = 1,
        imagenet_normalize: bool = True,
        rngs: nnx.Rngs,
    ):
        cfg = VARIANTS[cfg] if isinstance(cfg, str) else tuple(cfg)
        layers = _layer_names(cfg)
        names = [tap for _, tap, _, _ in layers]
        unknown = [t for t in taps if t not in names]
        if unknown:
            raise ValueError(f"unknown VGG taps {unknown}; available: {names}")
        if not taps:
            raise ValueError("request at least one tap")
        deepest = max(names.index(t) for t in taps)
        self.cfg = cfg
        self.taps = tuple(taps)
        self.width = width
        self.imagenet_normalize = imagenet_normalize
        # Static attributes stay hashable (tuples), so the module's GraphDef can key a jit cache.
        channels: list[tuple[str, int]] = []
        layer_names: list[str] = []
        init = jax.nn.initializers.variance_scaling(2.0, "fan_out", "normal")  # torchvision's
        in_ch = 3
        for name, tap, out_ch, _ in layers[: deepest + 1]:
            layer_names.append(name)
            if out_ch is not None:
                out_ch = max(out_ch // width, 1)
                conv = nnx.Conv(
                    in_ch,
                    out_ch,
                    (3, 3),
                    padding=((1, 1), (1, 1)),
                    kernel_init=init,
                    bias_init=jax.nn.initializers.zeros,
                    rngs=rngs,
                )
                setattr(self, name, conv)
                in_ch = out_ch
            channels.append((tap, in_ch))
        self.layer_names = tuple(layer_names)  # module names in order, up to the deepest tap
        self._tap_channels = tuple(channels)

    @property
    def channels(self) -> dict[str, int]:
        """Channels of every tap up to the deepest requested one (sizes layers that use them)."""
        return dict(self._tap_channels)

    def __call__(self, images: jax.Array) -> dict[str, jax.Array]:
        # Floating inputs keep their dtype (bfloat16 compute, with parameters cast to it by the
        # caller); anything else is converted to float32.
        x = jnp.asarray(images)
        if not jnp.issubdtype(x.dtype, jnp.floating):
            x = x.astype(jnp.float32)
        if self.imagenet_normalize:
            mean = jnp.asarray(IMAGENET_MEAN, x.dtype)
            std = jnp.asarray(IMAGENET_STD, x.dtype)
            x = (x - mean) / std
        out = {}
        for name in self.layer_names:
            if name.startswith("pool"):
                x = max_pool_2x2(x)
                tap = name
            else:
                layer = getattr(self, name)
                x = jax.nn.relu(conv3x3(x, layer.kernel[...], layer.bias[...]))
                tap = "relu" + name[len("conv") :]
            if tap in self.taps:
                out[tap] = x
        return out


_CONV_DIMS = ("NHWC", "HWIO", "NHWC")


def _conv3x3(x, kernel):
    return jax.lax.conv_general_dilated(
        x, kernel, (1, 1), ((1, 1), (1, 1)), dimension_numbers=_CONV_DIMS
    )


@jax.custom_vjp
def _conv3x3_with_flipped(x, kernel, flipped):
    return _conv3x3(x, kernel)


def _conv3x3_fwd(x, kernel, flipped):
    return _conv3x3(x, kernel), (x, kernel, flipped)


def _conv3x3_bwd(residuals, dy):
    x, kernel, flipped = residuals
    dx = _conv3x3(dy, flipped)  # the input gradient is the conv with the flipped kernel
    _, pull_kernel = jax.vjp(lambda k: _conv3x3(x, k), kernel)  # dead code unless needed
    (dkernel,) = pull_kernel(dy)
    return dx, dkernel, jnp.zeros_like(flipped)


_conv3x3_with_flipped.defvjp(_conv3x3_fwd, _conv3x3_bwd)


def conv3x3(x_nhwc: jax.Array, kernel_hwio: jax.Array, bias: jax.Array) -> jax.Array:
    """3×3 conv, stride 1, zero padding 1, plus bias — with a loop-friendly input gradient.

    Same values and gradients as `lax.conv_general_dilated`. The input gradient convolves with
    an explicitly flipped, in/out-swapped kernel, materialised once per call. Without it, when
    the gradient runs inside a loop (PIEA's `lax.scan` over steps with a frozen guider),
    XLA:CPU reads the loop-invariant kernel through a transposed layout and its gradient
    convolutions run 3–4× slower than outside the loop (measured on VGG16).
    """
    flipped = jax.lax.optimization_barrier(jnp.flip(kernel_hwio, (0, 1)).swapaxes(2, 3))
    return _conv3x3_with_flipped(x_nhwc, kernel_hwio, flipped) + bias


def max_pool_2x2(x_nhwc: jax.Array) -> jax.Array:
    """2×2 max-pool, stride 2, VALID (an odd last row/column is dropped, as in torchvision).

    A reshape and a max rather than `lax.reduce_window`: same values, and XLA:CPU computes its
    gradient about 3.6× faster than the select-and-scatter of a windowed max.
    """
    n, h, w, c = x_nhwc.shape
    x = x_nhwc[:, : h // 2 * 2, : w // 2 * 2]
    return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def random_vgg19(seed: int = 0, *, taps: Sequence[str] = QAGAN_TAPS, width: int = 1) -> VGG:
    """VGG-19 up to `relu5_1` (by default) with random torchvision-style weights.

    Calling it on (N, H, W, 3) images in [0, 1] returns `relu1_1 ... relu5_1` (NHWC).
    """
    return VGG("vgg19", taps=taps, width=width, rngs=nnx.Rngs(seed))


def random_vgg16(seed: int = 0, *, taps: Sequence[str] = ("pool5",), width: int = 1) -> VGG:
    """VGG-16 with random weights; `pool5` is (N, H/32, W/32, 512) for `width=1`."""
    return VGG("vgg16", taps=taps, width=width, rngs=nnx.Rngs(seed))


def torchvision_entries(
    model: VGG, *, key_prefix: str = "features.", path: tuple = ()
) -> list[weights.Entry]:
    """Checkpoint keys `{key_prefix}{N}.weight` / `.bias` -> `model`'s conv kernels and biases.

    N is torchvision's `features.N` index of each built conv (`torchvision_index`); weights are
    OIHW and become HWIO kernels. `path` prefixes the variable paths (e.g. `("backbone",)` for
    a VGG inside a NIMA).
    """
    index = torchvision_index(model.cfg)
    entries = []
    for name in model.layer_names:
        if name.startswith("conv"):
            key = f"{key_prefix}{index[name]}"
            entries.append(weights.Entry(f"{key}.weight", (*path, name, "kernel"), weights.CONV))
            entries.append(weights.Entry(f"{key}.bias", (*path, name, "bias")))
    return entries


def _unused_torchvision_key(model: VGG) -> Callable[[str], bool]:
    """Keys a feature extractor does not need: the classifier (torchvision `classifier.*`, timm
    `pre_logits.*` / `head.*`) and convs deeper than the deepest requested tap."""
    index = torchvision_index(model.cfg)
    convs = {i for name, i in index.items() if name.startswith("conv")}
    built = {index[name] for name in model.layer_names if name.startswith("conv")}
    pattern = re.compile(r"features\.(\d+)\.(weight|bias)")

    def unused(key: str) -> bool:
        if key.startswith(("classifier.", "pre_logits.", "head.")):
            return True
        match = pattern.fullmatch(key)
        return bool(match) and int(match[1]) in convs - built

    return unused


def _load(path, variant: str, taps: Sequence[str]) -> VGG:
    model = weights.empty_module(lambda: VGG(variant, taps=taps, rngs=nnx.Rngs(0)))
    source = str(path)
    if weights.is_converted(path):
        tensors = weights.read_converted(path, format=variant)
        built = set(model.layer_names)
        layers = set(torchvision_index(variant))
        weights.load_entries(
            model,
            tensors,
            weights.module_entries(model),
            source=source,
            ignore=lambda key: key.split(".")[0] in layers - built,
        )
        return model
    tensors = weights.unwrap_state_dict(
        weights.read_checkpoint(path), probe="features.0.weight", source=source
    )
    weights.load_entries(
        model,
        tensors,
        torchvision_entries(model),
        source=source,
        ignore=_unused_torchvision_key(model),
    )
    return model


def load_vgg19(path, *, taps: Sequence[str] = QAGAN_TAPS) -> VGG:
    """VGG-19 with pretrained weights: the same model as `random_vgg19(taps=taps)`.

    `path` is torchvision's `vgg19-dcbb9e9d.pth` (a state dict, zip or legacy torch.save
    layout), timm's `vgg19.tv_in1k` `model.safetensors` (the same weights and conv keys), or a
    directory written by `python -m common.weights convert SRC --format vgg19`. Inputs: RGB in
    [0, 1], ImageNet mean/std applied inside.

    Keys read (confirmed from torchvision/models/vgg.py `make_layers(cfgs["E"])` and
    timm/models/vgg.py, which keeps torchvision's `features` and renames only the classifier):
    `features.{0,2,5,7,10,12,14,16,19,21,23,25,28,30,32,34}.weight` (O, I, 3, 3) and `.bias`
    (O,), up to the deepest requested tap (conv5_1 = features.28 for QAGAN's taps). Ignored:
    deeper convs, torchvision's `classifier.{0,3,6}.*`, timm's `pre_logits.fc{1,2}.*` and
    `head.fc.*`. Any other key, a missing needed key or a wrong shape raises
    `CheckpointMismatchError` naming the key and both shapes. A checkpoint wrapped as
    {"state_dict": ...} / {"model": ...} or saved from DataParallel is unwrapped first.
    """
    return _load(path, "vgg19", taps)


def load_vgg16(path, *, taps: Sequence[str] = ("pool5",)) -> VGG:
    """VGG-16 with pretrained weights: the same model as `random_vgg16(taps=taps)`.

    `path` is torchvision's `vgg16-397923af.pth`, timm's `vgg16.tv_in1k` safetensors, or a
    directory converted with `--format vgg16`. Keys read (confirmed from the same definitions
    as `load_vgg19`, configuration "D"): `features.{0,2,5,7,10,12,14,17,19,21,24,26,28}.weight`
    / `.bias`; the classifier and convs deeper than the deepest tap are ignored.
    """
    return _load(path, "vgg16", taps)
