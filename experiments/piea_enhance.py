r"""Batch PIEA enhancement from the command line.

    python -m experiments.piea_enhance INPUT... --out DIR [--steps 20] [--lr 1e-3]
        [--optimizer sgd] [--guider critic|nima] [--nima-weights PATH --nima-backbone NAME]
        [--preview-size 256] [--batch-size 8] [--progression] [--overwrite] [--recursive]
    python -m experiments.piea_enhance --demo --out DIR
    python -m experiments.piea_enhance PHOTO --out DIR --save-preset P.json
    python -m experiments.piea_enhance INPUT... --out DIR --apply-preset P.json

INPUT: image files, folders and glob patterns (8- or 16-bit; 16-bit PNG and TIFF load at full
precision). Per image, DIR receives
  <name>.png                the enhanced image (full resolution; 8-bit, or 16-bit with
                            --bit-depth 16),
  <name>.strategy.json      filter values, the readable strategy line, scores per step,
  <name>.progression.png    with --progression: raw, steps 1, 5, 10, 15, 20 (paper Fig. 4).
Bad inputs get a message naming the file and the reason; the batch goes on and the command
exits non-zero at the end. Inputs are never written; outputs are written atomically; existing
outputs are kept unless --overwrite; DIR is created only when there is something to write.
A bad path argument (--out naming a file, an unreadable preset, ...) is a one-line error.

Presets: --save-preset P.json stores the strategy found for the ONE input image (physical
filter values, filter order, guider, source image; `piea_jax.presets`); with several inputs
it refuses (each image's strategy is in its .strategy.json). --apply-preset P.json renders every
input with the preset at full resolution, without a search (only <name>.png is written).

Devices: every batch is sharded over all local devices (the batch padded to the device
count). Under a multi-process launch (--distributed, which calls jax.distributed.initialize():
automatic on Cloud TPU pod slices, Slurm and Open MPI; otherwise set JAX_COORDINATOR_ADDRESS,
JAX_NUM_PROCESSES and JAX_PROCESS_ID), process k of P takes the k-th of P contiguous slices of
the sorted input list, so the same command runs unchanged on every host.

The guider is the built-in photographic critic (`piea_jax.guiders.photo_critic`, NOT NIMA)
unless `--guider nima --nima-weights PATH --nima-backbone NAME`: PATH is a public NIMA
checkpoint or a directory converted once with `python -m common.weights convert`, NAME its
format (`common.nima.NIMA_BACKBONES`). The guider, backbone, checkpoint path and SHA-256 are
logged and written into every strategy JSON ("guider", "guider_weights"). There is no
random-weight NIMA here: without weights `--guider nima` fails with a message.

--demo enhances photos bundled with scikit-image (astronaut, coffee, chelsea, rocket), first
darkened to 35 % of their values, with the paper's settings (SGD, lr 1e-3, 20 steps) unless
--optimizer/--lr say otherwise; it also writes each darkened input as <name>.input.png.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import jax
import numpy as np
from absl import app, flags, logging
from tqdm import tqdm

from common import cli, distributed
from common.images import (
    ImageLoadError,
    list_images,
    load_image,
    save_image,
    save_text,
    to_uint8,
)
from experiments import piea_flags
from piea_jax import enhance
from piea_jax.enhance import guider_score
from piea_jax.figures import progression_strip
from piea_jax.presets import PresetError, load_preset, make_preset, save_preset
from piea_jax.rendering import local_mesh, render_images
from piea_jax.strategy import strategy_record

_PROGRESSION = flags.DEFINE_bool("progression", False, "Also write <name>.progression.png.")
_DEMO = flags.DEFINE_bool("demo", False, "Enhance darkened photos bundled with scikit-image.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace existing output files.")
_RECURSIVE = flags.DEFINE_bool("recursive", False, "Descend into subfolders of input folders.")
_SAVE_PRESET = flags.DEFINE_string(
    "save-preset", None, "Store the strategy found for the one input image as a preset JSON."
)
_APPLY_PRESET = flags.DEFINE_string(
    "apply-preset", None, "Render the inputs with this preset JSON (no search)."
)
_BIT_DEPTH = flags.DEFINE_enum("bit-depth", "8", ["8", "16"], "Bits per channel of <name>.png.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Multi-process launch: jax.distributed.initialize() (see --help)."
)

flags.adopt_module_key_flags(piea_flags)  # --help lists the shared flags too
_OUT = piea_flags.OUT
_STEPS = piea_flags.STEPS
_LR = piea_flags.LR
_OPTIMIZER = piea_flags.OPTIMIZER
_BATCH_SIZE = piea_flags.BATCH_SIZE
_guider = piea_flags.guider  # (guider, its readable name, the checkpoint record or None)

DEMO_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
DEMO_DARKENING = 0.35
DEFAULT_PREVIEW_SIZE = 256


class _Item:
    """One image of the job: where it comes from, where its outputs go, and its pixels."""

    def __init__(self, name: str, source: Path | None, image: np.ndarray | None = None):
        self.name = name
        self.source = source  # None for a demo photo (its pixels are in `image`)
        self.image = image


# --- Inputs and outputs ------------------------------------------------------------------------


def _inputs(patterns: list[str], failures: list[str]) -> list[_Item]:
    paths: dict[Path, None] = {}
    for pattern in patterns:
        try:
            paths.update(dict.fromkeys(list_images([pattern], recursive=_RECURSIVE.value)))
        except FileNotFoundError as e:
            failures.append(str(e))
            tqdm.write(f"error: {e}", file=sys.stderr)
    items, taken = [], set()
    for path in paths:
        name, k = path.stem, 2
        while name in taken:  # Same file name from different folders: <stem>_2, <stem>_3, …
            name, k = f"{path.stem}_{k}", k + 1
        taken.add(name)
        items.append(_Item(name, path))
    return items


def _demo_items() -> list[_Item]:
    import skimage.data

    items = []
    for name in DEMO_PHOTOS:
        photo = getattr(skimage.data, name)()[..., :3].astype(np.float32) / 255.0
        dark = to_uint8(photo * DEMO_DARKENING)
        items.append(_Item(name, None, dark.astype(np.float32) / 255.0))
    return items


def _write_demo_inputs(items: list[_Item], out: Path, failures: list[str]) -> list[_Item]:
    """Writes each demo photo's darkened input as <name>.input.png; drops those that fail."""
    kept = []
    for item in items:
        if item.source is None:
            try:
                save_image(out / f"{item.name}.input.png", item.image, overwrite=_OVERWRITE.value)
            except FileExistsError as e:
                failures.append(str(e))
                tqdm.write(f"error: {e} (pass --overwrite to replace)", file=sys.stderr)
                continue
        kept.append(item)
    return kept


def _process_share(items: list[_Item]) -> list[_Item]:
    """This process's contiguous slice of the job (all of it in a single-process run)."""
    k, count = jax.process_index(), jax.process_count()
    return items[k * len(items) // count : (k + 1) * len(items) // count]


def _outputs(out: Path, name: str) -> dict[str, Path]:
    paths = {"image": out / f"{name}.png"}
    if _APPLY_PRESET.value:
        return paths
    paths["strategy"] = out / f"{name}.strategy.json"
    if _PROGRESSION.value:
        paths["progression"] = out / f"{name}.progression.png"
    return paths


class _Inputs:
    """The input files, for refusing to write over them (cheap lookups for large corpora)."""

    def __init__(self, paths: list[Path]):
        self.resolved = {p.resolve() for p in paths}
        self.by_name: dict[str, list[Path]] = {}
        for p in paths:
            self.by_name.setdefault(p.name, []).append(p)

    def clashes(self, target: Path) -> bool:
        return target.resolve() in self.resolved

    def named_like(self, target: Path) -> list[Path]:
        """Inputs with the target's file name: what `save_image` double-checks (links too)."""
        return self.by_name.get(target.name, [])


def _batches(items: list[_Item], size: int) -> Iterator[list[_Item]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# --- Reports -----------------------------------------------------------------------------------


def _strategy_record(item, result, i, settings, full_score) -> dict:
    return {
        "input": str(item.source) if item.source else f"skimage.data.{item.name} (demo)",
        **strategy_record(result, i),
        "score_full_resolution": round(float(full_score), 6),
        **settings,
    }


# --- The job -----------------------------------------------------------------------------------


def _fail(failures: list[str], message: str, hint: str = "") -> None:
    failures.append(message)
    tqdm.write(f"error: {message}{hint}", file=sys.stderr)


def _load_batch(batch, out, protected, failures, progress) -> list[_Item]:
    """The batch's images that can be done: outputs free (or --overwrite), input readable."""
    ready = []
    for item in batch:
        targets = _outputs(out, item.name)
        clash = [str(p) for p in targets.values() if protected.clashes(p)]
        if clash:
            _fail(failures, f"{item.source}: refusing to write over an input file: {clash[0]}")
            continue
        existing = [str(p) for p in targets.values() if p.exists()]
        if existing and not _OVERWRITE.value:
            message = f"{item.source or item.name}: output exists: {', '.join(existing)}"
            _fail(failures, message, " (pass --overwrite to replace)")
            continue
        if item.image is None:
            try:
                item.image = load_image(item.source)
            except (ImageLoadError, OSError) as e:
                _fail(failures, str(e))
                continue
        ready.append(item)
    progress.update(len(batch) - len(ready))
    return ready


def _save_output(item, targets, image, protected) -> None:
    """Writes the enhanced image at the chosen bit depth (never over an input)."""
    save_image(
        targets["image"],
        image,
        overwrite=_OVERWRITE.value,
        protected=protected.named_like(targets["image"]),
        bit_depth=int(_BIT_DEPTH.value),
    )


def _enhance_batch(batch, guider, settings, out, protected, failures, progress, mesh) -> int:
    """Enhance one batch and write its outputs; returns how many images succeeded."""
    ready = _load_batch(batch, out, protected, failures, progress)
    if not ready:
        return 0
    result = enhance(
        [item.image for item in ready],
        guider,
        steps=settings["steps"],
        learning_rate=settings["learning_rate"],
        optimizer=settings["optimizer"],
        preview_size=settings["preview_size"],
        mesh=mesh,
    )
    succeeded = 0
    for i, item in enumerate(ready):
        targets = _outputs(out, item.name)
        enhanced = np.asarray(result.images[i])
        record = _strategy_record(item, result, i, settings, guider_score(guider, enhanced))
        try:
            _save_output(item, targets, enhanced, protected)
            record["output"] = str(targets["image"])
            text = json.dumps(record, indent=1, ensure_ascii=False) + "\n"
            save_text(targets["strategy"], text, overwrite=_OVERWRITE.value)
            if "progression" in targets:
                trajectory = jax.tree.map(lambda p, i=i: p[i], result.trajectory.params)
                strip = progression_strip(
                    item.image, trajectory, result.scores[i], record["strategy"]
                )
                save_image(
                    targets["progression"],
                    strip,
                    overwrite=_OVERWRITE.value,
                    protected=protected.named_like(targets["progression"]),
                )
            if _SAVE_PRESET.value:
                params = jax.tree.map(lambda p, i=i: np.asarray(p[i]), result.params)
                preset = make_preset(params, guider=settings["guider"], source=record["input"])
                save_preset(_SAVE_PRESET.value, preset, overwrite=_OVERWRITE.value)
                tqdm.write(f"preset saved: {_SAVE_PRESET.value}", file=sys.stderr)
        except (OSError, ValueError) as e:
            _fail(failures, f"{item.source or item.name}: could not write outputs: {e}")
            continue
        scores = result.scores[i]
        tqdm.write(
            f"{item.name}: {record['strategy']} (S {scores[0]:.2f} -> {scores[-1]:.2f})",
            file=sys.stderr,
        )
        item.image = None  # Free the pixels of finished images.
        succeeded += 1
    progress.update(len(ready))
    return succeeded


def _apply_batch(batch, preset, out, protected, failures, progress, mesh) -> int:
    """Render one batch with a preset (no search) and write the images; returns successes."""
    ready = _load_batch(batch, out, protected, failures, progress)
    if not ready:
        return 0
    rendered = render_images(
        [item.image for item in ready], preset.filters, order=preset.order, mesh=mesh
    )
    succeeded = 0
    for item, image in zip(ready, rendered, strict=True):
        try:
            _save_output(item, _outputs(out, item.name), image, protected)
        except (OSError, ValueError) as e:
            _fail(failures, f"{item.source or item.name}: could not write outputs: {e}")
            continue
        item.image = None
        succeeded += 1
    progress.update(len(ready))
    return succeeded


def _check_paths():
    """Checks the path arguments before any work; returns (out folder, preset or None)."""
    out = Path(_OUT.value)
    piea_flags.check_folder_target("--out", out)
    preset = None
    if _APPLY_PRESET.value:
        try:
            preset = load_preset(_APPLY_PRESET.value)
        except PresetError as e:
            raise piea_flags.PathError(f"--apply-preset {e}") from None
    if _SAVE_PRESET.value:
        target = Path(_SAVE_PRESET.value)
        if target.is_dir():
            raise piea_flags.PathError(f"--save-preset {target}: is a folder, not a file name")
        if target.exists() and not _OVERWRITE.value:
            raise piea_flags.PathError(
                f"--save-preset {target}: file exists (pass --overwrite to replace)"
            )
        piea_flags.check_folder_target("--save-preset", target.parent)
    return out, preset


def main(argv: list[str]) -> int:
    patterns = argv[1:]
    cli.quiet_library_logs()
    if not _OUT.value:
        raise app.UsageError("--out DIR is required")
    if not patterns and not _DEMO.value:
        raise app.UsageError("give input images, folders or globs (or --demo)")
    if _SAVE_PRESET.value and _APPLY_PRESET.value:
        raise app.UsageError("--save-preset and --apply-preset exclude each other")
    try:
        out, preset = _check_paths()
    except piea_flags.PathError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    # Before any JAX computation: a detected (or --distributed) multi-process launch.
    distributed.initialize(force=_DISTRIBUTED.value)
    guider, guider_name, guider_weights = _guider()
    failures: list[str] = []
    items = _inputs(patterns, failures)
    protected = _Inputs([item.source for item in items])
    if _DEMO.value:
        items += _demo_items()
    settings = {
        "guider": guider_name,
        "guider_weights": guider_weights,  # NIMA: backbone, checkpoint path and SHA-256
        "optimizer": _OPTIMIZER.value,
        "learning_rate": _LR.value,
        "steps": _STEPS.value,
        "preview_size": piea_flags.preview_size(DEFAULT_PREVIEW_SIZE),
    }
    if _DEMO.value:
        settings["demo"] = (
            f"inputs are skimage.data photos darkened to {DEMO_DARKENING:.0%} of their values; "
            "demo only, not a benchmark"
        )
    if _SAVE_PRESET.value and protected.clashes(Path(_SAVE_PRESET.value)):
        print(f"error: --save-preset {_SAVE_PRESET.value}: is an input file", file=sys.stderr)
        return 2
    if _SAVE_PRESET.value and len(items) != 1:
        print(
            f"error: --save-preset stores the strategy of one image; {len(items)} inputs were "
            "given (each image's strategy is in its <name>.strategy.json)",
            file=sys.stderr,
        )
        return 2
    items = _write_demo_inputs(_process_share(items), out, failures)
    mesh = local_mesh()
    if mesh.size > 1 or jax.process_count() > 1:
        logging.info(
            "process %d of %d; batches sharded over %d local device(s)",
            jax.process_index(),
            jax.process_count(),
            mesh.size,
        )
    if preset is not None:  # the guider and settings are the search's; a preset needs neither
        job = functools.partial(_apply_batch, preset=preset)
    else:
        job = functools.partial(_enhance_batch, guider=guider, settings=settings)
    done = 0
    # leave=False: the summary line below replaces the bar instead of repeating its last state.
    with tqdm(total=len(items), unit="image", desc="PIEA", leave=False) as progress:
        for batch in _batches(items, _BATCH_SIZE.value):
            done += job(
                batch,
                out=out,
                protected=protected,
                failures=failures,
                progress=progress,
                mesh=mesh,
            )
    where = ""
    if jax.process_count() > 1:
        where = f"process {jax.process_index()} of {jax.process_count()}: "
    into = f"into {out}" if out.exists() else f"({out} not created)"
    how = f"preset: {_APPLY_PRESET.value}" if preset is not None else f"guider: {guider_name}"
    print(f"{where}{done} of {len(items)} image(s) enhanced {into}; {how}", file=sys.stderr)
    return piea_flags.report_failures(failures)


if __name__ == "__main__":
    app.run(main)
