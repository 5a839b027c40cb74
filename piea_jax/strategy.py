"""The readable enhancement strategy: PIEA's interpretable output (paper Fig. 4).

The readable line lists the *visible* changes only: a filter (for the colour curve, a channel's
curve) is listed when, applied alone, it moves some colour of a 9×9×9 grid of RGB values on
[0, 1] by at least `VISIBLE_CHANGE` = 2/255, two 8-bit levels. Smaller changes cannot be seen
and would only clutter the line ("Tone curve 0.99/1.00/1.01/…"); the strategy JSON written
beside each image keeps every value.
"""

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from piea_jax import filters
from piea_jax.params import FILTER_ORDER, FILTERS

VISIBLE_CHANGE = 2 / 255

# The colours a change is measured on, as a 1 × 729 image.
_GRID = np.stack(np.meshgrid(*[np.linspace(0.0, 1.0, 9)] * 3, indexing="ij"), axis=-1)
_GRID = _GRID.reshape(1, -1, 3).astype(np.float32)


@jax.jit
def _changes(physical):
    """{name: (3,) largest |filter(grid) − grid| per output channel} for each given filter."""
    return {
        name: jnp.max(jnp.abs(FILTERS[name](_GRID, value) - _GRID), axis=(0, 1))
        for name, value in physical.items()
    }


def _signed(value: float) -> str:
    return f"{value:+.2f}"


def _slopes(slopes: np.ndarray) -> str:
    # Only slope ratios matter, so report them normalised to a mean of 1.
    return "/".join(f"{s:.2f}" for s in slopes / slopes.mean())


def strategy_items(physical: Mapping[str, object]) -> list[tuple[str, str]]:
    """(filter name, readable text) for each filter of ONE image whose change is visible (at
    least `VISIBLE_CHANGE`, see the module docstring), in chain order."""
    known = [name for name in FILTER_ORDER if name in physical]
    p = {name: np.asarray(physical[name], dtype=np.float64) for name in known}
    changes = _changes({name: jnp.asarray(p[name], jnp.float32) for name in known})
    visible = {name: np.asarray(changes[name]) >= VISIBLE_CHANGE for name in known}
    items = []
    for name in known:
        v = p[name]
        if name == "color_curve":
            rows = [
                f"{channel} {_slopes(row)}"
                for channel, row, shown in zip("RGB", v, visible[name], strict=True)
                if shown
            ]
            if rows:
                items.append((name, "Colour curve " + ", ".join(rows)))
        elif not visible[name].any():
            continue
        elif name == "exposure":
            items.append((name, f"Exposure {_signed(v)} EV"))
        elif name == "gamma":
            items.append((name, f"Gamma 1/{1.0 / v:.2f}"))
        elif name == "white_balance":
            # The effective multipliers the filter applies (gains normalised by their luminance).
            r, g, b = v / (1e-5 + float(np.asarray(filters.LUMINANCE_WEIGHTS) @ v))
            items.append((name, f"White balance R×{r:.2f} G×{g:.2f} B×{b:.2f}"))
        elif name == "saturation":
            items.append((name, f"Saturation {_signed(v)}"))
        elif name == "tone_curve":
            items.append((name, f"Tone curve {_slopes(v)}"))
        elif name == "contrast":
            items.append((name, f"Contrast {_signed(v)}"))
        elif name == "black_and_white":
            items.append((name, f"Black & white {_signed(v)}"))
    return items


def describe(physical: Mapping[str, object]) -> str:
    """The strategy of ONE image as one line: "Exposure +1.45 EV, Gamma 1/1.50, Contrast +0.25".

    Lists only filters whose change is visible (see the module docstring), in chain order;
    curves show their slopes normalised to mean 1. Returns "Identity (no change)" when no
    change is visible.
    """
    items = strategy_items(physical)
    return ", ".join(text for _, text in items) if items else "Identity (no change)"


def _to_lists(tree):
    return jax.tree.map(lambda x: np.asarray(x).round(6).tolist(), tree)


def strategy_record(result, i: int) -> dict:
    """What a search found for image `i` of an `EnhanceResult` (no learning-rate sweep), as
    JSON-ready values rounded to 6 decimals: "strategy" (the readable line), "filters"
    (physical values), "raw_params", "scores" and "losses" (steps 0..M), "trajectory" (per
    step: score, readable line, physical values) and "preview_shape"."""
    params = jax.tree.map(lambda p: np.asarray(p[i]), result.params)
    trajectory = jax.tree.map(lambda p: np.asarray(p[i]), result.trajectory.params)
    scores = np.asarray(result.scores[i])
    return {
        "strategy": describe(params),
        "filters": _to_lists(params),
        "raw_params": _to_lists(jax.tree.map(lambda p: p[i], result.raw_params)),
        "scores": _to_lists(scores),
        "losses": _to_lists(result.trajectory.losses[i]),
        "trajectory": [
            {
                "step": t,
                "score": round(float(scores[t]), 6),
                "strategy": describe(jax.tree.map(lambda p, t=t: p[t], trajectory)),
                "filters": _to_lists(jax.tree.map(lambda p, t=t: p[t], trajectory)),
            }
            for t in range(len(scores))
        ],
        "preview_shape": list(result.preview_shape),
    }


def trajectory_from_record(record: Mapping) -> dict[str, np.ndarray]:
    """The physical parameters at steps 0..M, {name: (M + 1, ...)}, from a `strategy_record`
    (e.g. read back from a strategy JSON)."""
    steps = record["trajectory"]
    return {
        name: np.asarray([step["filters"][name] for step in steps], np.float32)
        for name in steps[0]["filters"]
    }
