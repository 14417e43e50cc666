"""benchmarks/_protocol.py: the held-out splits never score a calibration image, and the
agreement / SQNR / drop figures are what their formulas say."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import _protocol as P


@pytest.mark.parametrize("n,k", [(120, 4), (10, 3)])
def test_kfold_is_disjoint_and_covers_every_image_once(n, k):
    splits = P.kfold(n, k, seed=1)
    evals = np.concatenate([ev for _, ev in splits])
    assert sorted(evals.tolist()) == list(range(n))
    for calib, ev in splits:
        assert not set(calib.tolist()) & set(ev.tolist())
        assert len(calib) + len(ev) == n


def test_holdout_split():
    [(calib, ev)] = P.holdout(5000, 512)
    assert len(calib) == 512 and len(ev) == 4488 and not set(calib) & set(ev)
    [(_, ev2)] = P.holdout(5000, 512, 1000)
    assert set(ev2) <= set(ev) and len(ev2) == 1000


def test_scores():
    fp = np.array([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 3.0]])
    q = fp.copy()
    q[1] = [1.0, 0.0]  # one argmax changed
    s = P.scores(fp, q, np.array([0, 1, 1, 1]))
    assert s["fp32"] == 0.75 and s["quantised"] == 0.5 and s["drop_points"] == 25.0
    assert s["agreement"] == 0.75
    assert s["sqnr_db"] == pytest.approx(10 * np.log10(15.0 / 2.0))
    assert P.scores(fp, fp, np.zeros(4, int))["sqnr_db"] == float("inf")


def test_summary_mean_and_spread():
    rows = [{"drop_points": d, "agreement": a, "sqnr_db": q}
            for d, a, q in [(1.0, 0.9, 20.0), (3.0, 0.8, 30.0)]]
    fp = np.eye(3)
    s = P.summary(rows, fp, fp, np.arange(3))
    assert s["drop_points"] == {"mean": 2.0, "std": 1.0, "min": 1.0, "max": 3.0}
    assert s["pooled"]["agreement"] == 1.0
