"""``qcompile eval`` and ``qcompile compare``: accuracy, latency and agreement on ONNX Runtime."""

from __future__ import annotations

from typing import Optional

import typer

from qcompile.cli.common import (
    app,
    batch_option,
    cluster_option,
    data_option,
    images_progress,
    json_option,
    limit_option,
    preprocess_option,
    seed_option,
    user_errors,
)
from qcompile.cli.common import echo_json as _echo_json


@app.command("eval")
@user_errors
def eval_cmd(
    model: str = typer.Argument(..., help="ONNX model file (float or int8 QDQ)"),
    data: str = data_option(),
    preprocess: Optional[str] = preprocess_option(),
    limit: Optional[int] = limit_option(),
    seed: int = seed_option(),
    batch: int = batch_option(),
    latency: bool = typer.Option(True, "--latency/--no-latency", help="time batch 1 and 8"),
    device: str = typer.Option("cpu", "--device", help="cpu|cuda (int8 on cuda: TensorRT EP)"),
    threads: int = typer.Option(0, "--threads", help="ORT intra-op threads (0: all cores)"),
    cluster: Optional[str] = cluster_option(),
    html: Optional[str] = typer.Option(None, "--html", help="write a self-contained HTML "
                                       "report (per-class table, SVG plots, the model's "
                                       "ranges; no network) and its .json sidecar"),
    as_json: bool = json_option(),
) -> None:
    """Top-1/top-5, per-class accuracy, latency (batch 1, 8) and file size of MODEL.

    Images the model was calibrated on (recorded in its metadata) are left out. For an int8
    model written by `qcompile run`, the FP32 model it came from is evaluated on the same
    images too (the baseline).

    Example: qcompile eval resnet56_int8.onnx --data ../shared/data/cifar10_test_dev.npz
    """
    from qcompile.driver.evaluate import evaluate_model

    if html is not None:
        from qcompile.driver.html_report import check_html_path

        check_html_path(html)  # before the evaluation
    rep = evaluate_model(model, data, preprocess=preprocess, limit=limit, batch=batch, seed=seed,
                         latency=latency, device=device, threads=threads, cluster=cluster,
                         progress=images_progress,  # a bar on a terminal only
                         log=lambda m: typer.echo(m, err=True))
    if html is not None:
        from qcompile.driver.html_report import eval_page, model_graph, write_page

        write_page(eval_page(rep, model_graph(model)), html)
        typer.echo(f"wrote {html}", err=True)
    if as_json:
        _echo_json(rep)
        return
    typer.echo(f"{rep['model']}: {'int8' if rep['int8'] else 'float'}, "
               f"{rep['size_bytes'] / 1e6:.2f} MB")
    typer.echo(f"  images  {rep['images']} from {rep['data']}"
               + (f" ({rep['excluded_calibration_images']} calibration images left out)"
                  if rep["excluded_calibration_images"] else ""))
    typer.echo(f"  top-1   {100 * rep['top1']:.2f}%")
    typer.echo(f"  top-5   {100 * rep['top5']:.2f}%")
    if "fp32_baseline" in rep:
        base = rep["fp32_baseline"]
        if base is None:
            typer.echo("  FP32    unknown (this model does not record the float model it came "
                       "from); run `qcompile compare FLOAT.onnx " + rep["model"] + " --data ...`")
        else:
            typer.echo(f"  FP32    {100 * base['top1']:.2f}% top-1 ({base['model']}, same images;"
                       f" {100 * (rep['top1'] - base['top1']):+.2f} points)")
    if "latency_ms" in rep:
        lat = rep["latency_ms"]
        typer.echo(f"  latency batch 1: {lat['1']:.2f} ms, batch 8: {lat['8']:.2f} ms "
                   f"({rep['providers'][0]})")
    worst = sorted(rep["per_class"].items(), key=lambda kv: kv[1]["accuracy"])[:10]
    typer.echo("  per class (lowest first): " + ", ".join(
        f"{k} {100 * v['accuracy']:.1f}%" for k, v in worst))


@app.command()
@user_errors
def compare(
    a: str = typer.Argument(..., help="reference model (e.g. float)"),
    b: str = typer.Argument(..., help="model to compare (e.g. int8)"),
    data: str = data_option(),
    preprocess: Optional[str] = preprocess_option(),
    limit: Optional[int] = limit_option(),
    seed: int = seed_option(),
    batch: int = batch_option(),
    device: str = typer.Option("cpu", "--device", help="cpu|cuda"),
    as_json: bool = json_option(),
) -> None:
    """Top-1 agreement, accuracy delta and logit SQNR of B against A on the same images.

    Example: qcompile compare ../shared/data/cifar10_resnet56.onnx resnet56_int8.onnx --data ../shared/data/cifar10_test_dev.npz
    """
    from qcompile.driver.evaluate import compare_models

    rep = compare_models(a, b, data, preprocess=preprocess, limit=limit, batch=batch, seed=seed,
                         device=device, log=lambda m: typer.echo(m, err=True),
                         progress=images_progress)
    if as_json:
        _echo_json(rep)
        return
    typer.echo(f"{rep['images']} images from {rep['data']}"
               + (f" ({rep['excluded_calibration_images']} calibration images left out)"
                  if rep["excluded_calibration_images"] else ""))
    typer.echo(f"  top-1 A {100 * rep['top1_a']:.2f}%  B {100 * rep['top1_b']:.2f}%  "
               f"delta {100 * rep['top1_delta']:+.2f} points")
    typer.echo(f"  top-1 agreement {100 * rep['top1_agreement']:.2f}%")
    typer.echo(f"  logits SQNR {rep['logits_sqnr_db']:.2f} dB")
