"""A tiny generated AVA: AVA.txt (with bad lines) and 40 small JPEGs, some of them broken."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

NUM_IMAGES = 40
# Broken image files: id -> what is wrong with them.
BROKEN = {"1003": "empty", "1007": "truncated", "1011": "not an image"}
MISSING = "1015"  # listed in AVA.txt, no file
ZERO_VOTES_LINE = 42  # AVA.txt line numbers of the two bad lines (after the 40 good ones)
MALFORMED_LINE = 43


def image_ids() -> list[str]:
    return [str(1000 + i) for i in range(NUM_IMAGES)]


def votes(i: int) -> np.ndarray:
    """Vote counts for image i: a bump whose centre grows with i (mean scores ~3..8)."""
    centre = 3 + 5 * i / (NUM_IMAGES - 1)
    scores = np.arange(1, 11)
    return np.round(40 * np.exp(-0.5 * (scores - centre) ** 2)).astype(int)


def _jpeg(seed: int, size: int = 48) -> bytes:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:size, : size + 8] / size
    base = np.stack([x, y, 1 - x * y], -1) * rng.uniform(0.3, 1.0, 3)
    pixels = (np.clip(base + rng.normal(0, 0.05, base.shape), 0, 1) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def make_ava(root: Path, *, lists: bool = False) -> Path:
    """`root/AVA.txt` + `root/images/<id>.jpg`; with `lists`, train_ids.txt / test_ids.txt."""
    images = root / "images"
    images.mkdir(parents=True)
    lines = []
    for i, image_id in enumerate(image_ids()):
        counts = " ".join(str(c) for c in votes(i))
        lines.append(f"{i + 1} {image_id} {counts} 1 2 {100 + i % 3}")
        if image_id == MISSING:
            continue
        data = _jpeg(i)
        kind = BROKEN.get(image_id)
        if kind == "empty":
            data = b""
        elif kind == "truncated":
            data = data[: len(data) // 2]
        elif kind == "not an image":
            data = b"this is a text file, not a JPEG\n" * 8
        (images / f"{image_id}.jpg").write_bytes(data)
    lines.append("")  # a blank line: ignored, not reported
    lines.append(f"41 2000 {' '.join(['0'] * 10)} 0 0 7")  # zero votes
    lines.append("42 2001 3 4 five 6")  # malformed
    (root / "AVA.txt").write_text("\n".join(lines) + "\n")
    if lists:
        ids = image_ids()
        (root / "train_ids.txt").write_text("\n".join(ids[:30]) + "\n")
        (root / "test_ids.txt").write_text("\n".join(f"{i}.jpg" for i in ids[30:]) + "\n")
    return root
