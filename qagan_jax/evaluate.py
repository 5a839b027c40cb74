"""QAGAN evaluation (spec/qagan.md section 8): G_H against expert C, beside the paper's Table 1.

`Enhancer` runs G_H of a training state on images of any size (reflection-padded to a multiple of
16 at the bottom and right, cropped back), batched and sharded over a mesh. `evaluate` scores a
paired split with PSNR and SSIM (`common.metrics`) under the protocol options that move the
numbers — 8-bit round trip, border crop, averaging over N or N − 1 (UEGAN) — always next to the
input-vs-expert baseline, and the NIMA mean score when a NIMA model is given. `format_table`
prints the result beside the paper's rows, labelled with the data and the weights behind it.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils

from common import metrics
from common.images import to_uint8
from qagan_jax import train

logger = logging.getLogger(__name__)

MULTIPLE = 16  # G_H's encoder pools four times
UEGAN_BORDER = 4  # UEGAN crops 4 pixels per side before PSNR / SSIM

# Paper Table 1 (FiveK, expert C, 400 test images at 512x512): PSNR, SSIM, NIMA.
PAPER_TABLE1 = {
    "Input": (17.21, 0.8012, 4.41),
    "CycleGAN": (20.53, 0.7786, 4.26),
    "Exposure": (19.59, 0.8361, 4.55),
    "UIE": (21.80, 0.8708, 4.53),
    "EnlightenGAN": (16.83, 0.7513, 4.18),
    "DPE": (22.28, 0.8542, 4.39),
    "QAGAN": (22.59, 0.8782, 4.58),
}


def pad_to_multiple(images_nhwc: np.ndarray, multiple: int = MULTIPLE) -> np.ndarray:
    """Reflection-pads (N, H, W, C) at the bottom and right to multiples of `multiple`."""
    _, h, w, _ = images_nhwc.shape
    pad_h, pad_w = -h % multiple, -w % multiple
    if not (pad_h or pad_w):
        return images_nhwc
    # numpy's reflect mode repeats the reflection when the pad exceeds the image (tiny inputs).
    return np.pad(images_nhwc, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="reflect")


class Enhancer:
    """G_H of a `train.TrainState` as a host function on images of any size.

    `enhancer(state, images)`: `images` is this process's (n, H, W, 3) array of one shape (uint8,
    or float in [0, 1]); returns G_H's outputs as float32 in [0, 1], shape (n, H, W, 3). It runs
    on this process's devices of `mesh` only (the batch split over them, padded to a multiple of
    their number): processes evaluate their own images independently, with no collective per
    batch, so their batches may differ in number and shape. One compiled program per padded
    shape and batch size; `state` may change between calls (same structure).
    """

    def __init__(self, state: train.TrainState, mesh, *, compiler_options=None):
        local = [d for d in mesh.devices.flat if d.process_index == jax.process_index()]
        self.mesh = train.make_mesh(local)
        self._spans_processes = len(local) < mesh.size
        self._fn = train.jit_eval_step(state, self.mesh, compiler_options=compiler_options)

    def __call__(self, state: train.TrainState, images: np.ndarray) -> np.ndarray:
        if self._spans_processes:  # this process's replica of the (replicated) state
            state = jax.tree.map(lambda x: x.addressable_data(0), state)
        images = np.asarray(images)
        if images.dtype == np.uint8:
            images = images.astype(np.float32) / 255.0
        n, h, w, _ = images.shape
        rows = -(-n // self.mesh.size) * self.mesh.size
        if n < rows:  # repeat the last image; dropped afterwards
            images = np.concatenate([images, np.repeat(images[-1:], rows - n, axis=0)])
        x = pad_to_multiple(images * 2.0 - 1.0)
        batch = jax.device_put(x, train.batch_sharding(self.mesh))
        out = np.asarray(self._fn(state, batch))
        return np.clip((out[:n, :h, :w] + 1.0) * 0.5, 0.0, 1.0)


@dataclasses.dataclass(frozen=True)
class ImageScores:
    """Per-image scores of one evaluated pair."""

    id: str
    psnr: float
    ssim: float
    psnr_border: float  # with UEGAN's 4-pixel border crop
    ssim_border: float
    input_psnr: float  # baseline: the input against expert C
    input_ssim: float
    input_psnr_border: float
    input_ssim_border: float


def score_pair(
    image_id: str, output, source, label, *, round_trip_8bit: bool = True
) -> ImageScores:
    """Scores one output against its expert label, and the input as the baseline (all [0, 1] or
    uint8 arrays of one shape). `round_trip_8bit` quantises the output like a saved PNG."""
    as_unit = lambda x: np.asarray(x, np.float32) / (255.0 if x.dtype == np.uint8 else 1.0)  # noqa: E731
    output = to_uint8(output) if round_trip_8bit else np.asarray(output, np.float32)
    output, source, label = as_unit(output), as_unit(np.asarray(source)), as_unit(np.asarray(label))
    b = UEGAN_BORDER
    return ImageScores(
        id=str(image_id),
        psnr=metrics.psnr(output, label),
        ssim=metrics.ssim(output, label),
        psnr_border=metrics.psnr(output, label, border=b),
        ssim_border=metrics.ssim(output, label, border=b),
        input_psnr=metrics.psnr(source, label),
        input_ssim=metrics.ssim(source, label),
        input_psnr_border=metrics.psnr(source, label, border=b),
        input_ssim_border=metrics.ssim(source, label, border=b),
    )


def _batches_by_shape(records: Iterable[Mapping], batch_size: int):
    """Consecutive records grouped into batches of one image shape (order kept)."""
    batch: list[Mapping] = []
    for record in records:
        if batch and (len(batch) == batch_size or record["image"].shape != batch[0]["image"].shape):
            yield batch
            batch = []
        batch.append(record)
    if batch:
        yield batch


def evaluate(
    enhancer: Callable[[np.ndarray], np.ndarray],
    records: Iterable[Mapping],
    *,
    round_trip_8bit: bool = True,
    border: int = 0,
    batch_size: int = 4,
    nima_score: Callable[[np.ndarray], np.ndarray] | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> dict:
    """Scores G_H on paired records `{"id", "image", "label"}` (uint8 (H, W, 3)).

    Args:
      enhancer: (n, H, W, 3) images -> G_H outputs in [0, 1] (an `Enhancer`).
      records: this process's share of the split (every process calls `evaluate` together).
      round_trip_8bit: quantise outputs to 8 bits first (as a saved PNG).
      border: the protocol's border crop for the headline numbers: 0 or 4 (UEGAN); both are
        computed and reported either way.
      batch_size: images per `enhancer` call (same-shape neighbours are batched).
      nima_score: (n, H, W, 3) float [0, 1] images -> (n,) NIMA mean scores, or None.
      on_batch: called with the number of images after each batch (progress bars).

    Returns:
      A JSON-able dict: `n`; `enhanced` and `input` (the baseline), each with `psnr`, `ssim`
      (means over N under the headline protocol), `psnr_n-1`/`ssim_n-1` (UEGAN's sum / (N − 1)),
      the same with and without the border crop, and `nima` when computed; `per_image` scores;
      `protocol`.
    """
    if border not in (0, UEGAN_BORDER):
        raise ValueError(f"border must be 0 or {UEGAN_BORDER}, got {border}")
    scores: list[ImageScores] = []
    nima_out: list[np.ndarray] = []
    nima_in: list[np.ndarray] = []
    nima_label: list[np.ndarray] = []
    for batch in _batches_by_shape(records, batch_size):
        images = np.stack([r["image"] for r in batch])
        outputs = enhancer(images)
        for record, output in zip(batch, outputs, strict=True):
            scores.append(
                score_pair(
                    record["id"], output, record["image"], record["label"],
                    round_trip_8bit=round_trip_8bit,
                )
            )  # fmt: skip
        if nima_score is not None:
            quantised = to_uint8(outputs).astype(np.float32) / 255.0 if round_trip_8bit else outputs
            nima_out.append(np.asarray(nima_score(quantised)))
            nima_in.append(np.asarray(nima_score(images.astype(np.float32) / 255.0)))
            labels = np.stack([r["label"] for r in batch]).astype(np.float32) / 255.0
            nima_label.append(np.asarray(nima_score(labels)))
        if on_batch is not None:
            on_batch(len(batch))
    table = _gather(scores)
    result = {
        "n": len(table["id"]),
        "protocol": {
            "round_trip_8bit": round_trip_8bit,
            "border": border,
            "average": "mean over N; *_n-1 divide the sum by N - 1 as UEGAN's script does",
            "psnr": "joint RGB MSE, data range 1",
            "ssim": "scikit-image defaults (7x7 uniform window, K1 0.01, K2 0.03, sample "
            "covariance, mean over channels)",
        },
        "enhanced": _summary(table, "", border),
        "input": _summary(table, "input_", border),
        "per_image": [
            {k: (v[i] if k == "id" else round(float(v[i]), 6)) for k, v in table.items()}
            for i in range(len(table["id"]))
        ],
    }
    if nima_score is not None:
        for name, values in (("enhanced", nima_out), ("input", nima_in), ("expert", nima_label)):
            gathered = _gather_values(np.concatenate(values) if values else np.zeros(0))
            result.setdefault(name, {})["nima"] = (
                float(np.mean(gathered)) if gathered.size else None
            )
    return result


def _gather(scores: Sequence[ImageScores]) -> dict[str, list]:
    """Per-image scores of every process, as columns (ids included), in process order."""
    fields = [f.name for f in dataclasses.fields(ImageScores) if f.name != "id"]
    values = np.array([[getattr(s, f) for f in fields] for s in scores], np.float64).reshape(
        -1, len(fields)
    )
    ids = [s.id for s in scores]
    if jax.process_count() > 1:
        values = _gather_values(values)
        ids = _gather_ids(ids)
    table = {"id": ids}
    table.update({f: values[:, k].tolist() for k, f in enumerate(fields)})
    return table


def _gather_values(values: np.ndarray) -> np.ndarray:
    """Concatenates every process's rows (rows may differ in number between processes)."""
    if jax.process_count() == 1:
        return values
    counts = multihost_utils.process_allgather(np.int32(len(values))).reshape(-1)
    most = int(counts.max())
    padded = np.zeros((most, *values.shape[1:]), values.dtype)
    padded[: len(values)] = values
    everything = multihost_utils.process_allgather(padded)
    return np.concatenate([everything[p, : counts[p]] for p in range(len(counts))])


def _gather_ids(ids: list[str]) -> list[str]:
    encoded = np.array([list(i.encode()[:64].ljust(64, b"\0")) for i in ids], np.uint8).reshape(
        -1, 64
    )
    return [bytes(row).rstrip(b"\0").decode() for row in _gather_values(encoded)]


def _summary(table: Mapping[str, list], prefix: str, border: int) -> dict:
    n = len(table["id"])
    out = {}
    for metric in ("psnr", "ssim"):
        for suffix, name in (("", metric), ("_border", f"{metric}_border{UEGAN_BORDER}")):
            values = np.asarray(table[f"{prefix}{metric}{suffix}"], np.float64)
            out[name] = float(values.mean()) if n else None
            out[f"{name}_n-1"] = float(values.sum() / (n - 1)) if n > 1 else None
        headline = f"{metric}_border{UEGAN_BORDER}" if border else metric
        out[metric] = out[headline]
        out[f"{metric}_n-1"] = out[f"{headline}_n-1"]
    return out


def _fmt(value, digits):
    return "—" if value is None else f"{value:.{digits}f}"


def format_table(
    result: Mapping,
    *,
    title: str,
    label: str = "QAGAN, this run",
    rows: Mapping[str, Mapping] | None = None,
) -> str:
    """A one-screen table: this run's rows (the input baseline first), then the paper's rows.

    `result` is `evaluate`'s output, shown as `label`; `rows` adds more labelled results before
    it (e.g. the first checkpoint: {"G_H at step 50": result_50}); `title` names the data, split
    and weights.
    """
    lines = [title, f"{'':34s}{'PSNR':>8s}{'SSIM':>9s}{'NIMA':>7s}"]

    def row(label, summary):
        lines.append(
            f"{label:34s}{_fmt(summary.get('psnr'), 2):>8s}{_fmt(summary.get('ssim'), 4):>9s}"
            f"{_fmt(summary.get('nima'), 2):>7s}"
        )

    row("Input (this data)", result["input"])
    for other_label, other in (rows or {}).items():
        row(other_label, other["enhanced"])
    row(label, result["enhanced"])
    lines.append("Paper, Table 1 (FiveK expert C, 400 images at 512x512):")
    for name in ("Input", "QAGAN"):
        psnr, ssim, nima = PAPER_TABLE1[name]
        row(f"  {name}", {"psnr": psnr, "ssim": ssim, "nima": nima})
    p = result["protocol"]
    e = result["enhanced"]
    lines.append(
        f"Protocol: {result['n']} images, 8-bit round trip "
        f"{'on' if p['round_trip_8bit'] else 'off'}, border {p['border']}, mean over N. "
        "UEGAN's (border 4, sum/(N-1)): PSNR "
        f"{_fmt(e.get('psnr_border4_n-1'), 2)}, SSIM {_fmt(e.get('ssim_border4_n-1'), 4)}."
    )
    return "\n".join(lines)
