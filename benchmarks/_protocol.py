"""The accuracy protocol of the low-bit benchmarks (issue 16, "How to measure").

Never score on calibration images. A *split* is ``(calib, eval)`` index arrays over a dataset:

* :func:`kfold`: ``k`` disjoint evaluation folds covering every image once (a seeded
  permutation cut into ``k`` parts); each fold calibrates on the other ``n - n/k`` images
  (the 120 ImageNet photos: 4 folds, calibrate on 90, evaluate on 30, all folds);
* :func:`holdout`: one split, ``n_calib`` calibration images and the other ones (or the first
  ``n_eval`` of them) for evaluation (CIFAR: 512 / 4,488).

The calibration images of a split are written to a temporary ``.npz`` (raw uint8 pixels and
labels, as in the source), so every pass sees exactly that set and nothing else.

Scores of a quantised model against the FP32 one on the evaluation images of a split
(:func:`scores`): top-1 of both, drop ``= 100 (top1_fp32 - top1_q)`` points, **top-1
agreement** ``= mean(argmax q == argmax fp32)`` and **logit SQNR** ``= 10 log10(sum fp^2 /
sum (fp - q)^2)`` over all logits of all evaluation images: the last two have far less noise
than accuracy on a small set. :func:`summary` gives mean and spread (population std) over the
splits and the pooled figures (all evaluation images of all folds together).

:func:`ort_peer` is the peer tool on the same split: ``onnxruntime.quantization.quantize_static``
(QDQ, uint8 activations, int8 weights, MinMax ranges on the split's calibration images),
per-tensor or per-channel, on the model as shipped (BatchNormalization unfolded) or after its
``quant_pre_process`` (which folds BN into the convolutions).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import onnx

Split = tuple[np.ndarray, np.ndarray]


def kfold(n: int, k: int, seed: int = 0) -> list[Split]:
    """``k`` splits whose evaluation parts are disjoint and cover ``range(n)``."""
    perm = np.random.default_rng(seed).permutation(n)
    parts = np.array_split(perm, k)
    return [(np.sort(np.concatenate([p for j, p in enumerate(parts) if j != i])),
             np.sort(parts[i])) for i in range(k)]


def holdout(n: int, n_calib: int, n_eval: int | None = None, seed: int = 0) -> list[Split]:
    """One split: a seeded draw of ``n_calib`` images, evaluation on the rest (or ``n_eval``)."""
    perm = np.random.default_rng(seed).permutation(n)
    rest = perm[n_calib:] if n_eval is None else perm[n_calib:n_calib + n_eval]
    return [(np.sort(perm[:n_calib]), np.sort(rest))]


def subset_npz(src: Path, idx: np.ndarray, folder: str) -> Path:
    """The images ``idx`` of npz ``src`` (``images``, ``labels``) as a new npz in ``folder``."""
    with np.load(src) as d:
        out = Path(folder) / f"calib_{len(idx)}.npz"
        np.savez(out, images=d["images"][idx], labels=d["labels"][idx])
    return out


def logits(model, ds, indices: np.ndarray, batch: int = 50) -> np.ndarray:
    """Logits of ``model`` (ModelProto or InferenceSession) on ``ds`` images ``indices``."""
    from qcompile.backends.ort.runtime import session

    s = model if hasattr(model, "run") else session(model, threads=1)
    name = s.get_inputs()[0].name
    return np.concatenate([s.run(None, {name: b.x})[0]
                           for b in ds.batches(batch, indices=indices)]).astype(np.float64)


def scores(fp: np.ndarray, q: np.ndarray, labels: np.ndarray) -> dict:
    """top-1 (FP32, quantised), drop in points, top-1 agreement, logit SQNR (dB)."""
    a_fp, a_q = fp.argmax(1), q.argmax(1)
    err = float(np.sum((fp - q) ** 2))
    sqnr = float("inf") if err == 0 else 10 * np.log10(float(np.sum(fp ** 2)) / err)
    t_fp, t_q = float(np.mean(a_fp == labels)), float(np.mean(a_q == labels))
    return {"images": int(len(labels)), "fp32": t_fp, "quantised": t_q,
            "drop_points": 100 * (t_fp - t_q), "agreement": float(np.mean(a_fp == a_q)),
            "sqnr_db": sqnr}


def summary(per_split: list[dict], fp: np.ndarray, q: np.ndarray, labels: np.ndarray) -> dict:
    """Mean and spread over splits of drop/agreement/SQNR, and the pooled scores."""
    out = {"pooled": scores(fp, q, labels), "splits": len(per_split)}
    for key in ("drop_points", "agreement", "sqnr_db"):
        vals = np.array([r[key] for r in per_split], np.float64)
        out[key] = {"mean": float(vals.mean()), "std": float(vals.std()),
                    "min": float(vals.min()), "max": float(vals.max())}
    return out


def ort_peer(model_path: Path, calib: list[np.ndarray], *, per_channel: bool,
             pre_process: bool) -> onnx.ModelProto:
    """ORT ``quantize_static`` of ``model_path`` calibrated on ``calib`` (model-input batches)."""
    from benchmarks._ortq import ort_quantized

    if not pre_process:
        return ort_quantized(onnx.load(model_path), per_channel=per_channel, calib=calib)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="qcompile-peer-") as d:
        dst = os.path.join(d, "pre.onnx")
        quant_pre_process(str(model_path), dst, skip_symbolic_shape=True)  # no sympy here
        return ort_quantized(onnx.load(dst), per_channel=per_channel, calib=calib)


PEERS = {  # config name: (per_channel, quant_pre_process)
    "ort:per-tensor": (False, False), "ort:per-channel": (True, False),
    "ort-pp:per-tensor": (False, True), "ort-pp:per-channel": (True, True),
}
