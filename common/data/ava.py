"""AVA (Aesthetic Visual Analysis, Murray et al. 2012) for NIMA: votes, splits, images, grain.

The user's AVA directory (`--ava-dir`) holds

    AVA.txt                 (or AVA_dataset/AVA.txt) one image per line, whitespace-separated:
                            index, image id, ten vote counts for the scores 1..10, two semantic
                            tag ids, challenge id
    images/                 (or the images directly beside AVA.txt) <id>.jpg; other common
                            image suffixes (common.images.IMAGE_SUFFIXES) are accepted too
    aesthetics_image_lists/generic_ls_train.jpgl and .../generic_test.jpgl   (optional) the
                            usual large-scale train / test id lists shipped with AVA; or
    train_ids.txt, test_ids.txt   (optional) lists of your own; one id per line either way

Splits (`split_ava`): the given (or found) train/test lists, else a seeded random split
(`test_fraction`); `val` is a seeded random share of train (`val_fraction`), for monitoring.
The split is made on the ids of AVA.txt and only then are unusable images dropped from it, so
fixing or losing a file changes no other image's split.

Votes become a float32 distribution over the ten scores (counts / total). Lines with no votes
and malformed lines are reported with their line number and skipped. Images that are missing,
empty, not images, or truncated are found by a cheap check up front (`check_image`: Pillow's
`verify`, plus the JPEG end-of-image marker, which `verify` does not look for) and skipped; an
image that still fails when decoded (`AvaSource`) is logged and replaced by the next image of
the split, so a data worker never crashes and batches keep their shape.

Geometry (NIMA paper, section III): every image is resized to `resize` x `resize` (256, the
aspect ratio is not kept) when read; training takes a random `crop` x `crop` (224) crop and a
random horizontal flip; evaluation takes the centre crop [choice: the paper does not say how
it evaluates; the centre crop of the same 256 resize matches the training scale]. Pixels are
floats in [0, 1]; the model does its own normalisation.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import grain
import numpy as np
from PIL import Image, UnidentifiedImageError

from common.data import pipeline, records
from common.images import IMAGE_SUFFIXES, ImageLoadError

logger = logging.getLogger(__name__)

NUM_SCORES = 10
# Where the AVA annotations may be, relative to --ava-dir, in the order they are looked for.
AVA_TXT_CANDIDATES = ("AVA.txt", "AVA_dataset/AVA.txt")
# Train/test id lists looked for beside AVA.txt when none are given: (train, test) pairs.
SPLIT_LIST_CANDIDATES = (
    ("aesthetics_image_lists/generic_ls_train.jpgl", "aesthetics_image_lists/generic_test.jpgl"),
    ("train_ids.txt", "test_ids.txt"),
)
# A JPEG ends with the end-of-image marker; it is looked for in this many trailing bytes (some
# writers append padding after it).
_JPEG_TAIL = 4096


class AvaError(ValueError):
    """An AVA directory or list file that cannot be used; the message names what is missing."""


@dataclasses.dataclass(frozen=True)
class AvaLabels:
    """What AVA.txt says: image ids in file order and their vote distributions.

    Attributes:
      path: the AVA.txt read.
      ids: image ids (strings), in file order, each once.
      dists: {id: float32 (10,) vote distribution summing to 1}.
      votes: {id: total number of votes}.
      skipped: (line number, reason) for every line left out.
    """

    path: Path
    ids: list[str]
    dists: dict[str, np.ndarray]
    votes: dict[str, int]
    skipped: list[tuple[int, str]]


def read_ava_txt(path: str | os.PathLike) -> AvaLabels:
    """Parses AVA.txt (module docstring); malformed and zero-vote lines are logged and skipped.

    A line is malformed when it does not have 15 fields, a vote count is not a non-negative
    integer, or its id repeats an earlier line's. Blank lines are ignored.

    Raises:
      AvaError: the file cannot be read or no line is usable.
    """
    path = Path(path)
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError as e:
        raise AvaError(f"{path}: cannot read AVA.txt ({e})") from None
    ids, dists, votes, skipped = [], {}, {}, []
    for number, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        reason = None
        if len(fields) != 3 + NUM_SCORES + 2:
            reason = (
                f"expected 15 fields (index, id, 10 vote counts, 2 tags, challenge), got "
                f"{len(fields)}"
            )
        else:
            image_id = fields[1]
            try:
                counts = np.array([int(v) for v in fields[2 : 2 + NUM_SCORES]], np.int64)
            except ValueError:
                counts = None
            if counts is None or (counts < 0).any():
                reason = "vote counts are not non-negative integers"
            elif counts.sum() == 0:
                reason = f"image {image_id} has no votes"
            elif image_id in dists:
                reason = f"image {image_id} is listed again"
        if reason is not None:
            skipped.append((number, reason))
            continue
        ids.append(image_id)
        dists[image_id] = (counts / counts.sum()).astype(np.float32)
        votes[image_id] = int(counts.sum())
    for number, reason in skipped[:20]:
        logger.warning("%s:%d skipped: %s", path, number, reason)
    if len(skipped) > 20:
        logger.warning("%s: %d more lines skipped", path, len(skipped) - 20)
    if not ids:
        raise AvaError(f"{path}: no usable line ({len(skipped)} skipped, {len(lines)} lines)")
    return AvaLabels(path, ids, dists, votes, skipped)


def read_id_list(path: str | os.PathLike) -> list[str]:
    """Image ids of a list file: one per line (a file suffix such as ".jpg" is dropped; blank
    lines and lines starting with '#' are ignored)."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise AvaError(f"{path}: cannot read the id list ({e})") from None
    ids = []
    for line in lines:
        line = line.strip()
        if line and not line.startswith("#"):
            token = line.split()[0]
            stem, suffix = os.path.splitext(token)
            ids.append(stem if suffix.lower() in IMAGE_SUFFIXES else token)
    return ids


def _seeded_permutation(ids: list[str], seed: int, salt: int) -> list[str]:
    """`ids` sorted, then shuffled by (seed, salt): independent of the file order."""
    ordered = sorted(ids)
    rng = np.random.default_rng([seed, salt])
    return [ordered[i] for i in rng.permutation(len(ordered))]


def _fraction_count(n: int, fraction: float) -> int:
    """round(n * fraction), at least 1 when fraction > 0 and n > 1, at most n - 1."""
    if fraction <= 0 or n < 2:
        return 0
    return min(n - 1, max(1, round(n * fraction)))


def split_ava(
    ids: list[str],
    *,
    train_ids: list[str] | None = None,
    test_ids: list[str] | None = None,
    test_fraction: float = 0.1,
    val_fraction: float = 0.02,
    seed: int = 0,
) -> dict[str, list[str]]:
    """{"train", "val", "test"}: lists of ids (each sorted), a partition of what is used.

    With `train_ids` and `test_ids`, those (restricted to `ids`; an id in both is refused);
    else a seeded random split of `ids` with round(len * test_fraction) test ids. `val` is then
    round(len(train) * val_fraction) ids drawn from train (seeded). The same arguments give the
    same split, whatever the order of `ids`.

    Raises:
      AvaError: only one of the two lists, or lists that overlap.
    """
    if (train_ids is None) != (test_ids is None):
        raise AvaError("give both a train and a test id list, or neither")
    known = set(ids)
    if train_ids is not None:
        overlap = set(train_ids) & set(test_ids)
        if overlap:
            raise AvaError(f"{len(overlap)} ids are in both lists, e.g. {sorted(overlap)[:3]}")
        train = sorted(set(train_ids) & known)
        test = sorted(set(test_ids) & known)
    else:
        shuffled = _seeded_permutation(list(known), seed, 0)
        n_test = _fraction_count(len(shuffled), test_fraction)
        test, train = sorted(shuffled[:n_test]), sorted(shuffled[n_test:])
    shuffled_train = _seeded_permutation(train, seed, 1)
    n_val = _fraction_count(len(shuffled_train), val_fraction)
    val = set(shuffled_train[:n_val])
    return {"train": [i for i in train if i not in val], "val": sorted(val), "test": test}


def find_ava_txt(ava_dir: str | os.PathLike) -> Path:
    """The AVA.txt of an AVA directory (AVA_TXT_CANDIDATES); AvaError naming what is missing."""
    ava_dir = Path(ava_dir).expanduser()
    if not ava_dir.is_dir():
        raise AvaError(f"--ava-dir {ava_dir}: no such directory")
    for name in AVA_TXT_CANDIDATES:
        if (ava_dir / name).is_file():
            return ava_dir / name
    raise AvaError(
        f"--ava-dir {ava_dir}: no AVA.txt (looked for {', '.join(AVA_TXT_CANDIDATES)}); AVA's "
        "annotation file has one image per line: index, id, 10 vote counts, 2 tags, challenge"
    )


def index_images(ava_dir: Path, ava_txt: Path) -> tuple[Path, dict[str, Path]]:
    """(image folder, {id: file}) — `images/` beside AVA.txt or in --ava-dir, else the folder of
    AVA.txt itself; files are matched by stem with any of IMAGE_SUFFIXES (".jpg" preferred)."""
    candidates = [ava_dir / "images", ava_txt.parent / "images", ava_txt.parent, ava_dir]
    folder = next((c for c in candidates if c.is_dir() and _has_images(c)), None)
    if folder is None:
        raise AvaError(
            f"--ava-dir {ava_dir}: no image files (looked in {', '.join(map(str, candidates[:3]))}"
            f" for <id>.jpg)"
        )
    files: dict[str, Path] = {}
    with os.scandir(folder) as entries:  # one directory listing, not 255k stat calls
        for entry in entries:
            stem, suffix = os.path.splitext(entry.name)
            if suffix.lower() in IMAGE_SUFFIXES and not entry.name.startswith("."):
                if stem not in files or suffix.lower() == ".jpg":
                    files[stem] = Path(entry.path)
    return folder, files


def _has_images(folder: Path) -> bool:
    with os.scandir(folder) as entries:
        return any(os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES for e in entries)


def check_image(path: Path) -> str | None:
    """Why the image file is unusable, or None: a cheap check without decoding the pixels.

    Missing or empty file, not recognised by Pillow, Pillow's `verify` failing (PNG chunk
    CRCs, structure), or a JPEG without its end-of-image marker (cut short).
    """
    try:
        size = path.stat().st_size
    except OSError:
        return "file not found"
    if size == 0:
        return "empty file (0 bytes)"
    try:
        with Image.open(path) as img:
            image_format = img.format
            img.verify()
    except UnidentifiedImageError:
        return "not an image file, or a format Pillow cannot read"
    except Exception as e:  # Pillow's plugins raise many types on corrupt data.
        return f"cannot read: {e or type(e).__name__}"
    if image_format == "JPEG":
        with open(path, "rb") as f:
            f.seek(max(0, size - _JPEG_TAIL))
            if b"\xff\xd9" not in f.read():
                return "truncated JPEG (no end-of-image marker)"
    return None


def decode_image(path: Path, size: int) -> np.ndarray:
    """uint8 (size, size, 3): the file decoded to RGB (grey, palette, CMYK converted by Pillow)
    and resized to a square (bilinear, antialiased; the aspect ratio is not kept, as NIMA).

    Large JPEGs are decoded at a reduced DCT scale that stays at least `size` (Pillow's
    `draft`), which is several times faster and, before an antialiased downscale, loses
    nothing visible.

    Raises:
      ImageLoadError: naming the file and the reason.
    """
    try:
        with Image.open(path) as img:
            if img.format == "JPEG":
                img.draft("RGB", (size, size))
            img.load()  # decodes everything: a truncated file raises here
            rgb = img.convert("RGB")
    except FileNotFoundError:
        raise ImageLoadError(path, "file not found") from None
    except UnidentifiedImageError:
        raise ImageLoadError(path, "not an image file, or a format Pillow cannot read") from None
    except Exception as e:  # Pillow's plugins raise many types on corrupt data.
        raise ImageLoadError(path, f"cannot decode: {e or type(e).__name__}") from None
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(rgb, np.uint8)


class AvaSource:
    """One AVA split as a random-access source reading from disk (grain can use it).

    `source[i]` is `{"id": str, "image": uint8 (resize, resize, 3), "dist": float32 (10,)}`.
    An image that cannot be decoded is logged with the reason, remembered in `.failures`, and
    the next image of the split is returned in its place (so a worker never dies and a batch
    keeps its shape); the up-front `check_image` makes this rare. Picklable.
    """

    def __init__(self, ids: list[str], files: dict[str, Path], dists: dict, *, resize: int):
        self.ids = list(ids)
        self._files = [str(files[i]) for i in self.ids]
        self._dists = np.stack([dists[i] for i in self.ids]) if self.ids else np.zeros((0, 10))
        self.resize = resize
        self.failures: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict:
        n = len(self.ids)
        for attempt in range(min(n, 16)):
            i = (int(index) + attempt) % n
            try:
                image = decode_image(Path(self._files[i]), self.resize)
            except ImageLoadError as e:
                if self.ids[i] not in self.failures:
                    logger.warning("AVA image skipped at decode time: %s", e)
                    self.failures[self.ids[i]] = e.reason
                continue
            return {"id": self.ids[i], "image": image, "dist": self._dists[i]}
        raise ImageLoadError(self._files[int(index) % n], "this and the next images all fail")

    def __repr__(self) -> str:
        return f"AvaSource({len(self)} images at {self.resize}x{self.resize})"


@dataclasses.dataclass(frozen=True)
class AvaData:
    """The AVA data of one run.

    Attributes:
      train, val, test: `AvaSource`s.
      description: one line for reports (directory, split kind, sizes).
      split: JSON-serialisable record (directory, AVA.txt, split kind and lists, seed, the ids
        of every split) — the trainer's `split.json`.
      skipped: {"lines": [{"line", "reason"}], "images": [{"id", "file", "reason"}]} — written
        into the work directory.
    """

    train: AvaSource
    val: AvaSource
    test: AvaSource
    description: str
    split: dict
    skipped: dict


def _find_split_lists(root: Path) -> tuple[Path, Path] | None:
    for train, test in SPLIT_LIST_CANDIDATES:
        if (root / train).is_file() and (root / test).is_file():
            return root / train, root / test
    return None


def open_ava(
    ava_dir: str | os.PathLike,
    *,
    train_list: str | os.PathLike | None = None,
    test_list: str | os.PathLike | None = None,
    test_fraction: float = 0.1,
    val_fraction: float = 0.02,
    seed: int = 0,
    resize: int = 256,
    workers: int | None = None,
) -> AvaData:
    """Reads AVA.txt, splits, checks every image of the split cheaply, returns the sources.

    Args:
      ava_dir: the AVA directory (module docstring).
      train_list, test_list: id list files (both or neither); None: look for
        SPLIT_LIST_CANDIDATES beside AVA.txt and in `ava_dir`, else a seeded random split.
      test_fraction, val_fraction: of the random split, and of train for val.
      seed: the split seed.
      resize: square side images are resized to when read.
      workers: threads for the up-front image check (default: CPU count, at most 8).

    Raises:
      AvaError: no AVA.txt, no images, no usable line, a bad list, or an empty split.
    """
    ava_dir = Path(ava_dir).expanduser()
    ava_txt = find_ava_txt(ava_dir)
    labels = read_ava_txt(ava_txt)
    folder, files = index_images(ava_dir, ava_txt)
    if (train_list is None) != (test_list is None):
        raise AvaError("give both --train-list and --test-list, or neither")
    lists = (Path(train_list), Path(test_list)) if train_list is not None else None
    lists = lists or _find_split_lists(ava_txt.parent) or _find_split_lists(ava_dir)
    if lists is not None:
        split = split_ava(
            labels.ids,
            train_ids=read_id_list(lists[0]),
            test_ids=read_id_list(lists[1]),
            val_fraction=val_fraction,
            seed=seed,
        )
        kind = f"lists {lists[0].name} / {lists[1].name}"
    else:
        split = split_ava(
            labels.ids, test_fraction=test_fraction, val_fraction=val_fraction, seed=seed
        )
        kind = f"random split (seed {seed}, test fraction {test_fraction})"
    wanted = [i for name in ("train", "val", "test") for i in split[name]]
    problems = {i: "file not found" for i in wanted if i not in files}
    present = [i for i in wanted if i in files]
    reasons = records.ordered_map(lambda i: check_image(files[i]), present, workers)
    problems.update({i: r for i, r in zip(present, reasons, strict=True) if r is not None})
    for image_id, reason in list(problems.items())[:20]:
        logger.warning("AVA image %s skipped: %s", image_id, reason)
    kept = {name: [i for i in ids if i not in problems] for name, ids in split.items()}
    for name in ("train", "test"):
        if not kept[name]:
            raise AvaError(f"--ava-dir {ava_dir}: no usable {name} image ({len(problems)} skipped)")
    sources = {n: AvaSource(ids, files, labels.dists, resize=resize) for n, ids in kept.items()}
    sizes = "/".join(str(len(kept[n])) for n in ("train", "val", "test"))
    description = (
        f"AVA at {ava_dir}, {kind}, {sizes} (train/val/test); {len(problems)} unusable images "
        f"and {len(labels.skipped)} AVA.txt lines skipped"
    )
    split_record = {
        "dataset": "ava",
        "ava_dir": str(ava_dir),
        "ava_txt": str(ava_txt),
        "images": str(folder),
        "split": kind,
        "lists": [str(p) for p in lists] if lists else None,
        "seed": seed,
        "ids": kept,
    }
    skipped = {
        "lines": [{"line": n, "reason": r} for n, r in labels.skipped],
        "images": [
            {"id": i, "file": str(files.get(i, folder / f"{i}.jpg")), "reason": r}
            for i, r in sorted(problems.items())
        ],
    }
    logger.info("%s", description)
    return AvaData(**sources, description=description, split=split_record, skipped=skipped)


# --- grain --------------------------------------------------------------------------------------


def random_crop_flip(image: np.ndarray, rng: np.random.Generator, crop: int) -> np.ndarray:
    """NIMA's training augmentation of one uint8 (S, S, 3) image: a random crop x crop window
    and a horizontal flip with probability 1/2 -> float32 (crop, crop, 3) in [0, 1]. Draws top,
    left, then the flip."""
    height, width = image.shape[:2]
    top = rng.integers(0, height - crop + 1)
    left = rng.integers(0, width - crop + 1)
    window = image[top : top + crop, left : left + crop]
    if rng.random() < 0.5:
        window = window[:, ::-1]
    return window.astype(np.float32) / 255.0


def center_crop_unit(image: np.ndarray, crop: int) -> np.ndarray:
    """The evaluation view: the centre crop x crop of uint8 (S, S, 3), float32 in [0, 1]."""
    return records.center_crop(image, crop).astype(np.float32) / 255.0


class _Augment(grain.transforms.RandomMap):
    def __init__(self, crop: int):
        self.crop = crop

    def random_map(self, record: dict, rng: np.random.Generator) -> dict:
        return {"image": random_crop_flip(record["image"], rng, self.crop), "dist": record["dist"]}


def train_iterator(
    source,
    *,
    global_batch_size: int,
    crop: int = 224,
    seed: int = 0,
    process_index: int | None = None,
    process_count: int | None = None,
    worker_count: int = 0,
    in_memory: bool | None = None,
    read_threads: int = 2,
    prefetch_batches: int = 4,
) -> grain.DatasetIterator:
    """NIMA's endless training batches: `{"image": float32 (b, crop, crop, 3) in [0, 1],
    "dist": float32 (b, 10)}`, b = global_batch_size / process_count.

    The same global stream as QAGAN's (`common.data.pipeline`): a seeded shuffle per epoch,
    per-example random crops and flips from the example's position, each process preparing its
    rows of every global batch; `get_state`/`set_state` (and grain's Orbax handler) resume it
    exactly. `in_memory` None holds the decoded split in memory when there are no worker
    processes and it fits (`pipeline.hold_in_memory`: AVA's 230k training images at 256 x 256
    are ~45 GB, so a full run reads from disk; a small set is decoded once).
    """
    process_index, process_count = pipeline.process_shard(process_index, process_count)
    rows = pipeline.local_rows(global_batch_size, process_count)
    if len(source) == 0:
        raise ValueError("no training images")
    hold = worker_count == 0 if in_memory is None else in_memory
    dataset = grain.MapDataset.source(source)
    if hold:
        dataset = grain.MapDataset.source(pipeline.hold_in_memory(dataset, force=in_memory is True))
    batches = pipeline.global_stream(
        dataset,
        _Augment(crop),
        rows=rows,
        seeds=pipeline.stream_seeds(seed, 0),
        process_index=process_index,
        process_count=process_count,
    )
    return pipeline.to_iterator(
        batches,
        read_threads=read_threads,
        prefetch_batches=prefetch_batches,
        worker_count=worker_count,
    )


def eval_batches(
    source,
    *,
    global_batch_size: int,
    crop: int = 224,
    process_index: int | None = None,
    process_count: int | None = None,
    workers: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """The split once, in order, as this process's rows of global batches:
    `{"image": float32 (b, crop, crop, 3), "dist": (b, 10), "valid": bool (b,)}`; the last
    global batch is padded (with the first image, `valid` False) to keep one shape."""
    process_index, process_count = pipeline.process_shard(process_index, process_count)
    rows = pipeline.local_rows(global_batch_size, process_count)
    n = len(source)
    for start in range(0, n, global_batch_size):
        first = start + process_index * rows
        indices = list(range(first, first + rows))
        loaded = list(records.ordered_map(lambda i: source[i if i < n else 0], indices, workers))
        yield {
            "image": np.stack([center_crop_unit(r["image"], crop) for r in loaded]),
            "dist": np.stack([r["dist"] for r in loaded]).astype(np.float32),
            "valid": np.array([i < n for i in indices]),
        }
