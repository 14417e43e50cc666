"""Passes and the pass manager. ``REGISTRY`` maps each CLI name to its class (explicit, greppable)."""

from qcompile.passes.absorb import AbsorbHighBias
from qcompile.passes.adaround import AdaRound
from qcompile.passes.assign import Assign
from qcompile.passes.base import (
    Check,
    Executor,
    Pass,
    PassContext,
    PassError,
    PassResult,
    PreconditionError,
    Stats,
)
from qcompile.passes.bias_correct import BiasCorrect
from qcompile.passes.calibrate import Calibrate
from qcompile.passes.canonicalize import Canonicalize
from qcompile.passes.cle import CrossLayerEqualize
from qcompile.passes.cleanup import Cleanup
from qcompile.passes.clip_search import ClipSearch
from qcompile.passes.dequantize import Dequantize
from qcompile.passes.fold import FoldBatchNorm
from qcompile.passes.pipeline import (
    DumpDir,
    PipelineResult,
    PrintAfter,
    describe_options,
    parse_pipeline,
    run_pipeline,
)
from qcompile.passes.quantize import Quantize
from qcompile.passes.reconstruct import Reconstruct
from qcompile.passes.sensitivity import Sensitivity

REGISTRY: dict[str, type[Pass]] = {
    "fold": FoldBatchNorm,
    "cleanup": Cleanup,
    "canonicalize": Canonicalize,
    "cle": CrossLayerEqualize,
    "absorb": AbsorbHighBias,
    "calibrate": Calibrate,
    "quantize": Quantize,
    "sensitivity": Sensitivity,
    "assign": Assign,
    "adaround": AdaRound,
    "bias_correct": BiasCorrect,
    "clip_search": ClipSearch,
    "reconstruct": Reconstruct,
    "dequantize": Dequantize,
}

__all__ = [
    "REGISTRY",
    "AbsorbHighBias",
    "Assign",
    "AdaRound",
    "BiasCorrect",
    "Calibrate",
    "Check",
    "Cleanup",
    "ClipSearch",
    "CrossLayerEqualize",
    "DumpDir",
    "Executor",
    "FoldBatchNorm",
    "Pass",
    "PassContext",
    "PassError",
    "PassResult",
    "PipelineResult",
    "PreconditionError",
    "PrintAfter",
    "Quantize",
    "Reconstruct",
    "Sensitivity",
    "Stats",
    "describe_options",
    "parse_pipeline",
    "run_pipeline",
]
