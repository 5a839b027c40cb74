r"""Enhance photos with a trained QAGAN generator G_H.

    python -m experiments.qagan_enhance --checkpoint WORKDIR INPUT... --out DIR [--overwrite]

`--checkpoint` is a work directory of `experiments.qagan_fivek` (its latest complete checkpoint
and its config.json) or one of its checkpoints (`WORKDIR/checkpoints/STEP`). INPUT: image files,
folders and glob patterns. Each image is enhanced at its own size (reflection-padded to a
multiple of 16, then cropped back) and written to DIR/<name>.png. Images of one size are batched
and sharded over the local devices; under a multi-process launch every process takes its own
slice of the sorted file list.

Bad inputs get a message naming the file and the reason; the batch goes on and the command
exits non-zero at the end. Inputs are never written; outputs are written atomically and never
overwritten without --overwrite.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from absl import app, flags

from common import cli, distributed

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Work directory or WORKDIR/checkpoints/STEP.")
_OUT = flags.DEFINE_string("out", None, "Output folder (created if missing).")
_BATCH_SIZE = flags.DEFINE_integer("batch-size", 4, "Images per device call.", lower_bound=1)
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace existing output files.")
_RECURSIVE = flags.DEFINE_bool("recursive", False, "Descend into subfolders of input folders.")
_COORDINATOR = flags.DEFINE_string("coordinator", None, "host:port of process 0 (multi-process).")
_NUM_PROCESSES = flags.DEFINE_integer("num-processes", None, "Processes in the job.")
_PROCESS_ID = flags.DEFINE_integer("process-id", None, "This process's index.")


def _checkpoint_location(path: Path) -> tuple[Path, int | None]:
    """(work directory, step or None for the latest) from --checkpoint."""
    if (path / "config.json").is_file():
        return path, None
    if path.name.isdigit() and (path.parent.parent / "config.json").is_file():
        return path.parent.parent, int(path.name)
    raise FileNotFoundError(
        f"{path}: not a QAGAN work directory (no config.json) nor WORKDIR/checkpoints/STEP"
    )


def main(argv: list[str]) -> int:
    inputs = argv[1:]
    if not _CHECKPOINT.value or not _OUT.value:
        raise app.UsageError("--checkpoint and --out are required")
    if not inputs:
        raise app.UsageError("give input images, folders or glob patterns")
    out = Path(_OUT.value)
    if out.exists() and not out.is_dir():
        print(f"error: --out {out}: exists and is not a folder", file=sys.stderr)
        return 2
    cli.quiet_library_logs()
    distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)

    import jax  # noqa: PLC0415
    import ml_collections  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415
    from tqdm import tqdm  # noqa: PLC0415

    from common.images import ImageLoadError, list_images, load_image, save_image  # noqa: PLC0415
    from qagan_jax import evaluate, train, trainer  # noqa: PLC0415

    try:
        workdir, step = _checkpoint_location(Path(_CHECKPOINT.value).absolute())
        config = ml_collections.ConfigDict(json.loads((workdir / "config.json").read_text()))
        mesh = train.make_mesh(jax.local_devices())
        state, step = trainer.restore_state(workdir, config, mesh, step)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    failures: list[str] = []
    paths = []
    for pattern in inputs:
        try:
            paths += list_images([pattern], recursive=_RECURSIVE.value)
        except FileNotFoundError as e:
            failures.append(str(e))
    paths = sorted(dict.fromkeys(paths), key=str)
    resolved_inputs = {p.resolve() for p in paths}
    names, taken = {}, set()
    for p in paths:  # one output name per input; same stems from other folders get _2, _3, ...
        name, k = p.stem, 2
        while name in taken:
            name, k = f"{p.stem}_{k}", k + 1
        taken.add(name)
        names[p] = name
    mine = paths[jax.process_index() :: jax.process_count()]
    enhancer = evaluate.Enhancer(state, mesh)
    done = 0

    def flush(group):
        nonlocal done
        outputs = enhancer(state, np.stack([image for _, image in group]))
        for (path, _), output in zip(group, outputs, strict=True):
            target = out / f"{names[path]}.png"
            try:
                if target.resolve() in resolved_inputs:
                    raise ValueError(f"{target}: refusing to write over an input file")
                save_image(target, output, overwrite=_OVERWRITE.value, protected=[path])
                done += 1
            except (OSError, ValueError) as e:
                failures.append(f"{path}: could not write the output: {e}")
                tqdm.write(f"error: {failures[-1]}", file=sys.stderr)

    groups: dict[tuple, list] = {}
    with tqdm(total=len(mine), unit="image", desc=f"QAGAN G_H (step {step})") as bar:
        for path in mine:
            target = out / f"{names[path]}.png"
            if target.exists() and not _OVERWRITE.value:
                failures.append(f"{path}: output exists: {target} (pass --overwrite to replace)")
                tqdm.write(f"error: {failures[-1]}", file=sys.stderr)
                bar.update(1)
                continue
            try:
                image = load_image(path)
            except (ImageLoadError, OSError) as e:
                failures.append(str(e))
                tqdm.write(f"error: {e}", file=sys.stderr)
                bar.update(1)
                continue
            group = groups.setdefault(image.shape, [])
            group.append((path, image))
            if len(group) == _BATCH_SIZE.value:
                flush(groups.pop(image.shape))
                bar.update(_BATCH_SIZE.value)
        for shape in list(groups):
            group = groups.pop(shape)
            flush(group)
            bar.update(len(group))
    print(f"{done} of {len(mine)} image(s) enhanced into {out}", file=sys.stderr)
    if failures:
        print(f"{len(failures)} failure(s):", file=sys.stderr)
        for failure in failures:
            print(f"  {failure}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    app.run(main)
