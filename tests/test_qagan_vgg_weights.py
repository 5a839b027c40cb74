"""QAGAN's `model.vgg_weights`: the training state's encoder comes from a VGG-19 checkpoint."""

import logging

import jax
import numpy as np
import pytest
from flax import nnx

from common import vgg
from qagan_jax import config as qagan_config
from qagan_jax import models, train
from tests import torch_format
from tests.vgg_reference import random_features

FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def test_create_train_state_loads_vgg_weights(tmp_path, caplog):
    path = tmp_path / "vgg19-dcbb9e9d.pth"
    torch_format.save_legacy(random_features("vgg19"), path)
    config = qagan_config.get_config("smoke")
    config.model.vgg_width = 1
    config.model.vgg_weights = str(path)
    mesh = train.make_mesh(jax.devices()[:1])
    with caplog.at_level(logging.WARNING):
        state = train.create_train_state(
            config, jax.random.key(0), mesh, compiler_options=FAST_COMPILE
        )
    assert "random VGG-19" not in caplog.text
    loaded = nnx.state(vgg.load_vgg19(path, taps=models.TAPS))
    jax.tree.map(np.testing.assert_array_equal, state.encoder, loaded)
    assert train.encoder_description(config) == f"VGG-19 from {path}"
    assert train.encoder_description(qagan_config.get_config("smoke")) == "random VGG-19"


def test_vgg_weights_need_the_real_width(tmp_path):
    config = qagan_config.get_config("smoke")  # vgg_width 16
    config.model.vgg_weights = str(tmp_path / "vgg19.pth")
    with pytest.raises(ValueError, match="vgg_width = 1"):
        train.create_train_state(config, jax.random.key(0), train.make_mesh(jax.devices()[:1]))
