"""QAGAN networks in flax.nnx (spec/qagan.md sections 3-5).

- `QAM`: the Quality Attention Module (inter-domain non-local attention, then the
  channel-statistics transfer as its last operation).
- `GeneratorH` (low -> high): a decoder mirroring VGG-19 with U-Net skips from the encoder.
- `GeneratorL` (high -> low): QAMs at relu5_1 / relu4_1, fusion, the same decoder from level 4.
- `Discriminator`: five spectrally normalised stride-2 blocks with heads after blocks 3 and 5
  (or all five).

All maps are NHWC; images are in [-1, 1] at every network boundary. The generators take the
features of the frozen VGG-19 encoder (`common.vgg`, a dict `relu1_1 ... relu5_1`), not images,
so that one encoder pass is shared between the generators and the cycle loss. Every conv of the
generators and discriminators is reflection padding (k - 1) / 2 then a VALID conv with bias.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from qagan_jax.conv import conv2d

TAPS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
VGG19_TAP_CHANNELS = (64, 128, 256, 512, 512)  # channels of relu1_1 ... relu5_1
DECODER_CHANNELS = (64, 128, 256, 512)  # decoder widths at levels 1..4 (the VGG mirror)
DISC_CHANNELS = (32, 64, 128, 256, 512)
DISC_KERNELS = (7, 7, 7, 5, 5)
STAT_EPS = 1e-5  # sigma = sqrt(var + eps) [U]
# Delta degrees of freedom of that variance: 1 = unbiased (÷ N − 1), as the authors'
# `calc_mean_std` (torch's default `var`); 0 = biased (÷ N). spec/qagan.md section 1.
STAT_DDOF = 1

# LeakyReLU(0.2) gain-corrected He init (fan-in); bias zero.
HE_INIT = jax.nn.initializers.variance_scaling(2.0 / (1.0 + 0.2**2), "fan_in", "normal")


def kernel_init(name: str = "he", gain: float = 0.02):
    """The conv kernel initialiser of the generators and discriminators (biases start at 0).

    "he": normal, variance 2 / ((1 + 0.2²) fan_in), LeakyReLU(0.2)'s gain-corrected He init.
    "orthogonal": the authors' UEGAN code [U] (`init_type="orthogonal"`, gain 0.02, for G and
    D): an orthogonal (out, in·k·k) kernel matrix times `gain`, so every layer starts nearly
    silent (G_H with the global residual starts near the identity, the heads' tanh near 0).
    """
    if name == "he":
        return HE_INIT
    if name == "orthogonal":
        return jax.nn.initializers.orthogonal(scale=gain, column_axis=-1)
    raise ValueError(f"unknown init {name!r}: he | orthogonal")


def act(x: jax.Array) -> jax.Array:
    """LeakyReLU(0.2), the activation of every QAGAN conv [U]."""
    return jax.nn.leaky_relu(x, 0.2)


def channel_stats(
    x: jax.Array, eps: float = STAT_EPS, ddof: int = STAT_DDOF
) -> tuple[jax.Array, jax.Array]:
    """Per-sample, per-channel spatial mean and sqrt(var + eps) of (N, H, W, C) -> (N,1,1,C).

    var = Σ (x − mean)² / (H·W − ddof): ddof 1 (default) is the unbiased variance of the
    authors' `calc_mean_std`, 0 the biased one. When H·W − ddof ≤ 0 (a 1×1 map with ddof 1)
    the divisor is 1 instead: the variance is then 0 (sigma = sqrt(eps)), never 0/0 = NaN.
    Computed in float32 at least (bfloat16 maps included); returned in float32.
    """
    n = x.shape[1] * x.shape[2]
    x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    mean = jnp.mean(x, axis=(1, 2), keepdims=True)
    # jnp.var centres before squaring (no E[x²] − E[x]² cancellation); rescale its ÷ N.
    var = jnp.var(x, axis=(1, 2), keepdims=True) * (n / max(n - ddof, 1))
    return mean, jnp.sqrt(var + eps)


def mean_variance_norm(x: jax.Array, ddof: int = STAT_DDOF) -> jax.Array:
    """Instance normalisation without affine parameters (AdaIN / SANet's `mean_variance_norm`)."""
    mean, std = channel_stats(x, ddof=ddof)
    return ((x - mean) / std).astype(x.dtype)


def upsample2x(x: jax.Array, method: str = "nearest") -> jax.Array:
    """x2 spatial upsampling of (N, H, W, C): "nearest" [S] or "bilinear" (half-pixel)."""
    if method == "nearest":
        return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    if method == "bilinear":
        n, h, w, c = x.shape
        return jax.image.resize(x, (n, 2 * h, 2 * w, c), "bilinear")
    raise ValueError(f"unknown upsampling {method!r}: nearest | bilinear")


def _reflect(x: jax.Array, pad: int) -> jax.Array:
    if pad == 0:
        return x
    return jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")


class ReflectConv(nnx.Module):
    """Reflection padding (k - 1) / 2, then a VALID conv (bias optional) [U]."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel: int,
        *,
        stride: int = 1,
        use_bias: bool = True,
        kernel_init=HE_INIT,
        rngs: nnx.Rngs,
    ):
        self.pad = (kernel - 1) // 2
        self.stride = stride
        self.conv = nnx.Conv(
            in_ch,
            out_ch,
            (kernel, kernel),
            strides=stride,
            padding="VALID",
            use_bias=use_bias,
            kernel_init=kernel_init,
            rngs=rngs,
        )

    def kernel(self) -> jax.Array:
        """The kernel the forward pass convolves with (HWIO)."""
        return self.conv.kernel[...]

    def __call__(self, x: jax.Array) -> jax.Array:
        # `conv2d` = self.conv's VALID conv, with a faster VJP on CPU (qagan_jax/conv.py).
        # The input's dtype is the compute dtype (the spectral kernel may come out float32).
        y = conv2d(_reflect(x, self.pad), self.kernel().astype(x.dtype), self.stride)
        return y if self.conv.bias is None else y + self.conv.bias[...].astype(x.dtype)


# --------------------------------------------------------------------------------------------
# Quality Attention Module


class QAM(nnx.Module):
    """Quality Attention Module (spec/qagan.md section 4), called as `qam(f_h, f_l)`.

    `f_h` (N, Hh, Wh, C): features of the high-quality image; `f_l` (N, Hl, Wl, C): features
    of the low-quality reference (any spatial size). Returns (N, Hh, Wh, C) on f_h's grid whose
    per-sample, per-channel spatial mean and sqrt(var + 1e-5) equal those of `f_l` up to the
    eps (the channel-statistics transfer is the last operation, paper Eq. 5), var with
    `stat_ddof` (1: unbiased, as `channel_stats`).

    Flags ([choice], defaults first):
      normalization: "nonlocal" - for each position i of f_h a softmax over the positions j of
        f_l; "literal" - Eq. 1 as printed, a softmax over the positions i for each j.
      residual: False - f~_h = W_o y; True - f~_h = f_h + W_o y (non-local residual [S]).
      normalize_inputs: False; True mean-variance-normalises f_h and f_l before the similarity
        projections W_theta and W_v [S] (the value projection W_phi sees raw f_l).
      scale_logits: False; True scales the similarity logits by 1/sqrt(C').
      stat_ddof: 1 (unbiased variance, the authors'); 0 biased. See `channel_stats`.
    """

    def __init__(
        self,
        channels: int,
        *,
        normalization: str = "nonlocal",
        residual: bool = False,
        normalize_inputs: bool = False,
        scale_logits: bool = False,
        stat_ddof: int = STAT_DDOF,
        kernel_init=HE_INIT,
        rngs: nnx.Rngs,
    ):
        if normalization not in ("nonlocal", "literal"):
            raise ValueError(f"unknown QAM normalization {normalization!r}: nonlocal | literal")
        reduced = max(channels // 8, 1)  # C' = C / 8 [P]
        self.channels, self.reduced = channels, reduced
        self.normalization = normalization
        self.residual = residual
        self.normalize_inputs = normalize_inputs
        self.scale_logits = scale_logits
        self.stat_ddof = stat_ddof
        # 1x1 convs; torch Conv2d(C, C', 1) maps to kernel[0, 0] = weight[:, :, 0, 0].T.
        # Biases that cancel exactly get none: they would receive zero gradient in exact
        # arithmetic, so Adam would random-walk them by +-lr per step on float noise. W_o's bias
        # is removed by Eq. 5's mean subtraction; with a softmax over j ("nonlocal"), v's bias
        # shifts each row's logits by a constant and phi's bias adds a constant (rows sum to
        # 1) that W_o maps to a per-channel constant; with a softmax over i ("literal"),
        # theta's bias shifts each column's logits by a constant.
        nonlocal_ = normalization == "nonlocal"
        kw = dict(kernel_size=(1, 1), kernel_init=kernel_init, rngs=rngs)
        self.theta = nnx.Conv(channels, reduced, use_bias=nonlocal_, **kw)  # f_h: similarity
        self.v = nnx.Conv(channels, reduced, use_bias=not nonlocal_, **kw)  # f_l: similarity
        self.phi = nnx.Conv(channels, reduced, use_bias=not nonlocal_, **kw)  # f_l: values
        self.out = nnx.Conv(reduced, channels, use_bias=False, **kw)  # W_o: back to C [choice]

    def __call__(self, f_h: jax.Array, f_l: jax.Array) -> jax.Array:
        n, hh, wh, c = f_h.shape
        if f_l.shape[0] != n or f_l.shape[-1] != c:
            raise ValueError(f"QAM inputs disagree: f_h {f_h.shape}, f_l {f_l.shape}")
        ddof = self.stat_ddof
        q_in = mean_variance_norm(f_h, ddof) if self.normalize_inputs else f_h
        k_in = mean_variance_norm(f_l, ddof) if self.normalize_inputs else f_l
        theta = self.theta(q_in).reshape(n, hh * wh, self.reduced)
        key = self.v(k_in).reshape(n, -1, self.reduced)
        value = self.phi(f_l).reshape(n, -1, self.reduced)
        if self.normalization == "nonlocal":
            # Rows of the softmax sum to 1, so centring the values over j moves y by a
            # per-sample, per-channel constant that W_o keeps constant and Eq. 5's mean
            # subtraction removes: the output is unchanged in exact arithmetic. In float32 it
            # matters: at initialisation the attention is near-uniform and W_o y varies across
            # positions by only 0.07-1.4 % of its mean (paper networks, 128², random VGG), so
            # Eq. 5 divides rounding noise by a tiny std. Centred, G_L's gradients from the
            # 1- and 4-device steps agree to 6e-6 instead of 2.5e-3 (smoke config, jax 0.12).
            value = value - jnp.mean(value, axis=1, keepdims=True)
        # Logits and softmax in float32 even under bfloat16 compute.
        logits = jnp.einsum("nic,njc->nij", theta, key, preferred_element_type=jnp.float32)
        if self.scale_logits:
            logits = logits / jnp.sqrt(jnp.float32(self.reduced))
        axis = -1 if self.normalization == "nonlocal" else 1
        weights = jax.nn.softmax(logits, axis=axis).astype(value.dtype)
        y = jnp.einsum("nij,njc->nic", weights, value).reshape(n, hh, wh, self.reduced)
        f_tilde = self.out(y)
        if self.residual:
            f_tilde = f_h + f_tilde
        # Channel-statistics transfer, the last operation [P, Eq. 5].
        mu_t, sigma_t = channel_stats(f_tilde, ddof=ddof)
        mu_l, sigma_l = channel_stats(f_l, ddof=ddof)
        return (sigma_l * (f_tilde - mu_t) / sigma_t + mu_l).astype(f_h.dtype)


# --------------------------------------------------------------------------------------------
# Generators


class Decoder(nnx.Module):
    """The VGG-19 mirror from `start_level` (5 or 4) down to the image (spec section 3).

    Level 5: conv in->d4, up. Level 4: [skip] conv ->d4, conv d4->d4 x2, conv d4->d3, up.
    Level 3: [skip] conv ->d3, conv d3->d3 x2, conv d3->d2, up. Level 2: [skip] conv ->d2,
    conv d2->d1, up. Level 1: [skip] conv ->d1, conv d1->3, tanh. Convs are named
    `conv{level}_{index}`; the skip (if any) is concatenated before a level's first conv.
    """

    def __init__(
        self,
        in_channels: int,
        *,
        start_level: int,
        skip_channels: Mapping[int, int],
        widths: Sequence[int] = DECODER_CHANNELS,
        upsample: str = "nearest",
        normalize_skips: bool = False,
        stat_ddof: int = STAT_DDOF,
        kernel_init=HE_INIT,
        rngs: nnx.Rngs,
    ):
        d1, d2, d3, d4 = widths
        plan = {
            5: [d4],
            4: [d4, d4, d4, d3],
            3: [d3, d3, d3, d2],
            2: [d2, d1],
            1: [d1, 3],
        }
        if start_level not in (4, 5):
            raise ValueError(f"start_level must be 4 or 5, got {start_level}")
        self.levels = tuple(range(start_level, 0, -1))
        self.skip_levels = tuple(lv for lv in self.levels if skip_channels.get(lv, 0))
        self.upsample = upsample
        self.normalize_skips = normalize_skips
        self.stat_ddof = stat_ddof
        self.num_convs = tuple(len(plan[lv]) for lv in self.levels)  # hashable: keys jit caches
        ch = in_channels
        for lv in self.levels:
            ch += skip_channels.get(lv, 0)
            for i, out_ch in enumerate(plan[lv], start=1):
                conv = ReflectConv(ch, out_ch, 3, kernel_init=kernel_init, rngs=rngs)
                setattr(self, f"conv{lv}_{i}", conv)
                ch = out_ch

    def __call__(self, x: jax.Array, skips: Mapping[int, jax.Array]) -> jax.Array:
        for lv, num_convs in zip(self.levels, self.num_convs, strict=True):
            if lv in self.skip_levels:
                s = skips[lv]
                s = mean_variance_norm(s, self.stat_ddof) if self.normalize_skips else s
                x = jnp.concatenate([x, s], axis=-1)
            for i in range(1, num_convs + 1):
                x = getattr(self, f"conv{lv}_{i}")(x)
                x = jnp.tanh(x) if (lv == 1 and i == num_convs) else act(x)
            if lv > 1:
                x = upsample2x(x, self.upsample)
        return x


def _scaled(channels: Sequence[int], width: int) -> tuple[int, ...]:
    return tuple(max(c // width, 1) for c in channels)


class GeneratorH(nnx.Module):
    """G_H, low -> high: `g_h(feats_l, x_l)` -> (N, H, W, 3) in [-1, 1].

    `feats_l`: the encoder's `relu1_1 ... relu5_1` of x_l (sizes H/1 ... H/16, so H and W must
    be divisible by 16); `x_l`: the input image, used only by the global residual option.

    Args:
      feat_channels: channels of the five encoder taps (VGG-19: 64, 128, 256, 512, 512).
      width: decoder channel divisor (1 = paper).
      upsample: "nearest" [S] | "bilinear".
      global_residual: [choice] False; True returns clip(tanh + x_l, -1, 1) [U].
      zero_init_residual: [choice] with `global_residual`, the last conv starts at zero, so G_H
        starts as the identity (True, default) rather than the input plus tanh of a random
        decoder's output (False), which a discriminator tells apart from real images at once.
      normalize_skips: [choice] False; True mean-variance-normalises skips before concat.
      stat_ddof: variance of that normalisation: 1 unbiased (default), 0 biased.
    """

    def __init__(
        self,
        feat_channels: Sequence[int] = VGG19_TAP_CHANNELS,
        *,
        width: int = 1,
        upsample: str = "nearest",
        global_residual: bool = False,
        zero_init_residual: bool = True,
        normalize_skips: bool = False,
        stat_ddof: int = STAT_DDOF,
        kernel_init=HE_INIT,
        rngs: nnx.Rngs,
    ):
        e1, e2, e3, e4, e5 = feat_channels
        self.global_residual = global_residual
        self.decoder = Decoder(
            e5,
            start_level=5,
            skip_channels={4: e4, 3: e3, 2: e2, 1: e1},
            widths=_scaled(DECODER_CHANNELS, width),
            upsample=upsample,
            normalize_skips=normalize_skips,
            stat_ddof=stat_ddof,
            kernel_init=kernel_init,
            rngs=rngs,
        )
        if global_residual and zero_init_residual:
            last = self.decoder.conv1_2.conv
            last.kernel[...] = jnp.zeros_like(last.kernel[...])
            last.bias[...] = jnp.zeros_like(last.bias[...])

    def __call__(self, feats_l: Mapping[str, jax.Array], x_l: jax.Array | None = None):
        skips = {lv: feats_l[f"relu{lv}_1"] for lv in (1, 2, 3, 4)}
        out = self.decoder(feats_l["relu5_1"], skips)
        if self.global_residual:
            if x_l is None:
                raise ValueError("global_residual needs the input image x_l")
            out = jnp.clip(out + x_l, -1.0, 1.0)
        return out


class GeneratorL(nnx.Module):
    """G_L, high -> low: `g_l(feats_h, feats_r)` -> (N, H, W, 3) in [-1, 1].

    `feats_h`: encoder taps of the high-quality input x_H; `feats_r`: encoder taps of the
    low-quality reference x_R (same spatial size). Q5 = QAM(h5, r5), Q4 = QAM(h4, r4);
    F = conv3(Q4 + up(Q5)) (no activation, as SANet's merge conv); then the decoder of G_H from
    level 4 (first conv without skip) with skips h3, h2, h1 unless `skips=False` [choice].
    `qam_kwargs` are the QAM flags (see `QAM`); `stat_ddof` (1 unbiased, 0 biased) is the
    variance of every channel statistic here (the QAMs' Eq. 5 and the skip normalisation).
    """

    def __init__(
        self,
        feat_channels: Sequence[int] = VGG19_TAP_CHANNELS,
        *,
        width: int = 1,
        upsample: str = "nearest",
        skips: bool = True,
        normalize_skips: bool = False,
        qam_kwargs: Mapping[str, object] | None = None,
        stat_ddof: int = STAT_DDOF,
        kernel_init=HE_INIT,
        rngs: nnx.Rngs,
    ):
        e1, e2, e3, e4, e5 = feat_channels
        if e4 != e5:
            raise ValueError(f"Q4 + up(Q5) needs relu4_1 and relu5_1 widths equal: {e4}, {e5}")
        widths = _scaled(DECODER_CHANNELS, width)
        qam_kwargs = dict(qam_kwargs or {}, stat_ddof=stat_ddof, kernel_init=kernel_init)
        self.upsample = upsample
        self.qam5 = QAM(e5, **qam_kwargs, rngs=rngs)
        self.qam4 = QAM(e4, **qam_kwargs, rngs=rngs)
        self.fuse = ReflectConv(e4, widths[3], 3, kernel_init=kernel_init, rngs=rngs)
        self.decoder = Decoder(
            widths[3],
            start_level=4,
            skip_channels={3: e3, 2: e2, 1: e1} if skips else {},
            widths=widths,
            upsample=upsample,
            normalize_skips=normalize_skips,
            stat_ddof=stat_ddof,
            kernel_init=kernel_init,
            rngs=rngs,
        )

    def __call__(self, feats_h: Mapping[str, jax.Array], feats_r: Mapping[str, jax.Array]):
        q5 = self.qam5(feats_h["relu5_1"], feats_r["relu5_1"])
        q4 = self.qam4(feats_h["relu4_1"], feats_r["relu4_1"])
        fused = self.fuse(q4 + upsample2x(q5, self.upsample))
        skips = {lv: feats_h[f"relu{lv}_1"] for lv in (1, 2, 3)}
        return self.decoder(fused, skips)


# --------------------------------------------------------------------------------------------
# Discriminator with spectral normalisation


class SpectralState(nnx.Variable):
    """Power-iteration vectors of spectral normalisation: neither trained nor fixed."""


def _l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    return x / jnp.maximum(jnp.linalg.norm(x), eps)  # torch F.normalize


class SpectralConv(ReflectConv):
    """Reflection-padded VALID conv whose kernel is divided by its spectral norm.

    As torch's `spectral_norm`: W is the kernel as an (out, in*k*k) matrix, u (out,) and
    v (in*k*k,) its power-iteration vectors, sigma = u . W v with u, v held constant for the
    gradient. Unlike flax's `nnx.SpectralNorm` (which writes the normalised kernel back into
    the parameter), the stored kernel stays the raw W, and the forward pass never changes u, v:
    `power_iterate()` does one iteration in place and is called once per discriminator step.
    """

    def __init__(
        self, in_ch: int, out_ch: int, kernel: int, *, stride: int, kernel_init=HE_INIT,
        rngs: nnx.Rngs,
    ):  # fmt: skip
        super().__init__(in_ch, out_ch, kernel, stride=stride, kernel_init=kernel_init, rngs=rngs)
        w = self._matrix()
        u = _l2_normalize(jax.random.normal(rngs.params(), (out_ch,)))
        self.u = SpectralState(u)
        self.v = SpectralState(_l2_normalize(w @ u))

    def _matrix(self) -> jax.Array:
        k = self.conv.kernel[...]
        return k.reshape(-1, k.shape[-1])  # (k*k*in, out) = W^T

    def power_iterate(self) -> None:
        """One power iteration on the current kernel (no gradient), updating u and v."""
        w = jax.lax.stop_gradient(self._matrix())
        v = _l2_normalize(w @ self.u[...])
        u = _l2_normalize(w.T @ v)
        self.v[...] = v
        self.u[...] = u

    def sigma(self) -> jax.Array:
        u, v = jax.lax.stop_gradient(self.u[...]), jax.lax.stop_gradient(self.v[...])
        return v @ (self._matrix() @ u)

    def kernel(self) -> jax.Array:
        return self.conv.kernel[...] / self.sigma()


class Discriminator(nnx.Module):
    """Multi-scale discriminator: `d(x)` -> list of head logits (N, h, w, 1).

    Five blocks (conv7 3->32, 32->64, 64->128, conv5 128->256, 256->512; stride 2, reflection
    pad, spectral norm, bias, LeakyReLU) [U]. Heads: stride-1 conv to one channel with the
    block's kernel size, no bias, no spectral norm, then tanh [U] (logits in (-1, 1)), after
    blocks 3 and 5 [P] or after every block with `all_heads=True` [choice] (UEGAN's five
    heads). `head_activation="linear"` [choice] leaves the head logits unbounded, as hinge-loss
    GANs usually do: spectral norm bounds the blocks' kernels but not their biases, and when
    the features grow the tanh saturates, its gradient vanishes and D stops learning for good.
    """

    def __init__(
        self,
        *,
        width: int = 1,
        all_heads: bool = False,
        head_activation: str = "tanh",
        kernel_init=HE_INIT,
        rngs: nnx.Rngs,
    ):
        if head_activation not in ("tanh", "linear"):
            raise ValueError(f"unknown head activation {head_activation!r}: tanh | linear")
        chans = _scaled(DISC_CHANNELS, width)
        self.head_activation = head_activation
        self.head_blocks = (1, 2, 3, 4, 5) if all_heads else (3, 5)
        in_ch = 3
        for b, (out_ch, k) in enumerate(zip(chans, DISC_KERNELS, strict=True), start=1):
            block = SpectralConv(in_ch, out_ch, k, stride=2, kernel_init=kernel_init, rngs=rngs)
            setattr(self, f"block{b}", block)
            if b in self.head_blocks:
                head = ReflectConv(out_ch, 1, k, use_bias=False, kernel_init=kernel_init, rngs=rngs)
                setattr(self, f"head{b}", head)
            in_ch = out_ch

    def spectral_convs(self) -> list[SpectralConv]:
        return [getattr(self, f"block{b}") for b in range(1, 6)]

    def power_iterate(self) -> None:
        """One spectral-norm power iteration for every block (once per D update)."""
        for conv in self.spectral_convs():
            conv.power_iterate()

    def __call__(self, x: jax.Array) -> list[jax.Array]:
        heads = []
        for b in range(1, 6):
            x = act(getattr(self, f"block{b}")(x))
            if b in self.head_blocks:
                logits = getattr(self, f"head{b}")(x)
                heads.append(jnp.tanh(logits) if self.head_activation == "tanh" else logits)
        return heads


def param_count(module: nnx.Module) -> int:
    """Number of `nnx.Param` elements (works on abstract modules from `nnx.eval_shape`)."""
    return sum(int(p.size) for p in jax.tree.leaves(nnx.state(module, nnx.Param)))
