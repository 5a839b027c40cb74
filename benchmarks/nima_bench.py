r"""NIMA-on-AVA training-step benchmark; prints one JSON document to stdout.

    python benchmarks/nima_bench.py                                  # smoke: width 1/8, 64, b 8
    python benchmarks/nima_bench.py --width 1 --size 224 --batch 8   # the paper's network
    python benchmarks/nima_bench.py --backbone vgg16_gap --width 16  # the narrow VGG16

Times `common.nima_training`'s own compiled train step (SGD momentum, both learning-rate
groups, EMD loss, BN-Inception's batch statistics, dropout) on random images and vote
distributions of the given size and global batch, on the devices of this process (one CPU
device unless XLA is told otherwise): the initialisation and the step's lower + compile
times, then the median seconds per step over `--steps` steps after one warm-up step, images
per second, and the process's peak resident memory (one configuration per process, so the
peak is that configuration's). The CPU may be shared with other work: the load average is
recorded before and after.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import jax
import numpy as np
from absl import app, flags

from common import nima_config, nima_training
from common.training import batch_sharding, make_batch, make_mesh

_BACKBONE = flags.DEFINE_enum("backbone", "bn_inception", nima_config.BACKBONES, "NIMA format.")
_WIDTH = flags.DEFINE_float(
    "width", 0.125, "bn_inception: channel multiplier; vgg16_gap: divisor (an integer)."
)
_SIZE = flags.DEFINE_integer("size", 64, "Square crop size (BN-Inception: a multiple of 32).")
_BATCH = flags.DEFINE_integer("batch", 8, "Global batch.")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed steps (after one warm-up step).")


def cpu_model() -> str:
    """The CPU's model name as `lscpu` shows it (from /proc/cpuinfo)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _config():
    config = nima_config.get_config("paper")
    config.model.backbone = _BACKBONE.value
    config.model.width = _WIDTH.value
    config.data.crop = _SIZE.value
    config.train.batch_size = _BATCH.value
    config.opt.steps_per_epoch = 1000  # the schedule only; nothing here depends on it
    return config


def main(argv: list[str]) -> None:
    del argv
    load_start = os.getloadavg()[0]
    config = _config()
    mesh = make_mesh()
    key = jax.random.key(0)
    t0 = time.perf_counter()
    state = jax.block_until_ready(nima_training.create_train_state(config, key, mesh))
    init_s = time.perf_counter() - t0
    sharding = batch_sharding(mesh)
    b, s = _BATCH.value, _SIZE.value
    spec = {
        "image": jax.ShapeDtypeStruct((b, s, s, 3), np.float32, sharding=sharding),
        "dist": jax.ShapeDtypeStruct((b, 10), np.float32, sharding=sharding),
    }
    t0 = time.perf_counter()
    step = nima_training.jit_train_step(state, mesh).lower(state, spec, key).compile()
    compile_s = time.perf_counter() - t0

    rng = np.random.default_rng(0)
    votes = rng.uniform(size=(b, 10)).astype(np.float32)
    batch = make_batch(
        {
            "image": rng.uniform(size=(b, s, s, 3)).astype(np.float32),
            "dist": votes / votes.sum(-1, keepdims=True),
        },
        sharding,
    )
    state, metrics = step(state, batch, key)  # warm-up: first-call allocations
    jax.block_until_ready(metrics)
    times = []
    for _ in range(_STEPS.value):
        t0 = time.perf_counter()
        state, metrics = step(state, batch, key)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t0)
    if not float(metrics["finite"]):
        raise FloatingPointError("non-finite loss in the benchmark step")
    step_s = statistics.median(times)
    report = {
        "backbone": _BACKBONE.value,
        "width": _WIDTH.value,
        "size": s,
        "batch": b,
        "devices": mesh.size,
        "init_s": round(init_s, 2),  # the initial state, its compile included
        "compile_s": round(compile_s, 2),  # lower + compile of the train step
        "step_s": round(step_s, 4),
        "step_s_min_max": [round(min(times), 4), round(max(times), 4)],
        "images_per_s": round(b / step_s, 2),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "load_average_start": round(load_start, 2),
        "load_average_end": round(os.getloadavg()[0], 2),
        "jax": jax.__version__,
    }
    json.dump(report, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    app.run(main)
