"""``calibrate{select=...}``: the graph/executor side of calibration-set selection.

The maths (random / stratified order / greedy k-center) lives in :mod:`qcompile.data.select`;
this module picks the feature a ``diverse`` selection measures coverage on and computes it
for a candidate pool through the injected executor (see ``calibrate``'s docstring).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from qcompile.data import select as sel
from qcompile.data.calibration import read_record, same_source
from qcompile.ir import Graph, Value
from qcompile.passes._feeds import model_data
from qcompile.passes.base import PassContext

POOL_FACTOR = 4  # diverse: candidates per chosen image (bounds the feature-extraction cost)
PIXEL_GRID = 8  # pixel fallback: images averaged down to <= 8x8 per channel


def choose_images(opts: Any, graph: Graph, ctx: PassContext, take: int
                  ) -> tuple[np.ndarray, list[str]]:
    """(indices in selection order, stats notes) of the ``take`` calibration images for
    ``opts.select``: random -> sorted; stratified -> round-robin order; diverse -> k-center
    order. Every prefix of a stratified/diverse order is itself such a selection, which is
    how a layer-wise pass asking for fewer images reuses it."""
    data = ctx.calib_data
    n, seed = len(data), int(opts.seed)
    labels = getattr(data, "labels", None)
    if opts.select == "random":
        return data.split(take, seed=seed)[0], []
    if opts.select == "stratified":
        if labels is None:
            return data.split(take, seed=seed)[0], [
                f"select: stratified fell back to random: {data.source} has no labels"]
        return sel.stratified_order(labels, seed)[:take], []
    return _diverse(opts, graph, ctx, take, n, seed, labels)


def feature_value(graph: Graph) -> tuple[Value | None, str]:
    """The FP32 activation a ``diverse`` selection measures: the float input of the last
    Gemm/MatMul with a constant weight (the classifier's input features), else the last
    GlobalAveragePool output; (None, 'pixels') if neither exists."""
    for node in reversed(graph.nodes):
        if node.op in ("Gemm", "MatMul") and len(node.inputs) > 1:
            x, w = node.inputs[0], node.inputs[1]
            if x is not None and w is not None and w.is_const and not x.is_const \
                    and x.type.dtype.is_float:
                return x, f"%{x.name} (input of {node.op} {node.name!r})"
    for node in reversed(graph.nodes):
        if node.op == "GlobalAveragePool":
            return node.outputs[0], f"%{node.outputs[0].name} (GlobalAveragePool {node.name!r})"
    return None, "pixels"


def _pixels(x: np.ndarray) -> np.ndarray:
    """[B, C, H, W] -> [B, C*h*w]: block means down to <= PIXEL_GRID per side."""
    B, C, H, W = x.shape
    fy, fx = max(1, H // PIXEL_GRID), max(1, W // PIXEL_GRID)
    h, w = H // fy, W // fx
    x = x[:, :, :h * fy, :w * fx].reshape(B, C, h, fy, w, fx)
    return x.mean(axis=(3, 5)).reshape(B, -1)


def _diverse(opts, graph, ctx, take, n, seed, labels) -> tuple[np.ndarray, list[str]]:
    data = ctx.calib_data
    m = min(n, POOL_FACTOR * take)
    order = (sel.stratified_order(labels, seed) if labels is not None
             else np.random.default_rng(seed).permutation(n).astype(np.int64))[:m]
    value, what = feature_value(graph)
    use_pixels = value is None or ctx.executor is None or len(graph.inputs) != 1
    name = graph.inputs[0].name
    read, feats = [], []
    if not use_pixels:
        data = model_data(graph, data, ctx.log)  # as the model input declares
    for b in data.batches(opts.batch, indices=np.sort(order)):
        if use_pixels:  # the dataset's own float32 NCHW batches
            f = _pixels(np.asarray(b.x, np.float64))
        else:
            f = np.asarray(ctx.executor.run(graph, {name: b.x}, [value])[value], np.float64)
        feats.append(f.reshape(len(b.x), -1))
        read.extend(int(i) for i in b.indices)
    pool = np.asarray(read, np.int64)
    F = np.concatenate(feats) if feats else np.zeros((0, 1))
    if use_pixels:
        what = f"pixels downsampled to <= {PIXEL_GRID}x{PIXEL_GRID} per channel"
    start = None
    n_cls = 0
    if labels is not None:
        pos = {int(i): k for k, i in enumerate(pool)}
        first: dict[int, int] = {}
        for i in order:  # stratified order: its first round holds one image of each class
            if int(i) in pos and int(labels[i]) not in first:
                first[int(labels[i])] = pos[int(i)]
        n_cls = len(first)
        if take >= n_cls:
            start = list(first.values())
    chosen = sel.k_center(F, take, seed, start)
    idx = pool[chosen]
    rnd = np.random.default_rng(seed).choice(len(pool), size=len(chosen), replace=False)
    note = (f"select: diverse = greedy k-center of {len(chosen)} among {len(pool)} candidates "
            f"on {what}, {F.shape[1]} dims"
            + (f", starting from one image per class ({n_cls})" if start else "")
            + f"; coverage radius {sel.coverage_radius(F, chosen):.3g} "
            f"(a random set of the same size: {sel.coverage_radius(F, rnd):.3g})")
    return idx, [note]


def recorded_selection(graph: Graph, data: Any, images: int) -> np.ndarray | None:
    """The first ``min(images, len(data))`` images of the selection ``calibrate`` recorded in
    ``graph.metadata`` (sorted), when it was a stratified/diverse selection of this same
    dataset holding at least that many; else None (the caller draws its own random split, as
    before). Lets the layer-wise passes (adaround, bias_correct, ...) see the chosen images."""
    rec = read_record(graph.metadata)
    if rec is None or rec.get("select", "random") == "random" or not same_source(rec, data):
        return None
    try:
        order = np.asarray(rec.get("indices", []), np.int64)
    except (ValueError, TypeError):
        return None
    k = min(int(images), len(data))
    return np.sort(order[:k]) if order.size >= k else None
