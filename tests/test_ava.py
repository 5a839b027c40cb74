"""AVA: AVA.txt parsing, splits, broken images, the grain source and pipelines."""

import json

import numpy as np
import pytest

from common.data import ava
from tests import ava_fixtures as fx


@pytest.fixture(scope="module")
def ava_dir(tmp_path_factory):
    return fx.make_ava(tmp_path_factory.mktemp("ava"))


def test_ava_txt_parsing_skips_bad_lines_by_number(ava_dir):
    labels = ava.read_ava_txt(ava_dir / "AVA.txt")
    assert labels.ids == fx.image_ids()
    assert [n for n, _ in labels.skipped] == [fx.ZERO_VOTES_LINE, fx.MALFORMED_LINE]
    assert "no votes" in labels.skipped[0][1] and "15 fields" in labels.skipped[1][1]
    for i, image_id in enumerate(labels.ids):
        dist = labels.dists[image_id]
        assert dist.dtype == np.float32 and dist.shape == (10,)
        np.testing.assert_allclose(dist.sum(), 1.0, rtol=1e-6)
        np.testing.assert_allclose(dist, fx.votes(i) / fx.votes(i).sum(), rtol=1e-6)
        assert labels.votes[image_id] == fx.votes(i).sum()


def test_random_split_is_deterministic_and_order_free():
    ids = [str(i) for i in range(100)]
    a = ava.split_ava(ids, test_fraction=0.2, val_fraction=0.1, seed=3)
    assert a == ava.split_ava(ids[::-1], test_fraction=0.2, val_fraction=0.1, seed=3)
    assert a != ava.split_ava(ids, test_fraction=0.2, val_fraction=0.1, seed=4)
    assert [len(a[k]) for k in ("train", "val", "test")] == [72, 8, 20]
    assert sorted(a["train"] + a["val"] + a["test"]) == sorted(ids)


def test_given_lists_are_respected_and_checked():
    ids = [str(i) for i in range(10)]
    split = ava.split_ava(ids, train_ids=ids[:7] + ["unknown"], test_ids=ids[7:], seed=0)
    assert split["test"] == ids[7:]
    assert sorted(split["train"] + split["val"]) == ids[:7]
    with pytest.raises(ava.AvaError, match="in both lists"):
        ava.split_ava(ids, train_ids=ids[:6], test_ids=ids[5:])
    with pytest.raises(ava.AvaError, match="both"):
        ava.split_ava(ids, train_ids=ids)


def test_open_ava_lists_broken_and_missing_images(ava_dir):
    data = ava.open_ava(ava_dir, test_fraction=0.2, val_fraction=0.1, resize=40)
    skipped = {s["id"]: s["reason"] for s in data.skipped["images"]}
    assert skipped == {
        "1003": "empty file (0 bytes)",
        "1007": "truncated JPEG (no end-of-image marker)",
        "1011": "not an image file, or a format Pillow cannot read",
        "1015": "file not found",
    }
    used = data.train.ids + data.val.ids + data.test.ids
    assert sorted(used) == sorted(set(fx.image_ids()) - set(skipped))
    assert [d["line"] for d in data.skipped["lines"]] == [fx.ZERO_VOTES_LINE, fx.MALFORMED_LINE]
    json.dumps(data.split), json.dumps(data.skipped)  # both go into the work directory
    record = data.test[0]
    assert record["image"].shape == (40, 40, 3) and record["image"].dtype == np.uint8
    assert record["dist"].shape == (10,) and record["id"] == data.test.ids[0]


def test_list_files_found_beside_ava_txt(tmp_path):
    root = fx.make_ava(tmp_path / "ava", lists=True)
    data = ava.open_ava(root, val_fraction=0.0, resize=32)
    assert data.split["split"] == "lists train_ids.txt / test_ids.txt"
    assert data.test.ids == [i for i in fx.image_ids()[30:] if i != fx.MISSING]
    assert data.val.ids == []


def test_bad_ava_dir_says_what_is_missing(tmp_path):
    with pytest.raises(ava.AvaError, match="no such directory"):
        ava.open_ava(tmp_path / "nowhere")
    with pytest.raises(ava.AvaError, match="no AVA.txt"):
        ava.open_ava(tmp_path)
    (tmp_path / "AVA.txt").write_text("1 100 1 2 3 4 5 6 7 8 9 10 0 0 1\n")
    with pytest.raises(ava.AvaError, match="no image files"):
        ava.open_ava(tmp_path)


def test_a_file_broken_after_the_check_is_skipped_at_decode_time(tmp_path):
    root = fx.make_ava(tmp_path / "ava")
    data = ava.open_ava(root, test_fraction=0.2, val_fraction=0.0, resize=32)
    victim = data.train.ids[0]
    (root / "images" / f"{victim}.jpg").write_bytes(b"\xff\xd8 garbage \xff\xd9")
    record = data.train[0]  # no exception: the next image instead
    assert record["id"] == data.train.ids[1]
    assert victim in data.train.failures


def test_train_iterator_restores_and_shards_like_one_process(ava_dir):
    data = ava.open_ava(ava_dir, test_fraction=0.2, val_fraction=0.1, resize=40)
    kw = dict(global_batch_size=4, crop=32, seed=7, read_threads=1)
    it = ava.train_iterator(data.train, process_index=0, process_count=1, **kw)
    first = next(it)
    assert first["image"].shape == (4, 32, 32, 3) and first["image"].dtype == np.float32
    assert 0.0 <= first["image"].min() and first["image"].max() <= 1.0
    assert first["dist"].shape == (4, 10)
    state = it.get_state()
    expected = [next(it) for _ in range(3)]
    resumed = ava.train_iterator(data.train, process_index=0, process_count=1, **kw)
    resumed.set_state(state)
    for want in expected:
        got = next(resumed)
        np.testing.assert_array_equal(got["image"], want["image"])
    # Two processes: rows [0, 2) and [2, 4) of the same global batches.
    halves = [
        next(ava.train_iterator(data.train, process_index=p, process_count=2, **kw)) for p in (0, 1)
    ]
    np.testing.assert_array_equal(np.concatenate([h["image"] for h in halves]), first["image"])


def test_eval_batches_pad_the_last_batch(ava_dir):
    data = ava.open_ava(ava_dir, test_fraction=0.2, val_fraction=0.1, resize=40)
    n = len(data.test)
    batches = list(
        ava.eval_batches(data.test, global_batch_size=4, crop=32, process_index=0, process_count=1)
    )
    assert len(batches) == -(-n // 4)
    valid = np.concatenate([b["valid"] for b in batches])
    assert valid.sum() == n and not valid[n:].any()
    centre = data.test[0]["image"][4:36, 4:36].astype(np.float32) / 255.0
    np.testing.assert_array_equal(batches[0]["image"][0], centre)
