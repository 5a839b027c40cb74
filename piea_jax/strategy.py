"""The readable enhancement strategy: PIEA's interpretable output (paper Fig. 4)."""

from collections.abc import Mapping

import numpy as np

from piea_jax import filters
from piea_jax.params import FILTER_ORDER

# A filter is reported when its effect shows at the printed precision (two decimals).
REPORT_TOLERANCE = 5e-3


def _signed(value: float) -> str:
    return f"{value:+.2f}"


def _slopes(slopes: np.ndarray) -> str:
    # Only slope ratios matter, so report them normalised to a mean of 1.
    return "/".join(f"{s:.2f}" for s in slopes / slopes.mean())


def _curve_is_identity(slopes: np.ndarray) -> bool:
    return bool(np.all(np.abs(slopes / slopes.mean() - 1.0) < REPORT_TOLERANCE))


def strategy_items(physical: Mapping[str, object]) -> list[tuple[str, str]]:
    """(filter name, readable text) for each non-identity filter of ONE image, in chain order."""
    p = {name: np.asarray(value, dtype=np.float64) for name, value in physical.items()}
    items = []
    for name in FILTER_ORDER:
        if name not in p:
            continue
        v = p[name]
        if name == "exposure" and abs(v) >= REPORT_TOLERANCE:
            items.append((name, f"Exposure {_signed(v)} EV"))
        elif name == "gamma" and abs(1.0 / v - 1.0) >= REPORT_TOLERANCE:
            items.append((name, f"Gamma 1/{1.0 / v:.2f}"))
        elif name == "white_balance":
            # The effective multipliers the filter applies (gains normalised by their luminance).
            effective = v / (1e-5 + float(np.asarray(filters.LUMINANCE_WEIGHTS) @ v))
            if np.any(np.abs(effective - 1.0) >= REPORT_TOLERANCE):
                r, g, b = effective
                items.append((name, f"White balance R×{r:.2f} G×{g:.2f} B×{b:.2f}"))
        elif name == "saturation" and abs(v) >= REPORT_TOLERANCE:
            items.append((name, f"Saturation {_signed(v)}"))
        elif name == "tone_curve" and not _curve_is_identity(v):
            items.append((name, f"Tone curve {_slopes(v)}"))
        elif name == "contrast" and abs(v) >= REPORT_TOLERANCE:
            items.append((name, f"Contrast {_signed(v)}"))
        elif name == "black_and_white" and abs(v) >= REPORT_TOLERANCE:
            items.append((name, f"Black & white {_signed(v)}"))
        elif name == "color_curve":
            rows = [
                f"{channel} {_slopes(row)}"
                for channel, row in zip("RGB", v, strict=True)
                if not _curve_is_identity(row)
            ]
            if rows:
                items.append((name, "Colour curve " + ", ".join(rows)))
    return items


def describe(physical: Mapping[str, object]) -> str:
    """The strategy of ONE image as one line: "Exposure +1.45 EV, Gamma 1/1.50, Contrast +0.25".

    Lists only filters that differ from the identity at two decimals, in chain order; curves
    show their slopes normalised to mean 1. Returns "Identity (no change)" when nothing acts.
    """
    items = strategy_items(physical)
    return ", ".join(text for _, text in items) if items else "Identity (no change)"
