"""Small pieces every command-line entry point shares."""

from __future__ import annotations

import logging

from absl import flags
from absl import logging as absl_logging


def quiet_library_logs() -> None:
    """Keeps libraries' INFO lines off the terminal (they break up the progress bars).

    absl shows INFO by default, so JAX's "Unable to initialize backend 'tpu'" probe, TFDS's
    dataset lines and Orbax's lines for every checkpoint step would print; warnings and errors
    still show, except TFDS's advice to install OpenCV for decoding (Pillow decodes fine). An
    explicit `--verbosity` (absl's flag) wins.
    """
    logging.getLogger("jax").setLevel(logging.WARNING)
    logging.getLogger("absl").addFilter(
        lambda record: "OpenCV is not installed" not in record.getMessage()
    )
    if not flags.FLAGS["verbosity"].present:
        absl_logging.set_verbosity(absl_logging.WARNING)
