"""Data sources and preprocessing for calibration and evaluation (numpy + Pillow only).

Entry points used by the CLI (``--calib``, ``--data``, ``--image``)::

    pre = preprocess_from_options("imagenet", mean="0.5,0.5,0.5")   # or preset("cifar")
    ds = open_dataset("cifar10_test_dev.npz", preset("cifar"))
    calib_idx, eval_idx = ds.split(500, seed=0)
    for batch in ds.batches(64, indices=calib_idx):
        batch.x        # float32 NCHW, x = (rgb*scale - mean) / std
        batch.labels   # int64 or None
        batch.indices  # int64 positions in ds

Sources: ``.npz`` / ``.npy`` holding uint8 NHWC RGB images or float NCHW already-preprocessed
input, an image folder (flat, or ImageFolder class subfolders), or one image file.  Problems
raise :class:`DataError`, a ``ValueError`` with a one-line message naming the path and the fix.
"""

from qcompile.data.dataset import Batch, Dataset, calib_eval_split, open_dataset
from qcompile.data.errors import DataError, DataWarning
from qcompile.data.labels import CIFAR10_CLASSES, cifar10_classes, load_labels
from qcompile.data.preprocess import (
    PRESETS,
    Preprocess,
    preprocess_from_options,
    preset,
    preset_names,
)
from qcompile.data.sources import IMAGE_EXTENSIONS

__all__ = [
    "Batch",
    "CIFAR10_CLASSES",
    "DataError",
    "DataWarning",
    "Dataset",
    "IMAGE_EXTENSIONS",
    "PRESETS",
    "Preprocess",
    "calib_eval_split",
    "cifar10_classes",
    "load_labels",
    "open_dataset",
    "preprocess_from_options",
    "preset",
    "preset_names",
]
