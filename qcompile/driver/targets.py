"""Targets: what ``qcompile run --target NAME`` lowers to, and passes the target needs.

A target names a backend, the pipeline it runs when none is given (``ort-int8``:
``fold,calibrate,quantize``) and a list of passes it appends when the user's pipeline lacks them
(``ort-int8`` adds ``quantize`` with defaults, and ``calibrate`` before it when the pipeline has
none: quantize needs ranges). Lowering itself lives in the backend.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from qcompile.errors import OptionError, suggest


@dataclass(frozen=True)
class Target:
    name: str
    backend: str
    description: str
    implied_passes: tuple[str, ...] = field(default=())  # appended when missing
    default_pipeline: str = "fold,cleanup"  # when neither --passes nor --preset is given


TARGETS: dict[str, Target] = {
    "ort-fp32": Target("ort-fp32", "ort", "float ONNX model for ONNX Runtime (no quantisation)"),
}


def get_target(name: str) -> Target:
    if name not in TARGETS:
        hint = suggest(name, TARGETS)
        raise OptionError(f"target: unknown target {name!r}; {hint}valid: {', '.join(TARGETS)}")
    return TARGETS[name]


# ---- int8 on ONNX Runtime -----------------------------------------------------------------
TARGETS["ort-int8"] = Target(
    "ort-int8", "ort", "int8 QDQ model that ONNX Runtime's CPU EP fuses into QLinearConv/"
    "QLinearAdd/QGemm (types chosen for the CPU: --cpu vnni|avx2|arm|generic)",
    implied_passes=("quantize",), default_pipeline="fold,calibrate,quantize")


def target_option_defaults(target: Target, cpu: str | None = None) -> dict[str, object]:
    """Option defaults the target imposes on every pass that declares it takes them
    (``Pass.target_options``), unless the user set them."""
    if target.name != "ort-int8":
        return {}
    from qcompile.backends.ort.cpu import detect_cpu, int8_defaults

    return int8_defaults(cpu or detect_cpu())


def configure_pipeline(target: Target, text: str, *, cpu: str | None = None) -> list:
    """Parse ``text``, append the target's implied passes when missing, apply the target's
    option defaults to every option the user did not write (``quantize{per_channel=false}``
    keeps the CPU's activation type and reduce_range), and schedule the result."""
    import dataclasses

    from qcompile.passes import REGISTRY, parse_pipeline
    from qcompile.passes.pipeline import explicit_options, schedule

    pipeline = parse_pipeline(text, REGISTRY, scheduled=False)
    explicit = explicit_options(text)
    names = [p.name for p in pipeline]
    for implied in target.implied_passes:
        if implied not in names and not (implied == "quantize" and "assign" in names):
            # quantize needs ranges: an implied quantize brings calibrate when none runs
            extra = ["calibrate"] if implied == "quantize" and "calibrate" not in names else []
            for name in extra + [implied]:
                pipeline += parse_pipeline(name, REGISTRY, scheduled=False)
                explicit.append(set())
    defaults = target_option_defaults(target, cpu)
    out = []
    for p, keys in zip(pipeline, explicit, strict=True):
        opts = {k: v for k, v in defaults.items()
                if k in type(p).target_options and k not in keys}
        out.append(dataclasses.replace(p, **opts) if opts else p)
    for p in out:  # float/posit formats (qcompile.FQ ops) run on the MPFR backend only
        if target.backend == "ort" and getattr(p, "float_mode", False):
            raise OptionError(f"target {target.name}: {p.spec()} rounds into float/posit "
                              "formats, which ONNX Runtime cannot run; use `qcompile emulate` "
                              "(MPFR backend) with --preset/--passes, or int4/int8 formats")
    return schedule(out)


def check_graph(target: Target, graph, *, stage: str) -> None:
    """Target-level checks: before the passes (``stage='input'``) and after (``'output'``)."""
    if target.name != "ort-int8":
        return
    from qcompile.ir import is_op
    from qcompile.passes.quantize import quantisable_nodes

    if stage == "input" and not quantisable_nodes(graph):
        raise OptionError(f"target ort-int8: {graph.name!r} has no quantisable op (Conv, Gemm "
                          "or MatMul with a constant weight, or Add of two activations); "
                          "nothing to run in int8 (use --target ort-fp32)")
    if stage == "output" and not any(is_op(n, "QDQ")
                                     for n in graph.nodes):
        raise OptionError("target ort-int8: no op was quantised (all declined or kept float; "
                          "see the quantize notes with --json); nothing to run in int8")
