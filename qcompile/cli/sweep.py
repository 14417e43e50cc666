"""``qcompile sweep``: accuracy and top-1 agreement with FP32 for a list of uniform formats."""

from __future__ import annotations

from typing import Optional

import typer

from qcompile.cli.common import (
    app,
    cluster_option,
    echo_json,
    images_progress,
    json_option,
    preprocess_option,
    progress,
    user_errors,
)
from qcompile.errors import QCompileError

DEFAULT_FORMATS = "int4,int8,e4m3,e5m2,bf16,posit8_1,posit16_1"


@app.command("sweep")
@user_errors
def sweep_cmd(
    model: str = typer.Argument(..., help="ONNX model file"),
    data: str = typer.Option(..., "--data", help="labelled images (.npz/.npy or class folders); "
                             "calibration and evaluation images are drawn from it, disjoint"),
    preprocess: str = preprocess_option(),
    limit: Optional[int] = typer.Option(1000, "--limit", help="evaluation images (default 1000)"),
    calib_images: int = typer.Option(256, "--calib-images", help="calibration images"),
    formats: str = typer.Option(DEFAULT_FORMATS, "--formats", help="comma list: int4|int8|int16, "
                                "fp16|bf16|e5m2|e4m3|e2m1, bNeE, positN_ES; ranges b12e4..b20e4 "
                                "and posit8_1..posit12_1 expand to every width"),
    arith: str = typer.Option("fp32", "--arith", help="MPFR arithmetic format between the FQ ops"),
    output: Optional[str] = typer.Option(None, "-o", "--output", help="write the markdown table"),
    plot: Optional[str] = typer.Option(None, "--plot", help="write the accuracy-vs-bits PNG"),
    seed: int = typer.Option(0, "--seed", help="seed of the calibration/evaluation draw"),
    cluster: Optional[str] = cluster_option(),
    as_json: bool = json_option("print the report as JSON"),
) -> None:
    """Accuracy and top-1 agreement with FP32 for every uniform format in --formats.

    Integer formats run on ONNX Runtime (quantize: intN weights, uintN activations); float and posit formats run on the MPFR fast engine with explicit FQ ops (assign, amax scaling).

    Examples:

      qcompile sweep ../shared/data/cifar10_resnet20.onnx --data ../shared/data/cifar10_test_dev.npz --preprocess cifar --limit 500 --formats "int8,e4m3,bf16,posit8_1" -o sweep.md --plot sweep.png

      qcompile sweep m.onnx --data imgs/ --preprocess imagenet --formats "b12e4..b16e4" --json
    """
    from qcompile.driver.sweep import expand_formats, save_plot, sweep, to_markdown
    from qcompile.files import atomic_write, check_output_path

    fmts = expand_formats(formats)  # validated before any work
    for p in (output, plot):
        if p is not None:
            check_output_path(p)
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
    if as_json:
        echo_json(rep)
    else:
        typer.echo(md)
