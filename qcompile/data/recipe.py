"""Which preprocessing a model needs: the one rule every command applies when ``--preprocess``
is not given.

Resolution order (first hit wins):

1. ``--preprocess`` given explicitly (``none`` included): used as is.
2. **Recorded**: a model written by ``qcompile run`` records the preset it was compiled with in
   its metadata under :data:`PREPROCESS_KEY` (ONNX ``metadata_props``); with several models
   (``compare``) they must agree.
3. **Detected** from the model's own description (its ONNX ``doc_string``): a normalisation
   formula that one preset implements, ``(rgb/255 - (0.485, 0.456, 0.406)) / (0.229, 0.224,
   0.225)`` (``cifar`` for a 32x32 input, else ``imagenet``) or ``(rgb - 127)/128`` (``lite0``).
   A model whose input is uint8 (raw pixels) needs none (``none``).
4. Data that is already preprocessed (a float32 NCHW ``.npy``/``.npz``) is fed as it is:
   ``none``.
5. Otherwise (uint8 images, an image folder or file) it is an error naming the presets: a
   silent ``none`` would feed raw 0..255 pixels and give wrong results (CIFAR FP32 at 3%).

Works on plain ``Mapping[str, str]`` metadata, like :mod:`qcompile.data.calibration`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from pathlib import Path

from qcompile.data.errors import DataError
from qcompile.data.preprocess import PRESETS

__all__ = ["PREPROCESS_KEY", "PRESET_CHOICES", "detect_preprocess", "raw_images",
           "recorded_preprocess", "record_preprocess", "resolve_preprocess"]

PREPROCESS_KEY = "qcompile.preprocess"
PRESET_CHOICES = "|".join(PRESETS)  # imagenet|cifar|lite0|none

_NUM = r"\s*[\[(]?\s*0?\.485\s*,\s*0?\.456\s*,\s*0?\.406\s*[\])]?\s*"
_IMAGENET_RE = re.compile(r"rgb\s*/\s*255\s*-" + _NUM + r"\)\s*/" + _NUM.replace(
    "485", "229").replace("456", "224").replace("406", "225"))
_LITE0_RE = re.compile(r"\(\s*rgb\s*-\s*127(\.5)?\s*\)\s*/\s*128")


def record_preprocess(metadata: MutableMapping[str, str], name: str | None) -> None:
    """Record preset ``name`` (only a preset name: custom recipes are not recorded)."""
    if isinstance(name, str) and name in PRESETS:
        metadata[PREPROCESS_KEY] = name


def recorded_preprocess(metadata: Mapping[str, str] | None) -> str | None:
    name = (metadata or {}).get(PREPROCESS_KEY)
    return name if name in PRESETS else None


def detect_preprocess(doc: str | None, side: int | None = None) -> str | None:
    """The preset a model's description names by its formula (rule 3), or None."""
    text = (doc or "").lower()
    if _LITE0_RE.search(text):
        return "lite0"
    if _IMAGENET_RE.search(text):
        return "cifar" if side == 32 else "imagenet"
    return None


def raw_images(source: object) -> bool:
    """True when ``source`` (a path or a Dataset) holds images that need preprocessing: an
    image file or folder, or a uint8 ``.npz``/``.npy``; False for float (preprocessed) arrays."""
    if hasattr(source, "is_preprocessed"):
        return not source.is_preprocessed
    p = Path(str(source)).expanduser()
    if not p.exists() or (p.is_dir() and not any(p.iterdir())):
        return False  # nothing to preprocess: opening it says what is wrong, in one line
    if p.suffix.lower() in (".npz", ".npy") and p.is_file():
        from qcompile.data.sources import ArrayReader

        return ArrayReader(p).layout != "float"
    return True


def resolve_preprocess(given: str | None, models: Iterable[tuple[str, Mapping[str, str] | None,
                                                                 str | None, int | None]],
                       data: object = None, *, raw_input: bool = False,
                       log: Callable[[str], None] = lambda m: None) -> str:
    """The preset to use (rules 1-5 of the module docstring).  ``models``: one
    ``(name, metadata, doc_string, fixed input side or None)`` per model; ``data``: the data
    source (path or Dataset) the preset will be applied to."""
    if given is not None:
        return given
    models = list(models)
    found = {}
    for name, md, _, _ in models:
        rec = recorded_preprocess(md)
        if rec is not None:
            found[name] = rec
    if len(set(found.values())) > 1:
        raise DataError("preprocess: the models record different preprocessing ("
                        + ", ".join(f"{k}: {v}" for k, v in found.items())
                        + "); give --preprocess explicitly")
    if found:
        return next(iter(found.values()))  # ours: what it was compiled with, no note
    if raw_input:
        return "none"
    for name, _, doc, side in models:
        det = detect_preprocess(doc, side)
        if det is not None:
            log(f"preprocess: {det} (detected from {name}'s description; --preprocess "
                "overrides)")
            return det
    if data is None or not raw_images(data):
        return "none"
    where = getattr(data, "source", data)
    names = ", ".join(n for n, *_ in models) or "the model"
    raise DataError(f"data: {where} holds uint8 images but no --preprocess was given and "
                    f"{names} records none; give --preprocess {PRESET_CHOICES} (none: raw "
                    "0..255 pixels)")
