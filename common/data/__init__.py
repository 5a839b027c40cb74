"""Data: MIT-Adobe FiveK as a TFDS builder (no TensorFlow), and QAGAN's grain pipelines."""

from common.data.fivek import LayoutError, StaleBuildError, find_layout, fivek_source, split_ids
from common.data.pipeline import InMemorySource, eval_dataset, hold_in_memory, train_iterator
from common.data.records import SPLITS

__all__ = [
    "SPLITS",
    "InMemorySource",
    "LayoutError",
    "StaleBuildError",
    "eval_dataset",
    "find_layout",
    "fivek_source",
    "hold_in_memory",
    "split_ids",
    "train_iterator",
]
