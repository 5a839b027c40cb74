"""PIEA: progressive image enhancement under aesthetic guidance, in JAX."""

from piea_jax import filters
from piea_jax.params import (
    FILTER_ORDER,
    FILTERS,
    RAW_SHAPES,
    apply_filters,
    initial_raw_params,
    to_physical,
)
from piea_jax.strategy import describe, strategy_items

__all__ = [
    "FILTERS",
    "FILTER_ORDER",
    "RAW_SHAPES",
    "apply_filters",
    "describe",
    "filters",
    "initial_raw_params",
    "strategy_items",
    "to_physical",
]

# The enhancer and the guiders (issue 3).
from piea_jax.enhance import EnhanceResult, Trajectory, enhance, render  # noqa: E402
from piea_jax.guiders import NimaGuider, nima_guider, photo_critic  # noqa: E402

__all__ += [
    "EnhanceResult",
    "NimaGuider",
    "Trajectory",
    "enhance",
    "nima_guider",
    "photo_critic",
    "render",
]
