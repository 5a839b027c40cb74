"""The built-in demo set, user folders, `open_dataset`, and grain worker processes."""

import json
import logging
import threading

import numpy as np
import pytest
import skimage.data
from absl import flags
from PIL import Image

import common.data
from common.data import demo, folders, records
from tests import data_fixtures as fx


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A private cache folder (never the user's) for every test of this module."""
    path = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(records.CACHE_ENV, str(path))
        yield path


@pytest.fixture(scope="module")
def demo_set(cache):
    return {split: common.data.demo_source(split) for split in records.SPLITS}


def test_demo_set_sizes_and_shapes(demo_set, cache):
    counts = {split: len(source) for split, source in demo_set.items()}
    recipe = demo.RECIPE
    per_domain = recipe["train_per_photo"] * len(recipe["photos"])
    assert counts == {
        "train_low": per_domain,
        "train_high": per_domain,
        "val": recipe["val_pairs"],
        "test": recipe["test_pairs"],
    }
    for split in ("train_low", "train_high"):
        for i in range(counts[split]):
            record = demo_set[split][i]
            assert set(record) == {"id", "image"} and record["image"].dtype == np.uint8
            short = min(record["image"].shape[:2])
            # chelsea (300 x 451) has 300 x 225 halves; every other photo allows 256.
            assert short >= (225 if record["id"].startswith("chelsea") else 256), record["id"]
    for split in ("val", "test"):
        for i in range(counts[split]):
            record = demo_set[split][i]
            assert record["image"].shape == record["label"].shape
            assert all(side % 16 == 0 for side in record["image"].shape[:2])
            # Degraded: darker and flatter than the clean crop.
            assert record["image"].mean() < record["label"].mean()
    assert (cache / "demo" / demo.recipe_hash() / "enhance_demo").is_dir()


def test_demo_domains_do_not_share_pixels():
    """Val/test crops come from the low half of each photo, high crops from the other half."""
    examples, _ = demo.make_examples(demo.RECIPE)

    def found(row: np.ndarray, images) -> bool:  # a run of pixels inside any image row
        return any(row.tobytes() in r.tobytes() for image in images for r in image)

    high = {}
    for image_id, image, _ in examples["train_high"]:
        high.setdefault(image_id.rsplit("_", 1)[0], []).append(image)
    for image_id, _, clean in examples["val"] + examples["test"]:
        name = image_id.rsplit("_", 1)[0]
        assert found(clean[0], [getattr(skimage.data, name)()])  # the search works ...
        assert not any(found(row, high[name]) for row in clean[::32])  # ... and finds nothing


def test_demo_metadata_records_the_recipe_and_the_split(demo_set):
    meta = common.data.demo.demo_metadata()
    assert meta["recipe"] == json.loads(json.dumps(demo.RECIPE))
    assert meta["recipe_hash"] == demo.recipe_hash()
    assert meta["ids"]["test"] == [demo_set["test"][i]["id"] for i in range(len(demo_set["test"]))]
    assert set(meta["degradations"]) == set(meta["ids"]["train_low"]) | set(
        meta["ids"]["val"] + meta["ids"]["test"]
    )
    assert 0.25 <= meta["degradations"][meta["ids"]["test"][0]]["exposure_scale"] <= 1.0


def test_a_changed_recipe_is_built_afresh(cache, demo_set, monkeypatch):
    # demo_set: the default recipe's set is in this cache whichever worker runs this test.
    small = dict(demo.RECIPE, photos=["coffee", "rocket"], train_per_photo=1, seed=5)
    small.update(val_pairs=1, test_pairs=2)
    old = demo.recipe_hash()
    monkeypatch.setattr(demo, "RECIPE", small)
    assert demo.recipe_hash() != old
    source = common.data.demo_source("test")
    assert len(source) == 2 and source[0]["id"].startswith("coffee")
    assert {p.name for p in (cache / "demo").iterdir()} >= {old, demo.recipe_hash()}


def test_concurrent_first_use_builds_one_intact_set(tmp_path, monkeypatch):
    small = dict(demo.RECIPE, photos=["coffee"], train_per_photo=1, val_pairs=1, test_pairs=1)
    monkeypatch.setattr(demo, "RECIPE", small)
    start = threading.Barrier(2)
    builders, errors = [], []

    def first_use():
        start.wait()
        try:
            builders.append(demo.build_demo(tmp_path))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=first_use) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert [p.name for p in (tmp_path / "demo").iterdir()] == [demo.recipe_hash()]  # no temp
    for builder in builders:
        assert len(records.TfdsSource(builder, "train_low")) == 1


def test_degrade_keeps_grey_neutral_in_cast_and_darkens():
    grey = np.full((8, 8, 3), 128, np.uint8)
    params = dict(demo.RECIPE["degradation"], saturation=[1, 1], contrast=[1, 1])
    out, drawn = demo.degrade(grey, np.random.default_rng(0), params)
    lum = out.astype(np.float32) @ demo.LUMINANCE_WEIGHTS
    expected = 255 * drawn["exposure_scale"] * (128 / 255) ** drawn["gamma"]
    np.testing.assert_allclose(lum, expected, atol=1.0)


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    fx.save(root / "b.png", fx.image(1))
    fx.save(root / "trip" / "c.jpg", fx.image(2))
    fx.save(root / "trip" / "deep" / "d.tif", fx.image(3, (600, 520)))  # larger: resized
    Image.fromarray(fx.image(4)[..., 0]).save(root / "grey.png")  # grey -> RGB
    fx.save(root / "a.png", fx.image(5))
    fx.save(root / "a.jpg", fx.image(6))  # differs from a.png only in suffix
    data = (root / "b.png").read_bytes()
    (root / "trip" / "broken.png").write_bytes(data[: len(data) // 3])
    (root / "empty.jpg").write_bytes(b"")
    (root / ".hidden.png").write_bytes(b"not even read")
    return root


def test_folder_source_reads_recursively_and_skips_bad_files(photo_folder, caplog):
    with caplog.at_level(logging.WARNING, logger="common.data"):
        source = common.data.folder_source(photo_folder)
    assert source.ids == ["a.jpg", "a.png", "b", "grey", "trip/c", "trip/deep/d"]
    assert {record_id: source[i]["image"].shape for i, record_id in enumerate(source.ids)}[
        "trip/deep/d"
    ] == (591, 512, 3)
    assert all(source[i]["image"].dtype == np.uint8 for i in range(len(source)))
    grey = source[source.ids.index("grey")]["image"]
    assert (grey[..., 0] == grey[..., 2]).all()
    np.testing.assert_array_equal(source[source.ids.index("b")]["image"], fx.image(1))
    skipped = {path.rsplit("/", 1)[-1]: reason for path, reason in source.skipped}
    assert set(skipped) == {"broken.png", "empty.jpg"}
    assert "empty" in skipped["empty.jpg"]
    assert "broken.png" in caplog.text and "empty.jpg" in caplog.text
    assert "2 skipped" in repr(source)


def test_folder_source_without_recursion_and_errors(photo_folder, tmp_path):
    source = folders.folder_source(photo_folder, recursive=False, short_side=None)
    assert source.ids == ["a.jpg", "a.png", "b", "grey"]
    with pytest.raises(FileNotFoundError, match="no such folder"):
        folders.folder_source(tmp_path / "nope")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_bytes(b"")
    with pytest.raises(ValueError, match="none of its 1 image files"):
        folders.folder_source(tmp_path / "bad")


def test_open_dataset_without_data_is_the_demo_set(demo_set):
    dataset = common.data.open_dataset()
    assert "not FiveK" in dataset.description
    assert len(dataset.train_low) == len(demo_set["train_low"]) and dataset.test is not None
    assert json.loads(json.dumps(dataset.split))["dataset"] == "enhance_demo"


def test_open_dataset_with_folders(photo_folder, tmp_path):
    fx.save(tmp_path / "high" / "x.png", fx.image(9))
    dataset = common.data.open_dataset(low_dir=photo_folder, high_dir=tmp_path / "high")
    assert dataset.val is None and dataset.test is None
    assert len(dataset.train_low) == 6 and len(dataset.train_high) == 1
    split = json.loads(json.dumps(dataset.split))
    assert split["dataset"] == "folders" and split["ids"]["train_high"] == ["x"]
    assert len(split["skipped"]) == 2
    assert "user folders" in dataset.description


def test_open_dataset_with_fivek(tmp_path):
    tree = fx.export_tree(tmp_path / "fivek")
    dataset = common.data.open_dataset(data_dir=tree, tfds_dir=tmp_path / "tfds")
    assert [len(s) for s in (dataset.train_low, dataset.train_high, dataset.val, dataset.test)] == [
        2,
        2,
        1,
        1,
    ]
    assert dataset.description.startswith("MIT-Adobe FiveK, short-side-512 export")
    assert "default split 2/2/1/1" in dataset.description
    assert dataset.split["ids"]["val"] == ["a4901"]


def test_open_dataset_refuses_inconsistent_arguments(tmp_path):
    with pytest.raises(ValueError, match="not both"):
        common.data.open_dataset(data_dir=tmp_path, low_dir=tmp_path)
    with pytest.raises(ValueError, match="both low_dir and high_dir"):
        common.data.open_dataset(low_dir=tmp_path)
    with pytest.raises(ValueError, match="FiveK"):
        common.data.open_dataset(split_seed=1)


@pytest.fixture
def absl_flags_parsed():
    """grain's worker processes read grain's absl flags (absl's app.run parses them)."""
    if flags.FLAGS.is_parsed():
        yield
        return
    flags.FLAGS.mark_as_parsed()
    yield
    flags.FLAGS.unparse_flags()


@pytest.mark.slow  # ~12 s: spawns two worker processes that import JAX, grain and TFDS
def test_worker_processes_give_the_same_batches(demo_set, absl_flags_parsed):
    """grain workers (spawned processes) read the TFDS source themselves."""
    args = dict(global_batch_size=2, crop_size=64, image_size=32, seed=1)
    args.update(process_index=0, process_count=1)
    low, high = demo_set["train_low"], demo_set["train_high"]
    in_process = common.data.train_iterator(low, high, in_memory=False, **args)
    workers = common.data.train_iterator(low, high, worker_count=2, **args)
    try:
        for _ in range(3):
            a, b = next(in_process), next(workers)
            np.testing.assert_array_equal(a["low"], b["low"])
            np.testing.assert_array_equal(a["high"], b["high"])
    finally:
        workers.close()
