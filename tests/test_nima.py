"""NIMA loading (the two VGG16 formats, the dispatch to the other backbones, converted
directories) against an independent numpy forward, and `nima_quality`'s protocols."""

import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from common import nima, weights
from common.nima import Nima, load_nima, mean_score, nima_quality
from common.vgg import VGG
from common.weights import CheckpointError, CheckpointMismatchError
from tests import torch_format
from tests.vgg_reference import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    assert_close_to_scale,
    nchw_flatten,
    nima_probs,
    random_features,
    vgg_taps,
)

RNG = np.random.default_rng(0)


def _head(features: int, seed: int, gain: float):
    # `gain` keeps the softmax away from both uniform and one-hot (asserted by the tests), so
    # that a wrong feature order or scale changes the probabilities.
    rng = np.random.default_rng(seed)
    weight = rng.standard_normal((10, features)).astype(np.float32) * gain / np.sqrt(features)
    return weight, rng.standard_normal(10).astype(np.float32)


# --- vgg16_gap: IQA-PyTorch NIMA_VGG16_ava ---------------------------------------------------


@pytest.fixture(scope="module")
def pyiqa_vgg16(tmp_path_factory):
    """A file laid out as IQA-PyTorch saves NIMA_VGG16_ava: {"params": state_dict}."""
    features = random_features("vgg16")
    weight, bias = _head(512, 1, gain=0.3)
    state = {k.replace("features.", "base_model.features_"): v for k, v in features.items()}
    state.update({"classifier.2.weight": weight, "classifier.2.bias": bias})
    path = tmp_path_factory.mktemp("pyiqa") / "NIMA_VGG16_ava-dc4e8265.pth"
    torch_format.save_zip({"params": state}, path, archive="NIMA_VGG16_ava-dc4e8265")
    return path, weight, bias


def test_vgg16_gap_matches_numpy_reference(pyiqa_vgg16):
    path, weight, bias = pyiqa_vgg16
    model = load_nima(path, backbone="vgg16_gap")
    assert isinstance(model, Nima) and model.input_size == 224
    x = RNG.uniform(0, 1, (2, 64, 64, 3)).astype(np.float32)
    pool5 = vgg_taps(x, random_features("vgg16"), "vgg16")["pool5"]  # ImageNet mean/std inside
    ref = nima_probs(pool5.mean(axis=(1, 2)), weight, bias)
    assert 0.15 < ref.max() < 0.9
    assert_close_to_scale(model.backbone(x)["pool5"], pool5, what="vgg16_gap pool5")
    got = model(x)
    assert_close_to_scale(got, ref, what="vgg16_gap probabilities")
    # Evaluation mode (no dropout): the same input gives the same scores.
    np.testing.assert_array_equal(model(x), got)


def test_vgg16_gap_converted_directory(tmp_path, pyiqa_vgg16):
    path, _, _ = pyiqa_vgg16
    out = tmp_path / "nima_vgg16"
    manifest = weights.convert(path, format="vgg16_gap", out=out)
    assert manifest["input_size"] == 224 and manifest["format"] == "vgg16_gap"
    x = RNG.uniform(0, 1, (1, 64, 64, 3)).astype(np.float32)
    np.testing.assert_array_equal(
        load_nima(out, backbone="vgg16_gap")(x), load_nima(path, backbone="vgg16_gap")(x)
    )
    with pytest.raises(CheckpointError, match="holds 'vgg16_gap' parameters, not 'vgg16_flatten'"):
        load_nima(out, backbone="vgg16_flatten")


def test_wrong_format_is_named(pyiqa_vgg16):
    path, _, _ = pyiqa_vgg16
    with pytest.raises(CheckpointMismatchError, match="no state dict with the key 'classifier.1"):
        nima.load_nima(path, backbone="vgg16_flatten")


# --- vgg16_flatten: Neural-IMage-Assessment ------------------------------------------------


@pytest.fixture(scope="module")
def nia_state():
    weight, bias = _head(25088, 2, gain=3.0)
    # Trained on several GPUs, Neural-IMage-Assessment wraps `features` in DataParallel.
    state = {
        k.replace("features.", "features.module."): v for k, v in random_features("vgg16").items()
    }
    state.update({"classifier.1.weight": weight, "classifier.1.bias": bias})
    return state, weight, bias


def test_vgg16_flatten_both_releases_match_numpy_reference(tmp_path, nia_state):
    state, weight, bias = nia_state
    legacy, zipped = tmp_path / "epoch-57.pth", tmp_path / "epoch-34.pth"
    torch_format.save_legacy(state, legacy)  # the 2020 release (torch 1.5: legacy layout)
    torch_format.save_zip(state, zipped, archive="epoch-34")  # the 2021 release (torch 1.8)
    plain = load_nima(legacy, backbone="vgg16_flatten")
    imagenet = load_nima(zipped, backbone="vgg16_flatten_imagenet")
    assert plain.pool == "flatten" and plain.input_size == 224
    assert not plain.backbone.imagenet_normalize and imagenet.backbone.imagenet_normalize
    z = RNG.uniform(0, 1, (1, 224, 224, 3)).astype(np.float32)
    pool5 = vgg_taps(z, random_features("vgg16"), "vgg16", normalize=False)["pool5"]
    ref = nima_probs(nchw_flatten(pool5), weight, bias)  # torch's view(N, -1) of NCHW
    assert 0.15 < ref.max() < 0.9
    assert_close_to_scale(plain(z), ref, what="vgg16_flatten probabilities")
    # The 2021 model normalises inside: feed it the image whose normalisation is z.
    x = z * IMAGENET_STD.astype(np.float32) + IMAGENET_MEAN.astype(np.float32)
    assert_close_to_scale(imagenet(x), ref, what="vgg16_flatten_imagenet probabilities")


# --- The other backbones: dispatch to their builders -----------------------------------------


def _tiny_nima(rngs=None):
    backbone = VGG("vgg16", taps=("relu1_1",), width=16, rngs=rngs or nnx.Rngs(0))
    return Nima(backbone, features=4, tap="relu1_1", input_size=32, rngs=rngs or nnx.Rngs(0))


@pytest.fixture
def fake_mobilenet(monkeypatch):
    """Stands in for engineer B's common.mobilenet: records what load_nima passes."""
    calls = []
    module = types.ModuleType("common.mobilenet")

    def from_tensors(tensors, *, source):
        calls.append((dict(tensors), source))
        model = _tiny_nima()
        entries = weights.module_entries(model)
        weights.load_entries(model, tensors, entries, source=source, ignore=lambda k: True)
        return model

    module.make_nima_mobilenet_v2 = _tiny_nima
    module.nima_mobilenet_v2 = from_tensors
    module.make_nima_mobilenet_keras = _tiny_nima
    module.nima_mobilenet_keras = from_tensors
    monkeypatch.setitem(sys.modules, "common.mobilenet", module)
    return calls


def test_mobilenet_v2_dispatch_unwraps_the_state_dict(tmp_path, fake_mobilenet):
    arrays = weights.module_arrays(_tiny_nima(nnx.Rngs(5)))
    state = dict(arrays, **{"head.2.weight": np.ones((10, 1280), np.float32)})
    path = tmp_path / "pretrain-model.pth"
    torch_format.save_zip(
        {"state_dict": state, "epoch": 3, "optimizer": {"x": arrays["head.bias"]}}, path
    )
    model = load_nima(path, backbone="mobilenet_v2")
    ((tensors, source),) = fake_mobilenet
    assert source == str(path) and sorted(tensors) == sorted(state)  # no wrapper, no optimiser
    assert model.dropout.deterministic  # returned in evaluation mode


def test_keras_dispatch_passes_the_h5_keys_as_they_are(tmp_path, fake_mobilenet, monkeypatch):
    arrays = weights.module_arrays(_tiny_nima(nnx.Rngs(6)))
    keras = types.ModuleType("common.keras_h5")
    keras.read_keras_h5 = lambda path: dict(arrays, **{"dense_1/kernel:0": np.ones((1024, 10))})
    monkeypatch.setitem(sys.modules, "common.keras_h5", keras)
    path = tmp_path / "weights_mobilenet_technical_0.11.hdf5"
    path.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(32))
    load_nima(path, backbone="mobilenet_keras")
    ((tensors, _),) = fake_mobilenet
    assert "dense_1/kernel:0" in tensors


def test_converted_directory_of_another_backbone(tmp_path, fake_mobilenet):
    source = _tiny_nima(nnx.Rngs(7))
    path = tmp_path / "pretrain-model.pth"
    torch_format.save_zip(
        dict(weights.module_arrays(source), **{"head.2.weight": np.ones(1)}), path
    )
    out = tmp_path / "converted"
    weights.convert(path, format="mobilenet_v2", out=out)
    loaded = load_nima(out, backbone="mobilenet_v2")
    x = RNG.uniform(0, 1, (1, 32, 32, 3)).astype(np.float32)
    source.eval()
    np.testing.assert_array_equal(loaded(x), source(x))


def test_unavailable_backbone_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "common.inception_resnet_v2", None)
    with pytest.raises(ImportError, match="'inception_resnet_v2' is not available"):
        load_nima(tmp_path / "x.pth", backbone="inception_resnet_v2")
    with pytest.raises(ValueError, match="unknown NIMA backbone 'inception_v2'"):
        load_nima(tmp_path / "x.pth", backbone="inception_v2")
    monkeypatch.setitem(sys.modules, "common.bn_inception", None)
    with pytest.raises(ImportError, match="'bn_inception' is not available"):
        load_nima(tmp_path / "x.pth", backbone="bn_inception")


# --- nima_quality ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "size, resized, offset",
    [
        ((512, 512), (256, 256), (16, 16)),
        ((300, 400), (256, 341), (16, 58)),  # (341 - 224) / 2 = 58.5 rounds half to even
        ((400, 300), (341, 256), (58, 16)),
        ((333, 500), (256, 384), (16, 80)),
    ],
)
def test_uegan_geometry_follows_torchvision(size, resized, offset):
    assert nima.uegan_geometry(*size) == (resized, offset)


def _pil_uegan(image: np.ndarray) -> np.ndarray:
    """torchvision Resize(256) + CenterCrop(224) through PIL's bilinear filter, on floats."""
    (h, w), (top, left) = nima.uegan_geometry(*image.shape[:2])
    channels = [
        np.asarray(Image.fromarray(image[..., c], mode="F").resize((w, h), Image.BILINEAR))
        for c in range(3)
    ]
    return np.stack(channels, -1)[top : top + 224, left : left + 224]


def _linear_nima():
    """A cheap NIMA whose score depends on every input pixel: mean pool of the image itself."""

    class Identity(nnx.Module):
        def __call__(self, x):
            return x

    return Nima(Identity(), features=3, input_size=224, dropout=0.0, rngs=nnx.Rngs(0))


def test_nima_quality_protocols_against_references():
    model = _linear_nima()
    model.head.kernel[...] = jnp.asarray(RNG.standard_normal((3, 10)) * 5, jnp.float32)
    images = [RNG.uniform(0, 1, s).astype(np.float32) for s in [(300, 400, 3), (96, 80, 3)]]
    images.append(images[0].copy())
    images_u8 = [np.round(im * 255).astype(np.uint8) for im in images]

    def score(x):
        return float(mean_score(model(x[None]))[0])

    uegan = nima_quality(images, model, protocol="uegan", batch_size=2)
    assert uegan.shape == (3,) and uegan[0] == uegan[2]
    for got, image in zip(uegan, images, strict=True):
        assert abs(got - score(_pil_uegan(image))) < 1e-4
    resized = nima_quality(images, model, protocol="resize")
    square = jax.image.resize(images[1], (224, 224, 3), "linear", antialias=True)
    assert abs(resized[1] - score(np.asarray(square))) < 1e-5
    native = nima_quality(images_u8, model, protocol="native")
    assert abs(native[1] - score(images_u8[1] / np.float32(255))) < 1e-5
    with pytest.raises(ValueError, match="unknown protocol"):
        nima_quality(images, model, protocol="imagenet")


def test_nima_quality_refuses_native_for_a_flatten_head():
    model = nnx.eval_shape(nima.make_nima_vgg16_flatten)
    with pytest.raises(ValueError, match="flatten head"):
        nima_quality(np.zeros((1, 32, 32, 3)), model, protocol="native")
