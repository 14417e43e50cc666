"""CPU feature detection for choosing int8 types on ONNX Runtime's CPU EP.

* ``vnni`` (x86 with AVX512-VNNI or AVX-VNNI): u8 x s8 dot products accumulate in int32 without
  saturation: uint8 activations, int8 weights, full range.
* ``avx2`` (x86 without VNNI): the u8 x s8 kernel (``vpmaddubsw``) sums pairs into int16 and can
  saturate, so weights use ``reduce_range`` (7 bits); s8 x s8 has no fast path and is barely
  faster than float32.
* ``arm`` (aarch64: ``sdot``/``smmla``): int8 activations and weights, full range.
* ``generic``: anything else; same choice as ``avx2``.
"""

from __future__ import annotations

import platform
from pathlib import Path

from qcompile.errors import OptionError

CPU_KINDS = ("vnni", "avx2", "arm", "generic")


def detect_cpu(cpuinfo: str | None = None, machine: str | None = None) -> str:
    """``vnni``, ``avx2``, ``arm`` or ``generic`` from /proc/cpuinfo flags and the machine."""
    machine = (machine or platform.machine()).lower()
    if machine in ("aarch64", "arm64") or machine.startswith("arm"):
        return "arm"
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
            break
    if {"avx512_vnni", "avx_vnni", "amx_int8"} & flags:
        return "vnni"
    if "avx2" in flags:
        return "avx2"
    return "generic"


def pair_saturates(cpu: str, activations: str, weights: str, reduce_range: bool) -> bool:
    """Whether ONNX Runtime's kernels for a layer may saturate int16 pairs (``vpmaddubsw``: the
    u8 x s8 products summed in adjacent pairs, each pair saturated to int16) on ``cpu``: uint8
    activations x int8 weights without reduce_range on an x86 CPU without VNNI."""
    return (cpu == "avx2" and activations == "uint8" and weights == "int8"
            and not reduce_range)


def int8_defaults(cpu: str) -> dict[str, object]:
    """``quantize`` options that make ONNX Runtime's CPU EP fast on ``cpu``."""
    if cpu not in CPU_KINDS:
        raise OptionError(f"--cpu: unknown CPU kind {cpu!r}; use one of {', '.join(CPU_KINDS)}")
    if cpu == "arm":
        return {"activations": "int8", "weights": "int8", "reduce_range": False}
    if cpu == "vnni":
        return {"activations": "uint8", "weights": "int8", "reduce_range": False}
    return {"activations": "uint8", "weights": "int8", "reduce_range": True}
