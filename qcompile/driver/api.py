"""The one-call Python API: the main jobs of the command line as functions.

``qcompile.quantize`` is ``qcompile run -t ort-int8``, ``qcompile.emulate`` is ``qcompile
emulate``, ``qcompile.verify_model`` is ``qcompile verify`` (``qcompile.verify`` stays the IR
verifier), ``qcompile.evaluate`` is ``qcompile eval``. Each calls the same driver as the command
with the same defaults (the preprocessing the model records or describes, the CPU-aware int8
types of :func:`qcompile.driver.targets.configure_pipeline`, the seeded ``limit`` draw), so a
model written here is byte-identical to the command's. Nothing is written unless ``output=``
(or ``dump=``) is given, and nothing is printed unless ``log=`` is given (e.g. ``log=print``);
``progress=`` takes a bar factory ``progress(total=, desc=, unit="images")`` returning an object
with ``update(n)`` and ``close()`` (``qcompile.cli.common.images_progress`` draws rich bars).
Results are frozen dataclasses; ``to_json()`` is what the command's ``--json`` prints.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import onnx

__all__ = ["EmulationResult", "EvaluationResult", "VerifyResult", "emulate", "evaluate",
           "quantize", "verify_model"]

Log = Callable[[str], None] | None


def _quiet(log: Log) -> Callable[[str], None]:
    return log if log is not None else (lambda m: None)


def _pipeline(preset: str | None, passes: str | None) -> str | None:
    from qcompile.driver.presets import preset_pipeline
    from qcompile.errors import OptionError

    if preset is not None and passes is not None:
        raise OptionError("preset= and passes= both given; use one (a preset is a pipeline)")
    return preset_pipeline(preset) if preset is not None else passes


def quantize(model: str | Path | onnx.ModelProto, calib: str | Path | None = None, *,
             preset: str | None = None, passes: str | None = None, target: str = "ort-int8",
             preprocess: str | None = None, cpu: str | None = None, seed: int = 0,
             output: str | Path | None = None, log: Log = None,
             progress: Callable | None = None) -> onnx.ModelProto:
    """``qcompile run MODEL -t TARGET --calib CALIB [--preset P | --passes S] [-o OUTPUT]``.

    ``target="ort-int8"`` without ``passes``/``preset`` runs ``fold,calibrate,quantize`` with
    the int8 types ONNX Runtime's kernels want on ``cpu`` (``None``: this machine's, from
    /proc/cpuinfo; ``"vnni"|"avx2"|"arm"|"generic"``). Returns the lowered model; with
    ``output`` it is also written (atomically, path checked before any pass runs)."""
    from qcompile.driver.compile import build_model

    out = None
    if output is not None:
        from qcompile.files import check_output_path

        out = check_output_path(output, "output=")
    proto, _ = build_model(model, passes=_pipeline(preset, passes), target=target,
                           calib=None if calib is None else str(calib), preprocess=preprocess,
                           seed=seed, cpu=cpu, log=_quiet(log), progress=progress)
    if out is not None:
        from qcompile.backends.ort import save_model

        save_model(proto, out)
    return proto


@dataclass(frozen=True)
class EmulationResult:
    """``qcompile emulate``'s result: accuracies are fractions (None without labels / FP32);
    ``results`` one entry per image (index, label, logits, top5, fp32_top5)."""

    model: str
    format: str
    images: int
    seconds: float
    top1: float | None
    fp32_top1: float | None
    top1_agreement: float | None
    results: tuple[Mapping[str, Any], ...]
    layers: tuple[Mapping[str, Any], ...]
    report: Mapping[str, Any]

    def to_json(self) -> dict[str, Any]:
        return dict(self.report)


def emulate(model: str | Path, data: str | Path | None = None, *, image: str | Path | None = None,
            fmt: str | None = None, bits: int | None = None, exp_bits: int | None = None,
            compat: str | None = None, rounding: str | None = None,
            accumulate: str | None = None, limit: int | None = None,
            preprocess: str | None = None, size: int | None = None, passes: str | None = None,
            preset: str | None = None, calib: str | Path | None = None, engine: str = "fast",
            batch: int = 32, seed: int = 0, verify: int = 0, fp32: bool = True,
            log: Log = None, progress: Callable | None = None) -> EmulationResult:
    """``qcompile emulate MODEL (--data D | --image F) (--format FMT | --bits N [--exp-bits E]
    | --compat qresnet)``: every operation rounded into the format (MPFR semantics), FP32 on
    ONNX Runtime beside it."""
    from qcompile.driver.emulate import emulate as run_emulation
    from qcompile.driver.emulate import make_config

    cfg = make_config(bits=bits, exp_bits=exp_bits, format=fmt, compat=compat,
                      rounding=rounding, accumulate=accumulate)
    rep = run_emulation(str(model), cfg, image=None if image is None else str(image),
                        data=None if data is None else str(data), limit=limit,
                        preprocess=preprocess, size=size, passes=passes, preset=preset,
                        calib=None if calib is None else str(calib), engine=engine,
                        batch=batch, seed=seed, verify=verify, fp32=fp32, log=_quiet(log),
                        progress=progress)
    acc = rep.get("accuracy") or {}
    return EmulationResult(rep["model"], rep["format"], rep["images"], rep["seconds"],
                           acc.get("top1"), acc.get("fp32_top1"), acc.get("top1_agreement"),
                           tuple(rep["results"]), tuple(rep["layers"]), rep)


@dataclass(frozen=True)
class VerifyResult:
    """``qcompile verify``'s result. ``verdict``: bit-exact / within 1 LSB / diverged;
    ``summary`` is the command's plain-language first line; ``detail`` the driver's full
    per-tensor result (:class:`qcompile.driver.verify.VerifyResult`)."""

    model: str
    data: str
    images: int
    verdict: str
    ok: bool
    first_departure: str | None
    summary: str
    report: Mapping[str, Any]
    detail: Any

    def to_json(self) -> dict[str, Any]:
        return dict(self.report)


def verify_model(qmodel: str | Path, data: str | Path, *, preprocess: str | None = None,
                 limit: int | None = None, batch: int = 25, opt_level: str = "all",
                 device: str = "cpu", engine: str = "fast", threads: int = 0,
                 reference: str | None = None, float_model: str | None = None,
                 isolate: bool = False, dump: str | None = None, log: Log = None,
                 progress: Callable | None = None) -> VerifyResult:
    """``qcompile verify QMODEL --data D``: ONNX Runtime against the exact quantised network
    (exact integer accumulation, one exact round-half-even per quantised tensor), layer by
    layer. ``ok`` is False exactly when the command exits 1 (diverged)."""
    from qcompile.driver.defaults import choose_preprocess, file_facts
    from qcompile.driver.verify import verify_model as run_verify
    from qcompile.driver.verify.compare import summary

    say = _quiet(log)
    pre = choose_preprocess(preprocess, [file_facts(str(qmodel))], str(data), say)
    res = run_verify(str(qmodel), str(data), preprocess=pre, limit=limit, batch=batch,
                     opt_level=opt_level, device=device, engine=engine, threads=threads,
                     dump=dump, reference=reference, float_model=float_model,
                     isolate=isolate, log=say, progress=progress)
    fd = res.first_departure
    return VerifyResult(res.model, res.data, res.images, res.verdict, res.exit_code == 0,
                        fd.name if fd else None, summary(res), res.to_json(), res)


@dataclass(frozen=True)
class EvaluationResult:
    """``qcompile eval``'s result: top-1/top-5 as fractions, per class, and for an int8 model
    written by ``quantize``/``run`` the FP32 model it came from on the same images."""

    model: str
    data: str
    images: int
    top1: float
    top5: float
    int8: bool
    fp32_baseline: Mapping[str, Any] | None
    per_class: Mapping[str, Mapping[str, Any]]
    report: Mapping[str, Any]

    def to_json(self) -> dict[str, Any]:
        return dict(self.report)


def evaluate(model: str | Path, data: str | Path, *, preprocess: str | None = None,
             limit: int | None = None, seed: int = 0, batch: int = 64, latency: bool = True,
             device: str = "cpu", threads: int = 0, log: Log = None,
             progress: Callable | None = None) -> EvaluationResult:
    """``qcompile eval MODEL --data D``: accuracy on ONNX Runtime, calibration images left
    out, ``limit`` the seeded class-stratified draw."""
    from qcompile.driver.evaluate import evaluate_model

    rep = evaluate_model(str(model), str(data), preprocess=preprocess, limit=limit,
                         batch=batch, seed=seed, latency=latency, device=device,
                         threads=threads, log=_quiet(log), progress=progress)
    return EvaluationResult(rep["model"], rep["data"], rep["images"], rep["top1"], rep["top5"],
                            rep["int8"], rep.get("fp32_baseline"), rep["per_class"], rep)
