"""NIMA-on-AVA configurations (`ml_collections`): `paper` and `smoke`.

[P] the NIMA paper (Talebi & Milanfar 2018, section III-C): SGD with momentum 0.9, learning
rates 3e-7 (backbone) and 3e-6 (last fully-connected layer), x0.95 every 10 epochs, dropout
0.75 before the head, images resized to 256 x 256 and randomly cropped to 224 x 224 with
horizontal flips. [choice] what the paper leaves open: batch size, epochs, the random split.
"""

from __future__ import annotations

import ml_collections

BACKBONES = ("bn_inception", "vgg16_gap", "mobilenet_v2")
# `model.width` of the smoke variant per backbone: BN-Inception at 1/8 of its channels, VGG16
# with its channels divided by 16; MobileNetV2 has no width argument (the full 2.2 M network).
SMOKE_WIDTH = {"bn_inception": 0.125, "vgg16_gap": 16, "mobilenet_v2": 1}


def get_config(variant: str = "paper") -> ml_collections.ConfigDict:
    """Returns the configuration of a named variant: `paper` or `smoke`."""
    c = ml_collections.ConfigDict()
    c.variant = variant
    c.seed = 0  # Root PRNG seed: head init, the data order and the dropout key (fold_in step).

    m = c.model = ml_collections.ConfigDict()
    m.backbone = "bn_inception"  # NIMA format of the network: bn_inception (the paper's
    #   Inception-v2) | vgg16_gap | mobilenet_v2 (common.nima.make_nima).
    m.width = 1.0  # bn_inception: channel multiplier (1 = the paper's); vgg16_gap: channel
    #   divisor (1 = real VGG16); mobilenet_v2: unused. Narrow nets are for smoke runs only.
    m.imagenet_weights = ""  # ImageNet checkpoint of the backbone [P: NIMA starts from it];
    #   "" = random backbone, with a loud warning.

    o = c.opt = ml_collections.ConfigDict()
    o.head_lr = 3e-6  # SGD rate of the last fully-connected layer [P].
    o.backbone_lr = 3e-7  # SGD rate of the backbone: ten times smaller [P].
    o.momentum = 0.9  # [P]
    o.decay_rate = 0.95  # Exponential decay of both rates ... [P]
    o.decay_epochs = 10  # ... applied every this many epochs (staircase) [P].
    o.num_epochs = 30  # [choice] not stated in the paper.
    o.steps_per_epoch = -1  # -1: ceil(training images / batch) from the data.

    d = c.data = ml_collections.ConfigDict()
    d.resize = 256  # Square resize when an image is read [P].
    d.crop = 224  # Random (train) / centre (eval) crop [P].
    d.test_fraction = 0.1  # [choice] Random split only (no train/test lists): test share.
    d.val_fraction = 0.02  # [choice] Share of train held out for monitoring.
    d.split_seed = 0  # Seed of the random splits.
    d.worker_count = 0  # grain worker processes (0: threads in this process).

    e = c.eval = ml_collections.ConfigDict()
    e.batch_size = 64  # Global evaluation batch (padded at the end of a split).
    e.val_max_images = 2000  # Images per periodic validation pass (-1: all of val).

    t = c.train = ml_collections.ConfigDict()
    t.batch_size = 128  # [choice] Global batch, sharded over `data`; not stated in the paper.
    t.log_every = 50  # Steps between metric lines.
    t.checkpoint_every = 1000  # Steps between Orbax checkpoints.
    t.eval_every = 2000  # Steps between validation passes (0: none).
    t.keep_checkpoints = 3  # Orbax keeps the latest N.

    if variant == "paper":
        pass
    elif variant == "smoke":
        # The whole path (train, checkpoint, evaluate, export) in a minute or two on a CPU:
        # the paper's backbone at 1/8 width, 72 -> 64 images (BN-Inception needs multiples of
        # 32), batch 8, six steps. Rates x1000 so that six steps move the weights visibly. Not
        # a setting to learn anything.
        m.width = SMOKE_WIDTH[m.backbone]
        o.head_lr = 3e-3
        o.backbone_lr = 3e-4
        o.decay_epochs = 1
        o.num_epochs = 2
        o.steps_per_epoch = 3
        d.resize = 72
        d.crop = 64
        d.test_fraction = 0.2
        d.val_fraction = 0.1
        e.batch_size = 8
        e.val_max_images = -1
        t.batch_size = 8
        t.log_every = 1
        t.checkpoint_every = 3
        t.eval_every = 3
        t.keep_checkpoints = 2
    else:
        raise ValueError(f"unknown NIMA config variant {variant!r}: paper | smoke")
    return c


def arch(config: ml_collections.ConfigDict) -> dict:
    """The `common.nima.make_nima` keyword arguments of a config's network.

    BN-Inception also records its training size (`data.crop`) as `input_size`, so that a
    guider or metric using the exported model resizes to what it was trained on (a smoke
    model: 64). The VGG16 and MobileNetV2 formats fix theirs at 224. Every head trains with
    the NIMA paper's dropout 0.75 (the VGG16 format's own default is none, as IQA-PyTorch's).
    """
    backbone = config.model.backbone
    if backbone == "bn_inception":
        return {"width": float(config.model.width), "input_size": int(config.data.crop)}
    if backbone == "vgg16_gap":
        return {"width": int(config.model.width), "dropout": 0.75}
    if backbone == "mobilenet_v2":
        return {}
    raise ValueError(f"unknown NIMA backbone {backbone!r}: {', '.join(BACKBONES)}")
