"""NIMA backbones (MobileNetV2, Keras MobileNet, Inception-ResNet-v2) against numpy references.

Each format gets random weights in its exact key layout and real layer shapes, is built through
the public loader (`nima_NAME(tensors, source=...)`; the Keras weights through real `.h5` files
read by `read_keras_h5`), and is compared with `tests/np_reference.py` on small images: the
feature map within 1e-4 of its scale and the probabilities within 1e-4.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from common import inception_resnet_v2 as irv2
from common import mobilenet
from common.keras_h5 import read_keras_h5
from common.nima import Nima
from common.weights import CheckpointError, CheckpointMismatchError, load_entries
from tests import keras_files
from tests import np_reference as ref

TOL = 1e-4


def _run(model, images):
    """(backbone map NHWC, probabilities) of an eval-mode copy of `model`, jitted."""
    graphdef, state = nnx.split(model)
    copy = nnx.merge(graphdef, state)
    copy.eval()
    graphdef, state = nnx.split(copy)

    @jax.jit
    def forward(state, x):
        m = nnx.merge(graphdef, state)
        return m.backbone(x), m(x)

    fmap, probs = forward(state, images)
    return np.asarray(fmap), np.asarray(probs)


def _assert_matches(model, reference, weights, images):
    ref_map, ref_probs = reference(weights, images)
    fmap, probs = _run(model, images)
    ref_map = ref_map.transpose(0, 2, 3, 1)
    assert fmap.shape == ref_map.shape
    scale = np.abs(ref_map).max()
    assert np.abs(fmap - ref_map).max() <= TOL * scale
    assert np.allclose(probs.sum(-1), 1.0, atol=1e-5)
    assert np.abs(probs - ref_probs).max() <= TOL
    # A flat or saturated softmax, or images scored alike, would make the comparison vacuous.
    assert 0.02 < ref_probs.max() - ref_probs.min() and ref_probs.max() < 0.9
    assert len(images) == 1 or np.abs(ref_probs[0] - ref_probs[1]).max() > 10 * TOL


def _map_shape(model, size):
    """The backbone's output shape on (1, size, size, 3) inputs, traced only."""
    return jax.eval_shape(
        model.backbone, jax.ShapeDtypeStruct((1, size, size, 3), np.float32)
    ).shape


def _images(shape, seed=0):
    return ref.sample_images(shape, seed)


def _params(model):
    return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))


# --- nima.pytorch v1 MobileNetV2 -----------------------------------------------------------------


@pytest.fixture(scope="module")
def v2():
    weights = ref.random_weights(ref.mobilenet_v2_shapes(), seed=1, head_scale=0.05)
    return weights, mobilenet.nima_mobilenet_v2(weights, source="v2.pth")


def test_mobilenet_v2_matches_numpy_reference(v2):
    weights, model = v2
    _assert_matches(model, ref.mobilenet_v2_forward, weights, _images((2, 96, 80, 3)))


def test_mobilenet_v2_structure(v2):
    _, model = v2
    assert model.input_size == 224 and model.head_relu and model.pool == "avg"
    assert _params(model) == 2_237_770  # torchvision's 2.22 M + the t=1 expansion + head
    assert _map_shape(model, 224) == (1, 7, 7, 1280)


def test_mobilenet_v2_imagenet_normalisation_option(v2):
    _, model = v2
    graphdef, state = nnx.split(model.backbone)
    plain = nnx.merge(graphdef, state)
    normalised = nnx.merge(graphdef, state)
    normalised.normalize = mobilenet.IMAGENET_NORMALIZE
    x = _images((1, 32, 32, 3), seed=3)
    mean, std = (np.asarray(a, np.float32) for a in mobilenet.IMAGENET_NORMALIZE)
    np.testing.assert_allclose(
        np.asarray(jax.jit(normalised)(x * std + mean)),
        np.asarray(jax.jit(plain)(x)),
        rtol=1e-4,
        atol=1e-4,
    )


def test_mobilenet_v2_wrong_shape_and_missing_key_named():
    weights = ref.random_weights(ref.mobilenet_v2_shapes(), seed=2)
    bad = dict(weights)
    bad["base_model.0.5.conv.3.weight"] = np.zeros((144, 1, 3, 3), np.float32)
    del bad["head.2.bias"]
    bad["head.3.weight"] = np.zeros((10,), np.float32)
    with pytest.raises(CheckpointMismatchError) as err:
        mobilenet.nima_mobilenet_v2(bad, source="bad.pth")
    message = str(err.value)
    assert "bad.pth" in message
    assert "'base_model.0.5.conv.3.weight': checkpoint (144, 1, 3, 3), expected (192, 1, 3, 3)" in (
        message
    )
    assert "missing key 'head.2.bias' (expected shape (10,))" in message
    assert "unexpected key 'head.3.weight'" in message


def test_mobilenet_v2_accepts_state_dict_without_num_batches_tracked():
    shapes = {k: s for k, s in ref.mobilenet_v2_shapes().items() if "num_batches" not in k}
    model = mobilenet.nima_mobilenet_v2(ref.random_weights(shapes, seed=4), source="torch 0.4")
    assert model.head.kernel.shape == (1280, 10)


# --- Keras MobileNet (idealo / titu1994), through real .h5 files ---------------------------------


def _keras_layer_order(dense):
    """The NIMA model's layers as Keras lists them, parameter-free ones included."""
    order = ["input_1", "conv1_pad", "conv1", "conv1_bn", "conv1_relu"]
    for n, (_, stride) in enumerate(mobilenet.MOBILENET_V1_BLOCKS, 1):
        order += [f"conv_pad_{n}"] if stride == 2 else []
        order += [f"conv_dw_{n}", f"conv_dw_{n}_bn", f"conv_dw_{n}_relu"]
        order += [f"conv_pw_{n}", f"conv_pw_{n}_bn", f"conv_pw_{n}_relu"]
    return order + ["global_average_pooling2d_1", "dropout_1", dense]


@pytest.fixture(scope="module")
def keras(tmp_path_factory):
    weights = ref.random_weights(ref.mobilenet_keras_shapes("dense_1"), seed=5, head_scale=0.3)
    layers = keras_files.keras_layers(weights, _keras_layer_order("dense_1"))
    path = tmp_path_factory.mktemp("keras") / "weights_mobilenet_aesthetic.hdf5"
    keras_files.write_keras2_h5(path, layers)
    read = read_keras_h5(path)
    assert read.keys() == weights.keys()
    assert all(np.array_equal(read[k], weights[k]) and read[k].dtype == np.float32 for k in read)
    return weights, layers, mobilenet.nima_mobilenet_keras(read, source=str(path))


def test_mobilenet_keras_matches_numpy_reference(keras):
    weights, _, model = keras
    # Odd sizes: Keras' ((0, 1), (0, 1)) padding differs from symmetric and from TF 'SAME'.
    _assert_matches(model, ref.mobilenet_keras_forward, weights, _images((2, 97, 75, 3), 1))


def test_mobilenet_keras_structure(keras):
    _, _, model = keras
    assert model.input_size == 224 and not model.head_relu
    assert _params(model) == 3_217_226  # Keras: 3,206,976 trainable + Dense(1024, 10)
    assert _map_shape(model, 224) == (1, 7, 7, 1024)


@pytest.mark.parametrize("full_model", [False, True])
def test_keras_full_model_and_nested_base_model_read_alike(keras, tmp_path, full_model):
    weights, layers, _ = keras
    outer = ["input_1", "dropout_1", "dense_1"]
    nested = keras_files.nest(layers, "mobilenet_1.00_224", outer)
    path = tmp_path / "nested.h5"
    keras_files.write_keras2_h5(path, nested, full_model=full_model)
    read = read_keras_h5(path)
    assert read.keys() == weights.keys()
    assert all(np.array_equal(read[k], weights[k]) for k in weights)


def test_keras_full_model_file_with_chunked_layer_names(keras, tmp_path):
    weights, layers, _ = keras
    path = tmp_path / "model.h5"
    keras_files.write_keras2_h5(path, layers, full_model=True, chunks=3)
    read = read_keras_h5(path)
    assert read.keys() == weights.keys()
    assert np.array_equal(read["conv_pw_13/kernel:0"], weights["conv_pw_13/kernel:0"])


def test_keras_dense_layer_found_by_role_not_name(keras):
    weights, _, model = keras
    renamed = {k.replace("dense_1/", "dense/"): v for k, v in weights.items()}
    other = mobilenet.nima_mobilenet_keras(renamed, source="tf.keras names")
    np.testing.assert_array_equal(np.asarray(other.head.kernel[...]), weights["dense_1/kernel:0"])


def test_keras_missing_key_and_missing_dense_named(keras):
    weights, _, _ = keras
    bad = {k: v for k, v in weights.items() if k != "conv_dw_5_bn/moving_variance:0"}
    with pytest.raises(CheckpointMismatchError, match=r"missing key 'conv_dw_5_bn/moving_var"):
        mobilenet.nima_mobilenet_keras(bad, source="bad.h5")
    no_head = {k: v for k, v in weights.items() if not k.startswith("dense_1/")}
    with pytest.raises(CheckpointMismatchError, match=r"bad.h5: expected exactly one dense"):
        mobilenet.nima_mobilenet_keras(no_head, source="bad.h5")


def test_keras_reader_errors_name_the_file(tmp_path):
    import h5py

    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(b"PK\x03\x04 not hdf5 at all")
    with pytest.raises(CheckpointError, match="garbage.h5: not a readable HDF5 file"):
        read_keras_h5(garbage)

    keras3 = tmp_path / "model.weights.h5"
    with h5py.File(keras3, "w") as f:
        f.create_group("layers").create_group("conv1").create_group("vars")
    with pytest.raises(CheckpointError, match="model.weights.h5: no 'layer_names'.*Keras 3"):
        read_keras_h5(keras3)

    missing = tmp_path / "missing.h5"
    with h5py.File(missing, "w") as f:
        f.attrs["layer_names"] = np.asarray([b"conv1"])
        f.create_group("conv1").attrs["weight_names"] = np.asarray([b"conv1/kernel:0"])
    with pytest.raises(CheckpointError, match="'conv1/kernel:0' of layer 'conv1' is listed"):
        read_keras_h5(missing)

    twice = tmp_path / "twice.h5"
    nested_clash = {"conv1/kernel:0": np.ones(2), "other/kernel:0": np.ones(1)}
    layers = {"conv1": {"conv1/kernel:0": np.zeros(2)}, "base": nested_clash}
    keras_files.write_keras2_h5(twice, layers)
    with pytest.raises(CheckpointError, match="two weights map to 'conv1/kernel:0'"):
        read_keras_h5(twice)


def test_keras_reader_uses_the_layer_name_over_a_uniquified_scope(tmp_path):
    """A model built twice in one TF1 graph saves "conv1_1/kernel:0" in layer "conv1"."""
    path = tmp_path / "scoped.h5"
    keras_files.write_keras2_h5(path, {"conv1": {"conv1_1/kernel:0": np.arange(3.0)}})
    assert list(read_keras_h5(path)) == ["conv1/kernel:0"]


# --- IQA-PyTorch NIMA_InceptionV2_ava (Inception-ResNet-v2) --------------------------------------


@pytest.fixture(scope="module")
def irv2_shallow():
    """Every block type with real shapes, one of each repeat (the full net compiles slowly)."""
    repeats = (1, 2, 1)
    weights = ref.random_weights(ref.inception_resnet_v2_shapes(repeats), seed=6, head_scale=0.1)
    model = Nima(
        irv2.InceptionResNetV2(repeats=repeats, rngs=nnx.Rngs(0)),
        features=irv2.FEATURES,
        input_size=irv2.INPUT_SIZE,
        dropout=0.0,
        rngs=nnx.Rngs(1),
    )
    load_entries(
        model,
        weights,
        irv2.inception_resnet_v2_entries(model),
        source="shallow",
        ignore=lambda k: k.endswith("num_batches_tracked"),
    )
    return weights, model


def test_inception_resnet_v2_shallow_matches_numpy_reference(irv2_shallow):
    weights, model = irv2_shallow
    _assert_matches(model, ref.inception_resnet_v2_forward, weights, _images((2, 83, 91, 3)))


def test_inception_resnet_v2_timm_keys():
    assert irv2.timm_key(("backbone", "repeat_1", 7, "branch1", "layers", 2, "conv", "kernel")) == (
        "base_model.repeat_1.7.branch1.2.conv.weight"
    )
    assert irv2.timm_key(("backbone", "mixed_5b", "branch3", "bn", "var")) == (
        "base_model.mixed_5b.branch3.1.bn.running_var"
    )
    assert (
        irv2.timm_key(("backbone", "block8", "conv2d", "bias")) == "base_model.block8.conv2d.bias"
    )
    assert irv2.timm_key(("head", "kernel")) == "classifier.2.weight"


@pytest.fixture(scope="module")
def irv2_full():
    weights = ref.random_weights(ref.inception_resnet_v2_shapes(), seed=6, head_scale=0.02)
    return weights, irv2.nima_inception_resnet_v2(weights, source="NIMA_InceptionV2_ava.pth")


@pytest.mark.slow
def test_inception_resnet_v2_full_keys_and_structure(irv2_full):
    weights, model = irv2_full
    keys = {e.key for e in irv2.inception_resnet_v2_entries(model)}
    assert keys == {k for k in weights if not k.endswith("num_batches_tracked")}
    assert model.input_size == 299 and not model.head_relu
    assert _params(model) == 54_321_834  # timm: 55,843,464 with the 1000-class classifier
    assert _map_shape(model, 299) == (1, 8, 8, 1536)


@pytest.mark.slow
def test_inception_resnet_v2_full_matches_numpy_reference(irv2_full):
    weights, model = irv2_full
    _assert_matches(model, ref.inception_resnet_v2_forward, weights, _images((2, 107, 107, 3)))
    _assert_matches(model, ref.inception_resnet_v2_forward, weights, _images((1, 75, 75, 3), 2))


@pytest.mark.slow
def test_inception_resnet_v2_wrong_shape_named(irv2_full):
    weights, _ = irv2_full
    bad = dict(weights)
    bad["base_model.repeat_1.3.conv2d.weight"] = np.zeros((1088, 384, 1, 2), np.float32)
    with pytest.raises(
        CheckpointMismatchError, match=r"repeat_1\.3\.conv2d\.weight'.*\(1088, 384, 1, 1\)"
    ):
        irv2.nima_inception_resnet_v2(bad, source="bad.pth")


def test_inception_resnet_v2_pools():
    x = _images((2, 3, 5, 4), seed=7)
    want_avg = ref.avg_pool_exclude_pad(x.transpose(0, 3, 1, 2)).transpose(0, 2, 3, 1)
    np.testing.assert_allclose(np.asarray(irv2.avg_pool_3x3_same(x)), want_avg, rtol=1e-6)
    y = _images((1, 7, 8, 2), seed=8)
    want_max = ref.max_pool(y.transpose(0, 3, 1, 2)).transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(np.asarray(irv2.max_pool_3x3_s2(y)), want_max)


# --- the depthwise convolution's CPU formulation ------------------------------------------------


def _grouped_conv(x, k, stride, padding):
    dims = ("NHWC", "HWIO", "NHWC")
    return jax.lax.conv_general_dilated(
        x, k, (stride, stride), padding, dimension_numbers=dims, feature_group_count=k.shape[3]
    )


@pytest.mark.parametrize("stride, padding", [(1, ((1, 1), (1, 1))), (2, ((0, 1), (0, 1)))])
def test_depthwise_conv_equals_grouped_conv_values_and_gradients(stride, padding):
    x = jax.random.normal(jax.random.key(0), (2, 9, 8, 6))
    k = jax.random.normal(jax.random.key(1), (3, 3, 1, 6))

    def loss(conv):  # a ReLU6 and a batch-norm-like scale after, as in the networks
        return lambda x, k: jnp.sum(jax.nn.relu6(conv(x, k, stride, padding) * 1.5 + 0.2) ** 2)

    port, plain = loss(mobilenet.depthwise_conv2d), loss(_grouped_conv)
    conv = jax.jit(mobilenet.depthwise_conv2d, static_argnums=(2, 3))
    np.testing.assert_allclose(
        conv(x, k, stride, padding), _grouped_conv(x, k, stride, padding), rtol=1e-5, atol=1e-5
    )
    want = jax.jit(jax.grad(plain, argnums=(0, 1)))(x, k)
    got = jax.jit(jax.grad(port, argnums=(0, 1)))(x, k)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)
    # Under vmap over images (the guider's), with the kernel shared.
    per_image = jax.jit(jax.vmap(jax.grad(lambda xi: port(xi[None], k))))(x)
    np.testing.assert_allclose(per_image, want[0], rtol=1e-4, atol=1e-4)


def test_depthwise_conv_lowers_for_gpu_and_tpu_with_the_plain_convolution():
    x = jnp.zeros((1, 8, 8, 4))
    k = jnp.zeros((3, 3, 1, 4))

    def f(x, k):
        return jax.grad(lambda x: jnp.sum(mobilenet.depthwise_conv2d(x, k, 2, ((0, 1), (0, 1)))))(x)

    traced = jax.jit(f).trace(x, k)
    for platform in ("tpu", "cuda"):
        text = traced.lower(lowering_platforms=(platform,)).as_text()
        assert "feature_group_count = 4" in text
    assert "feature_group_count = 4" not in traced.lower(lowering_platforms=("cpu",)).as_text()
