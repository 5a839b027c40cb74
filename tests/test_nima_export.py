"""Building, exporting and handing on NIMAs trained here: `make_nima` and its architecture
arguments, `load_imagenet_backbone`, `save_nima` -> `load_nima` for converted and training
work directories, and `piea_enhance --guider nima` reading a work directory."""

import json

import jax
import numpy as np
import pytest
from absl import flags
from flax import nnx
from PIL import Image

from common import bn_inception, mobilenet, nima, weights
from common.nima import NIMA_EXPORT_DIR, load_imagenet_backbone, load_nima, make_nima, save_nima
from common.weights import CheckpointError, CheckpointMismatchError
from tests import np_reference as ref
from tests import torch_format
from tests.vgg_reference import random_features

ARCH = {"width": 0.25, "input_size": 64}


@nnx.jit
def _forward(model, x):
    return model(x)


def _scores(model, x):
    copy = nnx.merge(*nnx.split(model))
    copy.eval()
    return np.asarray(_forward(copy, x))


@pytest.fixture(scope="module")
def trained():
    """A narrow BN-Inception NIMA as training leaves one: running statistics away from their
    initial values (so that saving them matters) and a head that scores images differently."""
    model = make_nima("bn_inception", rngs=nnx.Rngs(3), **ARCH)
    rng = np.random.default_rng(4)
    for _, var in nnx.to_flat_state(nnx.state(model, nnx.BatchStat)):
        shape = var.get_value().shape
        var.set_value(rng.uniform(0.5, 1.5, shape) if var.get_value()[0] == 1 else
                      rng.normal(0.0, 0.5, shape))  # fmt: skip
    model.head.kernel[...] = rng.standard_normal((256, 10)) * 1e-3
    return model


# --- make_nima -----------------------------------------------------------------------------------


def test_make_nima_architecture_arguments(trained):
    assert trained.backbone.features == 256 and trained.head.kernel.shape == (256, 10)
    assert trained.input_size == 64 and trained.dropout.rate == 0.75
    assert not trained.dropout.deterministic  # built for training
    vgg = nnx.eval_shape(lambda: make_nima("vgg16_gap", width=16))
    assert vgg.backbone.channels["pool5"] == 32 and vgg.head.kernel.shape == (32, 10)
    assert vgg.dropout.rate == 0.0  # IQA-PyTorch's head; training asks for the paper's 0.75
    assert (
        nnx.eval_shape(lambda: make_nima("vgg16_gap", width=16, dropout=0.75)).dropout.rate == 0.75
    )
    with pytest.raises(
        TypeError, match=r"'width' for NIMA backbone 'mobilenet_v2' \(it takes none"
    ):
        make_nima("mobilenet_v2", width=2)
    with pytest.raises(
        TypeError, match=r"'input_size' for NIMA backbone 'vgg16_gap' \(it takes width, dropout"
    ):
        make_nima("vgg16_gap", input_size=64)
    with pytest.raises(ValueError, match="unknown NIMA backbone 'bninception'"):
        make_nima("bninception")
    with pytest.raises(ValueError, match="width must be positive"):
        make_nima("bn_inception", width=0)
    with pytest.raises(ValueError, match="channel divisor"):
        make_nima("vgg16_gap", width=0.5)


# --- save_nima -> load_nima ----------------------------------------------------------------------


def test_export_round_trip_directory_and_work_directory(trained, tmp_path):
    run = {"workdir": str(tmp_path), "step": 3, "test": {"emd": 0.2, "srcc": 0.1}}
    export = tmp_path / NIMA_EXPORT_DIR
    manifest = save_nima(trained, export, backbone="bn_inception", arch=ARCH, run=run)
    written = json.loads((export / "manifest.json").read_text())
    assert written == manifest
    assert manifest["source"] is None and manifest["arch"] == ARCH and manifest["run"] == run
    assert manifest["format"] == "bn_inception" and manifest["input_size"] == 64
    x = ref.sample_images((2, 64, 64, 3), seed=2)
    want = _scores(trained, x)
    assert np.abs(want[0] - want[1]).max() > 1e-3  # the images score differently
    for path in (export, tmp_path):  # (b) the directory, (c) the work directory holding it
        loaded = load_nima(path, backbone="bn_inception")
        assert loaded.input_size == 64 and loaded.dropout.deterministic
        assert loaded.backbone.conv1_7x7_s2.bn.use_running_average
        np.testing.assert_allclose(_scores(loaded, x), want, rtol=1e-6, atol=1e-7)
        # A model trained here has no source file: its parameters' SHA-256 stands for it.
        assert weights.source_sha256(path) == manifest["params"]["sha256"]
        assert manifest["params"]["sha256"] == weights.file_sha256(export / "params.safetensors")
    with pytest.raises(CheckpointError, match="holds 'bn_inception' parameters, not 'vgg16_gap'"):
        load_nima(tmp_path, backbone="vgg16_gap")


def test_save_nima_refuses_what_could_not_be_loaded(trained, tmp_path):
    with pytest.raises(ValueError, match=r"not make_nima\('bn_inception'"):
        save_nima(trained, tmp_path / "a", backbone="bn_inception", arch={"width": 0.5})
    with pytest.raises(TypeError, match="'depth'"):
        save_nima(trained, tmp_path / "b", backbone="bn_inception", arch={**ARCH, "depth": 3})
    with pytest.raises(TypeError, match="not JSON serializable"):
        save_nima(trained, tmp_path / "c", backbone="bn_inception", arch=ARCH, run={"x": object()})
    assert not any(tmp_path.iterdir())  # nothing written by the refusals
    save_nima(trained, tmp_path / "d", backbone="bn_inception", arch=ARCH)
    with pytest.raises(FileExistsError, match="not empty"):
        save_nima(trained, tmp_path / "d", backbone="bn_inception", arch=ARCH)
    manifest = save_nima(
        trained, tmp_path / "d", backbone="bn_inception", arch=ARCH, overwrite=True
    )
    assert manifest["run"] is None


def test_a_work_directory_without_export_is_named(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(CheckpointError, match="neither a converted directory.*export/"):
        load_nima(tmp_path, backbone="bn_inception")


# --- ImageNet backbones --------------------------------------------------------------------------


def test_imagenet_bn_inception_into_a_nima(trained, tmp_path):
    state = ref.random_weights(ref.bn_inception_shapes(), seed=21)
    path = tmp_path / "bn_inception-52deb4733.pth"
    torch_format.save_zip(state, path)
    # A full-width model with unallocated weights: the backbone is filled, the head not touched.
    model = weights.cached_empty_module(bn_inception.make_nima_bn_inception)
    load_imagenet_backbone(model, path, backbone="bn_inception")
    conv = model.backbone.inception_4d_double_3x3_1
    np.testing.assert_array_equal(
        conv.conv.kernel[...], state["inception_4d_double_3x3_1.weight"].transpose(2, 3, 1, 0)
    )
    np.testing.assert_array_equal(
        conv.bn.var[...], state["inception_4d_double_3x3_1_bn.running_var"]
    )
    assert isinstance(model.head.kernel.get_value(), jax.ShapeDtypeStruct)
    assert not conv.bn.use_running_average  # still in training mode
    with pytest.raises(ValueError, match="full-width bn_inception network.*width 0.25"):
        load_imagenet_backbone(trained, path, backbone="bn_inception")
    with pytest.raises(ValueError, match="no ImageNet weights for NIMA backbone 'mobilenet_keras'"):
        load_imagenet_backbone(model, path, backbone="mobilenet_keras")


def test_imagenet_vgg16_into_a_nima(tmp_path):
    state = random_features("vgg16")
    path = tmp_path / "vgg16-397923af.pth"
    classifier = {"classifier.6.weight": np.zeros((1000, 4096), np.float32)}
    torch_format.save_legacy(dict(state, **classifier), path)
    model = weights.cached_empty_module(nima.make_nima_vgg16_gap)
    load_imagenet_backbone(model, path, backbone="vgg16_gap")
    np.testing.assert_array_equal(
        model.backbone.conv5_3.kernel[...], state["features.28.weight"].transpose(2, 3, 1, 0)
    )
    np.testing.assert_array_equal(model.backbone.conv1_1.bias[...], state["features.0.bias"])
    narrow = nnx.eval_shape(lambda: make_nima("vgg16_gap", width=4))
    with pytest.raises(ValueError, match="width 4"):
        load_imagenet_backbone(narrow, path, backbone="vgg16_gap")


def test_imagenet_mobilenet_v2_into_a_nima(tmp_path):
    nima_state = ref.random_weights(ref.mobilenet_v2_shapes(), seed=22)
    state = {
        k.replace("base_model.0.", "features."): v
        for k, v in nima_state.items()
        if k.startswith("base_model.0.")
    }
    state["classifier.1.weight"] = np.zeros((1000, 1280), np.float32)
    state["classifier.1.bias"] = np.zeros(1000, np.float32)
    path = tmp_path / "mobilenetv2.pth.tar"
    torch_format.save_zip({"state_dict": state}, path)
    model = weights.cached_empty_module(mobilenet.make_nima_mobilenet_v2)
    load_imagenet_backbone(model, path, backbone="mobilenet_v2")
    block = model.backbone.features[5].depthwise
    np.testing.assert_array_equal(
        block.conv.kernel[...], state["features.5.conv.3.weight"].transpose(2, 3, 1, 0)
    )
    np.testing.assert_array_equal(block.bn.mean[...], state["features.5.conv.4.running_mean"])
    del state["features.18.1.running_var"]
    torch_format.save_zip(state, path)
    with pytest.raises(CheckpointMismatchError, match="missing key 'features.18.1.running_var'"):
        load_imagenet_backbone(model, path, backbone="mobilenet_v2")


# --- convert and the PIEA hand-off ---------------------------------------------------------------


def test_convert_a_bn_inception_nima_state_dict(tmp_path):
    state = ref.random_weights(ref.bn_inception_shapes(classes=10), seed=23)
    source = tmp_path / "nima_bn_inception.pth"
    torch_format.save_zip(state, source)
    out = tmp_path / "converted"
    args = ["convert", str(source), "--format", "bn_inception", "--out", str(out)]
    assert weights.main(args) == 0
    model = load_nima(out, backbone="bn_inception")
    assert model.input_size == 224 and model.backbone.width == 1.0
    np.testing.assert_array_equal(model.head.kernel[...], state["last_linear.weight"].T)
    assert weights.source_sha256(out) == weights.file_sha256(source)
    assert weights.main(["convert", str(out), "--format", "bn_inception", "--out", "x"]) == 1


def test_guider_from_a_work_directory(trained, tmp_path):
    from piea_jax.guiders import load_guider

    workdir = tmp_path / "run"
    manifest = save_nima(trained, workdir / NIMA_EXPORT_DIR, backbone="bn_inception", arch=ARCH)
    guider, description, record = load_guider("nima", str(workdir), "bn_inception")
    assert description.startswith(f"NIMA (bn_inception, {workdir}, sha256 ")
    assert record == {
        "backbone": "bn_inception",
        "path": str(workdir),
        "sha256": manifest["params"]["sha256"],
        "input_size": 64,
    }
    image = ref.sample_images((1, 64, 64, 3), seed=6)[0]
    want = float(nima.mean_score(_scores(trained, image[None]))[0])
    assert float(jax.jit(lambda g, x: g(x))(guider, image)) == pytest.approx(want, rel=1e-5)


@pytest.mark.slow
def test_piea_enhance_guided_by_a_work_directory(trained, tmp_path, capsys):
    """The command line end to end (compiling the search through BN-Inception: ~30 s)."""
    from experiments import piea_enhance

    workdir = tmp_path / "nima_run"
    manifest = save_nima(
        trained, workdir / NIMA_EXPORT_DIR, backbone="bn_inception", arch=ARCH, run={"step": 2}
    )
    photo = tmp_path / "photo.png"
    pixels = (ref.sample_images((1, 24, 32, 3), seed=3)[0] * 255 * 0.5).astype(np.uint8)
    Image.fromarray(pixels).save(photo)
    out = tmp_path / "out"
    args = [str(photo), "--out", str(out), "--steps", "1", "--guider", "nima"]
    args += ["--nima-weights", str(workdir), "--nima-backbone", "bn_inception"]
    flags.FLAGS.unparse_flags()
    assert piea_enhance.main(flags.FLAGS(["piea_enhance", *args])) == 0, capsys.readouterr().err
    record = json.loads((out / "photo.strategy.json").read_text())
    assert record["guider_weights"] == {
        "backbone": "bn_inception",
        "path": str(workdir),
        "sha256": manifest["params"]["sha256"],
        "input_size": 64,
    }
    assert len(record["scores"]) == 2 and all(1 <= s <= 10 for s in record["scores"])
    assert Image.open(out / "photo.png").size == (32, 24)


def test_cached_empty_modules_do_not_share_variables():
    def make():
        return nnx.Linear(2, 3, rngs=nnx.Rngs(0))

    a = weights.cached_empty_module(make)
    a.kernel.set_value(np.ones((2, 3), np.float32))
    b = weights.cached_empty_module(make)
    assert b.kernel is not a.kernel and isinstance(b.kernel.get_value(), jax.ShapeDtypeStruct)
