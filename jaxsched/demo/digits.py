"""The data: scikit-learn's 8x8 handwritten digits (1797 images, bundled with scikit-learn, so
the demo works offline), scaled to [-1, 1]."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

#: Images after this index are held out of training (used for inversion and as a reference).
NUM_TRAIN = 1500
PIXEL_MAX = 16.0


class Digits(NamedTuple):
    """``images (n, 8, 8)`` float32 in ``[-1, 1]`` and ``labels (n,)``."""

    images: np.ndarray
    labels: np.ndarray


def load_digits() -> tuple[Digits, Digits]:
    """``(train, held_out)``: the first 1500 images and the remaining 297."""
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError as err:
        raise ImportError(
            'the demo needs scikit-learn for its data: pip install "jaxsched[demo]"'
        ) from err
    data = sklearn_digits()
    images = (data.images / (PIXEL_MAX / 2) - 1.0).astype(np.float32)
    labels = data.target.astype(np.int32)
    return (
        Digits(images[:NUM_TRAIN], labels[:NUM_TRAIN]),
        Digits(images[NUM_TRAIN:], labels[NUM_TRAIN:]),
    )


def to_pixels(images) -> np.ndarray:
    """``[-1, 1]`` images to uint8 grey levels (clipped)."""
    return np.clip((np.asarray(images) + 1.0) * 127.5, 0, 255).round().astype(np.uint8)
