"""An independent numpy VGG / NIMA forward for the loader tests, in torch's own terms.

It reads torchvision-layout state dicts directly (OIHW conv weights, (out, in) Linear weights)
and computes in NCHW float64, so it shares no layout code with the Flax port: a transposed
kernel, a swapped index table or a wrong flatten order in the loaders shows up as a mismatch.
"""

from __future__ import annotations

import functools

import numpy as np

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406])
IMAGENET_STD = np.array([0.229, 0.224, 0.225])

# torchvision cfgs "D" (VGG-16) and "E" (VGG-19), written out again here on purpose.
CFGS = {
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
              512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"],
}  # fmt: skip


def conv_indices(variant: str) -> list[int]:
    """torchvision `features.N` indices of the convs: each conv is followed by a ReLU."""
    indices, n = [], 0
    for item in CFGS[variant]:
        if item == "M":
            n += 1
        else:
            indices.append(n)
            n += 2
    return indices


@functools.cache
def random_features(variant: str, seed: int = 0) -> dict[str, np.ndarray]:
    """Real-shaped random `features.N.weight` / `.bias` (float32) of a torchvision VGG.

    He-scaled (fan-in) so activations keep their size through the 13 or 16 convs; biases are
    non-zero so that a bias mapped to the wrong layer is visible. Cached per process (about
    59 MB for VGG-16, 80 MB for VGG-19); callers must not modify the arrays.
    """
    rng = np.random.default_rng(seed)
    state, in_ch, n = {}, 3, 0
    for item in CFGS[variant]:
        if item == "M":
            n += 1
            continue
        scale = np.sqrt(2.0 / (9 * in_ch))
        weight = rng.standard_normal((item, in_ch, 3, 3), dtype=np.float32) * scale
        state[f"features.{n}.weight"] = weight.astype(np.float32)
        state[f"features.{n}.bias"] = (0.1 * rng.standard_normal(item)).astype(np.float32)
        in_ch, n = item, n + 2
    return state


def conv3x3(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """torch Conv2d(kernel 3, padding 1) on NCHW float64: weight (O, I, 3, 3)."""
    _, _, h, w = x.shape
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    out = bias.astype(np.float64)[None, :, None, None]
    for i in range(3):
        for j in range(3):
            window = padded[:, :, i : i + h, j : j + w]
            out = out + np.einsum("nchw,oc->nohw", window, weight[:, :, i, j], optimize=True)
    return out


def max_pool(x: np.ndarray) -> np.ndarray:
    """torch MaxPool2d(2, 2): floors odd sizes."""
    n, c, h, w = x.shape
    x = x[:, :, : h // 2 * 2, : w // 2 * 2]
    return x.reshape(n, c, h // 2, 2, w // 2, 2).max(axis=(3, 5))


def vgg_taps(
    images_nhwc: np.ndarray,
    state: dict[str, np.ndarray],
    variant: str,
    *,
    key_prefix: str = "features.",
    normalize: bool = True,
    depth: int | None = None,
) -> dict[str, np.ndarray]:
    """Every tap (`relu3_2`, `pool4`, ...) of a VGG as NHWC float64, from a torch state dict.

    `depth` stops after that many entries of the cfg (None: the whole network).
    """
    x = np.asarray(images_nhwc, np.float64)
    if normalize:
        x = (x - IMAGENET_MEAN) / IMAGENET_STD
    x = x.transpose(0, 3, 1, 2)
    taps, block, conv, n = {}, 1, 1, 0
    for item in CFGS[variant][:depth]:
        if item == "M":
            x = max_pool(x)
            taps[f"pool{block}"] = x
            block, conv, n = block + 1, 1, n + 1
        else:
            w = state[f"{key_prefix}{n}.weight"]
            b = state[f"{key_prefix}{n}.bias"]
            x = np.maximum(conv3x3(x, w, b), 0.0)
            taps[f"relu{block}_{conv}"] = x
            conv, n = conv + 1, n + 2
    return {name: t.transpose(0, 2, 3, 1) for name, t in taps.items()}


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def nima_probs(features: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """softmax(Linear) of (N, F) features with a torch (10, F) weight."""
    return softmax(features @ weight.astype(np.float64).T + bias)


def nchw_flatten(map_nhwc: np.ndarray) -> np.ndarray:
    """torch's `x.view(N, -1)` of the NCHW map."""
    return map_nhwc.transpose(0, 3, 1, 2).reshape(map_nhwc.shape[0], -1)


def assert_close_to_scale(got, want, rel: float = 1e-4, what: str = "") -> float:
    """max |got − want| <= rel · max |want|; returns that max difference."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, (what, got.shape, want.shape)
    diff = float(np.max(np.abs(got - want)))
    scale = float(np.max(np.abs(want)))
    assert diff <= rel * scale, f"{what}: max abs diff {diff:.3g} > {rel} x scale {scale:.3g}"
    return diff
