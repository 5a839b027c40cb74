"""`common.xla_options`: CPU-only defaults, caller and XLA_FLAGS overrides, unknown options."""

import dataclasses

import jax
import jax.numpy as jnp
import pytest
from jax import lax

from common import xla_options

DIMS = ("NHWC", "HWIO", "NHWC")


@pytest.fixture(autouse=True)
def _fresh_probe():
    xla_options._accepted_cpu_options.cache_clear()
    yield
    xla_options._accepted_cpu_options.cache_clear()


@dataclasses.dataclass
class FakeDevice:
    platform: str


def test_cpu_devices_get_the_defaults_and_callers_win(monkeypatch):
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    cpu = jax.devices("cpu")
    assert xla_options.compiler_options(cpu) == dict(xla_options.CPU_COMPILER_OPTIONS)
    mine = {xla_options.YNN_FUSION_OPTION: "dot", "xla_backend_optimization_level": 0}
    assert xla_options.compiler_options(cpu, mine) == mine


def test_accelerators_get_only_the_callers_options():
    assert xla_options.compiler_options([FakeDevice("gpu")]) is None
    assert xla_options.compiler_options([FakeDevice("tpu")], {"a": 1}) == {"a": 1}
    assert xla_options.compiler_options([FakeDevice("cpu"), FakeDevice("gpu")]) is None


def test_users_xla_flags_win(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", f"--{xla_options.YNN_FUSION_OPTION}=dot")
    assert xla_options.compiler_options(jax.devices("cpu")) is None


def test_an_option_this_jaxlib_rejects_is_dropped(monkeypatch):
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    monkeypatch.setattr(xla_options, "CPU_COMPILER_OPTIONS", {"xla_cpu_no_such_option": ""})
    assert xla_options.compiler_options(jax.devices("cpu")) is None


def test_the_defaults_take_convolutions_out_of_ynnpack(monkeypatch):
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    x, w = jnp.ones((2, 18, 18, 64)), jnp.ones((3, 3, 64, 64))

    def conv(x_, w_):
        return lax.conv_general_dilated(x_, w_, (1, 1), "VALID", dimension_numbers=DIMS)

    options = xla_options.compiler_options(jax.devices("cpu"))
    default_hlo = jax.jit(conv).lower(x, w).compile().as_text()
    tuned_hlo = jax.jit(conv, compiler_options=options).lower(x, w).compile().as_text()
    assert "ynn_fusion" not in tuned_hlo
    assert "convolution(" in tuned_hlo
    if "ynn_fusion" not in default_hlo:
        pytest.skip("this jaxlib does not use YNNPACK fusions for convolutions by default")
