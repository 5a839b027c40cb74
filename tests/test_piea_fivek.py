"""`python -m experiments.piea_fivek`: Table 1, the learning-rate sweep and Fig. 4 on a tiny
generated EXPOSURE-layout tree (inputs = degraded experts), resume, the demo path, bad paths."""

import contextlib
import csv
import io
import json
import zlib
from pathlib import Path

import jax
import numpy as np
import pytest
import skimage.data
import skimage.transform
from absl import app, flags
from PIL import Image

from common.images import load_image
from common.metrics import histogram_intersection, patch_statistics, sample_patches
from experiments import piea_fivek
from piea_jax import enhance
from piea_jax.evaluation import (
    PAPER_TABLE1,
    STATISTICS,
    image_statistics,
    intersection,
    patch_key,
    trajectory_statistics,
)
from piea_jax.guiders import GuiderError, load_guider, photo_critic
from piea_jax.rendering import local_mesh, render_images

PHOTOS = {1: "astronaut", 2: "coffee", 3: "chelsea", 4: "rocket", 5: "coffee", 6: "chelsea"}
TEST_IDS = (1, 2, 3, 4, 5)  # 5: a truncated input; 6: not on the test list
SHAPE = (40, 60)


def _expert(name: str, shape) -> np.ndarray:
    photo = skimage.transform.resize(getattr(skimage.data, name)()[..., :3], shape)
    return (photo * 255).astype(np.uint8)


def _degrade(expert: np.ndarray) -> np.ndarray:
    """Under-exposed and desaturated, as FiveK's inputs are next to expert C."""
    x = expert.astype(np.float32) / 255
    grey = x.mean(axis=-1, keepdims=True)
    return ((0.4 * (grey + 0.6 * (x - grey))).clip(0, 1) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """The EXPOSURE/PIEA layout: input/ and expertC/ JPEGs aNNNN.jpg, FiveK_test.txt (1-based).
    All of one size, so the search compiles once (the demo test has two sizes)."""
    root = tmp_path_factory.mktemp("fivek")
    (root / "input").mkdir()
    (root / "expertC").mkdir()
    for i, name in PHOTOS.items():
        expert = _expert(name, SHAPE)
        Image.fromarray(expert).save(root / "expertC" / f"a{i:04d}.jpg", quality=95)
        Image.fromarray(_degrade(expert)).save(root / "input" / f"a{i:04d}.jpg", quality=95)
    data = (root / "input" / "a0005.jpg").read_bytes()
    (root / "input" / "a0005.jpg").write_bytes(data[: len(data) // 2])
    (root / "FiveK_test.txt").write_text("".join(f"{i}\n" for i in TEST_IDS))
    return root


def _run(args: list[str]) -> tuple[int, str, str]:
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["piea_fivek", *args])
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = piea_fivek.main(["piea_fivek"])
    return code, stdout.getvalue(), stderr.getvalue()


@pytest.fixture(scope="module")
def first_run(tree, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "table1"
    args = ["--data-dir", str(tree), "--out", str(out), "--steps", "2", "--batch-size", "4"]
    code, stdout, stderr = _run([*args, "--lr-sweep", "1e-3,1e-2", "--figure4", "a0002"])
    return out, args, code, stdout, stderr


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_outputs_exist_and_the_bad_input_is_named(first_run):
    out, _, code, _, stderr = first_run
    assert code == 1  # a0005's input is truncated
    assert "a0005.jpg" in stderr
    for i in (1, 2, 3, 4):
        assert (out / "enhanced" / f"a{i:04d}.png").is_file()
        record = json.loads((out / "strategies" / f"a{i:04d}.json").read_text())
        assert record["id"] == f"a{i:04d}" and len(record["scores"]) == 3
        assert record["guider"].startswith("photo_critic")
    assert not (out / "enhanced" / "a0005.png").exists()
    assert not (out / "enhanced" / "a0006.png").exists()  # not on the test list
    assert load_image(out / "enhanced" / "a0003.png").shape == (*SHAPE, 3)


def test_table1_json_csv_and_printout(first_run, tree):
    out, _, _, stdout, _ = first_run
    table = json.loads((out / "table1.json").read_text())
    assert {"enhanced", "input", "paper", "guider", "data", "seed"} <= table.keys()
    for row in ("enhanced", "input"):
        assert set(table[row]) == set(STATISTICS)
        assert all(0.0 <= v <= 1.0 for v in table[row].values())
    assert table["paper"] == PAPER_TABLE1
    assert table["seed"] == 0 and table["images"] == 4
    assert "EXPOSURE" in table["data"] and "test list" in table["data"]
    assert "demo" not in table["data"]
    assert table["guider"].startswith("photo_critic")
    rows = {r["row"]: r for r in _read_csv(out / "table1.csv")}
    assert float(rows["input"]["luminance"]) == pytest.approx(table["input"]["luminance"])
    assert "86.4" in stdout and "photo_critic" in stdout and "patch seed 0" in stdout


def test_table1_equals_the_metric_functions_applied_directly(first_run, tree):
    """Both rows recomputed from the files with `common.metrics` and Pillow alone."""
    out, _, _, _, _ = first_run
    table = json.loads((out / "table1.json").read_text())
    rows = {"input": [], "enhanced": [], "target": []}
    for i in (1, 2, 3, 4):
        # The documented placement: fold_in(key(seed), crc32(id) mod 2^31).
        key = jax.random.fold_in(jax.random.key(0), zlib.crc32(f"a{i:04d}".encode()) & 0x7FFFFFFF)
        files = {
            "input": tree / "input" / f"a{i:04d}.jpg",
            "enhanced": out / "enhanced" / f"a{i:04d}.png",
            "target": tree / "expertC" / f"a{i:04d}.jpg",
        }
        for row, path in files.items():
            pixels = np.asarray(Image.open(path).convert("RGB"), np.float32) / 255
            rows[row].append(patch_statistics(sample_patches(pixels, key=key)))
    target = np.concatenate(rows["target"])
    for row in ("input", "enhanced"):
        expected = np.asarray(histogram_intersection(np.concatenate(rows[row]), target))
        np.testing.assert_allclose([table[row][s] for s in STATISTICS], expected, atol=1e-6)


def test_identical_sets_score_exactly_one(tree):
    experts = [load_image(tree / "expertC" / f"a{i:04d}.jpg") for i in (1, 2, 3)]
    stats = [image_statistics(x, patch_key(7, f"a{i:04d}")) for i, x in enumerate(experts)]
    assert intersection(stats, stats) == {s: 1.0 for s in STATISTICS}
    darker = [image_statistics(0.4 * x, patch_key(7, f"a{i:04d}")) for i, x in enumerate(experts)]
    assert intersection(darker, stats)["luminance"] < 0.9
    # The patches of an image depend on its id and the seed only.
    assert np.array_equal(stats[1], image_statistics(experts[1], patch_key(7, "a0001")))
    assert not np.array_equal(stats[1], image_statistics(experts[1], patch_key(8, "a0001")))


def test_resume_skips_finished_images(first_run, monkeypatch, tree):
    out, args, _, _, _ = first_run
    kept = {p: p.read_bytes() for p in (out / "enhanced").iterdir() if p.name != "a0004.png"}
    (out / "strategies" / "a0004.json").unlink()  # as if interrupted before a0004's JSON
    searched = []

    def counting_enhance(images, *a, **k):
        searched.append(len(images))
        return enhance(images, *a, **k)

    monkeypatch.setattr(piea_fivek, "enhance", counting_enhance)
    code, stdout, stderr = _run(args)
    assert code == 1  # a0005 is still truncated
    assert searched == [1]  # a0004 only (a0005 never loads)
    assert "resuming: 3 of 5 images already enhanced" in stderr
    assert (out / "strategies" / "a0004.json").is_file()
    assert {p: p.read_bytes() for p in kept} == kept
    assert "PIEA, this run" in stdout


def test_a_run_with_other_settings_is_refused(first_run):
    out, args, _, _, _ = first_run
    code, _, stderr = _run([*args[:-2], "--steps", "3"])
    assert code == 2
    assert stderr.strip().count("\n") == 0 and "other settings (steps)" in stderr


def test_sweep_csv_plot_and_its_rate_equal_to_the_table(first_run):
    out, _, _, stdout, _ = first_run
    rows = _read_csv(out / "lr_sweep.csv")
    assert [(r["learning_rate"], r["step"]) for r in rows] == [
        (rate, str(t)) for rate in ("0.001", "0.01") for t in range(3)
    ]
    assert all(0 <= float(r[s]) <= 1 for r in rows for s in STATISTICS)
    table = json.loads((out / "table1.json").read_text())
    last = {s: float(rows[2][s]) for s in STATISTICS}  # rate 1e-3 after 2 steps
    for s in STATISTICS:  # the same search, vmapped over rates: at most one patch's bin moves
        assert abs(last[s] - table["enhanced"][s]) <= 1 / 64 + 1e-6
    with Image.open(out / "lr_sweep.png") as plot:
        assert plot.format == "PNG" and plot.width > 800
    assert "learning-rate sweep" in stdout and "lr_sweep.png" in stdout


def test_sweep_in_one_call_equals_separate_runs_per_rate(first_run, tree):
    """The command's calls (same images, rates, mesh and steps, so its compiled programs are
    reused): the sweep's trajectory and per-step statistics equal separate runs per rate."""
    images = [load_image(tree / "input" / f"a{i:04d}.jpg") for i in (1, 2, 3, 4)]
    mesh = local_mesh()
    rates = np.array([1e-3, 1e-2], np.float32)
    search = dict(steps=2, preview_size=None, mesh=mesh)
    sweep = enhance(images, photo_critic, learning_rate=rates, **search)
    for k, rate in enumerate([1e-3, 1e-2]):
        single = enhance(images, photo_critic, learning_rate=rate, **search)
        np.testing.assert_allclose(sweep.scores[k], single.scores, rtol=1e-5)
        for i in (0, 3):
            key = patch_key(0, f"a{i + 1:04d}")
            params = {n: np.asarray(v[k, i]) for n, v in sweep.trajectory.params.items()}
            stats = trajectory_statistics(images[i], params, key, mesh=mesh)  # (3, 16, 3)
            single_params = {n: np.asarray(v[i]) for n, v in single.trajectory.params.items()}
            rendered = render_images([images[i]] * 3, single_params, mesh=mesh)
            for t in range(3):
                np.testing.assert_allclose(stats[t], image_statistics(rendered[t], key), atol=2e-3)


def test_figure4_from_a_test_id_and_from_a_file(first_run, tree):
    out, args, _, stdout, _ = first_run
    with Image.open(out / "figure4_a0002.png") as strip:
        assert strip.width > 4 * SHAPE[1]  # raw, 1 step, 2 steps, expert C
    assert "figure4_a0002.png" in stdout
    photo = tree.parent / "photo.png"
    Image.fromarray(_expert("rocket", SHAPE)).save(photo)  # the compiled search's size
    code, stdout, _ = _run([*args, "--figure4", str(photo)])
    assert code == 1  # a0005 still truncated
    assert (out / "figure4_photo.png").is_file() and "figure4_photo.png" in stdout


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--out", "{file}"], "exists and is not a folder"),
        (["--data-dir", "{missing}"], "no such folder"),
        (["--data-dir", "{empty}"], "no MIT-Adobe FiveK layout found"),
        (["--figure4", "a9999"], "neither a test image nor a file"),
    ],
)
def test_bad_path_arguments_are_errors_before_any_work(tree, tmp_path, extra, message):
    (tmp_path / "file").write_text("x")
    (tmp_path / "empty").mkdir()
    paths = {"file": tmp_path / "file", "missing": tmp_path / "nope", "empty": tmp_path / "empty"}
    args = ["--data-dir", str(tree), "--out", str(tmp_path / "out")]
    code, _, stderr = _run([*args, *(e.format(**paths) for e in extra)])
    assert code == 2 and message in stderr
    assert stderr.startswith("error: ")
    assert not (tmp_path / "out").exists()


def test_bad_rates_and_a_nima_without_weights_are_usage_errors(tree, tmp_path):
    with pytest.raises(app.UsageError, match="--lr-sweep"):
        _run(["--data-dir", str(tree), "--out", str(tmp_path), "--lr-sweep", "1e-3,fast"])
    with pytest.raises(app.UsageError, match="--nima-weights"):
        _run(["--data-dir", str(tree), "--out", str(tmp_path), "--guider", "nima"])
    assert not any(tmp_path.iterdir())


def test_load_guider():
    guider, name, record = load_guider("critic")
    assert guider is photo_critic and "not NIMA" in name and record is None
    with pytest.raises(GuiderError, match="needs weights"):
        load_guider("nima")
    with pytest.raises(GuiderError, match="backbone"):
        load_guider("nima", "weights/x")
    with pytest.raises(GuiderError, match="unknown guider"):
        load_guider("vgg")


def test_demo_table_says_demo(tmp_path):
    out = tmp_path / "demo"
    args = ["--out", str(out), "--steps", "1", "--preview-size", "32", "--batch-size", "4"]
    code, stdout, _ = _run(args)  # 256- and 224-px pairs: batches grouped by size
    assert code == 0
    table = json.loads((out / "table1.json").read_text())
    assert "demo" in table["data"] and "not FiveK" in table["data"]
    assert table["images"] == 8
    assert "DEMO" in stdout and "NOT FiveK" in stdout
    assert all("demo" in r["data"] for r in _read_csv(out / "table1.csv") if r["row"] != "paper")
