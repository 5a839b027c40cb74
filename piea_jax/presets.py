"""Presets: a found strategy stored as JSON, to render other images with it without a search.

A preset holds what rendering needs and what says where it came from:

    {
      "format": "piea-preset",
      "version": 1,
      "order": ["exposure", "gamma", ...],            # the filter chain, in order
      "filters": {"exposure": 1.45, "white_balance": [1.0, 1.02, 0.97], ...},
      "guider": "photo_critic (built-in photographic critic; not NIMA)",
      "source": "photos/IMG_0042.tif",               # the image the strategy was found on
      "strategy": "Exposure +1.45 EV, Gamma 1/1.50"   # the readable line, for people
    }

`filters` holds the *physical* parameters (`piea_jax.params.PHYSICAL_SHAPES`) at full float32
precision, one entry per filter of `order`. Reading refuses (with `PresetError`, naming the
file and the reason) another format or version, unknown filters, missing or extra entries,
wrong shapes, and values that are not finite or not positive where the filter needs them so.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from common.images import save_text
from piea_jax.params import FILTER_ORDER, PHYSICAL_SHAPES
from piea_jax.strategy import describe

PRESET_FORMAT = "piea-preset"
PRESET_VERSION = 1

# Parameters that must be > 0 (a gamma, gains and slopes; the others may take any sign).
_POSITIVE = ("gamma", "white_balance", "tone_curve", "color_curve")


class PresetError(ValueError):
    """A preset that cannot be used; `str()` reads "<where>: <reason>"."""


@dataclasses.dataclass(frozen=True)
class Preset:
    """A strategy to apply: physical parameters per filter of `order`, and their origin."""

    filters: dict[str, np.ndarray]
    order: tuple[str, ...] = FILTER_ORDER
    guider: str = ""
    source: str = ""

    def to_json(self) -> dict:
        """The preset as a JSON-able dict (full float32 precision)."""
        return {
            "format": PRESET_FORMAT,
            "version": PRESET_VERSION,
            "order": list(self.order),
            "filters": {name: np.asarray(self.filters[name]).tolist() for name in self.order},
            "guider": self.guider,
            "source": self.source,
            "strategy": describe(self.filters),
        }


def make_preset(
    physical: Mapping[str, object],
    *,
    order: Sequence[str] = FILTER_ORDER,
    guider: str = "",
    source: str = "",
) -> Preset:
    """A checked `Preset` from ONE image's physical parameters (unbatched arrays)."""
    data = {
        "format": PRESET_FORMAT,
        "version": PRESET_VERSION,
        "order": list(order),
        "filters": {
            name: np.asarray(physical[name]).tolist() for name in order if name in physical
        },
        "guider": guider,
        "source": source,
    }
    return preset_from_json(data, where="preset")


def preset_from_json(data: object, *, where: str = "preset") -> Preset:
    """Checks a decoded preset document and returns the `Preset` (see the module docstring).

    Raises:
      PresetError: the document is not a usable preset of this version; the message starts
        with `where`.
    """

    def refuse(reason: str):
        raise PresetError(f"{where}: {reason}")

    if not isinstance(data, dict) or data.get("format") != PRESET_FORMAT:
        refuse(f'not a PIEA preset (no "format": "{PRESET_FORMAT}")')
    if data.get("version") != PRESET_VERSION:
        refuse(
            f"preset version {data.get('version')!r}; this version of piea_jax reads version "
            f"{PRESET_VERSION} only"
        )
    order = data.get("order")
    filters = data.get("filters")
    if not isinstance(order, list) or not all(isinstance(name, str) for name in order):
        refuse('"order" must be a list of filter names')
    if not isinstance(filters, dict):
        refuse('"filters" must map filter names to their parameters')
    unknown = sorted({*order, *filters} - set(FILTER_ORDER))
    if unknown:
        refuse(f"unknown filter(s) {unknown}; known: {list(FILTER_ORDER)}")
    if len(set(order)) != len(order):
        refuse(f'"order" names a filter twice: {order}')
    if set(order) != set(filters):
        refuse(f'"order" {order} and "filters" {sorted(filters)} name different filters')
    physical = {}
    for name in order:
        try:
            value = np.asarray(filters[name], dtype=np.float32)
        except (TypeError, ValueError):
            refuse(f"{name}: parameters are not numbers: {filters[name]!r}")
        if value.shape != PHYSICAL_SHAPES[name]:
            refuse(f"{name}: expected shape {PHYSICAL_SHAPES[name]}, got {value.shape}")
        if not np.all(np.isfinite(value)):
            refuse(f"{name}: parameters must be finite, got {value.tolist()}")
        if name in _POSITIVE and not np.all(value > 0):
            refuse(f"{name}: parameters must be > 0, got {value.tolist()}")
        physical[name] = value
    return Preset(
        filters=physical,
        order=tuple(order),
        guider=str(data.get("guider", "")),
        source=str(data.get("source", "")),
    )


def load_preset(path: str | os.PathLike) -> Preset:
    """Reads and checks a preset file. Raises `PresetError` naming the file and the reason."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise PresetError(f"{path}: preset file not found") from None
    except IsADirectoryError:
        raise PresetError(f"{path}: is a directory, not a preset file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PresetError(f"{path}: not a readable JSON preset ({e})") from None
    return preset_from_json(data, where=str(path))


def save_preset(path: str | os.PathLike, preset: Preset, *, overwrite: bool = False) -> Path:
    """Writes a preset file atomically; refuses to replace an existing file unless asked."""
    text = json.dumps(preset.to_json(), indent=1, ensure_ascii=False) + "\n"
    return save_text(path, text, overwrite=overwrite)
