"""``qcompile run`` (lift -> passes -> lower -> write) and ``qcompile passes``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from qcompile.cli.common import (
    alias_option,
    app,
    calib_option,
    check_folder,
    check_plot,
    dump_option,
    json_option,
    merged,
    preprocess_option,
    seed_option,
    user_errors,
)
from qcompile.cli.common import echo_json as _echo_json
from qcompile.cli.common import progress as _progress
from qcompile.errors import QCompileError
from qcompile.files import check_output_path


@app.command()
@user_errors
def run(
    model: str = typer.Argument(..., help="ONNX model file"),
    output: str = typer.Option(..., "-o", "--output", help="where to write the lowered model"),
    passes: Optional[str] = typer.Option(None, "--passes", "-p",
                                         help="pipeline, e.g. 'fold,cleanup' (default "
                                         "fold,cleanup; ort-int8: fold,calibrate,quantize; "
                                         "see `qcompile passes`)"),
    preset: Optional[str] = typer.Option(None, "--preset", help="w8a8|w8a8-per-tensor|w4a8|"
                                         "w4a4|w2a4: the best pipeline for that bit budget "
                                         "(`qcompile passes --presets`)"),
    target: str = typer.Option("ort-fp32", "--target", "-t",
                               help="ort-fp32 | ort-int8 (adds 'calibrate,quantize' when "
                               "missing)"),
    calib: Optional[str] = calib_option(),
    preprocess: Optional[str] = preprocess_option(),
    print_after: list[str] = typer.Option([], "--print-after", help="print the IR after PASS ('all' for every pass)"),
    dump: Optional[str] = dump_option("write the IR after each pass to DIR"),
    dump_dir: Optional[str] = alias_option("--dump-dir"),
    seed: int = seed_option("random seed (calibration image choice)"),
    as_json: bool = json_option("print the pass report as JSON"),
    cpu: Optional[str] = typer.Option(None, "--cpu", help="ort-int8: vnni|avx2|arm|generic "
                                      "(default: detected from /proc/cpuinfo)"),
    report_md: Optional[str] = typer.Option(None, "--report", help="also write the per-layer SQNR "
                                         "report after each pass to REPORT.md and its plot "
                                         "to REPORT.png (evaluated on --calib images not "
                                         "used for calibration; `qcompile report` has more "
                                         "options)"),
    html: Optional[str] = typer.Option(None, "--html", help="also write the per-layer report "
                                       "as one self-contained HTML file (+ .json sidecar; "
                                       "needs --calib)"),
) -> None:
    """Lift MODEL, run the pass pipeline, lower to TARGET and write OUTPUT.

    Examples:

      qcompile run ../shared/data/cifar10_resnet20.onnx --passes fold --target ort-fp32 -o f.onnx

      qcompile run ../shared/data/cifar10_resnet56.onnx --passes fold,calibrate,quantize
      --target ort-int8 --calib ../shared/data/cifar10_test_dev.npz --preprocess cifar -o r56_int8.onnx

      qcompile run ../shared/data/cifar10_resnet20.onnx -p "fold,cleanup" --print-after fold
      --dump dumps/ -o r20_folded.onnx

      qcompile run ../shared/data/cifar10_resnet20.onnx --preset w4a8 --target ort-int8
      --calib ../shared/data/cifar10_test_dev.npz --preprocess cifar -o r20_w4a8.onnx
      --report r20_w4a8.md
    """
    from qcompile.driver.compile import compile_model
    from qcompile.driver.presets import preset_pipeline

    if preset is not None and passes is not None:
        raise QCompileError("--preset and --passes both given; use one (a preset is a "
                            "pipeline: `qcompile passes --presets` shows it)")
    passes = preset_pipeline(preset) if preset is not None else passes
    dump_dir = merged(dump, dump_dir, "--dump", "--dump-dir")
    check_output_path(output, "-o")
    check_folder(dump_dir, "--dump")
    recorder, plot = None, None
    if report_md is not None or html is not None:
        from qcompile.driver.pass_report import StageRecorder

        if calib is None:
            raise QCompileError(f"{'--report' if report_md else '--html'} needs --calib (the "
                                "report is evaluated on the calibration source's images not "
                                "used for calibration)")
        if report_md is not None:
            plot = str(Path(report_md).with_suffix(".png"))
            check_output_path(report_md, "--report")
            check_plot(plot, "--report")
        if html is not None:
            from qcompile.driver.html_report import check_html_path

            check_html_path(html)
        recorder = StageRecorder()
    log = lambda m: typer.echo(m, err=True)  # noqa: E731
    report = compile_model(model, output, passes=passes, target=target, calib=calib,
                           preprocess=preprocess, print_after=print_after, dump_dir=dump_dir,
                           seed=seed, log=log, cpu=cpu, progress=_progress,
                           extra_instruments=[recorder] if recorder is not None else [])
    if recorder is not None:
        from qcompile.driver.pass_report import finish_report, write_outputs

        rep = finish_report(recorder, calib=calib, preprocess=report["preprocess"],
                            progress=_progress, log=log, seed=seed)
        if report_md is not None:
            write_outputs(rep, markdown=report_md, png=plot)
            log(f"wrote {report_md} and {plot}")
        if html is not None:
            from qcompile.driver.html_report import pass_report_page, write_page

            log("wrote " + " and ".join(map(str, write_page(pass_report_page(rep, rep.graph),
                                                            html))))
    if as_json:
        _echo_json(report)
        return
    for step in report["passes"]:
        stats = ", ".join(f"{k}={v}" for k, v in step["stats"].items()) or "no change"
        typer.echo(f"{step['pass']:<12} {step['seconds'] * 1000:8.1f} ms  {stats}", err=True)
        for note in step["notes"][:10]:
            typer.echo(f"    declined: {note}", err=True)
        if len(step["notes"]) > 10:
            typer.echo(f"    ... {len(step['notes']) - 10} more (use --json)", err=True)
    if "ort_ops" in report:
        ops = report["ort_ops"]
        fused = {k.split(".")[-1]: v for k, v in ops.items() if k.split(".")[-1].startswith("Q")
                 and k.split(".")[-1] not in ("QuantizeLinear",)}
        typer.echo("ORT CPU kernels: " + ", ".join(f"{k}={v}" for k, v in fused.items())
                   + f"; float Conv={ops.get('Conv', 0)}, Add={ops.get('Add', 0)}", err=True)
    typer.echo(f"wrote {report['output']} ({report['target']}, {report['nodes']} nodes)")


@app.command("passes")
@user_errors
def list_passes(as_json: bool = typer.Option(False, "--json"),
                presets: bool = typer.Option(False, "--presets",
                                             help="show what each --preset expands to")) -> None:
    """Every pass with its options, requires and ensures (or, with --presets, the presets).

    Example: qcompile passes --json; qcompile passes --presets
    """
    from qcompile.driver.compile import pass_table

    if presets:
        from qcompile.driver.presets import PRESETS

        if as_json:
            _echo_json(PRESETS)
            return
        for name, text in PRESETS.items():
            typer.echo(f"{name:<16} {text}")
        return

    rows = pass_table()
    if as_json:
        _echo_json(rows)
        return
    for r in rows:
        typer.echo(f"{r['name']}: {r['summary']}")
        for o in r["options"]:
            typer.echo(f"    {o['name']}: {o['type']} = {o['default']}")
        if r["requires"]:
            typer.echo(f"    requires: {', '.join(r['requires'])}")
        if r["ensures"]:
            typer.echo(f"    ensures:  {', '.join(r['ensures'])}")
    typer.echo("\npipeline grammar: name{key=value,...},name,...  "
               "e.g. fold,cle{iterations=10},calibrate{method=percentile,percentile=99.99}")
