"""Feeding a model its input as it declares it: layout, dtype, spatial size and batch size.

The datasets produce float32 NCHW (``x = (rgb*scale - mean)/std``).  A graph input may instead
declare (the IR is not imported here: callers pass the input's ``name``, ``shape`` as a tuple
of ints / strings / None and ``dtype`` as a numpy dtype name):

* **layout**: ``NHWC`` when the shape is 4-D, its last dim is a fixed 1 or 3 and dim 1 is not a
  fixed 1 or 3 (tf2onnx keeps ``[N,H,W,3]``); otherwise ``NCHW`` (also when nothing is known).
* **dtype**: ``float32`` (as produced), ``float16`` (cast once from the float32 values),
  ``uint8`` (the raw 0..255 pixels: the recipe's scale/mean/std are dropped, geometry kept;
  already-preprocessed float sources are refused).  Any other dtype is a one-line error.
* **spatial size**: when H and W are fixed and equal (``s``), the recipe is made to end at
  ``s x s``: a centre crop becomes ``s`` (a resize before it keeps its ratio to the crop,
  e.g. 256/224), otherwise an exact ``size=s`` resize; images already ``s x s`` are untouched.
* **batch**: a fixed first dim ``B`` is the batch every run must have.  :func:`run_batched`
  is the one rule: rows are run in chunks of exactly ``B`` (``B = 1``: each image alone); a
  last chunk of ``0 < r < B`` rows is completed by repeating its last row and the padded rows
  are cut from every output before anyone sees them, so statistics, logits and accuracies
  only ever cover real images and none is dropped.  A symbolic batch runs the rows as given.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from qcompile.data.errors import DataError
from qcompile.data.preprocess import Preprocess

__all__ = ["ModelInput", "run_batched"]

_DTYPES = ("float32", "float16", "uint8")


def _fixed(d: object) -> int | None:
    return int(d) if isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d > 0 \
        else None


@dataclass(frozen=True)
class ModelInput:
    """One graph input: ``name``, ``shape`` (ints for fixed dims, str/None otherwise, or None
    when unknown) and ``dtype`` (a numpy dtype name, e.g. 'float32')."""

    name: str
    shape: tuple[object, ...] | None = None
    dtype: str = "float32"

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", None if self.shape is None else tuple(self.shape))
        try:
            dtype = str(np.dtype(self.dtype)) if self.dtype else "float32"
        except TypeError:  # a name numpy does not know (bfloat16): kept, refused when fed
            dtype = str(self.dtype)
        object.__setattr__(self, "dtype", dtype)

    # -- what the model declares --------------------------------------------------------
    @property
    def layout(self) -> str:
        s = self.shape
        if s is not None and len(s) == 4 and _fixed(s[3]) in (1, 3) and _fixed(s[1]) not in (1, 3):
            return "NHWC"
        return "NCHW"

    @property
    def batch(self) -> int | None:
        """The fixed batch size, or None when the first dim is symbolic/unknown."""
        return _fixed(self.shape[0]) if self.shape else None

    @property
    def spatial(self) -> tuple[int, int] | None:
        """Fixed (H, W), else None."""
        if self.shape is None or len(self.shape) != 4:
            return None
        h, w = (self.shape[1], self.shape[2]) if self.layout == "NHWC" else self.shape[2:]
        return (_fixed(h), _fixed(w)) if _fixed(h) and _fixed(w) else None

    @property
    def nchw_shape(self) -> tuple[object, ...] | None:
        """The declared shape in NCHW order (what the dataset's float32 batches must match)."""
        s = self.shape
        return (s[0], s[3], s[1], s[2]) if self.layout == "NHWC" else s

    @property
    def is_default(self) -> bool:
        """NCHW float32: the dataset's output is fed unchanged."""
        return self.layout == "NCHW" and self.dtype == "float32"

    def check_dtype(self) -> None:
        if self.dtype not in _DTYPES:
            raise DataError(f"data: model input {self.name!r} has dtype {self.dtype}; image data "
                            f"can be fed as {', '.join(_DTYPES)} only")

    # -- adapting the data --------------------------------------------------------------
    def adapt_preprocess(self, pre: Preprocess, *, preprocessed: bool = False,
                         image_hw: tuple[int, int] | None = None
                         ) -> tuple[Preprocess, list[str]]:
        """(recipe ending at the model's fixed square size / raw pixels for uint8, log lines);
        ``image_hw``: the images' size when known (no resize note when they already fit)."""
        self.check_dtype()
        notes: list[str] = []
        if self.dtype == "uint8":
            if preprocessed:
                raise DataError(f"data: model input {self.name!r} is uint8 (raw pixels) but the "
                                "data is already-preprocessed float; give uint8 images")
            if (pre.scale, pre.mean, pre.std) != (1.0, (0.0,) * 3, (1.0,) * 3):
                pre = dataclasses.replace(pre, scale=1.0, mean=(0.0,) * 3, std=(1.0,) * 3)
            notes.append(f"data: model input {self.name!r} is uint8: feeding the raw 0..255 "
                         "pixels, no normalisation (scale/mean/std not applied)")
        sp = self.spatial
        if sp is not None and sp[0] == sp[1] and not preprocessed and pre.output_size != sp[0]:
            s = sp[0]
            if pre.crop is not None:
                resize = None if pre.resize is None else max(s, round(pre.resize * s / pre.crop))
                pre = dataclasses.replace(pre, resize=resize, crop=s, size=None)
            else:
                pre = dataclasses.replace(pre, resize=None, size=s)
            if image_hw != (s, s) or pre.resize is not None:
                notes.append(f"data: model input {self.name!r} is {s}x{s}: images resized to it "
                             f"({pre.describe()})")
        elif sp is not None and sp[0] == sp[1] and not preprocessed and image_hw is not None \
                and tuple(image_hw) != tuple(sp):  # the recipe already fits: say what it does
            notes.append(f"data: model input {self.name!r} is {sp[0]}x{sp[1]}: "
                         f"{image_hw[0]}x{image_hw[1]} images resized/cropped to it "
                         f"({pre.describe()})")
        if self.layout == "NHWC" or self.dtype != "float32":
            how = " and ".join(w for w, on in (("transposed", self.layout == "NHWC"),
                                                ("cast", self.dtype != "float32")) if on)
            notes.append(f"data: model input {self.name!r} is {self.layout} {self.dtype}: "
                         f"batches {how} to it after preprocessing")
        return pre, notes

    def convert(self, x: np.ndarray) -> np.ndarray:
        """float32 NCHW batch -> the declared layout and dtype (C-contiguous)."""
        self.check_dtype()
        if self.layout == "NHWC" and x.ndim == 4:
            x = x.transpose(0, 2, 3, 1)
        if self.dtype == "uint8":
            x = np.clip(np.rint(x), 0, 255)
        return np.ascontiguousarray(x, dtype=np.dtype(self.dtype))


def run_batched(run: Callable[[dict[str, np.ndarray]], Sequence[np.ndarray]],
                feeds: Mapping[str, np.ndarray], batch: int | None) -> list[np.ndarray]:
    """``run(feeds)`` honouring a fixed model ``batch`` (see the module docstring): the feeds'
    rows go in chunks of exactly ``batch``; outputs are concatenated back to one row per input
    row.  An output whose first dim is not the chunk size cannot be split per image: error."""
    feeds = {k: np.asarray(v) for k, v in feeds.items()}
    rows = {int(v.shape[0]) for v in feeds.values() if v.ndim}
    if batch is None or not rows or rows == {batch}:
        return list(run(feeds))
    if len(rows) != 1:
        raise DataError(f"data: inputs {', '.join(feeds)} have different batch sizes {sorted(rows)}")
    n = rows.pop()
    parts: list[list[np.ndarray]] = []
    for start in range(0, n, batch):
        take = min(batch, n - start)
        chunk = {}
        for k, v in feeds.items():
            c = v[start:start + take]
            if take < batch:  # complete the last chunk; its extra rows are cut below
                c = np.concatenate([c, np.repeat(c[-1:], batch - take, axis=0)])
            chunk[k] = c
        outs = list(run(chunk))
        for o in outs:
            if np.ndim(o) == 0 or np.shape(o)[0] != batch:
                raise DataError(f"data: the model has a fixed batch of {batch} but an output has "
                                f"shape {list(np.shape(o))}; cannot split it per image")
        parts.append([np.asarray(o)[:take] for o in outs])
    return [np.concatenate(col) for col in zip(*parts, strict=True)]
