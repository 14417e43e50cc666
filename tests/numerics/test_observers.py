"""Observers: streaming/merging equals one-shot, and the four range methods behave."""

from __future__ import annotations

import numpy as np
import pytest

from qcompile.numerics.observers import HistogramObserver, MinMaxObserver, make_observer


def _data(seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(5000).astype(np.float32) * s for s in (0.5, 3.0, 1.0, 20.0)]


def test_streaming_equals_merged_equals_one_shot():
    parts = _data()
    one = HistogramObserver(256)
    one.update(np.concatenate(parts))
    stream = HistogramObserver(256)
    merged = HistogramObserver(256)
    for p in parts:
        stream.update(p)
        b = HistogramObserver(256)
        b.update(p)
        merged.merge(b)
    for h in (stream, merged):
        np.testing.assert_array_equal(h.counts, one.counts)
        assert h.k == one.k and h.range() == one.range()


def test_histogram_counts_are_exact_bins():
    x = np.array([0.0, 0.2, 0.9, -0.1, -1.0, 1.0], np.float32)
    h = HistogramObserver(16)  # R = 2, width 1/8, bin 16 + floor(x * 8)
    h.update(x)
    assert h.k == 1 and h.counts.sum() == 6
    assert np.nonzero(h.counts)[0].tolist() == [8, 15, 16, 17, 23, 24]


@pytest.mark.parametrize("method", ["minmax", "percentile", "entropy", "mse"])
def test_methods_clip_outliers_not_bulk(method):
    rng = np.random.default_rng(1)
    x = np.abs(rng.standard_normal(200_000)).astype(np.float32)
    x[:3] = 100.0  # rare outliers
    obs = make_observer(method, bins=2048)
    obs.update(x)
    lo, hi = obs.range(method, percentile=99.9)
    assert 0.0 <= lo < 1e-3
    if method == "minmax":
        assert hi == 100.0
    elif method == "mse":  # squared error: three far outliers outweigh 200k rounding errors
        assert 50.0 < hi < 100.0
    else:
        assert 1.0 < hi < 20.0, (method, hi)


def test_two_sided_percentile_and_nonfinite():
    x = np.linspace(-10, 10, 100001).astype(np.float32)
    h = HistogramObserver(1024)
    h.update(x)
    h.update(np.array([np.nan, np.inf], np.float32))
    lo, hi = h.range("percentile", percentile=90)
    assert abs(lo + 9.0) < 0.05 and abs(hi - 9.0) < 0.05
    m = MinMaxObserver()
    m.update(np.array([np.nan, 1.0, -2.0], np.float32))
    assert m.range() == (-2.0, 1.0)


def test_bad_bins():
    with pytest.raises(ValueError):
        HistogramObserver(100)
