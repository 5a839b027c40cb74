"""Independent numpy references of the NIMA backbones (float64), written from the public
definitions, for the port tests. Nothing here imports the project's models.

Layers work on NCHW arrays with torch-layout weights (OIHW convs, (out, in) linears); the Keras
reference converts its HWIO kernels once. Each architecture comes as two functions: one that
lists its checkpoint keys and shapes (`*_shapes`), and one forward pass that reads the weights
by those keys (`*_forward`), returning the last feature map (NCHW) and the (N, 10)
probabilities.
"""

from __future__ import annotations

import numpy as np

# --- layers ------------------------------------------------------------------------------------


def pad(x, pads, value=0.0):
    """Pads the H and W axes of NCHW `x` by ((top, bottom), (left, right))."""
    return np.pad(x, ((0, 0), (0, 0), *pads), constant_values=value)


def conv2d(x, w, b=None, stride=1, pads=((0, 0), (0, 0)), groups=1):
    """Cross-correlation of NCHW `x` with OIHW `w` (torch's Conv2d), by im2col + einsum."""
    xp = pad(x, pads)
    o, cg, kh, kw = w.shape
    n, c = xp.shape[:2]
    win = np.lib.stride_tricks.sliding_window_view(xp, (kh, kw), axis=(2, 3))
    win = win[:, :, ::stride, ::stride]  # (N, C, Ho, Wo, kh, kw)
    ho, wo = win.shape[2:4]
    win = win.reshape(n, groups, c // groups, ho, wo, kh, kw)
    wg = w.reshape(groups, o // groups, cg, kh, kw)
    y = np.einsum("ngchwij,gocij->ngohw", win, wg, optimize=True).reshape(n, o, ho, wo)
    return y if b is None else y + b[None, :, None, None]


def batch_norm(x, weight, bias, mean, var, eps):
    """Inference batch norm over the channel axis 1."""
    s = weight / np.sqrt(var + eps)
    return x * s[None, :, None, None] + (bias - mean * s)[None, :, None, None]


def relu(x):
    return np.maximum(x, 0.0)


def relu6(x):
    return np.minimum(np.maximum(x, 0.0), 6.0)


def max_pool(x, k=3, stride=2):
    """torch MaxPool2d(k, stride): no padding, floor."""
    win = np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(2, 3))
    return win[:, :, ::stride, ::stride].max(axis=(-2, -1))


def avg_pool_exclude_pad(x, k=3, pad_=1):
    """torch AvgPool2d(k, stride=1, padding=pad_, count_include_pad=False)."""
    pads = ((pad_, pad_), (pad_, pad_))
    total = np.lib.stride_tricks.sliding_window_view(pad(x, pads), (k, k), axis=(2, 3))
    ones = np.ones((1, 1, *x.shape[2:]))
    count = np.lib.stride_tricks.sliding_window_view(pad(ones, pads), (k, k), axis=(2, 3))
    return total.sum(axis=(-2, -1)) / count.sum(axis=(-2, -1))


def sample_images(shape, seed: int = 0) -> np.ndarray:
    """(N, H, W, 3) float32 images in [0, 1] that differ as photos do (each its own colour,
    gradient direction and texture), so random networks score them differently; i.i.d. noise
    images all look alike to them."""
    n, h, w, _ = shape
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    images = []
    for _ in range(n):
        colour = rng.uniform(0.2, 0.8, 3)
        angle, frequency = rng.uniform(0, np.pi), rng.uniform(1, 6)
        ramp = np.cos(angle) * yy + np.sin(angle) * xx
        pattern = 0.25 * np.sin(frequency * np.pi * ramp)[..., None] * rng.uniform(-1, 1, 3)
        noise = rng.normal(0, 0.05, (h, w, 3))
        images.append(np.clip(colour + pattern + noise, 0, 1))
    return np.stack(images).astype(np.float32)


def softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _fan_in(key: str, shape) -> int:
    if "/" not in key:  # torch: OIHW conv, (out, in) linear
        return int(np.prod(shape[1:]))
    if key.endswith("depthwise_kernel:0"):  # Keras (kh, kw, C, 1)
        return shape[0] * shape[1]
    return int(np.prod(shape[:-1]))  # Keras HWIO conv, (in, out) dense


def random_weights(shapes: dict, seed: int, *, head_scale: float = 1.0) -> dict:
    """Random float32 tensors for `shapes` (torch "a.b.weight" or Keras "layer/w:0" keys):
    He-normal kernels (fan-in) and batch norms with non-trivial statistics, so activations stay
    O(1) through deep nets; `head_scale` scales the final dense kernel (logits of a few units)."""
    rng = np.random.default_rng(seed)
    out = {}
    for key, shape in shapes.items():
        leaf = key.replace("/", ".").rsplit(".", 1)[-1].removesuffix(":0")
        if leaf == "num_batches_tracked":
            out[key] = np.asarray(rng.integers(0, 1000), np.int64)
            continue
        if leaf in ("running_var", "moving_variance", "gamma") or (
            leaf == "weight" and len(shape) == 1
        ):
            a = rng.uniform(0.5, 1.5, shape)
        elif len(shape) == 1:  # running_mean, moving_mean, beta, biases
            a = rng.normal(0.0, 0.1, shape)
        else:
            a = rng.normal(0.0, np.sqrt(2.0 / _fan_in(key, shape)), shape)
            a *= head_scale if len(shape) == 2 else 1.0
        out[key] = a.astype(np.float32)
    return out


def _conv_bn(x, sd, conv, bn, *, stride=1, pads=((0, 0), (0, 0)), groups=1, eps):
    y = conv2d(x, sd[f"{conv}.weight"].astype(np.float64), None, stride, pads, groups)
    return batch_norm(
        y, *(sd[f"{bn}.{p}"] for p in ("weight", "bias", "running_mean", "running_var")), eps
    )


def _nchw(images_nhwc):
    return np.asarray(images_nhwc, np.float64).transpose(0, 3, 1, 2)


# --- nima.pytorch v1: MobileNetV2 ---------------------------------------------------------------

# t, c, n, s (nima/mobile_net_v2.py, `interverted_residual_setting`)
_V2 = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
       (6, 160, 3, 2), (6, 320, 1, 1))  # fmt: skip


def _v2_blocks():
    """(features index, in, out, stride, expand) of the 17 inverted residuals."""
    blocks, i, cin = [], 1, 32
    for t, c, n, s in _V2:
        for k in range(n):
            blocks.append((i, cin, c, s if k == 0 else 1, t))
            i, cin = i + 1, c
    return blocks


def _bn_shapes(prefix, c):
    return {f"{prefix}.{p}": (c,) for p in ("weight", "bias", "running_mean", "running_var")} | {
        f"{prefix}.num_batches_tracked": ()
    }


def mobilenet_v2_shapes() -> dict:
    """nima.pytorch v1 `NIMA().state_dict()` keys and shapes."""
    f = "base_model.0"
    shapes = {f"{f}.0.0.weight": (32, 3, 3, 3)} | _bn_shapes(f"{f}.0.1", 32)
    for i, cin, cout, _, t in _v2_blocks():
        h = cin * t
        shapes[f"{f}.{i}.conv.0.weight"] = (h, cin, 1, 1)
        shapes |= _bn_shapes(f"{f}.{i}.conv.1", h)
        shapes[f"{f}.{i}.conv.3.weight"] = (h, 1, 3, 3)
        shapes |= _bn_shapes(f"{f}.{i}.conv.4", h)
        shapes[f"{f}.{i}.conv.6.weight"] = (cout, h, 1, 1)
        shapes |= _bn_shapes(f"{f}.{i}.conv.7", cout)
    shapes[f"{f}.18.0.weight"] = (1280, 320, 1, 1)
    shapes |= _bn_shapes(f"{f}.18.1", 1280)
    return shapes | {"head.2.weight": (10, 1280), "head.2.bias": (10,)}


def mobilenet_v2_forward(sd, images_nhwc):
    """NIMA(MobileNetV2) of nima.pytorch v1 on [0, 1] images, no normalisation (UEGAN).
    The final AvgPool2d(7) is taken as the global mean (the same at 224, where the map is 7×7).
    """
    x = _nchw(images_nhwc)
    f, eps, same = "base_model.0", 1e-5, ((1, 1), (1, 1))
    x = relu(_conv_bn(x, sd, f"{f}.0.0", f"{f}.0.1", stride=2, pads=same, eps=eps))
    for i, cin, cout, s, t in _v2_blocks():
        p = f"{f}.{i}.conv"
        y = relu6(_conv_bn(x, sd, f"{p}.0", f"{p}.1", eps=eps))
        y = relu6(_conv_bn(y, sd, f"{p}.3", f"{p}.4", stride=s, pads=same, groups=cin * t,
                           eps=eps))  # fmt: skip
        y = _conv_bn(y, sd, f"{p}.6", f"{p}.7", eps=eps)
        x = x + y if (s == 1 and cin == cout) else y
    fmap = relu(_conv_bn(x, sd, f"{f}.18.0", f"{f}.18.1", eps=eps))
    pooled = relu(fmap.mean(axis=(2, 3)))
    logits = pooled @ sd["head.2.weight"].T.astype(np.float64) + sd["head.2.bias"]
    return fmap, softmax(logits)


# --- Keras MobileNet v1 (idealo / titu1994) ------------------------------------------------------

_V1 = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1),
       (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))  # fmt: skip
_KERAS_BN = ("gamma", "beta", "moving_mean", "moving_variance")


def mobilenet_keras_layers(dense: str = "dense_1") -> dict:
    """Keras layer name -> {weight name: shape} of the NIMA MobileNet, in model order."""
    layers = {"conv1": {"kernel:0": (3, 3, 3, 32)}}
    layers["conv1_bn"] = {f"{p}:0": (32,) for p in _KERAS_BN}
    cin = 32
    for n, (cout, _) in enumerate(_V1, 1):
        layers[f"conv_dw_{n}"] = {"depthwise_kernel:0": (3, 3, cin, 1)}
        layers[f"conv_dw_{n}_bn"] = {f"{p}:0": (cin,) for p in _KERAS_BN}
        layers[f"conv_pw_{n}"] = {"kernel:0": (1, 1, cin, cout)}
        layers[f"conv_pw_{n}_bn"] = {f"{p}:0": (cout,) for p in _KERAS_BN}
        cin = cout
    layers[dense] = {"kernel:0": (1024, 10), "bias:0": (10,)}
    return layers


def mobilenet_keras_shapes(dense: str = "dense_1") -> dict:
    """ "layer/weight:0" keys and shapes of the NIMA MobileNet's weights."""
    return {
        f"{layer}/{w}": s
        for layer, ws in mobilenet_keras_layers(dense).items()
        for w, s in ws.items()
    }


def _keras_conv_bn(x, w, conv, kernel, stride, groups):
    k = w[f"{conv}/{kernel}:0"].astype(np.float64)
    k = k.transpose(2, 3, 0, 1) if groups > 1 else k.transpose(3, 2, 0, 1)  # -> OIHW
    # ZeroPadding2D(((0, 1), (0, 1))) + 'valid' for stride 2; 'same' (1 all round) for 3×3 s1.
    if stride == 2:
        pads = ((0, 1), (0, 1))
    else:
        pads = ((k.shape[2] // 2,) * 2, (k.shape[3] // 2,) * 2)
    y = conv2d(x, k, None, stride, pads, groups)
    g, b, m, v = (w[f"{conv}_bn/{p}:0"] for p in _KERAS_BN)
    return relu6(batch_norm(y, g, b, m, v, 1e-3))


def mobilenet_keras_forward(w, images_nhwc, dense: str = "dense_1"):
    """Keras NIMA(MobileNet) on [0, 1] images: preprocess_input (x·255/127.5 − 1), MobileNet,
    GlobalAveragePooling2D, Dense(10) softmax."""
    x = _nchw(images_nhwc) * 255.0 / 127.5 - 1.0
    x = _keras_conv_bn(x, w, "conv1", "kernel", 2, 1)
    cin = 32
    for n, (cout, s) in enumerate(_V1, 1):
        x = _keras_conv_bn(x, w, f"conv_dw_{n}", "depthwise_kernel", s, cin)
        x = _keras_conv_bn(x, w, f"conv_pw_{n}", "kernel", 1, 1)
        cin = cout
    logits = x.mean(axis=(2, 3)) @ w[f"{dense}/kernel:0"] + w[f"{dense}/bias:0"]
    return x, softmax(logits)


# --- timm Inception-ResNet-v2 inside pyiqa's NIMA -----------------------------------------------

# A conv is (name, in, out, kernel (kh, kw), stride, padding (ph, pw)); branches are lists.


def _c(name, cin, cout, k, s=1, p=0):
    k = (k, k) if isinstance(k, int) else k
    p = (p, p) if isinstance(p, int) else p
    return (name, cin, cout, k, s, p)


def _seq(prefix, *convs):
    return [_c(f"{prefix}.{i}", *c) for i, c in enumerate(convs)]


def _block35(p):
    return [
        [_c(f"{p}.branch0", 320, 32, 1)],
        _seq(f"{p}.branch1", (320, 32, 1), (32, 32, 3, 1, 1)),
        _seq(f"{p}.branch2", (320, 32, 1), (32, 48, 3, 1, 1), (48, 64, 3, 1, 1)),
    ], (128, 320)


def _block17(p):
    return [
        [_c(f"{p}.branch0", 1088, 192, 1)],
        _seq(f"{p}.branch1", (1088, 128, 1), (128, 160, (1, 7), 1, (0, 3)),
             (160, 192, (7, 1), 1, (3, 0))),
    ], (384, 1088)  # fmt: skip


def _block8(p):
    return [
        [_c(f"{p}.branch0", 2080, 192, 1)],
        _seq(f"{p}.branch1", (2080, 192, 1), (192, 224, (1, 3), 1, (0, 1)),
             (224, 256, (3, 1), 1, (1, 0))),
    ], (448, 2080)  # fmt: skip


_B = "base_model"
_STEM = [_c(f"{_B}.conv2d_1a", 3, 32, 3, 2), _c(f"{_B}.conv2d_2a", 32, 32, 3),
         _c(f"{_B}.conv2d_2b", 32, 64, 3, 1, 1)]  # fmt: skip
_STEM2 = [_c(f"{_B}.conv2d_3b", 64, 80, 1), _c(f"{_B}.conv2d_4a", 80, 192, 3)]
_MIXED_5B = [
    [_c(f"{_B}.mixed_5b.branch0", 192, 96, 1)],
    _seq(f"{_B}.mixed_5b.branch1", (192, 48, 1), (48, 64, 5, 1, 2)),
    _seq(f"{_B}.mixed_5b.branch2", (192, 64, 1), (64, 96, 3, 1, 1), (96, 96, 3, 1, 1)),
    [_c(f"{_B}.mixed_5b.branch3.1", 192, 64, 1)],  # after AvgPool2d(3, 1, 1, no pad count)
]
_MIXED_6A = [
    [_c(f"{_B}.mixed_6a.branch0", 320, 384, 3, 2)],
    _seq(f"{_B}.mixed_6a.branch1", (320, 256, 1), (256, 256, 3, 1, 1), (256, 384, 3, 2)),
]  # + MaxPool2d(3, 2)
_MIXED_7A = [
    _seq(f"{_B}.mixed_7a.branch0", (1088, 256, 1), (256, 384, 3, 2)),
    _seq(f"{_B}.mixed_7a.branch1", (1088, 256, 1), (256, 288, 3, 2)),
    _seq(f"{_B}.mixed_7a.branch2", (1088, 256, 1), (256, 288, 3, 1, 1), (288, 320, 3, 2)),
]  # + MaxPool2d(3, 2)
_C7B = _c(f"{_B}.conv2d_7b", 2080, 1536, 1)


def _residuals(repeats=(10, 20, 9)):
    """(prefix, block, scale, ReLU after) of the residual blocks, in the three groups."""
    return (
        [(f"{_B}.repeat.{i}", _block35, 0.17, True) for i in range(repeats[0])],
        [(f"{_B}.repeat_1.{i}", _block17, 0.10, True) for i in range(repeats[1])],
        [(f"{_B}.repeat_2.{i}", _block8, 0.20, True) for i in range(repeats[2])]
        + [(f"{_B}.block8", _block8, 1.0, False)],
    )


def _all_convs(repeats):
    convs = _STEM + _STEM2 + [c for b in _MIXED_5B + _MIXED_6A + _MIXED_7A for c in b] + [_C7B]
    for group in _residuals(repeats):
        for prefix, make, _, _ in group:
            branches, _ = make(prefix)
            convs += [c for b in branches for c in b]
    return convs


def inception_resnet_v2_shapes(repeats=(10, 20, 9)) -> dict:
    """pyiqa `NIMA(base_model_name="inception_resnet_v2").state_dict()` keys and shapes
    (`repeats` < (10, 20, 9): the same with fewer residual blocks, for shallow test models)."""
    shapes = {}
    for name, cin, cout, (kh, kw), _, _ in _all_convs(repeats):
        shapes[f"{name}.conv.weight"] = (cout, cin, kh, kw)
        shapes |= _bn_shapes(f"{name}.bn", cout)
    for group in _residuals(repeats):
        for prefix, make, _, _ in group:
            _, (cin, cout) = make(prefix)
            shapes[f"{prefix}.conv2d.weight"] = (cout, cin, 1, 1)
            shapes[f"{prefix}.conv2d.bias"] = (cout,)
    return shapes | {"classifier.2.weight": (10, 1536), "classifier.2.bias": (10,)}


def _irv2_conv(x, sd, conv):
    name, _, _, _, s, (ph, pw) = conv
    y = _conv_bn(x, sd, f"{name}.conv", f"{name}.bn", stride=s, pads=((ph, ph), (pw, pw)),
                 eps=1e-3)  # fmt: skip
    return relu(y)


def _branches(x, sd, branches):
    outs = []
    for branch in branches:
        y = x
        for conv in branch:
            y = _irv2_conv(y, sd, conv)
        outs.append(y)
    return outs


def inception_resnet_v2_forward(sd, images_nhwc):
    """pyiqa NIMA(Inception-ResNet-v2) on [0, 1] images (already 299 or any size >= 75):
    (x − 0.5)/0.5, timm's network to conv2d_7b, global average pool, Linear, softmax. The
    number of residual blocks is read from the keys of `sd`."""
    x = (_nchw(images_nhwc) - 0.5) / 0.5
    for conv in _STEM:
        x = _irv2_conv(x, sd, conv)
    x = max_pool(x)
    for conv in _STEM2:
        x = _irv2_conv(x, sd, conv)
    x = max_pool(x)
    b0, b1, b2, b3 = _MIXED_5B
    x = np.concatenate(
        _branches(x, sd, [b0, b1, b2]) + [_irv2_conv(avg_pool_exclude_pad(x), sd, b3[0])], 1
    )
    repeats = tuple(
        len({k.split(".")[2] for k in sd if k.startswith(f"{_B}.{name}.")})
        for name in ("repeat", "repeat_1", "repeat_2")
    )
    for index, group in enumerate(_residuals(repeats)):
        for prefix, make, scale, act in group:
            branches, _ = make(prefix)
            up = conv2d(np.concatenate(_branches(x, sd, branches), 1),
                        sd[f"{prefix}.conv2d.weight"].astype(np.float64),
                        sd[f"{prefix}.conv2d.bias"])  # fmt: skip
            x = x + scale * up
            x = relu(x) if act else x
        if index == 0:
            x = np.concatenate(_branches(x, sd, _MIXED_6A) + [max_pool(x)], 1)
        elif index == 1:
            x = np.concatenate(_branches(x, sd, _MIXED_7A) + [max_pool(x)], 1)
    fmap = _irv2_conv(x, sd, _C7B)
    logits = fmap.mean(axis=(2, 3)) @ sd["classifier.2.weight"].T + sd["classifier.2.bias"]
    return fmap, softmax(logits)


# --- BN-Inception (pretrainedmodels/models/bninception.py) ---------------------------------------

# Per inception block, from BNInception.__init__: out channels of _1x1, _3x3_reduce, _3x3,
# _double_3x3_reduce, _double_3x3_1, _double_3x3_2, the pool ("avg" 3×3/1/pad 1,
# count_include_pad; "max" 3×3/1/pad 1; "max_s2" 3×3/2 ceil_mode, no projection) and _pool_proj.
# None: the block has no such layer. The reduction blocks (3c, 4e) stride 2 in _3x3 and
# _double_3x3_2.
_BNI = {
    "3a": (64, 64, 64, 64, 96, 96, "avg", 32),
    "3b": (64, 64, 96, 64, 96, 96, "avg", 64),
    "3c": (None, 128, 160, 64, 96, 96, "max_s2", None),
    "4a": (224, 64, 96, 96, 128, 128, "avg", 128),
    "4b": (192, 96, 128, 96, 128, 128, "avg", 128),
    "4c": (160, 128, 160, 128, 160, 160, "avg", 128),
    "4d": (96, 128, 192, 160, 192, 192, "avg", 128),
    "4e": (None, 128, 192, 192, 256, 256, "max_s2", None),
    "5a": (352, 192, 320, 160, 224, 224, "avg", 128),
    "5b": (352, 192, 320, 192, 224, 224, "max", 128),
}


def _w(c, width):
    return max(1, int(round(c * width)))


def bn_inception_convs(width: float = 1.0) -> list[tuple[str, int, int, int, int, int]]:
    """(name, in, out, kernel, stride, pad) of every BN-Inception conv at `width`."""
    convs = [
        ("conv1_7x7_s2", 3, _w(64, width), 7, 2, 3),
        ("conv2_3x3_reduce", _w(64, width), _w(64, width), 1, 1, 0),
        ("conv2_3x3", _w(64, width), _w(192, width), 3, 1, 1),
    ]
    cin = _w(192, width)
    for block, (c1, r3, c3, rd, d1, d2, pool, proj) in _BNI.items():
        p, s = f"inception_{block}", 2 if pool == "max_s2" else 1
        c1, r3, c3, rd, d1, d2 = (
            None if c is None else _w(c, width) for c in (c1, r3, c3, rd, d1, d2)
        )
        if c1 is not None:
            convs.append((f"{p}_1x1", cin, c1, 1, 1, 0))
        convs += [(f"{p}_3x3_reduce", cin, r3, 1, 1, 0), (f"{p}_3x3", r3, c3, 3, s, 1)]
        convs += [(f"{p}_double_3x3_reduce", cin, rd, 1, 1, 0),
                  (f"{p}_double_3x3_1", rd, d1, 3, 1, 1),
                  (f"{p}_double_3x3_2", d1, d2, 3, s, 1)]  # fmt: skip
        if proj is not None:
            convs.append((f"{p}_pool_proj", cin, _w(proj, width), 1, 1, 0))
            cin = (c1 or 0) + c3 + d2 + _w(proj, width)
        else:
            cin = (c1 or 0) + c3 + d2 + cin
    return convs


def bn_inception_shapes(width: float = 1.0, classes: int = 1000) -> dict:
    """pretrainedmodels `BNInception(num_classes=classes).state_dict()` keys and shapes (torch
    >= 0.4.1, with num_batches_tracked), at `width` (1 = the real network)."""
    shapes = {}
    for name, cin, cout, k, _, _ in bn_inception_convs(width):
        shapes[f"{name}.weight"] = (cout, cin, k, k)
        shapes[f"{name}.bias"] = (cout,)
        shapes |= _bn_shapes(f"{name}_bn", cout)
    features = sum(
        c for name, _, c, *_ in bn_inception_convs(width)
        if name.startswith("inception_5b") and name.endswith(("_1x1", "_3x3", "_2", "_proj"))
    )  # fmt: skip
    return shapes | {"last_linear.weight": (classes, features), "last_linear.bias": (classes,)}


def torch_pool(x, k, stride, pad, ceil_mode, mode):
    """torch max_pool2d / avg_pool2d (count_include_pad=True) on NCHW, following ATen's loops:
    output size with torch's ceil-mode rule, windows clipped to the input (max) or divided by
    their size within the padded input (avg)."""

    def out_size(n):
        span = n + 2 * pad - k
        o = (-(-span // stride) if ceil_mode else span // stride) + 1
        if ceil_mode and (o - 1) * stride >= n + pad:
            o -= 1
        return o

    h, w = x.shape[2:]
    ho, wo = out_size(h), out_size(w)
    out = np.empty((*x.shape[:2], ho, wo))
    for i in range(ho):
        for j in range(wo):
            h0, w0 = i * stride - pad, j * stride - pad
            h1, w1 = min(h0 + k, h + pad), min(w0 + k, w + pad)
            size = (h1 - h0) * (w1 - w0)
            window = x[:, :, max(h0, 0) : min(h1, h), max(w0, 0) : min(w1, w)]
            if mode == "max":
                out[:, :, i, j] = window.max(axis=(2, 3))
            else:
                out[:, :, i, j] = window.sum(axis=(2, 3)) / size
    return out


def bn_inception_forward(sd, images_nhwc, *, head: str = "last_linear"):
    """pretrainedmodels BNInception `features()` on [0, 1] RGB images (converted to its input:
    BGR, ×255, minus (104, 117, 128)), then the global mean and `head` Linear + softmax.
    Returns (inception_5b_output NCHW, probabilities). Widths are read from `sd`'s shapes."""
    x = _nchw(images_nhwc)[:, ::-1] * 255.0 - np.array([104.0, 117.0, 128.0])[None, :, None, None]
    spec = {name: (k, s, p) for name, _, _, k, s, p in bn_inception_convs(1.0)}

    def unit(name, y):  # Conv2d (bias) -> BatchNorm2d(eps 1e-5) -> ReLU (in place, fed on)
        k, s, p = spec[name]
        y = conv2d(y, sd[f"{name}.weight"].astype(np.float64), sd[f"{name}.bias"], s, ((p, p),) * 2)
        bn = [sd[f"{name}_bn.{q}"] for q in ("weight", "bias", "running_mean", "running_var")]
        return relu(batch_norm(y, *bn, 1e-5))

    x = torch_pool(unit("conv1_7x7_s2", x), 3, 2, 0, True, "max")
    x = torch_pool(unit("conv2_3x3", unit("conv2_3x3_reduce", x)), 3, 2, 0, True, "max")
    for block, (c1, *_, pool, _) in _BNI.items():
        p = f"inception_{block}"
        outs = [] if c1 is None else [unit(f"{p}_1x1", x)]
        outs.append(unit(f"{p}_3x3", unit(f"{p}_3x3_reduce", x)))
        d = unit(f"{p}_double_3x3_1", unit(f"{p}_double_3x3_reduce", x))
        outs.append(unit(f"{p}_double_3x3_2", d))
        if pool == "max_s2":
            outs.append(torch_pool(x, 3, 2, 0, True, "max"))
        else:
            outs.append(unit(f"{p}_pool_proj", torch_pool(x, 3, 1, 1, True, pool)))
        x = np.concatenate(outs, axis=1)
    logits = x.mean(axis=(2, 3)) @ sd[f"{head}.weight"].T.astype(np.float64) + sd[f"{head}.bias"]
    return x, softmax(logits)
