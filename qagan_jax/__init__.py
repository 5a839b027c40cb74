"""QAGAN: unpaired image enhancement with a Quality Attention GAN, in JAX / flax.nnx.

Modules: `models` (QAM, generators, discriminators), `losses` (RaHinge, cycle), `train`
(the state pytree and the jit-compiled, shardable train step), `config` (ml_collections).
"""

from qagan_jax import config, losses, models, train
from qagan_jax.losses import cycle_loss, rahinge_d, rahinge_g
from qagan_jax.models import QAM, Discriminator, GeneratorH, GeneratorL

__all__ = [
    "QAM",
    "Discriminator",
    "GeneratorH",
    "GeneratorL",
    "config",
    "cycle_loss",
    "losses",
    "models",
    "rahinge_d",
    "rahinge_g",
    "train",
]
