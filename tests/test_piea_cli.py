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


# --- Polish, presets, 16-bit outputs, devices and processes (issue 12) ---------------------------


def test_no_backend_noise_and_the_final_progress_line_once(corpus_run):
    proc, _, _ = corpus_run
    assert "Unable to initialize backend" not in proc.stderr
    assert proc.stderr.count("2/2 [") <= 1, proc.stderr  # the bar's last state, not repeated


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def test_four_devices_give_the_outputs_of_one(corpus_run, corpus, tmp_path):
    _, one_device, _ = corpus_run  # a subprocess: one CPU device
    inputs = [str(corpus / "coffee.png"), str(corpus / "cat.jpg")]
    args = [*inputs, "--out", str(tmp_path), "--steps", "2", "--batch-size", "2"]
    assert _run_in_process(args) == 0  # this process: 4 fake CPU devices (conftest)
    for name in ("coffee", "cat"):
        four = json.loads((tmp_path / f"{name}.strategy.json").read_text())["filters"]
        one = json.loads((one_device / f"{name}.strategy.json").read_text())["filters"]
        for key in FILTER_ORDER:
            np.testing.assert_allclose(four[key], one[key], atol=2e-5, err_msg=key)
        diff = np.abs(_pixels(tmp_path / f"{name}.png") - _pixels(one_device / f"{name}.png"))
        assert diff.max() <= 1 and diff.mean() < 0.01


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--out", "{file}"], "--out {file}: exists and is not a folder"),
        (["--out", "{file}/sub"], "is a file, not a folder"),
        (["--out", "{tmp}/o", "--apply-preset", "{tmp}/missing.json"], "preset file not found"),
        (["--out", "{tmp}/o", "--save-preset", "{file}"], "file exists"),
        (["--out", "{tmp}/o", "--save-preset", "{input}", "--overwrite"], "is an input file"),
    ],
)
def test_bad_path_arguments_are_one_line_errors(corpus, tmp_path, capsys, extra, message):
    file = tmp_path / "a_file.txt"
    file.write_text("mine")
    fill = {"file": str(file), "tmp": str(tmp_path), "input": str(corpus / "coffee.png")}
    before = (corpus / "coffee.png").read_bytes()
    args = [str(corpus / "coffee.png"), *[a.format(**fill) for a in extra]]
    assert _run_in_process(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and message.format(**fill) in err
    assert file.read_text() == "mine" and not (tmp_path / "o").exists()
    assert (corpus / "coffee.png").read_bytes() == before


def test_no_readable_input_creates_no_out_folder(corpus, tmp_path, capsys):
    out = tmp_path / "never"
    args = [str(corpus / "empty.png"), str(corpus / "notes.jpg"), "--out", str(out)]
    assert _run_in_process(args) == 1
    assert not out.exists()
    assert "not created" in capsys.readouterr().err


def test_save_a_preset_then_apply_it_at_16_bits_to_other_sizes(corpus, tmp_path, capsys):
    from common.images import load_image
    from piea_jax.enhance import render
    from piea_jax.presets import load_preset

    preset_path = tmp_path / "look.json"
    args = [str(corpus / "coffee.png"), "--out", str(tmp_path / "search"), "--steps", "1"]
    assert _run_in_process([*args, "--save-preset", str(preset_path)]) == 0
    preset = load_preset(preset_path)
    record = json.loads((tmp_path / "search" / "coffee.strategy.json").read_text())
    assert preset.source == str(corpus / "coffee.png") and preset.guider == record["guider"]
    for name in FILTER_ORDER:  # the JSON rounds to 6 decimals; the preset keeps float32
        np.testing.assert_allclose(preset.filters[name], record["filters"][name], atol=1e-6)

    out = tmp_path / "applied"
    args = [str(corpus / "cat.jpg"), str(corpus / "coffee.png"), "--out", str(out)]
    assert _run_in_process([*args, "--apply-preset", str(preset_path), "--bit-depth", "16"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["cat.png", "coffee.png"]  # images only
    for name, source in (("cat", "cat.jpg"), ("coffee", "coffee.png")):
        written = load_image(out / f"{name}.png")
        expected = np.asarray(render(load_image(corpus / source), preset.filters))
        np.testing.assert_allclose(written, expected, atol=0.5 / 65535 + 1e-6, rtol=0)
        assert (out / f"{name}.png").read_bytes()[24] == 16  # the PNG header's bit depth
        levels = written * 255
        assert np.any(np.abs(levels - np.round(levels)) > 0.01)  # finer than 8-bit steps

    capsys.readouterr()
    two = [str(corpus / "cat.jpg"), str(corpus / "coffee.png"), "--out", str(tmp_path / "x")]
    assert _run_in_process([*two, "--save-preset", str(tmp_path / "two.json")]) == 2
    assert "one image" in capsys.readouterr().err and not (tmp_path / "two.json").exists()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_split_a_corpus_without_overlap_or_gaps(tmp_path):
    import os

    from piea_jax.presets import make_preset, save_preset

    folder = tmp_path / "in"
    folder.mkdir()
    names = [f"img{k}" for k in range(7)]
    for k, name in enumerate(names):
        Image.fromarray(np.full((8 + k, 12, 3), 20 * k, np.uint8)).save(folder / f"{name}.png")
    preset = save_preset(
        tmp_path / "p.json", make_preset({"exposure": np.float32(1.0)}, order=("exposure",))
    )
    out = tmp_path / "out"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_NUM_PROCESSES": "2"}
    env["JAX_COORDINATOR_ADDRESS"] = f"127.0.0.1:{_free_port()}"
    cmd = [sys.executable, "-m", "experiments.piea_enhance", str(folder), "--out", str(out)]
    cmd += ["--apply-preset", str(preset), "--distributed"]
    procs = [
        subprocess.Popen(
            cmd, cwd=ROOT, env={**env, "JAX_PROCESS_ID": str(k)}, stderr=subprocess.PIPE, text=True
        )
        for k in range(2)
    ]
    errs = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    counts = []
    for k, err in enumerate(errs):
        line = next(x for x in err.splitlines() if f"process {k} of 2:" in x)
        counts.append(int(line.split(": ")[1].split(" of ")[0]))
    assert sorted(counts) == [3, 4]  # 7 files: contiguous slices of 3 and 4
    assert sorted(p.stem for p in out.iterdir()) == names  # each once, none skipped


# --- NIMA guider from a checkpoint -----------------------------------------------------------


def _tiny_nima(rngs=None):
    """A NIMA small enough for CI: one VGG conv, input size 32."""
    from flax import nnx

    from common.nima import Nima
    from common.vgg import VGG

    backbone = VGG("vgg16", taps=("relu1_1",), width=16, rngs=rngs or nnx.Rngs(0))
    return Nima(backbone, features=4, tap="relu1_1", input_size=32, rngs=rngs or nnx.Rngs(0))


def _parse(args: list[str]) -> None:
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["piea_enhance", *args])


def test_nima_guider_from_a_converted_directory(tmp_path, monkeypatch):
    import types

    from flax import nnx

    from common import weights
    from common.nima import mean_score
    from tests import torch_format

    # Stand-in for a backbone module (engineer B's common.mobilenet) with a tiny model.
    fake = types.ModuleType("common.mobilenet")
    fake.make_nima_mobilenet_v2 = _tiny_nima
    fake.nima_mobilenet_v2 = None  # only the converted directory is read
    monkeypatch.setitem(sys.modules, "common.mobilenet", fake)
    model = _tiny_nima(nnx.Rngs(3))
    source = tmp_path / "pretrain-model.pth"
    torch_format.save_zip(weights.module_arrays(model), source)
    converted = tmp_path / "converted"
    weights.save_converted(model, converted, format="mobilenet_v2", source=source)
    args = ["--out", str(tmp_path), "--guider", "nima", "--nima-weights", str(converted)]
    _parse(args)
    with pytest.raises(app.UsageError, match="--nima-backbone"):
        piea_enhance._guider()
    _parse([*args, "--nima-backbone", "mobilenet_v2"])
    guider, name, record = piea_enhance._guider()
    assert name.startswith(f"NIMA (mobilenet_v2, {converted}, sha256 ")
    assert record == {
        "backbone": "mobilenet_v2",
        "path": str(converted),
        "sha256": weights.file_sha256(source),
        "input_size": 32,
    }
    image = np.random.default_rng(0).uniform(0, 1, (32, 32, 3)).astype(np.float32)
    model.eval()
    assert float(guider(image)) == pytest.approx(float(mean_score(model(image[None]))[0]))


def test_nima_guider_bad_checkpoint_is_named(corpus, tmp_path):
    bad = tmp_path / "nima.pth"
    bad.write_bytes(b"PK\x03\x04 truncated")
    args = [str(corpus / "coffee.png"), "--out", str(tmp_path / "out"), "--guider", "nima"]
    args += ["--nima-weights", str(bad), "--nima-backbone", "vgg16_gap"]
    with pytest.raises(app.UsageError, match=r"nima\.pth.*truncated or corrupt"):
        _run_in_process(args)


def _random_nima_pytorch_v1(path: Path) -> None:
    """Random weights with nima.pytorch v1's keys and shapes (nima/model.py, nima/mobile_net_v2.py
    at tag v1: base_model = Sequential(MobileNetV2.features), head = Sequential(ReLU, Dropout,
    Linear(1280, 10), Softmax)), written as torch.save writes a state dict."""
    from tests import torch_format

    rng = np.random.default_rng(0)
    state = {}

    def conv(prefix, out_ch, in_ch, k):
        std = np.sqrt(2.0 / (in_ch * k * k))
        state[f"{prefix}.weight"] = (rng.standard_normal((out_ch, in_ch, k, k)) * std).astype(
            np.float32
        )

    def bn(prefix, ch):
        state[f"{prefix}.weight"] = (1 + 0.1 * rng.standard_normal(ch)).astype(np.float32)
        state[f"{prefix}.bias"] = (0.1 * rng.standard_normal(ch)).astype(np.float32)
        state[f"{prefix}.running_mean"] = (0.1 * rng.standard_normal(ch)).astype(np.float32)
        state[f"{prefix}.running_var"] = rng.uniform(0.5, 1.5, ch).astype(np.float32)
        state[f"{prefix}.num_batches_tracked"] = np.array(1000, np.int64)

    conv("base_model.0.0.0", 32, 3, 3)
    bn("base_model.0.0.1", 32)
    channels, index = 32, 1
    for t, c, n, _ in [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                       (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]:  # fmt: skip
        for _ in range(n):
            hidden, prefix = channels * t, f"base_model.0.{index}.conv"
            conv(f"{prefix}.0", hidden, channels, 1)
            bn(f"{prefix}.1", hidden)
            conv(f"{prefix}.3", hidden, 1, 3)  # depthwise: (hidden, 1, 3, 3)
            bn(f"{prefix}.4", hidden)
            conv(f"{prefix}.6", c, hidden, 1)
            bn(f"{prefix}.7", c)
            channels, index = c, index + 1
    conv(f"base_model.0.{index}.0", 1280, 320, 1)
    bn(f"base_model.0.{index}.1", 1280)
    state["head.2.weight"] = (rng.standard_normal((10, 1280)) * 0.05).astype(np.float32)
    state["head.2.bias"] = np.zeros(10, np.float32)
    torch_format.save_zip(state, path, archive=path.stem)


def _convert_then_enhance_demo(tmp_path, source: Path, backbone: str) -> None:
    """The documented commands: convert once, then enhance the demo photos with the guider."""
    converted = tmp_path / "converted"
    convert = [sys.executable, "-m", "common.weights", "convert", str(source)]
    convert += ["--format", backbone, "--out", str(converted)]
    proc = subprocess.run(convert, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "experiments.piea_enhance", "--demo", "--out", str(out)]
    cmd += ["--steps", "2", "--guider", "nima", "--nima-weights", str(converted)]
    cmd += ["--nima-backbone", backbone]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr
    assert f"4 of 4 image(s) enhanced into {out}; guider: NIMA ({backbone}" in proc.stderr
    for name in piea_enhance.DEMO_PHOTOS:
        record = json.loads((out / f"{name}.strategy.json").read_text())
        assert record["guider_weights"]["backbone"] == backbone
        assert len(record["guider_weights"]["sha256"]) == 64
        assert (out / f"{name}.png").exists()


@pytest.mark.slow
def test_demo_with_a_converted_vgg16_nima(tmp_path):
    from tests import torch_format
    from tests.vgg_reference import random_features

    state = {
        k.replace("features.", "base_model.features_"): v
        for k, v in random_features("vgg16").items()
    }
    state["classifier.2.weight"] = np.full((10, 512), 0.01, np.float32)
    state["classifier.2.bias"] = np.zeros(10, np.float32)
    source = tmp_path / "NIMA_VGG16_ava-dc4e8265.pth"
    torch_format.save_zip({"params": state}, source, archive=source.stem)
    _convert_then_enhance_demo(tmp_path, source, "vgg16_gap")


@pytest.mark.slow
def test_demo_with_a_converted_mobilenet_v2_nima(tmp_path):
    pytest.importorskip("common.mobilenet")  # engineer B's backbone module
    source = tmp_path / "pretrain-model.pth"
    _random_nima_pytorch_v1(source)
    _convert_then_enhance_demo(tmp_path, source, "mobilenet_v2")
