"""QAGAN train step: golden losses, one compile, 1 vs 4 devices, frozen VGG, spectral-norm
state, NaN guard, learning-rate schedule, Orbax save/restore and resume."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from qagan_jax import config as qagan_config
from qagan_jax import losses as qagan_losses
from qagan_jax import models, train

# Tiny networks compile far faster than they run; skip LLVM's optimisations for them.
FAST_COMPILE = {"xla_backend_optimization_level": 0}
BATCH = 4
LOSSES = ("d_h", "d_l", "d_total", "g_adv_h", "g_adv_l", "cycle", "g_total")

# Float noise between two programs computing the same gradients (different reduction orders:
# 1 vs 4 devices, the fused step vs a direct jax.grad), relative to the largest entry.
# Measured, 1 vs 4 devices: <= 6.4e-6 for every net on jaxlib 0.10.2 and 0.12. (G_L's was
# 2.5e-3 on 0.12 before the QAM centred its values: see `models.QAM`.)
GRAD_NOISE = 1e-5
NETS = ("g_h", "g_l", "d_h", "d_l")


def _batch(seed=0, size=32):
    rng = np.random.default_rng(seed)
    low = rng.uniform(-1, 0.4, (BATCH, size, size, 3)).astype(np.float32)  # darker domain
    high = rng.uniform(-0.6, 1, (BATCH, size, size, 3)).astype(np.float32)
    return {"low": low, "high": high}


def _copy(state):
    # The jitted step donates its state; tests step copies so fixtures stay usable.
    return jax.tree.map(lambda x: x.copy(), state)


class Setup:
    def __init__(self, devices):
        self.config = qagan_config.get_config("smoke")
        # These tests check the step's mechanics at its first update, so they start from the
        # He init: the default orthogonal x 0.02 init (UEGAN's) starts so silent that deep
        # layers' first gradients are ~1e-18, where float32 flushes Adam's second moments to 0
        # in one program and not in another (so the golden losses are the He init's too).
        self.config.model.init = "he"
        self.mesh = train.make_mesh(devices)
        self.state = train.create_train_state(
            self.config, jax.random.key(0), self.mesh, compiler_options=FAST_COMPILE
        )
        self.step = train.jit_train_step(self.state, self.mesh, compiler_options=FAST_COMPILE)
        self.key = jax.random.key(1)


@pytest.fixture(scope="module")
def one():
    return Setup(jax.devices()[:1])


@pytest.fixture(scope="module")
def one_step(one):
    """(state before, state after one step, metrics) on one device."""
    state, metrics = one.step(_copy(one.state), _batch(), one.key)
    return one.state, state, jax.device_get(metrics)


# Recorded from this implementation (smoke config, seed 0, `_batch(0)`) on XLA:CPU, with the
# unbiased channel variance (`model.stat_ddof = 1`; the biased one gave d_l 2.09987, g_adv_l
# 1.92878, cycle 1.94196).
GOLDEN = {
    "d_h": 1.9736484289169312,
    "d_l": 2.0997462272644043,
    "g_adv_h": 2.0402140617370605,
    "g_adv_l": 1.928884744644165,
    "cycle": 1.942460536956787,
}


def test_golden_losses(one_step):
    _, _, metrics = one_step
    assert metrics["finite"] == 1.0
    for name, want in GOLDEN.items():
        np.testing.assert_allclose(metrics[name], want, rtol=1e-4, err_msg=name)
    np.testing.assert_allclose(metrics["d_total"], metrics["d_h"] + metrics["d_l"], rtol=1e-6)
    want_g = metrics["g_adv_h"] + metrics["g_adv_l"] + 2.0 * metrics["cycle"]
    np.testing.assert_allclose(metrics["g_total"], want_g, rtol=1e-6)
    np.testing.assert_allclose(metrics["lr"], 1e-4, rtol=1e-6)


@pytest.mark.slow  # a second full compile (~20 s on a busy 2-core CPU)
def test_gradients_match_a_direct_implementation(one_step):
    """The step pulls the generator loss back through one VJP of the generator forward; check
    its gradients (Adam's first moment after one step is (1 - b1) * grad) against jax.grad of
    the losses written out directly, with a second generator forward."""
    before, after, _ = one_step
    batch = jax.tree.map(jnp.asarray, _batch())
    x_l, x_h = batch["low"], batch["high"]

    def losses_direct(gen_params, disc_params):
        encoder = nnx.merge(before.encoder_def, before.encoder)
        g = nnx.merge(before.gen_def, gen_params)
        encode = lambda x: encoder((x + 1) / 2)  # noqa: E731
        f_l, f_h = encode(x_l), encode(x_h)
        f_r = jax.tree.map(lambda f: jnp.roll(f, 1, axis=0), f_l)
        fake_h, fake_l = g.g_h(f_l, x_l), g.g_l(f_h, f_r)
        rec_l, rec_h = g.g_l(encode(fake_h), f_r), g.g_h(encode(fake_l), fake_l)
        cycle = qagan_losses.cycle_loss(f_h, encode(rec_h)) + qagan_losses.cycle_loss(
            f_l, encode(rec_l)
        )
        d_new = nnx.merge(before.disc_def, after.disc, after.spectral)
        g_loss = (
            qagan_losses.multiscale_rahinge_g(d_new.d_h(x_h), d_new.d_h(fake_h))
            + qagan_losses.multiscale_rahinge_g(d_new.d_l(x_l), d_new.d_l(fake_l))
            + 2.0 * cycle
        )
        d_old = nnx.merge(before.disc_def, disc_params, after.spectral)  # iterated u, v
        sg = jax.lax.stop_gradient
        d_loss = qagan_losses.multiscale_rahinge_d(
            d_old.d_h(x_h), d_old.d_h(sg(fake_h))
        ) + qagan_losses.multiscale_rahinge_d(d_old.d_l(x_l), d_old.d_l(sg(fake_l)))
        return g_loss, d_loss

    def grads(gen_params, disc_params):
        g_grad = jax.grad(lambda p: losses_direct(p, disc_params)[0])(gen_params)
        d_grad = jax.grad(lambda p: losses_direct(gen_params, p)[1])(disc_params)
        return g_grad, d_grad

    g_grad, d_grad = (
        jax.jit(grads).lower(before.gen, before.disc).compile(FAST_COMPILE)(before.gen, before.disc)
    )
    mu = {**after.gen_opt[0].mu, **after.disc_opt[0].mu}
    for net, want in {**g_grad, **d_grad}.items():
        # atol: float32 noise relative to the net's largest gradient (GRAD_NOISE, above); it
        # also covers gradients that are exactly zero in exact arithmetic.
        scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(want))
        jax.tree.map(
            lambda m, g, a=GRAD_NOISE * scale: np.testing.assert_allclose(
                m, 0.5 * g, rtol=1e-3, atol=a
            ),
            mu[net],
            want,
        )


def test_second_call_does_not_retrace(one, one_step):
    _, state, _ = one_step
    state2, metrics = one.step(_copy(state), _batch(1), jax.random.key(7))
    assert one.step._cache_size() == 1
    assert int(state2.step) == 2 and float(metrics["finite"]) == 1.0


def test_step_updates_generators_and_discriminators(one_step):
    before, after, _ = one_step
    assert int(after.step) == 1
    for group in ("gen", "disc"):
        changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), getattr(before, group),
                               getattr(after, group))  # fmt: skip
        assert all(jax.tree.leaves(changed)), f"some {group} parameters did not move"


def test_vgg_gets_no_gradient(one_step):
    before, after, _ = one_step
    # Unchanged after the step ...
    jax.tree.map(np.testing.assert_array_equal, before.encoder, after.encoder)
    # ... and not in either optimiser: Adam's moments mirror exactly the G and D parameters.
    mu_g = before.gen_opt[0].mu
    assert jax.tree.structure(mu_g) == jax.tree.structure(before.gen)
    assert jax.tree.structure(before.disc_opt[0].mu) == jax.tree.structure(before.disc)
    n_enc = len(jax.tree.leaves(before.encoder))
    assert n_enc == 26  # conv1_1 ... conv5_1, kernel + bias
    assert len(jax.tree.leaves(mu_g)) == len(jax.tree.leaves(before.gen))


def test_spectral_state_changes_only_in_the_discriminator_update(one_step):
    """After a step, u, v are exactly one power iteration on the *pre-update* kernels: the D
    update iterated once, and the generator update (which sees the new kernels) did not."""
    before, after, _ = one_step
    d_before = nnx.merge(before.disc_def, before.disc, before.spectral)
    d_after = nnx.merge(after.disc_def, after.disc, after.spectral)
    for name in ("d_h", "d_l"):
        for b in range(1, 6):
            conv0 = getattr(getattr(d_before, name), f"block{b}")
            conv1 = getattr(getattr(d_after, name), f"block{b}")
            w0 = np.asarray(conv0.conv.kernel[...]).reshape(-1, conv0.u.shape[0])
            v = w0 @ np.asarray(conv0.u[...])
            v /= np.linalg.norm(v)
            u = w0.T @ v
            u /= np.linalg.norm(u)
            np.testing.assert_allclose(conv1.v[...], v, rtol=1e-4, atol=1e-6)
            np.testing.assert_allclose(conv1.u[...], u, rtol=1e-4, atol=1e-6)
            assert not np.allclose(conv1.u[...], conv0.u[...])


def _net_leaves(state, net):
    """(parameter, Adam mu, Adam nu) leaves of one network of the state."""
    params, opt = (
        (state.gen, state.gen_opt) if net.startswith("g") else (state.disc, state.disc_opt)
    )
    adam = opt[0]
    trees = (params[net], adam.mu[net], adam.nu[net])
    return list(zip(*(jax.tree.leaves(t) for t in trees), strict=True))


def _assert_same_adam_step(net, one_dev, four_dev, opt):
    """One Adam step from equal parameters. The gradients (read back from the moments,
    g = mu / (1 - b1) and |g| = sqrt(nu / (1 - b2))) agree within GRAD_NOISE, and the
    parameters within 1e-5 wherever the gradient is above that noise. Adam's first update is
    lr g / (|g| + eps), about +-lr, so an entry whose gradient is at noise level may flip sign
    between the programs: such entries may differ by up to 2 lr."""
    pairs = zip(_net_leaves(one_dev, net), _net_leaves(four_dev, net), strict=True)
    for (p1, m1, _), (p4, m4, n4) in pairs:
        g1, g4 = np.asarray(m1) / (1 - opt.b1), np.asarray(m4) / (1 - opt.b1)
        noise = GRAD_NOISE * np.abs(g1).max()
        np.testing.assert_allclose(g4, g1, rtol=1e-5, atol=noise)
        abs_g4 = np.sqrt(np.asarray(n4) / (1 - opt.b2))
        np.testing.assert_allclose(abs_g4, np.abs(g1), rtol=1e-5, atol=noise)
        p1, p4 = np.asarray(p1), np.asarray(p4)
        settled = np.abs(g1) > noise
        np.testing.assert_allclose(p4[settled], p1[settled], rtol=1e-5, atol=1e-5)
        assert np.abs(p4 - p1).max() <= 2 * opt.learning_rate + 1e-5


def test_one_device_equals_four_devices(one):
    assert len(jax.devices()) >= 4, "conftest sets 4 fake CPU devices"
    results = []
    for devices in (jax.devices()[:1], jax.devices()[:4]):
        mesh = train.make_mesh(devices)
        state = jax.device_put(_copy(one.state), train.state_shardings(one.state, mesh))
        step = train.jit_train_step(state, mesh, compiler_options=FAST_COMPILE)
        results.append(step(state, _batch(), one.key))
    (state1, metrics1), (state4, metrics4) = results
    assert state4.gen["g_h"]["decoder"]["conv1_1"]["conv"]["kernel"].sharding.num_devices == 4
    for name in LOSSES:
        np.testing.assert_allclose(metrics4[name], metrics1[name], rtol=1e-5, atol=1e-6)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5),
        state4.spectral,
        state1.spectral,
    )
    for net in NETS:
        _assert_same_adam_step(net, state1, state4, one.config.opt)


def test_non_finite_loss_discards_update_and_raises(one):
    batch = _batch()
    batch["high"][0, 0, 0, 0] = np.nan
    state, metrics = one.step(_copy(one.state), batch, one.key)
    assert float(metrics["finite"]) == 0.0
    jax.tree.map(np.testing.assert_array_equal, state.gen, one.state.gen)
    assert int(state.step) == 0
    with pytest.raises(train.NonFiniteLossError, match="non-finite loss at step 0"):
        train.assert_finite(metrics, step=0)
    train.assert_finite({"finite": jnp.float32(1.0)})


def test_learning_rate_schedule():
    opt = qagan_config.get_config("paper").opt
    with pytest.raises(ValueError, match="steps_per_epoch"):
        train.learning_rate_schedule(opt)  # -1 until the data resolves it
    opt.steps_per_epoch = 188  # FiveK: ceil(2250 / 12)
    lr = train.learning_rate_schedule(opt)
    spe = opt.steps_per_epoch
    np.testing.assert_allclose(
        [lr(0), lr(75 * spe - 1), lr(75 * spe), lr(int(112.5 * spe)), lr(150 * spe)],
        [1e-4, 1e-4, 1e-4, 5e-5, 0.0],
        atol=1e-9,
    )
    assert isinstance(train.learning_rate_schedule(opt)(10), jax.Array | float | np.ndarray)


def test_eval_step_runs_g_h_only(one):
    evaluate = train.jit_eval_step(one.state, one.mesh, compiler_options=FAST_COMPILE)
    out = evaluate(one.state, _batch()["low"])
    assert out.shape == (BATCH, 32, 32, 3) and float(jnp.max(jnp.abs(out))) <= 1.0


def test_orbax_save_restore_then_resume_equals_uninterrupted(one, tmp_path):
    state, _ = one.step(_copy(one.state), _batch(0), one.key)
    with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
        manager.save(1, args=ocp.args.StandardSave(state))
        manager.wait_until_finished()
        abstract = train.abstract_train_state(one.config, jax.random.key(0))
        shardings = train.state_shardings(abstract, one.mesh)
        target = jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
        )
        restored = manager.restore(1, args=ocp.args.StandardRestore(target))
    jax.tree.map(np.testing.assert_array_equal, restored, state)
    # Second step from the restored state == second step uninterrupted (same compiled step).
    resumed, m_resumed = one.step(restored, _batch(1), one.key)
    straight, m_straight = one.step(state, _batch(1), one.key)
    assert one.step._cache_size() == 1
    for name in LOSSES:
        assert float(m_resumed[name]) == float(m_straight[name])
    jax.tree.map(np.testing.assert_array_equal, resumed.gen, straight.gen)
    assert isinstance(resumed.gen_opt[0], optax.ScaleByAdamState)


def test_config_variants_and_every_choice_is_a_switch():
    paper, smoke = qagan_config.get_config("paper"), qagan_config.get_config("smoke")
    assert paper.train.batch_size == 12 and paper.loss.lambda_cc == 2.0
    assert (paper.opt.b1, paper.opt.b2, paper.opt.learning_rate) == (0.5, 0.999, 1e-4)
    assert smoke.model.vgg_width > 1 and smoke.data.image_size == 32
    for field in ("global_residual", "zero_init_residual", "init", "normalize_skips", "gl_skips",
                  "reference", "qam_normalization", "qam_residual", "qam_normalize_inputs",
                  "qam_scale_logits", "disc_all_heads", "upsample"):  # fmt: skip
        assert field in paper.model
    assert {"rahinge_scale", "cycle_distance", "lambda_cc"} <= set(paper.loss)
    with pytest.raises(ValueError):
        qagan_config.get_config("nope")
    assert models.TAPS == ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")


def test_bfloat16_compute_trains_with_float32_state(one):
    config = qagan_config.get_config("smoke")
    config.opt.steps_per_epoch = 2
    config.model.compute_dtype = "bfloat16"
    config.model.init = one.config.model.init  # the same weights as `one`
    state = train.create_train_state(
        config, jax.random.key(0), one.mesh, compiler_options=FAST_COMPILE
    )
    step = train.jit_train_step(state, one.mesh, compiler_options=FAST_COMPILE)
    hlo = step.lower(state, _batch(), one.key).as_text()
    assert "bf16" in hlo and "convolution" in hlo
    _, reference = one.step(_copy(one.state), _batch(), one.key)  # float32, same weights
    for i in range(3):
        state, metrics = step(state, _batch(i), one.key)
        train.assert_finite(metrics, i)
        if i == 0:  # bfloat16 rounding, not a different computation
            for name in LOSSES:
                assert float(metrics[name]) == pytest.approx(float(reference[name]), rel=0.05)
    leaves = jax.tree.leaves((state.gen, state.disc, state.gen_opt, state.spectral))
    assert all(x.dtype != jnp.bfloat16 for x in leaves)
    out = train.eval_step(state, _batch()["low"])
    assert out.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(out)))
