"""Data: MIT-Adobe FiveK (a TFDS builder, no TensorFlow), users' folders, the built-in demo
set, and QAGAN's grain pipelines.

Every source is random-access (`len`, `[i]`, usable by grain) and yields records
`{"id": str, "image": uint8 (H, W, 3)}`; val/test records also carry `"label"` (expert C, or
the demo's clean crop). Splits: `SPLITS`.

* `fivek_source(data_dir, split, *, split_seed=None)` — FiveK in any known layout
  (`fivek.find_layout`); the first call builds the `mit_adobe_fivek` TFDS dataset.
* `demo_source(split)` — the built-in demo set (`common.data.demo`), built into the user cache.
* `folder_source(folder)` — a folder of photos as one domain.
* `open_dataset(...)` — what the main job calls: the four splits, a description and the split.
* `train_iterator(low, high, ...)`, `eval_dataset(source)` — the grain pipelines.

`python -m common.data build --data-dir DIR` builds FiveK; `python -m common.data info` lists
what is built.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from common.data import demo, fivek
from common.data.demo import demo_source
from common.data.fivek import LayoutError, StaleBuildError, find_layout, fivek_source, split_ids
from common.data.folders import FolderSource, folder_source
from common.data.pipeline import InMemorySource, eval_dataset, hold_in_memory, train_iterator
from common.data.records import SPLITS, cache_dir, default_tfds_dir

__all__ = [
    "SPLITS",
    "Dataset",
    "FolderSource",
    "InMemorySource",
    "LayoutError",
    "StaleBuildError",
    "cache_dir",
    "default_tfds_dir",
    "demo_source",
    "eval_dataset",
    "find_layout",
    "fivek_source",
    "folder_source",
    "hold_in_memory",
    "open_dataset",
    "split_ids",
    "train_iterator",
]


@dataclasses.dataclass(frozen=True)
class Dataset:
    """The data of one run.

    Attributes:
      train_low, train_high: sources of the two unpaired training domains.
      val, test: paired sources (records with "label"), or None (user folders).
      description: one line for reports, saying what the data is (and, for the demo set,
        that it is not FiveK).
      split: JSON-serialisable record of the data: dataset name, layout or folders, split
        name and seed, the ids of every split, files skipped as unreadable; the main job
        writes it as `split.json` into its work directory.
    """

    train_low: Any
    train_high: Any
    val: Any | None
    test: Any | None
    description: str
    split: dict


def _sizes(sources) -> str:
    return "/".join(str(len(s)) for s in sources)


def open_dataset(
    *,
    data_dir: str | os.PathLike | None = None,
    low_dir: str | os.PathLike | None = None,
    high_dir: str | os.PathLike | None = None,
    split_seed: int | None = None,
    tfds_dir: str | os.PathLike | None = None,
) -> Dataset:
    """Opens the data a run trains and validates on.

    Args:
      data_dir: FiveK in any known layout (built into TFDS on first use; see
        `fivek_source`).
      low_dir, high_dir: two user folders, the low- and high-quality domains (both or
        neither); there are no val/test sets then.
      split_seed: FiveK only: None for the default split, else a seeded random split.
      tfds_dir: FiveK only: where TFDS datasets live (default $TFDS_DATA_DIR or
        ~/tensorflow_datasets).
      With none of data_dir, low_dir, high_dir: the built-in demo set.

    Returns:
      A `Dataset`.

    Raises:
      ValueError: an inconsistent combination of arguments.
      LayoutError, FileNotFoundError, StaleBuildError: see `fivek.build`, `folder_source`.
    """
    folders = low_dir is not None or high_dir is not None
    if data_dir is not None and folders:
        raise ValueError("give either data_dir (FiveK) or low_dir/high_dir (folders), not both")
    if split_seed is not None and data_dir is None:
        raise ValueError("split_seed applies to FiveK (data_dir) only")
    if data_dir is not None:
        sources = [
            fivek_source(data_dir, s, split_seed=split_seed, tfds_dir=tfds_dir) for s in SPLITS
        ]
        split = fivek.split_metadata(data_dir, split_seed=split_seed, tfds_dir=tfds_dir)
        split_text = {"default": "default split", "folders": "the layout's own split"}.get(
            split["split_name"], f"random split (seed {split_seed})"
        )
        description = (
            f"MIT-Adobe FiveK, {split['layout_description']}; {split_text} "
            f"{_sizes(sources)} (train_low/train_high/val/test)"
        )
        return Dataset(*sources, description=description, split=split)
    if folders:
        if low_dir is None or high_dir is None:
            raise ValueError("user folders need both low_dir and high_dir")
        low, high = folder_source(low_dir), folder_source(high_dir)
        split = {
            "dataset": "folders",
            "low_dir": str(low.folder),
            "high_dir": str(high.folder),
            "ids": {"train_low": low.ids, "train_high": high.ids},
            "skipped": [{"file": f, "reason": r} for f, r in [*low.skipped, *high.skipped]],
        }
        description = (
            f"user folders: low {low.folder} ({len(low)} images), high {high.folder} "
            f"({len(high)} images); no val/test set"
        )
        return Dataset(low, high, None, None, description=description, split=split)
    sources = [demo_source(s) for s in SPLITS]
    split = demo.demo_metadata()
    description = f"{demo.DESCRIPTION}, {_sizes(sources)} (train_low/train_high/val/test)"
    return Dataset(*sources, description=description, split=split)
