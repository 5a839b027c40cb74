"""XLA compile options for the QAGAN steps and PIEA's search on the CPU backend.

jaxlib 0.10 hands XLA:CPU convolutions to YNNPACK fusions by default. On the 3x3 convolutions
of the QAGAN decoders that halve the channels (128->64 at 128², 256->128 at 64², 512->256 at
32²) those run at about 60 GFLOP/s in isolation and 15-65 inside the train step. With the
fusions off, XLA:CPU's own (Eigen) convolution runs every VGG-shaped layer at 166-212 GFLOP/s
forward and 147-203 forward + both gradients (batch 2, 2-core x86 VM;
`benchmarks/xla_cpu_conv_bench.py` measures both paths on every conv shape of the networks).
jaxlib 0.12 (what pip resolves on Python >= 3.12) already runs these shapes fast by default:
there the option is about neutral (QAGAN step at batch 2: 3.96 s with it, 4.17 s without).
PIEA's VGG16-NIMA search gains less (its layers are the fast shapes already): about 5 % in
time and 30 % in XLA temp memory at batch 8 (`benchmarks/piea_bench.py`). The options apply to
CPU compilations only: GPU and TPU programs compile exactly as before.

A user's own `XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=...` wins over the default
here; a jaxlib that no longer knows the option gets no options (and a log line saying so).
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Iterable, Mapping
from typing import Any

import jax
import numpy as np

YNN_FUSION_OPTION = "xla_cpu_experimental_ynn_fusion_type"
CPU_COMPILER_OPTIONS: Mapping[str, Any] = {YNN_FUSION_OPTION: ""}  # "": no YNNPACK fusions


@functools.lru_cache(maxsize=1)
def _accepted_cpu_options() -> dict[str, Any]:
    """`CPU_COMPILER_OPTIONS` minus what the user's XLA_FLAGS set, if this jaxlib takes them."""
    flags = os.environ.get("XLA_FLAGS", "")
    options = {k: v for k, v in CPU_COMPILER_OPTIONS.items() if f"--{k}" not in flags}
    if not options:
        return {}
    try:
        cpu = jax.local_devices(backend="cpu")[0]
        probe = jax.jit(lambda x: x + 1, compiler_options=options)
        probe.lower(jax.device_put(np.float32(0), cpu)).compile()
    except Exception as err:  # an unknown option is rejected at compile time  # noqa: BLE001
        logging.info("XLA:CPU options %s not accepted by this jaxlib (%s); using defaults",
                     options, err)  # fmt: skip
        return {}
    return options


def compiler_options(
    devices: Iterable[jax.Device], extra: Mapping[str, Any] | None = None
) -> dict[str, Any] | None:
    """Compile options for a program that runs on `devices`: the CPU defaults (on CPU only)
    updated with `extra` (the caller's own options win). None when there are none."""
    platforms = {d.platform for d in devices}
    options = dict(_accepted_cpu_options()) if platforms == {"cpu"} else {}
    options.update(extra or {})
    return options or None
