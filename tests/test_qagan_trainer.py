"""The QAGAN training loop: resume == uninterrupted, SIGKILL + restart, NaN stop, work-directory
checks, accelerator lowering, bfloat16 compute, and the enhance command."""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from PIL import Image

from common import data as qdata
from qagan_jax import config as qagan_config
from qagan_jax import train, trainer

ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def socket_port():
    """A free TCP port on localhost (released before the caller binds it)."""
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    yield port


FAST_COMPILE = {"xla_backend_optimization_level": 0}


def _images(n, size, seed, scale=1.0):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (n, size[0], size[1], 3))
    return [(b * scale).astype(np.uint8) for b in base]


def tiny_dataset() -> qdata.Dataset:
    """Unpaired 48x64 training sets and a 3-pair 32x48 test set, in memory."""
    low = [{"id": f"l{i}", "image": x} for i, x in enumerate(_images(6, (48, 64), 0, 0.4))]
    high = [{"id": f"h{i}", "image": x} for i, x in enumerate(_images(5, (48, 64), 1))]
    labels = _images(3, (32, 48), 2)
    test = [{"id": f"t{i}", "image": (x * 0.5).astype(np.uint8), "label": x}
            for i, x in enumerate(labels)]  # fmt: skip
    split = {"ids": {"train_low": [r["id"] for r in low], "train_high": [r["id"] for r in high],
                     "test": [r["id"] for r in test]}}  # fmt: skip
    return qdata.Dataset(
        train_low=low, train_high=high, val=None, test=test,
        description="tiny in-memory test data", split=split,
    )  # fmt: skip


def smoke_config(num_steps=4):
    config = qagan_config.get_config("smoke")
    config.opt.steps_per_epoch = num_steps
    config.opt.decay_start_epoch = 0
    config.opt.num_epochs = 1
    config.data.crop_size = 32
    config.train.log_every = 1
    config.train.checkpoint_every = 2
    config.train.sample_every = 2
    config.train.eval_every = 0
    return config


def _mesh():
    return train.make_mesh(jax.devices()[:2])


def _params(workdir, config, step):
    state, restored_step = trainer.restore_state(Path(workdir), config, _mesh(), step)
    assert restored_step == step
    return jax.device_get((state.gen, state.disc, state.spectral, state.gen_opt))


def test_resume_equals_uninterrupted(tmp_path):
    config, dataset = smoke_config(), tiny_dataset()
    kw = dict(mesh=_mesh(), compiler_options=FAST_COMPILE)
    straight = trainer.train_and_evaluate(config, tmp_path / "a", dataset, **kw)
    assert trainer.train_and_evaluate(config, tmp_path / "b", dataset, stop_after=2, **kw) == {}
    resumed = trainer.train_and_evaluate(config, tmp_path / "b", dataset, **kw)
    jax.tree.map(np.testing.assert_array_equal, _params(tmp_path / "a", config, 4),
                 _params(tmp_path / "b", config, 4))  # fmt: skip
    assert resumed["enhanced"] == straight["enhanced"]
    # The logged losses of steps 3 and 4 are those of the uninterrupted run: same batches.
    logs = [[json.loads(x) for x in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]
            for d in "ab"]  # fmt: skip
    train_a = {r["step"]: r["g_total"] for r in logs[0] if r["type"] == "train"}
    train_b = {r["step"]: r["g_total"] for r in logs[1] if r["type"] == "train"}
    assert train_a == train_b and sorted(train_a) == [1, 2, 3, 4]
    assert all("random VGG-19" in r["vgg"] for r in logs[1])
    # The work directory has what the README promises.
    b = tmp_path / "b"
    assert (b / "config.json").exists() and (b / "split.json").exists()
    assert sorted(p.name for p in (b / "samples").iterdir()) == [
        "step_0000002.png", "step_0000004.png"]  # fmt: skip
    table = (b / "eval" / "table.txt").read_text()
    assert "G_H at step 2 (first checkpoint)" in table and "\nG_H at step 4 " in table
    # A finished run re-evaluates nothing and trains nothing.
    again = trainer.train_and_evaluate(config, b, dataset, **kw)
    assert again["enhanced"] == resumed["enhanced"]


def test_workdir_with_another_config_is_refused(tmp_path):
    config, dataset = smoke_config(), tiny_dataset()
    trainer.prepare_workdir(tmp_path, config, dataset.split, resume_config=False)
    other = smoke_config()
    other.loss.lambda_cc = 10.0
    with pytest.raises(trainer.WorkdirMismatchError, match="lambda_cc"):
        trainer.prepare_workdir(tmp_path, other, dataset.split, resume_config=False)
    # Without config flags the stored config is used as it is.
    used = trainer.prepare_workdir(tmp_path, other, dataset.split, resume_config=True)
    assert used.loss.lambda_cc == config.loss.lambda_cc
    with pytest.raises(trainer.WorkdirMismatchError, match="other data"):
        trainer.prepare_workdir(tmp_path, config, {"ids": {"x": []}}, resume_config=True)


def test_non_finite_loss_stops_with_last_checkpoint_intact(tmp_path, monkeypatch):
    config, dataset = smoke_config(), tiny_dataset()
    real = trainer._make_batch
    calls = []

    def poisoned(local, sharding):
        calls.append(1)
        if len(calls) == 3:  # the third batch has a NaN pixel
            local = {k: np.array(v) for k, v in local.items()}
            local["low"][0, 0, 0, 0] = np.nan
        return real(local, sharding)

    monkeypatch.setattr(trainer, "_make_batch", poisoned)
    with pytest.raises(train.NonFiniteLossError, match="step 3"):
        trainer.train_and_evaluate(
            config, tmp_path, dataset, mesh=_mesh(), compiler_options=FAST_COMPILE
        )
    with ocp.CheckpointManager(tmp_path / "checkpoints") as manager:
        assert manager.latest_step() == 2
    params = _params(tmp_path, config, 2)
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))


@pytest.mark.parametrize("compute_dtype", ["float32", "bfloat16"])
def test_train_and_eval_steps_lower_for_tpu_and_cuda(compute_dtype):
    config = smoke_config()
    config.model.compute_dtype = compute_dtype
    state = jax.eval_shape(lambda: train.abstract_train_state(config, jax.random.key(0)))
    image = jax.ShapeDtypeStruct((4, 32, 32, 3), np.float32)
    key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype)
    for platform in ("tpu", "cuda"):
        lowered = jax.jit(train.train_step).trace(state, {"low": image, "high": image}, key)
        text = lowered.lower(lowering_platforms=(platform,)).as_text()
        assert "convolution" in text
        jax.jit(train.eval_step).trace(state, image).lower(lowering_platforms=(platform,))


def test_qagan_enhance_corpus_with_broken_files_at_odd_sizes(tmp_path):
    config, dataset = smoke_config(), tiny_dataset()
    config.train.sample_every = 0
    trainer.train_and_evaluate(
        config, tmp_path / "run", dataset, mesh=_mesh(), compiler_options=FAST_COMPILE,
        stop_after=2,
    )  # fmt: skip
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for name, size in (("a.png", (37, 50)), ("b.jpg", (16, 16)), ("c.png", (37, 50))):
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(photos / name)
    (photos / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (photos / "empty.jpg").write_bytes(b"")
    before = {p.name: p.read_bytes() for p in photos.iterdir()}
    out = tmp_path / "out"
    # Relative paths, as users type them (Orbax itself wants absolute ones).
    cmd = [sys.executable, "-m", "experiments.qagan_enhance", "--checkpoint", "run", "photos",
           "--out", "out", "--batch-size", "2"]  # fmt: skip
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    run = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 1, run.stderr
    assert "broken.png" in run.stderr and "empty.jpg" in run.stderr
    assert "3 of 5 image(s) enhanced" in run.stderr
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png", "c.png"]
    assert np.asarray(Image.open(out / "a.png")).shape == (37, 50, 3)
    assert np.asarray(Image.open(out / "b.png")).shape == (16, 16, 3)
    assert {p.name: p.read_bytes() for p in photos.iterdir()} == before  # inputs untouched
    again = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 1 and "output exists" in again.stderr  # no silent overwrite


def _cli(workdir, *extra, devices=2, cache=None, port=None, process=None, cwd=ROOT):
    """`python -m experiments.qagan_fivek` on the demo set with the smoke config, as a process."""
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        PYTHONPATH=str(ROOT),
        AESTHETIC_ENHANCE_CACHE_DIR=str(cache),
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} "
        "--xla_backend_optimization_level=0",
    )
    cmd = [sys.executable, "-m", "experiments.qagan_fivek", "--workdir", str(workdir),
           "--config", f"{ROOT / 'qagan_jax/config.py'}:smoke", *extra]  # fmt: skip
    if port is not None:
        cmd += ["--coordinator", f"localhost:{port}", "--num-processes", "2",
                "--process-id", str(process)]  # fmt: skip
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip


def _train_records(workdir):
    lines = (Path(workdir) / "metrics.jsonl").read_text().splitlines()
    return [json.loads(x) for x in lines if '"train"' in x]


def test_sigkill_mid_run_then_restart_resumes_and_finishes(tmp_path):
    steps = ["--config.opt.steps_per_epoch=6", "--config.opt.num_epochs=1",
             "--config.train.checkpoint_every=2", "--config.train.sample_every=0"]  # fmt: skip
    workdir = tmp_path / "run"
    # A relative --workdir, as users type it (Orbax itself wants absolute paths).
    proc = _cli("run", *steps, cache=tmp_path / "cache", cwd=tmp_path)
    checkpoints = workdir / "checkpoints"
    deadline = time.time() + 600
    while not (checkpoints / "2" / "commit_success.txt").exists() and proc.poll() is None:
        assert time.time() < deadline, "no checkpoint within 10 minutes"
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # A checkpoint that was being written when the process died: never restored.
    partial = checkpoints / "5.orbax-checkpoint-tmp-1"
    partial.mkdir()
    (partial / "state").mkdir()
    restart = _cli("run", *steps, cache=tmp_path / "cache", cwd=tmp_path)
    out, _ = restart.communicate(timeout=600)
    assert restart.returncode == 0, out
    starts = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()
              if '"start"' in x]  # fmt: skip
    assert starts[0]["step"] == 0 and starts[-1]["step"] >= 2
    assert max(r["step"] for r in _train_records(workdir)) == 6
    with ocp.CheckpointManager(checkpoints) as manager:
        assert manager.latest_step() == 6
    assert "G_H at step 6" in out and "built-in demo set" in out


def test_two_processes_over_loopback_equal_one_process_with_four_devices(tmp_path):
    steps = ["--config.opt.steps_per_epoch=2", "--config.opt.num_epochs=1",
             "--config.train.sample_every=0", "--stop-after=2"]  # fmt: skip
    cache = tmp_path / "cache"
    single = _cli(tmp_path / "one", *steps, devices=4, cache=cache)
    assert single.wait(timeout=600) == 0, single.stdout.read()
    with socket_port() as port:
        procs = [_cli(tmp_path / "two", *steps, devices=2, cache=cache, port=port, process=i)
                 for i in (0, 1)]  # fmt: skip
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    one, two = _train_records(tmp_path / "one"), _train_records(tmp_path / "two")
    assert [r["step"] for r in one] == [r["step"] for r in two] == [1, 2]
    start = [json.loads(x) for x in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert start[0]["processes"] == 2 and start[0]["devices"] == 4
    for a, b in zip(one, two, strict=True):
        for name in ("d_h", "d_l", "g_adv_h", "g_adv_l", "cycle", "g_total"):
            assert b[name] == pytest.approx(a[name], rel=1e-5, abs=1e-6), name
