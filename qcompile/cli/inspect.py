"""``qcompile inspect``: op counts, parameters, per-layer shapes and MACs."""

from __future__ import annotations

import typer

from qcompile.cli.common import app, json_option, user_errors
from qcompile.cli.common import console as _console
from qcompile.cli.common import echo_json as _echo_json


@app.command()
@user_errors
def inspect(
    model: str = typer.Argument(..., help="ONNX model file"),
    layers: bool = typer.Option(True, "--layers/--no-layers", help="per-layer table"),
    as_json: bool = json_option(),
) -> None:
    """Op counts, parameters, per-layer shapes and MACs of a model.

    Examples:

      qcompile inspect ../shared/data/cifar10_resnet20.onnx

      qcompile inspect resnet18.onnx --json --no-layers
    """
    from qcompile.driver.inspect import inspect_model

    report = inspect_model(model, log=lambda m: typer.echo(m, err=True))
    if as_json:
        if not layers:
            report.pop("layers")
        _echo_json(report)
        return
    from rich.table import Table

    con = _console()
    con.print(f"[bold]{report['name']}[/bold]  opset {report['opset']}, {report['nodes']} nodes, "
              f"{report['parameters']:,} parameters, {report['gmacs']:.3f} GMACs per sample")
    for io in ("inputs", "outputs"):
        for v in report[io]:
            con.print(f"  {io[:-1]} {v['name']}: {v['dtype'].lower()}{v['shape']}")
    ops = Table(title="ops", show_edge=False)
    ops.add_column("op")
    ops.add_column("count", justify="right")
    for op, n in report["op_counts"].items():
        ops.add_row(op, str(n))
    con.print(ops)
    if layers:
        t = Table(title="MAC layers", show_edge=False)
        for c in ("layer", "op", "input", "output", "params", "MACs"):
            t.add_column(c, justify="right" if c in ("params", "MACs") else "left")
        for la in report["layers"]:
            t.add_row(la["name"], la["op"], str(la["input_shape"]), str(la["output_shape"]),
                      f"{la['params']:,}", f"{la['macs']:,}")
        con.print(t)
    con.print(f"total: {report['total_macs']:,} MACs ({report['gmacs']:.3f} G)")
    q = report.get("quantization")
    if q:
        t = Table(title="quantisation scheme", show_edge=False)
        for c in ("layer", "op", "form", "weights", "activations", "granularity", "symmetric",
                  "reduce_range"):
            t.add_column(c)
        for la in q["layers"]:
            t.add_row(la["name"], la["op"], la["form"], la["weights"], la["activations"] or "-",
                      la["granularity"], "yes" if la["symmetric"] else "no",
                      "yes" if la["reduce_range"] else "no")
        con.print(t)
        con.print("ORT kernels: " + (", ".join(f"{k}={v}" for k, v in q["ort_kernels"].items())
                                     or "-") + f" (CPU: {q['cpu']})")
        for w in q["warnings"]:
            con.print(f"warning: {w}")
