"""Colour helpers shared by the filters (`piea_jax.filters`) and the metrics (`common.metrics`).

Plain `jax.numpy` functions on (..., 3) RGB arrays; they live here so that `common` imports
nothing from the algorithm packages.
"""

import jax.numpy as jnp

# EXPOSURE's luminance weights (not Rec. 601/709), used by every PIEA filter that needs
# luminance and by PIEA's evaluation statistics (spec/piea.md §2, §7).
LUMINANCE_WEIGHTS = (0.27, 0.67, 0.06)


def luminance(image):
    """EXPOSURE luminance 0.27 R + 0.67 G + 0.06 B of an (..., 3) array -> (...)."""
    image = jnp.asarray(image)
    # An explicit weighted sum, not a dot: XLA fuses it with the neighbouring elementwise ops.
    r, g, b = LUMINANCE_WEIGHTS
    return r * image[..., 0] + g * image[..., 1] + b * image[..., 2]


def hls_saturation(rgb):
    """HLS saturation of (..., 3) RGB in [0, 1] -> (...); 0 for greys (including black and white).

    S = (max − min)/(max + min) if the lightness (max + min)/2 < 0.5, else
    (max − min)/(2 − max − min), as `colorsys.rgb_to_hls`.
    """
    rgb = jnp.asarray(rgb)
    mx, mn = jnp.max(rgb, axis=-1), jnp.min(rgb, axis=-1)
    chroma = mx - mn
    lightness = (mx + mn) / 2
    denom = jnp.where(lightness < 0.5, mx + mn, 2.0 - mx - mn)
    return jnp.where(chroma > 0, chroma / jnp.where(chroma > 0, denom, 1.0), 0.0)
