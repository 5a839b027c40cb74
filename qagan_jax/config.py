"""QAGAN configurations (`ml_collections`). Every [choice] of `spec/qagan.md` is a field here.

Variants: `paper` (the paper's networks and schedule), `demo` (paper networks, a short
schedule for the built-in demo set on a CPU), `smoke` (tiny widths and 32x32 images for tests).
"""

from __future__ import annotations

import ml_collections


def get_config(variant: str = "paper") -> ml_collections.ConfigDict:
    """Returns the configuration of a named variant: `paper`, `demo` or `smoke`."""
    c = ml_collections.ConfigDict()
    c.variant = variant
    c.seed = 0  # Root PRNG seed: parameter init and the per-step key (fold_in the step).

    # --- Networks ------------------------------------------------------------------------
    m = c.model = ml_collections.ConfigDict()
    m.vgg_width = 1  # VGG-19 channel divisor (1 = real VGG-19; >1 only for tiny test nets).
    m.vgg_weights = ""  # Pretrained VGG-19 (torchvision .pth, timm .safetensors or a converted
    #   directory; README "Pretrained weights"). "" = random VGG-19, with a loud warning.
    m.gen_width = 1  # Generator channel divisor relative to the paper's 64..512.
    m.disc_width = 1  # Discriminator channel divisor relative to the paper's 32..512.
    m.upsample = "nearest"  # Decoder x2 upsampling [S]: "nearest" | "bilinear".
    m.global_residual = False  # [choice] G_H out = clip(tanh + x, -1, 1) [U]; False: tanh only.
    m.zero_init_residual = True  # [choice] With global_residual, G_H's last conv starts at zero
    #   (G_H starts as the identity); False: default init.
    m.normalize_skips = False  # [choice] Mean-variance-normalise U-Net skips before concat.
    m.gl_skips = True  # [choice] G_L uses skips h3, h2, h1 from E(x_H); False drops them.
    m.reference = "roll"  # [choice] x_R for G_L: "roll" = low batch rolled by one | "self" = x_L.
    # QAM [choice] flags (spec/qagan.md section 4).
    m.qam_normalization = "nonlocal"  # Softmax over f_L positions j per f_H position i
    #   ("nonlocal") | over f_H positions i per j, Eq. 1 as printed ("literal").
    m.qam_residual = False  # f~_H = f_H + W_o y (non-local residual [S]); False: W_o y.
    m.qam_normalize_inputs = False  # Mean-variance-normalise f_H, f_L before the similarity
    #   projections W_theta, W_v [S].
    m.qam_scale_logits = False  # Scale the similarity logits by 1/sqrt(C').
    m.init = "orthogonal"  # Conv kernels of G and D: "orthogonal" x init_gain, the authors'
    #   UEGAN code [U] (layers start nearly silent) | "he" (LeakyReLU-gain He normal) [choice].
    m.init_gain = 0.02  # Gain of the orthogonal init [U].
    m.stat_ddof = 1  # Channel statistics (QAM Eq. 5, skip normalisation) sigma = sqrt(var +
    #   1e-5) with var over H*W positions / (H*W - stat_ddof): 1 = unbiased, as the authors'
    #   calc_mean_std [U]; 0 = biased. A 1x1 map divides by 1 (variance 0), never NaN.
    m.disc_all_heads = False  # [choice] Heads after all five D blocks (UEGAN) instead of 3, 5.
    m.disc_head = "tanh"  # D head logits: "tanh" [U]; "linear" [choice]: unbounded, so a D whose
    #   features grew cannot saturate its heads and stop learning (models.Discriminator).
    m.compute_dtype = "float32"  # "bfloat16": convolutions and activations in bfloat16 (GPU and
    #   TPU); parameters, optimiser states, QAM softmax and statistics and losses stay float32.

    # --- Losses --------------------------------------------------------------------------
    lo = c.loss = ml_collections.ConfigDict()
    lo.lambda_cc = 2.0  # Cycle-consistency weight: 2 for FiveK, 10 for Flickr [P].
    lo.rahinge_scale = 0.5  # [choice] 0.5 = authors' UEGAN code; 1.0 = paper Eq. 6-7.
    lo.cycle_distance = "mse"  # [choice] "mse" = mean squared difference per tap | "l2" =
    #   unsquared l2 norm of the feature difference per sample (paper Eq. 8 as written).

    # --- Optimisation --------------------------------------------------------------------
    o = c.opt = ml_collections.ConfigDict()
    o.learning_rate = 1e-4  # Both Adam optimisers (generators, discriminators) [P].
    o.b1 = 0.5  # Adam beta1 [P].
    o.b2 = 0.999  # Adam beta2 [P].
    o.decay_start_epoch = 75  # Constant learning rate until this epoch [P] ...
    o.num_epochs = 150  # ... then linear to zero at this epoch [P].
    o.steps_per_epoch = -1  # -1: from the data, ceil(larger training domain / batch)
    #   (FiveK's 2250 / 12 -> 188); the resolved value is written to the work directory.

    # --- Data ----------------------------------------------------------------------------
    d = c.data = ml_collections.ConfigDict()
    d.image_size = 128  # Training crop size after the resize (256 crop -> 128) [P].
    d.crop_size = 256  # Random crop of the short-side-512 image [P].
    d.test_size = 512  # Test resolution [P].
    d.worker_count = 0  # grain worker processes for the training stream (0: in the main process).

    # --- Evaluation (spec/qagan.md section 8) --------------------------------------------
    e = c.eval = ml_collections.ConfigDict()
    e.split = "test"  # Split of the final evaluation; periodic ones use "val" when it exists.
    e.round_trip_8bit = True  # Quantise outputs to 8 bits before scoring (PNG round trip).
    e.border = 0  # Pixels cropped per side before PSNR/SSIM (UEGAN crops 4; both are reported).
    e.nima_weights = ""  # NIMA checkpoint for the NIMA mean score ("" = not computed).
    e.nima_backbone = "mobilenet_v2"  # Its format (common.nima.load_nima): UEGAN's NIMA.
    e.nima_protocol = "uegan"  # Short side 256, centre crop 224 (common.nima.nima_quality).
    e.max_images = -1  # Images per periodic validation pass (-1: all).

    # --- Training loop -------------------------------------------------------------------
    t = c.train = ml_collections.ConfigDict()
    t.batch_size = 12  # Global batch (low and high each) [P]; sharded on the `data` axis.
    t.log_every = 50  # Steps between metric logs.
    t.checkpoint_every = 1000  # Steps between Orbax checkpoints.
    t.eval_every = 1000  # Steps between validation passes (0: only the final evaluation).
    t.sample_every = 1000  # Steps between PNG sample grids (input / G_H output / reference).
    t.num_samples = 4  # Images in a sample grid.
    t.keep_checkpoints = 3  # Orbax keeps the latest N checkpoints.

    if variant == "paper":
        pass
    elif variant == "demo":
        # The built-in demo set on a 2-core CPU in minutes (README "Results"): the paper's
        # networks at half width (the VGG-19 encoder full, so --vgg-weights loads), 256 crops
        # resized to 64 (the paper's 4x ratio to the test size), batch 4, 300 steps with the
        # paper's rate (linear decay over the last third), and G_H's global residual [U] so
        # that it starts near the identity instead of from noise; linear D heads, because with
        # tanh heads both discriminators saturate here by step ~150 (every head logit +1 on
        # real and fake, d_h = d_l = 2.000 from then on) and stop learning. Not a paper setting.
        m.gen_width = 2
        m.disc_width = 2
        m.global_residual = True
        m.disc_head = "linear"
        d.image_size = 64
        o.steps_per_epoch = 20
        o.decay_start_epoch = 10
        o.num_epochs = 15
        t.batch_size = 4
        t.log_every = 10
        t.checkpoint_every = 100
        t.eval_every = 50
        t.sample_every = 50
        e.max_images = 4
    elif variant == "smoke":
        m.vgg_width = 16
        m.gen_width = 16
        m.disc_width = 16
        o.steps_per_epoch = 2
        o.decay_start_epoch = 1
        o.num_epochs = 2
        d.image_size = 32
        d.crop_size = 64
        d.test_size = 64
        t.batch_size = 4
        t.log_every = 1
        t.checkpoint_every = 2
        t.eval_every = 2
    else:
        raise ValueError(f"unknown QAGAN config variant {variant!r}: paper | demo | smoke")
    return c
