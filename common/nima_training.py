"""Training NIMA on AVA with the EMD loss (Talebi & Milanfar 2018): state, step, loop, evaluation.

The state is one pytree (`TrainState`): the NIMA's parameters and batch statistics (from
`nnx.split`), the SGD-momentum state and the step; the GraphDef and the optax transformation
ride along as static fields. `train_step(state, batch, key)` merges, runs the model in training
mode (dropout 0.75 before the head, its key `fold_in(key, step)`; batch norm on batch
statistics, its running averages updated), takes the EMD (r = 2) gradient, and applies SGD with
momentum: the head at `opt.head_lr`, the backbone at `opt.backbone_lr` (ten times smaller),
through `optax.multi_transform` on the top-level `head` / `backbone` parameter paths, both
decayed x`decay_rate` every `decay_epochs` epochs. A non-finite loss discards the update on
device and stops the loop. `eval_step` runs the model in evaluation mode.

`train_and_evaluate(config, workdir, data)` is the job behind `python -m experiments.nima_ava`.
The work directory holds

    config.json, split.json   the config and the split (a re-run must match; see
                              common.training.prepare_workdir)
    ava_skipped.json          AVA.txt lines and images left out, each with the reason
    metrics.jsonl             train lines (loss, lr_head, lr_backbone, steps/s, examples/s),
                              val lines (EMD, LCC, SRCC, accuracy) and start/stop lines
    checkpoints/N/            Orbax: the TrainState and the grain iterator state
    eval.json                 the test evaluation of the last checkpoint, with the table
    export/                   the trained NIMA for `common.nima.load_nima(WORKDIR, backbone=...)`

Resuming restores the latest complete checkpoint with the data iterator, so a resumed run
continues with exactly the parameters and batches of an uninterrupted one. Ctrl-C saves and
stops. A finished work directory only prints its stored table.
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
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx, struct
from jax.experimental import multihost_utils
from jax.sharding import Mesh
from tqdm import tqdm

from common import nima, nima_config, nima_metrics, training, xla_options
from common.data import ava
from common.training import (
    MetricsWriter,
    batch_sharding,
    checkpoint_manager,
    fetch_window,
    is_main,
    loop_context,
    make_batch,
    make_mesh,
    prepare_workdir,
    replicated,
    restore_checkpoint,
    restore_latest,
    save_checkpoint,
    sharded_abstract,
    write_json,
)

logger = logging.getLogger(__name__)

# The NIMA paper's AVA row for its Inception-v2 (BN-Inception) backbone (Table I), as cited by
# issue 13. The paper's two-class accuracy is not cited here (not checked against the paper).
PAPER_ROWS = {"NIMA paper, Inception-v2 (AVA)": {"emd": 0.050, "lcc": 0.638, "srcc": 0.612}}
EVAL_FILE = "eval.json"
SKIPPED_FILE = "ava_skipped.json"


@struct.dataclass
class TrainState:
    """Everything that changes during training, as one pytree (+ static structure)."""

    step: jax.Array  # int32 scalar: completed steps
    params: nnx.State  # nnx.Param of the NIMA (backbone and head)
    batch_stats: nnx.State  # nnx.BatchStat running averages (empty for VGG16)
    rng: nnx.State  # dropout RNG streams as built (unused: each step makes its own)
    opt_state: optax.OptState
    graphdef: nnx.GraphDef = struct.field(pytree_node=False)
    tx: optax.GradientTransformation = struct.field(pytree_node=False)
    schedules: tuple = struct.field(pytree_node=False)  # (head, backbone) learning rates


def learning_rate_schedules(opt_cfg: ml_collections.ConfigDict) -> tuple:
    """(head, backbone) schedules: the rate x decay_rate every decay_epochs epochs (staircase);
    `steps_per_epoch` must be resolved."""
    if opt_cfg.steps_per_epoch < 1:
        raise ValueError(f"opt.steps_per_epoch={opt_cfg.steps_per_epoch}: resolve it first")
    every = max(1, int(opt_cfg.decay_epochs * opt_cfg.steps_per_epoch))
    return tuple(
        optax.exponential_decay(rate, every, opt_cfg.decay_rate, staircase=True)
        for rate in (opt_cfg.head_lr, opt_cfg.backbone_lr)
    )


def _param_group(path, _) -> str:
    top = getattr(path[0], "key", None)
    if top not in ("head", "backbone"):
        raise ValueError(f"NIMA parameter outside head/backbone: {jax.tree_util.keystr(path)}")
    return top


def param_labels(params) -> Any:
    """The params tree with "head" or "backbone" at every leaf (by the top-level path)."""
    return jax.tree_util.tree_map_with_path(_param_group, params)


@functools.cache
def _static_parts(config_json: str):
    """(tx, schedules) per distinct config, cached so that equal configs share them (jit keys
    on static fields: a restored state reuses the compiled step)."""
    config = ml_collections.ConfigDict(json.loads(config_json))
    head, backbone = learning_rate_schedules(config.opt)
    momentum = config.opt.momentum
    tx = optax.multi_transform(
        {"head": optax.sgd(head, momentum), "backbone": optax.sgd(backbone, momentum)},
        param_labels,
    )
    return tx, (head, backbone)


def _make_model(config, key) -> nnx.Module:
    model = nima.make_nima(config.model.backbone, rngs=nnx.Rngs(key), **nima_config.arch(config))
    model.train()
    return model


def _init_state(config: ml_collections.ConfigDict, key: jax.Array) -> TrainState:
    tx, schedules = _static_parts(config.to_json(sort_keys=True))
    graphdef, params, batch_stats, rng = nnx.split(
        _make_model(config, key), nnx.Param, nnx.BatchStat, ...
    )
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=batch_stats,
        rng=rng,
        opt_state=tx.init(params),
        graphdef=graphdef,
        tx=tx,
        schedules=schedules,
    )


@functools.cache
def _initializer(config_json: str):
    """`_init_state` of one config as a function of the key: one object per distinct config,
    so that `jit` and `eval_shape` find their earlier traces and compilations (BN-Inception's
    initialisation takes seconds to trace and compile; resuming and evaluating need it again)."""
    return functools.partial(_init_state, ml_collections.ConfigDict(json.loads(config_json)))


def abstract_train_state(config, key) -> TrainState:
    """`jax.eval_shape` of the state: the restore target for Orbax."""
    return jax.eval_shape(_initializer(config.to_json(sort_keys=True)), key)


def create_train_state(config, key, mesh, *, compiler_options=None) -> TrainState:
    """The initial state, replicated over `mesh` (made inside `jit`: nothing big on the host).

    With `model.imagenet_weights` the backbone is loaded from it
    (`common.nima.load_imagenet_backbone`); otherwise a warning says it is random.
    """
    init = jax.jit(
        _initializer(config.to_json(sort_keys=True)),
        out_shardings=replicated(mesh),
        compiler_options=xla_options.compiler_options(mesh.devices.flat, compiler_options),
    )
    with jax.threefry_partitionable(False):  # replicated state: see qagan_jax.train
        state = init(key)
    path = config.model.imagenet_weights
    if not path:
        logger.warning(
            "NIMA %s: the backbone starts from RANDOM weights (no --imagenet-weights); the "
            "paper fine-tunes an ImageNet network, and a random one will not reach its scores",
            config.model.backbone,
        )
        return state
    model = nnx.merge(state.graphdef, state.params, state.batch_stats, state.rng)
    nima.load_imagenet_backbone(model, path, backbone=config.model.backbone)
    _, params, batch_stats, _ = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
    logger.info("NIMA %s: ImageNet backbone from %s", config.model.backbone, path)
    params, batch_stats = jax.device_put((params, batch_stats), replicated(mesh))
    return state.replace(params=params, batch_stats=batch_stats, opt_state=state.tx.init(params))


def weights_description(config) -> str:
    """What the backbone started from, for reports."""
    path = config.model.imagenet_weights
    return f"ImageNet backbone from {path}" if path else "random backbone (no ImageNet weights)"


def _seed_dropout(model: nnx.Module, key: jax.Array) -> None:
    """Gives every Dropout of `model` a fresh stream from `key` (one fold_in per layer).

    The streams are made here, inside the traced step: NNX refuses to advance a stream whose
    variables come from outside the current trace (the stored `TrainState.rng` is only there
    to keep the GraphDef whole).
    """
    dropouts = [m for _, m in nnx.iter_modules(model) if isinstance(m, nnx.Dropout)]
    for i, layer in enumerate(dropouts):
        layer.rngs = nnx.Rngs(dropout=jax.random.fold_in(key, i)).dropout


def training_loss(params, state: TrainState, batch, dropout_key):
    """(batch-mean EMD, updated batch statistics) of the model with `params` in training mode;
    the dropout masks come from `dropout_key`."""
    # Fresh Variables of this trace (tree.map rebuilds them): NNX refuses to update batch
    # statistics held in Variables that belong to an enclosing trace.
    batch_stats = jax.tree.map(lambda x: x, state.batch_stats)
    model = nnx.merge(state.graphdef, params, batch_stats, state.rng)
    _seed_dropout(model, dropout_key)
    probs = model(batch["image"])
    return nima_metrics.emd_loss(probs, batch["dist"]), nnx.state(model, nnx.BatchStat)


def train_step(state: TrainState, batch: Mapping[str, jax.Array], key: jax.Array):
    """One SGD step on the EMD loss (module docstring).

    Args:
      state: the `TrainState`.
      batch: {"image": (B, H, W, 3) in [0, 1], "dist": (B, 10) vote distributions}.
      key: the run's PRNG key; the dropout key is `fold_in(key, step)`.

    Returns:
      (new state, metrics): `loss` (batch-mean EMD), `lr_head`, `lr_backbone` (at this step),
      `finite` (1 if the loss was finite; if not, the returned state is the input state).
    """
    (loss, batch_stats), grads = jax.value_and_grad(training_loss, has_aux=True)(
        state.params, state, batch, jax.random.fold_in(key, state.step)
    )
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    finite = jnp.isfinite(loss)
    new_state = state.replace(
        step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state
    )
    # Discard the whole update on a NaN/Inf loss; the host stops on metrics["finite"] == 0.
    new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state)
    head, backbone = state.schedules
    metrics = {
        "loss": loss,
        "lr_head": jnp.asarray(head(state.step), jnp.float32),
        "lr_backbone": jnp.asarray(backbone(state.step), jnp.float32),
        "finite": finite.astype(jnp.float32),
    }
    return new_state, metrics


def eval_model(state: TrainState) -> nnx.Module:
    """The NIMA of a state in evaluation mode (dropout off, batch norm on running averages)."""
    model = nnx.merge(state.graphdef, state.params, state.batch_stats, state.rng)
    model.eval()
    return model


def eval_step(state: TrainState, images: jax.Array) -> jax.Array:
    """(N, 10) predicted score distributions of (N, H, W, 3) images in [0, 1], eval mode."""
    return eval_model(state)(images)


def jit_train_step(state, mesh, *, compiler_options=None):
    """`train_step` compiled with explicit shardings (`common.training.jit_train_step`: the
    state replicated and donated, the batch split over `data`)."""
    return training.jit_train_step(train_step, state, mesh, compiler_options=compiler_options)


def jit_eval_step(state, mesh, *, compiler_options=None):
    """`eval_step` compiled with the batch split over `data`."""
    return training.jit_eval_step(eval_step, state, mesh, compiler_options=compiler_options)


def resolve_steps_per_epoch(config, num_train: int):
    """Sets `opt.steps_per_epoch` = ceil(num_train / batch) if the config says -1."""
    if config.opt.steps_per_epoch < 1:
        config.opt.steps_per_epoch = max(1, -(-num_train // config.train.batch_size))
    return config


def num_train_steps(config) -> int:
    return int(config.opt.num_epochs * config.opt.steps_per_epoch)


# --- Evaluation ----------------------------------------------------------------------------------


def score_metrics(pred_probs, true_probs) -> dict[str, float]:
    """EMD (mean), LCC and SRCC of mean scores, binary accuracy at 5, and n, of (N, 10) arrays."""
    pred_probs, true_probs = np.asarray(pred_probs), np.asarray(true_probs)
    pred, true = nima.mean_score(pred_probs), nima.mean_score(true_probs)
    return {
        "n": int(len(pred_probs)),
        "emd": float(nima_metrics.emd_loss(pred_probs, true_probs)),
        "lcc": float(nima_metrics.lcc(pred, true)),
        "srcc": float(nima_metrics.srcc(pred, true)),
        "accuracy": float(nima_metrics.binary_accuracy(pred, true)),
    }


def evaluate(step_fn, state, source, mesh, *, batch_size, crop, max_images=-1, desc="eval"):
    """Predicted and true distributions over a split (the first `max_images` when > 0), then
    `score_metrics`. Every process runs it; the numbers are the same on all."""
    if 0 < max_images < len(source):
        source = _Head(source, max_images)
    sharding = batch_sharding(mesh)
    preds, trues = [], []
    batches = ava.eval_batches(source, global_batch_size=batch_size, crop=crop)
    total = -(-len(source) // batch_size)
    for local in tqdm(batches, total=total, desc=desc, unit="batch", leave=False,
                      disable=not is_main()):  # fmt: skip
        probs = step_fn(state, make_batch({"image": local["image"]}, sharding)["image"])
        probs, dist, valid = (_gather(x) for x in (probs, local["dist"], local["valid"]))
        preds.append(probs[valid])
        trues.append(dist[valid])
    return score_metrics(np.concatenate(preds), np.concatenate(trues))


def _gather(x) -> np.ndarray:
    """A batch-sharded global array, or this process's rows, as the whole batch on the host."""
    if jax.process_count() > 1:
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


class _Head:
    """The first `n` records of a source."""

    def __init__(self, source, n: int):
        self.source, self.n = source, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int):
        return self.source[index]


def format_table(result: Mapping, *, title: str, label: str) -> str:
    """The evaluation beside the paper's AVA row(s): one screen of plain text."""
    header = f"{'':38s} {'EMD':>7s} {'LCC':>7s} {'SRCC':>7s} {'Acc@5':>7s}"
    rows = [title, header, "-" * len(header)]
    rows.append(
        f"{label:38s} {result['emd']:7.3f} {result['lcc']:7.3f} {result['srcc']:7.3f} "
        f"{100 * result['accuracy']:6.1f}%"
    )
    for name, paper in PAPER_ROWS.items():
        rows.append(
            f"{name:38s} {paper['emd']:7.3f} {paper['lcc']:7.3f} {paper['srcc']:7.3f} {'-':>7s}"
        )
    rows.append(
        "EMD: r = 2 on cumulative distributions, mean over images. LCC/SRCC: of mean scores. "
        "Acc@5: mean score > 5 vs ground truth > 5."
    )
    return "\n".join(rows)


# --- The loop ------------------------------------------------------------------------------------


def _abstract_state(config, mesh) -> TrainState:
    # The states are replicated (state_shardings): every leaf on every device.
    return sharded_abstract(abstract_train_state(config, jax.random.key(config.seed)), mesh)


def restore_state(workdir, config, mesh, step: int | None = None) -> tuple[TrainState, int]:
    """(TrainState, step) of the latest (or given) complete checkpoint in a work directory."""
    return restore_latest(Path(workdir), _abstract_state(config, mesh), step)


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str | os.PathLike,
    data: ava.AvaData,
    *,
    resume_config: bool = False,
    mesh: Mesh | None = None,
    compiler_options: Mapping[str, Any] | None = None,
    stop_after: int | None = None,
) -> dict:
    """Trains NIMA on AVA (or resumes), evaluates the test split and exports the model.

    Args:
      config: a `common.nima_config` ConfigDict (with `resume_config`, an existing work
        directory's config wins).
      workdir: the work directory (module docstring).
      data: `common.data.ava.open_ava(...)`.
      mesh: the device mesh (default: every device on one `data` axis).
      compiler_options: extra XLA options (tests use fast-compile ones).
      stop_after: stop with a checkpoint once this many steps are done (tests; resuming).

    Returns:
      The test evaluation (`eval.json`: emd, lcc, srcc, accuracy, n, step, table, ...), or {}
      when stopped early.
    """
    workdir = Path(workdir)
    config = resolve_steps_per_epoch(ml_collections.ConfigDict(config.to_dict()), len(data.train))
    split = {**data.split, "description": data.description}
    config = prepare_workdir(workdir, config, split, resume_config=resume_config)
    if (workdir / EVAL_FILE).exists() and (workdir / nima.NIMA_EXPORT_DIR).exists():
        return json.loads((workdir / EVAL_FILE).read_text())  # finished: nothing to do
    write_json(workdir / SKIPPED_FILE, data.skipped)
    mesh = make_mesh() if mesh is None else mesh
    t = config.train
    for name, size in (("train.batch_size", t.batch_size), ("eval.batch_size",
                                                            config.eval.batch_size)):  # fmt: skip
        if size % mesh.size:
            raise ValueError(f"{name}={size} must divide by the {mesh.size} devices")
    num_steps = num_train_steps(config)
    metrics_log = MetricsWriter(workdir / "metrics.jsonl", weights=weights_description(config))
    key = jax.random.key(config.seed)
    state = create_train_state(config, key, mesh, compiler_options=compiler_options)
    data_iter = ava.train_iterator(
        data.train,
        global_batch_size=t.batch_size,
        crop=config.data.crop,
        seed=config.seed,
        worker_count=config.data.worker_count,
    )
    manager = checkpoint_manager(workdir, t.keep_checkpoints)
    start = manager.latest_step() or 0
    if start:
        state = restore_checkpoint(manager, start, _abstract_state(config, mesh), data_iter)
        logger.info("resumed from %s at step %d", workdir / "checkpoints", start)
    sharding = batch_sharding(mesh)
    crop = config.data.crop
    t0 = time.perf_counter()
    batch_spec = {
        "image": jax.ShapeDtypeStruct((t.batch_size, crop, crop, 3), np.float32, sharding=sharding),
        "dist": jax.ShapeDtypeStruct((t.batch_size, 10), np.float32, sharding=sharding),
    }
    step_fn = (
        jit_train_step(state, mesh, compiler_options=compiler_options)
        .lower(state, batch_spec, key)
        .compile()
    )
    eval_fn = jit_eval_step(state, mesh, compiler_options=compiler_options)
    metrics_log.write(
        type="start", step=start, num_steps=num_steps, data=data.description,
        backbone=config.model.backbone, arch=nima_config.arch(config), devices=mesh.size,
        processes=jax.process_count(), compile_s=round(time.perf_counter() - t0, 3),
    )  # fmt: skip
    end = num_steps if stop_after is None else min(num_steps, stop_after)

    pending: list[tuple[int, dict]] = []
    step = start
    window_start = time.perf_counter()
    with loop_context(manager, total=num_steps, initial=start, desc="NIMA") as (interrupt, bar):
        while step < end and not interrupt.requested:
            batch = make_batch(next(data_iter), sharding)
            state, metrics = step_fn(state, batch, key)
            step += 1
            pending.append((step, metrics))
            bar.update(1)
            last = step == end
            checkpoint_now = step % t.checkpoint_every == 0 or last or interrupt.requested
            if step % t.log_every == 0 or checkpoint_now:
                # The one host sync: every step's metrics since the last one, NaN check first.
                record = fetch_window(
                    pending, window_start=window_start, batch_size=t.batch_size, what="NIMA"
                )
                metrics_log.write(type="train", step=step, **record)
                bar.set_postfix(emd=f"{record['loss']:.4f}", refresh=False)
                window_start = time.perf_counter()
            if checkpoint_now:
                save_checkpoint(manager, step, state, data_iter)
            if t.eval_every and step % t.eval_every == 0 and not last and len(data.val):
                result = evaluate(
                    eval_fn, state, data.val, mesh, batch_size=config.eval.batch_size,
                    crop=crop, max_images=config.eval.val_max_images, desc="val",
                )  # fmt: skip
                metrics_log.write(type="val", step=step, **result)
                window_start = time.perf_counter()
    if step < num_steps:
        reason = "interrupted" if interrupt.requested else "stop_after"
        metrics_log.write(type="stop", step=step, reason=reason)
        if interrupt.requested:
            raise KeyboardInterrupt(f"stopped at step {step}; checkpoint saved in {workdir}")
        return {}
    return final_evaluation(config, workdir, data, mesh, compiler_options=compiler_options)


def final_evaluation(config, workdir: Path, data: ava.AvaData, mesh, *, compiler_options=None):
    """Evaluates the last checkpoint on the test split, writes eval.json (with the table) and
    the export directory; returns the evaluation."""
    state, step = restore_state(workdir, config, mesh)
    eval_fn = jit_eval_step(state, mesh, compiler_options=compiler_options)
    result = evaluate(
        eval_fn, state, data.test, mesh, batch_size=config.eval.batch_size,
        crop=config.data.crop, desc="test",
    )  # fmt: skip
    arch = nima_config.arch(config)
    title = (
        f"NIMA on AVA, test split ({result['n']} images): {data.description}\n"
        f"Backbone: {config.model.backbone} {arch or ''}, {weights_description(config)}; "
        f"step {step} of config '{config.variant}'."
    )
    result.update(
        step=step, split="test", data=data.description, backbone=config.model.backbone,
        arch=arch, weights=weights_description(config), variant=config.variant,
        paper=PAPER_ROWS,
    )  # fmt: skip
    result["table"] = format_table(result, title=title, label=f"this run (step {step})")
    if is_main():
        run = {k: result[k] for k in ("step", "data", "weights", "variant")}
        test = {k: result[k] for k in ("n", "emd", "lcc", "srcc", "accuracy")}
        run.update(workdir=str(workdir), test=test)
        nima.save_nima(
            eval_model(jax.device_get(state)), workdir / nima.NIMA_EXPORT_DIR,
            backbone=config.model.backbone, arch=arch, run=run, overwrite=True,
        )  # fmt: skip
    write_json(workdir / EVAL_FILE, result)
    return result
