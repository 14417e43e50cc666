"""Passes and the pass manager. ``REGISTRY`` maps each CLI name to its class (explicit, greppable)."""

from qcompile.passes.absorb import AbsorbHighBias
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
from qcompile.passes.calibrate import Calibrate
from qcompile.passes.cle import CrossLayerEqualize
from qcompile.passes.cleanup import Cleanup
from qcompile.passes.fold_bn import FoldBatchNorm
from qcompile.passes.quantize import Quantize
from qcompile.passes.pipeline import (
    DumpDir,
    PipelineResult,
    PrintAfter,
    describe_options,
    parse_pipeline,
    run_pipeline,
)

REGISTRY: dict[str, type[Pass]] = {
    "fold": FoldBatchNorm,
    "cleanup": Cleanup,
    "cle": CrossLayerEqualize,
    "absorb": AbsorbHighBias,
    "calibrate": Calibrate,
    "quantize": Quantize,
}

__all__ = [
    "REGISTRY",
    "AbsorbHighBias",
    "Calibrate",
    "Check",
    "Cleanup",
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
    "Stats",
    "describe_options",
    "parse_pipeline",
    "run_pipeline",
]
