r"""Same-machine eager PyTorch reference for PIEA's speed figures; prints one JSON document.

    python benchmarks/torch_reference_piea.py            # the full run (~11 min, shared 2-core CPU)
    python benchmarks/torch_reference_piea.py --quick    # batch 1 only, chain at 333×500 only
    python benchmarks/torch_reference_piea.py --render-only  # full-resolution render, 12/24 MP

PyTorch is not a project dependency, and this script imports neither jax nor the project: it is
a self-contained port, so anyone can rerun the reference next to `benchmarks/piea_bench.py` on
the same machine instead of quoting figures measured elsewhere. To get PyTorch here:

    python3 -m venv /tmp/tvenv && /tmp/tvenv/bin/pip install torch==2.13.0 numpy scikit-image
    /tmp/tvenv/bin/python benchmarks/torch_reference_piea.py    # from the repository root

Measures, in float32 with PyTorch's default thread count (progress goes to stderr):
  * the machine's peak: a 4096×4096 @ 4096×4096 matmul, best of 5, in GFLOP/s;
  * PIEA's search as an eager PyTorch loop, the work of `piea_jax.enhance` with a NIMA guider:
    batches of 1, 4 and 8 skimage photos at 333×500, darkened (× 0.35), searched on a 256×384
    preview; per-image raw parameters through `to_physical` and the eight filters (ported
    exactly from `piea_jax/params.py` and `piea_jax/filters.py`), clipped to [0, 1], resized to
    224×224 (antialiased bilinear, inside the graph) and scored by a NIMA with RANDOM frozen
    weights (`--guiders`: `vgg16`, VGG16 features to pool5, global average pool,
    Dense(512→10); `mobilenet_v2`, nima.pytorch v1's MobileNetV2, ReLU, Dense(1280→10);
    softmax, mean score); loss (10 − S)² summed over the batch, `torch.optim.SGD(lr=1e-3)`,
    M = 20 steps, then one final scoring forward. Steady seconds per call after a two-step
    warm-up call (eager PyTorch compiles nothing; the same shapes warm every kernel), a time
    split of one batch-8 step (the model, resize and filter chain, forward and backward
    each), and the model's forward + input gradient at 224×224 alone, batch 8, in both memory
    formats (the faster one runs the search);
  * the filter chain alone (all eight filters away from their identity; forward + gradient of
    the per-image mean with respect to the raw parameters) on random images, 333×500 batch 8
    and 3000×4000 (12 MP) batch 1, eager and with `torch.compile` (inductor) when it works;
  * with --render-only, only the full-resolution render (the chain forward, clipped, no
    gradient) of 4 random images at 12 MP and at 24 MP, eager and `torch.compile`, in
    megapixels per second (`piea_bench.py`'s "render" rows measure JAX on the same work).
The CPU may be shared with other work: the load average is recorded before and after.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import sys
import time

try:
    import numpy as np
    import skimage.data
    import skimage.transform
    import torch
    import torch.nn.functional as F
    from torch import nn
except ImportError as error:
    sys.exit(
        f"torch_reference_piea.py needs PyTorch, numpy and scikit-image ({error}). PyTorch is not "
        "a project dependency; see this file's docstring for a venv that has them."
    )

FIVEK_SHAPE = (333, 500)
PREVIEW = 256
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")  # cycled to fill a batch
DARKEN = 0.35
STEPS = 20
LEARNING_RATE = 1e-3
MAX_SCORE = 10.0
NIMA_INPUT = 224
# Steps of the warm-up search call: the shapes and kernels of the timed call, in less time.
WARMUP_STEPS = 2

# --- The filter chain, ported from piea_jax/filters.py and piea_jax/params.py ------------------
# Images are (N, 3, H, W); every parameter has a leading image axis N.

LUMINANCE_WEIGHTS = (0.27, 0.67, 0.06)
CURVE_SEGMENTS = 8
GAMMA_FLOOR = 1e-3
FILTER_ORDER = (
    "exposure",
    "gamma",
    "white_balance",
    "saturation",
    "tone_curve",
    "contrast",
    "black_and_white",
    "color_curve",
)
RAW_SHAPES = {
    "exposure": (),
    "gamma": (),
    "white_balance": (2,),
    "saturation": (),
    "tone_curve": (CURVE_SEGMENTS,),
    "contrast": (),
    "black_and_white": (),
    "color_curve": (3, CURVE_SEGMENTS),
}
MAX_EXPOSURE_EV = 3.5
MAX_LOG3_GAMMA = 1.0
MAX_LOG_WB_GAIN = 0.5
TONE_SLOPE_CENTRE, TONE_SLOPE_RANGE = 1.25, 0.75
COLOR_SLOPE_RANGE = 0.1
INITIAL_EXPOSURE_EV = 1.0


def initial_raw_params(batch: int) -> dict[str, torch.Tensor]:
    """PIEA's start for `batch` images: zeros except exposure = +1 EV."""
    raw = {name: torch.zeros(batch, *shape) for name, shape in RAW_SHAPES.items()}
    raw["exposure"] += math.atanh(INITIAL_EXPOSURE_EV / MAX_EXPOSURE_EV)
    return raw


def to_physical(raw: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Raw -> physical parameters, as `piea_jax.params.to_physical`."""
    wb = torch.exp(MAX_LOG_WB_GAIN * torch.tanh(raw["white_balance"]))
    return {
        "exposure": MAX_EXPOSURE_EV * torch.tanh(raw["exposure"]),
        "gamma": 3.0 ** (MAX_LOG3_GAMMA * torch.tanh(raw["gamma"])),
        "white_balance": torch.cat([torch.ones_like(wb[..., :1]), wb], dim=-1),
        "saturation": torch.tanh(raw["saturation"]),
        "tone_curve": TONE_SLOPE_CENTRE + TONE_SLOPE_RANGE * torch.tanh(raw["tone_curve"]),
        "contrast": torch.tanh(raw["contrast"]),
        "black_and_white": torch.tanh(raw["black_and_white"]),
        "color_curve": 1.0 + COLOR_SLOPE_RANGE * torch.tanh(raw["color_curve"]),
    }


def _per_image(p):
    """A per-image scalar (N,) as (N, 1, 1, 1), to broadcast against (N, 3, H, W)."""
    return p.view(-1, 1, 1, 1)


def luminance(x):
    """0.27 R + 0.67 G + 0.06 B over axis 1, kept: (N, 3, ...) -> (N, 1, ...)."""
    r, g, b = LUMINANCE_WEIGHTS
    return r * x[:, 0:1] + g * x[:, 1:2] + b * x[:, 2:3]


def exposure(x, ev):
    return x * torch.exp2(_per_image(ev))


def gamma(x, g):
    return torch.exp(_per_image(g) * torch.log(torch.clamp_min(x, GAMMA_FLOOR)))


def white_balance(x, gains):
    return x * (gains / (1e-5 + luminance(gains)))[..., None, None]


def saturation(x, s):
    c = torch.clamp_max(x, 1.0)
    r, g, b = c[:, 0:1], c[:, 1:2], c[:, 2:3]
    v = torch.maximum(torch.maximum(r, g), b)
    m = torch.minimum(torch.minimum(r, g), b)
    chroma = v - m
    k = 0.8 * (0.5 - torch.abs(0.5 - v))
    m_over_chroma = m / torch.where(chroma > 0, chroma, math.inf)
    return x - (_per_image(s) * k * m_over_chroma) * (v - c)


def _curve(x, slopes):
    """The O(1) piecewise-linear curve of `piea_jax.filters._curve`: slopes (N, K) for one
    curve per image, or (N, 3, K) for one per channel; a gather from the per-image table. Its
    gradient in x is the literal K-term sum's under torch.clamp (spec/piea.md §2), knots
    included: at an interior knot two segments sit on a bound, so t_{i-1} + t_i."""
    k = slopes.shape[-1]
    normalised = slopes / slopes.sum(dim=-1, keepdim=True)
    before = normalised.cumsum(dim=-1) - normalised
    # Slope of the segment below each knot; times frac = 0 at the knot, so no value changes.
    below = F.pad(normalised[..., :-1], (1, 0)).detach()
    u = torch.clamp(x * k, 0.0, k)
    segment = torch.clamp_max(torch.floor(u), k - 1).detach()  # floor has zero gradient
    frac = u - segment
    if slopes.ndim == 3:  # one table per channel, flattened: index = channel · K + segment
        segment = segment + k * torch.arange(slopes.shape[1], dtype=x.dtype).view(1, -1, 1, 1)
    index = segment.long().flatten(1)
    n = x.shape[0]
    frac = frac.flatten(1)
    slope = normalised.reshape(n, -1).gather(1, index)
    slope = slope + torch.where(frac == 0, below.reshape(n, -1).gather(1, index), 0.0)
    out = before.reshape(n, -1).gather(1, index) + slope * frac
    return out.view_as(x)


def contrast(x, a):
    lum = torch.clamp(luminance(x), 0.0, 1.0)
    ratio = 0.5 * (1.0 - torch.cos(math.pi * lum)) / (lum + 1e-6)
    return x * (1.0 + _per_image(a) * (ratio - 1.0))


def black_and_white(x, b):
    return x + _per_image(b) * (luminance(x) - x)


FILTERS = {
    "exposure": exposure,
    "gamma": gamma,
    "white_balance": white_balance,
    "saturation": saturation,
    "tone_curve": _curve,
    "contrast": contrast,
    "black_and_white": black_and_white,
    "color_curve": _curve,
}


def apply_filters(images, physical):
    """The chain in `FILTER_ORDER` on (N, 3, H, W) images; no final clip."""
    x = images
    for name in FILTER_ORDER:
        x = FILTERS[name](x, physical[name])
    return x


# --- NIMA with a VGG16 backbone, random weights -------------------------------------------------

VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class NimaVGG16(nn.Module):
    """torchvision's VGG16 `features` (to pool5) + global average pool + Dense(512→10) +
    softmax -> mean score Σ i·p_i on (N, 3, 224, 224) images in [0, 1]. Random weights
    (torchvision's init: Kaiming-normal fan-out, zero bias), frozen."""

    def __init__(self, memory_format: torch.memory_format):
        super().__init__()
        layers, in_ch = [], 3
        for item in VGG16:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                conv = nn.Conv2d(in_ch, item, 3, padding=1)
                nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(conv.bias)
                layers += [conv, nn.ReLU(inplace=True)]
                in_ch = item
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(in_ch, 10)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self.register_buffer("scores", torch.arange(1.0, 11.0))
        self.memory_format = memory_format
        self.to(memory_format=memory_format).eval().requires_grad_(False)

    def forward(self, x):
        x = ((x - self.mean) / self.std).contiguous(memory_format=self.memory_format)
        pooled = self.features(x).mean(dim=(2, 3))
        return torch.softmax(self.head(pooled), dim=-1) @ self.scores


# --- NIMA with nima.pytorch v1's MobileNetV2, random weights --------------------------------------

# (expansion t, channels c, repeats n, first stride s), as `common.mobilenet.MOBILENET_V2_BLOCKS`.
MOBILENET_V2_BLOCKS = (
    (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
    (6, 320, 1, 1),
)  # fmt: skip


def _conv_bn(cin, cout, kernel, stride=1, groups=1, act=None):
    layers = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
              nn.BatchNorm2d(cout)]  # fmt: skip
    return nn.Sequential(*layers, *([act(inplace=True)] if act else []))


class _InvertedResidual(nn.Module):
    def __init__(self, cin, cout, stride, t):
        super().__init__()
        h = cin * t
        self.residual = stride == 1 and cin == cout
        self.conv = nn.Sequential(
            _conv_bn(cin, h, 1, act=nn.ReLU6),
            _conv_bn(h, h, 3, stride, groups=h, act=nn.ReLU6),
            _conv_bn(h, cout, 1),
        )

    def forward(self, x):
        return x + self.conv(x) if self.residual else self.conv(x)


class NimaMobileNetV2(nn.Module):
    """nima.pytorch v1's NIMA (`common.mobilenet.make_nima_mobilenet_v2`): MobileNetV2 features
    (the t = 1 block keeps its expansion; ReLU on the stem and the last 1×1 conv, ReLU6
    inside the blocks), 7×7 average pool, ReLU, Linear(1280→10), softmax -> mean score, on
    (N, 3, 224, 224) images in [0, 1] without normalisation (UEGAN's protocol). Random weights
    (Kaiming-normal fan-in convs, as `common.mobilenet.he_normal`: fan-out would shrink the
    activations to denormals through the depthwise convs), batch norm in eval mode, frozen."""

    def __init__(self, memory_format: torch.memory_format):
        super().__init__()
        layers, cin = [_conv_bn(3, 32, 3, 2, act=nn.ReLU)], 32
        for t, c, n, s in MOBILENET_V2_BLOCKS:
            for i in range(n):
                layers.append(_InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        layers += [_conv_bn(cin, 1280, 1, act=nn.ReLU), nn.AvgPool2d(7)]
        self.features = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
        self.head = nn.Linear(1280, 10)
        self.register_buffer("scores", torch.arange(1.0, 11.0))
        self.memory_format = memory_format
        self.to(memory_format=memory_format).eval().requires_grad_(False)

    def forward(self, x):
        pooled = self.features(x.contiguous(memory_format=self.memory_format)).flatten(1)
        return torch.softmax(self.head(torch.relu(pooled)), dim=-1) @ self.scores


NIMA_MODELS = {"vgg16": NimaVGG16, "mobilenet_v2": NimaMobileNetV2}


def resize(x, shape):
    return F.interpolate(x, size=shape, mode="bilinear", antialias=True, align_corners=False)


def guider(model, images):
    """Mean scores (N,) of (N, 3, H, W) images, resized to 224×224 inside the graph."""
    return model(resize(images, (NIMA_INPUT, NIMA_INPUT)))


def render(previews, raw):
    return torch.clamp(apply_filters(previews, to_physical(raw)), 0.0, 1.0)


def search(model, previews, steps):
    """PIEA's search on (N, 3, h, w) previews -> (initial scores, final scores)."""
    raw = {k: v.requires_grad_() for k, v in initial_raw_params(len(previews)).items()}
    optimizer = torch.optim.SGD(raw.values(), lr=LEARNING_RATE)
    for step in range(steps):
        optimizer.zero_grad(set_to_none=True)
        scores = guider(model, render(previews, raw))
        if step == 0:
            initial = scores.detach()
        torch.sum((MAX_SCORE - scores) ** 2).backward()
        optimizer.step()
    with torch.no_grad():
        return initial, guider(model, render(previews, raw))


# --- Measurements --------------------------------------------------------------------------------


def _log(message) -> None:
    print(message if isinstance(message, str) else json.dumps(message), file=sys.stderr, flush=True)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _timed(fn, repeats: int) -> float:
    """Minimum wall time over `repeats` calls (the least disturbed by other load)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def machine_peak(n: int = 4096, repeats: int = 5) -> dict:
    a, b = torch.rand(n, n), torch.rand(n, n)
    torch.mm(a, b)  # warm-up
    seconds = _timed(lambda: torch.mm(a, b), repeats)
    gflops = 2 * n**3 / seconds / 1e9
    return {"matmul_n": n, "best_s": round(seconds, 4), "gflops": round(gflops, 1)}


def _photos(batch: int) -> torch.Tensor:
    out = []
    for k in range(batch):
        x = getattr(skimage.data, PHOTOS[k % len(PHOTOS)])()[..., :3] / 255.0
        out.append(skimage.transform.resize(x, FIVEK_SHAPE, anti_aliasing=True) * DARKEN)
    return torch.from_numpy(np.stack(out).astype(np.float32)).permute(0, 3, 1, 2).contiguous()


def preview_shape(shape, size: int) -> tuple[int, int]:
    """Short side `size`, aspect kept, never upscaled (`piea_jax.enhance.preview_shape`)."""
    h, w = shape
    scale = min(1.0, size / min(h, w))
    return max(1, round(h * scale)), max(1, round(w * scale))


def bench_search(model, batch: int, steps: int, repeats: int) -> dict:
    images = _photos(batch)
    shape = preview_shape(FIVEK_SHAPE, PREVIEW)
    previews = resize(images, shape)
    search(model, previews, WARMUP_STEPS)
    results = []
    steady_s = _timed(lambda: results.append(search(model, previews, steps)), repeats)
    initial, final = results[-1]
    return {
        "batch": batch,
        "search_resolution": f"{shape[0]}x{shape[1]}",
        "steps": steps,
        "repeats": repeats,
        "steady_s": round(steady_s, 3),
        "s_per_image": round(steady_s / batch, 3),
        "images_per_s": round(batch / steady_s, 3),
        "peak_rss_mb_so_far": round(_peak_rss_mb(), 1),
        "score_gain_mean": round(float((final - initial).mean()), 4),
    }


def vgg_input_grad(model, batch: int, repeats: int) -> dict:
    """NIMA forward + gradient of the summed mean scores w.r.t. a random 224 input."""
    x = torch.rand(batch, 3, NIMA_INPUT, NIMA_INPUT, requires_grad=True)

    def forward_backward():
        return torch.autograd.grad(model(x).sum(), x)

    def forward():
        with torch.no_grad():
            return model(x)

    out = {}
    for name, fn in (("forward_and_input_grad", forward_backward), ("forward_only", forward)):
        fn()
        out[name + "_s"] = round(_timed(fn, repeats), 4)
    return out


def profile_step(model, batch: int, repeats: int, label: str = "vgg16") -> dict:
    """Seconds of each piece of ONE search step at `batch`, split by cutting the graph between
    the pieces (each piece's backward is run on its own from the next piece's input gradient)."""
    previews = resize(_photos(batch), preview_shape(FIVEK_SHAPE, PREVIEW))
    raw = {k: v.requires_grad_() for k, v in initial_raw_params(batch).items()}
    times = {}

    def lap(name, start):
        times.setdefault(name, []).append(time.perf_counter() - start)
        return time.perf_counter()

    for _ in range(repeats + 1):  # the first round warms up
        t = time.perf_counter()
        rendered = render(previews, raw)
        t = lap("filter_chain_forward", t)
        cut1 = rendered.detach().requires_grad_()
        small = resize(cut1, (NIMA_INPUT, NIMA_INPUT))
        t = lap("resize_forward", t)
        cut2 = small.detach().requires_grad_()
        loss = torch.sum((MAX_SCORE - model(cut2)) ** 2)
        t = lap(f"{label}_forward", t)
        loss.backward()
        t = lap(f"{label}_backward_to_input", t)
        small.backward(cut2.grad)
        t = lap("resize_backward", t)
        rendered.backward(cut1.grad)
        lap("filter_chain_backward", t)
        for r in raw.values():
            r.grad = None
    best = {name: min(ts[1:]) for name, ts in times.items()}
    out = {name + "_s": round(seconds, 4) for name, seconds in best.items()}
    for piece in ("filter_chain", "resize", label):
        pair = [seconds for name, seconds in best.items() if name.startswith(piece)]
        out[piece + "_forward_and_backward_s"] = round(sum(pair), 4)
    out["step_total_s"] = round(sum(best.values()), 4)
    return out


def _chain_inputs(shape, batch):
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(batch, 3, *shape, generator=generator)
    # Every filter away from its identity, so none can be skipped.
    raw = {k: v + 0.1 for k, v in initial_raw_params(batch).items()}
    raw["tone_curve"] = raw["tone_curve"] + torch.linspace(-0.3, 0.3, CURVE_SEGMENTS)
    raw["color_curve"] = raw["color_curve"] + torch.linspace(-0.3, 0.3, CURVE_SEGMENTS)
    return images, {k: v.requires_grad_() for k, v in raw.items()}


def _chain_loss(raw, images):
    return apply_filters(images, to_physical(raw)).mean(dim=(1, 2, 3)).sum()


def bench_chain(shape, batch: int, repeats: int) -> dict:
    images, raw = _chain_inputs(shape, batch)

    def value_and_grad(loss_fn):
        return lambda: torch.autograd.grad(loss_fn(raw, images), list(raw.values()))

    eager = value_and_grad(_chain_loss)
    grads = eager()  # warm-up
    out = {
        "shape": f"{batch}x{shape[0]}x{shape[1]}x3",
        "eager_s": round(_timed(eager, repeats), 4),
        "eager_gradients_finite": all(bool(torch.isfinite(g).all()) for g in grads),
    }
    try:
        compiled = value_and_grad(torch.compile(_chain_loss, dynamic=False))
        start = time.perf_counter()
        grads = compiled()
        out["torch_compile_first_call_s"] = round(time.perf_counter() - start, 2)
        out["torch_compile_s"] = round(_timed(compiled, repeats), 4)
        out["torch_compile_gradients_finite"] = all(bool(torch.isfinite(g).all()) for g in grads)
        out["eager_over_compile"] = round(out["eager_s"] / out["torch_compile_s"], 2)
    except Exception as error:  # inductor needs a working C++ toolchain; report, go on
        out["torch_compile_error"] = f"{type(error).__name__}: {error}"[:500]
    out["peak_rss_mb_so_far"] = round(_peak_rss_mb(), 1)
    return out


RENDER_SHAPES = {"12mp": (3000, 4000), "24mp": (4000, 6000)}
RENDER_BATCH = 4


def bench_render(shape, batch: int, repeats: int) -> dict:
    """Megapixels per second of the full-resolution render (the chain, forward only, clipped)
    of (batch, 3, H, W) images with every filter active: eager and `torch.compile`."""
    images, raw = _chain_inputs(shape, batch)
    with torch.no_grad():
        physical = to_physical({k: v.detach() for k, v in raw.items()})

        def forward(x, p):
            return torch.clamp(apply_filters(x, p), 0.0, 1.0)

        megapixels = batch * shape[0] * shape[1] / 1e6
        out = {"shape": f"{batch}x3x{shape[0]}x{shape[1]}"}
        forward(images, physical)  # warm-up
        seconds = _timed(lambda: forward(images, physical), repeats)
        out["eager_s"] = round(seconds, 3)
        out["eager_mp_per_s"] = round(megapixels / seconds, 1)
        try:
            compiled = torch.compile(forward, dynamic=False)
            start = time.perf_counter()
            compiled(images, physical)
            out["torch_compile_first_call_s"] = round(time.perf_counter() - start, 2)
            seconds = _timed(lambda: compiled(images, physical), repeats)
            out["torch_compile_s"] = round(seconds, 3)
            out["torch_compile_mp_per_s"] = round(megapixels / seconds, 1)
        except Exception as error:  # inductor needs a working C++ toolchain; report, go on
            out["torch_compile_error"] = f"{type(error).__name__}: {error}"[:500]
    out["peak_rss_mb_so_far"] = round(_peak_rss_mb(), 1)
    return out


def bench_nima(label: str, batches, steps: int):
    """For the NIMA `label` ("vgg16", "mobilenet_v2"): forward + input gradient at 224 in both
    memory formats, the search at each batch with the faster format, and a step split."""
    batch = batches[-1]
    models, grads = {}, {"batch": batch}
    for name, memory_format in (
        ("contiguous", torch.contiguous_format),
        ("channels_last", torch.channels_last),
    ):
        torch.manual_seed(0)
        models[name] = NIMA_MODELS[label](memory_format)
        grads[name] = vgg_input_grad(models[name], batch, repeats=2)
        _log({f"{label}_224": name, **grads[name]})
    fastest = min(models, key=lambda n: grads[n]["forward_and_input_grad_s"])
    grads["search_uses"] = fastest
    rows = []
    for b in batches:
        row = {"guider": label} | bench_search(models[fastest], b, steps, 1 if b >= 8 else 2)
        rows.append(row)
        _log(row)
    split = profile_step(models[fastest], batch, repeats=2, label=label)
    split["batch"] = batch
    _log(split)
    return grads, rows, split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="batch 1 only, chain at 333×500")
    parser.add_argument("--steps", type=int, default=STEPS, help="optimiser steps M")
    parser.add_argument("--batch-sizes", default="1,4,8", help="comma-separated search batches")
    parser.add_argument(
        "--render-only", action="store_true", help="only the full-resolution render at 12/24 MP"
    )
    parser.add_argument(
        "--guiders", default="vgg16,mobilenet_v2", help="comma-separated NIMA backbones"
    )
    args = parser.parse_args()
    if args.render_only:
        report = {
            "conditions": {
                "cpu": platform.processor() or platform.machine(),
                "load_average_start": [round(v, 2) for v in os.getloadavg()],
                "torch": torch.__version__,
                "torch_threads": torch.get_num_threads(),
                "timing": "minimum wall time over repeats, after a warm-up call",
            },
            "render": {},
        }
        for name, shape in RENDER_SHAPES.items():
            row = bench_render(shape, RENDER_BATCH, 2)
            report["render"][f"{name}_batch{RENDER_BATCH}"] = row
            _log(row)
        report["conditions"]["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
        print(json.dumps(report, indent=1))
        return
    batches = (1,) if args.quick else tuple(int(b) for b in args.batch_sizes.split(","))
    torch.manual_seed(0)
    report = {
        "conditions": {
            "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "load_average_start": [round(v, 2) for v in os.getloadavg()],
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "dtype": "float32",
            "execution": "eager PyTorch (torch.compile only where named)",
            "steps": args.steps,
            "optimizer": f"torch.optim.SGD, lr {LEARNING_RATE}",
            "image_shape": list(FIVEK_SHAPE),
            "preview_short_side": PREVIEW,
            "nima": "vgg16: VGG16 features to pool5 + global average pool + Dense(512->10); "
            "mobilenet_v2: nima.pytorch v1's MobileNetV2 + ReLU + Dense(1280->10); "
            "224x224 antialiased bilinear resize inside the graph",
            "note": "random weights; skimage photos, not FiveK",
            "timing": "minimum wall time over repeats, after a warm-up call "
            f"({WARMUP_STEPS}-step for the search)",
        }
    }
    _log(report["conditions"])
    report["machine_peak"] = machine_peak()
    _log(report["machine_peak"])

    for label in args.guiders.split(","):
        grads, rows, split = bench_nima(label, batches, args.steps)
        if label == "vgg16":  # the keys this report has always had
            report["vgg16_224"], report["search"], report["search_step_split"] = grads, rows, split
        else:
            report[label] = {"input_grad_224": grads, "search": rows, "search_step_split": split}

    chains = {"333x500_batch8": (FIVEK_SHAPE, 8, 3)}
    if not args.quick:
        chains["12mp_batch1"] = ((3000, 4000), 1, 2)
    report["filter_chain"] = {}
    for name, (shape, batch, repeats) in chains.items():
        report["filter_chain"][name] = bench_chain(shape, batch, repeats)
        _log(report["filter_chain"][name])

    report["conditions"]["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    report["conditions"]["peak_rss_mb"] = round(_peak_rss_mb(), 1)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
