"""grain pipelines: shapes and range, seeds, two streams, exact resume (also through Orbax),
per-process sharding; holding decoded images in memory."""

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest

from common.data import pipeline
from common.data.pipeline import InMemorySource, eval_dataset, train_iterator


def _constant_source(count: int, shape=(40, 56)) -> InMemorySource:
    """Image i is filled with the value 2 i: every crop, resize and flip of it stays 2 i, so a
    batch tells which examples it holds."""
    return InMemorySource(
        [{"id": f"x{i}", "image": np.full((*shape, 3), 2 * i, np.uint8)} for i in range(count)]
    )


def _indices(batch: np.ndarray) -> list[int]:
    values = np.round((batch[:, 0, 0, 0] + 1.0) * 127.5).astype(int)
    return [int(v) // 2 for v in values]


def _noise_source(count: int, seed: int = 0) -> InMemorySource:
    rng = np.random.default_rng(seed)
    shapes = [(40, 56), (48, 36), (30, 30), (64, 40)]  # one short side below the crop size
    return InMemorySource(
        [
            {"id": f"n{i}", "image": rng.integers(0, 256, (*shapes[i % 4], 3), dtype=np.uint8)}
            for i in range(count)
        ]
    )


def _iterator(low=None, high=None, **kwargs):
    args = dict(
        global_batch_size=4,
        crop_size=32,
        image_size=16,
        seed=0,
        process_index=0,
        process_count=1,
    )
    args.update(kwargs)
    return train_iterator(low or _noise_source(10), high or _noise_source(9, seed=1), **args)


def _take(iterator, count: int) -> list[dict]:
    return [next(iterator) for _ in range(count)]


def _assert_same(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x["low"], y["low"])
        np.testing.assert_array_equal(x["high"], y["high"])


def test_batches_have_the_documented_shape_dtype_and_range():
    half = np.zeros((40, 56, 3), np.uint8)
    half[:, 28:] = 255  # every 32-px crop holds black and white
    batch = next(_iterator(InMemorySource([{"id": "h", "image": half}] * 3)))
    assert set(batch) == {"low", "high"}
    for images in batch.values():
        assert images.shape == (4, 16, 16, 3) and images.dtype == np.float32
        assert images.min() >= -1.0 and images.max() <= 1.0
    assert batch["low"].min() == -1.0 and batch["low"].max() == 1.0  # 0 -> -1, 255 -> 1


def test_same_seed_same_batches_other_seed_other_batches():
    first = _take(_iterator(seed=3), 3)
    _assert_same(first, _take(_iterator(seed=3), 3))
    other = _take(_iterator(seed=4), 3)
    assert not np.array_equal(first[0]["low"], other[0]["low"])


def test_low_and_high_are_independent_streams():
    source = _constant_source(12)
    batches = _take(_iterator(source, source), 3)
    low = [i for b in batches for i in _indices(b["low"])]
    high = [i for b in batches for i in _indices(b["high"])]
    assert sorted(low) == sorted(high) == list(range(12))  # one epoch each, every image once
    assert low != high  # ... in different orders


def test_every_epoch_is_reshuffled_and_gets_new_crops():
    source = _constant_source(8)
    batches = _take(_iterator(source, _noise_source(8), global_batch_size=8), 3)
    epochs = [_indices(b["low"]) for b in batches]
    assert all(sorted(e) == list(range(8)) for e in epochs)
    assert epochs[0] != epochs[1] or epochs[1] != epochs[2]
    # The same noise images come back with other crops/flips in the next epoch.
    assert not np.array_equal(np.sort(batches[0]["high"], 0), np.sort(batches[1]["high"], 0))


def test_restored_state_resumes_exactly_across_epochs():
    uninterrupted = _take(_iterator(), 9)
    first = _iterator()
    _take(first, 4)
    state = first.get_state()
    resumed = _iterator()
    resumed.set_state(state)
    _assert_same(_take(resumed, 5), uninterrupted[4:])  # 10 images, batch 4: crosses epochs


def test_orbax_checkpoint_manager_saves_and_restores_the_iterator(tmp_path):
    uninterrupted = _take(_iterator(), 6)
    iterator = _iterator()
    _take(iterator, 2)
    model = {"w": np.arange(3.0, dtype=np.float32)}
    with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
        manager.save(
            2,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(model),
                data=grain.checkpoint.CheckpointSave(iterator),
            ),
        )
        manager.wait_until_finished()
    _take(iterator, 1)  # moves on after the save; the restore must not see this

    fresh = _iterator()
    with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
        restored = manager.restore(
            manager.latest_step(),
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(model),
                data=grain.checkpoint.CheckpointRestore(fresh),
            ),
        )
    np.testing.assert_array_equal(restored.state["w"], model["w"])
    assert restored.data is fresh
    _assert_same(_take(fresh, 4), uninterrupted[2:])


@pytest.mark.parametrize("count", [12, 13])
def test_processes_see_disjoint_examples_that_cover_each_domain(count):
    source = _constant_source(count)
    seen = []
    for process in (0, 1):
        iterator = _iterator(source, source, process_index=process, process_count=2)
        batches = _take(iterator, 3)  # 3 x 2 = 6 examples: one epoch of a 6- or 7-image shard
        assert batches[0]["low"].shape == (2, 16, 16, 3)
        seen.append({i for b in batches for i in _indices(b["low"])})
    assert not seen[0] & seen[1]
    if count == 12:
        assert seen[0] | seen[1] == set(range(count))


def test_processes_rows_make_up_the_one_process_global_batch():
    # What lets a multi-process run (and a resumed one on another process count) train on
    # exactly the batches of a single-process run.
    single = _take(_iterator(global_batch_size=4), 5)
    parts = [
        _take(_iterator(global_batch_size=4, process_index=p, process_count=2), 5) for p in (0, 1)
    ]
    for t in range(5):
        for domain in ("low", "high"):
            joined = np.concatenate([parts[0][t][domain], parts[1][t][domain]])
            np.testing.assert_array_equal(joined, single[t][domain])


def test_eval_dataset_is_ordered_unbatched_and_sharded():
    source = _constant_source(7)
    everything = eval_dataset(source, process_index=0, process_count=1)
    assert [r["id"] for r in everything] == [f"x{i}" for i in range(7)]
    shards = [eval_dataset(source, process_index=p, process_count=2) for p in (0, 1)]
    ids = [[r["id"] for r in shard] for shard in shards]
    assert len(ids[0]) == 4 and len(ids[1]) == 3
    assert sorted(ids[0] + ids[1]) == sorted(r["id"] for r in everything)
    assert everything[2]["image"].shape == (40, 56, 3)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="not divisible"):
        _iterator(global_batch_size=3, process_count=2)
    with pytest.raises(ValueError, match="no low images"):
        train_iterator(_constant_source(0), _constant_source(2), global_batch_size=2,
                       process_index=1, process_count=2)  # fmt: skip
    with pytest.raises(ValueError, match="process_index"):
        eval_dataset(_constant_source(2), process_index=2, process_count=2)


def test_random_crop_of_a_small_image_takes_its_largest_square():
    rng = np.random.default_rng(0)
    image = np.zeros((20, 50, 3), np.uint8)
    image[:, 25:] = 255  # right half white
    out = pipeline.random_crop_resize_flip(image, rng, crop_size=32, image_size=10)
    assert out.shape == (10, 10, 3)
    # A 20x20 square of a 20x50 image: some crops straddle the edge; all stay in [-1, 1].
    outs = [pipeline.random_crop_resize_flip(image, rng, 32, 10) for _ in range(50)]
    assert all(o.min() >= -1 and o.max() <= 1 for o in outs)
    assert any(o.mean() == -1 for o in outs) and any(o.mean() == 1 for o in outs)


def test_resize_is_antialiased():
    # A one-pixel checkerboard shrunk 2x must become flat grey, not aliased stripes.
    board = (np.indices((32, 32)).sum(0) % 2 * 255).astype(np.uint8)
    image = np.repeat(board[..., None], 3, -1)
    out = pipeline.random_crop_resize_flip(image, np.random.default_rng(0), 32, 16)
    assert np.abs(out).max() < 0.05


def test_hold_in_memory_decodes_once_and_respects_available_memory(monkeypatch):
    class Counting:
        def __init__(self):
            self.reads = 0

        def __len__(self):
            return 5

        def __getitem__(self, index):
            self.reads += 1
            return {"id": str(index), "image": np.full((4, 4, 3), index, np.uint8)}

    source = Counting()
    held = pipeline.hold_in_memory(source, workers=2)
    assert isinstance(held, InMemorySource) and held.ids == ["0", "1", "2", "3", "4"]
    assert held.nbytes == 5 * 48
    reads = source.reads
    assert [held[i]["image"][0, 0, 0] for i in range(5)] == [0, 1, 2, 3, 4]
    assert source.reads == reads  # served from memory
    assert pipeline.hold_in_memory(held) is held

    monkeypatch.setattr(pipeline, "available_memory", lambda: 100)
    assert pipeline.hold_in_memory(Counting()).__class__ is Counting  # too big: read through
    assert isinstance(pipeline.hold_in_memory(Counting(), force=True), InMemorySource)
