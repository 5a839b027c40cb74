"""Presets: the JSON schema, refusals, and rendering a preset over images of other sizes."""

import json

import jax
import numpy as np
import pytest

from piea_jax import FILTER_ORDER, initial_raw_params, to_physical
from piea_jax.enhance import render
from piea_jax.presets import (
    PRESET_VERSION,
    Preset,
    PresetError,
    load_preset,
    make_preset,
    save_preset,
)
from piea_jax.rendering import render_images


def _physical():
    raw = jax.tree.map(lambda r: r - 0.2, initial_raw_params())
    raw["tone_curve"] = raw["tone_curve"] + np.linspace(-0.5, 0.5, 8)
    return {k: np.asarray(v) for k, v in to_physical(raw).items()}


@pytest.fixture
def preset_file(tmp_path):
    preset = make_preset(_physical(), guider="photo_critic (test)", source="photo.tif")
    return save_preset(tmp_path / "p.json", preset)


def test_round_trip_keeps_every_value_exactly(preset_file):
    preset = load_preset(preset_file)
    assert isinstance(preset, Preset)
    assert preset.order == FILTER_ORDER
    assert preset.guider == "photo_critic (test)" and preset.source == "photo.tif"
    for name, value in _physical().items():
        np.testing.assert_array_equal(preset.filters[name], value.astype(np.float32))
    data = json.loads(preset_file.read_text())
    assert data["format"] == "piea-preset" and data["version"] == PRESET_VERSION
    assert data["strategy"].startswith("Exposure")


def test_save_refuses_to_overwrite(preset_file):
    before = preset_file.read_text()
    with pytest.raises(FileExistsError):
        save_preset(preset_file, load_preset(preset_file))
    assert preset_file.read_text() == before


def test_applied_to_images_of_other_sizes_equals_rendering_with_its_parameters(preset_file):
    preset = load_preset(preset_file)
    rng = np.random.default_rng(1)
    images = [rng.uniform(0, 1, (*s, 3)).astype(np.float32) for s in [(30, 50), (71, 13)]]
    out = render_images(images, preset.filters, order=preset.order, chunk_pixels=512)
    for x, y in zip(images, out, strict=True):
        expected = jax.jit(render)(x, _physical())
        np.testing.assert_allclose(y, expected, atol=1e-6, rtol=0)


def _edited(preset_file, **changes):
    data = json.loads(preset_file.read_text())
    for key, value in changes.items():
        if key.startswith("filters."):
            name = key.split(".", 1)[1]
            if value is None:
                del data["filters"][name]
            else:
                data["filters"][name] = value
        else:
            data[key] = value
    preset_file.write_text(json.dumps(data))
    return preset_file


@pytest.mark.parametrize(
    "changes, reason",
    [
        ({"version": 2}, "version 2"),
        ({"format": "something-else"}, "not a PIEA preset"),
        ({"filters.vignette": 0.3}, "unknown filter"),
        ({"order": ["exposure", "vignette"]}, "unknown filter"),
        ({"filters.gamma": None}, "different filters"),
        ({"filters.tone_curve": [1.0, 2.0]}, "expected shape (8,)"),
        ({"filters.exposure": "bright"}, "not numbers"),
        ({"filters.contrast": float("nan")}, "finite"),
        ({"filters.gamma": -1.0}, "> 0"),
        ({"order": list(FILTER_ORDER) + ["exposure"]}, "twice"),
    ],
)
def test_a_bad_preset_is_refused_with_the_file_and_the_reason(preset_file, changes, reason):
    _edited(preset_file, **changes)
    with pytest.raises(PresetError, match="p.json") as info:
        load_preset(preset_file)
    assert reason in str(info.value)


@pytest.mark.parametrize("content", [None, "", "{not json", "[1, 2]"])
def test_missing_or_unreadable_preset_files(tmp_path, content):
    path = tmp_path / "p.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(PresetError, match="p.json"):
        load_preset(path)


def test_a_subset_order_is_kept(tmp_path):
    physical = _physical()
    order = ("contrast", "exposure")
    preset = make_preset({k: physical[k] for k in order}, order=order)
    loaded = load_preset(save_preset(tmp_path / "p.json", preset))
    assert loaded.order == order and set(loaded.filters) == set(order)
