"""Whole networks: fast == reference bit for bit; fp16 / fp32 equal independent numpy loops."""

from __future__ import annotations

import numpy as np
import pytest

from qcompile.backends.mpfr.config import make_config
from qcompile.backends.mpfr.interpreter import Interpreter
from qcompile.backends.mpfr.listeners import same_bits
from qcompile.errors import UnsupportedOpError
from qcompile.frontend import lift
from qcompile.passes import PassContext, parse_pipeline, run_pipeline
from qcompile.testing import zoo

CONFIGS = {
    "b15e4-nearest": dict(bits=15, exp_bits=4),
    "qresnet": dict(compat="qresnet"),
    "fp16": dict(format="fp16"),
    "bf16": dict(format="bf16"),
    "e4m3": dict(format="e4m3"),
    "b15e4-up-fma": dict(bits=15, exp_bits=4, rounding="up", accumulate="fma"),
}


def _run(graph, cfg, x, engine):
    return Interpreter(graph, cfg, engine).run_numpy({graph.inputs[0].name: x})
    # (outputs as float64)


def _fold(g):
    return run_pipeline(g, parse_pipeline("fold"), PassContext()).graph


@pytest.fixture(scope="module")
def cifar(shared_data):
    from qcompile.data import open_dataset, preset

    g = lift(shared_data / "cifar10_resnet20.onnx")
    ds = open_dataset(shared_data / "cifar10_test_dev.npz", preset("cifar"))
    return g, next(ds.batches(1)).x


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("fold", [False, True])
def test_tiny_model_fast_equals_reference(name, fold):
    g = lift(zoo.mini_resnet(image_size=8))
    if fold:
        g = _fold(g)
    x = zoo.random_input(zoo.mini_resnet(image_size=8), batch=2)
    cfg = make_config(**CONFIGS[name])
    a = _run(g, cfg, next(iter(x.values())), "fast")
    b = _run(g, cfg, next(iter(x.values())), "reference")
    for k in a:
        assert same_bits(a[k], b[k]).all(), (k, a[k], b[k])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["b15e4-nearest", "qresnet", "fp16", "bf16", "e4m3"])
def test_resnet20_fast_equals_reference(cifar, name):
    """~30-45 s each on 2 cores (the reference evaluates 41 M multiply-adds in gmpy2)."""
    g, x = cifar
    if name in ("qresnet", "e4m3"):  # unfolded BN gives var -> 0 (NaN logits) in these formats
        g = _fold(g.clone())
    cfg = make_config(**CONFIGS[name])
    a = _run(g, cfg, x, "fast")["logits"]
    b = _run(g, cfg, x, "reference")["logits"]
    assert np.isfinite(a).any()
    assert same_bits(a, b).all(), (a, b)


# ----------------------------------------------------------------------------- numpy loops
def _np_conv(x, w, b, attrs, dt):
    N, C, H, W = x.shape
    OC, Cg, KH, KW = w.shape
    sh, sw = attrs.get("strides", (1, 1))
    pt, pl, pb, pr = attrs.get("pads", (0, 0, 0, 0))
    OH, OW = (H + pt + pb - KH) // sh + 1, (W + pl + pr - KW) // sw + 1
    out = np.zeros((N, OC, OH, OW), dt)
    oy, ox = np.arange(OH)[:, None], np.arange(OW)[None, :]
    for c in range(C):
        for ky in range(KH):
            for kx in range(KW):
                iy, ix = oy * sh - pt + ky, ox * sw - pl + kx
                ok = (iy >= 0) & (iy < H) & (ix >= 0) & (ix < W)
                v = x[:, c][:, np.clip(iy, 0, H - 1), np.clip(ix, 0, W - 1)]  # [N, OH, OW]
                for oc in range(OC):
                    prod = (v * w[oc, c, ky, kx]).astype(dt)
                    out[:, oc] = np.where(ok, (out[:, oc] + prod).astype(dt), out[:, oc])
    if b is not None:
        out = (out + b.reshape(1, -1, 1, 1)).astype(dt)
    return out


def _np_net(g, x, dt):
    """Independent evaluation of ResNet-20's ops with numpy ``dt`` arithmetic, sequential
    accumulation (numpy's float16 ops round once: float32 intermediates are innocuous)."""
    env = {g.inputs[0]: x.astype(dt)}

    def val(v):
        return v.const.astype(dt) if v.is_const and v.const.dtype.kind == "f" else (
            v.const if v.is_const else env[v])

    for n in g.nodes:
        a = [None if v is None else val(v) for v in n.inputs]
        if n.op == "Conv":
            y = _np_conv(a[0], a[1], a[2] if len(a) > 2 else None, n.attrs, dt)
        elif n.op == "BatchNormalization":
            sc, bi, mu, var = (t.reshape(1, -1, 1, 1) for t in a[1:5])
            s = np.sqrt((var + dt(n.attrs.get("epsilon", 1e-5))).astype(dt)).astype(dt)
            y = ((((a[0] - mu).astype(dt) / s).astype(dt) * sc).astype(dt) + bi).astype(dt)
        elif n.op == "Relu":
            y = np.where(a[0] > 0, a[0], dt(0))
        elif n.op == "Add":
            y = (a[0] + a[1]).astype(dt)
        elif n.op == "Slice":
            y = a[0][:, :, ::2, ::2]
        elif n.op == "Pad":
            p = a[1]
            y = np.pad(a[0], [(p[i], p[i + 4]) for i in range(4)])
        elif n.op == "GlobalAveragePool":
            f = a[0].reshape(a[0].shape[0], a[0].shape[1], -1)
            acc = np.zeros(f.shape[:2], dt)
            for i in range(f.shape[2]):
                acc = (acc + f[:, :, i]).astype(dt)
            y = (acc / dt(f.shape[2])).astype(dt)[:, :, None, None]
        elif n.op == "Flatten":
            y = a[0].reshape(a[0].shape[0], -1)
        elif n.op == "Gemm":
            wt = a[1].T if n.attrs.get("transB") else a[1]
            acc = np.zeros((a[0].shape[0], wt.shape[1]), dt)
            for k in range(wt.shape[0]):
                acc = (acc + (a[0][:, k:k + 1] * wt[k][None]).astype(dt)).astype(dt)
            y = (acc + a[2]).astype(dt)
        else:  # pragma: no cover
            raise AssertionError(n.op)
        env[n.outputs[0]] = y
    return env[g.outputs[0]]


@pytest.mark.parametrize("fmt,dt", [("fp16", np.float16), ("fp32", np.float32)])
def test_resnet20_equals_numpy_loop(cifar, fmt, dt):
    g, x = cifar
    ours = _run(g, make_config(format=fmt), x, "fast")["logits"]
    theirs = _np_net(g, x, dt).astype(np.float64)
    assert np.isfinite(ours).all()
    assert same_bits(ours, theirs).all(), (ours, theirs)


def test_unsupported_ops_listed_at_once():
    import onnx
    from onnx import TensorProto, helper

    X = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    Y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    nodes = [helper.make_node("Acos", ["x"], ["a"], name="sm"),
             helper.make_node("Relu", ["a"], ["b"], name="r"),
             helper.make_node("Erf", ["b"], ["c"], name="erf"),
             helper.make_node("Acos", ["c"], ["y"], name="sm2")]
    m = helper.make_model(helper.make_graph(nodes, "g", [X], [Y]),
                          opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(m)
    with pytest.raises(UnsupportedOpError) as ei:
        Interpreter(lift(m), make_config(format="fp16"), "fast")
    msg = str(ei.value)
    assert "Acos" in msg and "Erf" in msg and "\n" not in msg
    assert set(ei.value.ops) == {"Acos", "Erf"}
