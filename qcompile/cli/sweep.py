"""``qcompile sweep``: accuracy and top-1 agreement with FP32 for a list of uniform formats."""

from __future__ import annotations

from typing import Optional

import typer

from qcompile.cli.common import (
    alias_option,
    app,
    check_outputs,
    check_plot,
    cluster_option,
    data_option,
    echo_json,
    format_option,
    images_progress,
    json_option,
    limit_option,
    merged,
    preprocess_option,
    progress,
    seed_option,
    user_errors,
)
from qcompile.errors import QCompileError

DEFAULT_FORMATS = "int4,int8,e4m3,e5m2,bf16,posit8_1,posit16_1"


@app.command("sweep")
@user_errors
def sweep_cmd(
    model: str = typer.Argument(..., help="ONNX model file"),
    data: str = data_option("labelled images (.npz/.npy or class folders); calibration and "
                            "evaluation images are drawn from it, disjoint"),
    preprocess: Optional[str] = preprocess_option(),
    limit: Optional[int] = limit_option(1000, "evaluation images"),
    calib_images: int = typer.Option(256, "--calib-images", help="calibration images: the "
                                     "sweep's own calibrate{images=N} (drawn by --seed)"),
    formats: str = typer.Option(DEFAULT_FORMATS, "--formats", help="comma list: int4|int8|int16, "
                                "fp16|bf16|e5m2|e4m3|e2m1, bNeE, positN_ES; ranges b12e4..b20e4 "
                                "and posit8_1..posit12_1 expand to every width"),
    arith: str = format_option("fp32", "MPFR arithmetic format between the FQ ops (as "
                               "`qcompile emulate --format`)"),
    arith_old: Optional[str] = alias_option("--arith"),
    output: Optional[str] = typer.Option(None, "-o", "--output", help="write the markdown table"),
    plot: Optional[str] = typer.Option(None, "--plot", help="write the accuracy-vs-bits PNG"),
    seed: int = seed_option("seed of the calibration draw and the --limit draw"),
    cluster: Optional[str] = cluster_option(),
    html: Optional[str] = typer.Option(None, "--html", help="write a self-contained HTML "
                                       "report (sortable table, SVG plot; no network) and "
                                       "its .json sidecar"),
    as_json: bool = json_option("print the report as JSON"),
) -> None:
    """Accuracy and top-1 agreement with FP32 for every uniform format in --formats.

    Integer formats run on ONNX Runtime (quantize: intN weights, uintN activations); float and posit formats run on the MPFR fast engine with explicit FQ ops (assign, amax scaling).

    Examples:

      qcompile sweep ../shared/data/cifar10_resnet20.onnx --data ../shared/data/cifar10_test_dev.npz --preprocess cifar --limit 500 --formats "int8,e4m3,bf16,posit8_1" -o sweep.md --plot sweep.png

      qcompile sweep m.onnx --data imgs/ --preprocess imagenet --formats "b12e4..b16e4" --json
    """
    from qcompile.driver.sweep import expand_formats, save_plot, sweep, to_markdown
    from qcompile.files import atomic_write

    fmts = expand_formats(formats)  # validated before any work
    arith = merged(arith, arith_old, "--format", "--arith", default="fp32")
    check_outputs((output, "-o"))
    check_plot(plot)
    if html is not None:
        from qcompile.driver.html_report import check_html_path

        check_html_path(html)
    if limit is not None and limit < 1:
        raise QCompileError("--limit: need at least 1 evaluation image")
    rep = sweep(model, data, fmts, preprocess=preprocess, limit=limit,
                calib_images=calib_images, arith=arith, seed=seed,
                log=lambda m: typer.echo(m, err=True), cluster=cluster,
                progress=images_progress if cluster else progress)
    md = to_markdown(rep)
    if output:
        atomic_write(output, md)
    if plot:
        save_plot(rep, plot)
    if html is not None:
        from qcompile.driver.html_report import sweep_page, write_page

        write_page(sweep_page(rep), html)
    if as_json:
        echo_json(rep)
    else:
        typer.echo(md)
