"""The NIMA backbone ports against PyTorch forwards (skipped without torch; CI has none).

The torch models are written here from the formats' public definitions (nima.pytorch v1's
NIMA and MobileNetV2; Keras' MobileNet with its asymmetric stride-2 padding), or are the real
timm `inception_resnet_v2` inside pyiqa's NIMA wrapper when timm is installed. Random weights
(batch-norm statistics included) go through `state_dict()` to the project's loaders; outputs
must agree within 1e-4. When `common.weights.read_checkpoint` and `common.nima.load_nima` are
available, real `torch.save` files are loaded through them too.
"""

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from unittest import mock

import numpy as np
import pytest

from common import inception_resnet_v2 as irv2
from common import mobilenet
from tests import keras_files
from tests import np_reference as ref
from tests.test_nima_backbones import _run

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

pytestmark = pytest.mark.torch

TOL = 1e-4


def _flax(model, images_nhwc):
    return _run(model, images_nhwc)[1]


def _torch(model, images_nhwc):
    with torch.no_grad():
        return model(torch.from_numpy(images_nhwc).permute(0, 3, 1, 2)).numpy()


def _randomise(model, seed, head_scale):
    """He-normal convs (fan-in), batch norms with non-trivial statistics and a dense head of
    std `head_scale`/sqrt(in): activations stay O(1) through the depth (torch's default init
    shrinks them until every image scores alike) and the softmax is neither flat nor
    saturated. Eval mode."""
    generator = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            fan_in = m.weight[0].numel()
            m.weight.data = torch.randn(m.weight.shape, generator=generator) * (2 / fan_in) ** 0.5
            if m.bias is not None:
                m.bias.data = torch.randn(m.bias.shape, generator=generator) * 0.1
        elif isinstance(m, nn.Linear):
            std = head_scale / m.in_features**0.5
            m.weight.data = torch.randn(m.weight.shape, generator=generator) * std
            m.bias.data = torch.randn(m.bias.shape, generator=generator) * 0.1
        elif isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.weight.data = torch.rand(n, generator=generator) + 0.5
            m.bias.data = torch.randn(n, generator=generator) * 0.1
            m.running_mean.data = torch.randn(n, generator=generator) * 0.1
            m.running_var.data = torch.rand(n, generator=generator) + 0.5
    return model.eval()


def _state(model):
    return {k: v.detach().numpy() for k, v in model.state_dict().items()}


def _images(shape, seed=0):
    return ref.sample_images(shape, seed)


def _report(name, got, want):
    # A flat or saturated softmax, or images scored alike, would make the comparison vacuous.
    assert 0.02 < want.max() - want.min() and want.max() < 0.9
    assert np.abs(want[0] - want[-1]).max() > 10 * TOL or len(want) == 1
    err = float(np.abs(got - want).max())
    print(f"\n{name}: max |flax - torch| = {err:.2e} (probabilities)")
    return err


# --- nima.pytorch v1 (written from nima/model.py and nima/mobile_net_v2.py) ---------------------


def _conv_bn_relu(cin, cout, kernel, stride):
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class _InvertedResidual(nn.Module):
    def __init__(self, cin, cout, stride, t):
        super().__init__()
        h = cin * t
        self.use_residual = stride == 1 and cin == cout
        self.conv = nn.Sequential(
            nn.Conv2d(cin, h, 1, 1, 0, bias=False),
            nn.BatchNorm2d(h),
            nn.ReLU6(inplace=True),
            nn.Conv2d(h, h, 3, stride, 1, groups=h, bias=False),
            nn.BatchNorm2d(h),
            nn.ReLU6(inplace=True),
            nn.Conv2d(h, cout, 1, 1, 0, bias=False),
            nn.BatchNorm2d(cout),
        )

    def forward(self, x):
        return x + self.conv(x) if self.use_residual else self.conv(x)


class _MobileNetV2(nn.Module):
    def __init__(self):
        super().__init__()
        layers, cin = [_conv_bn_relu(3, 32, 3, 2)], 32
        for t, c, n, s in mobilenet.MOBILENET_V2_BLOCKS:
            for i in range(n):
                layers.append(_InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        layers += [_conv_bn_relu(cin, 1280, 1, 1), nn.AvgPool2d(7)]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(), nn.Linear(1280, 1000))


class _NimaV1(nn.Module):
    def __init__(self):
        super().__init__()
        self.base_model = nn.Sequential(*list(_MobileNetV2().children())[:-1])
        self.head = nn.Sequential(
            nn.ReLU(inplace=True), nn.Dropout(p=0.75), nn.Linear(1280, 10), nn.Softmax(dim=1)
        )

    def forward(self, x):
        x = self.base_model(x)
        return self.head(x.view(x.size(0), -1))


@pytest.fixture(scope="module")
def torch_v1():
    return _randomise(_NimaV1(), seed=1, head_scale=0.1)


def test_mobilenet_v2_matches_torch(torch_v1):
    model = mobilenet.nima_mobilenet_v2(_state(torch_v1), source="torch state_dict")
    x = _images((2, 224, 224, 3))  # AvgPool2d(7) + view: the format's only size
    want = _torch(torch_v1, x)
    assert _report("mobilenet_v2", _flax(model, x), want) <= TOL


# --- Keras MobileNet v1, written in torch from keras-applications' mobilenet.py ------------------


def _keras_mobilenet_layers():
    """(Keras layer name, in, out, kernel, stride, groups) of every conv, in order."""
    layers, cin = [("conv1", 3, 32, 3, 2, 1)], 32
    for n, (cout, stride) in enumerate(mobilenet.MOBILENET_V1_BLOCKS, 1):
        layers.append((f"conv_dw_{n}", cin, cin, 3, stride, cin))
        layers.append((f"conv_pw_{n}", cin, cout, 1, 1, 1))
        cin = cout
    return layers


class _KerasMobileNetNima(nn.Module):
    """Keras' NIMA MobileNet in torch: each conv is Conv2d (no bias) + BatchNorm2d(eps 1e-3) +
    ReLU6; a 3×3 conv is preceded by ZeroPadding2D(((0, 1), (0, 1))) = F.pad(x, (0, 1, 0, 1))
    at stride 2 and by 'same' padding (1 all round) at stride 1."""

    def __init__(self):
        super().__init__()
        self.layers = _keras_mobilenet_layers()
        self.convs = nn.ModuleList(
            nn.Sequential(nn.Conv2d(cin, cout, k, s, 0, groups=g, bias=False),
                          nn.BatchNorm2d(cout, eps=1e-3))
            for _, cin, cout, k, s, g in self.layers
        )  # fmt: skip
        self.dense = nn.Linear(1024, 10)

    def forward(self, x):
        x = x * 255.0 / 127.5 - 1.0  # keras.applications.mobilenet.preprocess_input
        for (_, _, _, k, stride, _), layer in zip(self.layers, self.convs, strict=True):
            if k == 3:
                x = F.pad(x, (0, 1, 0, 1) if stride == 2 else (1, 1, 1, 1))
            x = torch.clamp(layer(x), 0.0, 6.0)
        return torch.softmax(self.dense(x.mean(dim=(2, 3))), dim=-1)

    def keras_weights(self, dense="dense_1"):
        """The weights as Keras stores them ("layer/weight:0", HWIO kernels)."""
        out = {}
        for (name, _, _, _, _, groups), (conv, bn) in zip(self.layers, self.convs, strict=True):
            w = conv.weight.detach().numpy()
            if groups > 1:  # depthwise (C, 1, 3, 3) -> (3, 3, C, 1)
                out[f"{name}/depthwise_kernel:0"] = w.transpose(2, 3, 0, 1)
            else:
                out[f"{name}/kernel:0"] = w.transpose(2, 3, 1, 0)
            stats = (bn.weight, bn.bias, bn.running_mean, bn.running_var)
            names = ("gamma", "beta", "moving_mean", "moving_variance")
            for key, t in zip(names, stats, strict=True):
                out[f"{name}_bn/{key}:0"] = t.detach().numpy()
        out[f"{dense}/kernel:0"] = self.dense.weight.detach().numpy().T
        out[f"{dense}/bias:0"] = self.dense.bias.detach().numpy()
        return out


@pytest.fixture(scope="module")
def torch_keras():
    return _randomise(_KerasMobileNetNima(), seed=3, head_scale=1.0)


@pytest.mark.parametrize("size", [(224, 224), (97, 75)])
def test_mobilenet_keras_matches_torch_through_h5(torch_keras, tmp_path, size):
    from common.keras_h5 import read_keras_h5

    weights = torch_keras.keras_weights()
    assert set(weights) == set(ref.mobilenet_keras_shapes())
    path = tmp_path / "mobilenet_weights.h5"
    order = list(dict.fromkeys(k.split("/")[0] for k in weights))
    keras_files.write_keras2_h5(path, keras_files.keras_layers(weights, order))
    model = mobilenet.nima_mobilenet_keras(read_keras_h5(path), source=str(path))
    x = _images((2, *size, 3), seed=4)
    want = _torch(torch_keras, x)
    assert _report(f"mobilenet_keras {size}", _flax(model, x), want) <= TOL


# --- timm inception_resnet_v2 inside pyiqa's NIMA ------------------------------------------------


class _StubTorchvision(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Placeholder `torchvision` modules. timm imports torchvision at package import (for its
    data transforms); its model code does not use it. PyPI's torchvision is a CUDA build whose
    ops fail to register beside a CPU-only torch, so on such machines timm is imported with
    this stub in place."""

    def find_spec(self, name, path, target=None):
        if name == "torchvision" or name.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        module = mock.MagicMock(name=spec.name)
        module.__path__, module.__spec__ = [], spec
        return module

    def exec_module(self, module):
        pass


@pytest.fixture(scope="module")
def timm():
    if importlib.util.find_spec("timm") is None:
        pytest.skip("timm is not installed")
    try:
        import torchvision  # noqa: F401
    except Exception:  # missing, or a CUDA build beside a CPU torch  # noqa: BLE001
        for name in [m for m in sys.modules if m.split(".")[0] == "torchvision"]:
            del sys.modules[name]
        sys.meta_path.insert(0, _StubTorchvision())
    return importlib.import_module("timm")


def _pyiqa_nima(timm):
    """pyiqa/archs/nima_arch.py's NIMA structure (without its resize/crop preprocessing)."""

    class Nima(nn.Module):
        def __init__(self):
            super().__init__()
            self.base_model = timm.create_model(
                "inception_resnet_v2", pretrained=False, features_only=True
            )
            self.global_pool = nn.AdaptiveAvgPool2d(1)
            self.classifier = nn.Sequential(
                nn.Flatten(), nn.Dropout(p=0.0), nn.Linear(1536, 10), nn.Softmax(dim=-1)
            )

        def forward(self, x):
            x = (x - 0.5) / 0.5  # pretrained_cfg mean/std of inception_resnet_v2
            return self.classifier(self.global_pool(self.base_model(x)[-1]))

    return Nima()


@pytest.mark.slow
def test_inception_resnet_v2_matches_real_timm(timm):
    model = _randomise(_pyiqa_nima(timm), seed=6, head_scale=0.05)
    state = _state(model)
    assert set(state) == set(ref.inception_resnet_v2_shapes())  # the reference's key list
    port = irv2.nima_inception_resnet_v2(state, source="timm state_dict")
    x = _images((2, 107, 107, 3), seed=7)
    want = _torch(model, x)
    assert _report("inception_resnet_v2 (timm)", _flax(port, x), want) <= TOL


# --- real torch.save files through the public loaders (once they exist) -------------------------


def _public_loaders():
    nima = importlib.import_module("common.nima")
    if not hasattr(nima, "load_nima"):
        pytest.skip("common.nima.load_nima is not available on this branch")
    return nima


def test_real_torch_save_of_nima_pytorch_v1_through_load_nima(torch_v1, tmp_path):
    nima = _public_loaders()
    path = tmp_path / "pretrain-model.pth"
    torch.save(torch_v1.state_dict(), path)
    try:
        model = nima.load_nima(str(path), backbone="mobilenet_v2")
    except NotImplementedError as err:
        pytest.skip(f"checkpoint reader not implemented here: {err}")
    x = _images((1, 224, 224, 3), seed=8)
    assert _report("mobilenet_v2 via torch.save", _flax(model, x), _torch(torch_v1, x)) <= TOL
