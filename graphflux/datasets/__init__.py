"""Data sets: the UCI digits shipped with graphflux, and MNIST from files a user has."""
import gzip
import os
import struct

import numpy as np

from graphflux.compiler.errors import GraphfluxError


def digits():
    """The UCI 8x8 handwritten digits (1797 images; the copy of the UCI test set that
    scikit-learn also ships, CC BY 4.0): X float32 (1797, 64) in [0, 1], y int64 labels 0-9."""
    with np.load(os.path.join(os.path.dirname(__file__), "digits.npz")) as f:
        X = f["images"].astype(np.float32) / np.float32(16.0)
        y = f["labels"].astype(np.int64)
    return X, y


class DatasetError(GraphfluxError, FileNotFoundError):
    """A data set's files are missing or malformed."""


MNIST_FILES = {"train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
               "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte"}


def _read_idx(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 8:
        raise DatasetError(f"{path} is not an IDX file of unsigned bytes")
    ndim = data[3]
    shape = tuple(struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim]))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise DatasetError(f"{path} is truncated: {body.size} values for shape {shape}")
    return body.reshape(shape)


def mnist(folder):
    """MNIST from the four IDX files in `folder` (each may be gzipped):
    ((X_train, y_train), (X_test, y_test)), X float32 (n, 28, 28) in [0, 1], y int64.
    Flatten with X.reshape(len(X), -1) for Dense layers."""
    paths = {}
    for key, name in MNIST_FILES.items():
        found = [os.path.join(folder, n) for n in (name, name + ".gz")
                 if os.path.exists(os.path.join(folder, n))]
        paths[key] = found[0] if found else None
    missing = [MNIST_FILES[k] + "[.gz]" for k, p in paths.items() if p is None]
    if missing:
        raise DatasetError(f"MNIST files missing in {folder}: {', '.join(missing)}")

    def images(key):
        return _read_idx(paths[key]).astype(np.float32) / np.float32(255)

    def labels(key):
        return _read_idx(paths[key]).astype(np.int64)
    return ((images("train_images"), labels("train_labels")),
            (images("test_images"), labels("test_labels")))
