"""NIMA on AVA: the train step (rates per group, batch statistics, dropout), resume equals an
uninterrupted run, the command end to end, and the export guiding PIEA."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import flags
from flax import nnx

from common import nima, nima_config, nima_training
from common.data import ava
from common.training import make_mesh
from experiments import nima_ava
from piea_jax import enhance
from piea_jax.guiders import nima_guider
from tests import ava_fixtures as fx
from tests import data_fixtures

FAST_COMPILE = {"xla_backend_optimization_level": 0}


class _TinyBackbone(nnx.Module):
    """Conv + BatchNorm: enough to see batch statistics move."""

    def __init__(self, *, rngs):
        self.conv = nnx.Conv(3, 8, (3, 3), strides=2, rngs=rngs)
        self.bn = nnx.BatchNorm(8, momentum=0.5, rngs=rngs)

    def __call__(self, x):
        return jax.nn.relu(self.bn(self.conv(x)))


def _tiny_make_nima(backbone, *, rngs=None, **arch):
    return nima.Nima(_TinyBackbone(rngs=rngs), features=8, input_size=None, rngs=rngs)


def _tiny_config():
    config = nima_config.get_config("smoke")
    config.opt.head_lr, config.opt.backbone_lr = 0.5, 0.05
    return config


def test_train_step_rates_batch_stats_and_dropout(monkeypatch):
    monkeypatch.setattr(nima, "make_nima", _tiny_make_nima)
    config = nima_training.resolve_steps_per_epoch(_tiny_config(), 24)
    state = nima_training._init_state(config, jax.random.key(0))
    rng = np.random.default_rng(0)
    batch = {
        "image": jnp.asarray(rng.uniform(size=(4, 16, 16, 3)), jnp.float32),
        "dist": jnp.asarray(fx.votes(3)[None].repeat(4, 0) / fx.votes(3).sum(), jnp.float32),
    }
    key = jax.random.key(1)
    new, metrics = jax.jit(nima_training.train_step)(state, batch, key)
    assert float(metrics["finite"]) == 1.0 and float(metrics["loss"]) > 0
    assert float(metrics["lr_head"]) == pytest.approx(0.5)
    assert float(metrics["lr_backbone"]) == pytest.approx(0.05)

    # First SGD-momentum step = -lr * gradient, with the step's own dropout key.
    grads, _ = jax.grad(nima_training.training_loss, has_aux=True)(
        state.params, state, batch, jax.random.fold_in(key, 0)
    )
    head_delta = new.params["head"]["kernel"][...] - state.params["head"]["kernel"][...]
    np.testing.assert_allclose(head_delta, -0.5 * grads["head"]["kernel"][...], atol=1e-6)
    conv_delta = (
        new.params["backbone"]["conv"]["kernel"][...]
        - state.params["backbone"]["conv"]["kernel"][...]
    )
    np.testing.assert_allclose(
        conv_delta, -0.05 * grads["backbone"]["conv"]["kernel"][...], atol=1e-6
    )
    assert np.abs(conv_delta).max() > 0
    # Batch statistics moved in training mode; evaluation uses them, deterministically.
    mean_before = state.batch_stats["backbone"]["bn"]["mean"][...]
    assert not np.allclose(new.batch_stats["backbone"]["bn"]["mean"][...], mean_before)
    probs = nima_training.eval_step(new, batch["image"])
    np.testing.assert_array_equal(probs, nima_training.eval_step(new, batch["image"]))
    # Dropout: another step key, another loss.
    _, other = jax.jit(nima_training.train_step)(state, batch, jax.random.key(2))
    assert float(other["loss"]) != float(metrics["loss"])
    # A NaN image: the update is discarded and reported.
    bad = {**batch, "image": batch["image"].at[0, 0, 0, 0].set(jnp.nan)}
    kept, nan_metrics = jax.jit(nima_training.train_step)(state, bad, key)
    assert float(nan_metrics["finite"]) == 0.0
    jax.tree.map(np.testing.assert_array_equal, kept.params, state.params)


@pytest.fixture(scope="module")
def ava_dir(tmp_path_factory):
    return fx.make_ava(tmp_path_factory.mktemp("ava"))


def _open(ava_dir, config):
    return ava.open_ava(
        ava_dir,
        test_fraction=config.data.test_fraction,
        val_fraction=config.data.val_fraction,
        seed=config.data.split_seed,
        resize=config.data.resize,
    )


def _run_cli(args: list[str]) -> int:
    flags.FLAGS.unparse_flags()
    argv = flags.FLAGS(["nima_ava", *args])
    return nima_ava.main(argv)


def _params(workdir, config):
    state, _ = nima_training.restore_state(workdir, config, make_mesh(jax.devices()[:1]))
    return jax.device_get((state.params, state.batch_stats, state.opt_state))


def _smoke_config(backbone: str):
    config = nima_config.get_config("smoke")
    config.model.backbone = backbone
    config.model.width = nima_config.SMOKE_WIDTH[backbone]
    return config


@pytest.mark.parametrize("backbone", ["bn_inception", "mobilenet_v2", "vgg16_gap"])
def test_every_backbone_builds_its_train_state(backbone):
    """The smoke config of each backbone builds (shapes only): parameters split into the head
    (Dense(features, 10)) and the backbone, batch statistics where the network has them."""
    config = nima_training.resolve_steps_per_epoch(_smoke_config(backbone), 24)
    state = nima_training.abstract_train_state(config, jax.random.key(0))
    features = {"bn_inception": 128, "mobilenet_v2": 1280, "vgg16_gap": 32}[backbone]
    assert state.params["head"]["kernel"].shape == (features, 10)
    labels = jax.tree.leaves(nima_training.param_labels(state.params))
    assert labels.count("head") == 2 and labels.count("backbone") == len(labels) - 2 > 10
    assert bool(jax.tree.leaves(state.batch_stats)) == (backbone != "vgg16_gap")
    assert (
        nima_config.arch(config)
        == {
            "bn_inception": {"width": 0.125, "input_size": 64},
            "mobilenet_v2": {},
            "vgg16_gap": {"width": 16, "dropout": 0.75},
        }[backbone]
    )


@pytest.mark.parametrize(
    "backbone",
    [
        # The paper's network: ~20 s to compile its training step, ~10 s the guided search.
        pytest.param("bn_inception", marks=pytest.mark.slow),
        "vgg16",
    ],
)
def test_smoke_cli_resume_equals_uninterrupted_and_export_guides_piea(
    backbone, ava_dir, tmp_path, capsys
):
    name = {"bn_inception": "bn_inception", "vgg16": "vgg16_gap"}[backbone]
    config = _smoke_config(name)
    cli = ["--ava-dir", str(ava_dir), "--smoke"]
    if backbone != "bn_inception":  # the default: the command without --backbone
        cli += ["--backbone", backbone]
    # The command end to end (the smoke config on all devices of this process).
    straight = tmp_path / "straight"
    assert _run_cli([*cli, "--workdir", str(straight)]) == 0
    out = capsys.readouterr()
    assert "NIMA paper, Inception-v2 (AVA)" in out.out and "this run (step 6)" in out.out
    assert f"--nima-backbone {name}" in out.out
    assert "RANDOM weights" in out.err or "random" in out.out
    stored = json.loads((straight / "eval.json").read_text())
    assert stored["n"] == len(_open(ava_dir, config).test) and stored["step"] == 6
    assert stored["backbone"] == name and stored["arch"] == nima_config.arch(config)
    skipped = json.loads((straight / "ava_skipped.json").read_text())
    assert {s["id"] for s in skipped["images"]} == {*fx.BROKEN, fx.MISSING}
    # Re-running a finished work directory prints the stored table, trains nothing.
    mtime = (straight / "metrics.jsonl").stat().st_mtime
    assert _run_cli(["--ava-dir", str(ava_dir), "--workdir", str(straight)]) == 0
    assert stored["table"] in capsys.readouterr().out
    assert (straight / "metrics.jsonl").stat().st_mtime == mtime

    # The same command stopped at step 3 and run again: it resumes and ends equal at step 6
    # (the same compiled programs as the straight run: the process reuses them).
    resumed = tmp_path / "resumed"
    assert _run_cli([*cli, "--workdir", str(resumed), "--stop-after", "3"]) == 0
    assert not (resumed / "eval.json").exists()
    assert _run_cli([*cli, "--workdir", str(resumed)]) == 0
    a, b = _params(straight, config), _params(resumed, config)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7), a, b)
    losses = [
        {r["step"]: r["loss"] for r in map(json.loads, (d / "metrics.jsonl").open())
         if r["type"] == "train"}
        for d in (straight, resumed)
    ]  # fmt: skip
    assert sorted(losses[1]) == [1, 2, 3, 4, 5, 6]
    for step in losses[0]:
        assert losses[1][step] == pytest.approx(losses[0][step], rel=1e-5)
    result = json.loads((resumed / "eval.json").read_text())
    assert result["emd"] == pytest.approx(stored["emd"], rel=1e-4)

    # The export loads (the narrow network, its training size) and guides PIEA for one step.
    model = nima.load_nima(straight, backbone=name)
    if name == "bn_inception":
        assert model.input_size == 64 and model.backbone.width == 0.125
    photo = data_fixtures.image(0, (32, 48)).astype(np.float32) / 255.0
    result = enhance(photo[None] * 0.5, nima_guider(model), steps=1)
    assert np.asarray(result.scores).shape == (1, 2)
    assert np.all(np.isfinite(result.scores)) and np.all(np.isfinite(result.images))
    # The export is the last checkpoint's network in evaluation mode.
    state, _ = nima_training.restore_state(straight, config, make_mesh(jax.devices()[:1]))
    images = jnp.asarray(np.random.default_rng(0).uniform(size=(2, 64, 64, 3)), jnp.float32)
    np.testing.assert_allclose(
        nnx.jit(lambda m, x: m(x))(model, images),
        jax.jit(nima_training.eval_step)(state, images),
        rtol=1e-5,
        atol=1e-6,
    )


def test_bad_ava_dir_is_a_clear_error(tmp_path, capsys):
    assert _run_cli(["--ava-dir", str(tmp_path), "--workdir", str(tmp_path / "w"), "--smoke"]) == 2
    assert "no AVA.txt" in capsys.readouterr().err
