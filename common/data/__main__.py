r"""Build and list the data sets.

    python -m common.data build --data-dir DIR [--split default|random:SEED] [--tfds-dir DIR]
        [--rebuild] [--workers N]
    python -m common.data build --demo
    python -m common.data info [--tfds-dir DIR]

`build` recognises the FiveK layout in DIR (and says which), builds the `mit_adobe_fivek` TFDS
dataset (array_record, no TensorFlow) with a progress bar, and reports how many examples each
split got; files that cannot be read are named with the reason, left out, and make the exit
code 1 (the dataset is built without them). A folder in no known layout gets a message listing
the layouts and what the folder holds. `--demo` builds the built-in demo set into the user
cache. `info` prints what is built and where. Exits non-zero on failure.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from absl import app, flags

from common import cli
from common.data import demo, fivek, records

_DATA_DIR = flags.DEFINE_string("data-dir", None, "The FiveK folder (any known layout).")
_SPLIT = flags.DEFINE_string(
    "split", "default", "default (2250/2250/100/400 by id) or random:SEED (a seeded split)."
)
_TFDS_DIR = flags.DEFINE_string(
    "tfds-dir", None, "Where TFDS datasets live (default $TFDS_DATA_DIR or ~/tensorflow_datasets)."
)
_REBUILD = flags.DEFINE_bool("rebuild", False, "Build again even if a build exists.")
_WORKERS = flags.DEFINE_integer("workers", None, "Image threads (default: CPUs, at most 8).")
_DEMO = flags.DEFINE_bool("demo", False, "build: the built-in demo set instead of FiveK.")

USAGE = "usage: python -m common.data {build --data-dir DIR | build --demo | info} [flags]"


def _split_seed(text: str) -> int | None:
    if text == "default":
        return None
    if text.startswith("random:") and text[len("random:") :].lstrip("-").isdigit():
        return int(text[len("random:") :])
    raise ValueError(f"--split {text!r}: expected 'default' or 'random:SEED'")


def _build() -> int:
    if _DEMO.value:
        builder = demo.build_demo()
        counts = {s: len(ids) for s, ids in builder.info.metadata["ids"].items()}
        print(f"demo set (recipe {demo.recipe_hash()}) at {builder.data_dir}: {counts}")
        return 0
    if _DATA_DIR.value is None:
        print(f"error: build needs --data-dir (or --demo)\n{USAGE}", file=sys.stderr)
        return 2
    builder = fivek.build(
        _DATA_DIR.value,
        split_seed=_split_seed(_SPLIT.value),
        tfds_dir=_TFDS_DIR.value,
        rebuild=_REBUILD.value,
        workers=_WORKERS.value,
    )
    meta = builder.info.metadata
    print(f"{meta['layout_description']}")
    print(f"built at {builder.data_dir} ({meta['split_name']} split)")
    for split in records.SPLITS:
        print(f"  {split:<10} {len(meta['ids'][split]):>5} examples")
    if meta["skipped"]:  # Built without them; a batch job's failures exit non-zero.
        print(f"{len(meta['skipped'])} unreadable files left out:", file=sys.stderr)
        for item in meta["skipped"]:
            print(f"  {item['file']}: {item['reason']}", file=sys.stderr)
        return 1
    return 0


def _size(folder: Path) -> str:
    return f"{sum(f.stat().st_size for f in folder.rglob('*') if f.is_file()) / 2**20:.0f} MiB"


def _info() -> int:
    tfds_dir = Path(_TFDS_DIR.value or records.default_tfds_dir()).expanduser()
    print(f"TFDS data directory: {tfds_dir}")
    builds = sorted((tfds_dir / "mit_adobe_fivek").glob("*/*/metadata.json"))
    for path in builds:
        meta = json.loads(path.read_text())
        counts = "/".join(str(len(meta["ids"][s])) for s in records.SPLITS)
        print(
            f"  mit_adobe_fivek/{path.parent.parent.name} {path.parent.name}: {counts} "
            f"(train_low/train_high/val/test), {_size(path.parent)}, from {meta['source']['dir']}"
        )
    if not builds:
        print("  no mit_adobe_fivek build")
    cache = records.cache_dir() / "demo"
    print(f"demo set cache: {cache} (current recipe {demo.recipe_hash()})")
    for folder in sorted(p for p in cache.glob("*") if not p.name.startswith(".")):
        current = " (current)" if folder.name == demo.recipe_hash() else " (old recipe)"
        print(f"  {folder.name}{current}, {_size(folder)}")
    return 0


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[1] not in ("build", "info"):
        print(USAGE, file=sys.stderr)
        return 2
    cli.quiet_library_logs()
    try:
        return _build() if argv[1] == "build" else _info()
    except (fivek.LayoutError, fivek.StaleBuildError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    app.run(main)
