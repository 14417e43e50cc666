"""``calibrate``: observe activation ranges on real data and store them in ``meta[RANGE]``.

The float graph runs through the injected ``ctx.executor`` (ONNX Runtime exposing the
intermediates) batch by batch; each observed value folds every batch into its streaming
observer (:mod:`qcompile.numerics.observers`), so memory is O(bins) per value whatever the
number of images, and each executor run exposes a bounded slice of the observed values
(:func:`exposure_chunks`: <= :data:`MAX_EXPOSED` values and <= :func:`exposed_budget` bytes,
1/16 of ``QCOMPILE_MEMORY_BUDGET``), several runs per batch when a deep graph needs them, so
peak memory does not grow with the depth of the graph.
Then ``meta[RANGE] = Range(lo, hi, method)`` with

* ``minmax``: ``[min x, max x]`` over all images;
* ``percentile``: tails of mass ``1 - percentile/100`` clipped (see observers);
* ``entropy``: KL-divergence threshold for ``bits``-bit quantisation on ``bins`` bins per side;
* ``mse``: the range minimising the expected squared quantisation error at ``bits`` bits.

A Relu output whose only use is ``Min(x, B)`` with a constant per-channel ``B`` (ReLU6 after
``cle{clip=scale}``) gets the Min output's upper bound when that is lower (exact, see
:func:`_per_channel_clip`).

Observed values: graph inputs and node outputs of float type, except a value whose only use is a
Relu/Clip (that activation is fused into its producer when quantised, so only its output is
quantised). Images: ``take = min(images, len(data))`` chosen by ``select`` (maths in
:mod:`qcompile.data.select`), deterministic for a ``seed``:

* ``random`` (default): ``Dataset.split(take, seed)``, a seeded permutation's first ``take``;
* ``stratified``: round-robin over the classes (class order and per-class order shuffled by
  the seed), so every class appears once ``take >= #classes``; without labels it falls back
  to ``random`` and says so in the stats notes;
* ``diverse``: feature-space coverage. A candidate pool of ``min(n, 4*take)`` images is drawn
  (stratified when labelled, else random), each candidate gets a feature vector ``f`` - the
  FP32 model's classifier input (the activation entering the last Gemm/MatMul, i.e. the
  global-pooled features), else the last GlobalAveragePool output, else the image downsampled
  to <= 8x8 per channel - run through ``ctx.executor``; then greedy k-center (farthest point,
  a 2-approximation of ``min_S max_i min_{s in S} ||f_i - f_s||`` on z-scored features) picks
  ``take``, starting from one image per class (labelled, ``take >= #classes``) or one seeded
  random image. The stats notes name the feature and the coverage radius against a random set.

Model input: batches are fed as the graph input declares them (NCHW/NHWC, float32/float16/
uint8 raw pixels, its fixed square size; :mod:`qcompile.passes._feeds`), and a fixed batch size
``B`` is honoured by the injected executor, which runs the rows in chunks of exactly ``B``
(``B = 1``: image by image), so the statistics cover exactly the chosen images. A model with
several inputs is fed from an ``.npz`` holding one member per input, named like the inputs.

The indices are logged and recorded (with ``select``) in the graph metadata
``qcompile.calibration`` (ONNX ``metadata_props``), so that evaluation can leave them out and
the layer-wise passes (adaround, bias_correct, ...) reuse a non-random selection.
``ctx.calib_data`` may also be any iterable of feeds (arrays for a one-input graph, or dicts
name -> array); then the first ``images`` rows are used and ``select`` does not apply.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from qcompile.data.calibration import CALIB_KEY, write_record
from qcompile.data.select import SELECT_MODES
from qcompile.errors import OptionError, QCompileError, memory_budget
from qcompile.ir import RANGE, Graph, Range, Value
from qcompile.numerics.observers import make_observer
from qcompile.passes import checks
from qcompile.passes._feeds import input_spec, model_data
from qcompile.passes._select import choose_images
from qcompile.passes.base import Pass, PassContext, PassResult, Stats


class CalibrationError(QCompileError):
    """Calibration cannot run: no data, an empty set, or no executor."""


@dataclass(frozen=True)
class Calibrate(Pass):
    """Run the float graph on calibration images and record activation ranges."""

    name = "calibrate"
    needs_data = "yes"
    summary = "observe activation ranges (minmax|percentile|entropy|mse) on calibration data"
    ensures = (checks.calibrated,)

    method: Literal["minmax", "percentile", "entropy", "mse"] = "minmax"
    percentile: float = 99.99
    images: int = 512
    batch: int = 32
    bins: int = 2048
    bits: int = 8
    seed: int = 0
    select: Literal["random", "stratified", "diverse"] = "random"

    def __post_init__(self) -> None:
        if self.images < 1:
            raise OptionError(f"pass 'calibrate': images={self.images}; need at least 1 image")
        if self.batch < 1:
            raise OptionError(f"pass 'calibrate': batch={self.batch} must be >= 1")
        if self.bins < 16 or self.bins & (self.bins - 1):
            raise OptionError(f"pass 'calibrate': bins={self.bins} must be a power of two >= 16")
        if not 0 < self.percentile <= 100:
            raise OptionError(f"pass 'calibrate': percentile={self.percentile} must be in (0, 100]")
        if self.select not in SELECT_MODES:
            raise OptionError(f"pass 'calibrate': select={self.select!r} is not one of "
                              f"{', '.join(SELECT_MODES)}")
        if self.bits not in (4, 8, 16):
            raise OptionError(f"pass 'calibrate': bits={self.bits} must be 4, 8 or 16")

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        st = Stats()
        if ctx.executor is None:
            raise CalibrationError("no executor to run the float graph; the driver "
                                   "must set PassContext(executor=...)")
        if ctx.calib_data is None:
            raise CalibrationError("no calibration data; give --calib PATH")
        values = observed_values(graph)
        if not values:
            st.skip("nothing_to_observe", "graph", "no float activation to observe")
            return st.result(graph, False)
        observers = {v: make_observer(self.method, self.bins) for v in values}
        feeds, total, info = self._feeds(graph, ctx)
        ctx.log(info["log"])
        st.notes.extend(info.get("notes", ()))
        if info.get("classes") is not None:
            st.count("classes_covered", info["classes"])
        bar = ctx.progress(total=total, desc="calibrate") if ctx.progress else None
        seen = 0
        budget = exposed_budget()
        try:
            for feed, n in feeds:
                for chunk in exposure_chunks(values, n, budget):
                    outs = ctx.executor.run(graph, feed, chunk)
                    for v in chunk:
                        observers[v].update(outs.pop(v))
                    del outs  # free this chunk before the next run materialises another
                seen += n
                _advance(bar, n)
        finally:
            _close(bar)
        if seen == 0:
            raise CalibrationError(f"the calibration set {info['source']} is empty "
                                   "(no readable image); give a folder or file with images")
        for v, obs in observers.items():
            lo, hi = obs.range(self.method, percentile=self.percentile, bits=self.bits)
            v.meta[RANGE] = Range(float(lo), float(hi), self.method)
        for v in observers:  # Relu -> Min(x, B): the Min clips what the Relu's QDQ would keep
            after = _per_channel_clip(v)
            if after in observers and after.meta[RANGE].hi < v.meta[RANGE].hi:
                v.meta[RANGE] = Range(v.meta[RANGE].lo, after.meta[RANGE].hi, self.method)
                st.count("ranges_capped_by_clip")
        info["record"]["images"] = seen
        write_record(graph.metadata, info["record"])
        st.count("observed_values", len(values))
        st.count("images", seen)
        return st.result(graph, True)

    # -- data ---------------------------------------------------------------------------
    def _feeds(self, graph: Graph, ctx: PassContext
               ) -> tuple[Iterator[tuple[dict[str, np.ndarray], int]], int, dict[str, Any]]:
        data = ctx.calib_data
        inputs = [v for v in graph.inputs]
        record: dict[str, Any] = {"method": self.method, "seed": self.seed,
                                  "select": self.select}
        if hasattr(data, "batches") and hasattr(data, "split"):
            n = len(data)
            if n == 0:
                raise CalibrationError(f"the calibration set {data.source} is empty; "
                                       "give a folder or file with images")
            named = None
            if len(inputs) != 1:
                named = data.arrays_named([v.name for v in inputs])
                if named is None:
                    raise CalibrationError(
                        f"the model has {len(inputs)} inputs "
                        f"({', '.join('%' + v.name for v in inputs)}); image calibration data "
                        "feeds one, or give an .npz with one member per input, named like them")
            else:
                data = model_data(graph, data, ctx.log)
            take = min(self.images, n)
            order, notes = choose_images(self, graph, ctx, take)
            idx = np.sort(order)  # read front to back; the record keeps the selection order
            labels = getattr(data, "labels", None)
            classes = None if labels is None else int(np.unique(labels[idx]).size)
            record.update(source=str(data.source), size=n, indices=[int(i) for i in order])
            files = getattr(data, "files", None)
            shown = ", ".join(str(i) for i in idx[:8]) + (", ..." if len(idx) > 8 else "")
            asked = "" if take == self.images else \
                f" (images={self.images} asked for, {n} there: using all {n})"
            log = (f"calibrate: {take} of {n} images{asked} from {data.source} (seed {self.seed}, "
                   f"select {self.select}, method {self.method}): indices {shown}"
                   + (f"; first file {files[int(idx[0])]}" if files else "")
                   + f"; full list in model metadata {CALIB_KEY!r}")
            name = inputs[0].name

            def gen() -> Iterator[tuple[dict[str, np.ndarray], int]]:
                if named is not None:  # several inputs: .npz members by input name, as stored
                    for s in range(0, len(idx), self.batch):
                        rows = idx[s:s + self.batch]
                        yield {v.name: np.ascontiguousarray(
                            named[v.name][rows], dtype=input_spec(v).dtype)
                            for v in inputs}, len(rows)
                    return
                for b in data.batches(self.batch, indices=idx):
                    _check_shape(inputs[0], b.x, data.source)
                    yield {name: b.x}, len(b.x)

            return gen(), take, {"log": log, "record": record, "source": data.source,
                                 "notes": notes, "classes": classes}
        items = list(data)[: self.images]  # in-memory feeds: the first `images` feeds
        record.update(source="<in-memory feeds>", size=len(items))

        def gen_items() -> Iterator[tuple[dict[str, np.ndarray], int]]:
            for item in items:
                feed = item if isinstance(item, dict) else {inputs[0].name: np.asarray(item)}
                first = next(iter(feed.values()))
                yield feed, int(np.shape(first)[0]) if np.ndim(first) else 1

        log = f"calibrate: {len(items)} in-memory feed(s) (method {self.method})"
        notes = [] if self.select == "random" else [
            f"select: {self.select} needs a dataset (--calib PATH); in-memory feeds are used "
            "in order (the first images)"]
        return gen_items(), len(items), {"log": log, "record": record, "notes": notes,
                                         "source": "<in-memory feeds>"}


def _per_channel_clip(v: Value) -> Value | None:
    """The output of ``Min(v, B)`` (constant ``B``) when that is ``v``'s only use and ``v`` is a
    Relu output: a ReLU6 with per-channel bounds (``cle{clip=scale}``). Quantising ``v`` with
    the Min output's range ``[lo, h]`` loses nothing: where ``v_c > h``, ``B_c <= h`` (the Min
    output never exceeds ``h``), so ``min(min(v_c, h), B_c) = min(v_c, B_c)``."""
    uses = v.uses()
    if v.producer is None or v.producer.op != "Relu" or len(uses) != 1:
        return None
    n, idx = uses[0]
    if n.op != "Min" or n.domain != "" or len(n.inputs) != 2 or not n.inputs[1 - idx].is_const:
        return None
    return n.outputs[0]


def observed_values(graph: Graph) -> list[Value]:
    """Float activations whose range ``quantize`` may need (see the module docstring)."""
    out: list[Value] = []
    candidates = list(graph.inputs) + [o for n in graph.nodes for o in n.outputs]
    for v in candidates:
        if v.is_const or not v.type.dtype.is_float:
            continue
        if not v.uses() and v not in graph.outputs:
            continue
        if checks.fused_activation(v) is not None and v not in graph.outputs:
            continue
        out.append(v)
    return out


#: Values exposed per executor run: at most this many, and at most :func:`exposed_budget`
#: bytes by their static shapes (so ORT never holds every intermediate of a deep graph at once).
MAX_EXPOSED = 256


def exposed_budget() -> int:
    """Bytes of intermediates one executor run may expose: 1/16 of the memory budget
    (:func:`qcompile.errors.memory_budget`; 256 MiB at the default 4 GiB)."""
    return max(1 << 20, memory_budget() // 16)


def value_bytes(v: Value, rows: int) -> int:
    """Size of ``v`` for a batch of ``rows`` by its static type: the leading symbolic dim is
    the batch, other symbolic or unknown dims count 1 (the count cap bounds those)."""
    shape = v.type.shape or ()
    n = 1
    for i, d in enumerate(shape):
        n *= d if isinstance(d, int) and d >= 0 else (rows if i == 0 else 1)
    try:
        return n * v.type.dtype.to_numpy().itemsize
    except TypeError:  # no numpy dtype (observed values are float, so not expected)
        return n * 8


def exposure_chunks(values: list[Value], rows: int, budget: int) -> list[list[Value]]:
    """``values`` in graph order, cut into runs of <= :data:`MAX_EXPOSED` values and
    <= ``budget`` bytes (a value larger than the budget alone gets a run of its own)."""
    chunks: list[list[Value]] = [[]]
    used = 0
    for v in values:
        b = value_bytes(v, rows)
        if chunks[-1] and (used + b > budget or len(chunks[-1]) >= MAX_EXPOSED):
            chunks.append([])
            used = 0
        chunks[-1].append(v)
        used += b
    return chunks


def _check_shape(v: Value, x: np.ndarray, source: str) -> None:
    shape = v.type.shape
    if shape is None or len(shape) != x.ndim:
        return
    for want, got in zip(shape[1:], x.shape[1:], strict=True):
        if isinstance(want, int) and want != got:
            raise CalibrationError(
                f"calibration images from {source} have shape {list(x.shape[1:])} but the model "
                f"input %{v.name} is {list(shape)}; choose a matching --preprocess (or size)")


def _advance(bar: Any, n: int) -> None:
    if bar is None:
        return
    if hasattr(bar, "update"):
        bar.update(n)
    elif callable(bar):
        bar(n)


def _close(bar: Any) -> None:
    if bar is not None and hasattr(bar, "close"):
        bar.close()
