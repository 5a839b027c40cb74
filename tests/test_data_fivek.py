"""FiveK: layout detection, the split, the TFDS builder (array_record)."""

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common.data import fivek, records
from tests import data_fixtures as fx


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tfds")


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    base = tmp_path_factory.mktemp("trees")
    return {
        # One val pair larger than 512 px: resized to short side 512, then cropped to 512.
        "export512": fx.export_tree(base / "export", sizes={4901: (520, 700)}),
        "export512_tif": fx.export_tree(base / "export_tif", suffix=".tif"),
        "presplit": fx.presplit_tree(base / "presplit"),
        "exposure500": fx.exposure_tree(base / "exposure"),
    }


@pytest.fixture(scope="module")
def built(trees, tfds_dir):
    # One TFDS folder per tree: two trees of one layout would share a build (and the second
    # would be refused as a changed tree).
    return {
        name: fivek.build(tree, tfds_dir=tfds_dir / name, workers=2) for name, tree in trees.items()
    }


@pytest.mark.parametrize(
    "name,layout,pairs",
    [
        ("export512", "export512", 6),
        ("export512_tif", "export512", 6),
        ("exposure500", "exposure500", 6),
    ],
)
def test_two_folder_layouts_are_recognised(trees, name, layout, pairs):
    tree = fivek.find_layout(trees[name])
    assert tree.layout == layout
    assert len(tree.inputs.keys() & tree.experts.keys()) == pairs
    assert set(tree.inputs) == {f"a{i:04d}" for i in fx.TREE_IDS}
    assert f"{pairs} pairs" in tree.description


def test_exposure_layout_reads_its_test_list(trees):
    tree = fivek.find_layout(trees["exposure500"])
    assert tree.test_list == ["a4501", "a0002"]
    assert "EXPOSURE/PIEA" in tree.description


def test_presplit_layout_keeps_its_folders_split(trees):
    tree = fivek.find_layout(trees["presplit"])
    assert tree.layout == "presplit"
    assert tree.folder_split == {
        "train_low": ["a2251", "a2252"],
        "train_high": ["a0001", "a0002"],
        "val": ["a4901"],
        "test": ["a4501", "a4502"],
    }
    with pytest.raises(ValueError, match="pre-split layout fixes its split"):
        fivek.plan_split(tree, split_seed=3)


def test_a_layout_one_folder_down_is_found(tmp_path):
    fx.presplit_tree(tmp_path / "data" / "fivek")
    (tmp_path / "data" / "README.txt").write_text("x")
    tree = fivek.find_layout(tmp_path / "data")
    assert tree.layout == "presplit" and tree.root == tmp_path / "data" / "fivek"


def test_unknown_layout_lists_what_was_expected_and_what_was_seen(tmp_path):
    fx.save(tmp_path / "photos" / "IMG_1.png", fx.image(0))
    fx.save(tmp_path / "photos" / "IMG_2.png", fx.image(1))
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(fivek.LayoutError) as info:
        fivek.find_layout(tmp_path)
    message = str(info.value)
    for expected in ("short-side-512 export", "pre-split (UEGAN)", "EXPOSURE/PIEA", "expertc"):
        assert expected in message
    assert "photos/ (2 image files)" in message and "notes.txt" in message
    with pytest.raises(FileNotFoundError, match="no such folder"):
        fivek.find_layout(tmp_path / "missing")


def test_fivek_ids_from_file_names():
    assert fivek.fivek_id("a0042-IMG_1234.png") == "a0042"
    assert fivek.fivek_id("0042.jpg") == "a0042"
    assert fivek.fivek_id("A5000.TIF") == "a5000"
    assert fivek.fivek_id("a5001-x.png") is None
    assert fivek.fivek_id("IMG_0042.png") is None
    assert fivek.fivek_id("a00421.png") is None


ALL_IDS = [f"a{i:04d}" for i in range(1, 5001)]


def _check_partition(split, ids):
    union = [i for s in split.values() for i in s]
    assert len(union) == len(set(union)) == len(ids)
    assert set(union) == set(ids)


def test_default_split_is_the_documented_id_ranges():
    split = fivek.split_ids(ALL_IDS)
    _check_partition(split, ALL_IDS)
    assert {k: len(v) for k, v in split.items()} == fivek.SPLIT_SIZES
    assert split["train_high"][0] == "a0001" and split["train_high"][-1] == "a2250"
    assert split["train_low"][0] == "a2251" and split["train_low"][-1] == "a4500"
    assert split["test"][0] == "a4501" and split["test"][-1] == "a4900"
    assert split["val"][0] == "a4901" and split["val"][-1] == "a5000"


def test_seeded_split_sizes_disjoint_and_deterministic():
    split = fivek.split_ids(ALL_IDS, seed=7)
    _check_partition(split, ALL_IDS)
    assert {k: len(v) for k, v in split.items()} == fivek.SPLIT_SIZES
    assert split == fivek.split_ids(reversed(ALL_IDS), seed=7)  # order of the listing is moot
    other = fivek.split_ids(ALL_IDS, seed=8)
    assert other["test"] != split["test"]
    assert split["test"] != fivek.split_ids(ALL_IDS)["test"]
    # Spread over the whole id range, not a block of it.
    assert min(split["val"]) < "a1000" and max(split["val"]) > "a4000"


def test_seeded_split_of_a_small_tree_gives_every_split_an_image():
    ids = [f"a{i:04d}" for i in fx.TREE_IDS]
    split = fivek.split_ids(ids, seed=0)
    _check_partition(split, ids)
    assert all(len(v) >= 1 for v in split.values())


def test_build_writes_the_split_into_the_metadata(built, trees, tfds_dir):
    meta = built["export512"].info.metadata
    assert meta["layout"] == "export512" and meta["split_name"] == "default"
    assert meta["ids"] == {
        "train_low": ["a2251", "a2252"],
        "train_high": ["a0001", "a0002"],
        "val": ["a4901"],
        "test": ["a4501"],
    }
    assert meta["skipped"] == []
    assert json.loads(json.dumps(meta)) == meta
    assert fivek.split_metadata(trees["export512"], tfds_dir=tfds_dir / "export512") == meta


def test_records_read_back_with_the_stored_sizes_and_pixels(built, trees, tfds_dir):
    tfds_dir = tfds_dir / "export512"
    train = fivek.fivek_source(trees["export512"], "train_low", tfds_dir=tfds_dir)
    assert len(train) == 2
    record = train[0]
    assert set(record) == {"id", "image"} and record["id"] == "a2251"
    source = np.asarray(Image.open(trees["export512"] / "original" / "a2251-IMG_2251.png"))
    np.testing.assert_array_equal(record["image"], source)  # small images are stored as they are

    high = fivek.fivek_source(trees["export512"], "train_high", tfds_dir=tfds_dir)[1]
    expert = np.asarray(Image.open(trees["export512"] / "expertC" / "a0002-IMG_2.png"))
    np.testing.assert_array_equal(high["image"], expert)

    test = fivek.fivek_source(trees["export512"], "test", tfds_dir=tfds_dir)[0]
    assert test["id"] == "a4501" and test["image"].shape == test["label"].shape == (64, 64, 3)
    np.testing.assert_array_equal(test["image"], records.center_crop(fx.image(4501), 64))

    val = fivek.fivek_source(trees["export512"], "val", tfds_dir=tfds_dir)[0]
    assert val["image"].shape == val["label"].shape == (512, 512, 3)  # 520x700 -> 512x689 -> crop
    assert val["image"].dtype == np.uint8
    # expert = input + 40 in the fixture: the pair stays aligned through resize and crop.
    diff = val["label"].astype(int) - val["image"].astype(int)
    assert np.median(diff) == 40


@pytest.mark.parametrize("name", ["export512_tif", "presplit", "exposure500"])
def test_every_layout_builds_all_four_splits(built, name):
    meta = built[name].info.metadata
    counts = {s: len(meta["ids"][s]) for s in records.SPLITS}
    expected = {"presplit": {"train_low": 2, "train_high": 2, "val": 1, "test": 2}}
    assert counts == expected.get(name, {"train_low": 2, "train_high": 2, "val": 1, "test": 1})
    for split in records.SPLITS:
        source = records.TfdsSource(built[name], split)
        record = source[0]
        assert record["image"].dtype == np.uint8 and record["image"].ndim == 3
        assert ("label" in record) == (split in records.PAIRED_SPLITS)
    if name == "exposure500":
        assert meta["exposure_test_ids"] == ["a4501", "a0002"]


def test_bad_files_are_reported_by_name_and_skipped(tmp_path, caplog):
    tree = fx.export_tree(tmp_path / "tree", ids=(*fx.TREE_IDS, 4902))
    good = (tree / "original" / "a2251-IMG_2251.png").read_bytes()
    (tree / "original" / "a2251-IMG_2251.png").write_bytes(good[: len(good) // 2])  # truncated
    (tree / "expertC" / "a0001-IMG_1.png").write_bytes(b"")  # empty
    (tree / "original" / "a4901-IMG_4901.png").write_text("not an image")
    with caplog.at_level(logging.INFO, logger="common.data"):
        builder = fivek.build(tree, tfds_dir=tmp_path / "tfds", workers=1)
    meta = builder.info.metadata
    assert {s: len(meta["ids"][s]) for s in records.SPLITS} == {
        "train_low": 1,
        "train_high": 1,
        "val": 1,
        "test": 1,
    }
    skipped = {Path(item["file"]).name: item["reason"] for item in meta["skipped"]}
    assert set(skipped) == {"a2251-IMG_2251.png", "a0001-IMG_1.png", "a4901-IMG_4901.png"}
    assert "empty" in skipped["a0001-IMG_1.png"]
    for name in skipped:
        assert name in caplog.text
    assert "FiveK train_low: 1 examples (1 skipped)" in caplog.text


def test_a_split_with_no_readable_image_fails_with_a_message(tmp_path):
    tree = fx.export_tree(tmp_path / "tree")
    (tree / "expertC" / "a4901-IMG_4901.png").write_bytes(b"")
    with pytest.raises(ValueError, match="FiveK val: none of its 1 images could be read"):
        fivek.build(tree, tfds_dir=tmp_path / "tfds", workers=1)
    assert not list((tmp_path / "tfds" / "mit_adobe_fivek").glob("*/1.0.0"))  # nothing half-built


def test_a_changed_tree_is_refused_until_rebuilt(tmp_path):
    tree = fx.export_tree(tmp_path / "tree")
    fivek.build(tree, tfds_dir=tmp_path / "tfds", workers=1)
    fx.save(tree / "original" / "a2253-new.png", fx.image(3))
    fx.save(tree / "expertC" / "a2253-new.png", fx.image(3))
    with pytest.raises(fivek.StaleBuildError, match="--rebuild"):
        fivek.build(tree, tfds_dir=tmp_path / "tfds")
    builder = fivek.build(tree, tfds_dir=tmp_path / "tfds", rebuild=True, workers=1)
    assert builder.info.metadata["ids"]["train_low"] == ["a2251", "a2252", "a2253"]


def test_seeded_split_builds_its_own_config(trees, tmp_path):
    builder = fivek.build(trees["export512_tif"], split_seed=5, tfds_dir=tmp_path, workers=1)
    meta = builder.info.metadata
    assert builder.builder_config.name == "export512-random5"
    assert meta["split_seed"] == 5 and meta["split_name"] == "random5"
    assert meta["ids"] == fivek.split_ids([f"a{i:04d}" for i in fx.TREE_IDS], seed=5)


def test_stored_sizes():
    landscape = np.zeros((600, 900, 3), np.uint8)
    assert records.resize_short_side(landscape, 512).shape == (512, 768, 3)
    assert records.resize_short_side(landscape.transpose(1, 0, 2), 512).shape == (768, 512, 3)
    small = np.zeros((333, 500, 3), np.uint8)
    assert records.resize_short_side(small, 512) is small  # never upscaled
    assert records.eval_crop_size(512, 768) == 512
    assert records.eval_crop_size(333, 500) == 320  # EXPOSURE's 500-px images
    image = np.arange(6 * 8).reshape(6, 8, 1).repeat(3, -1)
    np.testing.assert_array_equal(records.center_crop(image, 4), image[1:5, 2:6])


def test_config_names_parse_back():
    config = fivek.MitAdobeFivek.get_builder_config("exposure500-random-3")
    assert (config.layout, config.split_seed, config.name) == (
        "exposure500",
        -3,
        "exposure500-random-3",
    )
    assert fivek.MitAdobeFivek.get_builder_config("presplit-default").split_seed is None
    assert fivek.MitAdobeFivek.get_builder_config("other-default") is None
