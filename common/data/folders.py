"""A user's folder of photos as one unpaired domain (e.g. Flickr photos, or phone photos).

Files are decoded once, when the source is made, through `common.images.load_image` (its
conversions: grey, palette, 16-bit, alpha, EXIF rotation; its errors name the file and the
reason), brought to the FiveK training scale (short side 512, Lanczos, only when larger) and
kept in host memory as uint8. Files that cannot be read are reported and left out.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from common.data import records
from common.data.pipeline import InMemorySource
from common.images import ImageLoadError, list_images, load_image, to_uint8

logger = logging.getLogger(__name__)


class FolderSource(InMemorySource):
    """Decoded images of a folder: `len`, `[i]` -> `{"id", "image"}` (see `folder_source`).

    Attributes:
      folder: the folder.
      skipped: (file, reason) for every file left out.
    """

    def __init__(self, folder: Path, records_: list[dict], skipped: list[tuple[str, str]]):
        super().__init__(records_)
        self.folder = folder
        self.skipped = skipped

    def __repr__(self) -> str:
        return (
            f"FolderSource({str(self.folder)!r}, {len(self)} images, "
            f"{len(self.skipped)} skipped, {self.nbytes / 2**20:.0f} MiB)"
        )


def _ids(files: list[Path], folder: Path) -> list[str]:
    """Relative paths without suffix; files differing only in suffix keep theirs."""
    stems = [f.relative_to(folder).with_suffix("").as_posix() for f in files]
    counts = {s: stems.count(s) for s in stems}
    return [
        stem if counts[stem] == 1 else f.relative_to(folder).as_posix()
        for stem, f in zip(stems, files, strict=True)
    ]


def folder_source(
    folder: str | os.PathLike,
    *,
    recursive: bool = True,
    short_side: int | None = records.TRAIN_SHORT_SIDE,
    workers: int | None = None,
) -> FolderSource:
    """A folder of images as one domain: a random-access source of records held in memory.

    Args:
      folder: the folder; image files are found by suffix (`common.images.IMAGE_SUFFIXES`),
        hidden files and folders skipped.
      recursive: include subfolders.
      short_side: downscale images whose short side is larger to this (Lanczos), as FiveK's
        training images are; None keeps the files' sizes (memory grows with them).
      workers: decoding threads (default: CPU count, at most 8).

    Returns:
      A `FolderSource` of `{"id": relative path without suffix (with it, when two files
      differ only in suffix), "image": uint8 (H, W, 3)}`, sorted by path; `.skipped` lists
      the files that could not be read, each also logged as a warning with the reason.

    Raises:
      FileNotFoundError: not a folder, or no image files in it.
      ValueError: no readable image in it.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder")
    files = list_images([folder], recursive=recursive)

    def load(path: Path):
        image = to_uint8(load_image(path))
        return records.resize_short_side(image, short_side) if short_side else image

    kept, skipped = [], []
    results = records.ordered_map(load, files, workers)
    for image_id, path, result in zip(_ids(files, folder), files, results, strict=True):
        if isinstance(result, ImageLoadError):
            logger.warning("skipped %s", result)
            skipped.append((str(path), result.reason))
        else:
            kept.append({"id": image_id, "image": result})
    if not kept:
        raise ValueError(f"{folder}: none of its {len(files)} image files could be read")
    logger.info("%s: %d images (%d skipped as unreadable)", folder, len(kept), len(skipped))
    return FolderSource(folder, kept, skipped)
