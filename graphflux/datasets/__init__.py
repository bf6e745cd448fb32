"""Data sets shipped with graphflux."""
import os

import numpy as np


def digits():
    """The UCI 8x8 handwritten digits (1797 images; the copy of the UCI test set that
    scikit-learn also ships, CC BY 4.0): X float32 (1797, 64) in [0, 1], y int64 labels 0-9."""
    with np.load(os.path.join(os.path.dirname(__file__), "digits.npz")) as f:
        X = f["images"].astype(np.float32) / np.float32(16.0)
        y = f["labels"].astype(np.int64)
    return X, y
