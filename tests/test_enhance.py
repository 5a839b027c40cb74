"""The progressive enhancer: scores rise on darkened real photos, batch == single image, one
compile per shape, previews of mixed sizes, learning-rate sweeps and 4-device sharding."""

import importlib

import jax
import numpy as np
import optax
import pytest
import skimage.data
import skimage.transform
from flax import nnx
from jax.sharding import Mesh

from common.nima import Nima
from piea_jax import initial_raw_params, to_physical
from piea_jax.enhance import EnhanceResult, enhance, preview_shape, render
from piea_jax.guiders import nima_guider, photo_critic

# The module, not the function `piea_jax.enhance` that the package exports under the same name.
enhance_module = importlib.import_module("piea_jax.enhance")

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
STEPS = 20


def _small_photo(name: str, shape=(48, 48)) -> np.ndarray:
    # skimage's resize (numpy), so fixtures cost no JAX compilation per photo shape.
    x = getattr(skimage.data, name)()[..., :3].astype(np.float32) / 255.0
    return skimage.transform.resize(x, shape, anti_aliasing=True).astype(np.float32)


@pytest.fixture(scope="module")
def dark():
    """Four real photos squeezed to 48×48, darkened to 35 %."""
    return np.stack([_small_photo(n) * 0.35 for n in PHOTOS])


@pytest.fixture(scope="module")
def result(dark) -> EnhanceResult:
    return enhance(dark, photo_critic, steps=STEPS)  # the paper's SGD, lr 1e-3


def _image(tree, i):
    return jax.tree.map(lambda x: x[i], tree)


# Jitted helpers: eager op-by-op evaluation of the chain costs more than compiling it once.
_render = jax.jit(render)
_critic_of_render = jax.jit(lambda x, physical: photo_critic(render(x, physical)))


@pytest.fixture(scope="module")
def single(dark) -> EnhanceResult:
    """Chelsea alone, same settings as `result`."""
    return enhance(dark[2:3], photo_critic, steps=STEPS)


def test_critic_score_rises_on_every_darkened_photo(result):
    scores = np.asarray(result.scores)
    assert scores.shape == (len(PHOTOS), STEPS + 1)
    assert np.all(scores[:, -1] > scores[:, 0] + 0.1), scores[:, [0, -1]]
    # Exposure went up from the +1 EV start on these under-exposed photos.
    assert np.all(np.asarray(result.params["exposure"]) > 1.0)


def test_result_shapes_and_ranges(result, dark):
    n = len(PHOTOS)
    assert result.images.shape == dark.shape
    assert float(result.images.min()) >= 0.0 and float(result.images.max()) <= 1.0
    assert result.preview_shape == (48, 48)
    assert result.params["tone_curve"].shape == (n, 8)
    assert result.raw_params["white_balance"].shape == (n, 2)
    assert result.params["white_balance"].shape == (n, 3)
    assert result.trajectory.params["color_curve"].shape == (n, STEPS + 1, 3, 8)
    assert result.trajectory.scores.shape == result.trajectory.losses.shape == (n, STEPS + 1)
    np.testing.assert_allclose(
        result.trajectory.losses, (10.0 - result.trajectory.scores) ** 2, rtol=1e-5
    )
    # A registered pytree: tree utilities see the arrays.
    leaves = jax.tree_util.tree_leaves(result)
    assert any(leaf is result.scores for leaf in leaves)


def test_trajectory_starts_at_piea_init_and_ends_at_the_result(result, dark):
    start = to_physical(initial_raw_params())
    for name, value in result.trajectory.params.items():
        np.testing.assert_allclose(value[:, 0], np.broadcast_to(start[name], value[:, 0].shape))
        np.testing.assert_allclose(value[:, -1], result.params[name], rtol=1e-6)
    expected0 = [_critic_of_render(x, start) for x in dark]
    np.testing.assert_allclose(result.scores[:, 0], expected0, rtol=1e-5)


def test_images_are_the_final_parameters_rendered(result, dark):
    for i, x in enumerate(dark):
        np.testing.assert_allclose(
            result.images[i], _render(x, _image(result.params, i)), atol=1e-6
        )


def test_first_step_is_plain_gradient_descent(result, dark):
    # raw_1 = raw_0 − λ ∂L/∂raw, checked on exposure and gamma against central differences.
    raw0 = initial_raw_params()
    loss = jax.jit(lambda raw: (10.0 - photo_critic(render(dark[0], to_physical(raw)))) ** 2)
    eps = 1e-2
    step1 = _image(result.trajectory.params, 0)
    moved = {
        "exposure": np.arctanh(float(step1["exposure"][1]) / 3.5) - float(raw0["exposure"]),
        "gamma": np.arctanh(np.log(float(step1["gamma"][1])) / np.log(3.0)),
    }
    for name, delta in moved.items():
        up = dict(raw0, **{name: raw0[name] + eps})
        down = dict(raw0, **{name: raw0[name] - eps})
        grad = (float(loss(up)) - float(loss(down))) / (2 * eps)
        assert abs(grad) > 1e-2
        np.testing.assert_allclose(delta, -1e-3 * grad, rtol=3e-2)


def test_batch_results_equal_single_image_results(result, single):
    for name, value in single.params.items():
        np.testing.assert_allclose(value[0], result.params[name][2], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(single.scores[0], result.scores[2], rtol=1e-5)
    np.testing.assert_allclose(single.images[0], result.images[2], atol=1e-5)


def test_second_call_with_the_same_shapes_does_not_retrace(result, dark):
    traces = enhance_module._search_traces
    again = enhance(dark * 1.1, photo_critic, steps=STEPS, learning_rate=2e-3)
    assert enhance_module._search_traces == traces
    assert not np.allclose(again.scores, result.scores)  # it did run on the new inputs


def test_different_sizes_share_one_compiled_batch(result):
    images = [
        _small_photo("astronaut", (40, 60)) * 0.35,
        _small_photo("coffee", (60, 40)) * 0.35,
        _small_photo("chelsea", (50, 50)) * 0.35,
        _small_photo("rocket", (48, 64)) * 0.35,
    ]
    traces = enhance_module._search_traces
    out = enhance(images, photo_critic, steps=STEPS, preview_size=48)
    assert enhance_module._search_traces == traces  # square (4, 48, 48) previews, as `result`
    assert out.preview_shape == (48, 48)
    assert [x.shape for x in out.images] == [x.shape for x in images]
    for i, x in enumerate(images):
        np.testing.assert_allclose(out.images[i], _render(x, _image(out.params, i)), atol=1e-6)
    assert np.all(out.scores[:, -1] > out.scores[:, 0])


def test_preview_search_renders_at_full_resolution(single):
    full = _small_photo("chelsea", (96, 96)) * 0.35
    traces = enhance_module._search_traces
    out = enhance(full[None], photo_critic, steps=STEPS, preview_size=48)
    assert enhance_module._search_traces == traces  # the (1, 48, 48) search of `single`
    assert out.preview_shape == (48, 48)
    assert out.images.shape == (1, 96, 96, 3)
    np.testing.assert_allclose(out.images[0], _render(full, _image(out.params, 0)), atol=1e-6)
    # The search saw the preview: its first score is the critic's on the resized image.
    preview = jax.image.resize(full, (48, 48, 3), "linear", antialias=True)
    start = to_physical(initial_raw_params())
    np.testing.assert_allclose(out.scores[0, 0], _critic_of_render(preview, start), rtol=1e-5)


def test_preview_shape_rules():
    assert preview_shape([(333, 500, 3)], 256) == (256, 384)
    assert preview_shape([(500, 333, 3)] * 2, 256) == (384, 256)
    assert preview_shape([(100, 150, 3)], 256) == (100, 150)  # never upscaled
    assert preview_shape([(333, 500, 3), (500, 333, 3)], 128) == (128, 128)
    assert preview_shape([(33, 50, 3)], None) == (33, 50)
    with pytest.raises(ValueError, match="preview_size"):
        preview_shape([(33, 50, 3), (50, 33, 3)], None)


@pytest.mark.slow  # one more compilation (~10 s on a loaded 2-core CPU)
def test_learning_rate_sweep_is_one_call(dark, result):
    rates = np.array([1e-4, 1e-3, 1e-2], np.float32)
    traces = enhance_module._search_traces
    sweep = enhance(dark, photo_critic, steps=STEPS, learning_rate=rates)
    assert enhance_module._search_traces == traces + 1
    assert sweep.images.shape == (3, *dark.shape)
    assert sweep.scores.shape == (3, len(dark), STEPS + 1)
    assert sweep.trajectory.params["tone_curve"].shape == (3, len(dark), STEPS + 1, 8)
    # The 1e-3 slice is the plain 1e-3 run.
    for name, value in result.params.items():
        np.testing.assert_allclose(sweep.params[name][1], value, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(sweep.images[1], result.images, atol=1e-5)
    # A larger rate moves exposure further in the same number of steps.
    moved = np.abs(np.asarray(sweep.params["exposure"]) - 1.0).mean(axis=1)
    assert moved[0] < moved[1] < moved[2]


def test_sharded_over_four_devices_equals_one_device(dark, result):
    assert jax.device_count() >= 4, "conftest.py should give 4 fake CPU devices"
    mesh = Mesh(np.array(jax.devices()[:4]), ("data",))
    # 3 images (padded to 4 inside), and the optimiser given as an optax transformation: the
    # same search as `result`'s named "sgd" at 1e-3.
    sharded = enhance(dark[:3], photo_critic, steps=STEPS, mesh=mesh, optimizer=optax.sgd(1e-3))
    assert sharded.scores.shape == (3, STEPS + 1)
    np.testing.assert_allclose(sharded.scores, result.scores[:3], rtol=1e-5)
    for name, value in result.params.items():
        np.testing.assert_allclose(sharded.params[name], value[:3], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(sharded.images, result.images[:3], atol=1e-5)


def test_optimizer_errors(dark):
    with pytest.raises(ValueError, match="unknown optax optimiser"):
        enhance(dark[:1], photo_critic, steps=1, optimizer="no_such_optimiser")
    with pytest.raises(ValueError, match="sweep"):
        enhance(dark[:1], photo_critic, steps=1, optimizer=optax.sgd(0.1), learning_rate=[0.1])
    with pytest.raises(ValueError, match="inside the optax transformation"):
        enhance(dark[:1], photo_critic, steps=1, optimizer=optax.sgd(0.1), learning_rate=0.5)


class _TinyBackbone(nnx.Module):
    def __init__(self, *, rngs):
        self.conv = nnx.Conv(3, 8, (3, 3), strides=2, rngs=rngs)

    def __call__(self, x):
        return jax.nn.relu(self.conv(x))


def test_nima_guider_drives_the_search_and_reuses_the_compile(dark):
    model = Nima(_TinyBackbone(rngs=nnx.Rngs(0)), features=8, input_size=16, rngs=nnx.Rngs(1))
    out = enhance(dark[:2], nima_guider(model), steps=2, optimizer="adam", learning_rate=0.1)
    assert np.all(np.isfinite(out.scores)) and np.all((out.scores >= 1) & (out.scores <= 10))
    assert not np.allclose(out.params["exposure"], 1.0)  # the gradient reached the filters
    traces = enhance_module._search_traces
    enhance(dark[:2], nima_guider(model), steps=2, optimizer="adam", learning_rate=0.1)
    assert enhance_module._search_traces == traces  # a new wrapper of the same model: cached


@pytest.mark.slow  # compiles an unrolled search
def test_unrolled_search_equals_the_loop(dark):
    loop = enhance(dark[:2], photo_critic, steps=3)
    unrolled = enhance(dark[:2], photo_critic, steps=3, unroll=True)
    for name, value in loop.params.items():
        np.testing.assert_allclose(unrolled.params[name], value, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(unrolled.scores, loop.scores, rtol=1e-5)


def test_search_compiles_with_the_cpu_options(dark):
    # `enhance` runs the search jitted with common.xla_options' options: on CPU, no YNNPACK
    # fusion is left around the guider's convolutions. One jit object per option set.
    devices = jax.devices()[:1]
    search = enhance_module.compiled_search(devices)
    assert search is enhance_module.compiled_search(devices)
    kernel = jax.numpy.ones((3, 3, 3, 64)) / 27

    def conv_guider(image):
        x = jax.lax.conv_general_dilated(image[None], kernel, (1, 1), "SAME",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))  # fmt: skip
        return jax.numpy.mean(x)

    raw0 = jax.tree.map(lambda r: np.broadcast_to(r, (2, *r.shape)), initial_raw_params())
    args = (raw0, dark[:2], np.float32(1e-3), jax.tree_util.Partial(conv_guider))
    static = {"steps": 1, "optimizer": "sgd", "order": enhance_module.FILTER_ORDER}
    hlo = search.lower(*args, **static).compile().as_text()
    assert "convolution(" in hlo
    if jax.default_backend() == "cpu" and enhance_module.xla_options.compiler_options(devices):
        assert "ynn_fusion" not in hlo
