"""Multi-process start-up: `jax.distributed.initialize` when the job is one of several processes.

Every process of a multi-host job (a TPU pod slice, several GPU hosts, or processes on one
machine) runs the same command; `initialize` connects them before anything touches a device, so
that `jax.devices()` lists the devices of all processes and one mesh spans them.
"""

from __future__ import annotations

import logging
import os

import jax

logger = logging.getLogger(__name__)


def launched_as_multiprocess() -> bool:
    """Whether the environment says this is one of several processes of one job.

    Recognised: `JAX_COORDINATOR_ADDRESS` (JAX's own variables), SLURM with more than one task,
    Open MPI with more than one rank, and a Cloud TPU VM that is one worker of a pod slice
    (`TPU_WORKER_HOSTNAMES` lists several hosts). `jax.distributed.initialize()` finds the
    coordinator and the process ids itself in all of these.
    """
    env = os.environ
    if env.get("JAX_COORDINATOR_ADDRESS"):
        return True
    if int(env.get("SLURM_NTASKS", "1")) > 1 or int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
        return True
    return len([h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1


def initialize(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    force: bool = False,
) -> bool:
    """Connects this process to the others; returns True when it is part of a multi-process job.

    With an explicit `coordinator` ("host:port" of process 0), `num_processes` and `process_id`
    are required (or `JAX_NUM_PROCESSES` / `JAX_PROCESS_ID` in the environment); without one,
    the environment is auto-detected (`launched_as_multiprocess`), or `force` says it is a
    multi-process launch that `jax.distributed.initialize()` can work out. Collectives between
    CPU processes use gloo (a no-op for GPU and TPU programs). Must run before the first JAX
    computation.
    """
    if coordinator is None and not force and not launched_as_multiprocess():
        return False
    env = os.environ
    if num_processes is None and env.get("JAX_NUM_PROCESSES"):
        num_processes = int(env["JAX_NUM_PROCESSES"])
    if process_id is None and env.get("JAX_PROCESS_ID"):
        process_id = int(env["JAX_PROCESS_ID"])
    if coordinator is not None and (num_processes is None or process_id is None):
        raise ValueError("--coordinator needs --num-processes and --process-id")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=coordinator, num_processes=num_processes, process_id=process_id
    )
    logger.info(
        "process %d of %d; %d local and %d global devices",
        jax.process_index(), jax.process_count(), jax.local_device_count(), jax.device_count(),
    )  # fmt: skip
    return True
