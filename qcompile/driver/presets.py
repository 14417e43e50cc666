"""Presets: the best pipeline found for each bit budget (``qcompile run --preset NAME``).

Each preset is a plain pipeline string (``qcompile passes --presets`` prints them; ``--passes``
stays available for experts). Weights are per output channel unless the name says otherwise.
Measured on the shared models with ``benchmarks/bench_lowbit.py`` (calibration and evaluation
on disjoint images). Options written here win over a target's CPU defaults, which is why the
4-bit presets spell out ``reduce_range=false`` (the AVX2 7-bit remedy is for int8 kernels).

* ``w8a8``: CLE and bias correction cost nothing and matter for depthwise networks.
* ``w8a8-per-tensor``: CLE + high-bias absorption make per-tensor weight ranges usable; CLE
  goes through ReLU6 by DFQ's rule (``clip=scale``: per-channel clip bounds, exact without data;
  EfficientNet-Lite0, 4-fold cross-validation: logit SQNR 7 -> 13 dB against ``clip=data``).
* ``w4a8``: CLE, MSE activation ranges, 4-bit weights with learned rounding (AdaRound, 400
  iterations of 512 rows: a few minutes on ResNet-20 and fast enough for EfficientNet-lite0's
  wide pointwise layers).
* ``w4a4``: 4-bit activations with MSE ranges for 16 levels; first and last layer kept at 8 bits
  (the convention of the published W4A4/W2A4 results); layer-wise learned rounding against the
  quantised network's inputs, which also absorbs much of the activation error.
* ``w2a4``: as ``w4a4`` with 2-bit weights (codes ``-2..1``), where round-to-nearest on min-max
  scales destroys the network (ResNet-20: 10 % accuracy) and layer-wise AdaRound recovers only
  part of it: ``reconstruct`` (BRECQ) re-initialises the weight scales by per-channel MSE, then
  per residual block learns the weights' rounding and the 4-bit activation steps jointly
  against the float block's output. ``clip_search`` first picks each channel's clipping by its
  effect on the layer's output (ResNet-20: 6.33 -> 5.50 points lost with it).
"""

from __future__ import annotations

from qcompile.errors import OptionError, suggest

_LOW = "reduce_range=false"
PRESETS: dict[str, str] = {
    "w8a8": "fold,cle,calibrate{method=percentile},quantize,bias_correct",
    "w8a8-per-tensor": ("fold,cle{clip=scale},absorb,calibrate{method=percentile},"
                        "quantize{per_channel=false},bias_correct"),
    "w4a8": (f"fold,cle,calibrate{{method=mse}},quantize{{weights=int4,{_LOW}}},"
             "adaround{iterations=400,batch=512}"),
    "w4a4": ("fold,calibrate{method=mse,bits=4},quantize{weights=int4,activations=uint4,"
             f"keep_8bit=first,last,{_LOW}}},adaround{{iterations=500}}"),
    "w2a4": ("fold,calibrate{method=mse,bits=4},quantize{weights=int2,activations=uint4,"
             f"keep_8bit=first,last,{_LOW}}},clip_search,reconstruct{{iterations=300}}"),
}


def preset_pipeline(name: str) -> str:
    """The pipeline string of preset ``name`` (OptionError naming the valid ones)."""
    if name not in PRESETS:
        hint = suggest(name, PRESETS)
        raise OptionError(f"--preset: unknown preset {name!r}; {hint}valid: {', '.join(PRESETS)}")
    return PRESETS[name]


# ---- float / posit presets (issue 6) --------------------------------------------------------
# The seed's configurations: first and last layer kept in fp32 (the MPFR backend's arithmetic
# format), every other Conv/Gemm/MatMul with weights and input activations rounded into the
# named format by explicit qcompile.FQ ops with amax scaling (see qcompile.numerics.fq). They run
# on the MPFR backend (`qcompile emulate --preset fl-e4m3 --calib DATA ...`); the ORT backend
# refuses them (`qcompile run --target ort-int8` names the FQ nodes and formats).
def _fl(weights: str, activations: str | None = None) -> str:
    return ("fold,calibrate,assign{policy=first-last,weights=" + weights
            + ",activations=" + (activations or weights) + "}")


FLOAT_PRESETS: dict[str, str] = {
    "fl-bf16": _fl("bf16"),
    "fl-e4m3": _fl("e4m3"),
    "fl-e5m2e4m3": _fl("e5m2", "e4m3"),
    "fl-fp4": _fl("e2m1"),
    "fl-posit4_0": _fl("posit4_0"),
    "fl-posit8_0": _fl("posit8_0"),
    "fl-posit16_1": _fl("posit16_1"),
}
PRESETS.update(FLOAT_PRESETS)
