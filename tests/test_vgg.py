"""VGG-16/19 feature model: layer structure, taps, shapes, normalisation, parameter counts, and
loading torchvision / timm checkpoints (compared with an independent numpy forward)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import save_file

from common import vgg
from common.weights import CheckpointMismatchError
from tests import torch_format
from tests.vgg_reference import assert_close_to_scale, random_features, vgg_taps


def _param_count(make):
    abstract = nnx.eval_shape(make)
    return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(abstract, nnx.Param)))


def test_vgg19_qagan_taps_shapes():
    model = vgg.random_vgg19(seed=0, width=16)
    out = model(jnp.full((2, 32, 32, 3), 0.5))
    assert set(out) == set(vgg.QAGAN_TAPS)
    assert out["relu1_1"].shape == (2, 32, 32, 4)
    assert out["relu2_1"].shape == (2, 16, 16, 8)
    assert out["relu3_1"].shape == (2, 8, 8, 16)
    assert out["relu4_1"].shape == (2, 4, 4, 32)
    assert out["relu5_1"].shape == (2, 2, 2, 32)
    # Only conv1_1 ... conv5_1 are built: no parameters past the deepest tap.
    assert model.layer_names[-1] == "conv5_1"
    assert not hasattr(model, "conv5_2")


def test_vgg16_pool5_and_every_tap_available():
    taps = vgg.available_taps("vgg16")
    assert taps[-1] == "pool5" and "relu5_3" in taps and "relu5_4" not in taps
    model = vgg.random_vgg16(seed=1, taps=("relu3_3", "pool5"), width=16)
    out = model(jnp.zeros((1, 64, 64, 3)))
    assert out["pool5"].shape == (1, 2, 2, 32)
    assert out["relu3_3"].shape == (1, 16, 16, 16)


def test_full_size_parameter_counts():
    # torchvision: VGG-19 convs up to conv5_1 and all 13 VGG-16 convs.
    assert _param_count(lambda: vgg.random_vgg19()) == 12_944_960
    assert _param_count(lambda: vgg.random_vgg16()) == 14_714_688


def test_torchvision_index_table():
    idx = vgg.torchvision_index("vgg19")
    convs = [idx[n] for n in idx if n.startswith("conv")]
    assert convs == [0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34]
    assert [idx[f"pool{i}"] for i in range(1, 6)] == [4, 9, 18, 27, 36]
    idx16 = vgg.torchvision_index("vgg16")
    assert [idx16[f"pool{i}"] for i in range(1, 6)] == [4, 9, 16, 23, 30]
    assert idx16["conv5_3"] == 28


def test_first_tap_matches_numpy_reference():
    """ImageNet normalisation inside, zero padding, ReLU: checked against plain numpy."""
    model = vgg.random_vgg19(seed=3, taps=("relu1_1",), width=16)
    x = np.random.default_rng(0).uniform(0, 1, (1, 6, 5, 3)).astype(np.float32)
    y = (x - np.array(vgg.IMAGENET_MEAN)) / np.array(vgg.IMAGENET_STD)
    yp = np.pad(y, ((0, 0), (1, 1), (1, 1), (0, 0)))
    k = np.asarray(model.conv1_1.kernel[...])
    b = np.asarray(model.conv1_1.bias[...])
    ref = np.zeros((1, 6, 5, k.shape[-1]))
    for i in range(3):
        for j in range(3):
            ref += np.einsum("nhwc,co->nhwo", yp[:, i : i + 6, j : j + 5], k[i, j])
    ref = np.maximum(ref + b, 0)
    np.testing.assert_allclose(model(x)["relu1_1"], ref, atol=1e-5)


def test_max_pool_floors_odd_sizes_and_unknown_tap_fails():
    model = vgg.random_vgg19(taps=("pool1",), width=16)
    assert model(jnp.zeros((1, 9, 7, 3)))["pool1"].shape == (1, 4, 3, 4)
    with pytest.raises(ValueError, match="unknown VGG taps"):
        vgg.random_vgg19(taps=("relu9_9",))


def test_max_pool_2x2_matches_windowed_max_and_its_gradient():
    x = jax.random.normal(jax.random.key(0), (2, 13, 10, 5))

    def windowed(v):
        return nnx.max_pool(v, (2, 2), strides=(2, 2), padding="VALID")

    np.testing.assert_array_equal(vgg.max_pool_2x2(x), windowed(x))
    g_reshape = jax.grad(lambda v: jnp.sum(jnp.sin(vgg.max_pool_2x2(v))))(x)
    g_window = jax.grad(lambda v: jnp.sum(jnp.sin(windowed(v))))(x)
    np.testing.assert_allclose(g_reshape, g_window, atol=1e-6)


def test_conv3x3_matches_lax_conv_values_and_gradients():
    kx, kk, kb, kc = jax.random.split(jax.random.key(0), 4)
    x = jax.random.normal(kx, (2, 9, 7, 5))
    kernel = jax.random.normal(kk, (3, 3, 5, 4))
    bias = jax.random.normal(kb, (4,))
    cotangent = jax.random.normal(kc, (2, 9, 7, 4))

    def plain(x, kernel, bias):
        dims = ("NHWC", "HWIO", "NHWC")
        out = jax.lax.conv_general_dilated(
            x, kernel, (1, 1), ((1, 1), (1, 1)), dimension_numbers=dims
        )
        return out + bias

    out, pull = jax.vjp(vgg.conv3x3, x, kernel, bias)
    out_ref, pull_ref = jax.vjp(plain, x, kernel, bias)
    np.testing.assert_allclose(out, out_ref, atol=1e-5)
    for got, want in zip(pull(cotangent), pull_ref(cotangent), strict=True):
        np.testing.assert_allclose(got, want, atol=1e-4)


# --- Pretrained weights: torchvision and timm layouts ------------------------------------------


def _classifier_stand_ins(names):
    # The real classifier weights (4096 x 25088, ...) would add ~480 MB and the loaders ignore
    # them, so these keys keep their real names with small shapes.
    return {name: np.zeros((4, 3), np.float32) for name in names}


@pytest.fixture(scope="module")
def vgg19_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vgg19")
    state = dict(random_features("vgg19"))
    state.update(_classifier_stand_ins([f"classifier.{i}.{p}" for i in (0, 3, 6) for p in "wb"]))
    files = {"zip": folder / "vgg19-dcbb9e9d.pth", "legacy": folder / "vgg19-legacy.pth"}
    torch_format.save_zip(state, files["zip"], archive="vgg19-dcbb9e9d")
    torch_format.save_legacy(state, files["legacy"])
    return files


@pytest.mark.parametrize("layout", ["zip", "legacy"])
def test_load_vgg19_torchvision_matches_numpy_reference(vgg19_files, layout):
    model = vgg.load_vgg19(vgg19_files[layout])
    # Same model object as the random one: same module graph, so the same compiled programs.
    assert nnx.graphdef(model) == nnx.graphdef(nnx.eval_shape(lambda: vgg.random_vgg19()))
    x = np.random.default_rng(1).uniform(0, 1, (2, 32, 40, 3)).astype(np.float32)
    out = model(x)
    ref = vgg_taps(x, random_features("vgg19"), "vgg19", depth=17)  # through conv5_1
    assert set(out) == set(vgg.QAGAN_TAPS)
    for tap in vgg.QAGAN_TAPS:
        assert_close_to_scale(out[tap], ref[tap], what=tap)


def test_load_vgg19_every_tap(vgg19_files):
    taps = vgg.available_taps("vgg19")
    model = vgg.load_vgg19(vgg19_files["zip"], taps=taps)
    x = np.random.default_rng(2).uniform(0, 1, (1, 32, 32, 3)).astype(np.float32)
    out = model(x)
    ref = vgg_taps(x, random_features("vgg19"), "vgg19")
    assert out["pool5"].shape == (1, 1, 1, 512)
    for tap in taps:
        assert_close_to_scale(out[tap], ref[tap], what=tap)


def test_load_vgg16_timm_safetensors(tmp_path):
    state = dict(random_features("vgg16"))
    state.update(
        _classifier_stand_ins(
            ["pre_logits.fc1.weight", "pre_logits.fc1.bias", "pre_logits.fc2.weight"]
            + ["pre_logits.fc2.bias", "head.fc.weight", "head.fc.bias"]
        )
    )
    path = tmp_path / "model.safetensors"  # timm/vgg16.tv_in1k on the Hugging Face Hub
    save_file(state, path)
    model = vgg.load_vgg16(path, taps=("relu3_3", "pool5"))
    x = np.random.default_rng(3).uniform(0, 1, (2, 64, 48, 3)).astype(np.float32)
    out = model(x)
    ref = vgg_taps(x, random_features("vgg16"), "vgg16")
    for tap in ("relu3_3", "pool5"):
        assert_close_to_scale(out[tap], ref[tap], what=tap)


def test_a_vgg16_checkpoint_is_not_a_vgg19(tmp_path):
    path = tmp_path / "vgg16.pth"
    torch_format.save_zip(random_features("vgg16"), path)
    with pytest.raises(CheckpointMismatchError, match="missing key 'features.16.weight'"):
        vgg.load_vgg19(path)
