"""The ``qcompile`` command line: parsing, wiring and printing only (logic lives in the library).

Every user mistake (bad file, option, path) ends as one line ``error: ...`` on stderr with exit
code 2 and no output file.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from qcompile.cli_common import app, user_errors
from qcompile.cli_common import console as _console
from qcompile.cli_common import echo_json as _echo_json
from qcompile.cli_common import progress as _progress
from qcompile.errors import QCompileError


# ---------------------------------------------------------------------------------------------
@app.command()
@user_errors
def inspect(
    model: str = typer.Argument(..., help="ONNX model file"),
    layers: bool = typer.Option(True, "--layers/--no-layers", help="per-layer table"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable report"),
) -> None:
    """Op counts, parameters, per-layer shapes and MACs of a model.

    Examples:

      qcompile inspect ../shared/data/cifar10_resnet20.onnx

      qcompile inspect resnet18.onnx --json --no-layers
    """
    from qcompile.analysis import inspect_graph
    from qcompile.frontend import lift

    report = inspect_graph(lift(model))
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


# ---------------------------------------------------------------------------------------------
@app.command()
@user_errors
def run(
    model: str = typer.Argument(..., help="ONNX model file"),
    output: str = typer.Option(..., "-o", "--output", help="where to write the lowered model"),
    passes: Optional[str] = typer.Option(None, "--passes", "-p",
                                         help="pipeline, e.g. 'fold,cleanup' (default; see "
                                         "`qcompile passes`)"),
    preset: Optional[str] = typer.Option(None, "--preset", help="w8a8|w8a8-per-tensor|w4a8|"
                                         "w4a4|w2a4: the best pipeline for that bit budget "
                                         "(`qcompile passes --presets`)"),
    target: str = typer.Option("ort-fp32", "--target", "-t",
                               help="ort-fp32 | ort-int8 (adds 'quantize' when missing)"),
    calib: Optional[str] = typer.Option(None, "--calib", help="calibration data: .npz/.npy, image folder or image"),
    preprocess: str = typer.Option("none", "--preprocess", help="imagenet|cifar|lite0|none"),
    print_after: list[str] = typer.Option([], "--print-after", help="print the IR after PASS ('all' for every pass)"),
    dump_dir: Optional[str] = typer.Option(None, "--dump-dir", help="write the IR after each pass to DIR"),
    seed: int = typer.Option(0, "--seed", help="random seed (calibration image choice)"),
    as_json: bool = typer.Option(False, "--json", help="print the pass report as JSON"),
    cpu: Optional[str] = typer.Option(None, "--cpu", help="ort-int8: vnni|avx2|arm|generic "
                                      "(default: detected from /proc/cpuinfo)"),
    report_md: Optional[str] = typer.Option(None, "--report", help="also write the per-layer SQNR "
                                         "report after each pass to REPORT.md and its plot "
                                         "to REPORT.png (evaluated on --calib images not "
                                         "used for calibration; `qcompile report` has more "
                                         "options)"),
) -> None:
    """Lift MODEL, run the pass pipeline, lower to TARGET and write OUTPUT.

    Examples:

      qcompile run ../shared/data/cifar10_resnet20.onnx --passes fold --target ort-fp32 -o f.onnx

      qcompile run ../shared/data/cifar10_resnet56.onnx --passes fold,calibrate,quantize
      --target ort-int8 --calib ../shared/data/cifar10_test_dev.npz --preprocess cifar -o r56_int8.onnx

      qcompile run m.onnx -p "fold,cleanup" --print-after fold --dump-dir dumps/ -o m_folded.onnx

      qcompile run ../shared/data/cifar10_resnet20.onnx --preset w4a8 --target ort-int8
      --calib ../shared/data/cifar10_test_dev.npz --preprocess cifar -o r20_w4a8.onnx
      --report r20_w4a8.md
    """
    from qcompile.pipeline import compile_model
    from qcompile.presets import preset_pipeline

    if preset is not None and passes is not None:
        raise QCompileError("--preset and --passes both given; use one (a preset is a "
                            "pipeline: `qcompile passes --presets` shows it)")
    passes = preset_pipeline(preset) if preset is not None else (passes or "fold,cleanup")
    out = Path(output)
    if not out.parent.exists():
        raise QCompileError(f"output: folder {out.parent} does not exist; create it or choose "
                            "another -o path")
    recorder, plot = None, None
    if report_md is not None:
        from qcompile.pass_report import StageRecorder, check_output_path

        if calib is None:
            raise QCompileError("--report needs --calib (the report is evaluated on the "
                                "calibration source's images not used for calibration)")
        plot = str(Path(report_md).with_suffix(".png"))
        check_output_path(report_md)
        recorder = StageRecorder()
    log = lambda m: typer.echo(m, err=True)  # noqa: E731
    report = compile_model(model, output, passes=passes, target=target, calib=calib,
                           preprocess=preprocess, print_after=print_after, dump_dir=dump_dir,
                           seed=seed, log=log, cpu=cpu, progress=_progress,
                           extra_instruments=[recorder] if recorder is not None else [])
    if recorder is not None:
        from qcompile.pass_report import finish_report, write_outputs

        write_outputs(finish_report(recorder, calib=calib, preprocess=preprocess,
                                    progress=_progress, log=log), markdown=report_md, png=plot)
        log(f"wrote {report_md} and {plot}")
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


# ---------------------------------------------------------------------------------------------
@app.command("passes")
@user_errors
def list_passes(as_json: bool = typer.Option(False, "--json"),
                presets: bool = typer.Option(False, "--presets",
                                             help="show what each --preset expands to")) -> None:
    """Every pass with its options, requires and ensures (or, with --presets, the presets).

    Example: qcompile passes --json; qcompile passes --presets
    """
    from qcompile.passes import REGISTRY, describe_options

    if presets:
        from qcompile.presets import PRESETS

        if as_json:
            _echo_json(PRESETS)
            return
        for name, text in PRESETS.items():
            typer.echo(f"{name:<16} {text}")
        return

    rows = []
    for name, cls in REGISTRY.items():
        rows.append({
            "name": name,
            "summary": cls.summary or (cls.__doc__ or "").strip().splitlines()[0],
            "options": [{"name": n, "type": t, "default": d} for n, t, d in describe_options(cls)],
            "requires": [c.name for c in cls.requires],
            "ensures": [c.name for c in cls.ensures],
        })
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


@app.command("eval")
@user_errors
def eval_cmd(
    model: str = typer.Argument(..., help="ONNX model file (float or int8 QDQ)"),
    data: str = typer.Option(..., "--data", help="labelled images: .npz/.npy or class folders"),
    preprocess: str = typer.Option("none", "--preprocess", help="imagenet|cifar|lite0|none"),
    limit: Optional[int] = typer.Option(None, "--limit", help="evaluate at most N images"),
    batch: int = typer.Option(64, "--batch", help="batch size for accuracy"),
    latency: bool = typer.Option(True, "--latency/--no-latency", help="time batch 1 and 8"),
    device: str = typer.Option("cpu", "--device", help="cpu|cuda (int8 on cuda: TensorRT EP)"),
    threads: int = typer.Option(0, "--threads", help="ORT intra-op threads (0: all cores)"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable report"),
) -> None:
    """Top-1/top-5, per-class accuracy, latency (batch 1, 8) and file size of MODEL.

    Images the model was calibrated on (recorded in its metadata) are left out.

    Example: qcompile eval r56_int8.onnx --data ../shared/data/cifar10_test_dev.npz --preprocess cifar
    """
    from qcompile.evaluate import evaluate_model

    rep = evaluate_model(model, data, preprocess=preprocess, limit=limit, batch=batch,
                         latency=latency, device=device, threads=threads,
                         log=lambda m: typer.echo(m, err=True))
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
    data: str = typer.Option(..., "--data", help="labelled images: .npz/.npy or class folders"),
    preprocess: str = typer.Option("none", "--preprocess", help="imagenet|cifar|lite0|none"),
    limit: Optional[int] = typer.Option(None, "--limit", help="compare on at most N images"),
    batch: int = typer.Option(64, "--batch", help="batch size"),
    device: str = typer.Option("cpu", "--device", help="cpu|cuda"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable report"),
) -> None:
    """Top-1 agreement, accuracy delta and logit SQNR of B against A on the same images.

    Example: qcompile compare r56.onnx r56_int8.onnx --data ../shared/data/cifar10_test_dev.npz --preprocess cifar
    """
    from qcompile.evaluate import compare_models

    rep = compare_models(a, b, data, preprocess=preprocess, limit=limit, batch=batch,
                         device=device, log=lambda m: typer.echo(m, err=True))
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
    limit: Optional[int] = typer.Option(None, "--limit", help="use at most K images of --data"),
    preprocess: str = typer.Option("none", "--preprocess", help="imagenet|cifar|lite0|none"),
    size: Optional[int] = typer.Option(None, "--size", help="resize images to SxS"),
    passes: Optional[str] = typer.Option(None, "--passes", "-p", help="pipeline to run first, "
                                         "e.g. fold"),
    preset: Optional[str] = typer.Option(None, "--preset", help="a float/posit preset, e.g. "
                                         "fl-e4m3 (`qcompile passes --presets`); needs --calib"),
    calib: Optional[str] = typer.Option(None, "--calib", help="calibration images for "
                                        "calibrate/assign in --passes/--preset (left out of "
                                        "--data when the same file)"),
    engine: str = typer.Option("fast", "--engine", help="fast|reference"),
    rounding: Optional[str] = typer.Option(None, "--rounding", help="arithmetic rounding: "
                                           "nearest|up|down|zero|away"),
    convert_rounding: Optional[str] = typer.Option(None, "--convert-rounding", help="rounding "
                                                   "of inputs/weights/constants (default: --rounding)"),
    accumulate: Optional[str] = typer.Option(None, "--accumulate", help="sequential|fma|exact"),
    verify: int = typer.Option(0, "--verify", help="re-check K random elements of every layer "
                               "with the reference engine; exit 1 on any mismatch"),
    dump: Optional[str] = typer.Option(None, "--dump", help="write each layer's output (npz) to DIR"),
    labels: Optional[str] = typer.Option(None, "--labels", help="class names (.tsv or .txt)"),
    batch: int = typer.Option(32, "--batch", help="images per evaluation batch (--data)"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable report"),
) -> None:
    """Run MODEL with every operation rounded into a float format (MPFR semantics).

    Examples:

      qcompile emulate ../shared/data/efficientnet_lite0.onnx --bits 16 --exp-bits 5 --image ../shared/data/tiger128.jpg --preprocess lite0 --size 224

      qcompile emulate ../shared/data/cifar10_resnet20.onnx --format e4m3 --data ../shared/data/cifar10_test_dev.npz --preprocess cifar --limit 200

      qcompile emulate r18.onnx --compat qresnet --image tiger128.jpg --preprocess imagenet --size 128 --verify 20

      qcompile emulate ../shared/data/cifar10_resnet20.onnx --format fp32 --preset fl-e4m3 --calib ../shared/data/cifar10_test_dev.npz --data ../shared/data/cifar10_test_dev.npz --preprocess cifar --limit 200
    """
    from qcompile.backends.mpfr.config import make_config
    from qcompile.emulate import emulate as run_emulation

    cfg = make_config(bits=bits, exp_bits=exp_bits, format=fmt, compat=compat,
                      rounding=rounding, convert_rounding=convert_rounding, accumulate=accumulate)
    rep = run_emulation(model, cfg, image=image, data=data, limit=limit, preprocess=preprocess,
                        size=size, passes=passes, engine=engine, verify=verify, dump=dump,
                        labels=labels, batch=batch, log=lambda m: typer.echo(m, err=True),
                        calib=calib, preset=preset)
    bad = rep.get("verify", {}).get("mismatches", 0)
    if as_json:
        _echo_json(rep)
    else:
        _print_emulation(rep)
    if bad:
        typer.echo(f"error: --verify found {bad} mismatch(es) between the fast and reference "
                   f"engines, e.g. {rep['verify']['examples'][0]}", err=True)
        raise typer.Exit(1)


def _print_emulation(rep: dict) -> None:
    typer.echo(f"model   {rep['model']}  (load {rep['load_seconds']:.2f} s, convert+compile "
               f"{rep['compile_seconds']:.2f} s)")
    typer.echo(f"format  {rep['describe']}")
    typer.echo(f"engine  {rep['engine']}: {rep['seconds']:.3f} s network evaluation for "
               f"{rep['images']} image(s); FP32 (onnxruntime) {rep['fp32_seconds']:.3f} s")
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


# Commands that live in their own modules register themselves on ``app`` when imported.
from qcompile import cli_commands  # noqa: E402,F401


def main() -> None:
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
