"""QAGAN networks: shapes, parameter counts, the QAM statistics property, spectral norm."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from qagan_jax import models

# Tiny networks compile far faster than they run; skip LLVM's optimisations for them.
FAST_COMPILE = {"xla_backend_optimization_level": 0}
TINY_FEATS = (4, 8, 16, 32, 32)  # VGG-19 tap channels at width 16


def build(cls, *args, seed=0, **kwargs):
    """`cls(*args, **kwargs, rngs=...)` initialised under jit with an RBG key: eager init
    compiles every threefry draw separately, which takes minutes on a busy 2-core CPU."""

    def make():
        return cls(*args, **kwargs, rngs=nnx.Rngs(jax.random.key(seed, impl="rbg")))

    graphdef, _ = nnx.split(nnx.eval_shape(make))
    state = jax.jit(lambda: nnx.state(make())).lower().compile(FAST_COMPILE)()
    return nnx.merge(graphdef, state)


def uniform(seed, shape):
    return np.random.default_rng(seed).uniform(-1, 1, shape).astype(np.float32)


def run(module, *args):
    """Calls `module(*args)` under jit (eager XLA:CPU compiles every op separately)."""
    graphdef, state = nnx.split(module)

    @jax.jit
    def call(state, *args):
        return nnx.merge(graphdef, state)(*args)

    return call.lower(state, *args).compile(FAST_COMPILE)(state, *args)


def tiny_feats(seed, n, h, w):
    # numpy, not jax.random: eager threefry compiles per shape (seconds each on this CPU).
    rng = np.random.default_rng(seed)
    return {
        f"relu{i + 1}_1": np.maximum(rng.normal(size=(n, h >> i, w >> i, TINY_FEATS[i])), 0).astype(
            np.float32
        )
        for i in range(5)
    }


def test_generator_shapes_any_size_divisible_by_16():
    feats = tiny_feats(0, 2, 32, 48)
    x = uniform(1, (2, 32, 48, 3))
    g_h = build(models.GeneratorH, TINY_FEATS, width=16, seed=0)
    g_l = build(models.GeneratorL, TINY_FEATS, width=16, seed=1)
    y_h = run(g_h, feats, x)
    y_l = run(g_l, feats, tiny_feats(2, 2, 32, 48))
    assert y_h.shape == y_l.shape == (2, 32, 48, 3)
    assert float(jnp.max(jnp.abs(y_h))) <= 1.0 and float(jnp.max(jnp.abs(y_l))) <= 1.0


def test_generator_options_change_structure():
    # No skips in G_L: level 3's first conv sees only the decoder's 16 (=256/16) channels.
    g_l = nnx.eval_shape(
        lambda: models.GeneratorL(TINY_FEATS, width=16, skips=False, rngs=nnx.Rngs(0))
    )
    assert g_l.decoder.conv3_1.conv.kernel.shape == (3, 3, 16, 16)
    assert g_l.decoder.conv4_1.conv.kernel.shape == (3, 3, 32, 32)  # level 4: never a skip
    g_l = nnx.eval_shape(lambda: models.GeneratorL(TINY_FEATS, width=16, rngs=nnx.Rngs(0)))
    assert g_l.decoder.conv3_1.conv.kernel.shape == (3, 3, 32, 16)
    # Global residual: clip(tanh + x, -1, 1); with the zero-initialised last conv, the identity.
    feats = tiny_feats(0, 1, 32, 32)
    x = jnp.linspace(-1, 1, 32 * 32 * 3).reshape(1, 32, 32, 3)
    g_h = build(models.GeneratorH, TINY_FEATS, width=16, global_residual=True, seed=0)
    np.testing.assert_array_equal(run(g_h, feats, x), x)
    g_h = build(models.GeneratorH, TINY_FEATS, width=16, global_residual=True,
                zero_init_residual=False, seed=0)  # fmt: skip
    assert float(jnp.max(jnp.abs(run(g_h, feats, x) - x))) > 0.1
    x = jnp.full((1, 32, 32, 3), 0.9)
    plain = nnx.merge(*nnx.split(g_h))
    plain.global_residual = False
    np.testing.assert_allclose(
        run(g_h, feats, x), jnp.clip(run(plain, feats, x) + x, -1, 1), atol=1e-6
    )


@pytest.mark.parametrize("all_heads", [False, True])
def test_discriminator_heads(all_heads):
    d = build(models.Discriminator, width=16, all_heads=all_heads, seed=0)
    heads = run(d, uniform(0, (2, 32, 32, 3)))
    want = [(2, 16, 16, 1), (2, 8, 8, 1), (2, 4, 4, 1), (2, 2, 2, 1), (2, 1, 1, 1)]
    assert [h.shape for h in heads] == (want if all_heads else [want[2], want[4]])
    assert all(float(jnp.max(jnp.abs(h))) < 1.0 for h in heads)


def test_linear_discriminator_heads_are_the_tanh_heads_logits():
    x = 50.0 * uniform(0, (2, 32, 32, 3))  # large inputs: saturated tanh heads
    tanh = run(build(models.Discriminator, width=16, seed=0), x)
    linear = run(build(models.Discriminator, width=16, head_activation="linear", seed=0), x)
    assert max(float(jnp.max(jnp.abs(h))) for h in linear) > 1.0  # unbounded
    for t, lin in zip(tanh, linear, strict=True):
        np.testing.assert_allclose(t, jnp.tanh(lin), atol=1e-6)
    with pytest.raises(ValueError, match="relu"):
        models.Discriminator(width=16, head_activation="relu", rngs=nnx.Rngs(0))


def _conv(k, a, b, bias=True):
    return k * k * a * b + (b if bias else 0)


def test_paper_size_parameter_counts():
    """Counts from the layer lists in spec/qagan.md, against abstract (unallocated) modules."""
    count = lambda make: models.param_count(nnx.eval_shape(make))  # noqa: E731
    dec_from_4 = (
        _conv(3, 512, 512) * 2 + _conv(3, 512, 256)  # level 4 after its first conv
        + _conv(3, 512, 256) + _conv(3, 256, 256) * 2 + _conv(3, 256, 128)  # level 3
        + _conv(3, 256, 128) + _conv(3, 128, 64)  # level 2
        + _conv(3, 128, 64) + _conv(3, 64, 3)  # level 1
    )  # fmt: skip
    g_h = _conv(3, 512, 512) + _conv(3, 1024, 512) + dec_from_4
    # Only theta keeps a bias by default: the others cancel exactly (see QAM).
    qam = _conv(1, 512, 64) + 2 * _conv(1, 512, 64, False) + _conv(1, 64, 512, False)
    g_l = 2 * qam + _conv(3, 512, 512) + _conv(3, 512, 512) + dec_from_4
    blocks = (_conv(7, 3, 32) + _conv(7, 32, 64) + _conv(7, 64, 128) + _conv(5, 128, 256)
              + _conv(5, 256, 512))  # fmt: skip
    d = blocks + _conv(7, 128, 1, False) + _conv(5, 512, 1, False)
    d_all = d + _conv(7, 32, 1, False) + _conv(7, 64, 1, False) + _conv(5, 256, 1, False)
    assert count(lambda: models.GeneratorH(rngs=nnx.Rngs(0))) == g_h == 16_077_891
    assert count(lambda: models.GeneratorL(rngs=nnx.Rngs(0))) == g_l == 13_980_867
    assert count(lambda: models.Discriminator(rngs=nnx.Rngs(0))) == d == 4_622_528
    assert count(lambda: models.Discriminator(all_heads=True, rngs=nnx.Rngs(0))) == d_all
    assert count(lambda: models.QAM(512, rngs=nnx.Rngs(0))) == qam == 131_136


QAM_FLAGS = [
    dict(),
    dict(normalization="literal"),
    dict(residual=True, normalize_inputs=True, scale_logits=True),
    dict(normalization="literal", residual=True),
]


@pytest.mark.parametrize("flags", QAM_FLAGS, ids=lambda f: ",".join(f) or "default")
def test_qam_output_statistics_equal_f_l(flags):
    """Eq. 5 is the last operation: per-sample, per-channel mean/std of the output = f_L's."""
    rng = np.random.default_rng(0)
    f_h = (3.0 * rng.normal(size=(2, 8, 8, 32)) + 1.0).astype(np.float32)
    f_l = np.maximum(rng.normal(size=(2, 4, 6, 32)) * 2.0 - 0.5, 0).astype(np.float32)  # skewed
    qam = build(models.QAM, 32, **flags, seed=3)
    out = run(qam, f_h, f_l)
    assert out.shape == f_h.shape
    np.testing.assert_allclose(out.mean(axis=(1, 2)), f_l.mean(axis=(1, 2)), atol=1e-5)
    # sigma with the unbiased variance (÷ N − 1), each map over its own positions (spec 1).
    eps = models.STAT_EPS
    out_sigma = np.sqrt(np.var(out, axis=(1, 2), ddof=1) + eps)
    np.testing.assert_allclose(
        out_sigma, np.sqrt(np.var(f_l, axis=(1, 2), ddof=1) + eps), rtol=1e-3
    )


def test_qam_attention_readings_differ_and_follow_the_spec():
    """Default: each f_H position averages f_L's values with weights summing to 1 over j."""
    rng = np.random.default_rng(1)
    f_h, f_l = rng.normal(size=(2, 1, 4, 4, 16)).astype(np.float32)
    qam = build(models.QAM, 16, seed=0)
    literal = build(models.QAM, 16, normalization="literal", seed=0)
    assert not np.allclose(run(qam, f_h, f_l), run(literal, f_h, f_l), atol=1e-4)
    # Independent re-computation of the default reading (before the statistics transfer).
    conv = lambda c, x: x @ c.kernel[0, 0] + (c.bias[...] if c.bias is not None else 0)  # noqa: E731
    theta, key = conv(qam.theta, f_h).reshape(16, 2), conv(qam.v, f_l).reshape(16, 2)
    value = conv(qam.phi, f_l).reshape(16, 2)
    w = jax.nn.softmax(theta @ key.T, axis=1)
    f_tilde = conv(qam.out, (w @ value).reshape(1, 4, 4, 2))
    mu_t, sd_t = models.channel_stats(f_tilde)
    mu_l, sd_l = models.channel_stats(f_l)
    np.testing.assert_allclose(run(qam, f_h, f_l), sd_l * (f_tilde - mu_t) / sd_t + mu_l, atol=1e-4)


def _qam_float64(qam, f_h, f_l):
    """The default QAM (paper Eq. 1-5, uncentred values) in float64 numpy."""

    def conv(c, x):
        bias = 0 if c.bias is None else np.asarray(c.bias[...], np.float64)
        return x @ np.asarray(c.kernel[0, 0], np.float64) + bias

    f_h, f_l = np.asarray(f_h, np.float64), np.asarray(f_l, np.float64)
    n, h, w, _ = f_h.shape
    theta = conv(qam.theta, f_h).reshape(n, h * w, -1)
    key, value = (conv(c, f_l).reshape(n, -1, theta.shape[-1]) for c in (qam.v, qam.phi))
    logits = np.einsum("nic,njc->nij", theta, key)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    f_tilde = conv(qam.out, np.einsum("nij,njc->nic", weights, value).reshape(n, h, w, -1))

    def stats(x):  # the unbiased variance, as the authors' calc_mean_std
        return x.mean((1, 2), keepdims=True), np.sqrt(
            x.var((1, 2), keepdims=True, ddof=1) + models.STAT_EPS
        )

    (mu_t, sd_t), (mu_l, sd_l) = stats(f_tilde), stats(f_l)
    return sd_l * (f_tilde - mu_t) / sd_t + mu_l


@pytest.mark.parametrize("ddof", [1, 0])
def test_channel_stats_match_a_float64_reference(ddof):
    x = np.random.default_rng(5).normal(size=(2, 5, 3, 4)) * [1.0, 1e-3, 10.0, 0.0] + 2.0
    mean, std = models.channel_stats(jnp.asarray(x, jnp.float32), ddof=ddof)
    want_var = x.var(axis=(1, 2), keepdims=True, ddof=ddof)
    np.testing.assert_allclose(mean, x.mean(axis=(1, 2), keepdims=True), rtol=1e-6)
    np.testing.assert_allclose(std, np.sqrt(want_var + models.STAT_EPS), rtol=1e-5)
    if ddof == 1:  # the default is the unbiased form
        np.testing.assert_array_equal(models.channel_stats(jnp.asarray(x, jnp.float32))[1], std)


def test_channel_stats_of_a_1x1_map_have_zero_variance_not_nan():
    """N − ddof = 0: the divisor becomes 1, so sigma = sqrt(eps) and gradients are finite."""
    x = jnp.asarray(np.random.default_rng(6).normal(size=(2, 1, 1, 3)), jnp.float32)
    mean, std = models.channel_stats(x)
    np.testing.assert_array_equal(mean, x)
    np.testing.assert_allclose(std, np.sqrt(models.STAT_EPS), rtol=1e-6)
    grad = jax.grad(lambda v: jnp.sum(models.mean_variance_norm(v) + models.channel_stats(v)[1]))
    assert np.all(np.isfinite(grad(x)))


def test_generators_take_stat_ddof_from_the_config():
    from qagan_jax import config, train

    for ddof in (1, 0):
        cfg = config.get_config("smoke").model
        cfg.stat_ddof = ddof
        gens = nnx.eval_shape(lambda cfg=cfg: train.Generators(TINY_FEATS, cfg, rngs=nnx.Rngs(0)))
        users = [gens.g_h.decoder, gens.g_l.decoder, gens.g_l.qam4, gens.g_l.qam5]
        assert [m.stat_ddof for m in users] == [ddof] * 4
    assert config.get_config("paper").model.stat_ddof == 1


def test_qam_is_accurate_when_attention_is_near_uniform():
    """At initialisation the attention is near-uniform and W_o y varies across positions by a
    fraction of a percent of its mean; Eq. 5 then divides by that variation. With the values
    centred, float32 is within 6e-7 of float64 here (relative to the output's largest entry);
    without, 6.3e-5."""
    rng = np.random.default_rng(2)
    f_h = (0.01 * rng.normal(size=(2, 8, 8, 32))).astype(np.float32)  # small logits
    f_l = (5.0 + 0.5 * rng.normal(size=(2, 8, 8, 32))).astype(np.float32)  # ReLU-like offset
    qam = build(models.QAM, 32, seed=4)
    want = _qam_float64(qam, f_h, f_l)
    np.testing.assert_allclose(run(qam, f_h, f_l), want, atol=1e-5 * np.abs(want).max())


def test_spectral_norm_power_iteration():
    conv = build(models.SpectralConv, 8, 16, 5, stride=2, seed=0)
    w = np.asarray(conv.conv.kernel[...]).reshape(-1, 16)
    u0 = np.asarray(conv.u[...])
    # One iteration, torch's order: v = normalize(W^T u), u = normalize(W v) with W = w.T.
    conv.power_iterate()
    v1 = w @ u0 / np.linalg.norm(w @ u0)
    u1 = w.T @ v1 / np.linalg.norm(w.T @ v1)
    np.testing.assert_allclose(conv.v[...], v1, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(conv.u[...], u1, rtol=1e-5, atol=1e-6)
    # The forward pass never changes u, v; sigma converges to the top singular value.
    graphdef, state = nnx.split(conv)

    @jax.jit
    def forward_then_state(state, x):
        module = nnx.merge(graphdef, state)
        module(x)
        return nnx.state(module)

    after = forward_then_state.lower(state, jnp.ones((1, 16, 16, 8))).compile(FAST_COMPILE)(
        state, jnp.ones((1, 16, 16, 8))
    )
    chex_equal = jax.tree.map(np.testing.assert_array_equal, after, state)
    del chex_equal
    for _ in range(60):
        conv.power_iterate()
    top = np.linalg.svd(w, compute_uv=False)[0]
    np.testing.assert_allclose(conv.sigma(), top, rtol=1e-4)


def test_orthogonal_init_is_uegans():
    init = models.kernel_init("orthogonal", 0.02)
    d = models.Discriminator(width=16, kernel_init=init, rngs=nnx.Rngs(0))
    for conv in (d.block2.conv, d.head3.conv):  # spectral block and plain head alike
        k = np.asarray(conv.kernel[...])
        w = k.reshape(-1, k.shape[-1])  # (k*k*in, out): torch's (out, in*k*k) transposed
        np.testing.assert_allclose(w.T @ w, 0.02**2 * np.eye(w.shape[1]), atol=1e-7)
    # The spectral vectors are those of the orthogonal kernel: sigma = 0.02.
    d.block2.power_iterate()
    np.testing.assert_allclose(float(d.block2.sigma()), 0.02, rtol=1e-4)
    g = models.GeneratorL(TINY_FEATS, width=16, kernel_init=init, rngs=nnx.Rngs(0))
    q = np.asarray(g.qam5.theta.kernel[...]).reshape(-1, g.qam5.reduced)
    np.testing.assert_allclose(q.T @ q, 0.02**2 * np.eye(q.shape[1]), atol=1e-7)
    with pytest.raises(ValueError, match="unknown init"):
        models.kernel_init("xavier")
