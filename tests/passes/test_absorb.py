"""absorb: structural golden, no-op (declines with reasons), numerical equivalence on the data."""

from __future__ import annotations

from collections import namedtuple

import numpy as np
import onnxruntime as ort

from qcompile.backends.ort import lower
from qcompile.backends.ort.executor import OrtExecutor
from qcompile.ir import DType, Graph, Node, TensorType, format_graph, verify
from qcompile.passes import PassContext, parse_pipeline, run_pipeline
from qcompile.testing import zoo

Batch = namedtuple("Batch", "x labels indices")


class Arrays:
    """A minimal calibration source: fixed arrays in one batch."""

    def __init__(self, x):
        self.x = x

    def batches(self, batch_size, limit=None):
        yield Batch(self.x, None, np.arange(len(self.x)))


def tiny_graph(seed=0):
    rng = np.random.default_rng(seed)
    g = Graph("tiny")
    x = g.add_input("input", TensorType(DType.FLOAT, ("N", 4, 3, 3)))
    w1 = g.add_const("c1.weight", (rng.standard_normal((6, 4, 1, 1)) * 0.1).astype(np.float32))
    b1 = g.add_const("c1.bias", (2.0 + rng.random(6)).astype(np.float32))  # high bias
    w2 = g.add_const("c2.weight", rng.standard_normal((5, 6, 1, 1)).astype(np.float32))
    t6 = TensorType(DType.FLOAT, ("N", 6, 3, 3))
    c1 = Node("Conv", [x, w1, b1], [t6], name="c1", attrs={"kernel_shape": (1, 1)})
    g.append(c1)
    r = Node("Relu", [c1.output], [t6], name="relu")
    g.append(r)
    c2 = Node("Conv", [r.output, w2], [TensorType(DType.FLOAT, ("N", 5, 3, 3))], name="c2",
              attrs={"kernel_shape": (1, 1)}, output_names=["logits"])
    g.append(c2)
    g.outputs.append(c2.output)
    return g


def _ctx(x):
    return PassContext(executor=OrtExecutor(), calib_data=Arrays(x))


def test_golden_and_numerics(golden):
    g = tiny_graph()
    x = np.random.default_rng(1).standard_normal((16, 4, 3, 3)).astype(np.float32)
    before = lower(g.clone())
    res = run_pipeline(g, parse_pipeline("absorb"), _ctx(x)).results[-1][1]
    verify(g)
    assert res.modified and res.stats["absorbed"] == 1 and res.stats["channels"] == 6
    golden("absorb/tiny", format_graph(g, digests=False))
    a = ort.InferenceSession(before.SerializeToString()).run(None, {"input": x})[0]
    b = ort.InferenceSession(lower(g).SerializeToString()).run(None, {"input": x})[0]
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(a).max())


def test_declines_without_data():
    g = tiny_graph()
    res = run_pipeline(g, parse_pipeline("absorb"), PassContext()).results[-1][1]
    assert res.modified is False and res.stats["skipped_no_data"] == 1
    assert "--calib" in res.notes[0]


def test_noop_padded_sinks():
    m = zoo.resnet(18, image_size=32)
    from qcompile.frontend import lift

    g = lift(m)
    x = zoo.random_input(m, batch=4)["input"]
    res = run_pipeline(g, parse_pipeline("fold,absorb"), _ctx(x)).results[-1][1]
    assert res.modified is False
    assert res.stats["skipped_padding"] == 8 and "pads with zeros" in res.notes[0]


def test_numerically_equivalent_resnet50_on_data():
    from qcompile.frontend import lift

    m = zoo.resnet(50, image_size=32)
    x = zoo.random_input(m, batch=8, seed=3)["input"]
    g = lift(m)
    res = run_pipeline(g, parse_pipeline("fold,cle,absorb"), _ctx(x)).results[-1][1]
    assert res.stats["absorbed"] > 0
    a = ort.InferenceSession(m.SerializeToString()).run(None, {"input": x})[0]
    b = ort.InferenceSession(lower(g).SerializeToString()).run(None, {"input": x})[0]
    assert np.abs(a - b).max() / np.abs(a).max() < 1e-5


def relu6_graph(seed=0, hi=2.5):
    """tiny_graph with Clip(0, hi) for its Relu: the high bias often saturates the clip."""
    g = tiny_graph(seed)
    relu = g.find_node("relu")
    lo_c, hi_c = g.add_const("clip.min", np.float32(0)), g.add_const("clip.max", np.float32(hi))
    clip = Node("Clip", [relu.inputs[0], lo_c, hi_c], [relu.outputs[0].type], name="relu6")
    g.insert_after(relu, clip)
    g.replace_value(relu.outputs[0], clip.outputs[0])
    g.remove(relu)
    verify(g)
    return g


def _outputs(g, x):
    return ort.InferenceSession(lower(g).SerializeToString()).run(None, {"input": x})[0]


def test_through_relu6_clip_and_per_channel_min():
    x = np.random.default_rng(1).standard_normal((8, 4, 3, 3)).astype(np.float32)
    for spec in ("absorb", "cle{clip=scale},absorb"):
        ref = _outputs(relu6_graph(), x)
        r = run_pipeline(relu6_graph(), parse_pipeline(spec), _ctx(x))
        res = r.results[-1][1]
        assert res.modified and res.stats["through_relu6"] == 1, spec
        g = r.graph
        assert not any(n.op == "Clip" for n in g.nodes)
        bound = next(n for n in g.nodes if n.op == "Min").inputs[1].const.reshape(-1)
        assert bound.min() >= 0 and bound.min() < 2.5  # lowered by the absorbed constant
        np.testing.assert_allclose(_outputs(g, x), ref, rtol=1e-5, atol=1e-5)
