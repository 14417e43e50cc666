"""Presets: the best pipeline found for each bit budget (``qcompile run --preset NAME``).

Each preset is a plain pipeline string (``qcompile passes --presets`` prints them; ``--passes``
stays available for experts). Weights are per output channel unless the name says otherwise.
Measured on the shared models with ``benchmarks/bench_lowbit.py`` (calibration and evaluation
on disjoint images). Options written here win over a target's CPU defaults, which is why the
4-bit presets spell out ``reduce_range=false`` (the AVX2 7-bit remedy is for int8 kernels).

* ``w8a8``: CLE and bias correction cost nothing and matter for depthwise networks.
* ``w8a8-per-tensor``: CLE + high-bias absorption make per-tensor weight ranges usable.
* ``w4a8``: MSE activation ranges, 4-bit weights with learned rounding (AdaRound).
* ``w4a4`` / ``w2a4``: 4-bit activations with MSE ranges for 16 levels; first and last layer
  kept at 8 bits (the convention of the published W4A4/W2A4 results); learned rounding against
  the quantised network's inputs, which also absorbs much of the activation error.
"""

from __future__ import annotations

from qcompile.errors import OptionError

_LOW = "reduce_range=false"
PRESETS: dict[str, str] = {
    "w8a8": "fold,cle,calibrate{method=percentile},quantize,bias_correct",
    "w8a8-per-tensor": ("fold,cle,absorb,calibrate{method=percentile},"
                        "quantize{per_channel=false},bias_correct"),
    "w4a8": f"fold,cle,calibrate{{method=mse}},quantize{{weights=int4,{_LOW}}},adaround",
    "w4a4": ("fold,calibrate{method=mse,bits=4},quantize{weights=int4,activations=uint4,"
             f"keep_8bit=first,last,{_LOW}}},adaround{{iterations=500}}"),
    "w2a4": ("fold,calibrate{method=mse,bits=4},quantize{weights=int2,activations=uint4,"
             f"keep_8bit=first,last,{_LOW}}},adaround{{iterations=1000}}"),
}


def preset_pipeline(name: str) -> str:
    """The pipeline string of preset ``name`` (OptionError naming the valid ones)."""
    if name not in PRESETS:
        import difflib

        close = difflib.get_close_matches(name, list(PRESETS), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise OptionError(f"--preset: unknown preset {name!r}; {hint}valid: {', '.join(PRESETS)}")
    return PRESETS[name]
