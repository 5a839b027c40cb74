"""Eager PyTorch reference of the QAGAN train step, timed on this machine: prints one JSON object.

    python benchmarks/torch_reference_qagan.py [--batch-sizes 2,4,12] [--steps 3] [--size 128]

Why: `benchmarks/qagan_bench.py` compares our jitted JAX step with eager PyTorch. This script
makes that comparison re-runnable on the same machine instead of quoting a figure: it ports the
`paper` configuration of `qagan_jax` (models.py, losses.py, train.py's `train_step`, the frozen
VGG-19 of common/vgg.py, spec/qagan.md) to eager PyTorch with random weights and random images,
with oneDNN convolutions, channels-last memory format for every 4-D tensor and module, and fused
(else foreach) Adam.

One step, as `train_step`: the frozen VGG-19 encodes x_L and x_H; ONE generator forward builds
x~_H = G_H(x_L), x~_L = G_L(x_H, x_R), x^_L = G_L(x~_H, x_R), x^_H = G_H(x~_L) and the VGG cycle
loss; one spectral-norm power iteration per discriminator, then an Adam update of D_H and D_L on
the detached fakes; then the generator loss (RaHinge against the *updated* discriminators, reals
re-scored, + lambda_cc * cycle) is back-propagated through the graph of that same forward (the
discriminator parameters are frozen meanwhile, so only input gradients run through them) and
the generators take an Adam step. x_R is the low batch rolled by one (config `reference="roll"`),
so E(x_R) = roll(E(x_L)) is not recomputed. Checked once against our jitted step (width 16,
128x128, batch 2, our JAX state loaded into these modules): the six losses agree to 1e-7
(relative) on the first step and to 1e-4 after three steps (float rounding through Adam); that
check predates issue 14, when both sides used the biased channel variance. Since both take the
unbiased one, G_L's forward (paper widths, weights copied, near-uniform attention) was checked
again: float32 JAX within 3.3e-5 (relative to the largest output) of this port in float64.
Deviations from `train_step` are listed in the JSON (`deviations_from_jax_step`).

Reported per batch size: the best and mean seconds per step over `--steps` timed steps after one
warm-up step, the FLOPs of one (untimed) step from `torch.utils.flop_counter.FlopCounterMode`
(matmul-class ops only: convolutions, their gradients, bmm/mm) and the achieved GFLOP/s; plus
parameter counts (checked against our JAX counts), a 4096x4096 float32 matmul peak (best of 5),
peak RSS and the load average at start and end. Batch sizes whose extrapolated step exceeds
`--max-step-s` are skipped. `--width` divides every channel count (debug runs only).

PyTorch is not a project dependency. To get it (CPU build), then run from the repository root:

    python3 -m venv /tmp/tvenv && /tmp/tvenv/bin/pip install torch==2.13.0 numpy
    /tmp/tvenv/bin/python benchmarks/torch_reference_qagan.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time

try:
    import torch
    import torch.nn.functional as F
    from torch import nn
    from torch.utils.flop_counter import FlopCounterMode
except ImportError:  # pragma: no cover - depends on the interpreter
    sys.exit(
        "torch_reference_qagan.py needs PyTorch, which is not a project dependency:\n"
        "  python3 -m venv /tmp/tvenv && /tmp/tvenv/bin/pip install torch==2.13.0 numpy\n"
        "  /tmp/tvenv/bin/python benchmarks/torch_reference_qagan.py"
    )

CL = torch.channels_last

# The `paper` configuration (qagan_jax/config.py `get_config("paper")`), hard-coded because
# this script must not import jax (nor ml_collections, which torch environments lack).
PAPER = dict(
    upsample="nearest",  # model.upsample
    global_residual=False,  # model.global_residual
    normalize_skips=False,  # model.normalize_skips
    gl_skips=True,  # model.gl_skips
    reference="roll",  # model.reference: x_R = the low batch rolled by one
    qam="nonlocal softmax over f_L positions; no residual, no input norm, unscaled logits",
    disc_all_heads=False,  # heads after blocks 3 and 5
    lambda_cc=2.0,  # loss.lambda_cc
    rahinge_scale=0.5,  # loss.rahinge_scale
    cycle_distance="mse",  # loss.cycle_distance
    learning_rate=1e-4,  # opt.learning_rate (constant for the first 75 epochs)
    b1=0.5,  # opt.b1
    b2=0.999,  # opt.b2
)

# Our parameter counts for the paper networks (tests/test_qagan_models.py; the VGG-19 encoder
# to relu5_1 as benchmarks/qagan_bench.py counts `state.encoder`).
JAX_PARAMS = {
    "G_H": 16_077_891,
    "G_L": 13_980_867,
    "D_H": 4_622_528,
    "D_L": 4_622_528,
    "VGG19_encoder_frozen": 12_944_960,
}

TAPS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
VGG19_TO_RELU5_1 = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512,
)  # fmt: skip
DECODER_CHANNELS = (64, 128, 256, 512)
DISC_CHANNELS = (32, 64, 128, 256, 512)
DISC_KERNELS = (7, 7, 7, 5, 5)
STAT_EPS = 1e-5
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _scaled(channels, width: int) -> tuple[int, ...]:
    return tuple(max(c // width, 1) for c in channels)


def act(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, 0.2)


def channel_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample, per-channel spatial mean and sqrt(var + eps) of (N, C, H, W), with the
    unbiased variance (÷ H·W − 1) as the authors' `calc_mean_std` and spec/qagan.md section 1
    (a 1×1 map: variance 0, as `qagan_jax.models.channel_stats`)."""
    correction = 1 if x.shape[2] * x.shape[3] > 1 else 0
    var, mean = torch.var_mean(x, dim=(2, 3), correction=correction, keepdim=True)
    return mean, torch.sqrt(var + STAT_EPS)


def upsample2x(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="nearest")


def _init_(conv: nn.Conv2d) -> nn.Conv2d:
    """Ours: normal, variance 2 / (1 + 0.2^2) / fan_in (LeakyReLU gain), zero bias."""
    fan_in = conv.weight[0].numel()
    nn.init.normal_(conv.weight, std=(2.0 / (1.0 + 0.2**2) / fan_in) ** 0.5)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return conv


class ReflectConv(nn.Conv2d):
    """Reflection padding (k - 1) / 2, then a VALID conv (bias optional)."""

    def __init__(self, in_ch: int, out_ch: int, k: int, *, stride: int = 1, bias: bool = True):
        super().__init__(
            in_ch, out_ch, k, stride=stride, padding=(k - 1) // 2, padding_mode="reflect",
            bias=bias,
        )  # fmt: skip
        _init_(self)


class SpectralConv(ReflectConv):
    """ReflectConv whose weight is divided by sigma = u . W v (u, v constants for autograd).

    Unlike torch's `spectral_norm` (a power iteration in every training-mode forward), u and v
    change only in `power_iterate()`, called once per discriminator step, as ours.
    """

    def __init__(self, in_ch: int, out_ch: int, k: int, *, stride: int):
        super().__init__(in_ch, out_ch, k, stride=stride)
        with torch.no_grad():
            u = F.normalize(torch.randn(out_ch), dim=0, eps=1e-12)
            self.register_buffer("u", u)
            self.register_buffer("v", F.normalize(self._matrix().t() @ u, dim=0, eps=1e-12))

    def _matrix(self) -> torch.Tensor:
        return self.weight.reshape(self.out_channels, -1)  # (out, in*k*k)

    @torch.no_grad()
    def power_iterate(self) -> None:
        w = self._matrix()
        self.v.copy_(F.normalize(w.t() @ self.u, dim=0, eps=1e-12))
        self.u.copy_(F.normalize(w @ self.v, dim=0, eps=1e-12))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sigma = torch.dot(self.u, self._matrix() @ self.v)
        return self._conv_forward(x, self.weight / sigma, self.bias)


class VGG19Encoder(nn.Module):
    """torchvision VGG-19 conv1_1 ... conv5_1 (zero pad 1, ReLU, 2x2 max-pool), frozen.

    Input (N, 3, H, W) in [-1, 1] (mapped to [0, 1], then ImageNet-normalised); returns
    {relu1_1 ... relu5_1}. Random torchvision-style init (Kaiming normal, fan-out, zero bias).
    """

    def __init__(self, width: int = 1):
        super().__init__()
        self.layers = nn.ModuleList()
        self.tap_after: list[str | None] = []
        in_ch, block, index = 3, 1, 1
        for item in VGG19_TO_RELU5_1:
            if item == "M":
                self.layers.append(nn.MaxPool2d(2))
                self.tap_after.append(None)
                block, index = block + 1, 1
                continue
            conv = nn.Conv2d(in_ch, max(item // width, 1), 3, padding=1)
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(conv.bias)
            self.layers.append(conv)
            self.tap_after.append(f"relu{block}_{index}")
            in_ch, index = conv.out_channels, index + 1
        self.channels = _scaled((64, 128, 256, 512, 512), width)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = ((x + 1.0) * 0.5 - self.mean) / self.std
        out = {}
        for layer, tap in zip(self.layers, self.tap_after, strict=True):
            x = layer(x)
            if tap is not None:
                x = F.relu(x)
                if tap in TAPS:
                    out[tap] = x
        return out


class QAM(nn.Module):
    """Quality Attention Module, paper config: softmax over the positions j of f_L for every
    position i of f_H, f~ = W_o y, then the channel-statistics transfer (Eq. 5). Only W_theta
    has a bias (ours drops the biases that cancel exactly)."""

    def __init__(self, channels: int):
        super().__init__()
        self.reduced = max(channels // 8, 1)
        self.theta = _init_(nn.Conv2d(channels, self.reduced, 1, bias=True))
        self.v = _init_(nn.Conv2d(channels, self.reduced, 1, bias=False))
        self.phi = _init_(nn.Conv2d(channels, self.reduced, 1, bias=False))
        self.out = _init_(nn.Conv2d(self.reduced, channels, 1, bias=False))

    @staticmethod
    def _rows(x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        return x.permute(0, 2, 3, 1).reshape(n, h * w, c)  # a view for channels-last x

    def forward(self, f_h: torch.Tensor, f_l: torch.Tensor) -> torch.Tensor:
        n, _, hh, wh = f_h.shape
        theta, key, value = (
            self._rows(self.theta(f_h)),
            self._rows(self.v(f_l)),
            self._rows(self.phi(f_l)),
        )
        weights = torch.softmax(torch.bmm(theta, key.transpose(1, 2)), dim=-1)  # (n, i, j)
        y = torch.bmm(weights, value).reshape(n, hh, wh, self.reduced).permute(0, 3, 1, 2)
        f_tilde = self.out(y)
        mu_t, sigma_t = channel_stats(f_tilde)
        mu_l, sigma_l = channel_stats(f_l)
        return sigma_l * (f_tilde - mu_t) / sigma_t + mu_l


class Decoder(nn.Module):
    """The VGG-19 mirror from `start_level` (5 or 4) to the image; skips concatenated before a
    level's first conv; LeakyReLU after every conv but the last (tanh); nearest x2 upsampling."""

    def __init__(self, in_ch: int, *, start_level: int, skip_channels: dict, widths):
        super().__init__()
        d1, d2, d3, d4 = widths
        plan = {5: [d4], 4: [d4, d4, d4, d3], 3: [d3, d3, d3, d2], 2: [d2, d1], 1: [d1, 3]}
        self.levels = tuple(range(start_level, 0, -1))
        self.skip_levels = tuple(lv for lv in self.levels if skip_channels.get(lv, 0))
        self.convs = nn.ModuleDict()
        self.num_convs = {}
        ch = in_ch
        for lv in self.levels:
            ch += skip_channels.get(lv, 0)
            self.num_convs[lv] = len(plan[lv])
            for i, out_ch in enumerate(plan[lv], start=1):
                self.convs[f"conv{lv}_{i}"] = ReflectConv(ch, out_ch, 3)
                ch = out_ch

    def forward(self, x: torch.Tensor, skips: dict[int, torch.Tensor]) -> torch.Tensor:
        for lv in self.levels:
            if lv in self.skip_levels:
                x = torch.cat([x, skips[lv]], dim=1)
            for i in range(1, self.num_convs[lv] + 1):
                x = self.convs[f"conv{lv}_{i}"](x)
                x = torch.tanh(x) if (lv == 1 and i == self.num_convs[lv]) else act(x)
            if lv > 1:
                x = upsample2x(x)
        return x


class GeneratorH(nn.Module):
    """G_H, low -> high, from the encoder taps of x_L (U-Net skips at levels 4..1)."""

    def __init__(self, feat_channels, width: int = 1):
        super().__init__()
        e1, e2, e3, e4, e5 = feat_channels
        self.decoder = Decoder(
            e5, start_level=5, skip_channels={4: e4, 3: e3, 2: e2, 1: e1},
            widths=_scaled(DECODER_CHANNELS, width),
        )  # fmt: skip

    def forward(self, feats_l: dict[str, torch.Tensor]) -> torch.Tensor:
        skips = {lv: feats_l[f"relu{lv}_1"] for lv in (1, 2, 3, 4)}
        return self.decoder(feats_l["relu5_1"], skips)


class GeneratorL(nn.Module):
    """G_L, high -> low: Q5 = QAM(h5, r5), Q4 = QAM(h4, r4), F = conv3(Q4 + up(Q5)), then the
    decoder from level 4 with skips h3, h2, h1."""

    def __init__(self, feat_channels, width: int = 1):
        super().__init__()
        e1, e2, e3, e4, e5 = feat_channels
        widths = _scaled(DECODER_CHANNELS, width)
        self.qam5, self.qam4 = QAM(e5), QAM(e4)
        self.fuse = ReflectConv(e4, widths[3], 3)
        self.decoder = Decoder(
            widths[3], start_level=4, skip_channels={3: e3, 2: e2, 1: e1}, widths=widths
        )

    def forward(self, feats_h: dict, feats_r: dict) -> torch.Tensor:
        q5 = self.qam5(feats_h["relu5_1"], feats_r["relu5_1"])
        q4 = self.qam4(feats_h["relu4_1"], feats_r["relu4_1"])
        fused = self.fuse(q4 + upsample2x(q5))
        return self.decoder(fused, {lv: feats_h[f"relu{lv}_1"] for lv in (1, 2, 3)})


class Discriminator(nn.Module):
    """Five spectrally normalised stride-2 blocks; tanh heads (no bias, no SN) after 3 and 5."""

    def __init__(self, width: int = 1):
        super().__init__()
        self.blocks, self.heads = nn.ModuleList(), nn.ModuleDict()
        in_ch = 3
        for b, (out_ch, k) in enumerate(
            zip(_scaled(DISC_CHANNELS, width), DISC_KERNELS, strict=True), start=1
        ):
            self.blocks.append(SpectralConv(in_ch, out_ch, k, stride=2))
            if b in (3, 5):
                self.heads[str(b)] = ReflectConv(out_ch, 1, k, bias=False)
            in_ch = out_ch

    def power_iterate(self) -> None:
        for block in self.blocks:
            block.power_iterate()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        heads = []
        for b, block in enumerate(self.blocks, start=1):
            x = act(block(x))
            if str(b) in self.heads:
                heads.append(torch.tanh(self.heads[str(b)](x)))
        return heads


# --------------------------------------------------------------------------------------------
# Losses (qagan_jax/losses.py)


def rahinge_d(r: torch.Tensor, f: torch.Tensor, scale: float) -> torch.Tensor:
    return scale * (F.relu(1.0 - (r - f.mean())).mean() + F.relu(1.0 + (f - r.mean())).mean())


def rahinge_g(r: torch.Tensor, f: torch.Tensor, scale: float) -> torch.Tensor:
    return scale * (F.relu(1.0 + (r - f.mean())).mean() + F.relu(1.0 - (f - r.mean())).mean())


def multiscale(loss, real_heads, fake_heads, scale: float) -> torch.Tensor:
    return sum(loss(r, f, scale) for r, f in zip(real_heads, fake_heads, strict=True))


def cycle_loss(feats_a: dict, feats_b: dict) -> torch.Tensor:
    """Mean over the taps of the mean squared feature difference (`distance="mse"`)."""
    return torch.stack([F.mse_loss(feats_b[t], feats_a[t]) for t in sorted(feats_a)]).mean()


# --------------------------------------------------------------------------------------------
# The step


class QAGAN(nn.Module):
    def __init__(self, width: int = 1):
        super().__init__()
        self.encoder = VGG19Encoder(width)
        self.g_h = GeneratorH(self.encoder.channels, width)
        self.g_l = GeneratorL(self.encoder.channels, width)
        self.d_h = Discriminator(width)
        self.d_l = Discriminator(width)

    def generators(self) -> list[nn.Parameter]:
        return [*self.g_h.parameters(), *self.g_l.parameters()]

    def discriminators(self) -> list[nn.Parameter]:
        return [*self.d_h.parameters(), *self.d_l.parameters()]


def make_adam(params) -> tuple[torch.optim.Adam, str]:
    """Adam as ours (lr 1e-4, betas (0.5, 0.999)): fused if this torch supports it on CPU."""
    kw = dict(lr=PAPER["learning_rate"], betas=(PAPER["b1"], PAPER["b2"]))
    try:
        opt = torch.optim.Adam(params, fused=True, **kw)
        probe = nn.Parameter(torch.zeros(2))
        probe.grad = torch.ones(2)
        torch.optim.Adam([probe], fused=True, **kw).step()
        return opt, "fused"
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(params, foreach=True, **kw), "foreach"


def train_step(net: QAGAN, g_opt, d_opt, x_l: torch.Tensor, x_h: torch.Tensor) -> dict:
    """One QAGAN update (qagan_jax/train.py `train_step`); returns the losses as floats."""
    scale, lambda_cc = PAPER["rahinge_scale"], PAPER["lambda_cc"]
    with torch.no_grad():  # features of the real images: constants of the step
        f_l, f_h = net.encoder(x_l), net.encoder(x_h)
    # E(x_R) with x_R = roll(x_L); (roll returns NCHW-contiguous maps for a batch of 1)
    f_r = {t: torch.roll(f, 1, dims=0).contiguous(memory_format=CL) for t, f in f_l.items()}

    # One generator forward; its graph serves the generator update below.
    fake_h = net.g_h(f_l)
    fake_l = net.g_l(f_h, f_r)
    rec_l = net.g_l(net.encoder(fake_h), f_r)
    rec_h = net.g_h(net.encoder(fake_l))
    cycle = cycle_loss(f_h, net.encoder(rec_h)) + cycle_loss(f_l, net.encoder(rec_l))

    # Discriminator update on detached fakes.
    net.d_h.power_iterate()
    net.d_l.power_iterate()
    sg_h, sg_l = fake_h.detach(), fake_l.detach()
    d_h = multiscale(rahinge_d, net.d_h(x_h), net.d_h(sg_h), scale)
    d_l = multiscale(rahinge_d, net.d_l(x_l), net.d_l(sg_l), scale)
    d_opt.zero_grad(set_to_none=True)
    (d_h + d_l).backward()
    d_opt.step()

    # Generator update against the updated discriminators (frozen: input gradients only).
    for p in net.discriminators():
        p.requires_grad_(False)
    adv_h = multiscale(rahinge_g, net.d_h(x_h), net.d_h(fake_h), scale)
    adv_l = multiscale(rahinge_g, net.d_l(x_l), net.d_l(fake_l), scale)
    g_total = adv_h + adv_l + lambda_cc * cycle
    g_opt.zero_grad(set_to_none=True)
    g_total.backward()
    g_opt.step()
    for p in net.discriminators():
        p.requires_grad_(True)
    losses = dict(d_h=d_h, d_l=d_l, g_adv_h=adv_h, g_adv_l=adv_l, cycle=cycle, g_total=g_total)
    return {k: float(v.detach()) for k, v in losses.items()}


# --------------------------------------------------------------------------------------------
# Measurements


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _batch(batch_size: int, size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random x_L, x_H uniform in [0, 1], scaled to the networks' [-1, 1]; channels-last."""
    gen = torch.Generator().manual_seed(seed)
    shape = (batch_size, 3, size, size)
    x_l, x_h = (torch.rand(shape, generator=gen) * 2.0 - 1.0 for _ in range(2))
    return x_l.contiguous(memory_format=CL), x_h.contiguous(memory_format=CL)


def matmul_peak_gflops(n: int = 4096, repeats: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 / best / 1e9


def counted_step(net, g_opt, d_opt, x_l, x_h) -> tuple[float, dict, str]:
    """FLOPs of one step (per aten op) and how many conv inputs/weights were channels-last."""
    seen = {"inputs": 0, "inputs_cl": 0, "weights": 0, "weights_cl": 0}

    def hook(module, args):
        seen["inputs"] += 1
        seen["inputs_cl"] += int(args[0].is_contiguous(memory_format=CL))
        seen["weights"] += 1
        seen["weights_cl"] += int(module.weight.is_contiguous(memory_format=CL))

    handles = [m.register_forward_pre_hook(hook) for m in net.modules() if isinstance(m, nn.Conv2d)]
    counter = FlopCounterMode(display=False)
    try:
        with counter:
            train_step(net, g_opt, d_opt, x_l, x_h)
    finally:
        for h in handles:
            h.remove()
    by_op = {str(op): int(n) for op, n in counter.get_flop_counts().get("Global", {}).items()}
    cl = (f"{seen['inputs_cl']}/{seen['inputs']} conv inputs, "
          f"{seen['weights_cl']}/{seen['weights']} conv weights")  # fmt: skip
    return float(counter.get_total_flops()), by_op, cl


def bench_batch(net, g_opt, d_opt, batch_size: int, size: int, steps: int) -> dict:
    x_l, x_h = _batch(batch_size, size)
    print(f"batch {batch_size}: warm-up", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    train_step(net, g_opt, d_opt, x_l, x_h)
    warmup_s = time.perf_counter() - t0
    times, cpu_times = [], []
    for i in range(steps):
        t0, c0 = time.perf_counter(), time.process_time()
        metrics = train_step(net, g_opt, d_opt, x_l, x_h)
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
        print(f"batch {batch_size}: step {i + 1}/{steps} {times[-1]:.2f} s", file=sys.stderr,
              flush=True)  # fmt: skip
    print(f"batch {batch_size}: FLOP count (untimed step)", file=sys.stderr, flush=True)
    flops, by_op, cl = counted_step(net, g_opt, d_opt, x_l, x_h)
    best, mean = min(times), statistics.fmean(times)
    return {
        "batch_size": batch_size,
        "warmup_s": round(warmup_s, 3),
        "step_s_best": round(best, 3),
        "step_s_mean": round(mean, 3),
        "step_s_all": [round(t, 3) for t in times],
        # CPU seconds (all threads) per step; cpu_s / cores estimates an unshared machine.
        "cpu_s_per_step_mean": round(statistics.fmean(cpu_times), 3),
        "cpu_utilisation": round(sum(cpu_times) / sum(times), 2),
        "flops_per_step": flops,
        "flops_by_op": by_op,
        "gflop_per_image_pair": round(flops / batch_size / 1e9, 1),
        "achieved_gflop_per_s_best": round(flops / best / 1e9, 1),
        "achieved_gflop_per_s_mean": round(flops / mean / 1e9, 1),
        "channels_last": cl,
        "losses_last_timed_step": {k: round(v, 5) for k, v in metrics.items()},
        "peak_rss_bytes_so_far": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-sizes", default="2,4,12", help="comma-separated batch sizes")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per batch size")
    parser.add_argument("--size", type=int, default=128, help="image size (divisible by 16, >= 96)")
    parser.add_argument(
        "--width",
        type=int,
        default=1,
        help="channel divisor of every network (1 = paper; >1 for debugging)",
    )
    parser.add_argument(
        "--max-step-s",
        type=float,
        default=60.0,
        help="skip a batch size whose extrapolated step exceeds this",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.size % 16 or args.size < 96:
        # torch's reflection pad needs pad < size: D_H's last head pads its H/32 map by 2.
        parser.error("--size must be divisible by 16 and at least 96")

    load_start = os.getloadavg()
    torch.manual_seed(args.seed)
    net = QAGAN(args.width).to(memory_format=CL)
    g_opt, adam = make_adam(net.generators())
    d_opt, _ = make_adam(net.discriminators())
    params = {
        "G_H": _count(net.g_h),
        "G_L": _count(net.g_l),
        "D_H": _count(net.d_h),
        "D_L": _count(net.d_l),
        "VGG19_encoder_frozen": _count(net.encoder),
    }
    spectral = sum(b.numel() for d in (net.d_h, net.d_l) for b in (*d.buffers(),))
    print("matmul peak", file=sys.stderr, flush=True)
    peak = matmul_peak_gflops()
    report = {
        "what": "eager PyTorch port of qagan_jax train_step, config `paper`",
        "note": "random weights; random images",
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "load_average_at_start": list(load_start),
        "matmul_4096_f32_peak_gflop_per_s": round(peak, 1),
        "image_size": args.size,
        "width_divisor": args.width,
        "memory_format": "channels_last (modules, inputs; see results[].channels_last)",
        "adam": adam,
        "generator_forwards_per_step": 1,
        "deviations_from_jax_step": [
            "no non-finite guard (ours discards a step whose losses are NaN/Inf)",
            "constant learning rate (ours is constant for the first 75 epochs too)",
            "same init distributions, different random draws (torch RNG)",
            "torch reflection padding needs pad < size, so --size >= 96",
        ],
        "batch": "x_L, x_H uniform in [0, 1] -> [-1, 1]; x_R = x_L rolled by one (E(x_R) too)",
        "flop_counter": "torch.utils.flop_counter.FlopCounterMode: matmul-class ops only",
        "settings": PAPER,
        "params": params,
        "spectral_u_v_elements": spectral,
        "params_jax": JAX_PARAMS if args.width == 1 else "n/a (width > 1)",
        "params_match_jax": params == JAX_PARAMS if args.width == 1 else None,
        "results": [],
    }
    last = None
    for batch_size in [int(b) for b in args.batch_sizes.split(",")]:
        if last is not None:
            per_image = last["step_s_best"] / last["batch_size"]
            if per_image * batch_size > args.max_step_s:
                report["results"].append({"batch_size": batch_size, "skipped": "over max-step-s"})
                continue
        last = bench_batch(net, g_opt, d_opt, batch_size, args.size, args.steps)
        report["results"].append(last)
    report["load_average_at_end"] = list(os.getloadavg())
    report["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
