"""Data: MIT-Adobe FiveK as a TFDS builder (no TensorFlow)."""

from common.data.fivek import LayoutError, StaleBuildError, find_layout, fivek_source, split_ids
from common.data.records import SPLITS

__all__ = ["SPLITS", "LayoutError", "StaleBuildError", "find_layout", "fivek_source", "split_ids"]
