r"""PIEA's Table 1, Fig. 4 and Fig. 5 (spec/piea.md §6–7) from one command.

    python -m experiments.piea_fivek                    # the built-in demo set (NOT FiveK)
    python -m experiments.piea_fivek --data-dir ~/fivek --out runs/table1
        [--guider nima --nima-weights PATH --nima-backbone NAME] [--steps 20] [--seed 0]
        [--lr-sweep 1e-4,3e-4,1e-3,3e-3,1e-2] [--figure4 a4623 | --figure4 photo.jpg]

Data. `--data-dir`: MIT-Adobe FiveK in any layout `common.data.find_layout` knows. The
EXPOSURE/PIEA layout (500-px JPEGs of the inputs and of expert C, `FiveK_test.txt`) is the
paper's: its 1000 test ids. The other two layouts have no such list: their test set is the one
`common.data` defines (the default id split's a4501–a4900, or the pre-split layout's test/
folder), which every table names. Images are used at the size of their files (the paper's
inputs are 500 px on the long side). Without `--data-dir`: the built-in demo set's test pairs
(degraded scikit-image crops, scored against their originals instead of expert C); every
table and file then says it is the demo set, not FiveK, and not a benchmark.

The search. `enhance` (paper defaults: 20 SGD steps at 1e-3, PIEA's start) over the test
inputs in batches of `--batch-size` images of one size, sharded over the local devices. The
paper searched its 500×333 inputs without resizing, so the default `--preview-size 0` searches
at full resolution; each distinct image size compiles once (a few seconds with the critic).
`--preview-size S` searches on previews with short side S (faster; aspect kept).

DIR (`--out`, default outputs/piea_fivek or outputs/piea_fivek_demo) receives:
  enhanced/<id>.png           the output (8-bit, the input's size),
  strategies/<id>.json        its strategy: readable line, filter values, scores, trajectory,
  table1.json, table1.csv     Table 1 (below),
  lr_sweep/<id>.npz, lr_sweep.csv, lr_sweep.png    with --lr-sweep (Fig. 5),
  figure4_<name>.png          with --figure4 (Fig. 4),
  run.json                    the settings; a re-run must use the same ones.
Resumable: an image whose strategy JSON exists is not searched again (per-image files are
written atomically, the JSON last), so re-running after an interruption finishes the set;
tables, plots and figures are recomputed from the files on every run.

Table 1: the patch histogram intersections (luminance, contrast, saturation) of the outputs
against expert C, of the inputs against expert C (the baseline), and the paper's PIEA row,
labelled with the data, the guider (the critic, or which NIMA backbone and checkpoint SHA-256:
the paper's Inception-v2 NIMA has no public checkpoint) and the seed of the patch sampling
(`piea_jax.evaluation`: patches are placed per image id, the same for every set).
table1.json = {"enhanced": {"luminance", "contrast", "saturation"}, "input": {...},
"paper": {...}, "guider", "data", "seed", "images", "settings"}, scores as fractions in [0, 1].

--lr-sweep R1,R2,...: the same search at every rate in ONE compiled call per batch (`enhance`
with a vector of rates), then the histogram intersections after every step at every rate
(each image rendered at full resolution from the trajectory; no search repeated):
lr_sweep.csv (rate, step, the three scores, the mean guider score) and lr_sweep.png.

--figure4 IMAGE: the progression strip (raw, steps 1, 5, 10, 15, 20, expert C) with the
strategy text. IMAGE is a test id (or its input's file name), drawn from its saved trajectory,
or an image file, which is searched on its own with the same settings.

Bad image files are reported by name and left out of every set (the rest go on); the command
then exits 1. Path arguments that cannot work are one-line errors (exit 2).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from absl import app, flags
from tqdm import tqdm

from common import cli
from common.images import ImageLoadError, load_image, save_bytes, save_image, save_text
from experiments import piea_flags
from piea_jax import FILTER_ORDER, enhance
from piea_jax.enhance import render
from piea_jax.evaluation import (
    PAPER_TABLE1,
    STATISTICS,
    image_statistics,
    intersection,
    patch_key,
    trajectory_statistics,
)
from piea_jax.figures import progression_strip, sweep_plot, thumbnail
from piea_jax.rendering import local_mesh
from piea_jax.strategy import strategy_record, trajectory_from_record

_DATA_DIR = flags.DEFINE_string(
    "data-dir", None, "MIT-Adobe FiveK (EXPOSURE/PIEA layout for the paper's test list)."
)
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the metric's patch sampling.")
_LR_SWEEP = flags.DEFINE_list(
    "lr-sweep", None, "Learning rates of the Fig. 5 sweep, e.g. 1e-4,3e-4,1e-3,3e-3,1e-2."
)
_FIGURE4 = flags.DEFINE_string(
    "figure4", None, "A test id (or input file name) or an image file: write its Fig. 4 strip."
)
flags.adopt_module_key_flags(piea_flags)  # --help lists the shared flags too

DEFAULT_OUT = {True: "outputs/piea_fivek_demo", False: "outputs/piea_fivek"}
DEMO_NOTE = "DEMO: the built-in demo set, NOT FiveK; not comparable with the paper's row"
PAPER_LABEL = "PIEA, paper (FiveK expert C, NIMA Inception-v2)"
RUN_FILE = "run.json"
# Images loaded at once before grouping them by size into batches.
WINDOW_BATCHES = 8


@dataclasses.dataclass
class _Pair:
    """One test image: its input and its target (expert C), as files or (demo) pixels."""

    id: str
    input: Path | None = None
    target: Path | None = None
    input_pixels: np.ndarray | None = None
    target_pixels: np.ndarray | None = None

    def load_input(self) -> np.ndarray:
        if self.input_pixels is not None:
            return self.input_pixels.astype(np.float32) / 255.0
        return load_image(self.input)

    def load_target(self) -> np.ndarray:
        if self.target_pixels is not None:
            return self.target_pixels.astype(np.float32) / 255.0
        return load_image(self.target)

    def name(self) -> str:
        return str(self.input) if self.input is not None else f"{self.id} (demo)"


@dataclasses.dataclass
class _TestSet:
    pairs: list[_Pair]
    description: str  # what the data is, for every table
    identity: dict  # what a resumed run must match
    demo: bool
    target: str  # what the outputs are scored against
    target_label: str  # its label under a picture


def _fivek_test_set(data_dir: str, failures: list[str]) -> _TestSet:
    from common.data import fivek  # noqa: PLC0415  (TFDS loads only when data is used)

    tree = fivek.find_layout(data_dir)
    if tree.test_list is not None:
        ids, which = tree.test_list, f"EXPOSURE's test list ({len(tree.test_list)} ids)"
    elif tree.folder_split is not None:
        ids, which = tree.folder_split["test"], "the pre-split layout's test/ folder"
    else:
        first, last = fivek.DEFAULT_RANGES["test"]
        ids = fivek.split_ids(tree.inputs.keys() | tree.experts.keys())["test"]
        which = f"common.data's default test split a{first:04d}-a{last:04d} (no test list)"
    pairs = []
    for image_id in ids:
        files = {"input": tree.inputs, "expert C": tree.experts}
        missing = [kind for kind, found in files.items() if image_id not in found]
        if missing:
            _fail(
                failures, f"{tree.root}: test image {image_id} has no {' or '.join(missing)} file"
            )
        else:
            pairs.append(_Pair(image_id, tree.inputs[image_id], tree.experts[image_id]))
    description = f"MIT-Adobe FiveK, {tree.description}; test set: {which}"
    identity = {"dataset": "fivek", "layout": tree.layout, "test_ids": ids}
    return _TestSet(pairs, description, identity, False, "expert C", "Expert C")


def _demo_test_set() -> _TestSet:
    from common.data import demo  # noqa: PLC0415

    source = demo.demo_source("test")
    records = [source[i] for i in range(len(source))]
    pairs = [_Pair(r["id"], input_pixels=r["image"], target_pixels=r["label"]) for r in records]
    description = (
        f"{demo.DESCRIPTION}: its {len(pairs)} test pairs (a degraded crop; its original crop "
        "is the target); a demo, not a benchmark"
    )
    identity = {"dataset": "demo", "recipe": demo.recipe_hash()}
    return _TestSet(pairs, description, identity, True, "the original crops", "Original")


# --- Helpers -----------------------------------------------------------------------------------


def _find_pair(test_set: _TestSet, spec: str) -> _Pair | None:
    """The test image named by `spec`: its id, or its input file's name or stem."""
    for pair in test_set.pairs:
        names = (pair.id,) if pair.input is None else (pair.id, pair.input.name, pair.input.stem)
        if spec in names:
            return pair
    return None


def _fail(failures: list[str], message: str) -> None:
    failures.append(message)
    tqdm.write(f"error: {message}", file=sys.stderr)


def _parse_rates(values: list[str] | None) -> list[float] | None:
    if not values:
        return None
    try:
        rates = [float(v) for v in values]
    except ValueError:
        raise app.UsageError(f"--lr-sweep: not a list of numbers: {','.join(values)}") from None
    if any(not np.isfinite(r) or r <= 0 for r in rates) or len(set(rates)) != len(rates):
        raise app.UsageError(f"--lr-sweep: rates must be distinct and positive: {rates}")
    return rates


def _windows(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _loaded_batches(
    pairs, batch_size, failures, progress
) -> Iterator[list[tuple[_Pair, np.ndarray]]]:
    """Batches of (pair, input pixels), every batch of one image size; unreadable inputs are
    reported and skipped. Images are read a window at a time and grouped by size within it."""
    for window in _windows(pairs, batch_size * WINDOW_BATCHES):
        by_shape: dict[tuple, list] = {}
        for pair in window:
            try:
                image = pair.load_input()
            except (ImageLoadError, OSError) as e:
                _fail(failures, str(e))
                progress.update(1)
                continue
            by_shape.setdefault(image.shape, []).append((pair, image))
        for group in by_shape.values():
            yield from _windows(group, batch_size)


def _enhance(images, guider, settings: dict, mesh, learning_rate=None):
    """`enhance` with the run's settings (its learning rate unless one is given)."""
    return enhance(
        images,
        guider,
        steps=settings["steps"],
        learning_rate=settings["learning_rate"] if learning_rate is None else learning_rate,
        optimizer=settings["optimizer"],
        preview_size=settings["preview_size"],
        mesh=mesh,
    )


class _Run:
    """The output folder: its per-image files and `run.json`, written before the first output."""

    def __init__(self, out: Path, settings: dict):
        self.out = out
        self.settings = settings
        self.started = (out / RUN_FILE).exists()

    def check(self) -> None:
        """Refuses a folder holding a run with other settings (its files would be mixed in)."""
        if not self.started:
            return
        try:
            previous = json.loads((self.out / RUN_FILE).read_text())
        except (OSError, ValueError) as e:
            raise piea_flags.PathError(f"--out {self.out}: unreadable {RUN_FILE}: {e}") from None
        sweep = previous.pop("lr_sweep", None)
        if previous != {k: v for k, v in self.settings.items() if k != "lr_sweep"}:
            keys = {*previous, *self.settings} - {"lr_sweep"}
            changed = sorted(k for k in keys if previous.get(k) != self.settings.get(k))
            raise piea_flags.PathError(
                f"--out {self.out}: holds a run with other settings ({', '.join(changed)}); "
                "resume it with the same flags or choose another --out"
            )
        if sweep and self.settings.get("lr_sweep") and sweep != self.settings["lr_sweep"]:
            raise piea_flags.PathError(
                f"--out {self.out}: holds a learning-rate sweep over {sweep}; resume it with "
                "the same --lr-sweep or choose another --out"
            )
        if sweep and not self.settings.get("lr_sweep"):
            self.settings["lr_sweep"] = sweep  # kept: its per-image files stay valid

    def start(self) -> None:
        if not self.started or self.settings.get("lr_sweep"):
            text = json.dumps(self.settings, indent=1, ensure_ascii=False) + "\n"
            save_text(self.out / RUN_FILE, text, overwrite=True)
            self.started = True

    def image(self, image_id: str) -> Path:
        return self.out / "enhanced" / f"{image_id}.png"

    def strategy(self, image_id: str) -> Path:
        return self.out / "strategies" / f"{image_id}.json"

    def sweep(self, image_id: str) -> Path:
        return self.out / "lr_sweep" / f"{image_id}.npz"

    def done(self, image_id: str) -> bool:
        return self.strategy(image_id).exists() and self.image(image_id).exists()


# --- Stage 1: the search -----------------------------------------------------------------------


def _search(test_set: _TestSet, run: _Run, guider, failures: list[str], mesh) -> None:
    """Enhances every test input without a finished output; writes image, then strategy."""
    todo = [p for p in test_set.pairs if not run.done(p.id)]
    if todo:
        run.start()
    total, skipped = len(test_set.pairs), len(test_set.pairs) - len(todo)
    if skipped:
        tqdm.write(f"resuming: {skipped} of {total} images already enhanced", file=sys.stderr)
    with tqdm(total=total, initial=skipped, unit="image", desc="PIEA search", leave=False) as bar:
        for batch in _loaded_batches(todo, piea_flags.BATCH_SIZE.value, failures, bar):
            result = _enhance([image for _, image in batch], guider, run.settings, mesh)
            for i, (pair, _) in enumerate(batch):
                record = {
                    "id": pair.id,
                    "input": pair.name(),
                    "target": str(pair.target) if pair.target else f"{pair.id} (demo original)",
                    "output": str(run.image(pair.id)),
                    **strategy_record(result, i),
                    "guider": run.settings["guider"],
                    "guider_weights": run.settings["guider_weights"],
                }
                try:  # A half-written earlier attempt (image without JSON) is replaced.
                    save_image(run.image(pair.id), np.asarray(result.images[i]), overwrite=True)
                    text = json.dumps(record, indent=1, ensure_ascii=False) + "\n"
                    save_text(run.strategy(pair.id), text, overwrite=True)
                except (OSError, ValueError) as e:
                    _fail(failures, f"{pair.name()}: could not write outputs: {e}")
            bar.update(len(batch))


# --- Stage 2: Table 1 --------------------------------------------------------------------------


def _table1(test_set, run, seed, failures) -> tuple[dict | None, dict[str, np.ndarray]]:
    """Scores the finished outputs; returns (table1.json's content or None, target statistics
    by id, for the sweep)."""
    stats: dict[str, list] = {"enhanced": [], "input": [], "target": []}
    targets: dict[str, np.ndarray] = {}
    done = [p for p in test_set.pairs if run.done(p.id)]
    for pair in tqdm(done, unit="image", desc="Table 1", leave=False):
        key = patch_key(seed, pair.id)
        try:
            images = [load_image(run.image(pair.id)), pair.load_input(), pair.load_target()]
        except (ImageLoadError, OSError) as e:
            _fail(failures, f"left out of Table 1: {e}")
            continue
        for row, image in zip(stats, images, strict=True):
            stats[row].append(image_statistics(image, key))
        targets[pair.id] = stats["target"][-1]
    if not targets:
        return None, targets
    table = {
        "enhanced": intersection(stats["enhanced"], stats["target"]),
        "input": intersection(stats["input"], stats["target"]),
        "paper": dict(PAPER_TABLE1),
        "guider": run.settings["guider"],
        "data": test_set.description,
        "seed": seed,
        "images": len(targets),
        "settings": {
            **{k: run.settings[k] for k in ("steps", "learning_rate", "optimizer", "preview_size")},
            "target": test_set.target,
        },
    }
    return table, targets


def _table_lines(table: dict, test_set: _TestSet, total: int) -> list[str]:
    settings = table["settings"]
    preview = settings["preview_size"]
    lines = [
        f"PIEA Table 1: patch histogram intersection with {test_set.target} (%), "
        f"{table['images']} of {total} test images, patch seed {table['seed']}",
    ]
    if test_set.demo:
        lines.append(DEMO_NOTE)
    lines += [
        f"data:   {table['data']}",
        f"guider: {table['guider']}",
        f"search: {settings['steps']} {settings['optimizer']} steps at lr "
        f"{settings['learning_rate']:g}, "
        + ("full resolution" if preview is None else f"previews with short side {preview}"),
        "",
        f"{'':<52}{'luminance':>10}{'contrast':>10}{'saturation':>12}",
    ]
    rows = [("PIEA, this run", "enhanced"), ("input (no enhancement)", "input")]
    rows.append((PAPER_LABEL, "paper"))
    for label, row in rows:
        lum, con, sat = (100 * table[row][s] for s in STATISTICS)
        lines.append(f"{label:<52}{lum:>10.1f}{con:>10.1f}{sat:>12.1f}")
    return lines


def _write_table(run: _Run, table: dict) -> None:
    text = json.dumps(table, indent=1, ensure_ascii=False) + "\n"
    save_text(run.out / "table1.json", text, overwrite=True)
    rows = io.StringIO()
    writer = csv.writer(rows)
    writer.writerow(["row", *STATISTICS, "images", "data", "guider", "seed"])
    for row in ("enhanced", "input", "paper"):
        images = table["images"] if row != "paper" else 1000
        data = table["data"] if row != "paper" else "MIT-Adobe FiveK, EXPOSURE's 1000 test images"
        guider = table["guider"] if row != "paper" else "NIMA Inception-v2 (AVA), the paper's"
        seed = table["seed"] if row != "paper" else ""
        scores = [f"{table[row][s]:.6f}" for s in STATISTICS]
        writer.writerow([row, *scores, images, data, guider, seed])
    save_text(run.out / "table1.csv", rows.getvalue(), overwrite=True)


# --- Stage 3: the learning-rate sweep (Fig. 5) ---------------------------------------------------


def _save_sweep(run, pair, rates, trajectory, scores, stats, seed) -> None:
    buffer = io.BytesIO()
    np.savez(
        buffer,
        rates=np.asarray(rates, np.float64),
        scores=scores,  # (K, M + 1) guider scores
        seed=seed,
        statistics=stats,  # (K, M + 1, 16, 3) patch statistics under `seed`
        **{f"trajectory_{name}": value for name, value in trajectory.items()},  # (K, M + 1, ...)
    )
    save_bytes(run.sweep(pair.id), buffer.getvalue(), overwrite=True)


def _sweep(test_set, run, guider, rates, seed, failures, mesh) -> None:
    """Searches every pending image at all rates in one compiled call per batch; stores per
    image the trajectory, the guider scores and the patch statistics after every step."""
    todo = [p for p in test_set.pairs if not run.sweep(p.id).exists()]
    if todo:
        run.start()
    total, skipped = len(test_set.pairs), len(test_set.pairs) - len(todo)
    with tqdm(total=total, initial=skipped, unit="image", desc="LR sweep", leave=False) as bar:
        for batch in _loaded_batches(todo, piea_flags.BATCH_SIZE.value, failures, bar):
            images = [image for _, image in batch]
            rates_array = np.asarray(rates, np.float32)
            result = _enhance(images, guider, run.settings, mesh, learning_rate=rates_array)
            for i, (pair, image) in enumerate(batch):
                trajectory = {k: np.asarray(v[:, i]) for k, v in result.trajectory.params.items()}
                key = patch_key(seed, pair.id)
                stats = trajectory_statistics(image, trajectory, key, mesh=mesh)
                try:
                    scores = np.asarray(result.scores[:, i])
                    _save_sweep(run, pair, rates, trajectory, scores, stats, seed)
                except OSError as e:
                    _fail(failures, f"{pair.name()}: could not write its sweep: {e}")
            bar.update(len(batch))


def _sweep_results(test_set, run, rates, seed, targets, failures, mesh):
    """(statistics (K, M + 1, N, 16, 3), guider scores (N, K, M + 1), target statistics
    (N, 16, 3), the first image's pair and final parameters per rate) over the images with
    both a sweep file and a Table 1 target. Statistics stored under another seed are drawn
    again from the stored trajectory (no search)."""
    stats, scores, target_stats, first = [], [], [], None
    for pair in test_set.pairs:
        if pair.id not in targets or not run.sweep(pair.id).exists():
            continue
        with np.load(run.sweep(pair.id)) as f:
            stored = {k: f[k] for k in f.files}
        trajectory = {name: stored[f"trajectory_{name}"] for name in FILTER_ORDER}
        if int(stored["seed"]) != seed:
            try:
                image = pair.load_input()
            except (ImageLoadError, OSError) as e:
                _fail(failures, f"left out of the sweep: {e}")
                continue
            stored["statistics"] = trajectory_statistics(
                image, trajectory, patch_key(seed, pair.id), mesh=mesh
            )
            _save_sweep(run, pair, rates, trajectory, stored["scores"], stored["statistics"], seed)
        stats.append(stored["statistics"])
        scores.append(stored["scores"])
        target_stats.append(targets[pair.id])
        if first is None:
            first = (pair, {name: value[:, -1] for name, value in trajectory.items()})
    if not stats:
        return None
    return np.stack(stats, axis=2), np.stack(scores), np.stack(target_stats), first


def _sweep_report(test_set, run, rates, seed, results, guider_name) -> list[str]:
    """lr_sweep.csv and lr_sweep.png; returns lines to print."""
    stats, scores, target_stats, (first, finals) = results
    mean_scores = scores.mean(axis=0)  # (K, M + 1)
    k_count, t_count = stats.shape[:2]
    curves = np.zeros((k_count, t_count, len(STATISTICS)))
    for k in range(k_count):
        for t in range(t_count):
            values = intersection(stats[k, t], target_stats)
            curves[k, t] = [values[s] for s in STATISTICS]
    images = len(target_stats)
    rows = io.StringIO()
    writer = csv.writer(rows)
    writer.writerow(
        ["learning_rate", "step", *STATISTICS, "guider_score", "images", "data", "guider", "seed"]
    )
    for k, rate in enumerate(rates):
        for t in range(t_count):
            values = [f"{v:.6f}" for v in (*curves[k, t], mean_scores[k, t])]
            labels = [images, test_set.description, guider_name, seed]
            writer.writerow([f"{rate:g}", t, *values, *labels])
    save_text(run.out / "lr_sweep.csv", rows.getvalue(), overwrite=True)

    image = first.load_input()
    small = thumbnail(image)
    tiles = [("Raw", small)]
    for k, rate in enumerate(rates):
        params = {name: finals[name][k] for name in FILTER_ORDER}
        tiles.append((f"lr {rate:g}", np.asarray(render(small, params))))
    tiles.append((test_set.target_label, first.load_target()))
    title = [
        f"PIEA Fig. 5: histogram intersection with {test_set.target} per step and learning "
        f"rate ({images} images, patch seed {seed})",
        *([DEMO_NOTE] if test_set.demo else []),
        f"data: {test_set.description}",
        f"guider: {guider_name}; below: {first.id} after {t_count - 1} steps at each rate",
    ]
    panels = {f"{s} (%)": 100 * curves[..., j] for j, s in enumerate(STATISTICS)}
    panels["guider score (mean)"] = mean_scores
    plot = sweep_plot(rates, panels, title=title, images=tiles)
    save_image(run.out / "lr_sweep.png", plot, overwrite=True)
    best = int(np.argmax(curves[:, -1].mean(axis=1)))
    lines = [
        f"PIEA Fig. 5: learning-rate sweep, histogram intersection with {test_set.target} (%) "
        f"after {t_count - 1} steps, {images} images, patch seed {seed}",
        *([DEMO_NOTE] if test_set.demo else []),
        f"{'learning rate':<16}{'luminance':>10}{'contrast':>10}{'saturation':>12}"
        f"{'guider score':>14}",
    ]
    for k, rate in enumerate(rates):
        lum, con, sat = 100 * curves[k, -1]
        lines.append(f"{rate:<16g}{lum:>10.1f}{con:>10.1f}{sat:>12.1f}{mean_scores[k, -1]:>14.2f}")
    lines.append(f"best mean of the three: lr {rates[best]:g}")
    lines.append(f"  {run.out / 'lr_sweep.png'}, {run.out / 'lr_sweep.csv'}")
    return lines


# --- Stage 4: Fig. 4 ---------------------------------------------------------------------------


def _figure4(spec: str, test_set, run, guider, failures, mesh) -> Path | None:
    pair = _find_pair(test_set, spec)
    try:
        if pair is not None:
            if not run.done(pair.id):
                _fail(failures, f"--figure4 {spec}: {pair.id} has no finished output to draw")
                return None
            record = json.loads(run.strategy(pair.id).read_text())
            image, target = pair.load_input(), pair.load_target()
            trajectory, scores = trajectory_from_record(record), record["scores"]
            strategy, name = record["strategy"], pair.id
        else:
            image, target, name = load_image(spec), None, Path(spec).stem
            result = _enhance(image, guider, run.settings, mesh)
            record = strategy_record(result, 0)
            trajectory = trajectory_from_record(record)
            scores, strategy = record["scores"], record["strategy"]
    except (ImageLoadError, OSError, ValueError) as e:
        _fail(failures, f"--figure4 {spec}: {e}")
        return None
    label = test_set.target_label
    strip = progression_strip(
        image, trajectory, scores, strategy, target=target, target_label=label
    )
    path = run.out / f"figure4_{name}.png"
    save_image(path, strip, overwrite=True)
    return path


# --- The command -------------------------------------------------------------------------------


def main(argv: list[str]) -> int:
    cli.quiet_library_logs()
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    rates = _parse_rates(_LR_SWEEP.value)
    demo = not _DATA_DIR.value
    out = Path(piea_flags.OUT.value or DEFAULT_OUT[demo])
    figure4 = _FIGURE4.value
    failures: list[str] = []
    try:
        piea_flags.check_folder_target("--out", out)
        if _DATA_DIR.value and not Path(_DATA_DIR.value).expanduser().is_dir():
            raise piea_flags.PathError(f"--data-dir {_DATA_DIR.value}: no such folder")
        guider, guider_name, guider_record = piea_flags.guider()
        test_set = _demo_test_set() if demo else _fivek_test_set(_DATA_DIR.value, failures)
        if not test_set.pairs:
            raise piea_flags.PathError(f"--data-dir {_DATA_DIR.value}: no test image to score")
        if figure4 and _find_pair(test_set, figure4) is None and not Path(figure4).is_file():
            raise piea_flags.PathError(f"--figure4 {figure4}: neither a test image nor a file")
        settings = {
            "data": test_set.identity,
            "guider": guider_name,
            "guider_weights": guider_record,
            "steps": piea_flags.STEPS.value,
            "learning_rate": piea_flags.LR.value,
            "optimizer": piea_flags.OPTIMIZER.value,
            "preview_size": piea_flags.preview_size(0),
            "order": list(FILTER_ORDER),
            "lr_sweep": rates,
        }
        run = _Run(out, settings)
        run.check()
    except piea_flags.PathError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (ValueError, OSError) as e:  # LayoutError, an unreadable test list, ...
        print(f"error: --data-dir {_DATA_DIR.value}: {e}", file=sys.stderr)
        return 2

    mesh = local_mesh()
    seed = _SEED.value
    _search(test_set, run, guider, failures, mesh)
    table, targets = _table1(test_set, run, seed, failures)
    if table is None:
        print(f"error: no test image could be enhanced and scored; {out}", file=sys.stderr)
        return 1
    _write_table(run, table)
    report = _table_lines(table, test_set, len(test_set.pairs))
    report.append(f"  {out / 'table1.json'}, {out / 'table1.csv'}")
    if rates:
        _sweep(test_set, run, guider, rates, seed, failures, mesh)
        results = _sweep_results(test_set, run, rates, seed, targets, failures, mesh)
        if results is None:
            _fail(failures, "learning-rate sweep: no image could be searched and scored")
        else:
            report += ["", *_sweep_report(test_set, run, rates, seed, results, guider_name)]
    if figure4:
        path = _figure4(figure4, test_set, run, guider, failures, mesh)
        if path is not None:
            report += ["", f"Fig. 4: {path}"]
    print("\n".join(report))
    return piea_flags.report_failures(failures)


if __name__ == "__main__":
    app.run(main)
