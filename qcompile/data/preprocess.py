"""Image preprocessing: geometry (resize / centre crop) then per-channel affine normalisation.

For an RGB pixel value ``v`` in ``0..255`` of channel ``c`` the model input is::

    x[c] = (v * scale - mean[c]) / std[c]

laid out as float32 NCHW.  ``mean`` and ``std`` live in the *scaled* domain, so torchvision's
``ToTensor() + Normalize(m, s)`` is ``scale=1/255, mean=m, std=s`` and EfficientNet-Lite's
``(rgb - 127) / 128`` is ``scale=1, mean=127, std=128``.

Numerics: because ``v`` is a uint8 (PIL resampling also returns uint8), the map is tabulated
once as a 3x256 lookup table evaluated in float64 and rounded once to float32.  Each output is
therefore the correctly rounded float32 of the formula (e.g. ``np.float32((128/255-.485)/.229)``
for the CIFAR preset on a 128 pixel), independent of batch size or evaluation order.

Geometry, applied with Pillow in this order (each step optional):

1. ``resize``: scale so the shorter side equals ``resize`` (bicubic); the longer side becomes
   ``int(resize * long / short)`` (torchvision's rule).
2. ``crop``: centre crop ``crop x crop``; offsets ``round((H-crop)/2)``, ``round((W-crop)/2)``.
3. ``size``: resize exactly to ``size x size`` (bilinear), e.g. to feed a 128x128 photo to a
   224x224 model.

If an image already has the final square shape (``size`` if set, else ``crop``) all geometry is
skipped: such images are taken to be already cropped (e.g. ``imagenet_samples_120.npz`` holds
224x224 centre crops, and re-running resize-256 + crop-224 on them would zoom in a second time).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from qcompile.data.errors import DataError
from qcompile.data.limits import MAX_SIDE

__all__ = ["Preprocess", "PRESETS", "preset", "preset_names", "preprocess_from_options"]

_RESAMPLING = getattr(Image, "Resampling", Image)  # Image.Resampling needs Pillow >= 9.1
_BICUBIC = _RESAMPLING.BICUBIC
_BILINEAR = _RESAMPLING.BILINEAR

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def _as_triple(value: object, what: str) -> tuple[float, float, float]:
    """A scalar or a 1/3-element sequence (or comma string) -> 3 finite floats."""
    if isinstance(value, str):
        parts = [p for p in value.replace(" ", "").split(",") if p != ""]
        try:
            items = [_parse_number(p) for p in parts]
        except ValueError:
            items = []
    elif isinstance(value, (int, float, np.number)):
        items = [float(value)]
    elif isinstance(value, Sequence) or isinstance(value, np.ndarray):
        try:
            items = [float(v) for v in value]
        except (TypeError, ValueError):
            items = []
    else:
        items = []
    if len(items) == 1:
        items = items * 3  # one value for all channels, e.g. --mean 127
    if len(items) != 3 or not all(math.isfinite(v) for v in items):
        raise DataError(
            f"data: {what} {value!r} must be 1 or 3 comma-separated numbers, "
            f"e.g. --{what} 0.485,0.456,0.406"
        )
    return (items[0], items[1], items[2])


def _parse_number(text: str) -> float:
    """Parse '0.5', '1e-3' or a fraction such as '1/255' (how people write the scale)."""
    if "/" in text:
        num, den = text.split("/", 1)
        return float(num) / float(den)
    return float(text)


def _check_side(value: object, what: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise DataError(f"data: {what}={value!r} must be a positive integer number of pixels")
    if value > MAX_SIDE:  # a resize to 100000x100000 would allocate 120 GB
        raise DataError(f"data: {what}={value!r} is larger than {MAX_SIDE} pixels; choose a "
                        f"side in 1..{MAX_SIDE}")
    return int(value)


@functools.lru_cache(maxsize=32)
def _lut(scale: float, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """3x256 float32 table: lut[c, v] = float32((v*scale - mean[c]) / std[c]) in float64."""
    v = np.arange(256, dtype=np.float64)[None, :]
    table = (v * scale - np.asarray(mean, np.float64)[:, None]) / np.asarray(std, np.float64)[:, None]
    table = table.astype(np.float32)
    table.flags.writeable = False  # shared through the cache; must never be mutated
    return table


@dataclass(frozen=True)
class Preprocess:
    """Preprocessing recipe: ``x = (rgb*scale - mean)/std`` after optional resize/crop/size.

    ``name`` is informational only (presets fill it in) and is ignored by ``==``.
    """

    resize: int | None = None
    crop: int | None = None
    size: int | None = None
    scale: float = 1.0
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    name: str = field(default="custom", compare=False)

    def __post_init__(self) -> None:
        # Frozen dataclass: normalise through object.__setattr__ so lists/strings become tuples
        # and the instance stays hashable (it is a cache key for the lookup table).
        for side in ("resize", "crop", "size"):
            object.__setattr__(self, side, _check_side(getattr(self, side), side))
        scale = float(self.scale)
        if not math.isfinite(scale) or scale == 0.0:
            raise DataError(f"data: scale={self.scale!r} must be a finite non-zero number, e.g. 1/255")
        object.__setattr__(self, "scale", scale)
        object.__setattr__(self, "mean", _as_triple(self.mean, "mean"))
        std = _as_triple(self.std, "std")
        if any(s == 0.0 for s in std):
            raise DataError(f"data: std={std!r} contains 0; every channel needs a non-zero std")
        object.__setattr__(self, "std", std)

    # -- properties ---------------------------------------------------------------------
    @property
    def is_identity(self) -> bool:
        """True when the recipe leaves raw 0..255 pixels unchanged (the ``none`` preset)."""
        return (
            self.resize is None and self.crop is None and self.size is None
            and self.scale == 1.0 and self.mean == (0.0, 0.0, 0.0) and self.std == (1.0, 1.0, 1.0)
        )

    @property
    def output_size(self) -> int | None:
        """Final square side length if the recipe fixes it (``size`` else ``crop``), else None."""
        return self.size if self.size is not None else self.crop

    @property
    def lut(self) -> np.ndarray:
        """Read-only 3x256 float32 lookup table of the normalisation (see module docstring)."""
        return _lut(self.scale, self.mean, self.std)

    def describe(self) -> str:
        """One-line human summary, for CLI logs."""
        geo = []
        if self.resize is not None:
            geo.append(f"resize {self.resize} bicubic")
        if self.crop is not None:
            geo.append(f"centre crop {self.crop}")
        if self.size is not None:
            geo.append(f"size {self.size}x{self.size} bilinear")
        fmt = lambda t: ",".join(f"{v:g}" for v in t)  # noqa: E731
        return (f"{self.name}: {'; '.join(geo) or 'no resize'}; "
                f"x=(rgb*{self.scale:g}-[{fmt(self.mean)}])/[{fmt(self.std)}]")

    # -- geometry -----------------------------------------------------------------------
    def needs_geometry(self, height: int, width: int) -> bool:
        """Whether an HxW image must be resampled/cropped (False also for 'already final')."""
        final = self.output_size
        if final is not None and (height, width) == (final, final):
            return False
        if self.resize is not None and min(height, width) != self.resize:
            return True
        return self.crop is not None or self.size is not None

    def apply_geometry(self, img: Image.Image, where: str = "image") -> Image.Image:
        """Resize / crop / size an RGB PIL image per the recipe (see module docstring)."""
        w, h = img.size
        if not self.needs_geometry(h, w):
            return img
        if self.resize is not None and min(w, h) != self.resize:
            short, long = (w, h) if w <= h else (h, w)
            new_long = int(self.resize * long / short)  # torchvision truncates, not rounds
            new = (self.resize, new_long) if w <= h else (new_long, self.resize)
            img = img.resize(new, _BICUBIC)
            w, h = img.size
        if self.crop is not None and (w, h) != (self.crop, self.crop):
            if self.crop > w or self.crop > h:
                raise DataError(
                    f"data: {where} is {w}x{h} (after resize), smaller than the {self.crop}x"
                    f"{self.crop} centre crop; use --resize {self.crop} or --size {self.crop}"
                )
            top = int(round((h - self.crop) / 2.0))
            left = int(round((w - self.crop) / 2.0))
            img = img.crop((left, top, left + self.crop, top + self.crop))
        if self.size is not None and img.size != (self.size, self.size):
            img = img.resize((self.size, self.size), _BILINEAR)
        return img

    # -- full pipeline ------------------------------------------------------------------
    def normalize(self, hwc: np.ndarray) -> np.ndarray:
        """uint8 [N,H,W,3] (or [H,W,3]) -> float32 [N,3,H,W] (or [3,H,W]), no geometry."""
        if hwc.dtype != np.uint8 or hwc.shape[-1] != 3:
            raise DataError(f"data: expected uint8 RGB pixels [..., 3], got {hwc.dtype} {hwc.shape}")
        lut = self.lut
        out = np.empty(hwc.shape[:-3] + (3,) + hwc.shape[-3:-1], dtype=np.float32)
        for c in range(3):
            out[..., c, :, :] = lut[c][hwc[..., c]]  # table lookup == exact rounded formula
        return out

    def image_to_chw(self, img: Image.Image, where: str = "image") -> np.ndarray:
        """PIL image (any mode) -> float32 [3,H,W]; grayscale/RGBA/palette converted to RGB."""
        if img.mode != "RGB":
            img = img.convert("RGB")
        img = self.apply_geometry(img, where)
        return self.normalize(np.asarray(img, dtype=np.uint8))

    def array_to_nchw(self, nhwc: np.ndarray, where: str = "array") -> np.ndarray:
        """uint8 [N,H,W,3] -> float32 [N,3,H',W'], resampling image by image only if needed."""
        if not self.needs_geometry(nhwc.shape[1], nhwc.shape[2]):
            return self.normalize(nhwc)
        # Geometry goes through Pillow one image at a time so arrays and image files give
        # bit-identical results for the same pixels.
        return np.stack([self.image_to_chw(Image.fromarray(np.ascontiguousarray(im)), where)
                         for im in nhwc])


def _imagenet() -> Preprocess:
    return Preprocess(resize=256, crop=224, scale=1 / 255, mean=_IMAGENET_MEAN,
                      std=_IMAGENET_STD, name="imagenet")


PRESETS: dict[str, Preprocess] = {
    # torchvision ImageNet evaluation transform.
    "imagenet": _imagenet(),
    # CIFAR models of shared/data use the ImageNet mean/std (see shared/data/README.md); size=32
    # is a no-op on 32x32 images and resizes anything else bilinearly to 32x32.
    "cifar": Preprocess(size=32, scale=1 / 255, mean=_IMAGENET_MEAN, std=_IMAGENET_STD,
                        name="cifar"),
    # EfficientNet-Lite: (rgb - 127) / 128 at 224x224.
    "lite0": Preprocess(resize=256, crop=224, scale=1.0, mean=(127.0,) * 3, std=(128.0,) * 3,
                        name="lite0"),
    # Raw 0..255 pixels as float32.
    "none": Preprocess(name="none"),
}

_ALIASES = {"cifar10": "cifar", "efficientnet_lite0": "lite0", "efficientnet-lite0": "lite0",
            "raw": "none"}


def preset_names() -> list[str]:
    """Names accepted by :func:`preset` (aliases excluded)."""
    return list(PRESETS)


def preset(name: str, size: int | None = None) -> Preprocess:
    """The named preset; ``size`` replaces its geometry by an exact ``size x size`` resize."""
    key = _ALIASES.get(str(name).strip().lower(), str(name).strip().lower())
    if key not in PRESETS:
        raise DataError(f"data: unknown preprocessing preset {name!r}; "
                        f"choose one of {', '.join(PRESETS)}")
    base = PRESETS[key]
    if size is None:
        return base
    return dataclasses.replace(base, resize=None, crop=None, size=_check_side(size, "size"))


def preprocess_from_options(
    base: str | Preprocess | None = "none",
    *,
    size: int | None = None,
    resize: int | None = None,
    crop: int | None = None,
    mean: str | Sequence[float] | float | None = None,
    std: str | Sequence[float] | float | None = None,
    scale: str | float | None = None,
) -> Preprocess:
    """Layer explicit CLI options (``--size --resize --crop --mean --std --scale``) over a preset.

    ``None`` means "keep the preset's value".  ``resize=0`` / ``crop=0`` switch that step off.
    ``mean``/``std`` take ``"0.485,0.456,0.406"``, one number for all channels, or a sequence;
    ``scale`` takes a number or a fraction string such as ``"1/255"``.  ``size`` is applied as in
    :func:`preset` (it drops the preset's resize/crop) before explicit ``resize``/``crop``.
    """
    if isinstance(base, Preprocess):
        p = base if size is None else dataclasses.replace(base, resize=None, crop=None, size=size)
    else:
        p = preset(base or "none", size=size)
    changes: dict[str, object] = {}
    if resize is not None:
        changes["resize"] = None if resize == 0 else resize
    if crop is not None:
        changes["crop"] = None if crop == 0 else crop
    if mean is not None:
        changes["mean"] = _as_triple(mean, "mean")
    if std is not None:
        changes["std"] = _as_triple(std, "std")
    if scale is not None:
        try:
            changes["scale"] = _parse_number(scale) if isinstance(scale, str) else float(scale)
        except (TypeError, ValueError, ZeroDivisionError):
            raise DataError(f"data: scale {scale!r} is not a number; use e.g. --scale 1/255 "
                            "or --scale 0.00392156862745098") from None
    if not changes and size is None:
        return p
    return dataclasses.replace(p, name=f"{p.name}+options", **changes)
