"""Passes and the pass manager. ``REGISTRY`` maps each CLI name to its class (explicit, greppable)."""

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
from qcompile.passes.cleanup import Cleanup
from qcompile.passes.fold_bn import FoldBatchNorm
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
}

__all__ = [
    "REGISTRY",
    "Check",
    "Cleanup",
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
    "Stats",
    "describe_options",
    "parse_pipeline",
    "run_pipeline",
]
