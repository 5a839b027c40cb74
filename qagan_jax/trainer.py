"""The QAGAN training loop (spec/qagan.md section 7): data -> jit step -> metrics, checkpoints,
samples and evaluation, resumable from its work directory.

`train_and_evaluate(config, workdir, dataset)` is the whole job behind
`python -m experiments.qagan_fivek`. The work directory holds

    config.json        the resolved config (a re-run resumes with it; a different one is refused)
    split.json         the data: description, layout, split and every split's id list
    metrics.jsonl      one JSON line per logged step (all losses, lr, steps/s, examples/s), per
                       validation pass and per (re)start; each line names the VGG-19 weights
    checkpoints/N/     Orbax: the full `TrainState` and the grain iterator state of every process
    samples/           PNG grids every `train.sample_every` steps: input / G_H output / reference
    eval/              the final evaluation (and the first checkpoint's) as JSON, and table.txt

Resuming: the latest *complete* checkpoint is restored (Orbax writes into a temporary directory
and renames it when done, so a run killed mid-save leaves nothing that looks finished), with the
data iterator, so a resumed run continues with exactly the parameters and batches an
uninterrupted run would have. Ctrl-C saves a checkpoint and stops (a second Ctrl-C stops at
once). A non-finite loss stops training with `train.NonFiniteLossError`; the step discards such
an update on device, and nothing is saved after it, so the last checkpoint stays good.

The loop never waits for the device except at log, checkpoint, sample and evaluation steps: the
step's metrics stay on device until the next log step. Under several processes
(`jax.distributed`), every process runs this function; each feeds its share of the global batch,
and only process 0 writes files other than checkpoints.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from tqdm import tqdm

from common import data as qdata
from common import nima
from common.images import save_image, to_uint8
from common.training import (  # noqa: F401  (WorkdirMismatchError, prepare_workdir re-exported)
    MetricsWriter,
    WorkdirMismatchError,
    checkpoint_manager,
    fetch_window,
    is_main,
    loop_context,
    prepare_workdir,
    restore_checkpoint,
    restore_latest,
    save_checkpoint,
    sharded_abstract,
    window_record,
    write_json,
)
from common.training import make_batch as _make_batch  # a module name tests can patch
from qagan_jax import evaluate as qeval
from qagan_jax import train

logger = logging.getLogger(__name__)


def _sample_records(dataset: qdata.Dataset, count: int, size: int) -> list[dict]:
    """A few fixed images for the PNG grids: paired val/test images when there are any, else the
    first low-quality training images (no reference row); centre crops of one common side (at
    most `size`, a multiple of 16)."""
    paired = dataset.val if dataset.val is not None else dataset.test
    source = paired if paired is not None else dataset.train_low
    records = [source[i] for i in range(min(count, len(source)))]
    if not records:
        return []
    side = min([size] + [min(r["image"].shape[:2]) for r in records])
    side -= side % qeval.MULTIPLE
    keys = ("image", "label") if all("label" in r for r in records) else ("image",)
    return [{k: _centre_crop(r[k], side) for k in keys} for r in records]


def _centre_crop(image: np.ndarray, side: int) -> np.ndarray:
    h, w = image.shape[:2]
    top, left = (h - side) // 2, (w - side) // 2
    return image[top : top + side, left : left + side]


def write_sample_grid(path: Path, records: list[dict], outputs: np.ndarray) -> None:
    """Rows input / G_H output / reference (if any), one column per image, 2 px white gaps."""
    rows = [[r["image"] for r in records], list(outputs)]
    if all("label" in r for r in records):
        rows.append([r["label"] for r in records])
    h, w = records[0]["image"].shape[:2]
    gap = 2
    grid = np.full((len(rows) * (h + gap) - gap, len(records) * (w + gap) - gap, 3), 255, np.uint8)
    for i, row in enumerate(rows):
        for j, image in enumerate(row):
            grid[i * (h + gap) : i * (h + gap) + h, j * (w + gap) : j * (w + gap) + w] = to_uint8(
                image if image.dtype != np.uint8 else image
            )
    save_image(path, grid, overwrite=True)


def _nima_scorer(eval_cfg: ml_collections.ConfigDict):
    """(description, scorer or None) for the NIMA mean score of the evaluation."""
    if not eval_cfg.nima_weights:
        return "NIMA: not computed (no --config.eval.nima_weights)", None
    model = nima.load_nima(eval_cfg.nima_weights, backbone=eval_cfg.nima_backbone)

    def score(images):
        return np.asarray(nima.nima_quality(images, model, protocol=eval_cfg.nima_protocol))

    return f"NIMA: {eval_cfg.nima_backbone} from {eval_cfg.nima_weights}", score


def _abstract_state(config, mesh) -> train.TrainState:
    # The states are replicated (train.state_shardings): every leaf on every device.
    return sharded_abstract(train.abstract_train_state(config, jax.random.key(config.seed)), mesh)


def restore_state(workdir, config, mesh, step: int | None = None) -> tuple[train.TrainState, int]:
    """(TrainState, step) of the latest (or given) complete checkpoint in a work directory."""
    return restore_latest(Path(workdir), _abstract_state(config, mesh), step)


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str | os.PathLike,
    dataset: qdata.Dataset,
    *,
    resume_config: bool = False,
    mesh=None,
    compiler_options: Mapping[str, Any] | None = None,
    stop_after: int | None = None,
) -> dict:
    """Trains QAGAN (or resumes it) in `workdir`, then evaluates G_H; returns the evaluation.

    Args:
      config: the `qagan_jax.config` ConfigDict (`opt.steps_per_epoch` -1 is resolved from the
        data). With `resume_config`, an existing work directory's config wins (see
        `prepare_workdir`).
      workdir: the work directory (see the module docstring).
      dataset: `common.data.open_dataset(...)`.
      mesh: the device mesh (default: every device of every process on one `data` axis).
      compiler_options: extra XLA options for the compiled steps (tests use fast-compile ones).
      stop_after: stop (with a checkpoint) once this many steps are done in total — for tests
        and for splitting a run; None trains to the end of the schedule.

    Returns:
      The final evaluation's dict (`evaluate.evaluate`), with "table", or {} when the data
      has no paired split to evaluate on.
    """
    workdir = Path(workdir)
    config = train.resolve_steps_per_epoch(
        ml_collections.ConfigDict(config.to_dict()),
        len(dataset.train_low),
        len(dataset.train_high),
    )
    config = prepare_workdir(workdir, config, dataset.split, resume_config=resume_config)
    mesh = train.make_mesh() if mesh is None else mesh
    num_steps = train.num_train_steps(config)
    t = config.train
    if t.batch_size % mesh.size:
        raise ValueError(f"train.batch_size={t.batch_size} must divide by the {mesh.size} devices")

    metrics_log = MetricsWriter(workdir / "metrics.jsonl", vgg=train.encoder_description(config))
    state = train.create_train_state(
        config, jax.random.key(config.seed), mesh, compiler_options=compiler_options
    )
    data_iter = qdata.train_iterator(
        dataset.train_low,
        dataset.train_high,
        global_batch_size=t.batch_size,
        crop_size=config.data.crop_size,
        image_size=config.data.image_size,
        seed=config.seed,
        worker_count=config.data.worker_count,
    )
    manager = checkpoint_manager(workdir, t.keep_checkpoints)
    start = manager.latest_step() or 0
    if start:
        state = restore_checkpoint(manager, start, _abstract_state(config, mesh), data_iter)
        logger.info("resumed from %s at step %d", workdir / "checkpoints", start)
    sharding = train.batch_sharding(mesh)
    key = jax.random.key(config.seed)
    # Compiled ahead of the loop, so that the first logged steps/s is not the compile time.
    t0 = time.perf_counter()
    image = jax.ShapeDtypeStruct(
        (t.batch_size, config.data.image_size, config.data.image_size, 3), np.float32,
        sharding=sharding,
    )  # fmt: skip
    step_fn = (
        train.jit_train_step(state, mesh, compiler_options=compiler_options)
        .lower(state, {"low": image, "high": image}, key)
        .compile()
    )
    compile_s = time.perf_counter() - t0
    metrics_log.write(
        type="start", step=start, num_steps=num_steps, data=dataset.description,
        devices=mesh.size, processes=jax.process_count(), platform=mesh.devices.flat[0].platform,
        compile_s=round(compile_s, 3),
    )  # fmt: skip
    enhancer = qeval.Enhancer(state, mesh, compiler_options=compiler_options)
    samples = _sample_records(dataset, t.num_samples, 4 * config.data.image_size)
    end = num_steps if stop_after is None else min(num_steps, stop_after)

    pending: list[tuple[int, dict]] = []
    step = start
    window_start = time.perf_counter()
    with loop_context(manager, total=num_steps, initial=start, desc="QAGAN") as (interrupt, bar):
        while step < end and not interrupt.requested:
            batch = _make_batch(next(data_iter), sharding)
            state, metrics = step_fn(state, batch, jax.random.fold_in(key, step))
            step += 1
            pending.append((step, metrics))
            bar.update(1)
            last = step == end
            log_now = step % t.log_every == 0 or last
            checkpoint_now = step % t.checkpoint_every == 0 or last or interrupt.requested
            if log_now or checkpoint_now:
                # The one host sync: every step's metrics since the last check, NaN check first.
                losses = fetch_window(
                    pending, window_start=window_start, batch_size=t.batch_size, what="QAGAN"
                )
                metrics_log.write(type="train", step=step, **losses)
                bar.set_postfix(
                    g=f"{losses['g_total']:.3f}", d=f"{losses['d_total']:.3f}",
                    cyc=f"{losses['cycle']:.3f}", refresh=False,
                )  # fmt: skip
                window_start = time.perf_counter()
            if checkpoint_now:
                save_checkpoint(manager, step, state, data_iter)
            extra_work = False
            if t.sample_every and (step % t.sample_every == 0 or last) and samples:
                outputs = enhancer(state, np.stack([r["image"] for r in samples]))
                if is_main():
                    write_sample_grid(
                        workdir / "samples" / f"step_{step:07d}.png", samples, outputs
                    )
                extra_work = True
            if t.eval_every and step % t.eval_every == 0 and not last:
                _periodic_eval(config, dataset, enhancer, state, step, metrics_log)
                extra_work = True
            if checkpoint_now and not _stored_eval(workdir, dataset):
                # The first checkpoint's evaluation, kept for the final table (did it learn?).
                _evaluate_and_store(config, workdir, dataset, enhancer, state, step)
                extra_work = True
            if extra_work:
                window_start = time.perf_counter()
    if step < num_steps:
        metrics_log.write(type="stop", step=step, reason="interrupted" if interrupt.requested
                          else "stop_after")  # fmt: skip
        if interrupt.requested:
            raise KeyboardInterrupt(f"stopped at step {step}; checkpoint saved in {workdir}")
        return {}
    return final_evaluation(config, workdir, dataset, mesh, compiler_options=compiler_options)


def _eval_split(dataset: qdata.Dataset, name: str):
    return {"val": dataset.val, "test": dataset.test}.get(name)


def _periodic_eval(config, dataset, enhancer, state, step, metrics_log) -> None:
    """A validation pass (val, else test; at most `eval.max_images` images) -> metrics.jsonl."""
    name = "val" if dataset.val is not None else "test"
    source = _eval_split(dataset, name)
    if source is None:
        return
    records = qdata.eval_dataset(source)
    if config.eval.max_images > 0:
        records = (r for i, r in zip(range(config.eval.max_images), records, strict=False))
    t0 = time.perf_counter()
    result = qeval.evaluate(
        functools.partial(enhancer, state),
        records,
        round_trip_8bit=config.eval.round_trip_8bit,
        border=config.eval.border,
    )
    metrics_log.write(
        type="eval", step=step, split=name, n=result["n"],
        psnr=result["enhanced"]["psnr"], ssim=result["enhanced"]["ssim"],
        input_psnr=result["input"]["psnr"], input_ssim=result["input"]["ssim"],
        seconds=time.perf_counter() - t0,
    )  # fmt: skip


def _stored_eval(workdir: Path, dataset: qdata.Dataset) -> list[Path]:
    """Evaluations already stored in the work directory (eval/<split>_step_N.json)."""
    return sorted((workdir / "eval").glob("*_step_*.json"))


def _evaluate_and_store(config, workdir, dataset, enhancer, state, step) -> dict:
    """Evaluates `eval.split` (falling back to the other paired split) and stores the JSON."""
    name = config.eval.split
    if _eval_split(dataset, name) is None:
        name = "val" if name == "test" else "test"
    source = _eval_split(dataset, name)
    if source is None:
        return {}
    nima_description, nima_score = _nima_scorer(config.eval)
    records = qdata.eval_dataset(source)
    with tqdm(total=len(source), desc=f"evaluate {name}", unit="image",
              disable=not is_main(), leave=False) as bar:  # fmt: skip
        result = qeval.evaluate(
            functools.partial(enhancer, state),
            records,
            round_trip_8bit=config.eval.round_trip_8bit,
            border=config.eval.border,
            nima_score=nima_score,
            on_batch=bar.update,
        )
    result.update(
        step=step, split=name, data=dataset.description, nima_weights=nima_description,
        vgg=train.encoder_description(config),
    )  # fmt: skip
    write_json(workdir / "eval" / f"{name}_step_{step:07d}.json", result)
    return result


def final_evaluation(config, workdir: Path, dataset, mesh, *, compiler_options=None) -> dict:
    """Evaluates the last checkpoint (unless stored already), writes eval/table.txt, prints it.

    The table shows the input baseline, G_H at the first stored evaluation (the first
    checkpoint) when it differs from the last, G_H at the last checkpoint, and the paper's rows.
    """
    state, step = restore_state(workdir, config, mesh)
    stored = {int(p.stem.rsplit("_", 1)[1]): p for p in _stored_eval(workdir, dataset)}
    if step in stored:
        result = json.loads(stored[step].read_text())
    else:
        enhancer = qeval.Enhancer(state, mesh, compiler_options=compiler_options)
        result = _evaluate_and_store(config, workdir, dataset, enhancer, state, step)
    if not result:
        logger.info("no paired split to evaluate on (%s)", dataset.description)
        return {}
    first = min(stored) if stored else step
    rows = {}
    if first != step:
        rows[f"G_H at step {first} (first checkpoint)"] = json.loads(stored[first].read_text())
    title = (
        f"QAGAN, {result['split']} split: {result['data']}\n"
        f"Encoder: {result['vgg']}. {result['nima_weights']}. G_H at step {step}."
    )
    table = qeval.format_table(result, title=title, label=f"G_H at step {step}", rows=rows)
    if is_main():
        (workdir / "eval" / "table.txt").write_text(table + "\n")
    result["table"] = table
    return result
