"""MIT-Adobe FiveK: the three layouts users have, the unpaired split, and a TFDS builder.

FiveK is a manual download (as ImageNet is for TFDS): the user points `data_dir` at a tree in
one of the layouts of `spec/data.md`, `find_layout` recognises it, and the `mit_adobe_fivek`
builder writes the four splits as `array_record` (no TensorFlow needed to build or read):

* `train_low`  — inputs, short side 512 (resized once here when larger),
* `train_high` — expert C renderings of *other* images, short side 512,
* `val`, `test` — input and expert C as a pair, 512 x 512 centre crops.

The split (which id goes where) is chosen by `split_ids`: QAGAN's 2250 / 2250 / 100 / 400
by id range (default), or a seeded random split. Its id lists, the layout, the source tree's
fingerprint and the files that could not be read are the dataset's metadata
(`builder.info.metadata`), which `common.data.open_dataset` returns as `Dataset.split` for the
main job to write into its work directory.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import os
import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from common.data import records
from common.images import IMAGE_SUFFIXES, ImageLoadError, load_image, to_uint8

logger = logging.getLogger(__name__)

NUM_IDS = 5000
# The default split [choice] (spec/data.md): id ranges, inclusive, 1-based.
DEFAULT_RANGES = {
    "train_high": (1, 2250),  # expert C
    "train_low": (2251, 4500),  # inputs
    "test": (4501, 4900),
    "val": (4901, 5000),
}
# Sizes of the seeded split on the full 5000 ids; smaller trees get proportional sizes.
SPLIT_SIZES = {"train_high": 2250, "train_low": 2250, "test": 400, "val": 100}

LAYOUTS = {
    "export512": "short-side-512 export: an input folder and an expert-C folder of aNNNN-*.png "
    "(or .jpg/.tif) files, the same names in both (e.g. original/ and expertC/)",
    "presplit": "pre-split (UEGAN) layout: train/{exp,raw}, val/{label,raw}, test/{label,raw}",
    "exposure500": "EXPOSURE/PIEA layout: 500-px JPEGs of the inputs and of expert C in two "
    "folders, plus FiveK_test.txt (1-based ids)",
}
# Folder names (compared case-insensitively, ignoring "_", "-" and spaces).
INPUT_FOLDERS = ("original", "originals", "raw", "input", "inputs", "inputasshotzeroed")
EXPERT_FOLDERS = ("expertc", "expertsc", "c", "fivekc", "targetc")
TEST_LIST = "fivek_test.txt"

_ID_PATTERN = re.compile(r"^a?(\d{4})(?=$|[-_. ])", re.IGNORECASE)


class LayoutError(ValueError):
    """A folder that holds none of the FiveK layouts; the message lists them and what it saw."""


class StaleBuildError(ValueError):
    """A built dataset whose source tree has changed since it was built."""


@dataclasses.dataclass(frozen=True)
class FivekTree:
    """A FiveK tree found on disk.

    Attributes:
      layout: "export512" | "presplit" | "exposure500" (see `LAYOUTS`).
      root: the folder holding the layout.
      inputs: id -> input image file.
      experts: id -> expert-C image file.
      folder_split: the presplit layout's own split (split name -> ids), else None.
      test_list: the exposure500 layout's FiveK_test.txt ids ("aNNNN"), else None.
      description: one line saying what was found.
    """

    layout: str
    root: Path
    inputs: dict[str, Path]
    experts: dict[str, Path]
    folder_split: dict[str, list[str]] | None = None
    test_list: list[str] | None = None
    description: str = ""

    def fingerprint(self) -> str:
        """A hash of the relative paths and sizes of every image file the tree uses."""
        digest = hashlib.sha256()
        for path in sorted({*self.inputs.values(), *self.experts.values()}):
            digest.update(
                f"{path.relative_to(self.root).as_posix()}\t{path.stat().st_size}\n".encode()
            )
        return digest.hexdigest()


def fivek_id(name: str) -> str | None:
    """The id ("aNNNN") in a FiveK file name ("a0042-IMG_1234.png", "0042.jpg"), or None."""
    match = _ID_PATTERN.match(Path(name).stem)
    if match and 1 <= int(match.group(1)) <= NUM_IDS:
        return f"a{int(match.group(1)):04d}"
    return None


def _norm(name: str) -> str:
    return re.sub(r"[-_ ]", "", name).lower()


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
    )


def _index(folder: Path, *, by_stem: bool = False) -> dict[str, Path]:
    """id -> file for the images in `folder` (FiveK ids; with `by_stem`, else the stem)."""
    found: dict[str, Path] = {}
    for path in _image_files(folder):
        key = fivek_id(path.name) or (path.stem if by_stem else None)
        if key is None:
            logger.warning("%s: no FiveK id (aNNNN) in the file name; ignored", path)
        elif key in found:
            logger.warning(
                "%s: a second file for %s (kept %s); ignored", path, key, found[key].name
            )
        else:
            found[key] = path
    return found


def _subfolder(root: Path, names: Iterable[str]) -> Path | None:
    wanted = set(names)
    matches = [p for p in sorted(root.iterdir()) if p.is_dir() and _norm(p.name) in wanted]
    return matches[0] if matches else None


def _read_test_list(path: Path) -> list[str]:
    ids = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            if not line.isdigit() or not 1 <= int(line) <= NUM_IDS:
                raise LayoutError(f"{path}: not a 1-based FiveK id list (line {line!r})")
            ids.append(f"a{int(line):04d}")
    return ids


def _try_presplit(root: Path) -> FivekTree | None:
    folders = {
        (split, kind): root / split / kind
        for split, kinds in (("train", ("exp", "raw")), ("val", ("label", "raw")))
        for kind in kinds
    } | {("test", kind): root / "test" / kind for kind in ("label", "raw")}
    if not all(f.is_dir() for f in folders.values()):
        return None
    index = {key: _index(folder, by_stem=True) for key, folder in folders.items()}
    inputs = {**index["train", "raw"], **index["val", "raw"], **index["test", "raw"]}
    experts = {**index["train", "exp"], **index["val", "label"], **index["test", "label"]}
    folder_split = {
        "train_low": sorted(index["train", "raw"]),
        "train_high": sorted(index["train", "exp"]),
        "val": sorted(index["val", "raw"].keys() & index["val", "label"].keys()),
        "test": sorted(index["test", "raw"].keys() & index["test", "label"].keys()),
    }
    for split in records.PAIRED_SPLITS:
        raw, label = index[split, "raw"], index[split, "label"]
        unpaired = sorted(raw.keys() ^ label.keys())
        if unpaired:
            logger.warning(
                "%s/%s: %d images without their pair in raw/ or label/ (left out): %s",
                root,
                split,
                len(unpaired),
                ", ".join(unpaired[:10]),
            )
    sizes = "/".join(str(len(folder_split[s])) for s in ("train_low", "train_high", "val", "test"))
    return FivekTree(
        "presplit",
        root,
        inputs,
        experts,
        folder_split=folder_split,
        description=f"pre-split (UEGAN) layout at {root}, its own split {sizes} "
        "(train_low/train_high/val/test)",
    )


def _try_two_folders(root: Path) -> FivekTree | None:
    input_dir = _subfolder(root, INPUT_FOLDERS)
    expert_dir = _subfolder(root, EXPERT_FOLDERS)
    if input_dir is None or expert_dir is None:
        return None
    inputs, experts = _index(input_dir), _index(expert_dir)
    if not inputs or not experts:
        return None
    candidates = [f for d in (root, root / "folds") if d.is_dir() for f in sorted(d.iterdir())]
    test_file = next((f for f in candidates if f.name.lower() == TEST_LIST), None)
    layout = "exposure500" if test_file is not None else "export512"
    name = "EXPOSURE/PIEA layout" if test_file else "short-side-512 export"
    pairs = len(inputs.keys() & experts.keys())
    return FivekTree(
        layout,
        root,
        inputs,
        experts,
        test_list=_read_test_list(test_file) if test_file else None,
        description=f"{name} at {root} ({input_dir.name}/: {len(inputs)} inputs, "
        f"{expert_dir.name}/: {len(experts)} expert C, {pairs} pairs"
        + (f", {test_file.name})" if test_file else ")"),
    )


def _describe_folder(root: Path, limit: int = 20) -> str:
    lines = []
    entries = sorted(root.iterdir())
    for entry in entries[:limit]:
        if entry.is_dir():
            images = len(_image_files(entry))
            subfolders = sorted(p.name + "/" for p in entry.iterdir() if p.is_dir())
            detail = f"{images} image files" + (
                f", subfolders {', '.join(subfolders[:8])}" if subfolders else ""
            )
            lines.append(f"  {entry.name}/ ({detail})")
        else:
            lines.append(f"  {entry.name}")
    if len(entries) > limit:
        lines.append(f"  ... and {len(entries) - limit} more")
    return "\n".join(lines) if lines else "  (nothing: the folder is empty)"


def find_layout(data_dir: str | os.PathLike) -> FivekTree:
    """Recognises the FiveK layout in `data_dir` (or in its only subfolder that holds one).

    Args:
      data_dir: the user's FiveK folder.

    Returns:
      The tree found; its `description` says which layout and what it holds.

    Raises:
      FileNotFoundError: `data_dir` is not a folder.
      LayoutError: no known layout; the message lists the layouts and what the folder holds.
    """
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder (the FiveK data directory)")
    for candidate in (root, *sorted(p for p in root.iterdir() if p.is_dir())):
        tree = _try_presplit(candidate) or _try_two_folders(candidate)
        if tree is not None:
            logger.info("FiveK: found the %s", tree.description)
            return tree
    expected = "\n".join(f"  - {text}" for text in LAYOUTS.values())
    raise LayoutError(
        f"{root}: no MIT-Adobe FiveK layout found. Expected one of:\n{expected}\n"
        f"Input folder names: {', '.join(INPUT_FOLDERS)}; expert-C folder names: "
        f"{', '.join(EXPERT_FOLDERS)} (any case, '_'/'-' ignored). The folder holds:\n"
        + _describe_folder(root)
    )


def _stable_rank(seed: int, image_id: str) -> bytes:
    # A hash rather than a numpy permutation: the same split on every numpy version.
    return hashlib.sha256(f"{seed}:{image_id}".encode()).digest()


def split_ids(ids: Iterable[str], *, seed: int | None = None) -> dict[str, list[str]]:
    """Assigns FiveK ids to `train_low`, `train_high`, `val` and `test`.

    Default (`seed=None`): by id range, `DEFAULT_RANGES` (high = expert C of a0001-a2250, low =
    inputs of a2251-a4500, test a4501-a4900, val a4901-a5000). Seeded: the ids ordered by
    sha256("{seed}:{id}"); the first go to train_high, then train_low, test and val, with
    `SPLIT_SIZES` on 5000 ids and proportional sizes on fewer (val and test rounded, at
    least one each from four ids on; the rest halved, train_high getting the odd one).

    Args:
      ids: FiveK ids ("aNNNN"); duplicates are ignored.
      seed: None for the default split, else any integer.

    Returns:
      split name -> sorted ids; the four lists are disjoint and cover `ids`.
    """
    ids = sorted(set(ids))
    if seed is None:
        return {
            split: [i for i in ids if low <= int(i[1:]) <= high]
            for split, (low, high) in DEFAULT_RANGES.items()
        }
    ordered = sorted(ids, key=lambda i: _stable_rank(seed, i))
    n = len(ordered)
    least = 1 if n >= 4 else 0  # every split gets an image when there are enough
    n_val = max(least, round(n * SPLIT_SIZES["val"] / NUM_IDS))
    n_test = max(least, round(n * SPLIT_SIZES["test"] / NUM_IDS))
    n_low = (n - n_val - n_test) // 2
    n_high = n - n_val - n_test - n_low
    bounds = np.cumsum([0, n_high, n_low, n_test, n_val])
    names = ("train_high", "train_low", "test", "val")
    return {name: sorted(ordered[bounds[k] : bounds[k + 1]]) for k, name in enumerate(names)}


def _split_name(seed: int | None) -> str:
    return "default" if seed is None else f"random{seed}"


def plan_split(tree: FivekTree, split_seed: int | None = None) -> dict[str, list[str]]:
    """The ids of each split for `tree`, keeping only ids whose files exist for that split
    (inputs for train_low, expert C for train_high, both for val/test).

    Raises:
      ValueError: a seed for the presplit layout (its folders fix the split), or a split
        left empty.
    """
    if tree.folder_split is not None:
        if split_seed is not None:
            raise ValueError(
                f"{tree.root}: the pre-split layout fixes its split in its folders; a seeded "
                "split needs a layout with every image in both renderings"
            )
        planned = tree.folder_split
    else:
        planned = split_ids(tree.inputs.keys() | tree.experts.keys(), seed=split_seed)
    needs = {
        "train_low": (tree.inputs,),
        "train_high": (tree.experts,),
        "val": (tree.inputs, tree.experts),
        "test": (tree.inputs, tree.experts),
    }
    result = {}
    for split in records.SPLITS:
        kept = [i for i in planned[split] if all(i in files for files in needs[split])]
        missing = sorted(set(planned[split]) - set(kept))
        if missing:
            logger.warning(
                "FiveK %s: %d ids without the file(s) this split needs (left out): %s%s",
                split,
                len(missing),
                ", ".join(missing[:10]),
                " ..." if len(missing) > 10 else "",
            )
        if not kept:
            raise ValueError(f"{tree.root}: no images for the {split} split of this tree")
        result[split] = kept
    return result


def _load_uint8(path: Path) -> np.ndarray:
    return to_uint8(load_image(path))


def _train_image(path: Path) -> np.ndarray:
    return records.resize_short_side(_load_uint8(path), records.TRAIN_SHORT_SIDE)


def _eval_pair(paths: tuple[Path, Path]) -> tuple[np.ndarray, np.ndarray]:
    input_path, label_path = paths
    image = records.resize_short_side(_load_uint8(input_path), records.TRAIN_SHORT_SIDE)
    label = records.resize_short_side(_load_uint8(label_path), records.TRAIN_SHORT_SIDE)
    if label.shape != image.shape:
        (h, w), (lh, lw) = image.shape[:2], label.shape[:2]
        if abs(h / w - lh / lw) > 0.01 * h / w:
            logger.warning(
                "%s: %dx%d, but its input %s is %dx%d; resized to the input's size",
                label_path,
                lw,
                lh,
                input_path.name,
                w,
                h,
            )
        label = np.asarray(Image.fromarray(label).resize((w, h), Image.Resampling.LANCZOS))
    size = records.eval_crop_size(*image.shape[:2])
    return records.center_crop(image, size), records.center_crop(label, size)


class MitAdobeFivekConfig(tfds.core.BuilderConfig):
    """Which layout the dataset is built from and which split it uses.

    Names read "<layout>-<split>": "export512-default", "exposure500-random7",
    "presplit-default"; `MitAdobeFivek.get_builder_config` parses any such name.
    """

    def __init__(self, *, layout: str, split_seed: int | None = None):
        if layout not in LAYOUTS:
            raise ValueError(f"unknown FiveK layout {layout!r}: {', '.join(LAYOUTS)}")
        super().__init__(
            name=f"{layout}-{_split_name(split_seed)}",
            description=f"{LAYOUTS[layout]}; "
            + ("default id split" if split_seed is None else f"random split, seed {split_seed}"),
        )
        self.layout = layout
        self.split_seed = split_seed


class MitAdobeFivek(tfds.core.GeneratorBasedBuilder):
    """MIT-Adobe FiveK for unpaired enhancement (QAGAN): inputs vs expert C, 4 splits."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release: three layouts, default and seeded splits."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Export MIT-Adobe FiveK (https://data.csail.mit.edu/graphics/fivek/) in one of these "
        "layouts and pass its folder as the manual directory:\n"
        + "\n".join(f"- {text}" for text in LAYOUTS.values())
    )
    workers = records.default_workers()

    @classmethod
    def get_builder_config(cls, name: str, version=None) -> MitAdobeFivekConfig | None:
        match = re.fullmatch(r"(\w+)-(default|random(-?\d+))", name.split(":")[0])
        if match is None or match.group(1) not in LAYOUTS:
            return None
        seed = None if match.group(3) is None else int(match.group(3))
        return MitAdobeFivekConfig(layout=match.group(1), split_seed=seed)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="MIT-Adobe FiveK as two unpaired domains (inputs, expert C) with "
            "paired val/test sets, after QAGAN. " + self.builder_config.description,
            features=records.features(),
            homepage="https://data.csail.mit.edu/graphics/fivek/",
            citation=(
                "@inproceedings{fivek, author = {Vladimir Bychkovsky and Sylvain Paris and "
                "Eric Chan and Fr{\\'e}do Durand}, title = {Learning Photographic Global "
                "Tonal Adjustment with a Database of Input / Output Image Pairs}, booktitle = "
                "{CVPR}, year = {2011}}"
            ),
            metadata=tfds.core.MetadataDict(),
            disable_shuffling=True,  # records in id order; the pipelines shuffle
        )

    def _split_generators(self, dl_manager):
        tree = find_layout(dl_manager.manual_dir)
        config = self.builder_config
        if tree.layout != config.layout:
            raise ValueError(
                f"{tree.root} holds the {tree.layout} layout, but config {config.name} is for "
                f"{config.layout}"
            )
        planned = plan_split(tree, config.split_seed)
        self.info.metadata.update(
            {
                "dataset": "mit_adobe_fivek",
                "layout": tree.layout,
                "layout_description": tree.description,
                "split_name": "folders" if tree.folder_split else _split_name(config.split_seed),
                "split_seed": config.split_seed,
                "ids": {},
                "skipped": [],
                "source": {
                    "dir": str(tree.root.resolve()),
                    "files": len({*tree.inputs.values(), *tree.experts.values()}),
                    "fingerprint": tree.fingerprint(),
                },
                "exposure_test_ids": tree.test_list,
            }
        )
        return {split: self._generate_examples(tree, split, planned[split]) for split in planned}

    def _generate_examples(self, tree: FivekTree, split: str, ids: list[str]):
        if split in records.PAIRED_SPLITS:
            items = [(tree.inputs[i], tree.experts[i]) for i in ids]
            fn = _eval_pair
        else:
            files = tree.inputs if split == "train_low" else tree.experts
            items, fn = [files[i] for i in ids], _train_image
        written, skipped = [], self.info.metadata["skipped"]
        for image_id, result in zip(ids, records.ordered_map(fn, items, self.workers), strict=True):
            if isinstance(result, ImageLoadError):
                logger.warning("FiveK %s: skipped %s", split, result)
                skipped.append({"split": split, "file": str(result.path), "reason": result.reason})
                continue
            image, label = result if split in records.PAIRED_SPLITS else (result, None)
            written.append(image_id)
            yield image_id, records.tfds_example(image_id, image, label)
        if not written:
            raise ValueError(f"FiveK {split}: none of its {len(ids)} images could be read")
        self.info.metadata["ids"][split] = written
        logger.info(
            "FiveK %s: %d examples (%d skipped)", split, len(written), len(ids) - len(written)
        )


def _builder(tree: FivekTree, split_seed: int | None, tfds_dir: str | os.PathLike | None):
    # The config goes by name: `get_builder_config` makes it (a config object of the same
    # name would clash with the one TFDS looks up).
    return MitAdobeFivek(
        data_dir=os.fspath(tfds_dir or records.default_tfds_dir()),
        config=f"{tree.layout}-{_split_name(split_seed)}",
        file_format="array_record",
    )


def build(
    data_dir: str | os.PathLike,
    *,
    split_seed: int | None = None,
    tfds_dir: str | os.PathLike | None = None,
    rebuild: bool = False,
    workers: int | None = None,
) -> MitAdobeFivek:
    """Builds (or finds) the `mit_adobe_fivek` TFDS dataset of the tree in `data_dir`.

    Args:
      data_dir: the user's FiveK folder, in any layout `find_layout` knows.
      split_seed: None for the default id split, else the seed of a random split.
      tfds_dir: where TFDS datasets live (default `records.default_tfds_dir()`).
      rebuild: build again even when a build exists (e.g. after the tree changed).
      workers: threads decoding, resizing and encoding images (default: the CPU count, at
        most 8).

    Returns:
      The prepared builder (`builder.as_data_source(split)`, `builder.info.metadata`).

    Raises:
      LayoutError, FileNotFoundError: see `find_layout`.
      StaleBuildError: a build exists but was made from a different tree (other files or
        sizes); pass `rebuild=True`.
    """
    tree = find_layout(data_dir)
    builder = _builder(tree, split_seed, tfds_dir)
    if builder.is_prepared() and not rebuild:
        built = builder.info.metadata.get("source", {})
        if built.get("fingerprint") != tree.fingerprint():
            raise StaleBuildError(
                f"{builder.data_dir} was built from another FiveK tree ({built.get('files')} "
                f"files at {built.get('dir')}; now {tree.root} with "
                f"{len({*tree.inputs.values(), *tree.experts.values()})} files). Rebuild it: "
                f"python -m common.data build --data-dir {tree.root} --rebuild"
            )
        logger.info("FiveK: using the dataset built at %s", builder.data_dir)
        return builder
    plan_split(tree, split_seed)  # Fails early, before TFDS starts, on a bad split.
    builder.workers = workers or records.default_workers()
    mode = tfds.download.GenerateMode
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(
            manual_dir=os.fspath(tree.root),
            download_mode=mode.FORCE_REDOWNLOAD if rebuild else mode.REUSE_DATASET_IF_EXISTS,
        )
    )
    return builder


@functools.lru_cache(maxsize=8)
def _prepared_in(root: str, split_seed: int | None, tfds_dir: str) -> MitAdobeFivek:
    return build(root, split_seed=split_seed, tfds_dir=tfds_dir)


def _prepared(data_dir, split_seed, tfds_dir) -> MitAdobeFivek:
    root = os.fspath(Path(data_dir).expanduser().resolve())
    return _prepared_in(root, split_seed, os.fspath(tfds_dir or records.default_tfds_dir()))


def fivek_source(
    data_dir: str | os.PathLike,
    split: str,
    *,
    split_seed: int | None = None,
    tfds_dir: str | os.PathLike | None = None,
) -> records.TfdsSource:
    """One split of FiveK as a random-access source of records.

    The first call builds the TFDS dataset (or finds it built; see `build`), which takes
    minutes for the full set; later calls open it. On several hosts, build it once first
    (`python -m common.data build --data-dir DIR`).

    Args:
      data_dir: the user's FiveK folder (any layout `find_layout` knows).
      split: "train_low" | "train_high" | "val" | "test".
      split_seed: None for the default id split (2250/2250/100/400), else a seeded split.
      tfds_dir: where TFDS datasets live (default $TFDS_DATA_DIR or ~/tensorflow_datasets).

    Returns:
      A source (`len`, `[i]`) of `{"id": "aNNNN", "image": uint8 (H, W, 3)}` in id order;
      val/test records also carry `"label"` (expert C, same shape). Training images have
      short side 512 (smaller when the export is smaller); val/test are 512 x 512 centre
      crops (the largest multiple-of-16 square for smaller exports, e.g. EXPOSURE's 500 px).
    """
    if split not in records.SPLITS:
        raise ValueError(f"unknown split {split!r}: {', '.join(records.SPLITS)}")
    return records.TfdsSource(_prepared(data_dir, split_seed, tfds_dir), split)


def split_metadata(data_dir, *, split_seed=None, tfds_dir=None) -> dict:
    """The built dataset's metadata (JSON-serialisable): dataset, layout, split name and
    seed, the ids of every split, skipped files, the source tree's fingerprint."""
    return dict(_prepared(data_dir, split_seed, tfds_dir).info.metadata)
