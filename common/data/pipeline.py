"""grain pipelines: QAGAN's two unpaired training streams, and the val/test reader.

Training (`spec/qagan.md` §7): each step draws `global_batch_size` low and as many high images,
independently; per image a random square crop of `crop_size` (256), an antialiased resize to
`image_size` (128), random horizontal and vertical flips, scaled to [-1, 1].

* Two streams, one per domain, each with its own seeds: a global shuffle reshuffled every
  epoch (grain's `shuffle` then `repeat`), and a per-example random generator that grain
  derives from the seed and the example's position in the endless stream, so every epoch
  gets new crops and flips. The streams are zipped batch by batch into one grain pipeline
  whose iterator state is a single position: restoring it resumes exactly.
* Multi-host: every process walks the same global stream of examples and prepares only its
  rows of each global batch (process p: rows [p * b, (p + 1) * b), b = global batch / process
  count), so the global batches are those of a single process, whatever the process count.
* Decoded once: with no worker processes, each domain is decoded into host memory when it fits
  (FiveK's 2250 training images at short side 512 are ~2.5 GB per domain, on every host);
  otherwise examples are read (and PNG-decoded) through the source by the workers.
* The crop comes first and only the crop is resized, with Pillow's bilinear filter, which
  widens its support when shrinking (antialiased; torchvision's `Resize` on PIL images, as in
  the authors' PyTorch code, is the same filter).
"""

from __future__ import annotations

import logging
import time

import grain
import numpy as np
from PIL import Image

from common.data import records

logger = logging.getLogger(__name__)

# Hold a domain in memory when its decoded size is below this fraction of available memory.
IN_MEMORY_FRACTION = 0.5


class InMemorySource:
    """Records held in host memory: a random-access source (`len`, `[i]`) grain can read."""

    def __init__(self, records_: list[dict]):
        self._records = list(records_)

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> dict:
        return self._records[index]

    @property
    def ids(self) -> list[str]:
        """The records' ids, in order."""
        return [r["id"] for r in self._records]

    @property
    def nbytes(self) -> int:
        """Bytes of the arrays held."""
        return sum(_record_nbytes(r) for r in self._records)

    def __repr__(self) -> str:
        return f"InMemorySource({len(self)} records, {self.nbytes / 2**20:.0f} MiB)"


def _record_nbytes(record: dict) -> int:
    return sum(v.nbytes for v in record.values() if isinstance(v, np.ndarray))


def available_memory() -> int | None:
    """MemAvailable of /proc/meminfo in bytes (Linux), else None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def hold_in_memory(source, *, force: bool = False, workers: int | None = None):
    """Decodes every record of `source` once and returns them as an `InMemorySource`.

    Unless `force`, a source whose decoded size (estimated from its first record) exceeds
    `IN_MEMORY_FRACTION` of the available memory is returned unchanged (and read through).
    An `InMemorySource` is returned as it is.
    """
    if isinstance(source, InMemorySource):
        return source
    count = len(source)
    estimate = count * _record_nbytes(source[0])
    available = available_memory()
    if not force and available is not None and estimate > IN_MEMORY_FRACTION * available:
        logger.info(
            "%d records (~%.1f GiB decoded) do not fit in memory (%.1f GiB available); reading "
            "them through the source",
            count,
            estimate / 2**30,
            available / 2**30,
        )
        return source
    start = time.perf_counter()
    held = InMemorySource(records.ordered_map(source.__getitem__, range(count), workers))
    logger.info(
        "Decoded %d records into memory: %.2f GiB in %.1f s",
        count,
        held.nbytes / 2**30,
        time.perf_counter() - start,
    )
    return held


def random_crop_resize_flip(
    image: np.ndarray, rng: np.random.Generator, crop_size: int, image_size: int
) -> np.ndarray:
    """QAGAN's training augmentation of one uint8 (H, W, 3) image.

    A random square crop of side min(crop_size, H, W) (an image whose short side is below
    `crop_size` gives its largest square), resized to image_size x image_size (Pillow
    bilinear, antialiased when shrinking), then flipped left-right and up-down, each with
    probability 1/2. Draws from `rng`, in order: top, left, the two flips.

    Returns:
      float32 (image_size, image_size, 3) in [-1, 1].
    """
    height, width = image.shape[:2]
    side = min(crop_size, height, width)
    top = rng.integers(0, height - side + 1)
    left = rng.integers(0, width - side + 1)
    crop = image[top : top + side, left : left + side]
    if side != image_size:
        crop = np.asarray(
            Image.fromarray(crop).resize((image_size, image_size), Image.Resampling.BILINEAR)
        )
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    if rng.random() < 0.5:
        crop = crop[::-1]
    return crop.astype(np.float32) * (2.0 / 255.0) - 1.0


class _Augment(grain.transforms.RandomMap):
    def __init__(self, crop_size: int, image_size: int):
        self.crop_size, self.image_size = crop_size, image_size

    def random_map(self, record: dict, rng: np.random.Generator) -> np.ndarray:
        return random_crop_resize_flip(record["image"], rng, self.crop_size, self.image_size)


def _as_batch(pair: tuple[np.ndarray, np.ndarray]) -> dict[str, np.ndarray]:
    return {"low": pair[0], "high": pair[1]}


def process_shard(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    """(process_index, process_count), each defaulting to JAX's; checked to be consistent."""
    if process_index is None or process_count is None:
        import jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    return process_index, process_count


def stream_seeds(seed: int, stream: int) -> tuple[int, int]:
    """(shuffle seed, augmentation seed) of stream 0 (low) or 1 (high), from the run's seed."""
    shuffle_seed, map_seed = np.random.SeedSequence([seed, stream]).generate_state(2)
    return int(shuffle_seed), int(map_seed)


def train_iterator(
    low,
    high,
    *,
    global_batch_size: int,
    crop_size: int = 256,
    image_size: int = 128,
    seed: int = 0,
    process_index: int | None = None,
    process_count: int | None = None,
    worker_count: int = 0,
    in_memory: bool | None = None,
    read_threads: int = 2,
    prefetch_batches: int = 4,
) -> grain.DatasetIterator:
    """QAGAN's endless training batches from two unpaired sources.

    Args:
      low, high: random-access sources of `{"image": uint8 (H, W, 3), ...}` (e.g.
        `fivek_source(..., "train_low")`, `folder_source(...)`).
      global_batch_size: images per domain per step over all processes.
      crop_size: side of the random square crop (paper: 256).
      image_size: side after the resize (paper: 128).
      seed: the run's data seed; the same seed gives the same batches.
      process_index, process_count: this process and the number of processes (default
        `jax.process_index()`, `jax.process_count()`).
      worker_count: grain worker processes (0: in this process, with `read_threads`
        threads). On a 2-core CPU use 0: with the images in memory this delivers 400-600
        images/s there (`benchmarks/data_bench.py`; the paper step needs about 1), and the
        cores are the training step's. Workers are spawned
        processes that read the source themselves; grain reads its absl flags there, so
        run under absl's `app.run` (as the experiments do) or parse absl flags first.
      in_memory: hold each domain's decoded images in memory; None (default): when there are
        no worker processes and they fit (see `hold_in_memory`). With workers, every worker
        would get its own copy.
      read_threads, prefetch_batches: threads preparing batches ahead of the training step,
        and how many batches they may prepare.

    Returns:
      An endless grain `DatasetIterator`; `next()` gives `{"low": x, "high": y}`, float32
      (global_batch_size // process_count, image_size, image_size, 3) in [-1, 1]. Its
      `get_state()` / `set_state()` save and restore the position: a pipeline made with the
      same arguments and restored yields exactly the batches the original would have.
      With Orbax, checkpoint it next to the model through grain's handler:

          manager = ocp.CheckpointManager(directory)
          manager.save(step, args=ocp.args.Composite(
              state=ocp.args.StandardSave(state),
              data=grain.checkpoint.CheckpointSave(iterator)))
          manager.restore(step, args=ocp.args.Composite(
              state=ocp.args.StandardRestore(abstract_state),
              data=grain.checkpoint.CheckpointRestore(iterator)))  # restores in place

      (`grain.checkpoint.CheckpointHandler` writes one JSON file per process.)

    Raises:
      ValueError: the batch does not divide among the processes, or a domain is empty.
    """
    process_index, process_count = process_shard(process_index, process_count)
    rows = local_rows(global_batch_size, process_count)
    hold = worker_count == 0 if in_memory is None else in_memory
    streams = []
    for stream, source in enumerate((low, high)):
        dataset = grain.MapDataset.source(source)
        if len(dataset) == 0:
            raise ValueError(f"no {('low', 'high')[stream]} images: the domain is empty")
        if hold:
            dataset = grain.MapDataset.source(hold_in_memory(dataset, force=in_memory is True))
        streams.append(
            global_stream(
                dataset,
                _Augment(crop_size, image_size),
                rows=rows,
                seeds=stream_seeds(seed, stream),
                process_index=process_index,
                process_count=process_count,
            )
        )
    batches = grain.experimental.ZipMapDataset(parents=streams).map(_as_batch)
    return to_iterator(
        batches,
        read_threads=read_threads,
        prefetch_batches=prefetch_batches,
        worker_count=worker_count,
    )


def local_rows(global_batch_size: int, process_count: int) -> int:
    """Rows of the global batch each process prepares; raises ValueError if they don't divide."""
    if global_batch_size % process_count:
        raise ValueError(
            f"global_batch_size {global_batch_size} is not divisible by the {process_count} "
            "processes"
        )
    return global_batch_size // process_count


def global_stream(
    dataset: grain.MapDataset,
    augment: grain.transforms.RandomMap,
    *,
    rows: int,
    seeds: tuple[int, int],
    process_index: int,
    process_count: int,
) -> grain.MapDataset:
    """One endless, shuffled, augmented stream of this process's batches (module docstring).

    Args:
      dataset: the examples.
      augment: per-example random transformation (grain draws its generator from `seeds[1]`
        and the example's position in the endless stream).
      rows: examples per process per step (`local_rows`).
      seeds: (shuffle seed, augmentation seed), e.g. `stream_seeds(seed, stream)`.
      process_index, process_count: this process and the number of processes.

    Returns:
      A `MapDataset` whose element t is this process's rows of global batch t.
    """
    shuffle_seed, map_seed = seeds
    # One global stream of examples (the shuffle and each example's random draws depend only
    # on its position in it), cut into blocks of `rows`: step t of process p is block
    # t * process_count + p, i.e. rows [p * rows, (p + 1) * rows) of the global batch t.
    # So any number of processes sees exactly the global batches of one process, and each
    # process prepares only its own rows.
    return (
        dataset.shuffle(seed=shuffle_seed)
        .repeat()
        .random_map(augment, seed=map_seed)
        .batch(rows, drop_remainder=True)[process_index::process_count]
    )


def to_iterator(
    batches: grain.MapDataset,
    *,
    read_threads: int = 2,
    prefetch_batches: int = 4,
    worker_count: int = 0,
) -> grain.DatasetIterator:
    """The saveable grain iterator over `batches`: `read_threads` threads preparing up to
    `prefetch_batches` ahead, or `worker_count` worker processes (see `train_iterator`)."""
    pipeline = batches.to_iter_dataset(
        grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=prefetch_batches)
    )
    if worker_count:
        pipeline = pipeline.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
    return iter(pipeline)


def eval_dataset(source, *, process_index=None, process_count=None) -> grain.MapDataset:
    """Val/test records in a fixed order, unbatched, at full size.

    Args:
      source: e.g. `fivek_source(..., "test")`: records `{"id", "image": uint8, "label":
        uint8}`.
      process_index, process_count: this process's shard `process_index::process_count`
        (default `jax.process_index()`, `jax.process_count()`); shards differ in length by at
        most one.

    Returns:
      A grain `MapDataset` (`len`, `[i]`, iterable) of the records, in the source's order.
    """
    process_index, process_count = process_shard(process_index, process_count)
    return grain.MapDataset.source(source)[process_index::process_count]
