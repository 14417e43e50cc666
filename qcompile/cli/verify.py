"""``qcompile verify``: ONNX Runtime against the exact quantised network, layer by layer."""

from __future__ import annotations

from typing import Optional

import typer

from qcompile.cli.common import (
    app,
    batch_option,
    check_folder,
    check_outputs,
    check_plot,
    cluster_option,
    data_option,
    dump_option,
    echo_json,
    images_progress,
    json_option,
    limit_option,
    preprocess_option,
    user_errors,
)
from qcompile.errors import OptionError

OPT_LEVELS = ("all", "extended", "basic", "none")


@app.command("verify")
@user_errors
def verify_cmd(
    model: str = typer.Argument(..., help="quantised (QDQ) ONNX model, e.g. from --target ort-int8"),
    data: str = data_option("images: .npz/.npy, image folder or file"),
    preprocess: Optional[str] = preprocess_option(),
    limit: Optional[int] = limit_option(),
    layers: bool = typer.Option(False, "--layers", help="print the per-layer table"),
    isolate: bool = typer.Option(False, "--isolate", help="also evaluate every layer from ORT's "
                                 "own input tensors (departures a layer makes by itself)"),
    opt_level: str = typer.Option("all", "--opt-level", help="ORT graph optimisations: "
                                  "all|extended|basic|none (none: unfused QDQ kernels)"),
    device: str = typer.Option("cpu", "--device", help="cpu|cuda (int8 on cuda: TensorRT EP)"),
    engine: str = typer.Option("fast", "--engine", help="MPFR engine: fast|reference"),
    batch: int = batch_option(25),
    threads: int = typer.Option(0, "--threads", help="ORT intra-op threads (0: all cores)"),
    reference: Optional[str] = typer.Option(None, "--reference", help="also compare with the "
                                            "float model in this format: fp64, fp32, bf16, "
                                            "p=..,emin=..,emax=.. (SQNR, top-1)"),
    float_model: Optional[str] = typer.Option(None, "--float", help="the FP32 original for "
                                              "--reference (default: the QDQ model with its "
                                              "Q/DQ pairs removed)"),
    report: Optional[str] = typer.Option(None, "--report", help="with --reference: write the "
                                         "per-layer SQNR table here (.md or .json)"),
    plot: Optional[str] = typer.Option(None, "--plot", help="with --reference: per-layer SQNR "
                                       "plot (.png)"),
    dump: Optional[str] = dump_option("write golden vectors (npz + manifest.json) of the "
                                      "exact network to this new folder"),
    cluster: Optional[str] = cluster_option(),
    html: Optional[str] = typer.Option(None, "--html", help="write a self-contained HTML "
                                       "report (per-tensor table, SVG plots, ranges; no "
                                       "network) and its .json sidecar"),
    as_json: bool = json_option(),
) -> None:
    """Check bit for bit what ONNX Runtime computes for an int8 model, layer by layer.

    The reference is the exact quantised network on the MPFR backend: exact integer accumulation, one exact round-half-even per quantised tensor.

    Reports per output and, with --layers, per quantised tensor: elements compared and equal, max |diff| in LSBs, the first layer that departs, example coordinates, and which ORT kernels ran.  Verdict: bit-exact / within 1 LSB (exit 0) or diverged (exit 1).

    Examples:

      qcompile verify resnet56_int8.onnx --data ../shared/data/cifar10_test_dev.npz --limit 100 --layers

      qcompile verify resnet56_int8.onnx --data ../shared/data/cifar10_test_dev.npz --opt-level none --json

      qcompile verify resnet56_int8.onnx --data ../shared/data/cifar10_test_dev.npz --reference fp64 --layers --plot sqnr.png
    """
    from qcompile.driver.verify import format_text, verify_model

    if opt_level not in OPT_LEVELS:
        raise OptionError(f"--opt-level: {opt_level!r} is not one of {', '.join(OPT_LEVELS)}")
    if engine not in ("fast", "reference"):
        raise OptionError(f"--engine: {engine!r} is not fast or reference")
    if (report or plot or float_model) and not reference:
        raise OptionError("--report/--plot/--float need --reference FORMAT (e.g. fp64)")
    if report and not report.endswith((".md", ".json")):
        raise OptionError(f"--report: {report} should end in .md or .json")
    check_outputs((report, "--report"))  # every output before the long work
    check_plot(plot)
    check_folder(dump, "--dump")
    if html is not None:
        from qcompile.driver.html_report import check_html_path

        check_html_path(html)
    res = verify_model(model, data, preprocess=preprocess, limit=limit, batch=batch,
                       opt_level=opt_level, device=device, engine=engine, threads=threads,
                       dump=dump, reference=reference, float_model=float_model, isolate=isolate,
                       log=lambda m: typer.echo(m, err=True), cluster=cluster,
                       progress=images_progress)  # a bar on a terminal only
    rep = res.reference_report
    if rep is not None and report:
        (rep.save_json if report.endswith(".json") else rep.save_markdown)(report)
    if rep is not None and plot:
        rep.save_png(plot)
    if html is not None:
        from qcompile.driver.html_report import model_graph, verify_page, write_page

        write_page(verify_page(res, model_graph(model)), html)
        typer.echo(f"wrote {html}", err=True)
    if as_json:
        echo_json(res.to_json())
    else:
        typer.echo(format_text(res, layers=layers))
    if res.exit_code:
        raise typer.Exit(res.exit_code)
