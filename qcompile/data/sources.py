"""Low-level readers for the supported data sources (internal; use :func:`open_dataset`).

Array layouts (detected from dtype and ndim, never guessed from values):

* ``uint8 [N,H,W,3]``: RGB images, NHWC, to be preprocessed;
* floating ``[N,C,H,W]``: model input that is ALREADY preprocessed, passed through as float32.

Memory: ``.npy`` files are opened with ``mmap_mode='r'`` so only the rows of the current batch
are read.  ``.npz`` members cannot be memory-mapped (they live inside a zip, usually
deflated), so the image member is read whole the first time a batch is requested; its shape
and dtype are taken from the member's ``.npy`` header at open time without loading it.
Folders keep only the list of file paths; images are decoded one by one.
"""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from qcompile.data.errors import DataError
from qcompile.data.limits import (
    check_array_bytes,
    check_pixels,
    check_regular_file,
    is_regular_file,
    read_small_file,
)

__all__ = ["IMAGE_EXTENSIONS", "ArrayReader", "scan_folder", "load_image", "npz_members",
           "UnreadableImage"]

#: Image file extensions recognised in folders (compared case-insensitively).
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
_EXPECTED = "expected uint8 NHWC images [N,H,W,3] or float32 NCHW [N,C,H,W]"
_IMAGE_KEYS = ("images", "x", "data")
_LABEL_KEYS = ("labels", "y")
_CLASS_KEYS = ("classes", "class_names")


class UnreadableImage(Exception):
    """Raised by :func:`load_image`; the dataset turns it into a warning or a DataError."""


def _layout(shape: tuple[int, ...], dtype: np.dtype) -> str | None:
    """'uint8' for NHWC RGB, 'float' for NCHW floating, None if neither."""
    if len(shape) != 4:
        return None
    if dtype == np.uint8:
        return "uint8"
    if np.issubdtype(dtype, np.floating):
        return "float"
    return None


def _npz_headers(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """{key: (shape, dtype)} of every member of an .npz, read from headers only."""
    out: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            if not info.filename.endswith(".npy"):
                continue
            key = info.filename[: -len(".npy")]
            with zf.open(info) as f:
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    shape, _, dtype = np.lib.format.read_array_header_1_0(f)
                elif version == (2, 0):
                    shape, _, dtype = np.lib.format.read_array_header_2_0(f)
                else:  # format 3.0 (utf-8 field names): rare; leave unknown, load if needed
                    shape, dtype = (), np.dtype(object)
                header = f.tell()
            # Before anything reads the member: its declared size within the budget and
            # within the bytes the zip says it holds (a lying header is refused, not allocated).
            check_array_bytes(tuple(shape), dtype.itemsize, f"{path} member '{key}'",
                              stored=max(info.file_size - header, 0))
            out[key] = (tuple(shape), dtype)
    return out


def _load_member(path: Path, key: str) -> np.ndarray:
    """Member ``key`` of the .npz ``path``; a truncated or CRC-broken member is a DataError."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return np.asarray(z[key])
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, KeyError) as exc:
        raise DataError(f"data: cannot read member '{key}' of {path} ({type(exc).__name__}: "
                        f"{exc}); the file is truncated or corrupt, re-save it with np.savez") from None


def npz_members(path: Path, names, n: int) -> dict[str, np.ndarray] | None:
    """{name: array} for the members of ``path`` named like ``names`` when all are there and
    each has ``n`` rows (one per image); None otherwise.  Loaded whole (npz members cannot be
    memory-mapped)."""
    try:
        headers = _npz_headers(path)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError):
        return None
    if not names or any(k not in headers or not headers[k][0] or headers[k][0][0] != n
                        for k in names):
        return None
    return {k: _load_member(path, k) for k in names}


class ArrayReader:
    """Rows of an image array from a ``.npz`` or ``.npy`` file, read batch by batch."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.labels: np.ndarray | None = None
        self.class_names: list[str] | None = None
        self._array: np.ndarray | None = None
        self._key: str | None = None
        try:
            check_regular_file(path)
            if path.suffix.lower() == ".npy":
                self._array = np.load(path, mmap_mode="r", allow_pickle=False)
                shape, dtype = self._array.shape, self._array.dtype
            else:
                shape, dtype = self._open_npz()
        except DataError:
            raise
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
            raise DataError(f"data: cannot read {path} ({type(exc).__name__}: {exc}); "
                            "is it a valid numpy file written by np.save/np.savez?") from None
        self.layout = _layout(shape, dtype)
        what = f"{path}" + (f" array '{self._key}'" if self._key else "")
        if self.layout is None:
            raise DataError(f"data: {what} has dtype {dtype} and shape {tuple(shape)}; {_EXPECTED}")
        if self.layout == "uint8" and shape[3] != 3:
            raise DataError(f"data: {what} has shape {tuple(shape)}: {shape[3]} channels, not 3 "
                            f"RGB; {_EXPECTED} (convert grayscale with np.repeat(x, 3, axis=-1))")
        if self.layout == "float" and shape[3] in (1, 3) and shape[1] not in (1, 3):
            # Floating [N,H,W,3] is almost surely NHWC by mistake; passing it through would
            # feed the model garbage, so say how to fix it instead.
            raise DataError(f"data: {what} has float shape {tuple(shape)}, which looks like NHWC; "
                            "preprocessed input must be NCHW (use x.transpose(0, 3, 1, 2))")
        if shape[0] == 0:
            raise DataError(f"data: {what} contains 0 images; nothing to calibrate or evaluate on")
        self.shape, self.dtype = tuple(int(s) for s in shape), np.dtype(dtype)
        if self.labels is not None and len(self.labels) != self.shape[0]:
            raise DataError(f"data: {path} has {self.shape[0]} images but {len(self.labels)} "
                            "labels; labels must have exactly one entry per image")

    def _open_npz(self) -> tuple[tuple[int, ...], np.dtype]:
        headers = _npz_headers(self.path)
        key = next((k for k in _IMAGE_KEYS if k in headers), None)
        if key is None:  # fall back to the first 4-D array in the archive
            key = next((k for k, (s, d) in headers.items() if _layout(s, d)), None)
        if key is None:
            keys = ", ".join(headers) or "none"
            raise DataError(f"data: {self.path} has no 'images' array (keys: {keys}); {_EXPECTED}")
        self._key = key
        lab_key = next((k for k in _LABEL_KEYS if k in headers), None)
        if lab_key is not None:
            self.labels = _check_labels(_load_member(self.path, lab_key), self.path, lab_key)
        cls_key = next((k for k in _CLASS_KEYS if k in headers), None)
        if cls_key is not None:
            classes = _load_member(self.path, cls_key)
            if classes.ndim == 1:
                self.class_names = [str(c) for c in classes.tolist()]
        return headers[key]

    def read(self, idx: np.ndarray) -> np.ndarray:
        """Raw rows ``array[idx]`` (a new in-memory array, never a view of the file)."""
        if self._array is None:
            # .npz: loading the whole member is unavoidable (zip members cannot be mmapped).
            self._array = _load_member(self.path, self._key)
        arr = self._array
        if len(idx) and idx[-1] - idx[0] + 1 == len(idx) and np.all(np.diff(idx) == 1):
            rows = arr[int(idx[0]) : int(idx[-1]) + 1]  # contiguous: one sequential read
        else:
            rows = arr[idx]
        return np.array(rows, copy=True)  # detach from the read-only memmap


def _check_labels(labels: np.ndarray, path: Path, key: str) -> np.ndarray:
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1 or not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool):
        raise DataError(f"data: {path} '{key}' has dtype {labels.dtype} and shape {labels.shape};"
                        " expected a 1-D integer class index per image")
    return labels.astype(np.int64)


def _is_image_name(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _images_under(folder: Path) -> list[Path]:
    """All image files below ``folder`` (recursive, hidden entries skipped), sorted by path."""
    found: list[tuple[tuple[str, ...], Path]] = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        rel = Path(root).relative_to(folder).parts
        found += [(rel + (f,), Path(root) / f) for f in files if _is_image_name(f)
                  and is_regular_file(Path(root) / f)]  # a FIFO named x.png would block
    return [p for _, p in sorted(found)]


def scan_folder(folder: Path) -> tuple[list[Path], np.ndarray | None, list[str] | None, list[str]]:
    """(files, labels, class_names, notes) for an image folder.

    ImageFolder layout: if any non-hidden subfolder holds images, the sorted subfolder names
    are the classes ``0..K-1`` (empty ones included so indices follow the sorted names) and
    every image below class ``k`` gets label ``k``.  Otherwise the folder is flat: its own
    images, sorted by name, without labels.  ``notes`` are warnings for the caller to emit.
    """
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as exc:
        raise DataError(f"data: cannot list folder {folder} ({exc}); check its permissions") from None
    subdirs = [e for e in entries if e.is_dir() and not e.name.startswith(".")]
    loose = [Path(e.path) for e in entries if e.is_file() and _is_image_name(e.name)]
    per_class = [(e.name, _images_under(Path(e.path))) for e in subdirs]
    notes: list[str] = []
    if any(files for _, files in per_class):
        files: list[Path] = []
        labels: list[int] = []
        for k, (name, imgs) in enumerate(per_class):
            if not imgs:
                notes.append(f"data: class folder {folder / name} has no images (class {k} kept)")
            files += imgs
            labels += [k] * len(imgs)
        if loose:
            notes.append(f"data: {len(loose)} image(s) directly in {folder} ignored, e.g. "
                         f"{loose[0].name}; with class subfolders only their images are used")
        return files, np.asarray(labels, dtype=np.int64), [n for n, _ in per_class], notes
    if not loose:
        raise DataError(f"data: folder {folder} contains no images "
                        f"(looked for {', '.join(IMAGE_EXTENSIONS)})")
    return loose, None, None, notes


def load_image(path: Path) -> Image.Image:
    """Decode one image file fully into RGB; raise :class:`UnreadableImage` if it cannot be
    (not a regular file, more pixels than :data:`~qcompile.data.limits.MAX_IMAGE_PIXELS`:
    both checked before anything is decoded)."""
    try:
        raw = io.BytesIO(read_small_file(path, "image"))  # see read_small_file: bounded reads
        with Image.open(raw) as im:
            check_pixels(im.size, path)
            im.load()  # force the full decode now so truncated files fail here
            return im.convert("RGB")  # grayscale / palette / RGBA / CMYK -> 3-channel RGB
    except DataError as exc:
        raise UnreadableImage(str(exc).removeprefix("data: ")) from None
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError,
            Image.DecompressionBombError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise UnreadableImage(f"{path}: {reason}") from None
