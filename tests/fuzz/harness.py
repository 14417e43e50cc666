"""Hostile-input harness shared by the fuzz tests and ``benchmarks/bench_fuzz.py``.

* Mutators (pure functions of a hypothesis ``draw``): ONNX models (attribute ints, dims, data
  types, payload lengths, value_info, outputs, NaN weights, byte truncation and flips) and data
  files (npz bytes and headers, PNG/JPEG bytes, PNG dimensions with a valid CRC).
* :func:`run_cli`: one ``qcompile`` command in process (typer's CliRunner on ``qcompile.cli.app``)
  with a wall-clock budget (``signal.alarm``) and a memory budget (tracemalloc peak: numpy
  reports its buffers to it), classified into an outcome:

  ``ok`` exit 0 (and, for ``run``, the written model loads and runs in ONNX Runtime);
  ``error`` exit 2 with exactly one stderr line ``error: ...``;
  ``internal`` exit 1 with one line ``error: internal error ...`` (a bug, reported cleanly);
  ``crash`` any other exception or a traceback in the output; ``bad`` a multi-line error, an
  unexpected exit code, a partial output file or an unusable model after exit 0; ``hang``
  past the time budget; ``memory`` past the memory budget.
"""

from __future__ import annotations

import io
import os
import signal
import struct
import tracemalloc
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from hypothesis import strategies as st

from qcompile.testing import zoo

GOOD = ("ok", "error")
TIME_BUDGET_S = 60
MEMORY_BUDGET = 512 << 20  # tracemalloc peak per example
#: The budget the run under test enforces on its inputs (well below MEMORY_BUDGET); set only
#: while a run is in progress, so other tests in the same process keep the default.
INPUT_BUDGET = "256M"


class _Timeout(BaseException):
    """Raised by the alarm; a BaseException so no `except Exception` in the code swallows it."""


@dataclass
class Outcome:
    kind: str
    exit_code: int | None
    detail: str

    def __str__(self) -> str:
        return f"{self.kind} (exit {self.exit_code}): {self.detail[:400]}"


def _alarm(signum, frame):
    raise _Timeout()


def run_cli(args: list[str], *, output: Path | None = None, timeout: int = TIME_BUDGET_S,
            memory: int = MEMORY_BUDGET) -> Outcome:
    """Run ``qcompile ARGS`` in process; see the module doc for the outcomes."""
    from typer.testing import CliRunner

    from qcompile.cli import app

    runner = CliRunner()
    saved = os.environ.get("QCOMPILE_MEMORY_BUDGET")
    os.environ["QCOMPILE_MEMORY_BUDGET"] = INPUT_BUDGET
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(timeout)
    tracemalloc.start()
    try:
        res = runner.invoke(app, args, catch_exceptions=True)
    except _Timeout:
        return Outcome("hang", None, f"over {timeout} s: {' '.join(args)[:200]}")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        if saved is None:
            os.environ.pop("QCOMPILE_MEMORY_BUDGET", None)
        else:
            os.environ["QCOMPILE_MEMORY_BUDGET"] = saved
    if isinstance(res.exception, _Timeout):
        return Outcome("hang", None, f"over {timeout} s")
    if peak > memory:
        return Outcome("memory", res.exit_code, f"tracemalloc peak {peak / 2**20:.0f} MiB")
    err = res.stderr if hasattr(res, "stderr") else res.output
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        return Outcome("crash", res.exit_code,
                       f"{type(res.exception).__name__}: {res.exception}")
    if "Traceback (most recent call last)" in res.output:
        return Outcome("crash", res.exit_code, res.output[-400:])
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    if res.exit_code == 0:
        if output is not None:
            why = _unusable(output)
            if why:
                return Outcome("bad", 0, f"exit 0 but the output is unusable: {why}")
        return Outcome("ok", 0, "")
    errors = [ln for ln in lines if ln.startswith("error: ")]
    if output is not None and output.exists():
        return Outcome("bad", res.exit_code, f"failed but left {output}")
    if output is not None and any(p.name.startswith(f".{output.name}.")
                                  for p in output.parent.iterdir()):
        return Outcome("bad", res.exit_code, "failed and left a temporary file")
    if len(errors) != 1 or not lines[-1].startswith("error: "):
        return Outcome("bad", res.exit_code, "not one 'error:' line: " + err[-400:])
    if res.exit_code == 2:
        return Outcome("error", 2, errors[0])
    if res.exit_code == 1 and errors[0].startswith("error: internal error"):
        return Outcome("internal", 1, errors[0])
    return Outcome("bad", res.exit_code, errors[0])


def _unusable(path: Path) -> str:
    import onnxruntime as ort

    if not path.is_file():
        return "no file written"
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model, full_check=True)
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        feeds = {}
        for i in sess.get_inputs():
            dims = [d if isinstance(d, int) else 1 for d in i.shape]
            feeds[i.name] = np.zeros(dims, np.float32 if "float" in i.type else np.uint8)
        sess.run(None, feeds)
    except Exception as e:  # noqa: BLE001 - any failure means unusable
        return f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
    return ""


# ---------------------------------------------------------------------------------------------
# Models
BASE_MODELS = ("conv_bn_relu", "residual_block", "depthwise_block", "gemm_bn")
_NASTY_INTS = [-(2**40), -7, -1, 0, 1, 2, 3, 5, 9, 64, 2**16 + 1, 2**31, 2**40]
_ATTRS = ("group", "strides", "pads", "dilations", "kernel_shape", "transA", "transB", "axis",
          "epsilon", "alpha")


def base_model(name: str) -> onnx.ModelProto:
    return getattr(zoo, name)()


@st.composite
def model_mutation(draw, name: str | None = None) -> tuple[str, bytes]:
    """(description, serialized model) of a valid zoo model with one hostile mutation."""
    name = name or draw(st.sampled_from(BASE_MODELS))
    m = base_model(name)
    g = m.graph
    kind = draw(st.sampled_from(["attr", "dims", "dtype", "payload", "value_info", "input_dims",
                                 "no_outputs", "drop_node", "nan", "truncate", "flip",
                                 "external"]))
    desc = f"{name}:{kind}"
    if kind == "attr":
        node = draw(st.sampled_from(list(g.node)))
        aname = draw(st.sampled_from(_ATTRS))
        vals = draw(st.lists(st.sampled_from(_NASTY_INTS), min_size=1, max_size=4))
        kept = [a for a in node.attribute if a.name != aname]
        del node.attribute[:]
        node.attribute.extend(kept)
        if aname in ("group", "transA", "transB", "axis"):
            node.attribute.append(onnx.helper.make_attribute(aname, vals[0]))
        elif aname in ("epsilon", "alpha"):
            node.attribute.append(onnx.helper.make_attribute(aname, float(vals[0])))
        else:
            node.attribute.append(onnx.helper.make_attribute(aname, vals))
        desc += f":{node.name}.{aname}={vals}"
    elif kind in ("dims", "dtype", "payload", "nan"):
        t = draw(st.sampled_from(list(g.initializer)))
        if kind == "dims":
            i = draw(st.integers(0, max(len(t.dims) - 1, 0)))
            v = draw(st.sampled_from(_NASTY_INTS))
            if t.dims:
                t.dims[i] = v
            else:
                t.dims.append(v)
            desc += f":{t.name}.dims[{i}]={v}"
        elif kind == "dtype":
            code = draw(st.integers(0, 40))
            t.data_type = code
            desc += f":{t.name}.data_type={code}"
        elif kind == "payload":
            arr = onnx.numpy_helper.to_array(t)
            cut = draw(st.integers(0, max(arr.size - 1, 0)))
            field = draw(st.sampled_from(["raw", "float_data", "int64_data"]))
            t.ClearField("raw_data")
            if field == "raw":
                t.raw_data = arr.tobytes()[: cut * arr.itemsize]
            elif field == "float_data":
                t.float_data.extend(arr.astype(np.float32).ravel()[:cut].tolist())
            else:
                t.int64_data.extend([1] * cut)
            desc += f":{t.name}.{field}[:{cut}]"
        else:
            arr = onnx.numpy_helper.to_array(t).copy()
            if arr.dtype.kind == "f" and arr.size:
                arr.ravel()[draw(st.integers(0, arr.size - 1))] = np.nan
                t.CopyFrom(onnx.numpy_helper.from_array(arr, t.name))
            desc += f":{t.name}=nan"
    elif kind == "value_info":
        node = draw(st.sampled_from(list(g.node)))
        dims = draw(st.lists(st.sampled_from([1, 2, 3, 7, 100]), min_size=1, max_size=4))
        g.value_info.append(onnx.helper.make_tensor_value_info(node.output[0], 1, dims))
        desc += f":{node.output[0]}={dims}"
    elif kind == "input_dims":
        vi = g.input[0]
        dims = vi.type.tensor_type.shape.dim
        i = draw(st.integers(0, len(dims) - 1))
        v = draw(st.sampled_from(_NASTY_INTS[2:]))
        dims[i].Clear()
        if v >= 0:
            dims[i].dim_value = v
        desc += f":input.dims[{i}]={v}"
    elif kind == "no_outputs":
        del g.output[:]
    elif kind == "drop_node":
        i = draw(st.integers(0, len(g.node) - 1))
        desc += f":{g.node[i].name}"
        del g.node[i]
    elif kind == "external":
        t = draw(st.sampled_from(list(g.initializer)))
        loc = draw(st.sampled_from(["missing.bin", "../outside.bin", "a\0b", "/etc/passwd",
                                    "model.onnx", "."]))
        t.ClearField("raw_data")
        t.data_location = onnx.TensorProto.EXTERNAL
        t.external_data.add(key="location", value=loc)
        if draw(st.booleans()):
            t.external_data.add(key="offset", value=str(draw(st.sampled_from([-1, 0, 10**9]))))
        desc += f":{t.name}->{loc!r}"
    data = m.SerializeToString()
    if kind == "truncate":
        cut = draw(st.integers(0, len(data) - 1))
        desc += f":{cut}/{len(data)}"
        data = data[:cut]
    elif kind == "flip":
        data = bytearray(data)
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, len(data) - 1))
            data[i] = draw(st.integers(0, 255))
        data = bytes(data)
    return desc, data


# ---------------------------------------------------------------------------------------------
# Data files
def npz_bytes(images: np.ndarray, labels: np.ndarray | None = None) -> bytes:
    buf = io.BytesIO()
    arrays = {"images": images} | ({"labels": labels} if labels is not None else {})
    np.savez(buf, **arrays)
    return buf.getvalue()


def lying_npz(shape: tuple[int, ...], dtype: str = "uint8") -> bytes:
    """An npz whose 'images' member declares ``shape`` but holds 16 bytes."""
    header = {"descr": np.dtype(dtype).str, "fortran_order": False, "shape": shape}
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)  # magic + header
    body = buf.getvalue()
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        zf.writestr("images.npy", body + b"\0" * 16)
    return out.getvalue()


def png_with_size(width: int, height: int) -> bytes:
    """A tiny valid PNG whose IHDR (CRC fixed) claims ``width x height``: a decompression bomb
    header."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4: ihdr + 12] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr: ihdr + 17])) & 0xFFFFFFFF
    data[ihdr + 17: ihdr + 21] = struct.pack(">I", crc)
    return bytes(data)


def image_bytes(fmt: str, size: int = 8, seed: int = 0) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, fmt)
    return buf.getvalue()


@st.composite
def data_mutation(draw) -> tuple[str, str, bytes]:
    """(description, file suffix, bytes) of a hostile data file."""
    kind = draw(st.sampled_from(["npz_truncate", "npz_flip", "npz_lie", "npz_dtype",
                                 "png_truncate", "png_flip", "png_bomb", "jpeg_truncate",
                                 "jpeg_flip"]))
    rng = np.random.default_rng(draw(st.integers(0, 99)))
    if kind.startswith("npz"):
        images = rng.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
        data = npz_bytes(images, np.arange(4))
        if kind == "npz_lie":
            shape = draw(st.sampled_from([(2**31, 8, 8, 3), (4, 8, 8, 3), (10**6, 32, 32, 3),
                                          (4, 2**20, 2**20, 3), (-1, 8, 8, 3)]))
            return f"{kind}:{shape}", ".npz", lying_npz(shape)
        if kind == "npz_dtype":
            dt = draw(st.sampled_from(["int64", "float64", "bool", "complex64", "<U3"]))
            arr = np.zeros((4, 8, 8, 3), dtype=dt) if dt != "<U3" else np.array(["abc"] * 4)
            return f"{kind}:{dt}", ".npz", npz_bytes(arr)
        suffix = ".npz"
    elif kind.startswith("png"):
        if kind == "png_bomb":
            w, h = draw(st.sampled_from([(30000, 30000), (2**31 - 1, 1), (1, 2**31 - 1),
                                         (0, 5), (9000, 9000)]))
            return f"{kind}:{w}x{h}", ".png", png_with_size(w, h)
        data, suffix = image_bytes("PNG"), ".png"
    else:
        data, suffix = image_bytes("JPEG"), ".jpg"
    if kind.endswith("truncate"):
        cut = draw(st.integers(0, len(data) - 1))
        return f"{kind}:{cut}/{len(data)}", suffix, data[:cut]
    data = bytearray(data)
    for _ in range(draw(st.integers(1, 8))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return kind, suffix, bytes(data)


# ---------------------------------------------------------------------------------------------
# Cases: one hostile file through the commands
MODEL_COMMANDS = ("inspect", "run", "run-int8", "emulate")


def calib_for(name: str, folder: Path) -> Path:
    """A float32 NCHW npz of 4 random rows shaped like zoo model ``name``'s input."""
    feeds = zoo.random_input(base_model(name), batch=4)
    path = folder / f"calib_{name}.npz"
    if not path.exists():
        np.savez(path, images=next(iter(feeds.values())).astype(np.float32))
    return path


def model_case(folder: Path, name: str, data: bytes, command: str) -> Outcome:
    """Write the mutated model ``data`` of zoo model ``name`` to ``folder`` and run ``command``."""
    model = folder / "model.onnx"
    model.write_bytes(data)
    calib = calib_for(name, folder)
    out = folder / "out.onnx"
    if out.exists():
        out.unlink()
    if command == "inspect":
        return run_cli(["inspect", str(model)])
    if command == "run":
        return run_cli(["run", str(model), "-p", "fold,cleanup", "-o", str(out)], output=out)
    if command == "run-int8":
        return run_cli(["run", str(model), "-t", "ort-int8", "--calib", str(calib),
                        "--preprocess", "none", "-o", str(out)], output=out)
    if command == "emulate":
        return run_cli(["emulate", str(model), "--format", "bf16", "--data", str(calib),
                        "--preprocess", "none", "--limit", "2"])
    raise ValueError(command)


def data_case(folder: Path, suffix: str, data: bytes, command: str) -> Outcome:
    """Use the hostile data file as ``--calib`` (run int8) or ``--data``/``--image`` (emulate)
    of zoo's conv_bn_relu."""
    model = folder / "base.onnx"
    if not model.exists():
        onnx.save(base_model("conv_bn_relu"), str(model))
    path = folder / f"data{suffix}"
    path.write_bytes(data)
    out = folder / "out.onnx"
    if out.exists():
        out.unlink()
    if command == "run-int8":
        return run_cli(["run", str(model), "-t", "ort-int8", "--calib", str(path),
                        "--preprocess", "none", "-o", str(out)], output=out)
    flag = "--data" if suffix == ".npz" else "--image"
    return run_cli(["emulate", str(model), "--format", "bf16", flag, str(path),
                    "--preprocess", "none", "--size", "8", "--limit", "2"])
