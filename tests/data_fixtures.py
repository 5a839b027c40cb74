"""Tiny generated FiveK-like trees (real file naming, 64-px images) for the data tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

# One id in each range of the default split, two in the training ones.
TREE_IDS = (1, 2, 2251, 2252, 4501, 4901)
SHAPE = (64, 96)


def image(seed: int, shape=SHAPE) -> np.ndarray:
    """A smooth colour image with some noise (compresses like a photo, differs per seed)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[: shape[0], : shape[1]] / max(shape)
    base = np.stack([x, y, 1 - x * y], -1) * rng.uniform(0.3, 1.0, 3)
    noisy = base + rng.normal(0, 0.05, (*shape, 3))
    return (np.clip(noisy, 0, 1) * 255).astype(np.uint8)


def save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def export_tree(root: Path, suffix: str = ".png", ids=TREE_IDS, sizes=None) -> Path:
    """Layout 1: original/ and expertC/ with aNNNN-NAME<suffix> files. Expert = input + 40."""
    for i in ids:
        shape = (sizes or {}).get(i, SHAPE)
        raw = image(i, shape)
        name = f"a{i:04d}-IMG_{i}{suffix}"
        save(root / "original" / name, raw)
        save(root / "expertC" / name, np.minimum(raw.astype(int) + 40, 255).astype(np.uint8))
    return root


def presplit_tree(root: Path) -> Path:
    """Layout 2 (UEGAN): train/{exp,raw}, val/{label,raw}, test/{label,raw}."""
    folders = {
        ("train", "exp"): (1, 2),
        ("train", "raw"): (2251, 2252),
        ("val", "raw"): (4901,),
        ("val", "label"): (4901,),
        ("test", "raw"): (4501, 4502),
        ("test", "label"): (4501, 4502),
    }
    for (split, kind), ids in folders.items():
        for i in ids:
            save(root / split / kind / f"a{i:04d}-DSC_{i}.png", image(i + 7 * (kind != "raw")))
    return root


def exposure_tree(root: Path) -> Path:
    """Layout 3 (EXPOSURE/PIEA): JPEGs named NNNN.jpg and FiveK_test.txt (1-based ids)."""
    for i in TREE_IDS:
        save(root / "input" / f"{i:04d}.jpg", image(i))
        save(root / "FiveK_C" / f"{i:04d}.jpg", image(i + 7))
    (root / "FiveK_test.txt").write_text("# 1-based\n4501\n2\n")
    return root
