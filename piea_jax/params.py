"""PIEA's filter chain: its order, raw (optimised) parameters and their physical meaning.

Optimisation runs on unconstrained *raw* variables; `to_physical` maps them through fixed
bounded functions (EXPOSURE's ranges, spec/piea.md §4) to the values the filters take and a
person reads. All-zero raw parameters are the identity chain; PIEA starts from zeros except
exposure, which starts at +1 EV (paper §4.1: "to get out of the too dark condition").
"""

import math
from collections.abc import Mapping, Sequence

import jax.numpy as jnp

from piea_jax import filters

# EXPOSURE's chain order, the default order of `apply_filters`.
FILTER_ORDER = (
    "exposure",
    "gamma",
    "white_balance",
    "saturation",
    "tone_curve",
    "contrast",
    "black_and_white",
    "color_curve",
)

FILTERS = {name: getattr(filters, name) for name in FILTER_ORDER}

RAW_SHAPES = {
    "exposure": (),
    "gamma": (),
    "white_balance": (2,),
    "saturation": (),
    "tone_curve": (filters.CURVE_SEGMENTS,),
    "contrast": (),
    "black_and_white": (),
    "color_curve": (3, filters.CURVE_SEGMENTS),
}

# Shapes of the physical parameters the filters take (what `to_physical` returns).
PHYSICAL_SHAPES = {
    "exposure": (),
    "gamma": (),
    "white_balance": (3,),
    "saturation": (),
    "tone_curve": (filters.CURVE_SEGMENTS,),
    "contrast": (),
    "black_and_white": (),
    "color_curve": (3, filters.CURVE_SEGMENTS),
}

# Bounds of the mappings below (EXPOSURE's ranges).
MAX_EXPOSURE_EV = 3.5  # ev ∈ (−3.5, 3.5)
MAX_LOG3_GAMMA = 1.0  # g ∈ (1/3, 3)
MAX_LOG_WB_GAIN = 0.5  # G and B gains ∈ (e^−0.5, e^0.5), R fixed at 1
TONE_SLOPE_CENTRE, TONE_SLOPE_RANGE = 1.25, 0.75  # t ∈ (0.5, 2)
COLOR_SLOPE_RANGE = 0.1  # c ∈ (0.9, 1.1)

INITIAL_EXPOSURE_EV = 1.0


def initial_raw_params(exposure_ev: float = INITIAL_EXPOSURE_EV) -> dict[str, jnp.ndarray]:
    """PIEA's starting point: zeros (identity) except exposure = `exposure_ev` (default +1 EV).

    Returns float32 arrays with shapes `RAW_SHAPES`.
    """
    raw = {name: jnp.zeros(shape, jnp.float32) for name, shape in RAW_SHAPES.items()}
    raw["exposure"] = jnp.float32(math.atanh(exposure_ev / MAX_EXPOSURE_EV))
    return raw


def to_physical(raw: Mapping[str, jnp.ndarray]) -> dict[str, jnp.ndarray]:
    """Map raw parameters (any real values) to physical filter parameters (spec/piea.md §4).

    exposure ev = 3.5 tanh r; gamma g = 3^tanh r; white-balance gains = (1, e^{0.5 tanh r0},
    e^{0.5 tanh r1}); saturation, contrast and black & white = tanh r ∈ (−1, 1); tone-curve
    slopes = 1.25 + 0.75 tanh r ∈ (0.5, 2); colour-curve slopes = 1 + 0.1 tanh r ∈ (0.9, 1.1).
    Pure and elementwise, so it works under jit, vmap and grad, and leading batch axes of the
    raw arrays pass through unchanged.
    """
    wb = jnp.exp(MAX_LOG_WB_GAIN * jnp.tanh(raw["white_balance"]))
    return {
        "exposure": MAX_EXPOSURE_EV * jnp.tanh(raw["exposure"]),
        "gamma": 3.0 ** (MAX_LOG3_GAMMA * jnp.tanh(raw["gamma"])),
        "white_balance": jnp.concatenate([jnp.ones_like(wb[..., :1]), wb], axis=-1),
        "saturation": jnp.tanh(raw["saturation"]),
        "tone_curve": TONE_SLOPE_CENTRE + TONE_SLOPE_RANGE * jnp.tanh(raw["tone_curve"]),
        "contrast": jnp.tanh(raw["contrast"]),
        "black_and_white": jnp.tanh(raw["black_and_white"]),
        "color_curve": 1.0 + COLOR_SLOPE_RANGE * jnp.tanh(raw["color_curve"]),
    }


def apply_filters(image, physical: Mapping[str, jnp.ndarray], order: Sequence[str] = FILTER_ORDER):
    """Run the chain `order` on one image (H, W, 3) with physical parameters. No final clip.

    Filters not named in `order` are skipped; every name in `order` must be in `physical`.
    """
    unknown = [name for name in order if name not in FILTERS]
    if unknown:
        raise ValueError(f"unknown filter(s) {unknown}; known: {FILTER_ORDER}")
    x = jnp.asarray(image)
    for name in order:
        x = FILTERS[name](x, physical[name])
    return x
