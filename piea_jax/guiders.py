"""Guiders: differentiable aesthetic scores that steer PIEA's filter search (spec/piea.md §5).

A guider is any function `image (H, W, 3) in [0, 1] -> scalar score in [1, 10]` that JAX can
differentiate. The enhancer vmaps it over images and differentiates the loss (10 − S)² through
it, so it must be pure `jax.numpy` with no Python control flow on values.

Two guiders live here:

* `photo_critic` — a built-in *photographic critic*: a documented formula over classic image
  statistics, on NIMA's 1–10 scale. It is the default when no NIMA weights are available. It
  is not NIMA, was trained on nothing, and knows nothing about content or composition.
* `NimaGuider` / `nima_guider(model)` — wraps a Flax NIMA model (`common.nima`): the mean
  score Σ i·p_i of its softmax, with the model's own input resize inside the differentiated
  function so gradients reach the filter parameters through it.

`load_guider(kind, weights, backbone)` builds either by name, with the description and
checkpoint record that label every result made with it (what the commands call).

Guiders that carry arrays (model weights) are pytrees (`NimaGuider` is one), so the enhancer
passes the weights to its compiled search as arguments instead of baking them into the program
as constants; a plain function such as `photo_critic` carries none.
"""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
from flax import nnx

from common.nima import mean_score
from piea_jax.filters import luminance

logger = logging.getLogger(__name__)

# --- The photographic critic -------------------------------------------------------------------

# sRGB-encoded value of 18 % linear reflectance ("mid-grey"): the exposure target.
MID_GREY = 0.46
# Scales at which the spread and colourfulness terms saturate (tanh(value / scale)).
SPREAD_SCALE = 0.2
COLOURFULNESS_SCALE = 0.2
# Weights of the three quality terms (they sum to 1) and of the two clipping penalties.
EXPOSURE_WEIGHT, SPREAD_WEIGHT, COLOURFULNESS_WEIGHT = 0.35, 0.30, 0.35
HIGHLIGHT_PENALTY, SHADOW_PENALTY = 3.0, 0.5
# Soft clipping thresholds: a channel above 0.97 counts as blown, a luminance below 0.03 as
# crushed; the sigmoid width keeps the counts differentiable.
HIGHLIGHT_LEVEL, SHADOW_LEVEL, CLIP_WIDTH = 0.97, 0.03, 0.01
# Map of the combined quality z to the 1–10 scale: S = 1 + 9 sigmoid(SLOPE (z − CENTRE)).
SCORE_SLOPE, SCORE_CENTRE = 3.0, 0.5

_EPS = 1e-8


def critic_terms(image) -> dict[str, jax.Array]:
    """The statistics behind `photo_critic` for ONE image (H, W, 3) in [0, 1].

    Returns scalars: `exposure`, `spread`, `colourfulness` (each a quality in [0, 1], higher
    is better), `highlights` and `shadows` (soft fractions in [0, 1], lower is better), the
    combined quality `z` and the `score` in (1, 10).
    """
    x = jnp.asarray(image, jnp.float32)
    lum = luminance(x)
    mean_lum = jnp.mean(lum)
    std_lum = jnp.sqrt(jnp.mean((lum - mean_lum) ** 2) + _EPS)

    # Hasler & Süsstrunk (2003) colourfulness, on [0, 1] values instead of [0, 255].
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    rg = r - g
    yb = 0.5 * (r + g) - b
    colourfulness = jnp.sqrt(jnp.var(rg) + jnp.var(yb) + _EPS) + 0.3 * jnp.sqrt(
        jnp.mean(rg) ** 2 + jnp.mean(yb) ** 2 + _EPS
    )

    # The exposure quality falls quadratically (not like a Gaussian) with the distance to
    # mid-grey, so a very dark image still gets a useful gradient.
    exposure = 1.0 - ((mean_lum - MID_GREY) / (1.0 - MID_GREY)) ** 2
    spread = jnp.tanh(std_lum / SPREAD_SCALE)
    colour = jnp.tanh(colourfulness / COLOURFULNESS_SCALE)
    highlights = jnp.mean(jax.nn.sigmoid((x - HIGHLIGHT_LEVEL) / CLIP_WIDTH))
    shadows = jnp.mean(jax.nn.sigmoid((SHADOW_LEVEL - lum) / CLIP_WIDTH))

    z = (
        EXPOSURE_WEIGHT * exposure
        + SPREAD_WEIGHT * spread
        + COLOURFULNESS_WEIGHT * colour
        - HIGHLIGHT_PENALTY * highlights
        - SHADOW_PENALTY * shadows
    )
    score = 1.0 + 9.0 * jax.nn.sigmoid(SCORE_SLOPE * (z - SCORE_CENTRE))
    return {
        "exposure": exposure,
        "spread": spread,
        "colourfulness": colour,
        "highlights": highlights,
        "shadows": shadows,
        "z": z,
        "score": score,
    }


def photo_critic(image) -> jax.Array:
    """Built-in photographic critic: a score in (1, 10) for ONE image (H, W, 3) in [0, 1].

    NOT NIMA and not learned: a fixed formula over global statistics, on NIMA's scale so the
    enhancer's loss (10 − S)² means the same thing with either guider. With L the EXPOSURE
    luminance 0.27 R + 0.67 G + 0.06 B of each pixel:

        q_exposure  = 1 − ((mean L − 0.46) / 0.54)²       (0.46 = sRGB mid-grey, 18 % linear)
        q_spread    = tanh(std L / 0.2)                     (luminance spread, "contrast")
        q_colour    = tanh(M / 0.2)                         (M: Hasler–Süsstrunk colourfulness
                                                             σ_rgyb + 0.3 μ_rgyb on [0, 1] values)
        f_high      = mean over pixels and channels of sigmoid((x − 0.97) / 0.01)  (blown)
        f_low       = mean over pixels of sigmoid((0.03 − L) / 0.01)               (crushed)
        z           = 0.35 q_exposure + 0.30 q_spread + 0.35 q_colour − 3 f_high − 0.5 f_low
        S           = 1 + 9 sigmoid(3 (z − 0.5))

    Blown highlights cost six times more than crushed shadows (a photo with a dark background
    is fine; a burnt sky is not). On skimage's astronaut, coffee, chelsea and rocket the
    originals score 6.6–7.8 and their under-exposed, over-exposed, flattened and desaturated
    versions score lower (tests/test_guiders.py). Its preferences are simple and global: it
    likes mean luminance near mid-grey, a spread near 0.2–0.3 and vivid colour, and it knows
    nothing about content, so it is a stand-in guider for demos and tests, not a measure of
    aesthetics. Resolution-independent (only means and variances), differentiable everywhere.
    """
    return critic_terms(image)["score"]


# --- NIMA ---------------------------------------------------------------------------------------


@jax.tree_util.register_pytree_node_class
class NimaGuider:
    """A NIMA model as a guider: image (H, W, 3) in [0, 1] -> mean score Σ i·p_i in [1, 10].

    Holds the model split into its static graph and its state (a pytree of arrays), so the
    enhancer's compiled search takes the weights as an argument. The model runs in evaluation
    mode (dropout off, batch norm on its running statistics).

    Resizing: `input_size` s resizes the image to (s, s) — antialiased bilinear, inside this
    function, hence inside the gradient — before the model (NIMA's fixed-size mode, e.g. 224);
    `None` feeds the image at its own resolution (the paper's "native" mode, valid for
    backbones with global pooling).
    """

    def __init__(self, graphdef, state, input_size: int | None):
        self.graphdef = graphdef
        self.state = state
        self.input_size = input_size

    def __call__(self, image) -> jax.Array:
        x = jnp.asarray(image, jnp.float32)
        if self.input_size is not None:
            size = (self.input_size, self.input_size, x.shape[-1])
            x = jax.image.resize(x, size, method="linear", antialias=True)
        model = nnx.merge(self.graphdef, self.state)
        return mean_score(model(x[None]))[0]

    def tree_flatten(self):
        return (self.state,), (self.graphdef, self.input_size)

    @classmethod
    def tree_unflatten(cls, aux, children):
        graphdef, input_size = aux
        return cls(graphdef, children[0], input_size)


_MODEL_INPUT_SIZE = object()


def nima_guider(model: nnx.Module, *, input_size: int | None | object = _MODEL_INPUT_SIZE):
    """Wrap a Flax NIMA model (softmax over scores 1..10) as a guider.

    Args:
      model: an `nnx.Module` mapping (N, H, W, 3) images in [0, 1] to (N, 10) probabilities
        (e.g. `common.nima.Nima`). It is not modified; the guider uses an evaluation-mode copy
        that shares its weights.
      input_size: side of the square resize done inside the guider; `None` for native
        resolution. Defaults to the model's `input_size` attribute (None if it has none).

    Returns:
      A `NimaGuider` (a pytree; call it on one image).
    """
    if input_size is _MODEL_INPUT_SIZE:
        input_size = getattr(model, "input_size", None)
    graphdef, state = nnx.split(model)
    copy = nnx.merge(graphdef, state)
    copy.eval()
    graphdef, state = nnx.split(copy)
    return NimaGuider(graphdef, state, input_size)


# --- Building a guider by name ------------------------------------------------------------------

GUIDER_KINDS = ("critic", "nima")
CRITIC_DESCRIPTION = "photo_critic (built-in photographic critic; not NIMA)"


class GuiderError(ValueError):
    """A guider that cannot be built; `str()` says which argument or file and why."""


def load_guider(kind: str, weights: str | None = None, backbone: str | None = None):
    """The guider a command asked for, with what to label its results with.

    Args:
      kind: "critic" (`photo_critic`, which takes no weights) or "nima".
      weights: NIMA only: a public NIMA checkpoint file, or a directory converted once by
        `python -m common.weights convert`.
      backbone: NIMA only: the checkpoint's format, one of `common.nima.NIMA_BACKBONES`.

    Returns:
      (guider, description, record): the guider; one readable line naming it (for NIMA the
      backbone, path and the first 16 hex digits of the checkpoint's SHA-256); and None for the
      critic, else {"backbone", "path", "sha256", "input_size"} (the SHA-256 of the source
      checkpoint, also for a converted directory).

    Raises:
      GuiderError: an unknown kind, NIMA without weights or backbone (there is no random-weight
        NIMA: its scores would mean nothing), or weights that cannot be loaded (the message
        starts with the path).
    """
    if kind not in GUIDER_KINDS:
        raise GuiderError(f"unknown guider {kind!r}: one of {', '.join(GUIDER_KINDS)}")
    if kind == "critic":
        return photo_critic, CRITIC_DESCRIPTION, None
    if not weights:
        raise GuiderError("a NIMA guider needs weights (a checkpoint or a converted directory)")
    if not backbone:
        raise GuiderError(f"{weights}: a NIMA guider needs the checkpoint's backbone")
    from common.nima import load_nima  # noqa: PLC0415  (NIMA's ports load only when asked for)
    from common.weights import CheckpointError, source_sha256  # noqa: PLC0415

    try:
        model = load_nima(weights, backbone=backbone)
        sha256 = source_sha256(weights)
    except (CheckpointError, OSError, ImportError) as e:
        raise GuiderError(f"{weights}: {e}") from None
    record = {
        "backbone": backbone,
        "path": weights,
        "sha256": sha256,
        "input_size": model.input_size,
    }
    logger.info("guider: NIMA %s from %s (sha256 %s)", backbone, weights, sha256)
    description = f"NIMA ({backbone}, {weights}, sha256 {sha256[:16]})"
    return nima_guider(model), description, record
