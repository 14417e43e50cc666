"""The text form: deterministic, digests on/off, and a golden of a tiny graph."""

from __future__ import annotations

import numpy as np

from qcompile.frontend import lift
from qcompile.ir import QCOMPILE_DOMAIN, DType, Graph, Node, TensorType, format_graph
from qcompile.testing import zoo


def tiny() -> Graph:
    """Covers: symbolic/unknown dims, big and small constants, omitted inputs, multi-output
    nodes, a qcompile-domain op and every attribute kind the printer formats."""
    g = Graph("tiny", {"": 17, "qcompile": 1})
    x = g.add_input("input", TensorType(DType.FLOAT, ("N", 3, 4, 4)))
    w = g.add_const("conv.weight", np.linspace(-1, 1, 2 * 3 * 3 * 3, dtype=np.float32)
                    .reshape(2, 3, 3, 3))
    b = g.add_const("conv.bias", np.array([0.5, -0.25], np.float32))
    conv = Node("Conv", [x, w, b], [TensorType(DType.FLOAT, ("N", 2, 4, 4))], name="conv",
                output_names=["conv_out"],
                attrs={"pads": (1, 1, 1, 1), "kernel_shape": (3, 3), "group": 1})
    clip = Node("Clip", [conv.output, None, g.add_const("six", np.float32(6.0))],
                [conv.output.type], name="relu6", attrs={})
    split = Node("Split", [clip.output], [TensorType(DType.FLOAT, ("N", 1, 4, 4))] * 2,
                 name="split", output_names=["lo", "hi"], attrs={"axis": 1})
    scale = g.add_const("s", np.float32(0.05))
    zp = g.add_const("zp", np.int8(0))
    qdq = Node("QDQ", [split.outputs[0], scale, zp], [split.outputs[0].type],
               domain=QCOMPILE_DOMAIN, name="q",
               attrs={"bits": 8, "signed": 1, "axis": None})
    odd = Node("Custom", [split.outputs[1]], [TensorType(DType.UNDEFINED, None)],
               domain="com.example", name="custom",
               attrs={"alpha": 0.1, "mode": "fast", "blob": b"\x00\x01",
                      "small": np.array([1, 2], np.int64),
                      "big": np.arange(12, dtype=np.float32).reshape(3, 4),
                      "names": ("a", "b"), "empty": ()})
    g.append(conv, clip, split, qdq, odd)
    g.outputs += [qdq.output, odd.output]
    return g


def test_golden_tiny(golden):
    golden("printer/tiny", format_graph(tiny()))


def test_golden_tiny_no_digests(golden):
    golden("printer/tiny.nodigests", format_graph(tiny(), digests=False))


def test_deterministic():
    assert format_graph(tiny()) == format_graph(tiny())
    g = tiny()
    assert str(g) == format_graph(g) == format_graph(g)
    assert format_graph(g.clone()) == format_graph(g)


def test_deterministic_across_lifts():
    m = zoo.all_ops_model()
    assert format_graph(lift(m)) == format_graph(lift(m))
    g = lift(m)
    assert format_graph(g.clone()) == format_graph(g)


def test_attribute_order_does_not_matter():
    g1, g2 = tiny(), tiny()
    node = g2.find_node("custom")
    node.attrs = dict(reversed(list(node.attrs.items())))
    assert format_graph(g1) == format_graph(g2)


def test_digests_shown_and_omitted():
    g = tiny()
    with_d = format_graph(g)
    without = format_graph(g, digests=False)
    wline = next(line for line in with_d.splitlines() if "%conv.weight" in line)
    assert wline.startswith("  const %conv.weight: f32[2,3,3,3] #")
    assert len(wline.split("#")[1]) == 6
    assert "  const %conv.bias: f32[2] = [0.5, -0.25]" in with_d  # small: values
    assert "  const %conv.weight: f32[2,3,3,3]\n" in without
    assert "  const %conv.bias: f32[2]\n" in without
    assert not any(line.startswith("  const") and ("#" in line or "=" in line)
                   for line in without.splitlines())
    # node lines are the same either way
    nodes = lambda t: [ln for ln in t.splitlines() if not ln.startswith("  const")]  # noqa: E731
    assert nodes(with_d) == nodes(without)


def test_digest_tracks_constant_bytes():
    g1, g2 = tiny(), tiny()
    assert format_graph(g1) == format_graph(g2)
    g2.initializers["conv.weight"].const[0, 0, 0, 0] += 1e-7
    assert format_graph(g1) != format_graph(g2)
    assert format_graph(g1, digests=False) == format_graph(g2, digests=False)


def test_line_forms():
    text = format_graph(tiny())
    lines = text.splitlines()
    assert lines[0] == "graph tiny (opset ai.onnx=17, qcompile=1)"
    assert "  input %input: f32[N,3,4,4]" in lines
    assert ("  %conv_out: f32[N,2,4,4] = Conv(%input, %conv.weight, %conv.bias) "
            "{group=1, kernel_shape=[3,3], pads=[1,1,1,1]}  # conv") in lines
    assert "  %relu6_out0: f32[N,2,4,4] = Clip(%conv_out, _, %six)  # relu6" in lines
    assert any(ln.startswith("  %lo: f32[N,1,4,4], %hi: f32[N,1,4,4] = Split(") for ln in lines)
    assert any("= qcompile.QDQ(%lo, %s, %zp) {axis=None, bits=8, signed=1}" in ln for ln in lines)
    assert any("%custom_out0: ?[?] = com.example.Custom(%hi)" in ln for ln in lines)
    assert lines[-2:] == ["  output %q_out0", "  output %custom_out0"]
    assert text.endswith("\n")
