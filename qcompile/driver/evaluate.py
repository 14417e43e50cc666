"""Evaluation of model files on labelled images: ``qcompile eval`` and ``qcompile compare``.

Both feed the images as the model's input declares them (layout, dtype, fixed size) and in its
fixed batch size, if any (:mod:`qcompile.data.model_input`; latency is then measured at that
batch only).

* ``evaluate_model``: top-1 / top-5 accuracy, per-class accuracy, latency at batch 1 and 8
  (ONNX Runtime, warm-up then the median of timed runs), model file size.
* ``compare_models``: on the same images, top-1 agreement of A and B, both accuracies and the
  delta ``acc(B) - acc(A)``, and the SQNR of B's logits against A's:
  ``10 log10(sum a^2 / sum (a - b)^2)`` over all images.

Calibration hygiene: a model written by ``calibrate`` records its calibration images in the
metadata ``qcompile.calibration``; when the evaluation data is the same source (same resolved
path and size) those images are left out, so accuracy is never measured on calibration images.
``compare`` leaves out the union of both models' calibration images.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from qcompile.backends.ort.measure import ModelRunner, node_providers, provider_summary, tile_batch
from qcompile.data import Dataset
from qcompile.data.calibration import calibration_indices
from qcompile.data.model_input import ModelInput, run_batched
from qcompile.driver.context import open_data
from qcompile.driver.defaults import SOURCE_KEY, choose_preprocess, limited, runner_facts
from qcompile.driver.progress import track
from qcompile.errors import QCompileError
from qcompile.numerics.error import sqnr_from_sums


def _open(data: str | Dataset, preprocess: str | None, runners: list[ModelRunner],
          log: Callable[[str], None]) -> Dataset:
    """The data with ``preprocess``, or (None) the preset the models record / describe, or a
    one-line refusal for uint8 images (driver/defaults.py, data/recipe.py)."""
    if isinstance(data, Dataset):
        return data
    pre = choose_preprocess(preprocess, [runner_facts(r) for r in runners], data, log)
    return open_data(data, pre, log=log)


_ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(uint8)": "uint8",
              "tensor(double)": "float64", "tensor(int8)": "int8"}


def _fit(runner: ModelRunner, ds: Dataset | None, log: Callable[[str], None]
         ) -> tuple[Dataset, Callable[[np.ndarray], np.ndarray], int | None]:
    """(the data as the model's input declares it, predict in the model's fixed batch, that
    batch or None): see :mod:`qcompile.data.model_input`."""
    t = runner.input.type
    spec = ModelInput(runner.input.name, tuple(runner.input.shape or ()) or None,
                      _ORT_TYPES.get(t, t.removeprefix("tensor(").rstrip(")")))
    name = runner.input.name
    return (None if ds is None else ds.for_model(spec, log=log),
            lambda x: run_batched(lambda f: [runner.predict(f[name])], {name: x}, spec.batch)[0],
            spec.batch)


def _eval_indices(ds: Dataset, exclude: np.ndarray, limit: int | None, seed: int = 0
                  ) -> tuple[np.ndarray, dict | None]:
    """(held-out positions, at most ``limit`` by the seeded stratified draw; its record)."""
    if ds.labels is None:
        raise QCompileError(f"data: {ds.source} has no labels; evaluation needs labelled images "
                            "(an .npz with 'labels' or class subfolders)")
    idx, rec = limited(ds, np.setdiff1d(np.arange(len(ds), dtype=np.int64), exclude), limit, seed)
    if idx.size == 0:
        raise QCompileError(f"data: no evaluation images left in {ds.source} "
                            f"({len(exclude)} used for calibration)")
    return idx, rec


def _topk(logits: np.ndarray, k: int) -> np.ndarray:
    k = min(k, logits.shape[1])
    return np.argsort(-logits, axis=1, kind="stable")[:, :k]


def evaluate_model(model: str, data: str | Dataset, *, preprocess: str | None = None,
                   limit: int | None = None, batch: int = 64, latency: bool = True,
                   device: str = "cpu", threads: int = 0, exclude_calibration: bool = True,
                   indices: np.ndarray | None = None, seed: int = 0, baseline: bool = True,
                   cluster: str | None = None, progress: Callable | None = None,
                   log: Callable[[str], None] = lambda m: None) -> dict[str, Any]:
    """Accuracy, per-class accuracy, latency (batch 1 and 8) and size of one model file; for
    an int8 model written by ``qcompile run``, the float model it came from on the same
    images (``fp32_baseline``) when that file is still there."""
    runner = ModelRunner(model, device=device, threads=threads)
    ds = _open(data, preprocess, [runner], log)
    excluded = calibration_indices(runner.metadata, ds) if exclude_calibration else np.zeros(0, np.int64)
    idx, limit_rec = (_eval_indices(ds, excluded, limit, seed) if indices is None
                      else (np.asarray(indices), None))
    raw_ds = ds
    opened = ds
    ds, predict, fixed = _fit(runner, ds, log)
    correct1 = correct5 = n = 0
    classes = ds.class_names
    per_class: dict[int, list[int]] = {}
    first: np.ndarray | None = None
    t0 = time.perf_counter()
    todo = ((b.x[:8], b.labels, _check_logits(predict(b.x), model))
            for b in track(ds.batches(batch, indices=idx), len(idx),
                           f"eval {Path(model).name}", None if cluster else progress))
    if cluster:
        todo = _cluster_logits(cluster, model, data, opened, ds, batch, idx, device, threads,
                               log, progress)
    for x8, labels, logits in todo:
        if first is None:
            first = x8
        top = _topk(logits, 5)
        hit1 = top[:, 0] == labels
        correct1 += int(hit1.sum())
        correct5 += int((top == labels[:, None]).any(axis=1).sum())
        n += len(labels)
        for lab, h in zip(labels.tolist(), hit1.tolist(), strict=True):
            c = per_class.setdefault(lab, [0, 0])
            c[0] += int(h)
            c[1] += 1
    seconds = time.perf_counter() - t0
    report: dict[str, Any] = {
        "model": str(model), "data": ds.source, "images": n,
        "excluded_calibration_images": int(excluded.size),
        "top1": correct1 / n, "top5": correct5 / n,
        "per_class": {(classes[k] if classes and k < len(classes) else str(k)):
                      {"accuracy": v[0] / v[1], "images": v[1]}
                      for k, v in sorted(per_class.items())},
        "size_bytes": runner.size_bytes, "int8": runner.int8,
        "providers": runner.providers[:1], "eval_seconds": round(seconds, 3),
        "limit": limit_rec,
    }
    source = runner.metadata.get(SOURCE_KEY)
    if baseline and runner.int8:
        if source and Path(source).is_file():
            base = evaluate_model(source, raw_ds, limit=None, batch=batch, latency=False,
                                  device=device, threads=threads, indices=idx, baseline=False,
                                  log=log, progress=progress)
            report["fp32_baseline"] = {"model": source, "top1": base["top1"],
                                       "top5": base["top5"]}
        else:
            report["fp32_baseline"] = None
    if device != "cpu" and first is not None:  # which EP ran each node (TensorRT or not)
        eps = node_providers(model, tile_batch(first, fixed or 1), device=device)
        report["node_providers"] = provider_summary(eps)
    if latency and first is not None:
        report["latency_ms"] = {str(bs): round(runner.latency_ms(tile_batch(first, bs)), 3)
                                for bs in ((fixed,) if fixed else (1, 8))}
    return report


def compare_models(a: str, b: str, data: str | Dataset, *, preprocess: str | None = None,
                   limit: int | None = None, batch: int = 64, device: str = "cpu",
                   threads: int = 0, seed: int = 0, log: Callable[[str], None] = lambda m: None,
                   progress: Callable | None = None) -> dict[str, Any]:
    """Top-1 agreement, accuracy delta and logit SQNR of B against A on the same images."""
    ra = ModelRunner(a, device=device, threads=threads)
    rb = ModelRunner(b, device=device, threads=threads)
    ds = _open(data, preprocess, [ra, rb], log)
    excluded = np.union1d(calibration_indices(ra.metadata, ds), calibration_indices(rb.metadata, ds))
    idx, limit_rec = _eval_indices(ds, excluded, limit, seed)
    ds_a, pred_a, _ = _fit(ra, ds, log)
    ds_b, pred_b, _ = _fit(rb, ds, log)
    def key(d: Dataset) -> tuple:
        m = d.model_input
        return (d.preprocess, "NCHW" if m is None else m.layout, "float32" if m is None else m.dtype)

    if key(ds_a) != key(ds_b):
        raise QCompileError(f"compare: {a} and {b} declare different inputs "
                            f"({ra.input.shape} {ra.input.type} vs {rb.input.shape} {rb.input.type})")
    ds = ds_a
    agree = ca = cb = n = 0
    sig = noise = 0.0
    for bt in track(ds.batches(batch, indices=idx), len(idx), "compare", progress):
        la = _check_logits(pred_a(bt.x), a).astype(np.float64)
        lb = _check_logits(pred_b(bt.x), b).astype(np.float64)
        if la.shape != lb.shape:
            raise QCompileError(f"compare: output shapes differ ({la.shape} vs {lb.shape})")
        pa, pb = la.argmax(1), lb.argmax(1)
        agree += int((pa == pb).sum())
        ca += int((pa == bt.labels).sum())
        cb += int((pb == bt.labels).sum())
        n += len(pa)
        sig += float((la ** 2).sum())
        noise += float(((la - lb) ** 2).sum())
    return {
        "a": str(a), "b": str(b), "data": ds.source, "images": n,
        "excluded_calibration_images": int(excluded.size),
        "top1_agreement": agree / n, "top1_a": ca / n, "top1_b": cb / n,
        "top1_delta": (cb - ca) / n,
        "logits_sqnr_db": sqnr_from_sums(sig, noise), "limit": limit_rec,
    }


def _cluster_logits(spec: str, model: str, data, opened: Dataset, ds: Dataset, batch: int,
                    idx: np.ndarray, device: str, threads: int, log, progress):
    """The local loop's (first images, labels, logits) per batch, computed on a Dask cluster
    (:mod:`qcompile.driver.cluster`): one shard per local batch, in image order, so the
    logits are the same bits; the model file travels once per worker."""
    from pathlib import Path

    from qcompile.driver.cluster import image_shards, job_key, open_cluster

    if not isinstance(data, str):
        raise QCompileError("--cluster: evaluate a data path, not an opened data set")
    body = Path(model).read_bytes()
    with open_cluster(spec, log) as c:
        shared = c.data_note(data)
        job = {"key": job_key(body, str(Path(data).resolve()), repr(opened.preprocess)),
               "model": body, "name": Path(model).name, "device": device, "threads": threads,
               "data": str(Path(data).resolve()) if shared else None, "pre": opened.preprocess}
        shards = image_shards(idx, batch, ds, shared)
        if shards:
            shards[0]["first"] = True
        res = c.map_shards(eval_shard, shards, args=(c.broadcast(job),),
                           sizes=[sh["indices"].size for sh in shards], progress=progress,
                           desc=f"eval on {len(c.workers)} workers")
    for r in res:
        yield r["x8"], r["labels"], _check_logits(r["logits"], model)


def _eval_worker(job: dict):
    import tempfile
    from pathlib import Path

    path = Path(tempfile.mkdtemp(prefix="qcompile-eval-")) / job["name"]
    path.write_bytes(job["model"])
    from qcompile.driver.cluster import worker_threads

    runner = ModelRunner(str(path), device=job["device"],
                         threads=job["threads"] or worker_threads())
    ds = None if job["data"] is None else open_data(job["data"], job["pre"])
    ds, predict, _ = _fit(runner, ds, lambda m: None)  # None: the images come in the shards
    return ds, predict


def eval_shard(shard: dict, job: dict) -> dict:
    """On a worker: one batch through ONNX Runtime (session built once per job)."""
    from qcompile.driver.cluster import worker_cached

    ds, predict = worker_cached(job["key"], lambda: _eval_worker(job))
    if "x" in shard:
        x, labels = shard["x"], shard["labels"]
    else:
        b = next(iter(ds.batches(len(shard["indices"]), indices=shard["indices"])))
        x, labels = b.x, b.labels
    return {"x8": x[:8] if shard.get("first") else None, "labels": labels, "logits": predict(x)}


def _check_logits(y: np.ndarray, model: str) -> np.ndarray:
    if y.ndim != 2:
        raise QCompileError(f"model: {model} outputs shape {list(y.shape)}; evaluation expects "
                            "[batch, classes] logits")
    return y
