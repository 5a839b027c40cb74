"""`python -m common.data`: build and read back without TensorFlow; a folder in no layout."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from common.data import records
from tests import data_fixtures as fx

ROOT = Path(__file__).resolve().parents[1]


# Runs in a fresh interpreter in which TensorFlow looks absent whether or not it is installed:
# every import finder is wrapped to find nothing named tensorflow, so `import tensorflow`
# fails and `importlib.util.find_spec("tensorflow")` is None, as without it. (A
# `sys.modules["tensorflow"] = None` entry would make TFDS believe TensorFlow is loaded.)
_NO_TF = """
import runpy, sys

class _HideTensorFlow:
    def __init__(self, finder):
        self._finder = finder

    def find_spec(self, name, path=None, target=None):
        if name == "tensorflow" or name.startswith("tensorflow."):
            return None
        find_spec = getattr(self._finder, "find_spec", None)
        return None if find_spec is None else find_spec(name, path, target)

    def __getattr__(self, attribute):  # find_distributions, invalidate_caches, ...
        return getattr(self._finder, attribute)

sys.meta_path[:] = [_HideTensorFlow(f) for f in sys.meta_path]
"""


def _run_without_tf(
    code: str, *args: str, cache: Path | None = None
) -> subprocess.CompletedProcess:
    script = _NO_TF + textwrap.dedent(code)
    env = dict(os.environ, **({records.CACHE_ENV: str(cache)} if cache else {}))
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_blocker_hides_an_installed_tensorflow(tmp_path):
    (tmp_path / "tensorflow").mkdir()
    (tmp_path / "tensorflow" / "__init__.py").write_text("")
    code = """
    import importlib.util
    assert importlib.util.find_spec("tensorflow") is None
    try:
        import tensorflow
    except ModuleNotFoundError:
        print("blocked")
    """
    proc = _run_without_tf(f"sys.path.insert(0, {str(tmp_path)!r})\n" + textwrap.dedent(code))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "blocked"


def test_cli_builds_and_reads_back_without_tensorflow(tmp_path):
    tree = fx.export_tree(tmp_path / "tree", ids=(*fx.TREE_IDS, 2253))
    (tree / "original" / "a2253-IMG_2253.png").write_bytes(b"\x89PNG broken")
    tfds = tmp_path / "tfds"
    build = """
    sys.argv = ["common.data", "build", "--data-dir", sys.argv[1], "--tfds-dir", sys.argv[2]]
    try:
        runpy.run_module("common.data", run_name="__main__")
    except SystemExit as e:
        print("exit", e.code)
    assert "tensorflow" not in sys.modules
    """
    proc = _run_without_tf(build, str(tree), str(tfds))
    assert "exit 1" in proc.stdout, proc.stderr  # built, with one file left out
    assert "short-side-512 export" in proc.stdout
    assert "train_low      2 examples" in proc.stdout and "val            1 examples" in proc.stdout
    assert "1 unreadable files left out" in proc.stderr
    assert "a2253-IMG_2253.png: not an image file" in proc.stderr

    read = """
    from common.data import fivek_source, train_iterator
    low = fivek_source(sys.argv[1], "train_low", tfds_dir=sys.argv[2])
    test = fivek_source(sys.argv[1], "test", tfds_dir=sys.argv[2])
    batch = next(train_iterator(low, low, global_batch_size=2, crop_size=32, image_size=16,
                                process_index=0, process_count=1))
    assert batch["low"].shape == (2, 16, 16, 3), batch["low"].shape
    assert test[0]["label"].shape == (64, 64, 3)
    assert "tensorflow" not in sys.modules
    print("read", len(low), test[0]["id"])
    sys.argv = ["common.data", "info", "--tfds-dir", sys.argv[2]]
    try:
        runpy.run_module("common.data", run_name="__main__")
    except SystemExit as e:
        assert not e.code, e.code
    """
    proc = _run_without_tf(read, str(tree), str(tfds), cache=tmp_path / "cache")
    assert proc.returncode == 0, proc.stderr
    assert "read 2 a4501" in proc.stdout
    assert "mit_adobe_fivek/export512-default 1.0.0: 2/2/1/1 (train_low/train_high/val/test)" in (
        proc.stdout
    )


def test_cli_rejects_a_folder_in_no_known_layout(tmp_path):
    fx.save(tmp_path / "pics" / "x.png", fx.image(0))
    cmd = [sys.executable, "-m", "common.data", "build", "--data-dir", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert "no MIT-Adobe FiveK layout found" in proc.stderr
    assert "pre-split (UEGAN) layout" in proc.stderr and "pics/ (1 image files)" in proc.stderr
