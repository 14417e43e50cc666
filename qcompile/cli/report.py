"""``qcompile report``: per-layer SQNR after each pass of a pipeline, with the declines."""

from __future__ import annotations

from typing import Optional

import typer

from qcompile.cli.common import (
    app,
    batch_option,
    calib_option,
    check_outputs,
    check_plot,
    echo_json,
    json_option,
    limit_option,
    preprocess_option,
    progress,
    seed_option,
    user_errors,
)
from qcompile.errors import QCompileError


@app.command("report")
@user_errors
def report_cmd(
    model: str = typer.Argument(..., help="ONNX model file"),
    passes: Optional[str] = typer.Option(None, "--passes", "-p", help="pipeline to analyse, "
                                         "e.g. 'fold,calibrate,quantize{weights=int4},adaround'"),
    preset: Optional[str] = typer.Option(None, "--preset", help="analyse a preset's pipeline "
                                         "instead (`qcompile passes --presets`)"),
    calib: Optional[str] = calib_option(),
    preprocess: Optional[str] = preprocess_option(),
    data: Optional[str] = typer.Option(None, "--data", help="evaluation images (default: the "
                                       "--calib images not used for calibration)"),
    limit: int = limit_option(256, "evaluation images"),
    batch: int = batch_option(16),
    target: str = typer.Option("ort-fp32", "--target", "-t", help="configure the pipeline as "
                               "`qcompile run --target` does (ort-int8: CPU defaults, implied "
                               "quantize)"),
    cpu: Optional[str] = typer.Option(None, "--cpu", help="ort-int8: vnni|avx2|arm|generic"),
    seed: int = seed_option(),
    output: Optional[str] = typer.Option(None, "-o", "--output", help="write the markdown "
                                         "report here (default: print it)"),
    plot: Optional[str] = typer.Option(None, "--plot", help="write a PNG of SQNR per layer, one "
                                       "line per pass stage"),
    html: Optional[str] = typer.Option(None, "--html", help="write a self-contained HTML "
                                       "report (sortable tables, SVG plots, no network) and "
                                       "its .json sidecar"),
    as_json: bool = json_option("print the report as JSON"),
) -> None:
    """SQNR of every layer's output after each pass, and which passes declined where and why.

    Evaluated on images not used for calibration. Layers match by value name.

    Quantised stages: vs the float graph the first quantising pass received.

    Float stages (fold, cle...): graph outputs vs the input model.

    Examples:

      qcompile report ../shared/data/cifar10_resnet20.onnx -p "fold,cle,calibrate,quantize{weights=int4},clip_search"
      --calib ../shared/data/cifar10_test_dev.npz --preprocess cifar --limit 200 -o r20.md --plot r20.png

      qcompile report ../shared/data/cifar10_resnet20.onnx --preset w4a8 --calib
      ../shared/data/cifar10_test_dev.npz --preprocess cifar --json
    """
    from qcompile.driver.pass_report import pass_report, write_outputs
    from qcompile.driver.presets import preset_pipeline

    if preset is not None and passes is not None:
        raise QCompileError("--preset and --passes both given; use one")
    if preset is None and passes is None:
        raise QCompileError("give the pipeline to analyse: --passes SPEC or --preset NAME")
    if limit < 1:
        raise QCompileError(f"--limit {limit}: need at least 1 evaluation image")
    check_outputs((output, "-o"))  # before the (long) pipeline runs
    check_plot(plot)  # .png, writable, matplotlib importable
    if html is not None:
        from qcompile.driver.html_report import check_html_path

        check_html_path(html)
    text = preset_pipeline(preset) if preset is not None else passes
    rep = pass_report(model, text, calib=calib, preprocess=preprocess, data=data, limit=limit,
                      batch=batch, target=target, cpu=cpu, seed=seed, progress=progress,
                      log=lambda m: typer.echo(m, err=True))
    write_outputs(rep, markdown=output, png=plot)
    if html is not None:
        from qcompile.driver.html_report import pass_report_page, write_page

        write_page(pass_report_page(rep, rep.graph), html)
    if as_json:
        echo_json(rep.to_json())
    elif output is None:
        typer.echo(rep.to_markdown())
    for path in (output, plot, html):
        if path is not None:
            typer.echo(f"wrote {path}", err=True)
