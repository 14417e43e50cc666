"""``qcompile emulate``: run a model with every operation rounded into a float format."""

from __future__ import annotations

from typing import Optional

import typer

from qcompile.cli.common import (
    app,
    batch_option,
    calib_option,
    check_folder,
    cluster_option,
    dump_option,
    images_progress,
    json_option,
    limit_option,
    preprocess_option,
    seed_option,
    user_errors,
)
from qcompile.cli.common import echo_json as _echo_json


@app.command()
@user_errors
def emulate(
    model: str = typer.Argument(..., help="ONNX model file"),
    bits: Optional[int] = typer.Option(None, "--bits", help="IEEE-style width N (with --exp-bits E)"),
    exp_bits: Optional[int] = typer.Option(None, "--exp-bits", help="exponent bits (default: 4 "
                                           "up to 16 bits, 5 up to 24, 8 above)"),
    fmt: Optional[str] = typer.Option(None, "--format", help="fp32|fp16|bf16|e4m3|e5m2|e2m1|bNeE "
                                      "or p=..,emin=..,emax=..,subnormal=on|off"),
    compat: Optional[str] = typer.Option(None, "--compat", help="qresnet: what the C++ qResNet "
                                         "MPFR engine computes"),
    image: Optional[str] = typer.Option(None, "--image", help="one image file"),
    data: Optional[str] = typer.Option(None, "--data", help="labelled images: .npz/.npy or folder"),
    limit: Optional[int] = limit_option(what="images of --data"),
    seed: int = seed_option("random seed (--limit draw, --verify elements, calibration)"),
    preprocess: Optional[str] = preprocess_option(),
    size: Optional[int] = typer.Option(None, "--size", help="resize images to SxS (default: "
                                       "the model's fixed input size, if any)"),
    passes: Optional[str] = typer.Option(None, "--passes", "-p", help="pipeline to run first, "
                                         "e.g. fold"),
    preset: Optional[str] = typer.Option(None, "--preset", help="a float/posit preset, e.g. "
                                         "fl-e4m3 (`qcompile passes --presets`); needs --calib"),
    calib: Optional[str] = calib_option("calibration images for calibrate/assign in "
                                        "--passes/--preset (left out of --data when the same "
                                        "file)"),
    engine: str = typer.Option("fast", "--engine", help="fast|reference"),
    rounding: Optional[str] = typer.Option(None, "--rounding", help="arithmetic rounding: "
                                           "nearest|up|down|zero|away"),
    convert_rounding: Optional[str] = typer.Option(None, "--convert-rounding", help="rounding "
                                                   "of inputs/weights/constants (default: --rounding)"),
    accumulate: Optional[str] = typer.Option(None, "--accumulate", help="sequential|fma|exact"),
    verify: int = typer.Option(0, "--verify", help="re-check K random elements of every layer "
                               "with the reference engine; exit 1 on any mismatch"),
    dump: Optional[str] = dump_option("write each layer's output (npz) to DIR"),
    labels: Optional[str] = typer.Option(None, "--labels", help="class names (.tsv or .txt)"),
    batch: int = batch_option(32, "images per evaluation batch (--data; does not change "
                              "results)"),
    cluster: Optional[str] = cluster_option(),
    as_json: bool = json_option(),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="also print the evaluation "
                                 "time per op type (the profile)"),
) -> None:
    """Run MODEL with every operation rounded into a float format (MPFR semantics).

    Examples:

      qcompile emulate ../shared/data/efficientnet_lite0.onnx --bits 16 --exp-bits 5 --image ../shared/data/tiger128.jpg --preprocess lite0

      qcompile emulate ../shared/data/cifar10_resnet20.onnx --format e4m3 --data ../shared/data/cifar10_test_dev.npz --preprocess cifar --limit 200

      qcompile emulate ../shared/data/efficientnet_lite0.onnx --compat qresnet --image ../shared/data/tiger128.jpg --preprocess lite0 --verify 20

      qcompile emulate ../shared/data/cifar10_resnet20.onnx --format fp32 --preset fl-e4m3 --calib ../shared/data/cifar10_test_dev.npz --data ../shared/data/cifar10_test_dev.npz --preprocess cifar --limit 200
    """
    from qcompile.driver.emulate import emulate as run_emulation
    from qcompile.driver.emulate import make_config

    check_folder(dump, "--dump")
    cfg = make_config(bits=bits, exp_bits=exp_bits, format=fmt, compat=compat,
                      rounding=rounding, convert_rounding=convert_rounding, accumulate=accumulate)
    rep = run_emulation(model, cfg, image=image, data=data, limit=limit, preprocess=preprocess,
                        size=size, passes=passes, engine=engine, verify=verify, dump=dump,
                        labels=labels, batch=batch, log=lambda m: typer.echo(m, err=True),
                        calib=calib, preset=preset, cluster=cluster,
                        progress=images_progress)  # a bar on a terminal only
    bad = rep.get("verify", {}).get("mismatches", 0)
    if as_json:
        _echo_json(rep)
    else:
        _print_emulation(rep, verbose)
    if bad:
        typer.echo(f"error: --verify found {bad} mismatch(es) between the fast and reference "
                   f"engines, e.g. {rep['verify']['examples'][0]}", err=True)
        raise typer.Exit(1)


def _print_emulation(rep: dict, verbose: bool = False) -> None:
    typer.echo(f"model   {rep['model']}  (load {rep['load_seconds']:.2f} s, convert+compile "
               f"{rep['compile_seconds']:.2f} s)")
    typer.echo(f"format  {rep['describe']}")
    typer.echo(f"engine  {rep['engine']}: {rep['seconds']:.3f} s network evaluation for "
               f"{rep['images']} image(s); FP32 (onnxruntime) {rep['fp32_seconds']:.3f} s")
    if verbose and rep.get("profile"):
        total = sum(rep["profile"].values()) or 1.0
        typer.echo("profile " + "  ".join(f"{op} {t:.3f} s ({100 * t / total:.0f}%)"
                                          for op, t in rep["profile"].items() if t > 0))
    if "accuracy" in rep:
        a = rep["accuracy"]
        pct = lambda v: "n/a" if v is None else f"{100 * v:.2f}%"  # noqa: E731
        typer.echo(f"accuracy  {rep['format']} {pct(a['top1'])}   FP32 {pct(a['fp32_top1'])}   "
                   f"top-1 agreement {pct(a['top1_agreement'])}   ({a['labelled']} labelled)")
    for r in rep["results"][:1 if "accuracy" in rep else 5]:
        typer.echo(f"image #{r['index']}" + ("" if r["label"] is None else f" (label {r['label']})"))
        typer.echo(f"  {'rank':<5}{rep['format'] + ' top-5':<44}{'FP32 top-5'}")
        for k, (c, name, v) in enumerate(r["top5"]):
            left = f"{c:>4} {name[:26]:<26} {v!s:>11}"
            right = ""
            if "fp32_top5" in r:
                c2, n2, v2 = r["fp32_top5"][k]
                right = f"{c2:>4} {n2[:26]:<26} {v2!s:>11}"
            typer.echo(f"  {k + 1:<5}{left:<44}{right}")
    hot = [la for la in rep["layers"] if la["overflow"] or la["underflow"]]
    typer.echo(f"layers  {len(rep['layers'])} rounding layers; overflow (inf/NaN/saturated) in "
               f"{sum(1 for la in hot if la['overflow'])}, underflow (subnormal) in "
               f"{sum(1 for la in hot if la['underflow'])}")
    for la in hot[:8]:
        typer.echo(f"    {la['name']:<32} {la['op']:<20} overflow {la['overflow']:>8}  "
                   f"underflow {la['underflow']:>8}  of {la['values']}")
    if "verify" in rep:
        v = rep["verify"]
        typer.echo(f"verify  {v['elements']} elements in {v['layers']} layers recomputed by the "
                   f"reference engine: {v['mismatches']} mismatch(es)")
    if "dump" in rep:
        typer.echo(f"dump    {rep['dump']['files']} files in {rep['dump']['dir']}")
