"""NIMA (Talebi & Milanfar, 2018): an aesthetic-score head on an image backbone (flax.nnx).

NIMA = backbone -> global average pool (or a flatten) -> dropout -> Dense(10) -> softmax over
the scores 1..10; its score is the mean Σ i·p_i (`mean_score`). PIEA uses it as the guider,
QAGAN as a metric. This module holds the model structure only; checkpoint loaders arrive with
the weights work (spec/weights.md) — until then a NIMA has random weights and its scores mean
nothing.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from common.vgg import random_vgg16

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
