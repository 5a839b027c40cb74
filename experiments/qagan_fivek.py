r"""Train QAGAN (unpaired enhancement) and evaluate it: the main job.

    python -m experiments.qagan_fivek                         # the built-in demo set, CPU minutes
    python -m experiments.qagan_fivek --data-dir ~/fivek --vgg-weights vgg19-dcbb9e9d.pth
    python -m experiments.qagan_fivek --low-dir phone/ --high-dir flickr/ --workdir runs/mine
    python -m experiments.qagan_fivek --config qagan_jax/config.py:paper \
        --config.train.batch_size=24 --config.eval.nima_weights=nima_mobilenetv2/

Data: `--data-dir` (MIT-Adobe FiveK in any layout `common.data` knows), `--low-dir/--high-dir`
(two folders of your own, unpaired), or neither: the built-in demo set (degraded scikit-image
photos; a runnable example, not a benchmark — every report says so). The config is
`qagan_jax/config.py` (`:paper`, `:demo`, `:smoke`, plus `--config.a.b=value` overrides); without
`--config` it is `demo` on the demo set and `paper` otherwise.

The work directory (default `workdirs/qagan_<data>`) keeps the config, the split, metrics,
checkpoints, sample grids and the evaluation (`qagan_jax.trainer`). Running the same command
again resumes from the latest complete checkpoint, or just prints the evaluation when training
is done. Ctrl-C saves a checkpoint and stops.

Multi-process (TPU pod slices, several GPU hosts): run the same command on every host; the
launch environment is detected (`common.distributed`), or pass `--coordinator host:port
--num-processes N --process-id I`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from absl import app, flags, logging
from ml_collections import config_flags

from common import cli, distributed

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "qagan_jax/config.py:VARIANT (paper | demo | smoke) and --config.x overrides."
)
_DATA_DIR = flags.DEFINE_string("data-dir", None, "MIT-Adobe FiveK (any layout common.data knows).")
_LOW_DIR = flags.DEFINE_string("low-dir", None, "A folder of low-quality photos (with --high-dir).")
_HIGH_DIR = flags.DEFINE_string(
    "high-dir", None, "A folder of high-quality photos (with --low-dir)."
)
_SPLIT_SEED = flags.DEFINE_integer(
    "split-seed", None, "FiveK: a seeded random split instead of the default id split."
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Work directory (default workdirs/qagan_<data>).")
_VGG_WEIGHTS = flags.DEFINE_string(
    "vgg-weights", None, "VGG-19 checkpoint (torchvision .pth, timm .safetensors or converted)."
)
_STOP_AFTER = flags.DEFINE_integer(
    "stop-after", None, "Stop with a checkpoint after this many steps in total (resume later)."
)
_COORDINATOR = flags.DEFINE_string("coordinator", None, "host:port of process 0 (multi-process).")
_NUM_PROCESSES = flags.DEFINE_integer("num-processes", None, "Processes in the job.")
_PROCESS_ID = flags.DEFINE_integer("process-id", None, "This process's index.")


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if bool(_LOW_DIR.value) != bool(_HIGH_DIR.value):
        raise app.UsageError("--low-dir and --high-dir go together")
    if _DATA_DIR.value and _LOW_DIR.value:
        raise app.UsageError("give --data-dir or --low-dir/--high-dir, not both")
    cli.quiet_library_logs()
    distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)

    from common import data  # noqa: PLC0415  (after jax.distributed is set up)
    from qagan_jax import config as qagan_config  # noqa: PLC0415
    from qagan_jax import train, trainer  # noqa: PLC0415

    try:
        dataset = data.open_dataset(
            data_dir=_DATA_DIR.value,
            low_dir=_LOW_DIR.value,
            high_dir=_HIGH_DIR.value,
            split_seed=_SPLIT_SEED.value,
        )
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    demo = not (_DATA_DIR.value or _LOW_DIR.value)
    kind = "demo" if demo else ("fivek" if _DATA_DIR.value else "folders")
    if demo:
        logging.warning(
            "No --data-dir: training on the built-in demo set (%s)", dataset.description
        )
    config = _CONFIG.value or qagan_config.get_config("demo" if demo else "paper")
    if _VGG_WEIGHTS.value:
        config.model.vgg_weights = _VGG_WEIGHTS.value
    # Absolute: Orbax refuses relative checkpoint paths.
    workdir = Path(_WORKDIR.value or f"workdirs/qagan_{kind}").absolute()
    try:
        result = trainer.train_and_evaluate(
            config,
            workdir,
            dataset,
            resume_config=_CONFIG.value is None and not _VGG_WEIGHTS.value,
            stop_after=_STOP_AFTER.value,
        )
    except KeyboardInterrupt as e:
        print(f"\n{e or 'interrupted'}; run the same command to resume", file=sys.stderr)
        return 130
    except (trainer.WorkdirMismatchError, train.NonFiniteLossError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if result.get("table"):
        print(result["table"])
    print(f"work directory: {workdir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    app.run(main)
