"""numerics/_numba.load_kernels: the one cache fallback of every numba kernel module."""

from __future__ import annotations

import numba

from qcompile.numerics._numba import load_kernels


def test_no_writable_cache_retries_with_a_private_cache_dir(monkeypatch):
    monkeypatch.setattr(numba.config, "CACHE_DIR", numba.config.CACHE_DIR)  # restored after
    calls = []

    def load():
        calls.append(numba.config.CACHE_DIR)
        if len(calls) == 1:
            raise RuntimeError("cannot cache function 'f': no locator available for file 'x'")
        return "kernels"

    assert load_kernels(load) == "kernels"
    assert len(calls) == 2 and "qcompile-numba-" in calls[1]


def test_without_numba_the_callers_keep_numpy():
    def load():
        raise ImportError("No module named 'numba'")

    assert load_kernels(load) is None
