"""`python -m experiments.piea_enhance`: a corpus of good and broken files, outputs, exit codes."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import skimage.transform
from absl import app, flags
from PIL import Image

from experiments import piea_enhance
from piea_jax import FILTER_ORDER

ROOT = Path(__file__).resolve().parents[1]


def _write_photo(path: Path, name: str, shape) -> None:
    x = skimage.transform.resize(getattr(skimage.data, name)(), shape, anti_aliasing=True)
    Image.fromarray((x * 255 * 0.4).astype(np.uint8)).save(path)  # darkened


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("corpus")
    _write_photo(folder / "coffee.png", "coffee", (40, 60))
    _write_photo(folder / "cat.jpg", "chelsea", (48, 48))
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.jpg").write_text("not an image")
    data = (folder / "coffee.png").read_bytes()
    (folder / "truncated.png").write_bytes(data[: len(data) // 2])
    return folder


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def corpus_run(corpus, tmp_path_factory):
    """One real command-line run on the corpus (2 good files, 3 broken, 1 empty pattern)."""
    before = _snapshot(corpus)
    out = tmp_path_factory.mktemp("out")
    cmd = [sys.executable, "-m", "experiments.piea_enhance", str(corpus), str(corpus / "no*.tif")]
    cmd += ["--out", str(out), "--steps", "2", "--batch-size", "2", "--progression"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    return proc, out, before


def test_bad_inputs_are_reported_and_the_batch_goes_on(corpus_run, corpus):
    proc, out, _ = corpus_run
    assert proc.returncode != 0
    for bad in ("empty.png", "notes.jpg", "truncated.png", "no*.tif"):
        assert bad in proc.stderr, f"no message naming {bad}:\n{proc.stderr}"
    assert "2 of 5 image(s) enhanced" in proc.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "cat.png",
        "cat.progression.png",
        "cat.strategy.json",
        "coffee.png",
        "coffee.progression.png",
        "coffee.strategy.json",
    ]  # and no temporary files left behind


def test_outputs_and_strategy_json(corpus_run):
    _, out, _ = corpus_run
    assert Image.open(out / "coffee.png").size == (60, 40)  # full resolution
    record = json.loads((out / "coffee.strategy.json").read_text())
    assert record["strategy"].startswith("Exposure +")
    assert len(record["scores"]) == 3 and len(record["trajectory"]) == 3
    assert record["trajectory"][0]["filters"]["exposure"] == pytest.approx(1.0, abs=1e-5)
    assert set(record["filters"]) == set(FILTER_ORDER)
    assert record["optimizer"] == "sgd" and record["learning_rate"] == 1e-3
    assert "not NIMA" in record["guider"]
    assert 1.0 <= record["score_full_resolution"] <= 10.0
    strip = Image.open(out / "coffee.progression.png")
    assert strip.size[0] > 3 * 60  # raw + steps 1 and 2


def test_inputs_are_never_modified(corpus_run, corpus):
    _, _, before = corpus_run
    assert _snapshot(corpus) == before


def _run_in_process(args: list[str]) -> int:
    flags.FLAGS.unparse_flags()
    argv = flags.FLAGS(["piea_enhance", *args])
    return piea_enhance.main(argv)


def test_existing_outputs_are_not_overwritten(corpus_run, corpus, capsys):
    _, out, _ = corpus_run
    before = _snapshot(out)
    assert _run_in_process([str(corpus / "coffee.png"), "--out", str(out)]) == 1
    assert "output exists" in capsys.readouterr().err
    assert _snapshot(out) == before


def test_an_input_is_never_overwritten_even_with_overwrite(corpus, capsys):
    before = _snapshot(corpus)
    args = [str(corpus / "coffee.png"), "--out", str(corpus), "--overwrite", "--steps", "1"]
    assert _run_in_process(args) == 1  # coffee.png -> coffee.png would replace the input
    assert "refusing to write over an input file" in capsys.readouterr().err
    assert _snapshot(corpus) == before


def test_nima_without_weights_fails_clearly():
    with pytest.raises(app.UsageError, match="--nima-weights"):
        _run_in_process(["x.png", "--out", "unused", "--guider", "nima"])


@pytest.mark.slow
def test_demo_runs(tmp_path):
    code = _run_in_process(["--demo", "--out", str(tmp_path), "--steps", "3"])
    assert code == 0
    for name in piea_enhance.DEMO_PHOTOS:
        record = json.loads((tmp_path / f"{name}.strategy.json").read_text())
        assert record["scores"][-1] > record["scores"][0]
        assert (tmp_path / f"{name}.input.png").exists() and (tmp_path / f"{name}.png").exists()
