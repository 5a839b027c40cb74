"""Test-session setup. Runs before JAX initialises its backend.

Four fake CPU devices let the sharding tests compare a 1-device run with a 4-device mesh.
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 4)
