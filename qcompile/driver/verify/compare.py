"""What ``qcompile verify`` compares and reports: per-tensor LSB comparisons (:class:`TensorCmp`),
float outputs (:class:`FloatCmp`), the result with its verdict (:class:`VerifyResult`) and its text
form (:func:`format_text`)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from qcompile.errors import QCompileError

VERDICTS = ("bit-exact", "within 1 LSB", "diverged")
EXAMPLES = 5


@dataclass
class TensorCmp:
    """Running comparison of one integer tensor (ORT vs exact)."""

    name: str
    op: str
    kernel: str = ""
    compared: int = 0
    equal: int = 0
    max_lsb: int = 0
    hist: Counter = field(default_factory=Counter)
    examples: list = field(default_factory=list)
    ort_above: int = 0  # ORT's code larger than the exact one

    def add(self, ort: np.ndarray, exact: np.ndarray, first_image: int) -> None:
        if ort.shape != exact.shape:
            raise QCompileError(f"tensor '{self.name}': ONNX Runtime gives shape {ort.shape}, "
                                f"the exact network {exact.shape}")
        d = ort.astype(np.int64) - exact.astype(np.int64)
        self.compared += d.size
        nz = np.nonzero(d)
        self.equal += d.size - len(nz[0])
        if len(nz[0]):
            ad = np.abs(d[nz])
            self.max_lsb = max(self.max_lsb, int(ad.max()))
            self.hist.update(Counter(ad.tolist()))
            self.ort_above += int((d[nz] > 0).sum())
            for k in range(min(EXAMPLES - len(self.examples), len(nz[0]))):
                i = tuple(int(ix[k]) for ix in nz)
                self.examples.append({"index": [i[0] + first_image, *i[1:]],
                                      "ort": int(ort[i]), "exact": int(exact[i])})

    @property
    def verdict(self) -> str:
        return VERDICTS[0] if self.max_lsb == 0 else VERDICTS[1] if self.max_lsb <= 1 \
            else VERDICTS[2]

    def to_json(self) -> dict:
        return {"name": self.name, "op": self.op, "kernel": self.kernel,
                "compared": self.compared, "equal": self.equal, "max_lsb": self.max_lsb,
                "lsb_histogram": {str(k): v for k, v in sorted(self.hist.items())},
                "ort_above_exact": self.ort_above, "examples": self.examples,
                "verdict": self.verdict}


@dataclass
class FloatCmp:
    """A float graph output: max |diff|, relative to max |exact|, and top-1 agreement."""

    name: str
    compared: int = 0
    equal: int = 0
    max_abs: float = 0.0
    max_ref: float = 0.0
    top1_agree: int = 0
    rows: int = 0

    def add(self, ort: np.ndarray, exact: np.ndarray, first_image: int) -> None:
        o, e = np.asarray(ort, np.float64), np.asarray(exact, np.float64)
        self.compared += o.size
        self.equal += int((o == e.astype(np.float32)).sum())
        self.max_abs = max(self.max_abs, float(np.abs(o - e).max(initial=0)))
        self.max_ref = max(self.max_ref, float(np.abs(e).max(initial=0)))
        if o.ndim == 2 and o.shape[1] > 1:
            self.top1_agree += int((o.argmax(1) == e.argmax(1)).sum())
            self.rows += o.shape[0]

    def to_json(self) -> dict:
        return {"name": self.name, "compared": self.compared,
                "equal_to_float32_of_exact": self.equal, "max_abs_diff": self.max_abs,
                "max_abs_exact": self.max_ref,
                "top1_agreement": (self.top1_agree / self.rows) if self.rows else None}


@dataclass
class VerifyResult:
    model: str
    data: str
    images: int
    opt_level: str
    device: str
    ort_version: str
    tensors: list[TensorCmp]
    outputs: list[FloatCmp | TensorCmp]
    kernels: dict[str, int]
    fusion_changes: dict[str, int]
    exact_stats: dict
    seconds: dict[str, float]
    extra: dict[str, Any] = field(default_factory=dict)
    reference_report: Any = None  # a qcompile.driver.report.SqnrReport with --reference
    isolated: list[TensorCmp] | None = None  # --isolate: each layer fed ORT's inputs

    @property
    def verdict(self) -> str:
        worst = max((VERDICTS.index(t.verdict) for t in self.tensors), default=0)
        return VERDICTS[worst]

    @property
    def exit_code(self) -> int:
        return 0 if self.verdict != VERDICTS[2] else 1

    @property
    def first_departure(self) -> TensorCmp | None:
        return next((t for t in self.tensors if t.max_lsb), None)

    def to_json(self) -> dict:
        fd = self.first_departure
        return {"model": self.model, "data": self.data, "images": self.images,
                "opt_level": self.opt_level, "device": self.device,
                "onnxruntime": self.ort_version, "verdict": self.verdict,
                "first_departure": fd.name if fd else None,
                "quantized_tensors": len(self.tensors),
                "tensors_bit_exact": sum(t.max_lsb == 0 for t in self.tensors),
                "elements_compared": sum(t.compared for t in self.tensors),
                "elements_differing": sum(t.compared - t.equal for t in self.tensors),
                "outputs": [o.to_json() for o in self.outputs],
                "layers": [dict(t.to_json(), **({} if self.isolated is None else {
                    "isolated": self.isolated[i].to_json()}))
                    for i, t in enumerate(self.tensors)],
                "ort_kernels": self.kernels, "ort_kernels_changed_by_exposing": self.fusion_changes,
                "exact_network": self.exact_stats, "seconds": self.seconds, **self.extra}


def _layers_table(tensors: list[TensorCmp], isolated: list[TensorCmp] | None = None
                  ) -> list[str]:
    iso = "" if isolated is None else " isolated: differ | isolated: max LSB |"
    lines = ["| # | quantised tensor | op | ORT kernel | compared | equal | max LSB | "
             "|diff| histogram | example (index: ort/exact) |" + iso,
             "|---|---|---|---|---|---|---|---|---|" + ("---|---|" if iso else "")]
    for i, t in enumerate(tensors):
        hist = ", ".join(f"{k}:{v}" for k, v in sorted(t.hist.items())) or "-"
        ex = "; ".join(f"{tuple(e['index'])}: {e['ort']}/{e['exact']}" for e in t.examples[:2])
        lines.append(f"| {i} | {t.name} | {t.op} | {t.kernel} | {t.compared} | {t.equal} | "
                     f"{t.max_lsb} | {hist} | {ex or '-'} |" + ("" if isolated is None else
                                                                f" {isolated[i].compared - isolated[i].equal} | "
                                                                f"{isolated[i].max_lsb} |"))
    return lines


def summary(r: VerifyResult) -> str:
    """One plain-language sentence first: does ORT compute the exact network, and are the
    departures the explained kind?  ORT's fused int8 kernels requantise ``acc * (s_in s_w /
    s_out)`` in float32, so a value on a rounding boundary of the exact ``round-half-even`` can
    land 1 LSB away: at most 1 LSB per layer (seen with ``--isolate``: each layer fed ORT's own
    inputs) is that rounding; larger differences downstream are such steps carried forward."""
    ndiff = sum(t.compared - t.equal for t in r.tensors)
    mx = max((t.max_lsb for t in r.tensors), default=0)
    top = next((o.to_json()["top1_agreement"] for o in r.outputs
                if isinstance(o, FloatCmp) and o.rows), None)
    agree = "" if top is None else f"; top-1 agreement {100 * top:.1f}%"
    if mx == 0:
        return (f"ORT matches the exact network bit for bit ({len(r.tensors)} quantised tensors, "
                f"{r.images} images){agree}.")
    why = "because ORT requantises in float32 — expected"
    if mx <= 1:
        return (f"ORT matches the exact network to within 1 LSB per layer; {ndiff} elements "
                f"differ by 1 LSB {why}{agree}.")
    if r.isolated is not None:
        iso = max((t.max_lsb for t in r.isolated), default=0)
        if iso <= 1:
            return (f"Each layer matches the exact network to within 1 LSB when fed ORT's own "
                    f"inputs; the {ndiff} differing elements (up to {mx} LSB downstream) are "
                    f"1-LSB steps {why}, carried forward through later layers{agree}.")
        return (f"ORT departs from the exact network by itself by up to {iso} LSB in a layer "
                f"(more than float32 requantisation explains): see the layers below{agree}.")
    fd = r.first_departure
    if fd is not None and fd.max_lsb <= 1:
        return (f"ORT first departs from the exact network by 1 LSB at '{fd.name}' {why}; "
                f"later layers differ by up to {mx} LSB as those steps propagate (--isolate "
                f"checks each layer alone){agree}.")
    return (f"ORT departs from the exact network by up to {mx} LSB, already at "
            f"'{fd.name if fd else '?'}' (more than float32 requantisation explains){agree}.")


def format_text(r: VerifyResult, *, layers: bool = False) -> str:
    """The human report: a plain-language summary, kernels, outputs, optionally the per-layer
    table, the verdict line."""
    lines = [summary(r), f"model {r.model}: {len(r.tensors)} quantised tensors, {r.images} images, "
             f"ONNX Runtime {r.ort_version} ({r.device}, opt-level {r.opt_level})",
             "ORT kernels: " + ", ".join(f"{k}={v}" for k, v in sorted(r.kernels.items()))]
    if r.fusion_changes:
        lines.append("exposing the quantised tensors changed ORT's graph by: " + ", ".join(
            f"{k}{v:+d}" for k, v in sorted(r.fusion_changes.items())))
    ex = r.exact_stats
    lines.append("exact network: fused " + (", ".join(f"{k}={v}" for k, v in
                                                     sorted(ex.get("fused", {}).items())) or
                                             "nothing") +
                 ("; float ops left (binary64): " + ", ".join(
                     f"{k}={v}" for k, v in sorted(ex.get("float_ops", {}).items()))
                  if ex.get("float_ops") else ""))
    for o in r.outputs:
        if isinstance(o, FloatCmp):
            j = o.to_json()
            top = "" if j["top1_agreement"] is None else \
                f", top-1 agreement {100 * j['top1_agreement']:.1f}%"
            lines.append(f"output {o.name} (float): {o.compared} values, max |diff| "
                         f"{o.max_abs:.3g} (max |value| {o.max_ref:.3g}){top}")
        else:
            lines.append(f"output {o.name}: {o.equal}/{o.compared} equal, max {o.max_lsb} LSB")
    if layers:
        lines += [""] + _layers_table(r.tensors, r.isolated) + [""]
    ref = r.extra.get("reference")
    if ref:
        sq = ", ".join(f"{k} {v} dB" for k, v in ref["logits_sqnr_db"].items())
        top = ref["top1_agreement"]
        lines.append(f"reference {ref['format']}: SQNR of the outputs vs the float model: {sq}"
                     + ("" if top is None else f", top-1 agreement {100 * top:.1f}%"))
        if layers and r.reference_report is not None:
            lines += ["", r.reference_report.to_markdown()]
    if r.isolated:
        iso_diff = sum(t.compared - t.equal for t in r.isolated)
        lines.append(f"isolated (each layer fed ONNX Runtime's own inputs): {iso_diff} elements "
                     f"differ in {sum(t.max_lsb > 0 for t in r.isolated)} layers, max "
                     f"{max((t.max_lsb for t in r.isolated), default=0)} LSB")
    if any(r.extra.get("causes", {}).get(k) for k in ("departures", "unfused_departures")):
        from qcompile.driver.verify.causes import describe

        lines.append(describe(r.extra["causes"]))
    fd = r.first_departure
    ndiff = sum(t.compared - t.equal for t in r.tensors)
    ntot = sum(t.compared for t in r.tensors)
    where = "" if fd is None else f"; first departure at '{fd.name}' ({fd.op}, " \
        f"{fd.compared - fd.equal} elements, e.g. {fd.examples[0]['index']})"
    lines.append(f"verdict: {r.verdict} ({sum(t.max_lsb == 0 for t in r.tensors)}/"
                 f"{len(r.tensors)} tensors bit-exact, {ndiff} of {ntot} elements differ, "
                 f"max {max((t.max_lsb for t in r.tensors), default=0)} LSB{where})")
    return "\n".join(lines)
