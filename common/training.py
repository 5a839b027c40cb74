"""Training-loop plumbing shared by the project's trainers (QAGAN, NIMA on AVA).

* The device mesh: one `data` axis (`make_mesh`), batches split over it (`batch_sharding`),
  states replicated (`replicated`); `make_batch` turns each process's rows into global arrays.
* The work directory: `prepare_workdir` writes `config.json` and `split.json` or checks that
  an existing directory belongs to the same run (`WorkdirMismatchError`); `write_json` writes
  atomically from process 0; `MetricsWriter` appends JSON lines.
* Checkpoints: `checkpoint_manager` (Orbax, asynchronous, the latest N kept).
* The loop: `interrupt_handler` turns Ctrl-C into a flag checked between steps (a second
  Ctrl-C stops at once); `window_record` summarises the metrics of the steps since the last
  log; `check_finite` stops on a non-finite loss (`NonFiniteLossError`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import grain
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm import tqdm

from common import xla_options

DATA_AXIS = "data"


class WorkdirMismatchError(ValueError):
    """The work directory belongs to a run with another config or other data."""


class NonFiniteLossError(FloatingPointError):
    """A loss became NaN or Inf; the state returned by that step is the last good one."""


# --- Mesh ---------------------------------------------------------------------------------------


def make_mesh(devices=None) -> Mesh:
    """A 1-D mesh over `devices` (default: all) with the batch axis `data`."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over `data`, everything else replicated."""
    return NamedSharding(mesh, P(DATA_AXIS))


def state_shardings(state, mesh: Mesh):
    """Shardings of a training state: every leaf replicated (data parallelism)."""
    return jax.tree.map(lambda _: replicated(mesh), state)


def jit_train_step(step_fn, state, mesh: Mesh, *, compiler_options=None):
    """`step_fn(state, batch, key) -> (state, metrics)` compiled with explicit shardings: the
    state replicated and donated, the batch split over `data`, key and metrics replicated. It
    compiles once per state structure and batch shape; the global batch must divide by the
    mesh size. `compiler_options` add to (and override) the CPU defaults of
    `common.xla_options`."""
    shard = state_shardings(state, mesh)
    return jax.jit(
        step_fn,
        in_shardings=(shard, batch_sharding(mesh), replicated(mesh)),
        out_shardings=(shard, replicated(mesh)),
        donate_argnums=0,
        compiler_options=xla_options.compiler_options(mesh.devices.flat, compiler_options),
    )


def jit_eval_step(eval_fn, state, mesh: Mesh, *, compiler_options=None):
    """`eval_fn(state, batch)` compiled with the batch (and its output) split over `data`."""
    return jax.jit(
        eval_fn,
        in_shardings=(state_shardings(state, mesh), batch_sharding(mesh)),
        out_shardings=batch_sharding(mesh),
        compiler_options=xla_options.compiler_options(mesh.devices.flat, compiler_options),
    )


def make_batch(local: Mapping[str, np.ndarray], sharding) -> dict[str, jax.Array]:
    """This process's rows of every array -> global arrays with `sharding`."""
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}


# --- Work directory -----------------------------------------------------------------------------


def is_main() -> bool:
    """Process 0: the one that writes files other than checkpoints."""
    return jax.process_index() == 0


def write_json(path: Path, obj: Any) -> None:
    """Atomic JSON write (temporary file, then rename); process 0 only."""
    if not is_main():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    temp.write_text(json.dumps(obj, indent=1, sort_keys=False) + "\n")
    os.replace(temp, path)


def _config_differences(a: Mapping, b: Mapping, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key, "<missing>"), b.get(key, "<missing>")
        if isinstance(va, Mapping) and isinstance(vb, Mapping):
            out += _config_differences(va, vb, f"{prefix}{key}.")
        elif va != vb:
            out.append(f"{prefix}{key}: {vb!r} in the work directory, {va!r} now")
    return out


def prepare_workdir(
    workdir: Path, config: ml_collections.ConfigDict, split: Mapping, *, resume_config: bool
) -> ml_collections.ConfigDict:
    """Creates the work directory or checks it belongs to this run; returns the config to use.

    With `resume_config` (no config given on the command line) an existing `config.json` is
    used as it is; otherwise it must equal `config`. `split.json` must always match the data
    (its "ids").
    """
    workdir.mkdir(parents=True, exist_ok=True)
    config_path, split_path = workdir / "config.json", workdir / "split.json"
    if config_path.exists():
        stored = json.loads(config_path.read_text())
        if resume_config:
            config = ml_collections.ConfigDict(stored)
        else:
            diff = _config_differences(json.loads(config.to_json()), stored)
            if diff:
                raise WorkdirMismatchError(
                    f"{workdir} holds a run with another config ({'; '.join(diff[:6])}"
                    f"{' ...' if len(diff) > 6 else ''}); use another --workdir, or re-run "
                    "without config flags to resume that run"
                )
    if split_path.exists():
        stored_split = json.loads(split_path.read_text())
        if stored_split.get("ids") != split.get("ids"):
            raise WorkdirMismatchError(
                f"{workdir} was trained on other data ({stored_split.get('description')}); "
                f"now: {split.get('description')}. Use another --workdir."
            )
    write_json(config_path, json.loads(config.to_json()))
    write_json(split_path, dict(split))
    return config


class MetricsWriter:
    """metrics.jsonl (process 0): appends one JSON object per line, flushed each time."""

    def __init__(self, path: Path, **common):
        self.path = path
        self.common = common

    def write(self, **record) -> None:
        if not is_main():
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({**record, **self.common}) + "\n")


def checkpoint_manager(workdir: Path, keep: int) -> ocp.CheckpointManager:
    """Orbax manager of `workdir/checkpoints`, saving asynchronously, keeping the latest `keep`.

    Orbax writes into a temporary directory and renames it when done, so a run killed
    mid-save leaves nothing that `latest_step()` takes for a finished checkpoint.
    """
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, enable_async_checkpointing=True, create=True
    )
    return ocp.CheckpointManager(workdir / "checkpoints", options=options)


# --- The loop -----------------------------------------------------------------------------------


@dataclasses.dataclass
class Interrupt:
    """SIGINT -> a flag the loop checks between steps (a second SIGINT interrupts at once)."""

    requested: bool = False

    def handler(self, signum, frame):
        del signum, frame
        self.requested = True
        signal.signal(signal.SIGINT, signal.default_int_handler)
        tqdm.write(
            "Interrupted: saving a checkpoint at the end of this step (Ctrl-C again to quit now)"
        )


@contextlib.contextmanager
def interrupt_handler() -> Iterator[Interrupt]:
    """Installs `Interrupt.handler` for SIGINT (main thread only) and restores the old one."""
    interrupt = Interrupt()
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGINT)
    if in_main_thread:
        signal.signal(signal.SIGINT, interrupt.handler)
    try:
        yield interrupt
    finally:
        if in_main_thread:
            signal.signal(signal.SIGINT, previous)


def check_finite(metrics: Mapping[str, Any], step: int | None = None, *, what: str) -> None:
    """Raises `NonFiniteLossError` naming the bad losses if a step reported `finite` == 0.

    Steps compute `metrics["finite"]` on device and discard a non-finite update there; call
    this on every step's fetched metrics before logging or checkpointing.
    """
    if float(metrics["finite"]) == 1.0:
        return
    bad = {k: float(v) for k, v in metrics.items() if k != "finite" and not np.isfinite(float(v))}
    where = "" if step is None else f" at step {step}"
    raise NonFiniteLossError(
        f"{what}: non-finite loss{where}: {bad}; the update was discarded and training stops "
        "(the last good state is the one returned with these metrics)."
    )


def window_record(
    fetched: Sequence[tuple[int, Mapping[str, Any]]], *, elapsed: float, batch_size: int
) -> dict[str, float]:
    """One metrics line for the steps of a log window: each metric's mean over the steps
    (`lr` at the last step; `finite` dropped), `steps_per_s` and `examples_per_s`."""
    record = {k: float(np.mean([m[k] for _, m in fetched])) for k in fetched[-1][1]}
    record.pop("finite", None)
    if "lr" in record:
        record["lr"] = float(fetched[-1][1]["lr"])  # at the step, not averaged
    record["steps_per_s"] = len(fetched) / elapsed
    record["examples_per_s"] = len(fetched) * batch_size / elapsed
    return record


def save_checkpoint(manager: ocp.CheckpointManager, step: int, state, data_iter) -> None:
    """Saves the state and the grain iterator's position as checkpoint `step` (asynchronous)."""
    manager.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=grain.checkpoint.CheckpointSave(data_iter),
        ),
    )


def restore_checkpoint(manager: ocp.CheckpointManager, step: int, abstract_state, data_iter):
    """The state of checkpoint `step` (shaped and sharded as `abstract_state`); restores the
    grain iterator's position in place."""
    restored = manager.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            data=grain.checkpoint.CheckpointRestore(data_iter),
        ),
    )
    return restored["state"]


@contextlib.contextmanager
def loop_context(
    manager: ocp.CheckpointManager, *, total: int, initial: int, desc: str
) -> Iterator[tuple[Interrupt, tqdm]]:
    """(interrupt flag, progress bar) for a training loop; on exit closes the bar, waits for the
    last checkpoint, closes the manager and restores the SIGINT handler."""
    bar = tqdm(total=total, initial=initial, desc=desc, unit="step", disable=not is_main())
    with contextlib.ExitStack() as stack:
        interrupt = stack.enter_context(interrupt_handler())
        stack.callback(manager.close)
        stack.callback(manager.wait_until_finished)
        stack.callback(bar.close)
        yield interrupt, bar


def fetch_window(
    pending: list[tuple[int, Any]], *, window_start: float, batch_size: int, what: str
) -> dict[str, float]:
    """The one host sync of a log window: fetches every step's metrics, stops on a non-finite
    loss (`check_finite`), returns `window_record`. Empties `pending`.

    `window_start` is the window's `time.perf_counter()` start; the window ends after the
    fetch, because steps are dispatched asynchronously and only the fetch waits for them.
    """
    fetched = jax.device_get(pending)
    elapsed = time.perf_counter() - window_start
    pending.clear()
    for step, metrics in fetched:
        check_finite(metrics, step, what=what)
    return window_record(fetched, elapsed=elapsed, batch_size=batch_size)


def sharded_abstract(abstract_state, mesh: Mesh):
    """`abstract_state` (from `jax.eval_shape`) with every leaf replicated over `mesh`: the
    Orbax restore target of a data-parallel state."""
    return jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated(mesh)),
        abstract_state,
    )


def restore_latest(workdir: Path, abstract_state, step: int | None = None) -> tuple[Any, int]:
    """(state, step) of the latest (or given) complete checkpoint in `workdir/checkpoints`,
    restored against `abstract_state` (e.g. `sharded_abstract(...)`)."""
    workdir = Path(workdir)
    with ocp.CheckpointManager(workdir / "checkpoints") as manager:
        step = manager.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"{workdir}: no complete checkpoint in {workdir}/checkpoints")
        restored = manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
        )
    return restored["state"], step
