import json
import math

import numpy as np
import pytest

from qcompile.driver.report import SqnrReport
from qcompile.errors import QCompileError
from qcompile.numerics.error import SqnrAccumulator, sqnr_from_sums


def test_accumulator_matches_whole_set_sqnr():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(4, 10))
    test = ref + rng.normal(scale=0.1, size=ref.shape)
    acc = SqnrAccumulator()
    for i in range(4):  # batch by batch
        acc.add("t", ref[i], test[i])
    whole = 10 * math.log10(np.sum(ref ** 2) / np.sum((ref - test) ** 2))
    assert acc.sqnr("t") == pytest.approx(whole, rel=1e-12)
    acc.add("same", ref, ref)
    assert acc.sqnr("same") == math.inf
    with pytest.raises(QCompileError, match="'bad'"):
        acc.add("bad", ref, ref[:2])


def test_sqnr_from_sums_edges():
    assert sqnr_from_sums(1.0, 0.0) == math.inf
    assert sqnr_from_sums(0.0, 1.0) == -math.inf
    assert sqnr_from_sums(100.0, 1.0) == pytest.approx(20.0)


def test_report_renders_markdown_json_png(tmp_path):
    rep = SqnrReport("demo", ["a", "b"], ["Conv", "Relu"])
    rep.add_series("fold", {"a": math.inf, "b": 40.0})
    rep.add_series("quantize", [30.25, None])
    rep.note("b", "cle declined: residual join | skip")
    md = rep.to_markdown()
    assert "| 0 | a | Conv | exact | 30.2 |" in md
    assert "| 1 | b | Relu | 40.0 | - | cle declined: residual join / skip |" in md
    js = json.loads(json.dumps(rep.to_json()))
    assert js["layers"][0]["fold"] == "inf" and js["layers"][1]["quantize"] is None
    with pytest.raises(ValueError):
        rep.add_series("short", [1.0])
    pytest.importorskip("matplotlib")
    out = rep.save_png(tmp_path / "r.png")
    assert out.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(QCompileError, match="does not exist"):
        rep.save_markdown(tmp_path / "nope" / "r.md")
