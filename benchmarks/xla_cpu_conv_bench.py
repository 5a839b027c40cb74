"""XLA:CPU convolution speed on QAGAN's layer shapes; prints one JSON object.

    python benchmarks/xla_cpu_conv_bench.py [--batch 2] [--repeats 5] [--quick]

For each convolution shape of the paper networks at 128x128 (the generators' and VGG's 3x3
stride-1 convs, the discriminator's 7x7/5x5 stride-2 blocks and its heads), the minimum wall
time over `--repeats` of
  * `fwd`: the VALID conv alone,
  * `fwd_grad_plain`: forward plus both gradients by XLA's own conv VJP,
  * `fwd_grad_conv2d`: the same through `qagan_jax.conv.conv2d` (col2im dx where it applies),
each compiled twice: with jaxlib's default options and with `common.xla_options`' CPU options
(YNNPACK fusions off). GFLOP/s counts 2 * MACs of the forward conv (x3 for fwd + grads).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # fresh clone

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from common import xla_options  # noqa: E402
from qagan_jax import conv  # noqa: E402

# (name, output size, in channels, out channels, kernel, stride) at 128x128 inputs.
SHAPES = [
    ("vgg conv1_1", 128, 3, 64, 3, 1),
    ("vgg conv1_2 / G level-1 conv", 128, 64, 64, 3, 1),
    ("G level-1 skip-concat conv 128->64", 128, 128, 64, 3, 1),
    ("vgg conv2_2 / G level-2 conv", 64, 128, 128, 3, 1),
    ("G level-2 skip-concat conv 256->128", 64, 256, 128, 3, 1),
    ("vgg conv3_x / G level-3 conv", 32, 256, 256, 3, 1),
    ("G level-3 skip-concat conv 512->256", 32, 512, 256, 3, 1),
    ("vgg conv4_x / G level-4 conv", 16, 512, 512, 3, 1),
    ("G level-4 skip-concat conv 1024->512", 16, 1024, 512, 3, 1),
    ("G output 64->3", 128, 64, 3, 3, 1),
    ("D block 1", 64, 3, 32, 7, 2),
    ("D block 2", 32, 32, 64, 7, 2),
    ("D block 3", 16, 64, 128, 7, 2),
    ("D block 4", 8, 128, 256, 5, 2),
    ("D block 5", 4, 256, 512, 5, 2),
    ("D head 3", 16, 128, 1, 7, 1),
    ("D head 5", 4, 512, 1, 5, 1),
]
QUICK = {"G level-2 skip-concat conv 256->128", "vgg conv3_x / G level-3 conv", "D block 5"}


def _time(fn, args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - t0)
    return best


def bench_shape(batch, out, c, o, k, stride, repeats, options) -> dict:
    size = stride * (out - 1) + k  # the (already padded) VALID input
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((batch, size, size, c)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((k, k, c, o)) / (k * k * c) ** 0.5, jnp.float32)
    gflop = 2 * batch * out * out * o * c * k * k / 1e9
    row = {}

    def grads(fn):
        return jax.grad(lambda x_, w_: 0.5 * jnp.sum(fn(x_, w_, stride) ** 2), (0, 1))

    cases = {
        "fwd": (lambda x_, w_: conv.plain_conv(x_, w_, stride), 1),
        "fwd_grad_plain": (grads(conv.plain_conv), 3),
        "fwd_grad_conv2d": (grads(conv.conv2d), 3),
    }
    for name, (fn, passes) in cases.items():
        seconds = _time(jax.jit(fn, compiler_options=options), (x, w), repeats)
        row[f"{name}_ms"] = round(seconds * 1e3, 2)
        row[f"{name}_gflop_per_s"] = round(passes * gflop / seconds, 1)
    return row


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help=f"only {sorted(QUICK)}")
    args = parser.parse_args(argv)
    cpu_options = xla_options.compiler_options(jax.local_devices(backend="cpu"))
    report = {
        "backend": jax.default_backend(),
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "batch": args.batch,
        "cpu_options": cpu_options,
        "load_average_at_start": os.getloadavg()[0],
        "shapes": [],
    }
    for name, out, c, o, k, stride in SHAPES:
        if args.quick and name not in QUICK:
            continue
        entry = {"layer": name, "output": [args.batch, out, out, o], "in_channels": c,
                 "kernel": k, "stride": stride}  # fmt: skip
        entry["jaxlib_default"] = bench_shape(args.batch, out, c, o, k, stride, args.repeats, None)
        entry["cpu_options"] = bench_shape(
            args.batch, out, c, o, k, stride, args.repeats, cpu_options
        )
        report["shapes"].append(entry)
        print(f"{name}: {entry}", file=sys.stderr, flush=True)
    report["load_average_at_end"] = os.getloadavg()[0]
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
