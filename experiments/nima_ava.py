r"""Train NIMA on AVA with the EMD loss, evaluate it, and export it as a PIEA guider.

    python -m experiments.nima_ava --ava-dir ~/AVA --workdir runs/nima \
        --imagenet-weights bn_inception-9f5701afb96c8044.pth
    python -m experiments.nima_ava --ava-dir ~/AVA --workdir runs/nima_smoke --smoke
    python -m experiments.nima_ava --ava-dir ~/AVA --workdir runs/nima_vgg --backbone vgg16 \
        --config common/nima_config.py:paper --config.train.batch_size=64

AVA: `--ava-dir` holds AVA.txt and the images (`common.data.ava`); train/test id lists are
`--train-list/--test-list`, or found beside AVA.txt
(`aesthetics_image_lists/generic_ls_train.jpgl` + `generic_test.jpgl`, or `train_ids.txt` +
`test_ids.txt`), else a seeded random split. The config is `common/nima_config.py` (`:paper`,
`:smoke`, plus `--config.a.b=value` overrides); `--smoke` is `:smoke` (BN-Inception at 1/8
width, 72 -> 64 images, six steps; a narrow VGG16 with `--backbone vgg16`). The backbone is
BN-Inception (the paper's) unless `--backbone` or the config says otherwise; `--backbone vgg16`
is the NIMA format "vgg16_gap".

At the end: the test evaluation (EMD, LCC, SRCC, accuracy at 5) beside the NIMA paper's AVA
row, stored as WORKDIR/eval.json, and the model as WORKDIR/export, which PIEA takes as
`--guider nima --nima-weights WORKDIR --nima-backbone BACKBONE`. Running the same command again
resumes, or prints the stored table when the run is done. Ctrl-C saves a checkpoint and stops.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from common import cli, distributed

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "common/nima_config.py:VARIANT (paper | smoke) and --config.x overrides."
)
_AVA_DIR = flags.DEFINE_string("ava-dir", None, "AVA directory: AVA.txt and the images.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Work directory (default workdirs/nima_ava).")
_BACKBONE = flags.DEFINE_enum(
    "backbone", None, ["bn_inception", "vgg16", "mobilenet_v2"],
    "Backbone (default: the config's, bn_inception = the paper's). vgg16 = NIMA vgg16_gap.",
)  # fmt: skip
_IMAGENET = flags.DEFINE_string(
    "imagenet-weights", None, "ImageNet checkpoint of the backbone (without: random backbone)."
)
_SMOKE = flags.DEFINE_bool("smoke", False, "The smoke config: the whole path in a minute or two.")
_TRAIN_LIST = flags.DEFINE_string("train-list", None, "File of training image ids, one a line.")
_TEST_LIST = flags.DEFINE_string("test-list", None, "File of test image ids, one a line.")
_STOP_AFTER = flags.DEFINE_integer(
    "stop-after", None, "Stop with a checkpoint after this many steps in total (resume later)."
)
_COORDINATOR = flags.DEFINE_string("coordinator", None, "host:port of process 0 (multi-process).")
_NUM_PROCESSES = flags.DEFINE_integer("num-processes", None, "Processes in the job.")
_PROCESS_ID = flags.DEFINE_integer("process-id", None, "This process's index.")

_FORMATS = {"bn_inception": "bn_inception", "vgg16": "vgg16_gap", "mobilenet_v2": "mobilenet_v2"}


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not _AVA_DIR.value:
        raise app.UsageError("--ava-dir DIR is required (AVA.txt and the images)")
    if _SMOKE.value and _CONFIG.value is not None:
        raise app.UsageError("give --smoke or --config, not both")
    cli.quiet_library_logs()
    distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)

    from common import nima_config, nima_training  # noqa: PLC0415  (after jax.distributed)
    from common.data import ava  # noqa: PLC0415
    from common.training import NonFiniteLossError, WorkdirMismatchError  # noqa: PLC0415

    workdir = Path(_WORKDIR.value or "workdirs/nima_ava")
    stored = workdir / "config.json"
    explicit = _CONFIG.value is not None or _SMOKE.value or _BACKBONE.value or _IMAGENET.value
    if _CONFIG.value is not None:
        config = _CONFIG.value
    elif not explicit and stored.exists():
        config = ml_collections.ConfigDict(json.loads(stored.read_text()))
    else:
        config = nima_config.get_config("smoke" if _SMOKE.value else "paper")
    if _BACKBONE.value:
        config.model.backbone = _FORMATS[_BACKBONE.value]
        if _SMOKE.value:
            config.model.width = nima_config.SMOKE_WIDTH[config.model.backbone]
    if _IMAGENET.value:
        config.model.imagenet_weights = _IMAGENET.value
    if not config.model.imagenet_weights:
        logging.warning(
            "\n\n  NO --imagenet-weights: the %s backbone starts from RANDOM weights. The NIMA "
            "paper fine-tunes an ImageNet network; a random backbone will not come near its "
            "table.\n",
            config.model.backbone,
        )
    try:
        data = ava.open_ava(
            _AVA_DIR.value,
            train_list=_TRAIN_LIST.value,
            test_list=_TEST_LIST.value,
            test_fraction=config.data.test_fraction,
            val_fraction=config.data.val_fraction,
            seed=config.data.split_seed,
            resize=config.data.resize,
        )
    except ava.AvaError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        result = nima_training.train_and_evaluate(
            config, workdir, data, resume_config=not explicit, stop_after=_STOP_AFTER.value
        )
    except KeyboardInterrupt as e:
        print(f"\n{e or 'interrupted'}; run the same command to resume", file=sys.stderr)
        return 130
    except (WorkdirMismatchError, NonFiniteLossError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if result.get("table"):
        print(result["table"])
        print(
            f"\nPIEA guider: python -m experiments.piea_enhance PHOTOS --out OUT --guider nima "
            f"--nima-weights {workdir} --nima-backbone {result['backbone']}"
        )
    print(f"work directory: {workdir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    app.run(main)
