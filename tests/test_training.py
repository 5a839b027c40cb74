"""common.training: the log window's speed counts the time its steps took to run."""

import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from common import training


def test_window_speed_includes_waiting_for_the_steps(monkeypatch):
    # Steps are dispatched asynchronously: a window's steps finish only when its metrics are
    # fetched, so that wait is part of the window (it was not, and the demo logged 82 steps/s
    # for a 1 step/s loop).
    fetch = jax.device_get

    def slow_fetch(tree):
        time.sleep(0.5)  # the device still running the window's steps
        return fetch(tree)

    monkeypatch.setattr(training.jax, "device_get", slow_fetch)
    pending = [(s, {"loss": jnp.float32(s), "finite": jnp.float32(1.0)}) for s in (1, 2)]
    record = training.fetch_window(
        pending, window_start=time.perf_counter(), batch_size=4, what="test"
    )
    assert record["steps_per_s"] <= 2 / 0.5 and record["examples_per_s"] <= 8 / 0.5
    assert record["loss"] == 1.5 and "finite" not in record and pending == []


def test_window_stops_on_a_non_finite_loss():
    pending = [(7, {"loss": np.float32(np.nan), "finite": np.float32(0.0)})]
    with pytest.raises(training.NonFiniteLossError, match="step 7"):
        training.fetch_window(pending, window_start=time.perf_counter(), batch_size=1, what="x")
