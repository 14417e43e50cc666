"""One test per kind of hostile input in issue #18: each ends in exactly one `error: ...` line
with exit 2 (or a clean exit 1 'internal error' for a bug), before any output is written, and
names the tensor/node/option/file."""

from __future__ import annotations

import os
import stat

import numpy as np
import onnx
import pytest

from tests.fuzz import harness
from tests.fuzz.harness import run_cli


def _save(tmp_path, model: onnx.ModelProto, name: str = "m.onnx"):
    path = tmp_path / name
    path.write_bytes(model.SerializeToString())
    return path


def _node(model, op):
    return next(n for n in model.graph.node if n.op_type == op)


def _set(node, name, value):
    kept = [a for a in node.attribute if a.name != name]
    del node.attribute[:]
    node.attribute.extend(kept + [onnx.helper.make_attribute(name, value)])


def _expect_error(args, match, output=None):
    out = run_cli([str(a) for a in args], output=output)
    assert out.kind == "error", str(out)
    assert match in out.detail, out.detail
    return out.detail


def _conv_model():
    return harness.base_model("conv_bn_relu")


@pytest.mark.parametrize("attr,value,match", [
    ("group", 0, "group=0"),
    ("group", 2, "group=2"),
    ("pads", [-1, -1, -1, -1], "pads"),
    ("pads", [2**40] * 4, "pads"),
    ("strides", [0, 0], "strides"),
    ("dilations", [0, 1], "dilations"),
    ("kernel_shape", [5, 5], "kernel_shape"),
])
def test_conv_attribute_rules_fail_at_lift(tmp_path, attr, value, match):
    m = _conv_model()
    _set(_node(m, "Conv"), attr, value)
    out = tmp_path / "o.onnx"
    detail = _expect_error(["run", _save(tmp_path, m), "-o", out], match, output=out)
    assert "conv" in detail  # the node is named
    assert not out.exists()


def test_kernel_larger_than_padded_input(tmp_path):
    m = _conv_model()
    conv = _node(m, "Conv")
    _set(conv, "dilations", [9, 9])  # 3x3 kernel spans 19 > 8 + 2
    _expect_error(["inspect", _save(tmp_path, m)], "kernel spans")


def test_raw_data_shorter_than_dims(tmp_path):
    m = _conv_model()
    t = m.graph.initializer[0]
    t.raw_data = t.raw_data[:7]
    _expect_error(["inspect", _save(tmp_path, m)], "holds 7")


def test_absurd_dims_are_refused_before_allocation(tmp_path):
    m = _conv_model()
    t = m.graph.initializer[0]
    del t.dims[:]
    t.dims.extend([2**20, 2**20])
    _expect_error(["inspect", _save(tmp_path, m)], "memory budget")


@pytest.mark.parametrize("code,match", [(99, "unknown data type code 99"),
                                        (onnx.TensorProto.STRING, "STRING")])
def test_unknown_and_string_types(tmp_path, code, match):
    m = _conv_model()
    m.graph.initializer[0].data_type = code
    _expect_error(["inspect", _save(tmp_path, m)], match)


def test_nan_weight_names_the_tensor(tmp_path):
    m = _conv_model()
    t = next(t for t in m.graph.initializer if t.name == "conv.weight")
    a = onnx.numpy_helper.to_array(t).copy()
    a.flat[3] = np.nan
    t.CopyFrom(onnx.numpy_helper.from_array(a, t.name))
    _expect_error(["inspect", _save(tmp_path, m)], "'conv.weight'")


def test_graph_without_outputs(tmp_path):
    m = _conv_model()
    del m.graph.output[:]
    (tmp_path / "x.png").write_bytes(harness.image_bytes("PNG"))
    _expect_error(["emulate", _save(tmp_path, m), "--format", "bf16", "--image",
                   tmp_path / "x.png", "--preprocess", "none"], "no graph outputs")


def test_value_info_that_lies(tmp_path):
    m = _conv_model()
    m.graph.value_info.append(onnx.helper.make_tensor_value_info(
        _node(m, "Conv").output[0], onnx.TensorProto.FLOAT, [1, 99, 2, 2]))
    _expect_error(["inspect", _save(tmp_path, m)], "shape inference")


@pytest.mark.parametrize("loc,extra,match", [
    ("a\0b", {}, "NUL"),
    ("../x.bin", {}, "outside"),
    ("m.onnx", {}, "model file itself"),
    ("w.bin", {"offset": "1000000"}, "reads from byte 1000000"),
    ("w.bin", {"offset": "8", "length": "864"}, "reads bytes"),
    ("w.bin", {"length": "3"}, "holds 3 bytes"),
    ("fifo.bin", {}, "not a regular file"),
])
def test_external_data_is_validated(tmp_path, loc, extra, match):
    m = _conv_model()
    t = next(t for t in m.graph.initializer if t.name == "conv.weight")
    (tmp_path / "w.bin").write_bytes(t.raw_data)
    os.mkfifo(tmp_path / "fifo.bin")
    t.ClearField("raw_data")
    t.data_location = onnx.TensorProto.EXTERNAL
    t.external_data.add(key="location", value=loc)
    for k, v in extra.items():
        t.external_data.add(key=k, value=v)
    _expect_error(["inspect", _save(tmp_path, m)], match)


def test_model_fifo_does_not_hang(tmp_path):
    os.mkfifo(tmp_path / "m.onnx")
    _expect_error(["inspect", tmp_path / "m.onnx"], "not a regular file")


# ---------------------------------------------------------------------------------------------
def _base(tmp_path):
    return _save(tmp_path, _conv_model(), "base.onnx")


def test_fifo_image_and_fifo_in_folder_do_not_hang(tmp_path):
    model = _base(tmp_path)
    os.mkfifo(tmp_path / "x.png")
    _expect_error(["emulate", model, "--format", "bf16", "--image", tmp_path / "x.png",
                   "--preprocess", "none"], "FIFO")
    folder = tmp_path / "imgs" / "cat"
    folder.mkdir(parents=True)
    os.mkfifo(folder / "a.png")
    (folder / "b.png").write_bytes(harness.image_bytes("PNG"))
    out = run_cli(["emulate", str(model), "--format", "bf16", "--data", str(tmp_path / "imgs"),
                   "--preprocess", "none", "--size", "8"], timeout=60)
    assert out.kind in harness.GOOD, str(out)


def test_decompression_bomb_png(tmp_path):
    model = _base(tmp_path)
    (tmp_path / "bomb.png").write_bytes(harness.png_with_size(30000, 30000))
    _expect_error(["emulate", model, "--format", "bf16", "--image", tmp_path / "bomb.png",
                   "--preprocess", "none"], "bomb")


def test_png_chunk_declaring_512_mib_stays_within_memory(tmp_path):
    """A PNG whose IDAT length field claims 512 MiB: Pillow asked the file for 2^29 bytes,
    and a file object allocates the whole request up front (found by the fuzz suite)."""
    model = _base(tmp_path)
    data = bytearray(harness.image_bytes("PNG"))
    i = data.index(b"IDAT")
    data[i - 4] = 0x20  # length 0x200000xx
    (tmp_path / "x.png").write_bytes(bytes(data))
    out = run_cli(["run", str(model), "-t", "ort-int8", "--calib", str(tmp_path / "x.png"),
                   "--preprocess", "none", "-o", str(tmp_path / "o.onnx")],
                  output=tmp_path / "o.onnx", memory=128 << 20)
    assert out.kind in harness.GOOD, str(out)


def test_npz_member_declaring_2_31_rows(tmp_path):
    model = _base(tmp_path)
    (tmp_path / "lie.npz").write_bytes(harness.lying_npz((2**31, 8, 8, 3)))
    out = tmp_path / "o.onnx"
    _expect_error(["run", model, "-t", "ort-int8", "--calib", tmp_path / "lie.npz", "-o", out],
                  "memory budget", output=out)


@pytest.mark.parametrize("how", ["truncate", "crc"])
def test_truncated_or_crc_broken_npz(tmp_path, how):
    model = _base(tmp_path)
    rng = np.random.default_rng(0)
    data = bytearray(harness.npz_bytes(rng.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)))
    if how == "truncate":
        data = data[: len(data) // 2]
    else:  # flip a byte of the stored (uncompressed) image data: the CRC no longer matches
        data[200] ^= 0xFF
    (tmp_path / "d.npz").write_bytes(bytes(data))
    out = tmp_path / "o.onnx"
    _expect_error(["run", model, "-t", "ort-int8", "--calib", tmp_path / "d.npz",
                   "--preprocess", "none", "-o", out], "d.npz", output=out)


# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("args,match", [
    (["--seed", "-1"], "--seed -1 is out of range"),
    (["--size", "100000"], "--size 100000 is out of range"),
    (["--limit", "0"], "--limit 0"),
    (["--batch", "0"], "--batch 0"),
    (["--bits", "1000"], "--bits 1000"),
])
def test_numeric_options_are_bounded(tmp_path, args, match):
    model = _base(tmp_path)
    _expect_error(["emulate", model, "--format", "bf16", *args], match)


def test_long_user_strings_are_shortened(tmp_path):
    detail = _expect_error(["inspect", tmp_path / ("x" * 10000 + ".onnx")], "...")
    assert len(detail) < 1100


@pytest.mark.parametrize("target", ["/dev/null", "dir", "fifo", "link", "parent_file",
                                    "long"])
def test_outputs_are_only_regular_files(tmp_path, target):
    model = _base(tmp_path)
    paths = {"/dev/null": "/dev/null", "dir": str(tmp_path), "fifo": str(tmp_path / "f"),
             "link": str(tmp_path / "l.onnx"), "parent_file": str(tmp_path / "base.onnx" / "o"),
             "long": str(tmp_path / ("o" * 300 + ".onnx"))}
    os.mkfifo(tmp_path / "f")
    os.symlink("/dev/null", tmp_path / "l.onnx")
    _expect_error(["run", model, "-o", paths[target]], "cannot write")
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)  # the device node survives
    assert os.path.islink(tmp_path / "l.onnx")


def test_full_disk_is_one_line(tmp_path, monkeypatch):
    import errno

    model = _base(tmp_path)
    real = os.replace

    def full(src, dst):
        if str(dst).endswith("o.onnx"):
            raise OSError(errno.EFBIG, "File too large")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", full)
    out = tmp_path / "o.onnx"
    _expect_error(["run", model, "-o", out], "larger than this file system", output=out)


def test_symlink_to_regular_file_is_written_through(tmp_path):
    model = _base(tmp_path)
    (tmp_path / "real.onnx").write_bytes(b"old")
    os.symlink(tmp_path / "real.onnx", tmp_path / "l.onnx")
    out = run_cli(["run", str(model), "-o", str(tmp_path / "l.onnx")],
                  output=tmp_path / "real.onnx")
    assert out.kind == "ok", str(out)
    assert os.path.islink(tmp_path / "l.onnx")


def test_internal_error_is_one_line_exit_1_and_debug_prints_traceback(tmp_path, monkeypatch):
    from qcompile.passes import REGISTRY

    model = _base(tmp_path)
    fold = REGISTRY["fold"]

    def boom(self, graph, ctx):
        for node in graph.nodes:  # noqa: B007  (the harness reads `node` from the frame)
            raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(fold, "run", boom)
    out = run_cli(["run", str(model), "-p", "fold", "-o", str(tmp_path / "o.onnx")])
    assert out.kind == "internal", str(out)
    assert "internal error in pass 'fold' at node" in out.detail
    assert "a bug: please report it with --debug output" in out.detail
    from typer.testing import CliRunner

    from qcompile.cli import app

    res = CliRunner().invoke(app, ["--debug", "run", str(model), "-p", "fold", "-o",
                                   str(tmp_path / "o.onnx")])
    assert res.exit_code == 1
    assert "Traceback" in res.output and "ZeroDivisionError" in res.output
