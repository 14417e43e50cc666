"""`open_dataset`: one streaming interface over .npz / .npy / image folders / single images.

A :class:`Dataset` yields :class:`Batch` es of model input ``x`` (float32 NCHW, C-contiguous),
integer ``labels`` (or None) and the dataset ``indices`` of the rows in the batch.  Memory per
batch is O(batch_size); it does not grow with the dataset (see :mod:`qcompile.data.sources` for
the one exception, .npz files).

Calibration/evaluation hygiene: :func:`calib_eval_split` draws two disjoint index sets from a
seeded permutation so quantisation ranges are fitted on images that accuracy is NOT measured on.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from qcompile.data.errors import DataError, DataWarning
from qcompile.data.limits import check_pixels, check_regular_file
from qcompile.data.model_input import ModelInput
from qcompile.data.preprocess import Preprocess, preset
from qcompile.data.sources import ArrayReader, UnreadableImage, load_image, npz_members, scan_folder
from qcompile.files import path_exists

__all__ = ["Batch", "Dataset", "open_dataset", "calib_eval_split"]

WarnFn = Callable[[str], object]


def _default_warn(message: str) -> None:
    warnings.warn(message, DataWarning, stacklevel=4)


class Batch(NamedTuple):
    """One batch: ``x`` float32 [B,C,H,W] contiguous (or as the model input declares, for a
    :meth:`Dataset.for_model` view); ``labels`` int64 [B] or None; ``indices``
    int64 [B] dataset positions of the rows (skipped unreadable images are absent)."""

    x: np.ndarray
    labels: np.ndarray | None
    indices: np.ndarray


def calib_eval_split(n: int, n_calib: int, seed: int = 0,
                     n_eval: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint (calib, eval) index arrays drawn from ``range(n)``.

    ``perm = np.random.default_rng(seed).permutation(n)``; calib is ``perm[:n_calib]`` and eval
    is the next ``n_eval`` entries (all the rest if None).  Both are returned sorted ascending
    (int64) so that memmapped files are read front to back.  Same (n, n_calib, n_eval, seed)
    -> same split.
    """
    n, n_calib = int(n), int(n_calib)
    rest = n - n_calib
    n_eval = rest if n_eval is None else int(n_eval)
    if n_calib < 0 or n_eval < 0 or n_calib + n_eval > n:
        raise DataError(f"data: cannot take {n_calib} calibration + {n_eval} evaluation images "
                        f"from a dataset of {n}; lower --calib-count/--eval-count")
    perm = np.random.default_rng(seed).permutation(n).astype(np.int64)
    return np.sort(perm[:n_calib]), np.sort(perm[n_calib : n_calib + n_eval])


class Dataset:
    """A sized, streaming image dataset; build it with :func:`open_dataset`.

    Attributes: ``source`` (path string), ``kind`` ('npz', 'npy', 'folder', 'imagefolder',
    'image'), ``labels`` (int64 [N] or None), ``class_names`` (list or None), ``files`` (image
    paths for folder/image sources, else None), ``preprocess`` (the recipe applied),
    ``is_preprocessed`` (True for float NCHW sources, which are passed through unchanged), and
    ``preprocess_ignored`` (True when such a source was opened with a non-identity recipe, so
    the CLI can tell the user that e.g. ``--preprocess imagenet`` had no effect).
    ``skipped`` lists the unreadable files met so far.
    """

    def __init__(self, source: str, kind: str, n: int, *, preprocess: Preprocess,
                 reader: ArrayReader | None = None, files: list[Path] | None = None,
                 labels: np.ndarray | None = None, class_names: list[str] | None = None,
                 strict: bool = False, warn: WarnFn | None = None) -> None:
        self.source, self.kind, self._n = source, kind, int(n)
        self.preprocess = preprocess
        self._reader, self._files = reader, files
        self.labels, self.class_names = labels, class_names
        self.strict = strict
        self._warn: WarnFn = warn or _default_warn
        self.is_preprocessed = reader is not None and reader.layout == "float"
        self.preprocess_ignored = self.is_preprocessed and not preprocess.is_identity
        self.skipped: list[str] = []
        self.model_input: ModelInput | None = None
        self._views: dict[ModelInput, Dataset] = {}

    def __len__(self) -> int:
        return self._n

    def __repr__(self) -> str:
        return f"Dataset({self.describe()})"

    @property
    def files(self) -> list[str] | None:
        return None if self._files is None else [str(p) for p in self._files]

    def describe(self) -> str:
        """One line for logs, e.g. 'x.npz: 5000 uint8 32x32 images, 10 classes, labelled'."""
        if self._reader is not None:
            s = self._reader.shape
            what = (f"{s[0]} float32 NCHW {s[1]}x{s[2]}x{s[3]} (already preprocessed)"
                    if self.is_preprocessed else f"{s[0]} uint8 {s[1]}x{s[2]} images")
        else:
            what = f"{self._n} image file(s)"
        extra = f", {len(self.class_names)} classes" if self.class_names else ""
        extra += ", labelled" if self.labels is not None else ", unlabelled"
        return f"{self.source}: {what}{extra}"

    def split(self, n_calib: int, seed: int = 0,
              n_eval: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """:func:`calib_eval_split` over this dataset's indices."""
        return calib_eval_split(len(self), n_calib, seed, n_eval)

    def batches(self, batch_size: int = 32, *, indices: np.ndarray | list[int] | None = None,
                limit: int | None = None) -> Iterator[Batch]:
        """Iterate over ``indices`` (default: all, in order) in batches of ``batch_size``.

        ``limit`` caps the number of images yielded.  Unreadable folder images are skipped with
        a warning (the batch is topped up from the following images) or raise with
        ``strict=True``.  Arguments are validated now, not at the first ``next()``.
        """
        if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
            raise DataError(f"data: batch size {batch_size!r} must be a positive integer")
        if limit is not None and (int(limit) != limit or limit < 0):
            raise DataError(f"data: limit {limit!r} must be a non-negative integer")
        idx = self._check_indices(indices)
        if self._reader is not None:
            if limit is not None:
                idx = idx[: int(limit)]  # arrays never skip, so the limit is a plain cut
            return self._array_batches(int(batch_size), idx)
        return self._file_batches(int(batch_size), idx, limit)

    def for_model(self, model_input: ModelInput,
                  log: Callable[[str], object] | None = None) -> Dataset:
        """A view of this dataset (same source, size, labels: the held-out rule is unchanged)
        whose batches are what ``model_input`` declares: recipe adapted to its fixed square
        size / raw pixels for uint8, then ``x`` transposed and cast to its layout and dtype
        (rules in :mod:`qcompile.data.model_input`).  Each adaptation is said once on ``log``.
        NCHW float32 inputs with no fixed size get ``self`` back."""
        if model_input in self._views:
            return self._views[model_input]
        hw = None if self._reader is None else tuple(self._reader.shape[1:3])
        if self.kind == "image" and self._files:  # one photo: its size is known (header only)
            try:
                with Image.open(self._files[0]) as im:
                    hw = (im.height, im.width)
            except (OSError, ValueError):
                hw = None
        pre, notes = model_input.adapt_preprocess(self.preprocess,
                                                  preprocessed=self.is_preprocessed, image_hw=hw)
        view = self
        if not (model_input.is_default and pre == self.preprocess):
            view = copy.copy(self)
            view.preprocess, view.model_input = pre, model_input
        for note in notes:
            (log or self._warn)(note)
        self._views[model_input] = view
        return view

    def arrays_named(self, names: Sequence[str]) -> dict[str, np.ndarray] | None:
        """For a several-input model: the .npz members named like ``names`` (all of them, one
        row per image, as stored), or None when this is not an .npz holding them all."""
        if self.kind != "npz":
            return None
        return npz_members(Path(self.source), names, len(self))

    # -- internals ----------------------------------------------------------------------
    def _check_indices(self, indices: np.ndarray | list[int] | None) -> np.ndarray:
        if indices is None:
            return np.arange(self._n, dtype=np.int64)
        idx = np.asarray(indices)
        if idx.ndim != 1 or not (np.issubdtype(idx.dtype, np.integer) or idx.size == 0):
            raise DataError(f"data: indices for {self.source} must be a 1-D integer array")
        idx = idx.astype(np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= self._n):
            bad = int(idx[(idx < 0) | (idx >= self._n)][0])
            raise DataError(f"data: index {bad} is out of range for {self.source} "
                            f"({self._n} images, valid 0..{self._n - 1})")
        return idx

    def _labels_of(self, idx: np.ndarray) -> np.ndarray | None:
        return None if self.labels is None else self.labels[idx]

    def _array_batches(self, bs: int, idx: np.ndarray) -> Iterator[Batch]:
        assert self._reader is not None
        for start in range(0, len(idx), bs):
            chunk = idx[start : start + bs]
            raw = self._reader.read(chunk)
            if self.is_preprocessed:
                # Already model input: pass through; never normalise twice.
                x = np.ascontiguousarray(raw, dtype=np.float32)
            else:
                x = self.preprocess.array_to_nchw(raw, where=self.source)
            yield Batch(self._to_model(x), self._labels_of(chunk), chunk)

    def _file_batches(self, bs: int, idx: np.ndarray, limit: int | None) -> Iterator[Batch]:
        assert self._files is not None
        xs: list[np.ndarray] = []
        kept: list[int] = []
        remaining = len(idx) if limit is None else min(len(idx), int(limit))
        for i in idx.tolist():
            if remaining == 0:
                break
            path = self._files[i]
            try:
                img = load_image(path)
            except UnreadableImage as exc:
                self._unreadable(str(path), str(exc))
                continue
            xs.append(self.preprocess.image_to_chw(img, where=str(path)))
            kept.append(i)
            remaining -= 1
            if len(xs) == bs:
                yield self._stack(xs, kept)
                xs, kept = [], []
        if xs:
            yield self._stack(xs, kept)

    def _unreadable(self, path: str, reason: str) -> None:
        if self.strict or self.kind == "image":
            raise DataError(f"data: cannot decode image {reason}; fix or remove the file"
                            + ("" if self.kind == "image" else " (or run without --strict)"))
        if path not in self.skipped:  # one warning per file even over several passes
            self.skipped.append(path)
            self._warn(f"data: skipping unreadable image {reason}")

    def _stack(self, xs: list[np.ndarray], kept: list[int]) -> Batch:
        shapes = {a.shape for a in xs}
        if len(shapes) > 1:
            a, b = sorted(shapes)[:2]
            raise DataError(
                f"data: images in {self.source} have different sizes after preprocessing "
                f"({a[1]}x{a[2]} and {b[1]}x{b[2]}); choose a preset or --size so all are "
                "resized to one size")
        idx = np.asarray(kept, dtype=np.int64)
        return Batch(self._to_model(np.stack(xs)), self._labels_of(idx), idx)

    def _to_model(self, x: np.ndarray) -> np.ndarray:
        return x if self.model_input is None else self.model_input.convert(x)


def open_dataset(path: str | Path, preprocess: Preprocess | None = None, *,
                 strict: bool = False, warn: WarnFn | None = None) -> Dataset:
    """Open ``path`` (.npz, .npy, image folder or one image file) as a :class:`Dataset`.

    ``preprocess`` defaults to the ``none`` preset (raw 0..255 pixels as float32).  Float NCHW
    array sources are already model input: ``preprocess`` is then not applied and
    ``Dataset.preprocess_ignored`` says whether a non-identity recipe was given.  ``warn``
    receives one-line warnings (default: :func:`warnings.warn` with :class:`DataWarning`).
    Raises :class:`DataError` (one line: path + fix) for anything unusable.
    """
    p = Path(path).expanduser()
    pre = preprocess if preprocess is not None else preset("none")
    if not isinstance(pre, Preprocess):
        raise DataError(f"data: preprocess must be a Preprocess, got {type(pre).__name__}; "
                        "use qcompile.data.preset('imagenet')")
    if not path_exists(p, DataError, "data"):
        raise DataError(f"data: {p} does not exist; pass a .npz, .npy, image file or image folder")
    common = dict(preprocess=pre, strict=strict, warn=warn)
    if p.is_dir():
        files, labels, classes, notes = scan_folder(p)
        ds = Dataset(str(p), "folder" if labels is None else "imagefolder", len(files),
                     files=files, labels=labels, class_names=classes, **common)
        for note in notes:
            ds._warn(note)
        return ds
    check_regular_file(p)  # before any open: a FIFO would block, a device stream forever
    suffix = p.suffix.lower()
    if suffix in (".npz", ".npy"):
        reader = ArrayReader(p)
        return Dataset(str(p), suffix[1:], reader.shape[0], reader=reader, labels=reader.labels,
                       class_names=reader.class_names, **common)
    try:  # any other file: a single image if Pillow recognises it
        with Image.open(p) as im:
            size = im.size  # header parsed; full decode checked below
    except Image.DecompressionBombError as exc:
        raise DataError(f"data: image {p} is too large to decode ({exc}); shrink it first") from None
    except (OSError, SyntaxError, ValueError, EOFError):
        raise DataError(f"data: {p} is not a supported data source; use a .npz, .npy, "
                        "an image file (.jpg .jpeg .png .bmp .webp) or a folder of images") from None
    check_pixels(size, p)
    ds = Dataset(str(p), "image", 1, files=[p], **common)
    try:
        load_image(p)  # decode once now so a broken --image fails at open, not mid-run
    except UnreadableImage as exc:
        ds._unreadable(str(p), str(exc))
    return ds
