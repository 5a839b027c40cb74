"""QAGAN training state and the one jit-compiled, shardable train step (spec/qagan.md 6-7).

The whole state is one pytree (`TrainState`): the frozen VGG-19 encoder, the generators' and
the discriminators' parameters (from `nnx.split`), the spectral-norm power-iteration vectors,
two Adam states and the step counter. The static parts (GraphDefs, the optax transformation,
the loss switches) ride along as non-pytree fields, so `train_step(state, batch, key)` needs
nothing else and Orbax can save `state` and restore it against `jax.eval_shape` of
`create_train_state`.

One step (`train_step`):
  1. one generator forward, kept for its VJP: x~_H = G_H(x_L), x~_L = G_L(x_H, x_R),
     x^_L = G_L(x~_H, x_R), x^_H = G_H(x~_L), and the VGG cycle loss;
  2. one spectral-norm power iteration per discriminator, then an Adam update of D_H and D_L
     on the stop-gradient fakes;
  3. the generator RaHinge loss against the *updated* discriminators (reals re-scored), whose
     gradient with respect to the fakes is pulled back through step 1's VJP together with the
     cycle term - no second generator forward.
A non-finite loss leaves the state unchanged (the update is discarded on device) and sets
`metrics["finite"] = 0`; `assert_finite(metrics)` turns that into an exception on the host, so a
training loop stops before it can checkpoint a corrupt state.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx, struct
from jax.sharding import Mesh

from common import training, vgg, xla_options
from common.training import (  # noqa: F401  (re-exported: this module's public names)
    DATA_AXIS,
    NonFiniteLossError,
    batch_sharding,
    check_finite,
    make_mesh,
    replicated,
    state_shardings,
)
from qagan_jax import losses, models


class Generators(nnx.Module):
    """The two trainable generators (one optimiser)."""

    def __init__(self, feat_channels, model_cfg: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
        init = models.kernel_init(model_cfg.init, model_cfg.init_gain)
        self.g_h = models.GeneratorH(
            feat_channels,
            width=model_cfg.gen_width,
            upsample=model_cfg.upsample,
            global_residual=model_cfg.global_residual,
            zero_init_residual=model_cfg.zero_init_residual,
            kernel_init=init,
            normalize_skips=model_cfg.normalize_skips,
            stat_ddof=model_cfg.stat_ddof,
            rngs=rngs,
        )
        self.g_l = models.GeneratorL(
            feat_channels,
            width=model_cfg.gen_width,
            upsample=model_cfg.upsample,
            skips=model_cfg.gl_skips,
            normalize_skips=model_cfg.normalize_skips,
            qam_kwargs=dict(
                normalization=model_cfg.qam_normalization,
                residual=model_cfg.qam_residual,
                normalize_inputs=model_cfg.qam_normalize_inputs,
                scale_logits=model_cfg.qam_scale_logits,
            ),
            stat_ddof=model_cfg.stat_ddof,
            kernel_init=init,
            rngs=rngs,
        )


class Discriminators(nnx.Module):
    """D_H (judges high-quality images) and D_L (low-quality), one optimiser."""

    def __init__(self, model_cfg: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
        kw = dict(
            width=model_cfg.disc_width,
            all_heads=model_cfg.disc_all_heads,
            head_activation=model_cfg.get("disc_head", "tanh"),
            kernel_init=models.kernel_init(model_cfg.init, model_cfg.init_gain),
            rngs=rngs,
        )
        self.d_h = models.Discriminator(**kw)
        self.d_l = models.Discriminator(**kw)


@dataclasses.dataclass(frozen=True)
class StepSettings:
    """Static, hashable switches the step reads (from the config's `loss` and `model`)."""

    lambda_cc: float
    rahinge_scale: float
    cycle_distance: str
    reference: str
    compute_dtype: str = "float32"


@struct.dataclass
class TrainState:
    """Everything that changes during training, as one pytree (+ static structure)."""

    step: jax.Array  # int32 scalar: completed steps
    encoder: nnx.State  # frozen VGG-19 (conv1_1 ... conv5_1): never optimised
    gen: nnx.State  # Params of Generators (G_H, G_L)
    disc: nnx.State  # Params of Discriminators (D_H, D_L)
    spectral: nnx.State  # SpectralState (u, v) of D_H, D_L: changed only by the D update
    gen_opt: optax.OptState
    disc_opt: optax.OptState
    encoder_def: nnx.GraphDef = struct.field(pytree_node=False)
    gen_def: nnx.GraphDef = struct.field(pytree_node=False)
    disc_def: nnx.GraphDef = struct.field(pytree_node=False)
    tx: optax.GradientTransformation = struct.field(pytree_node=False)
    schedule: Any = struct.field(pytree_node=False)
    settings: StepSettings = struct.field(pytree_node=False)


def learning_rate_schedule(opt_cfg: ml_collections.ConfigDict) -> optax.Schedule:
    """Constant `learning_rate` until `decay_start_epoch`, then linear to 0 at `num_epochs`.

    `steps_per_epoch` must be resolved (>= 1); the training loop derives it from the data when
    the config says -1 (`resolve_steps_per_epoch`).
    """
    if opt_cfg.steps_per_epoch < 1:
        raise ValueError(
            f"opt.steps_per_epoch={opt_cfg.steps_per_epoch}: resolve it from the data first "
            "(qagan_jax.train.resolve_steps_per_epoch) or set it"
        )
    start = opt_cfg.decay_start_epoch * opt_cfg.steps_per_epoch
    end = opt_cfg.num_epochs * opt_cfg.steps_per_epoch
    return optax.join_schedules(
        [
            optax.constant_schedule(opt_cfg.learning_rate),
            optax.linear_schedule(opt_cfg.learning_rate, 0.0, max(end - start, 1)),
        ],
        boundaries=[start],
    )


def _build(config: ml_collections.ConfigDict, key: jax.Array):
    """Modules and static parts from the config (traced under `jit` / `eval_shape`)."""
    m = config.model
    k_enc, k_gen, k_disc = jax.random.split(key, 3)
    encoder = vgg.VGG("vgg19", taps=models.TAPS, width=m.vgg_width, rngs=nnx.Rngs(k_enc))
    feat_channels = tuple(encoder.channels[t] for t in models.TAPS)
    gens = Generators(feat_channels, m, rngs=nnx.Rngs(k_gen))
    discs = Discriminators(m, rngs=nnx.Rngs(k_disc))
    return encoder, gens, discs


def resolve_steps_per_epoch(config: ml_collections.ConfigDict, num_low: int, num_high: int):
    """Sets `opt.steps_per_epoch` from the data if the config says -1 (returns the config).

    An epoch is one pass over the larger training domain: ceil(max(low, high) / batch) steps
    (FiveK's 2250 / 12 -> 188, the paper's schedule).
    """
    if config.opt.steps_per_epoch < 1:
        config.opt.steps_per_epoch = max(1, -(-max(num_low, num_high) // config.train.batch_size))
    return config


def num_train_steps(config: ml_collections.ConfigDict) -> int:
    """Total steps of the schedule: `num_epochs` x `steps_per_epoch` (resolved)."""
    return int(config.opt.num_epochs * config.opt.steps_per_epoch)


@functools.cache
def _static_parts(config_json: str):
    """(tx, schedule, settings) per distinct config. Cached so that every state made from an
    equal config (create_train_state, the Orbax restore target) carries the *same* static
    objects; jit caches key on them, so a restored state reuses the compiled step."""
    config = ml_collections.ConfigDict(json.loads(config_json))
    schedule = learning_rate_schedule(config.opt)
    tx = optax.adam(schedule, b1=config.opt.b1, b2=config.opt.b2)
    settings = StepSettings(
        lambda_cc=float(config.loss.lambda_cc),
        rahinge_scale=float(config.loss.rahinge_scale),
        cycle_distance=str(config.loss.cycle_distance),
        reference=str(config.model.reference),
        compute_dtype=str(config.model.get("compute_dtype", "float32")),
    )
    if settings.compute_dtype not in ("float32", "bfloat16"):
        raise ValueError(f"unknown compute dtype {settings.compute_dtype!r}: float32 | bfloat16")
    if settings.reference not in ("roll", "self"):
        raise ValueError(f"unknown reference {settings.reference!r}: roll | self")
    if settings.cycle_distance not in ("mse", "l2"):
        raise ValueError(f"unknown cycle distance {settings.cycle_distance!r}: mse | l2")
    return tx, schedule, settings


def _init_state(config: ml_collections.ConfigDict, key: jax.Array) -> TrainState:
    tx, schedule, settings = _static_parts(config.to_json(sort_keys=True))
    encoder, gens, discs = _build(config, key)
    encoder_def, encoder_state = nnx.split(encoder)
    gen_def, gen_params = nnx.split(gens, nnx.Param)
    disc_def, disc_params, spectral = nnx.split(discs, nnx.Param, models.SpectralState)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        encoder=encoder_state,
        gen=gen_params,
        disc=disc_params,
        spectral=spectral,
        gen_opt=tx.init(gen_params),
        disc_opt=tx.init(disc_params),
        encoder_def=encoder_def,
        gen_def=gen_def,
        disc_def=disc_def,
        tx=tx,
        schedule=schedule,
        settings=settings,
    )


def create_train_state(
    config: ml_collections.ConfigDict,
    key: jax.Array,
    mesh: Mesh,
    *,
    encoder_state: nnx.State | None = None,
    compiler_options: Mapping[str, Any] | None = None,
) -> TrainState:
    """Initialises the full training state, replicated over `mesh`.

    Parameters are created inside `jit` directly with their (replicated) shardings, so nothing
    big is built on the host. The VGG-19 encoder is `encoder_state` if given (e.g. from
    `common.vgg.load_vgg19`, split with `nnx.split`), else loaded from `config.model.vgg_weights`
    if set (which needs `model.vgg_width == 1`); otherwise it is random and a warning says so
    (`encoder_description` is what metrics files should record). `compiler_options` are XLA
    options for this compile (tests pass fast-compile ones), on top of the project's CPU
    defaults (`common.xla_options`).
    """
    if encoder_state is None and config.model.get("vgg_weights"):
        encoder_state = _pretrained_encoder(config.model)  # before compiling: fail early
    init = jax.jit(
        functools.partial(_init_state, config),
        out_shardings=replicated(mesh),
        compiler_options=xla_options.compiler_options(mesh.devices.flat, compiler_options),
    )
    # The state is replicated, so partitionable threefry buys nothing here, and XLA:CPU
    # compiles its ~150 draws several times slower (about 4x on a shared 2-core machine).
    with jax.threefry_partitionable(False):
        state = init(key)
    if encoder_state is None:
        logging.warning("QAGAN encoder: random VGG-19 weights (no checkpoint given)")
    else:
        state = state.replace(encoder=jax.device_put(encoder_state, replicated(mesh)))
    return state


def _pretrained_encoder(model_cfg: ml_collections.ConfigDict) -> nnx.State:
    if model_cfg.vgg_width != 1:
        raise ValueError(
            f"model.vgg_weights needs the real VGG-19 (model.vgg_width = 1, not "
            f"{model_cfg.vgg_width})"
        )
    encoder = vgg.load_vgg19(model_cfg.vgg_weights, taps=models.TAPS)
    logging.info("QAGAN encoder: VGG-19 from %s", model_cfg.vgg_weights)
    return nnx.split(encoder)[1]


def encoder_description(config: ml_collections.ConfigDict) -> str:
    """What the encoder is, for metrics files: "random VGG-19" or "VGG-19 from <path>"."""
    path = config.model.get("vgg_weights")
    return f"VGG-19 from {path}" if path else "random VGG-19"


def abstract_train_state(config: ml_collections.ConfigDict, key: jax.Array) -> TrainState:
    """`jax.eval_shape` of the state: the restore target for Orbax (`StandardRestore`)."""
    return jax.eval_shape(functools.partial(_init_state, config), key)


# --------------------------------------------------------------------------------------------
# The step


def _to_unit(x: jax.Array) -> jax.Array:
    return (x + 1.0) * 0.5  # QAGAN's [-1, 1] images -> VGG's [0, 1]


def _cast(tree, dtype):
    """The floating leaves of `tree` in `dtype` (nothing changes for float32)."""
    return jax.tree.map(
        lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree
    )


def _f32(tree):
    return _cast(tree, jnp.float32)


def train_step(
    state: TrainState, batch: Mapping[str, jax.Array], key: jax.Array
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One QAGAN update: both discriminators, then both generators (module docstring).

    Args:
      state: the `TrainState`.
      batch: `{"low": (B, H, W, 3), "high": (B, H, W, 3)}` in [-1, 1], H and W divisible by 16.
      key: PRNG key; folded with the step. The model has no stochastic layers, so it is
        currently unused; it is part of the signature for data-dependent randomness.

    Returns:
      (new state, metrics): scalar losses `d_h`, `d_l` (discriminator RaHinge, before the D
      update), `g_adv_h`, `g_adv_l` (generator RaHinge against the updated D), `cycle` (L_cc),
      `g_total`, `d_total`, the learning rate `lr` and `finite` (1 if every loss was finite; if
      not, the returned state is the input state).
    """
    del key  # jax.random.fold_in(key, state.step) once something needs randomness
    s = state.settings
    # Compute dtype: images and parameter copies in it; the float32 parameters, optimiser
    # states and spectral vectors are what gets updated, and losses are float32.
    dt = jnp.dtype(s.compute_dtype)
    x_l, x_h = batch["low"].astype(dt), batch["high"].astype(dt)
    encoder = nnx.merge(state.encoder_def, _cast(state.encoder, dt))

    def encode(x):
        return encoder(_to_unit(x))

    # Features of the real images: constants of the whole step.
    f_l, f_h = encode(x_l), encode(x_h)
    if s.reference == "roll":  # x_R = the low batch rolled by one; E(x_R) = roll(E(x_L))
        f_r = jax.tree.map(lambda f: jnp.roll(f, 1, axis=0), f_l)
    else:
        f_r = f_l

    def generate(gen_params):
        gens = nnx.merge(state.gen_def, _cast(gen_params, dt))
        fake_h = gens.g_h(f_l, x_l)  # x~_H
        fake_l = gens.g_l(f_h, f_r)  # x~_L
        rec_l = gens.g_l(encode(fake_h), f_r)  # x^_L
        rec_h = gens.g_h(encode(fake_l), fake_l)  # x^_H
        cycle = losses.cycle_loss(
            _f32(f_h), _f32(encode(rec_h)), distance=s.cycle_distance
        ) + losses.cycle_loss(_f32(f_l), _f32(encode(rec_l)), distance=s.cycle_distance)
        return (fake_h, fake_l), cycle

    ((fake_h, fake_l), cycle), generate_vjp = jax.vjp(generate, state.gen)

    # --- Discriminator update on stop-gradient fakes ---------------------------------------
    discs = nnx.merge(state.disc_def, state.disc, state.spectral)
    discs.d_h.power_iterate()
    discs.d_l.power_iterate()
    _, _, spectral = nnx.split(discs, nnx.Param, models.SpectralState)
    sg_h, sg_l = jax.lax.stop_gradient(fake_h), jax.lax.stop_gradient(fake_l)

    def judge(d, x):  # head logits in float32
        return _f32(d(x))

    def disc_loss(disc_params):
        d = nnx.merge(state.disc_def, _cast(disc_params, dt), spectral)
        loss_h = losses.multiscale_rahinge_d(
            judge(d.d_h, x_h), judge(d.d_h, sg_h), scale=s.rahinge_scale
        )
        loss_l = losses.multiscale_rahinge_d(
            judge(d.d_l, x_l), judge(d.d_l, sg_l), scale=s.rahinge_scale
        )
        return loss_h + loss_l, (loss_h, loss_l)

    (d_total, (d_h, d_l)), d_grads = jax.value_and_grad(disc_loss, has_aux=True)(state.disc)
    d_updates, disc_opt = state.tx.update(d_grads, state.disc_opt, state.disc)
    disc = optax.apply_updates(state.disc, d_updates)

    # --- Generator update against the updated discriminators ------------------------------
    def adversarial(fakes):
        d = nnx.merge(state.disc_def, _cast(disc, dt), spectral)
        adv_h = losses.multiscale_rahinge_g(
            judge(d.d_h, x_h), judge(d.d_h, fakes[0]), scale=s.rahinge_scale
        )
        adv_l = losses.multiscale_rahinge_g(
            judge(d.d_l, x_l), judge(d.d_l, fakes[1]), scale=s.rahinge_scale
        )
        return adv_h + adv_l, (adv_h, adv_l)

    (adv, (adv_h, adv_l)), fake_grads = jax.value_and_grad(adversarial, has_aux=True)(
        (fake_h, fake_l)
    )
    (g_grads,) = generate_vjp((fake_grads, jnp.asarray(s.lambda_cc, cycle.dtype)))
    g_total = losses.generator_loss(adv_h, adv_l, cycle, lambda_cc=s.lambda_cc)
    g_updates, gen_opt = state.tx.update(g_grads, state.gen_opt, state.gen)
    gen = optax.apply_updates(state.gen, g_updates)

    metrics = dict(
        d_h=d_h, d_l=d_l, d_total=d_total, g_adv_h=adv_h, g_adv_l=adv_l, cycle=cycle,
        g_total=g_total, lr=jnp.asarray(state.schedule(state.step), jnp.float32),
    )  # fmt: skip
    finite = jnp.all(jnp.isfinite(jnp.stack([d_total, g_total, cycle])))
    metrics["finite"] = finite.astype(jnp.float32)
    new_state = state.replace(
        step=state.step + 1,
        gen=gen,
        disc=disc,
        spectral=spectral,
        gen_opt=gen_opt,
        disc_opt=disc_opt,
    )
    # Discard the whole update if any loss is NaN/Inf (elementwise selects fuse into the Adam
    # update, so this costs next to nothing); the host sees metrics["finite"] == 0.
    new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state)
    return new_state, metrics


def eval_step(state: TrainState, images_low: jax.Array) -> jax.Array:
    """Test-time enhancement: G_H(x_L) for (N, H, W, 3) in [-1, 1], H, W divisible by 16; the
    config's compute dtype inside, float32 out."""
    dt = jnp.dtype(state.settings.compute_dtype)
    x = images_low.astype(dt)
    encoder = nnx.merge(state.encoder_def, _cast(state.encoder, dt))
    gens = nnx.merge(state.gen_def, _cast(state.gen, dt))
    return gens.g_h(encoder(_to_unit(x)), x).astype(jnp.float32)


def jit_train_step(
    state: TrainState, mesh: Mesh, *, compiler_options: Mapping[str, Any] | None = None
):
    """`train_step` compiled with explicit shardings (`common.training.jit_train_step`: state
    replicated and donated, batch split over `data`). Returns `f(state, batch, key)`; it
    compiles once per state structure and batch shape. The global batch must divide by the
    mesh size. `compiler_options` add to (and override) the CPU defaults of
    `common.xla_options`.
    """
    return training.jit_train_step(train_step, state, mesh, compiler_options=compiler_options)


def jit_eval_step(
    state: TrainState, mesh: Mesh, *, compiler_options: Mapping[str, Any] | None = None
):
    """`eval_step` compiled with the batch split over `data`; returns `f(state, images)`."""
    return training.jit_eval_step(eval_step, state, mesh, compiler_options=compiler_options)


def assert_finite(metrics: Mapping[str, Any], step: int | None = None) -> None:
    """Raises `NonFiniteLossError` naming the bad losses if the step reported a NaN/Inf.

    Call it on every step's metrics before logging or checkpointing (it syncs with the device).
    """
    check_finite(metrics, step, what="QAGAN")
