"""BN-Inception (common.bn_inception) against the independent numpy reference of
pretrainedmodels' `BNInception` (tests/np_reference.py), on checkpoints in its exact key layout
written as real torch zip files (tests/torch_format.py): the map within 1e-4 of its scale, the
probabilities within 1e-4; strict loading; batch norm in training and evaluation mode."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import save_file

from common import bn_inception as bni
from common import weights
from common.nima import load_nima
from common.weights import CheckpointMismatchError
from tests import np_reference as ref
from tests import torch_format

TOL = 1e-4
BACKBONE_PARAMS = 10_270_240  # pretrainedmodels: 11,295,240 with last_linear (1024 -> 1000)


@nnx.jit
def _forward(model, x):
    """`model(x)`, compiled once per model structure, mode and input shape (shared by tests)."""
    return model(x)


@nnx.jit
def _forward_with_map(nima, x):
    return nima.backbone(x), nima(x)


def _jit_apply(module):
    """An evaluation-mode copy of `module` as a jitted function of images."""
    copy = nnx.merge(*nnx.split(module))
    copy.eval()
    return lambda x: _forward(copy, x)


def _assert_close(got, want, what):
    scale = np.abs(want).max()
    err = np.abs(np.asarray(got) - want).max()
    assert got.shape == want.shape, what
    assert err <= TOL * scale, f"{what}: max error {err:.3g}, scale {scale:.3g}"


def _images(n=2, size=64, seed=0):
    return ref.sample_images((n, size, size, 3), seed)


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory):
    """Random weights with pretrainedmodels' keys (ImageNet classifier included), saved as
    torch.save (zip) saves a state dict."""
    state = ref.random_weights(ref.bn_inception_shapes(), seed=11)
    path = tmp_path_factory.mktemp("bni") / "bn_inception-52deb4733.pth"
    torch_format.save_zip(state, path, archive="bn_inception-52deb4733")
    return state, path


def test_entry_keys_are_the_definitions_state_dict():
    shapes = ref.bn_inception_shapes()
    keys = {e.key for e in bni.bn_inception_entries()}
    unused = {k for k in shapes if k.startswith("last_linear.") or "num_batches" in k}
    assert keys == set(shapes) - unused
    assert len(bni.layer_names()) == 69 and len(keys) == 69 * 6


def test_imagenet_file_fills_every_variable(imagenet):
    state, path = imagenet
    model = bni.load_bn_inception(path)
    assert model.conv1_7x7_s2.bn.use_running_average  # loaded in evaluation mode
    flat = dict(nnx.to_flat_state(nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat))))
    assert len(flat) == len(bni.bn_inception_entries())
    for entry in bni.bn_inception_entries():
        want = entry.layout.to_model(state[entry.key])
        np.testing.assert_array_equal(np.asarray(flat[entry.path][...]), want, err_msg=entry.key)


def test_structure_and_sizes():
    model = nnx.eval_shape(lambda: bni.BNInception(rngs=nnx.Rngs(0)))
    params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert params == BACKBONE_PARAMS and model.features == bni.FEATURES == 1024
    model.eval()  # the running statistics: nothing to update in an abstract evaluation
    graphdef, state = nnx.split(model)

    def map_shape(size):
        x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
        return jax.eval_shape(lambda s, x: nnx.merge(graphdef, s)(x), state, x).shape

    for size, side in [(224, 7), (64, 2), (32, 1), (96, 3)]:
        assert map_shape(size) == (1, side, side, 1024)
    with pytest.raises(ValueError, match="inception_4e gets a 3×3 map"):
        map_shape(48)
    with pytest.raises(ValueError, match="too small to pool"):
        map_shape(16)


@pytest.fixture(scope="module")
def narrow():
    """A width-0.25 network (random init), shared: tests use copies (`nnx.merge(*nnx.split())`)."""
    return bni.BNInception(width=0.25, rngs=nnx.Rngs(1))


def test_narrow_width_matches_numpy_reference(narrow):
    width = 0.25
    state = ref.random_weights(ref.bn_inception_shapes(width), seed=12)
    model = nnx.merge(*nnx.split(narrow))
    assert model.features == ref.bn_inception_shapes(width)["last_linear.weight"][1] == 256
    weights.load_entries(
        model,
        state,
        bni.bn_inception_entries(),
        source="narrow",
        ignore=lambda k: k.startswith("last_linear") or "num_batches" in k,
    )
    x = _images(3, 32, seed=1)
    want, _ = ref.bn_inception_forward(state, x)
    _assert_close(_jit_apply(model)(x), want.transpose(0, 2, 3, 1), "width 0.25")


def test_nima_state_dict_matches_numpy_reference_through_load_nima(imagenet, tmp_path):
    backbone, _ = imagenet
    rng = np.random.default_rng(13)
    state = {k: v for k, v in backbone.items() if not k.startswith("last_linear.")}
    state["last_linear.weight"] = (rng.standard_normal((10, 1024)) * 2e-4).astype(np.float32)
    state["last_linear.bias"] = (rng.standard_normal(10) * 0.1).astype(np.float32)
    path = tmp_path / "nima_bninception.pth"
    torch_format.save_zip({"state_dict": state, "epoch": 7}, path, archive="nima_bninception")
    model = load_nima(path, backbone="bn_inception")
    assert model.input_size == 224 and model.pool == "avg" and model.dropout.deterministic
    x = _images(2, 64, seed=2)
    want_map, want = ref.bn_inception_forward(state, x)
    assert 0.02 < want.max() - want.min() and want.max() < 0.9  # neither flat nor saturated
    assert np.abs(want[0] - want[1]).max() > 10 * TOL
    got_map, got = _forward_with_map(model, x)
    _assert_close(got_map, want_map.transpose(0, 2, 3, 1), "inception_5b_output")
    assert np.abs(np.asarray(got) - want).max() <= TOL

    bad = dict(state, **{"last_linear.weight": backbone["last_linear.weight"]})
    with pytest.raises(CheckpointMismatchError, match=r"'last_linear.weight'.*\(1000, 1024\)"):
        bni.nima_bn_inception(bad, source="imagenet, not nima")


def test_yjxiong_layout_reads_as_pretrainedmodels(imagenet, tmp_path):
    """yjxiong's original file: (1, C) batch-norm vectors, the classifier named "fc", no
    num_batches_tracked; here as .safetensors."""
    state, path = imagenet
    original = {}
    for key, value in state.items():
        if "num_batches" in key:
            continue
        if key.startswith("last_linear."):
            key = key.replace("last_linear.", "fc.")
        elif "_bn." in key:
            value = value[None]
        original[key] = value
    file = tmp_path / "bn_inception-9f5701afb96c8044.safetensors"
    save_file(original, file)
    a, b = bni.load_bn_inception(file), bni.load_bn_inception(path)
    for (pa, va), (pb, vb) in zip(
        nnx.to_flat_state(nnx.state(a)), nnx.to_flat_state(nnx.state(b)), strict=True
    ):
        assert pa == pb
        np.testing.assert_array_equal(np.asarray(va[...]), np.asarray(vb[...]))


def test_strict_loading_names_keys_and_shapes(imagenet, tmp_path):
    state, _ = imagenet
    bad = {k: v for k, v in state.items() if k != "inception_4c_double_3x3_1_bn.running_var"}
    bad["inception_3a_3x3.weight"] = np.zeros((64, 64, 1, 1), np.float32)
    bad["inception_6a_1x1.weight"] = np.zeros((3,), np.float32)
    file = tmp_path / "bad.safetensors"
    save_file(bad, file)
    with pytest.raises(CheckpointMismatchError) as err:
        bni.load_bn_inception(file)
    message = str(err.value)
    assert "bad.safetensors" in message and "3 problem(s)" in message
    assert "missing key 'inception_4c_double_3x3_1_bn.running_var' (expected shape (160,))" in (
        message
    )
    assert "'inception_3a_3x3.weight': checkpoint (64, 64, 1, 1), expected (64, 64, 3, 3)" in (
        message
    )
    assert "unexpected key 'inception_6a_1x1.weight'" in message


def test_converted_imagenet_directory(imagenet, tmp_path):
    state, path = imagenet
    out = tmp_path / "converted"
    assert weights.main(["convert", str(path), "--format", "bn_inception_imagenet",
                         "--out", str(out)]) == 0  # fmt: skip
    a, b = bni.load_bn_inception(out), bni.load_bn_inception(path)
    np.testing.assert_array_equal(
        np.asarray(a.inception_5b_pool_proj.conv.kernel[...]),
        np.asarray(b.inception_5b_pool_proj.conv.kernel[...]),
    )
    assert weights.source_sha256(out) == weights.file_sha256(path)


def test_pools_follow_torch():
    x = ref.sample_images((2, 9, 8, 3), seed=4) - 0.5  # negative values: padding must not win
    nchw = x.transpose(0, 3, 1, 2).astype(np.float64)
    cases = [
        (bni.max_pool_3x3_s2_ceil, (3, 2, 0, True, "max")),
        (bni.max_pool_3x3_same, (3, 1, 1, True, "max")),
        (bni.avg_pool_3x3_same, (3, 1, 1, True, "avg")),
    ]
    for pool, args in cases:
        want = ref.torch_pool(nchw, *args).transpose(0, 2, 3, 1)
        np.testing.assert_allclose(np.asarray(pool(x)), want, rtol=1e-6, atol=1e-6)
    assert [bni.ceil_mode_size(n) for n in (2, 3, 4, 5, 7, 8, 112)] == [1, 1, 2, 2, 3, 4, 56]


# --- batch norm: training and evaluation mode ---------------------------------------------------


def _bn_stats(model):
    bn = model.conv1_7x7_s2.bn
    return np.asarray(bn.mean[...]).copy(), np.asarray(bn.var[...]).copy()


def test_eval_mode_is_independent_of_the_batch_and_train_mode_updates_statistics(narrow):
    model = nnx.merge(*nnx.split(narrow))
    images = _images(5, 32, seed=5)
    a, b = images[:3], images[[0, 3, 4]]  # the same first image among different others
    assert not model.conv1_7x7_s2.bn.use_running_average  # a new model trains
    forward = _forward
    mean0, var0 = _bn_stats(model)

    model.eval()
    out_a, out_b = np.asarray(forward(model, a)), np.asarray(forward(model, b))
    np.testing.assert_allclose(out_a[0], out_b[0], rtol=1e-5, atol=1e-5 * np.abs(out_a).max())
    np.testing.assert_array_equal(_bn_stats(model)[0], mean0)  # evaluation updates nothing

    model.train()
    out_a, out_b = np.asarray(forward(model, a)), np.asarray(forward(model, b))
    assert np.abs(out_a[0] - out_b[0]).max() > 1e-3 * np.abs(out_a).max()  # batch statistics

    # Running statistics: conv1's pre-norm output over (N, H, W), averaged in with momentum 0.9
    # (flax's convention) once per training call, the variance biased.
    def conv1(x):
        bgr = x[..., ::-1].astype(np.float64) * 255 - np.array(bni.BGR_MEAN)
        w = np.asarray(model.conv1_7x7_s2.conv.kernel[...]).transpose(3, 2, 0, 1)
        bias = np.asarray(model.conv1_7x7_s2.conv.bias[...])
        return ref.conv2d(bgr.transpose(0, 3, 1, 2), w.astype(np.float64), bias, 2, ((3, 3),) * 2)

    mean, var = mean0, var0
    for x in (a, b):
        y = conv1(x)
        mean = 0.9 * mean + 0.1 * y.mean(axis=(0, 2, 3))
        var = 0.9 * var + 0.1 * y.var(axis=(0, 2, 3))
    got_mean, got_var = _bn_stats(model)
    np.testing.assert_allclose(got_mean, mean, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(got_var, var, rtol=1e-4)
