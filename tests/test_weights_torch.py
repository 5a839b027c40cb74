"""Against real PyTorch (skipped without torch, as on CI): `torch.save` files read without torch,
the test writer compared with `torch.save`, and the VGG / NIMA ports compared with torch forwards
of the public model definitions (written out here: torchvision does not import beside this
torch). The VGG-19 and Neural-IMage-Assessment files are loaded in a subprocess where
`import torch` fails."""

import json
import os
import pickle
import pickletools
import subprocess
import sys
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

from common import weights
from common.nima import load_nima
from tests import torch_format
from tests.torch_format import Storage, View
from tests.vgg_reference import CFGS, IMAGENET_MEAN, IMAGENET_STD, assert_close_to_scale

torch = pytest.importorskip("torch")
nn = torch.nn
pytestmark = pytest.mark.torch

ROOT = Path(__file__).resolve().parents[1]


def _flatten_torch(obj, prefix=""):
    if isinstance(obj, torch.Tensor):
        return {prefix: obj.detach()}
    out = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(_flatten_torch(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            out.update(_flatten_torch(v, f"{prefix}.{i}" if prefix else str(i)))
    return out


def _as_numpy(t):
    return t.float().numpy() if t.dtype == torch.bfloat16 else t.numpy()


@pytest.mark.parametrize("zip_layout", [True, False], ids=["zip", "legacy"])
def test_read_checkpoint_equals_torch_load(tmp_path, zip_layout):
    torch.manual_seed(0)
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    block = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    obj = {
        "state_dict": block.state_dict(),  # an OrderedDict with _metadata, BN's int64 counter
        "views": [base, base.t(), base[1:3, 2:5], base[:, 1]],
        "dtypes": {
            "half": torch.randn(5).half(),
            "bf16": torch.randn(2, 3).bfloat16(),
            "double": torch.randn(3).double(),
            "bool": torch.tensor([True, False]),
            "empty": torch.zeros(2, 0),
        },
        "parameter": nn.Parameter(torch.randn(2, 2)),
        "epoch": 7,
    }
    path = tmp_path / "mixed.pth"
    torch.save(obj, path, _use_new_zipfile_serialization=zip_layout)
    want = _flatten_torch(torch.load(path, weights_only=True))
    got = weights.read_checkpoint(path)
    assert list(got) == list(want)
    for key, tensor in want.items():
        assert got[key].shape == tuple(tensor.shape), key
        if tensor.dtype == torch.bfloat16:
            assert str(got[key].dtype) == "bfloat16"
        np.testing.assert_array_equal(got[key].astype(_as_numpy(tensor).dtype), _as_numpy(tensor))


def _state_pair():
    """The same state dict as torch tensors and as the writer's numpy arrays/views."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 6)).astype(np.float32)
    arrays = OrderedDict(
        [
            ("conv.weight", rng.standard_normal((2, 3, 3, 3)).astype(np.float32)),
            ("conv.bias", np.ones(2, np.float16)),
            ("bn.num_batches_tracked", np.array(3, np.int64)),
            ("empty", np.zeros((2, 0), np.float32)),
        ]
    )
    shared = Storage(w.reshape(-1))
    numpy_side = OrderedDict(arrays)
    numpy_side["w"] = View(shared, 0, (4, 6), (6, 1))
    numpy_side["w_t"] = View(shared, 0, (6, 4), (1, 6))
    numpy_side["w_window"] = View(shared, 8, (2, 3), (6, 1))
    torch_side = OrderedDict((k, torch.from_numpy(v.copy())) for k, v in arrays.items())
    torch_side["empty"] = torch.zeros(2, 0)
    base = torch.from_numpy(w.copy())
    torch_side.update(w=base, w_t=base.t(), w_window=base[1:3, 2:5])
    return torch_side, numpy_side


def _zip_layout(path):
    with zipfile.ZipFile(path) as z:
        return [
            (i.filename, i.header_offset, i.file_size, i.flag_bits, len(i.extra), i.CRC)
            for i in z.infolist()
            if not i.filename.endswith("serialization_id")  # random per save
        ]


def test_writer_zip_matches_torch_save(tmp_path):
    torch_side, numpy_side = _state_pair()
    real, ours = tmp_path / "real.pth", tmp_path / "ours.pth"
    torch.save(torch_side, real)
    torch_format.save_zip(numpy_side, ours, archive="real")
    assert _zip_layout(ours) == _zip_layout(real)
    with zipfile.ZipFile(real) as a, zipfile.ZipFile(ours) as b:
        for name in a.namelist():
            if not name.endswith("serialization_id"):
                assert a.read(name) == b.read(name), name  # data.pkl byte for byte
    raw_real, raw_ours = real.read_bytes(), ours.read_bytes()
    assert len(raw_real) == len(raw_ours)
    # Local headers, padding and alignment of every record's data, byte for byte.
    with zipfile.ZipFile(real) as z:
        for info in z.infolist()[:-1]:
            start = info.header_offset
            end = start + 30 + len(info.filename) + len(info.extra) + info.file_size
            assert raw_real[start:end] == raw_ours[start:end], info.filename


def _pickles(data: bytes, count: int) -> list[bytes]:
    """The first `count` consecutive pickles of `data`, and what follows them."""
    parts, start = [], 0
    for _ in range(count):
        *_, (_, _, last) = pickletools.genops(data[start:])
        parts.append(data[start : start + last + 1])  # up to and including STOP
        start += last + 1
    return [*parts, data[start:]]


def test_writer_legacy_matches_torch_save(tmp_path):
    torch_side, numpy_side = _state_pair()
    real, ours = tmp_path / "real.pth", tmp_path / "ours.pth"
    torch.save(torch_side, real, _use_new_zipfile_serialization=False)
    torch_format.save_legacy(numpy_side, ours)
    *real_parts, real_data = _pickles(real.read_bytes(), 5)
    *our_parts, our_data = _pickles(ours.read_bytes(), 5)
    assert our_parts[:3] == real_parts[:3]  # magic number, protocol version, sys info
    # The object pickle: the same opcodes and arguments once storage keys (torch's C
    # pointers) are replaced by their order of first use.
    real_keys, our_keys = pickle.loads(real_parts[4]), pickle.loads(our_parts[4])

    def ops(data, keys):
        named = {}
        for op, arg, _ in pickletools.genops(data):
            if arg in keys:
                arg = named.setdefault(arg, f"key{len(named)}")
            yield op.name, arg

    assert list(ops(our_parts[3], our_keys)) == list(ops(real_parts[3], real_keys))
    assert len(our_data) == len(real_data)  # int64 counts and raw storages
    got, want = weights.read_checkpoint(ours), weights.read_checkpoint(real)
    assert list(got) == list(want)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key])


# --- Ports against torch forwards -------------------------------------------------------------


def _torch_vgg_features(variant: str) -> nn.Sequential:
    layers, channels = [], 3
    for item in CFGS[variant]:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(channels, item, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            channels = item
    return nn.Sequential(*layers)


def _he_init(module: nn.Module) -> None:
    # Fan-in He init and non-zero biases: activations keep their size through the stack and a
    # misplaced bias shows (torchvision's fan-out init shrinks them layer by layer).
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            nn.init.normal_(m.bias, 0, 0.1)


class TorchvisionVGG(nn.Module):
    """torchvision.models.vgg.VGG (features, avgpool, classifier) with real shapes."""

    def __init__(self, variant):
        super().__init__()
        self.features = _torch_vgg_features(variant)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096), nn.ReLU(True), nn.Dropout(),
            nn.Linear(4096, 4096), nn.ReLU(True), nn.Dropout(), nn.Linear(4096, 1000),
        )  # fmt: skip
        _he_init(self)


class NeuralImageAssessment(nn.Module):
    """model/model.py of Neural-IMage-Assessment (VGG16 features, Dropout, Linear, Softmax)."""

    def __init__(self):
        super().__init__()
        self.features = TorchvisionVGG("vgg16").features
        self.classifier = nn.Sequential(nn.Dropout(p=0.75), nn.Linear(25088, 10), nn.Softmax(1))

    def forward(self, x):
        out = self.features(x)
        return self.classifier(out.view(out.size(0), -1))


def _torch_taps(features: nn.Sequential, x_nchw, variant: str) -> dict[str, np.ndarray]:
    names, block, conv = [], 1, 1
    for item in CFGS[variant]:
        if item == "M":
            names += [f"pool{block}"]
            block, conv = block + 1, 1
        else:
            names += [None, f"relu{block}_{conv}"]
            conv += 1
    taps = {}
    with torch.no_grad():
        for layer, name in zip(features, names, strict=True):
            x_nchw = layer(x_nchw)
            if name:
                taps[name] = x_nchw.permute(0, 2, 3, 1).numpy().copy()
    return taps


_NO_TORCH = r"""
import json, sys
import numpy as np

class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError(f"{name} is blocked in this process")
        return None

sys.meta_path.insert(0, _NoTorch())
try:
    import torch  # noqa: F401
    raise SystemExit("torch was importable")
except ImportError:
    pass
from common.nima import load_nima
from common.vgg import load_vgg19

for job in json.loads(sys.argv[1]):
    x = np.load(job["input"])
    if job["kind"] == "vgg19":
        out = load_vgg19(job["path"], taps=tuple(job["taps"]))(x)
    else:
        out = {"probs": load_nima(job["path"], backbone=job["kind"])(x)}
    np.savez(job["output"], **{k: np.asarray(v) for k, v in out.items()})
assert not [m for m in sys.modules if m == "torch" or m.startswith("torch.")]
print("torch-free")
"""


def _run_without_torch(jobs):
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, "-c", _NO_TORCH, json.dumps(jobs)],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert proc.returncode == 0 and "torch-free" in proc.stdout, proc.stderr[-3000:]


@pytest.mark.slow
def test_real_torch_saves_load_without_torch_and_match_torch(tmp_path, capsys):
    """Done-when of issue 9: a real torch.save of a torchvision-layout VGG-19 (zip and legacy
    layouts) and of a Neural-IMage-Assessment NIMA load where `import torch` fails, and match
    torch's forward within 1e-4 of the output scale."""
    torch.manual_seed(0)
    vgg19 = TorchvisionVGG("vgg19").eval()
    nia = NeuralImageAssessment().eval()
    nia.features = nn.DataParallel(nia.features)  # multi-GPU training: "features.module.N"
    files = {"vgg19_zip": tmp_path / "vgg19-dcbb9e9d.pth", "nia": tmp_path / "epoch-34.pth"}
    files["vgg19_legacy"] = tmp_path / "vgg19-legacy.pth"
    torch.save(vgg19.state_dict(), files["vgg19_zip"])
    torch.save(vgg19.state_dict(), files["vgg19_legacy"], _use_new_zipfile_serialization=False)
    torch.save(nia.state_dict(), files["nia"])
    rng = np.random.default_rng(0)
    x_vgg = rng.uniform(0, 1, (2, 48, 40, 3)).astype(np.float32)
    x_nia = rng.uniform(0, 1, (2, 224, 224, 3)).astype(np.float32)
    np.save(tmp_path / "x_vgg.npy", x_vgg)
    np.save(tmp_path / "x_nia.npy", x_nia)
    taps = ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1", "relu5_4", "pool5"]
    jobs = [
        {"kind": "vgg19", "path": str(files[name]), "taps": taps,
         "input": str(tmp_path / "x_vgg.npy"), "output": str(tmp_path / f"{name}.npz")}
        for name in ("vgg19_zip", "vgg19_legacy")
    ] + [
        {"kind": "vgg16_flatten", "path": str(files["nia"]),
         "input": str(tmp_path / "x_nia.npy"), "output": str(tmp_path / "nia.npz")}
    ]  # fmt: skip
    _run_without_torch(jobs)

    normalised = (x_vgg - IMAGENET_MEAN) / IMAGENET_STD
    want = _torch_taps(
        vgg19.features, torch.from_numpy(normalised.transpose(0, 3, 1, 2)).float(), "vgg19"
    )
    errors = {}
    for name in ("vgg19_zip", "vgg19_legacy"):
        got = np.load(tmp_path / f"{name}.npz")
        for tap in taps:
            errors[f"{name} {tap}"] = assert_close_to_scale(got[tap], want[tap], what=tap)
    with torch.no_grad():
        probs = nia(torch.from_numpy(np.ascontiguousarray(x_nia.transpose(0, 3, 1, 2)))).numpy()
    got = np.load(tmp_path / "nia.npz")["probs"]
    assert 0.15 < probs.max() < 0.9  # a softmax far from saturation, so the test can fail
    errors["vgg16_flatten probs"] = assert_close_to_scale(got, probs, what="NIMA")
    with capsys.disabled():
        print("\nmax abs error vs torch:", json.dumps({k: f"{v:.2e}" for k, v in errors.items()}))
        scales = {tap: float(np.abs(want[tap]).max()) for tap in taps}
        print("output scales (max abs):", json.dumps({k: f"{v:.3g}" for k, v in scales.items()}))


def test_pyiqa_vgg16_gap_matches_torch(tmp_path, capsys):
    """IQA-PyTorch's NIMA(base_model_name="vgg16"): timm features_only flattens `features`
    into `features_<N>` children up to pool5; pooled, Linear(512, 10), softmax; saved as
    {"params": state_dict}."""

    class FeatureList(nn.Module):
        def __init__(self):
            super().__init__()
            for i, layer in enumerate(_torch_vgg_features("vgg16")):
                self.add_module(f"features_{i}", layer)

        def forward(self, x):
            for layer in self.children():
                x = layer(x)
            return x

    class PyiqaNima(nn.Module):
        def __init__(self):
            super().__init__()
            self.base_model = FeatureList()
            self.global_pool = nn.AdaptiveAvgPool2d(1)
            self.classifier = nn.Sequential(
                nn.Flatten(), nn.Dropout(0.0), nn.Linear(512, 10), nn.Softmax(dim=-1)
            )

        def forward(self, x):
            mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(1, 3, 1, 1)
            std = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(1, 3, 1, 1)
            return self.classifier(self.global_pool(self.base_model((x - mean) / std)))

    torch.manual_seed(1)
    model = PyiqaNima().eval()
    _he_init(model)
    path = tmp_path / "NIMA_VGG16_ava-dc4e8265.pth"
    torch.save({"params": model.state_dict()}, path)
    x = np.random.default_rng(1).uniform(0, 1, (2, 64, 64, 3)).astype(np.float32)
    with torch.no_grad():
        want = model(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    got = load_nima(path, backbone="vgg16_gap")(x)
    assert 0.15 < want.max() < 0.9  # a softmax far from saturation
    error = assert_close_to_scale(got, want, what="vgg16_gap")
    with capsys.disabled():
        print(f"\nvgg16_gap max abs error vs torch: {error:.2e}")
