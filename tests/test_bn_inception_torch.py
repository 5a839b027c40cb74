"""BN-Inception port against a PyTorch BNInception (skipped without torch; CI has none).

The torch model is written here from pretrainedmodels/models/bninception.py's definition (the
same attribute names, Conv2d with bias, BatchNorm2d(eps 1e-5), in-place ReLUs, ceil-mode max
pools, count_include_pad average pools, 5b's max pool), with random weights and batch-norm
statistics; its `state_dict()` goes through a real `torch.save` to the project's loaders.
"""

import numpy as np
import pytest
from flax import nnx

from common import bn_inception as bni
from common.nima import load_nima
from tests import np_reference as ref

torch = pytest.importorskip("torch")
nn = torch.nn

pytestmark = pytest.mark.torch

# (1x1, 3x3 reduce, 3x3, double reduce, double 1, double 2, pool, pool_proj) per block, as
# BNInception.__init__ builds them.
_BLOCKS = {
    "3a": (64, 64, 64, 64, 96, 96, "avg", 32),
    "3b": (64, 64, 96, 64, 96, 96, "avg", 64),
    "3c": (None, 128, 160, 64, 96, 96, "max_s2", None),
    "4a": (224, 64, 96, 96, 128, 128, "avg", 128),
    "4b": (192, 96, 128, 96, 128, 128, "avg", 128),
    "4c": (160, 128, 160, 128, 160, 160, "avg", 128),
    "4d": (96, 128, 192, 160, 192, 192, "avg", 128),
    "4e": (None, 128, 192, 192, 256, 256, "max_s2", None),
    "5a": (352, 192, 320, 160, 224, 224, "avg", 128),
    "5b": (352, 192, 320, 192, 224, 224, "max", 128),
}


class TorchBNInception(nn.Module):
    def __init__(self, classes=1000, momentum=0.9):
        super().__init__()
        self.momentum = momentum  # torch's convention; the port's flax 0.9 is torch's 0.1
        self._unit("conv1_7x7_s2", 3, 64, 7, 2, 3)
        self._unit("conv2_3x3_reduce", 64, 64, 1, 1, 0)
        self._unit("conv2_3x3", 64, 192, 3, 1, 1)
        cin = 192
        for name, (c1, r3, c3, rd, d1, d2, pool, proj) in _BLOCKS.items():
            p, s = f"inception_{name}", 2 if pool == "max_s2" else 1
            if c1:
                self._unit(f"{p}_1x1", cin, c1, 1, 1, 0)
            self._unit(f"{p}_3x3_reduce", cin, r3, 1, 1, 0)
            self._unit(f"{p}_3x3", r3, c3, 3, s, 1)
            self._unit(f"{p}_double_3x3_reduce", cin, rd, 1, 1, 0)
            self._unit(f"{p}_double_3x3_1", rd, d1, 3, 1, 1)
            self._unit(f"{p}_double_3x3_2", d1, d2, 3, s, 1)
            if pool == "avg":
                setattr(self, f"{p}_pool", nn.AvgPool2d(3, 1, 1, ceil_mode=True))
            elif pool == "max":
                setattr(self, f"{p}_pool", nn.MaxPool2d(3, 1, 1, ceil_mode=True))
            else:
                setattr(self, f"{p}_pool", nn.MaxPool2d(3, 2, ceil_mode=True))
            if proj:
                self._unit(f"{p}_pool_proj", cin, proj, 1, 1, 0)
            cin = (c1 or 0) + c3 + d2 + (proj or cin)
        self.pool = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.last_linear = nn.Linear(1024, classes)

    def _unit(self, name, cin, cout, k, s, p):
        setattr(self, name, nn.Conv2d(cin, cout, k, s, p))
        setattr(self, f"{name}_bn", nn.BatchNorm2d(cout, eps=1e-5, momentum=self.momentum))

    def run(self, name, x):
        return torch.relu(getattr(self, f"{name}_bn")(getattr(self, name)(x)))

    def features(self, rgb01_nchw):
        mean = torch.tensor([104.0, 117.0, 128.0]).view(1, 3, 1, 1)
        x = rgb01_nchw.flip(1) * 255 - mean  # RGB [0, 1] -> BGR [0, 255] - mean
        x = self.pool(self.run("conv1_7x7_s2", x))
        x = self.pool(self.run("conv2_3x3", self.run("conv2_3x3_reduce", x)))
        for name, (c1, *_, proj) in _BLOCKS.items():
            p = f"inception_{name}"
            outs = [self.run(f"{p}_1x1", x)] if c1 else []
            outs.append(self.run(f"{p}_3x3", self.run(f"{p}_3x3_reduce", x)))
            y = self.run(f"{p}_double_3x3_1", self.run(f"{p}_double_3x3_reduce", x))
            outs.append(self.run(f"{p}_double_3x3_2", y))
            pooled = getattr(self, f"{p}_pool")(x)
            outs.append(self.run(f"{p}_pool_proj", pooled) if proj else pooled)
            x = torch.cat(outs, 1)
        return x

    def forward(self, x):
        # At 224 pretrainedmodels' AvgPool2d(7) over the 7×7 map is this mean.
        return torch.softmax(self.last_linear(self.features(x).mean((2, 3))), -1)


def _randomise(model, seed, head_std):
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            m.weight.data = (
                torch.randn(m.weight.shape, generator=g) * (2 / m.weight[0].numel()) ** 0.5
            )
            m.bias.data = torch.randn(m.bias.shape, generator=g) * 0.1
        elif isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.weight.data = torch.rand(n, generator=g) + 0.5
            m.bias.data = torch.randn(n, generator=g) * 0.1
            m.running_mean.data = torch.randn(n, generator=g) * 0.1
            m.running_var.data = torch.rand(n, generator=g) + 0.5
        elif isinstance(m, nn.Linear):
            m.weight.data = torch.randn(m.weight.shape, generator=g) * head_std
            m.bias.data = torch.randn(m.bias.shape, generator=g) * 0.1
    return model.eval()


@nnx.jit
def _forward(model, x):
    return model(x)


def _rel_err(got, want):
    return float(np.abs(np.asarray(got) - want).max() / np.abs(want).max())


def test_imagenet_backbone_and_nima_match_torch(tmp_path):
    model = _randomise(TorchBNInception(), seed=1, head_std=1e-3)
    x = ref.sample_images((2, 64, 64, 3), seed=1)
    xt = torch.from_numpy(x).permute(0, 3, 1, 2)
    path = tmp_path / "bn_inception-52deb4733.pth"
    torch.save(model.state_dict(), path)
    port = bni.load_bn_inception(path)
    with torch.no_grad():
        want = model.features(xt).permute(0, 2, 3, 1).numpy()
    err = _rel_err(_forward(port, x), want)
    print(f"\nbn_inception map: max |flax - torch| / scale = {err:.2e}")
    assert err <= 1e-5

    model.last_linear = nn.Linear(1024, 10)
    _randomise(model, seed=2, head_std=2e-4)
    path = tmp_path / "nima_bn_inception.pth"
    torch.save(model.state_dict(), path)
    with torch.no_grad():
        want = model(xt).numpy()
    assert 0.02 < want.max() - want.min() < 0.9 and np.abs(want[0] - want[1]).max() > 1e-3
    nima = load_nima(path, backbone="bn_inception")
    err = float(np.abs(np.asarray(_forward(nima, x)) - want).max())
    print(f"bn_inception NIMA: max |flax - torch| = {err:.2e} (probabilities)")
    assert err <= 1e-5


def test_training_mode_matches_torch():
    """Batch statistics in the forward pass and the running mean's update (torch momentum 0.1
    = flax 0.9). The running variance is not compared: torch averages in the unbiased batch
    variance, flax the biased one."""
    model = _randomise(TorchBNInception(momentum=0.1), seed=3, head_std=1e-3)
    port = bni.BNInception(rngs=nnx.Rngs(0))
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    from common import weights  # noqa: PLC0415

    weights.load_entries(
        port,
        state,
        bni.bn_inception_entries(),
        source="torch",
        ignore=lambda k: k.startswith("last_linear") or k.endswith("num_batches_tracked"),
    )
    port.train()
    model.train()
    x = ref.sample_images((3, 64, 64, 3), seed=4)
    with torch.no_grad():
        want = model.features(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    err = _rel_err(_forward(port, x), want.numpy())
    print(f"\nbn_inception training mode: max |flax - torch| / scale = {err:.2e}")
    # The last blocks normalise each channel over 3 images × 2 × 2 = 12 values, which
    # amplifies float32 rounding (measured 1.1e-4); a wrong formula (e.g. the unbiased variance
    # in the normalisation) would be off by ~n/(n - 1) = 9 %.
    assert err <= 1e-3
    for name in ("conv1_7x7_s2", "inception_4c_double_3x3_1", "inception_5b_pool_proj"):
        np.testing.assert_allclose(
            np.asarray(getattr(port, name).bn.mean[...]),
            getattr(model, f"{name}_bn").running_mean.numpy(),
            rtol=1e-4,
            atol=1e-4 * float(getattr(model, f"{name}_bn").running_mean.abs().max()),
        )
