"""common.color: the colour helpers shared by filters and metrics, and the layout rule."""

import ast
import colorsys
from pathlib import Path

import numpy as np

from common import color, metrics
from piea_jax import filters

ROOT = Path(__file__).resolve().parents[1]


def test_public_names_are_the_same_functions():
    assert filters.luminance is color.luminance
    assert filters.LUMINANCE_WEIGHTS == color.LUMINANCE_WEIGHTS == (0.27, 0.67, 0.06)
    assert metrics.hls_saturation is color.hls_saturation


def test_hls_saturation_matches_colorsys():
    rgb = np.random.default_rng(0).uniform(0, 1, (50, 3)).astype(np.float32)
    rgb[:3] = [[0, 0, 0], [1, 1, 1], [0.3, 0.3, 0.3]]  # greys: 0
    expected = [colorsys.rgb_to_hls(*px)[2] for px in rgb.astype(np.float64)]
    np.testing.assert_allclose(color.hls_saturation(rgb), expected, atol=1e-6)


def test_common_imports_nothing_from_the_algorithm_packages():
    for path in sorted((ROOT / "common").glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                assert top not in ("piea_jax", "qagan_jax", "experiments"), f"{path.name}: {name}"
