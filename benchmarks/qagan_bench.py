"""QAGAN train-step benchmark: prints one JSON object.

    python benchmarks/qagan_bench.py [--batch-sizes 2,4,12] [--steps 5] [--size 128]

For each batch size: compile time of the jitted step, steady seconds per step (median over
`--steps` timed steps after one warm-up), XLA's FLOP count of the step and the achieved FLOP/s,
XLA's buffer estimate; plus parameter counts and the process's peak RSS. The paper networks
(config `paper`) with a random VGG-19. Batch 12 is skipped when batch 4 extrapolates to over a
minute per step. Runs on the default JAX backend, one device (the `data` mesh has size 1), with
the project's compile options (`common.xla_options`; `--no-xla-cpu-options` for jaxlib's).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # fresh clone

import jax  # noqa: E402
import numpy as np  # noqa: E402

from common import xla_options  # noqa: E402
from qagan_jax import config as qagan_config  # noqa: E402
from qagan_jax import conv, train  # noqa: E402

# The quoted eager-PyTorch figures (s/step). They imply ~390 GFLOP/s, above this
# machine's measured float32 matmul peak; `benchmarks/torch_reference_qagan.py` measures the
# same step in eager PyTorch on the machine at hand, which is the comparison to trust.
QUOTED_PYTORCH_S = {2: 1.7, 4: 3.1, 12: 11.0}


def _count(tree) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def _batch(batch_size: int, size: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    shape = (batch_size, size, size, 3)
    return {
        "low": rng.uniform(-1, 1, shape).astype(np.float32),
        "high": rng.uniform(-1, 1, shape).astype(np.float32),
    }


def bench_batch(state, mesh, batch_size: int, size: int, steps: int) -> tuple[dict, object]:
    step_fn = train.jit_train_step(state, mesh)
    batch = jax.device_put(_batch(batch_size, size), train.batch_sharding(mesh))
    key = jax.random.key(0)
    t0 = time.perf_counter()
    compiled = step_fn.lower(state, batch, key).compile()
    compile_s = time.perf_counter() - t0
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    flops = float(cost.get("flops", float("nan"))) if cost else float("nan")
    mem = compiled.memory_analysis()
    state, metrics = compiled(state, batch, key)  # warm-up
    jax.block_until_ready(metrics)
    times, cpu_times = [], []
    for _ in range(steps):
        t0, c0 = time.perf_counter(), time.process_time()
        state, metrics = compiled(state, batch, key)
        jax.block_until_ready((state, metrics))
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
    train.assert_finite(metrics)
    step_s = statistics.median(times)
    result = {
        "batch_size": batch_size,
        "compile_s": round(compile_s, 2),
        "step_s_median": round(step_s, 3),
        "step_s_min": round(min(times), 3),
        "step_s_all": [round(t, 3) for t in times],
        # CPU seconds (all threads) per step: on a shared machine, cpu_s / cores estimates the
        # step time the process would get with every core to itself.
        "cpu_s_per_step_median": round(statistics.median(cpu_times), 3),
        "cpu_utilisation": round(sum(cpu_times) / sum(times), 2),
        "flops_per_step": flops,
        "gflop_per_image_pair": round(flops / batch_size / 1e9, 1),
        "achieved_gflop_per_s": round(flops / step_s / 1e9, 1),
        "xla_temp_bytes": getattr(mem, "temp_size_in_bytes", None),
        "xla_argument_bytes": getattr(mem, "argument_size_in_bytes", None),
    }
    ref = QUOTED_PYTORCH_S.get(batch_size)
    if ref is not None and size == 128:
        result["quoted_pytorch_s"] = ref
        result["ratio_vs_quoted_pytorch"] = round(step_s / ref, 2)
    return result, state


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-sizes", default="2,4,12", help="comma-separated global batches")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per batch size")
    parser.add_argument("--size", type=int, default=128, help="image size (divisible by 16)")
    parser.add_argument("--config", default="paper", help="paper | demo | smoke")
    parser.add_argument("--max-step-s", type=float, default=60.0,
                        help="skip a batch size whose extrapolated step exceeds this")  # fmt: skip
    parser.add_argument("--no-xla-cpu-options", action="store_true",
                        help="compile without common.xla_options' CPU defaults (A/B)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.no_xla_cpu_options:
        xla_options.CPU_COMPILER_OPTIONS = {}  # read once, at the first compile below

    config = qagan_config.get_config(args.config)
    if config.opt.steps_per_epoch < 1:  # resolved from the data in training; FiveK's value here
        config.opt.steps_per_epoch = 188
    mesh = train.make_mesh(jax.devices()[:1])
    t0 = time.perf_counter()
    state = train.create_train_state(config, jax.random.key(0), mesh)
    jax.block_until_ready(state)
    init_s = time.perf_counter() - t0
    gens = train.nnx.merge(state.gen_def, state.gen)
    report = {
        "backend": jax.default_backend(),
        "device": str(jax.devices()[0].device_kind),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "jax": jax.__version__,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "conv_vjp": conv.vjp_path(jax.default_backend()),
        "compiler_options": xla_options.compiler_options(mesh.devices.flat),
        "load_average_at_start": os.getloadavg()[0],
        "config": args.config,
        "image_size": args.size,
        "init_s": round(init_s, 2),
        "params": {
            "G_H": _count(train.nnx.state(gens.g_h, train.nnx.Param)),
            "G_L": _count(train.nnx.state(gens.g_l, train.nnx.Param)),
            "D_H": _count(state.disc["d_h"]),
            "D_L": _count(state.disc["d_l"]),
            "VGG19_encoder_frozen": _count(state.encoder),
            "trainable_total": _count(state.gen) + _count(state.disc),
        },
        "results": [],
    }
    last = None
    for batch_size in [int(b) for b in args.batch_sizes.split(",")]:
        if last is not None:
            per_image = last["step_s_median"] / last["batch_size"]
            if per_image * batch_size > args.max_step_s:
                report["results"].append({"batch_size": batch_size, "skipped": "over max-step-s"})
                continue
        last, state = bench_batch(state, mesh, batch_size, args.size, args.steps)
        report["results"].append(last)
    report["load_average_at_end"] = os.getloadavg()[0]
    report["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
