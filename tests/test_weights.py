"""Checkpoint readers (no torch): torch zip and legacy layouts, safetensors, the Keras dispatch,
restricted unpickling, bad files, state-dict wrappers, converted directories and the CLI."""

import json
import os
import pickle
import subprocess
import sys
import types
import zipfile
from collections import OrderedDict
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import save_file

from common import vgg, weights
from common.weights import CheckpointError, CheckpointMismatchError, UnsafeCheckpointError
from tests import torch_format
from tests.torch_format import Storage, View
from tests.vgg_reference import random_features

ROOT = Path(__file__).resolve().parents[1]
RNG = np.random.default_rng(0)

SAVERS = {"zip": torch_format.save_zip, "legacy": torch_format.save_legacy}


def _mixed_dtypes():
    return OrderedDict(
        [
            ("conv.weight", RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)),
            ("half", RNG.standard_normal(5).astype(np.float16)),
            ("bf16", RNG.standard_normal((2, 3)).astype(ml_dtypes.bfloat16)),
            ("double", RNG.standard_normal(3)),
            ("bn.num_batches_tracked", np.array(7, np.int64)),
            ("mask", np.array([True, False, True])),
            ("bytes", np.arange(6, dtype=np.uint8).reshape(2, 3)),
            ("empty", np.zeros((2, 0), np.float32)),
        ]
    )


@pytest.mark.parametrize("layout", ["zip", "legacy"])
def test_torch_layouts_round_trip_every_dtype(tmp_path, layout):
    arrays = _mixed_dtypes()
    path = tmp_path / "model.pth"
    SAVERS[layout](arrays, path)
    assert weights.checkpoint_format(path) == f"torch_{layout}"
    got = weights.read_checkpoint(path)
    assert list(got) == list(arrays)
    for key, want in arrays.items():
        assert got[key].dtype == want.dtype, key
        np.testing.assert_array_equal(got[key], want, err_msg=key)


@pytest.mark.parametrize("layout", ["zip", "legacy"])
def test_views_into_a_shared_storage(tmp_path, layout):
    base = Storage(np.arange(24, dtype=np.float32))
    matrix = View(base, 0, (4, 6), (6, 1))
    tensors = {
        "matrix": matrix,
        "transposed": View(base, 0, (6, 4), (1, 6)),
        "window": View(base, 8, (2, 3), (6, 1)),  # rows 1-2, columns 2-4
        "column": View(base, 1, (4,), (6,)),
        "again": matrix,  # the same tensor twice: one storage, memoised in the pickle
    }
    path = tmp_path / "views.pth"
    SAVERS[layout](tensors, path)
    got = weights.read_checkpoint(path)
    full = np.arange(24, dtype=np.float32).reshape(4, 6)
    np.testing.assert_array_equal(got["matrix"], full)
    np.testing.assert_array_equal(got["transposed"], full.T)
    np.testing.assert_array_equal(got["window"], full[1:3, 2:5])
    np.testing.assert_array_equal(got["column"], full[:, 1])
    np.testing.assert_array_equal(got["again"], full)


def test_torch03_python2_legacy_file_from_a_gpu(tmp_path):
    # What torchvision's 2017 VGG files are likely to be: torch 0.2/0.3, Python 2 strings,
    # _rebuild_tensor without the v2 arguments; here also saved from a GPU.
    arrays = OrderedDict([("features.0.weight", RNG.standard_normal((4, 3, 3, 3)))])
    arrays["features.0.bias"] = np.arange(4, dtype=np.float32)
    path = tmp_path / "vgg-2017.pth"
    torch_format.save_legacy(arrays, path, torch03=True, location="cuda:0")
    data = path.read_bytes()
    assert b"_rebuild_tensor\n" in data and b"ctorch.cuda\nDoubleStorage" in data
    got = weights.read_checkpoint(path)
    assert list(got) == list(arrays)
    for key, want in arrays.items():
        np.testing.assert_array_equal(got[key], want)


def test_big_endian_zip(tmp_path):
    arrays = {"w": RNG.standard_normal((3, 2)).astype(np.float32), "n": np.arange(3)}
    path = tmp_path / "be.pth"
    torch_format.save_zip(arrays, path, byteorder="big")
    got = weights.read_checkpoint(path)
    np.testing.assert_array_equal(got["w"], arrays["w"])
    np.testing.assert_array_equal(got["n"], arrays["n"])


def test_nested_containers_flatten_and_non_tensors_drop(tmp_path):
    w = np.ones((2, 2), np.float32)
    obj = {
        "params": OrderedDict([("conv.weight", w)]),
        "optimizer": {"state": {0: {"momentum_buffer": w * 2}}, "lr": 0.1},
        "history": [w * 3, "note"],
        "epoch": 12,
        "name": "run-1",
        "flags": {1, 2},
    }
    path = tmp_path / "nested.pth"
    torch_format.save_zip(obj, path, archive="nested")
    got = weights.read_checkpoint(path)
    assert sorted(got) == [
        "history.0",
        "optimizer.state.0.momentum_buffer",
        "params.conv.weight",
    ]
    np.testing.assert_array_equal(got["optimizer.state.0.momentum_buffer"], w * 2)


def test_safetensors(tmp_path):
    arrays = {"features.0.weight": RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)}
    arrays["bf"] = np.ones(3, ml_dtypes.bfloat16)
    path = tmp_path / "model.safetensors"
    save_file(arrays, path)
    assert weights.checkpoint_format(path) == "safetensors"
    got = weights.read_checkpoint(path)
    np.testing.assert_array_equal(got["features.0.weight"], arrays["features.0.weight"])
    assert got["bf"].dtype == ml_dtypes.bfloat16


def test_hdf5_goes_to_the_keras_reader_lazily(tmp_path, monkeypatch):
    path = tmp_path / "weights.h5"  # an HDF5 signature is all the sniffing needs
    path.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(64))
    calls = []
    fake = types.ModuleType("common.keras_h5")
    fake.read_keras_h5 = lambda p: calls.append(p) or {"dense/kernel:0": np.ones((2, 10))}
    monkeypatch.setitem(sys.modules, "common.keras_h5", fake)
    assert weights.checkpoint_format(path) == "hdf5"
    assert list(weights.read_checkpoint(path)) == ["dense/kernel:0"]
    assert calls == [path]
    monkeypatch.setitem(sys.modules, "common.keras_h5", None)  # as if not installed
    with pytest.raises(CheckpointError, match=r"weights\.h5: a Keras HDF5 file.*\[keras\]"):
        weights.read_checkpoint(path)


# --- Refused and broken files -------------------------------------------------------------------


def _payload_pickles(marker: Path) -> dict[str, bytes]:
    """Pickles that would create `marker` if they were ever executed."""
    command = f"touch {marker}".encode()
    string = b"X" + len(command).to_bytes(4, "little") + command  # BINUNICODE
    code = f"open({str(marker)!r}, 'w').close()".encode()
    code_string = b"X" + len(code).to_bytes(4, "little") + code

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    nested = OrderedDict([("features.0.weight", {"inner": [Payload()]})])
    return {
        "os.system": b"\x80\x02cos\nsystem\n" + string + b"\x85R.",
        "posix.system": b"\x80\x02cposix\nsystem\n" + string + b"\x85R.",
        "builtins.eval": b"\x80\x02cbuiltins\neval\n" + code_string + b"\x85R.",
        # A payload deep inside an otherwise ordinary state dict (pickled by its __reduce__).
        "nested __reduce__": pickle.dumps(nested, protocol=2),
    }


@pytest.mark.parametrize("layout", ["zip", "legacy"])
@pytest.mark.parametrize("name", ["os.system", "posix.system", "builtins.eval", "nested"])
def test_malicious_pickles_are_refused_and_never_run(tmp_path, layout, name):
    marker = tmp_path / "payload-ran"
    payloads = _payload_pickles(marker)
    data = payloads[name] if name in payloads else payloads["nested __reduce__"]
    path = tmp_path / "evil.pth"
    if layout == "zip":
        torch_format.save_zip_records(path, [("data.pkl", data), ("version", b"3\n")])
    else:
        torch_format.save_legacy_pickle(path, data)
    expected_global = {"nested": "posix.system"}.get(name, name)
    with pytest.raises(UnsafeCheckpointError) as error:
        weights.read_checkpoint(path)
    assert f"'{expected_global}'" in str(error.value) and str(path) in str(error.value)
    assert not marker.exists()


@pytest.mark.parametrize("name", ["os.system", "builtins.eval", "nested __reduce__"])
def test_the_payloads_do_run_under_a_plain_unpickler(tmp_path, name):
    # The control for the test above: the same bytes, given to pickle.loads, create the file.
    marker = tmp_path / "payload-ran"
    pickle.loads(_payload_pickles(marker)[name])
    assert marker.exists()


def test_reading_a_tensor_past_its_storage_is_refused(tmp_path):
    storage = Storage(np.zeros(6, np.float32))
    path = tmp_path / "oob.pth"
    torch_format.save_zip({"w": View(storage, 4, (3,), (1,))}, path)
    with pytest.raises(CheckpointError, match="reads past its storage"):
        weights.read_checkpoint(path)


def test_truncated_zip(tmp_path):
    path = tmp_path / "cut.pth"
    torch_format.save_zip({"w": np.ones((64, 64), np.float32)}, path)
    path.write_bytes(path.read_bytes()[:9000])
    with pytest.raises(CheckpointError, match=r"cut\.pth: .*truncated or corrupt"):
        weights.read_checkpoint(path)


def test_truncated_legacy(tmp_path):
    path = tmp_path / "cut.pth"
    torch_format.save_legacy({"w": np.ones((64, 64), np.float32)}, path)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match=r"cut\.pth: truncated"):
        weights.read_checkpoint(path)


def test_zip_that_is_not_a_torch_checkpoint(tmp_path):
    path = tmp_path / "photos.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("readme.txt", "hello")
    with pytest.raises(CheckpointError, match=r"photos\.zip: a zip archive but not a torch"):
        weights.read_checkpoint(path)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "empty file"),
        (b"hello, this is text and not weights", "unknown checkpoint format"),
        (pickle.dumps({"a": 1}, protocol=2), "a pickle file, but not a torch.save checkpoint"),
    ],
)
def test_other_bad_files(tmp_path, content, message):
    path = tmp_path / "bad.bin"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        weights.read_checkpoint(path)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        weights.read_checkpoint(tmp_path / "nope.pth")
    with pytest.raises(CheckpointError, match="is a directory"):
        weights.read_checkpoint(tmp_path)


# --- Wrappers -----------------------------------------------------------------------------------


def test_unwrap_state_dict_wrappers_and_data_parallel():
    w = np.ones(1)
    flat = {"params.features.0.weight": w, "params.head.bias": w, "optimizer.step": w}
    assert sorted(weights.unwrap_state_dict(flat, probe="features.0.weight", source="f")) == [
        "features.0.weight",
        "head.bias",
    ]  # keys outside the chosen wrapper ("optimizer.*") are ignored
    parallel = {"module.features.0.weight": w, "features.module.2.weight": w}
    assert sorted(weights.unwrap_state_dict(parallel, probe="features.0.weight", source="f")) == [
        "features.0.weight",
        "features.2.weight",
    ]
    with pytest.raises(CheckpointMismatchError, match="no state dict with the key 'x.weight'"):
        weights.unwrap_state_dict(flat, probe="x.weight", source="f")


# --- Strict loading through a public loader --------------------------------------------------


def test_missing_unexpected_and_wrong_shape_are_named(tmp_path):
    first = {k: v for k, v in random_features("vgg16").items() if k.startswith("features.0.")}
    path = tmp_path / "bad.pth"
    bad = dict(first)
    bad["features.0.weight"] = np.zeros((64, 3, 5, 5), np.float32)
    bad["features.1.weight"] = np.zeros(3, np.float32)  # features.1 is a ReLU: no parameters
    torch_format.save_zip(bad, path)
    with pytest.raises(CheckpointMismatchError) as error:
        vgg.load_vgg16(path, taps=("relu1_1",))
    text = str(error.value)
    assert "wrong shape for 'features.0.weight'" in text and "(64, 3, 5, 5)" in text
    assert "(64, 3, 3, 3)" in text and "unexpected key 'features.1.weight'" in text
    torch_format.save_zip({"features.0.weight": first["features.0.weight"]}, path)
    with pytest.raises(CheckpointMismatchError, match=r"missing key 'features.0.bias'.*\(64,\)"):
        vgg.load_vgg16(path, taps=("relu1_1",))


# --- Converted directories ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vgg16_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("vgg16") / "vgg16-397923af.pth"
    state = dict(random_features("vgg16"))
    state["classifier.6.bias"] = np.zeros(1000, np.float32)  # ignored by the VGG loaders
    torch_format.save_legacy(state, path)
    return path


def test_convert_round_trip_and_manifest(tmp_path, vgg16_file):
    out = tmp_path / "converted"
    assert weights.main(["convert", str(vgg16_file), "--format", "vgg16", "--out", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format"] == "vgg16" and manifest["source"]["file"] == vgg16_file.name
    assert manifest["source"]["sha256"] == weights.file_sha256(vgg16_file)
    assert manifest["source"]["checkpoint_format"] == "torch_legacy"
    assert manifest["params"]["sha256"] == weights.file_sha256(out / "params.safetensors")
    assert weights.source_sha256(out) == weights.source_sha256(vgg16_file)
    direct = vgg.load_vgg16(vgg16_file, taps=("relu2_2", "pool5"))
    again = vgg.load_vgg16(out, taps=("relu2_2", "pool5"))
    for a, b in zip(
        nnx.to_flat_state(nnx.state(direct)), nnx.to_flat_state(nnx.state(again)), strict=True
    ):
        assert a[0] == b[0]
        np.testing.assert_array_equal(a[1].get_value(), b[1].get_value())
    shallow = vgg.load_vgg16(out, taps=("relu1_1",))  # deeper converted layers are not needed
    assert shallow.layer_names == ("conv1_1",)


def test_converted_directory_refusals(tmp_path, vgg16_file):
    out = tmp_path / "converted"
    weights.convert(vgg16_file, format="vgg16", out=out)
    with pytest.raises(CheckpointError, match="holds 'vgg16' parameters, not 'vgg19'"):
        vgg.load_vgg19(out)
    with pytest.raises(FileExistsError, match="not empty"):
        weights.convert(vgg16_file, format="vgg16", out=out)
    weights.convert(vgg16_file, format="vgg16", out=out, overwrite=True)
    params = out / "params.safetensors"
    data = bytearray(params.read_bytes())
    data[-1] ^= 1
    params.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="SHA-256 differs from the manifest"):
        vgg.load_vgg16(out)


def test_cli_help_and_failure_exit_code(tmp_path, capsys):
    with pytest.raises(SystemExit) as shown:
        weights.main(["convert", "--help"])
    assert shown.value.code == 0
    help_text = capsys.readouterr().out
    assert "--format" in help_text and "vgg16_gap" in help_text and "--overwrite" in help_text
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint at all")
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    failed = subprocess.run(
        [sys.executable, "-m", "common.weights", "convert", str(bad), "--format", "vgg19"]
        + ["--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        env=env,
    )
    assert failed.returncode == 1
    assert failed.stderr.strip().splitlines() == [
        f"error: {bad}: unknown checkpoint format (not a torch .pth zip or legacy file, "
        f".safetensors or Keras .h5); first bytes {b'not a ch'!r}"
    ]
    assert not (tmp_path / "out").exists()
