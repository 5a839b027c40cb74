"""Flags and checks shared by the PIEA commands (`piea_enhance`, `piea_fivek`).

absl flags are process-wide, so flags both commands take are defined once, here; each command
adopts them as its own (`flags.adopt_module_key_flags`) so that its `--help` lists them.
"""

from __future__ import annotations

import sys
from pathlib import Path

from absl import app, flags

from common.nima import NIMA_BACKBONES
from piea_jax.guiders import GUIDER_KINDS, GuiderError, load_guider

OUT = flags.DEFINE_string("out", None, "Output folder (created if missing).")
STEPS = flags.DEFINE_integer("steps", 20, "Optimiser steps M (paper: 20).", lower_bound=1)
LR = flags.DEFINE_float("lr", 1e-3, "Learning rate λ (paper: 1e-3).")
OPTIMIZER = flags.DEFINE_string(
    "optimizer", "sgd", "optax optimiser name: sgd (the paper's plain gradient descent), adam, …"
)
GUIDER = flags.DEFINE_enum(
    "guider", "critic", list(GUIDER_KINDS), "critic: built-in photographic critic (not NIMA)."
)
NIMA_WEIGHTS = flags.DEFINE_string(
    "nima-weights", None, "NIMA checkpoint file, or a converted directory, for --guider nima."
)
NIMA_BACKBONE = flags.DEFINE_enum(
    "nima-backbone", None, NIMA_BACKBONES, "Format of --nima-weights (see README)."
)
PREVIEW_SIZE = flags.DEFINE_integer(
    "preview-size",
    None,
    "Short side of the search preview; 0 searches at full resolution. Default: 256 for "
    "piea_enhance, 0 for piea_fivek (the paper searched its 500x333 inputs unresized).",
    lower_bound=0,
)
BATCH_SIZE = flags.DEFINE_integer("batch-size", 8, "Images per compiled search.", lower_bound=1)


def preview_size(default: int | None) -> int | None:
    """--preview-size as `enhance` takes it (None = full resolution), `default` when not given."""
    value = PREVIEW_SIZE.value if PREVIEW_SIZE.value is not None else default
    return value or None


def guider():
    """The guider the flags ask for: (guider, its readable name, the checkpoint record or None).

    Raises:
      app.UsageError: NIMA without --nima-weights or --nima-backbone, or weights that cannot
        be loaded (named, with the reason).
    """
    if GUIDER.value == "nima" and not NIMA_WEIGHTS.value:
        raise app.UsageError(
            "--guider nima needs --nima-weights PATH (a NIMA checkpoint or converted directory) "
            "and --nima-backbone NAME; without them use --guider critic. Random-weight NIMA "
            "scores mean nothing, so none is used silently."
        )
    if GUIDER.value == "nima" and not NIMA_BACKBONE.value:
        raise app.UsageError(f"--nima-weights needs --nima-backbone: {', '.join(NIMA_BACKBONES)}")
    try:
        return load_guider(GUIDER.value, NIMA_WEIGHTS.value, NIMA_BACKBONE.value)
    except GuiderError as e:
        raise app.UsageError(f"--nima-weights {e}") from None


class PathError(Exception):
    """A bad path argument: reported as one line, before any work."""


def check_folder_target(flag: str, path: Path) -> None:
    """`path` is or can become a folder: it is not a file and no parent of it is one.

    Raises:
      PathError: naming the flag, the path and the reason.
    """
    if path.exists() and not path.is_dir():
        raise PathError(f"{flag} {path}: exists and is not a folder")
    parent = next(p for p in path.absolute().parents if p.exists())
    if not parent.is_dir():
        raise PathError(f"{flag} {path}: {parent} is a file, not a folder")


def report_failures(failures: list[str]) -> int:
    """Lists the failures at the end of a command; returns its exit code (1 if any, else 0)."""
    if not failures:
        return 0
    print(f"{len(failures)} failure(s):", file=sys.stderr)
    for failure in failures:
        print(f"  {failure}", file=sys.stderr)
    return 1
