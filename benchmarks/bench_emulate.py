"""Benchmark of ``qcompile emulate`` (MPFR backend).

1. ResNet-18 (torchvision layout, random weights, zoo.resnet(18, image_size=128)) at 128x128 in
   a 15-bit format (1 sign, 4 exponent, 10 mantissa bits), round to nearest, sequential
   accumulation: fast-engine wall time (median), reference-engine cost per multiply-add
   measured on sampled conv outputs and extrapolated, and their ratio.
2. Accuracy of cifar10_resnet20 on cifar10_test_dev (first N images, default 200) for
   IEEE-style bits 8..24 with E=4 and E=5 and the named formats, against FP32 (ORT); PNG plot.

    python benchmarks/bench_emulate.py [--images 500] [--repeat 5] [--skip-accuracy]
    python benchmarks/bench_emulate.py --throughput [--repeat 3] [--verify 100]

3. ``--throughput``: per format family and rounding mode, M MAC/s per core (CPU time of all
   threads), wall time over ONNX Runtime FP32 and over the plain same-order float32 loop (the
   fp32 lane kernels' Conv+Gemm time), on ResNet-20 (batch 50) and ResNet-18@128 (batch 1, 8),
   with ``--verify K`` mismatches per row; all ratios from the same run.

Prints markdown tables; writes benchmarks/results/bench_emulate.json and emulate_accuracy.png.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import DATA, RESULTS, median, table, timeit, write_json  # noqa: E402
from qcompile.backends.mpfr.config import make_config  # noqa: E402
from qcompile.backends.mpfr.interpreter import Interpreter, RefEngine  # noqa: E402
from qcompile.backends.mpfr.listeners import same_bits  # noqa: E402
from qcompile.frontend import lift  # noqa: E402
from qcompile.testing import zoo  # noqa: E402

C_ENGINE_MS = 4362.0  # C++ MPFR engine, ResNet-18 128x128, 64 threads (from the issue)


def conv_macs(graph, x_shape) -> tuple[int, list]:
    """Total multiply-adds of Conv/Gemm nodes (padding skipped) and per-conv info."""
    from qcompile.backends.mpfr.common import conv_geometry

    shapes = {graph.inputs[0]: x_shape}
    interp = Interpreter(graph, make_config(format="fp32"), "fast")
    feeds = {graph.inputs[0].name: np.zeros(x_shape, np.float32)}
    convs = []

    def listen(node, args, outs):
        shapes[node.outputs[0]] = outs[0].shape
        if node.op == "Conv":
            x, w = args[0], args[1]
            s, d, p, (oh, ow) = conv_geometry(x.shape, w.shape[2:], strides=node.attrs.get(
                "strides"), pads=node.attrs.get("pads"), dilations=node.attrs.get("dilations"))
            convs.append((node, w.shape, x.shape, (oh, ow), s, p))
        elif node.op == "Gemm":
            convs.append((node, args[1].shape, args[0].shape, None, None, None))

    interp.listeners.append(listen)
    interp.run(feeds)
    total = 0
    for _node, ws, xs, o, s, p in convs:
        if o is None:
            total += int(np.prod(ws)) * xs[0]
            continue
        H, W = xs[2], xs[3]
        OC, Cg, KH, KW = ws
        oy, ox = np.arange(o[0])[:, None], np.arange(o[1])[None, :]
        valid = 0
        for ky in range(KH):
            for kx in range(KW):
                iy, ix = oy * s[0] - p[0] + ky, ox * s[1] - p[1] + kx
                valid += int(((iy >= 0) & (iy < H) & (ix >= 0) & (ix < W)).sum())
        total += valid * OC * Cg * xs[0]
    return total, convs


def bench_resnet18(repeat: int, samples: int) -> dict:
    m = zoo.resnet(18, image_size=128)
    g = lift(m)
    x = zoo.random_input(m, batch=1)["input"]
    cfg = make_config(bits=15, exp_bits=4)
    macs, convs = conv_macs(g, x.shape)
    interp = Interpreter(g, cfg, "fast")
    t0 = time.perf_counter()
    interp.prepare()
    interp.engine.A.warmup()
    prep = time.perf_counter() - t0
    times = timeit(lambda: interp.run({"input": x}), repeat=repeat, warmup=1)
    fast_s = median(times)
    c0 = time.process_time()
    interp.run({"input": x})
    cpu_s = time.process_time() - c0  # CPU seconds of all threads: per-core throughput
    # reference cost per multiply-add: sampled outputs of every conv, from the fast inputs
    ref = RefEngine(cfg)
    rng = np.random.default_rng(0)
    ref_s, ref_macs, checked, mismatches = 0.0, 0, 0, 0

    def listen(node, args, outs):
        nonlocal ref_s, ref_macs, checked, mismatches
        if node.op not in ("Conv", "Gemm"):
            return
        y = outs[0]
        idx = [tuple(int(t) for t in np.unravel_index(f, y.shape))
               for f in rng.choice(y.size, size=min(samples, y.size), replace=False)]
        rargs = [ref.from_numpy(a) if a is not None else None for a in args]
        kernel = ref.table.lookup(node)
        t = time.perf_counter()
        kernel(ref, *rargs, sample=idx[:1], **node.attrs)
        t1 = time.perf_counter()
        got = kernel(ref, *rargs, sample=idx, **node.attrs)
        # slope: per-element cost without the per-call setup (tolist of the operands)
        ref_s += (time.perf_counter() - t1) - (t1 - t)
        w = args[1]
        ref_macs += (len(idx) - 1) * (int(np.prod(w.shape[1:])) if node.op == "Conv"
                                      else w.shape[0])
        from qcompile.backends.mpfr.ref import to_float

        want = np.array([y[i] for i in idx])
        mismatches += int((~same_bits(to_float(np.array(got, dtype=object)), want)).sum())
        checked += len(idx)

    interp.listeners.append(listen)
    interp.run({"input": x})
    per_mac = ref_s / ref_macs  # (upper bound: padded taps counted as work)
    ref_total = per_mac * macs
    return {"model": "resnet18 (zoo, random weights) 128x128", "format": cfg.name,
            "macs": macs, "fast_seconds": fast_s, "fast_runs": times, "prepare_seconds": prep,
            "fast_macs_per_s": macs / fast_s, "fast_cpu_seconds": cpu_s,
            "fast_macs_per_cpu_s": macs / cpu_s, "cores": __import__("os").cpu_count(),
            "ref_us_per_mac": per_mac * 1e6, "ref_sampled_outputs": checked,
            "ref_extrapolated_seconds": ref_total, "speedup_vs_reference": ref_total / fast_s,
            "speedup_vs_cpp_64_threads": C_ENGINE_MS / 1000 / fast_s,
            "sample_mismatches": mismatches, "kernels": dict(interp.engine.A.kernel_stats)}


ACC_FORMATS = ([f"b{n}e4" for n in range(8, 25)] + [f"b{n}e5" for n in range(8, 25)]
               + ["fp32", "bf16", "fp16", "e5m2", "e4m3", "e2m1"])


def bench_accuracy(n_images: int, formats: list[str], fold: bool) -> list[dict]:
    from qcompile.backends.ort import lower, session
    from qcompile.data import open_dataset, preset
    from qcompile.passes import PassContext, parse_pipeline, run_pipeline

    g = lift(DATA / "cifar10_resnet20.onnx")
    if fold:
        g = run_pipeline(g, parse_pipeline("fold"), PassContext()).graph
    ds = open_dataset(DATA / "cifar10_test_dev.npz", preset("cifar"))
    # evenly spaced images: the file is sorted by class (the first 500 are all airplanes)
    idx = np.unique(np.linspace(0, len(ds) - 1, min(n_images, len(ds))).round().astype(np.int64))
    batches = list(ds.batches(100, indices=idx))
    sess = session(lower(g))
    fp32 = np.concatenate([sess.run(None, {"input": b.x})[0].argmax(1) for b in batches])
    labels = np.concatenate([b.labels for b in batches])
    rows = [{"format": "fp32 (onnxruntime)", "p": 24, "top1": float((fp32 == labels).mean()),
             "agreement": 1.0, "seconds": 0.0}]
    for name in formats:
        fmt_kw = dict(format=name)
        interp = Interpreter(g, make_config(**fmt_kw), "fast")
        t = time.perf_counter()
        outs = [interp.run_numpy({"input": b.x})["logits"] for b in batches]
        # an image whose top logit is NaN has no prediction (counts as wrong)
        pred = np.concatenate([np.where(np.isnan(o).all(1), -1,
                                        np.where(np.isnan(o), -np.inf, o).argmax(1))
                               for o in outs])
        rows.append({"format": name, "p": interp.cfg.fmt.p,
                     "top1": float((pred == labels).mean()),
                     "agreement": float((pred == fp32).mean()),
                     "nan_images": int(sum(np.isnan(o).any(1).sum() for o in outs)),
                     "seconds": time.perf_counter() - t})
        print(f"  {name:>6}: top-1 {100 * rows[-1]['top1']:.1f}%  agreement "
              f"{100 * rows[-1]['agreement']:.1f}%  ({rows[-1]['seconds']:.1f} s)", flush=True)
    return rows


def plot(rows: list[dict], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(7, 4))
    for e in (4, 5):
        pts = [(int(r["format"][1:].split("e")[0]), r["top1"]) for r in rows
               if r["format"].startswith("b") and r["format"].endswith(f"e{e}")]
        if pts:
            ax.plot(*zip(*pts), marker="o", label=f"IEEE-style, E={e}")
    fp = rows[0]["top1"]
    ax.axhline(fp, color="k", ls="--", lw=1, label="FP32 (onnxruntime)")
    for r in rows:
        if not r["format"].startswith(("b", "fp32 (")):
            ax.scatter([{"fp32": 32, "bf16": 16, "fp16": 16, "e5m2": 8, "e4m3": 8,
                         "e2m1": 4}.get(r["format"], 0)], [r["top1"]], marker="x")
            ax.annotate(r["format"], (
                {"fp32": 32, "bf16": 16, "fp16": 16, "e5m2": 8, "e4m3": 8, "e2m1": 4}.get(
                    r["format"], 0), r["top1"]), fontsize=7)
    ax.set_xlabel("total bits")
    ax.set_ylabel("top-1 accuracy")
    ax.set_title("cifar10_resnet20 on cifar10_test_dev, every op rounded (sequential, nearest)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return True


# throughput table (#14 item 5): (row name, make_config options)
TP_FORMATS = [("fp32", dict(format="fp32")), ("bf16", dict(format="bf16")),
              ("fp16", dict(format="fp16")), ("b15e4", dict(format="b15e4")),
              ("b15e4 up", dict(format="b15e4", rounding="up")),
              ("b15e4 down", dict(format="b15e4", rounding="down")),
              ("b15e4 zero", dict(format="b15e4", rounding="zero")),
              ("b15e4 away", dict(format="b15e4", rounding="away")),
              ("p=11 subnormal=off", dict(format="p=11,emin=-14,emax=16,subnormal=off")),
              ("e4m3", dict(format="e4m3")),
              ("e4m3 FQ (fp32 arith)", dict(format="fp32", fq="e4m3")),
              ("posit8_1 FQ (fp32 arith)", dict(format="fp32", fq="posit8_1")),
              ("qresnet compat", dict(compat="qresnet"))]


def _fq_graph(g, spec: str, feeds):
    """``g`` through ``fold,calibrate{method=minmax},assign{policy=uniform,keep=none}`` with ``spec``
    for weights and activations, calibrated on ``feeds``: the qcompile.FQ graph a float/posit
    PTQ study emulates (amax scales per output channel / per tensor; posits unscaled)."""
    from qcompile.driver.context import ort_executor
    from qcompile.passes import PassContext, parse_pipeline, run_pipeline

    x = next(iter(feeds.values()))
    pipe = parse_pipeline(f"fold,calibrate{{method=minmax,images={x.shape[0]}}},"
                          f"assign{{policy=uniform,weights={spec},activations={spec},keep=none}}")
    return run_pipeline(g.clone(), pipe, PassContext(calib_data=[x],
                                                     executor=ort_executor())).graph


def _tp_models(which: list[str]):
    """(name, graph, input) on the same images as ORT gets them."""
    from qcompile.data import open_dataset, preset

    for name in which:
        if name == "resnet20-b50":
            ds = open_dataset(DATA / "cifar10_test_dev.npz", preset("cifar"))
            x = next(iter(ds.batches(50))).x
            yield name, lift(DATA / "cifar10_resnet20.onnx"), x
        else:  # resnet18@128-bN
            b = int(name.rsplit("-b", 1)[1])
            m = zoo.resnet(18, image_size=128)
            yield name, lift(m), zoo.random_input(m, batch=b)["input"]


def _cpu_run(interp, feeds, repeat):
    """(median wall seconds, CPU seconds of the median-ish run: all threads)."""
    walls, cpus = [], []
    for _ in range(repeat):
        c0, t0 = time.process_time(), time.perf_counter()
        interp.run(feeds)
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return median(walls), median(cpus)


def bench_throughput(models: list[str], formats: list[str], repeat: int, verify: int) -> list:
    """Per model x format: M MAC/s per core (CPU time), wall ratio to ORT FP32 and to the plain
    same-order float32 loop (the fp32 lane kernels' Conv+Gemm time), all in this run."""
    from qcompile.backends.mpfr.listeners import Verifier
    from qcompile.backends.ort import lower, session
    from qcompile.driver.emulate import op_profile

    rows = []
    for mname, g, x in _tp_models(models):
        in_name = g.inputs[0].name
        feeds = {in_name: x}
        macs, _ = conv_macs(g, x.shape)
        sess = session(lower(g))
        sess.run(None, {in_name: x})
        ort_s = median(timeit(lambda s=sess, f=feeds: s.run(None, f), repeat=repeat, warmup=0))
        lim = Interpreter(g, make_config(format="fp32"), "fast")
        lim.prepare()
        lim.engine.A.warmup()
        lim.run(feeds)
        lim.node_seconds.clear()
        for _ in range(repeat):
            lim.run(feeds)
        prof = op_profile(lim)
        limit_s = (prof.get("Conv", 0.0) + prof.get("Gemm", 0.0)) / repeat
        for fname, kw in TP_FORMATS:
            if fname not in formats:
                continue
            kw = dict(kw)
            fq = kw.pop("fq", None)
            gf = _fq_graph(g, fq, feeds) if fq else g
            cfg = make_config(**kw)
            interp = Interpreter(gf, cfg, "fast")
            interp.prepare()
            interp.engine.A.warmup()
            interp.run(feeds)
            interp.node_seconds.clear()
            wall, cpu = _cpu_run(interp, feeds, repeat)
            prof = {k: v / repeat for k, v in op_profile(interp).items()}
            mism = None
            if verify:
                v = Verifier(cfg, verify, seed=0)
                check = Interpreter(gf, cfg, "fast", listeners=[v])
                check.run(feeds)
                mism = v.report()["mismatches"]
            rows.append({"model": mname, "format": fname, "macs": macs, "seconds": wall,
                         "cpu_seconds": cpu, "mmacs_per_core": macs / cpu / 1e6,
                         "ort_seconds": ort_s, "vs_ort": wall / ort_s,
                         "limit_seconds": limit_s, "vs_limit": wall / limit_s,
                         "profile": prof, "kernels": dict(interp.engine.A.kernel_stats),
                         "fq_share": sum(v for k, v in prof.items() if k.endswith("FQ"))
                         / max(sum(prof.values()), 1e-12),
                         "verify_mismatches": mism})
            r = rows[-1]
            write_json("bench_emulate_throughput", {"partial": True, "rows": rows})  # so far
            print(f"  {mname} {fname}: {wall:.3f} s, {r['mmacs_per_core']:.0f} M MAC/s per core,"
                  f" {r['vs_ort']:.1f}x ORT, {r['vs_limit']:.1f}x limit, verify {mism}",
                  flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--samples", type=int, default=20, help="reference samples per layer")
    ap.add_argument("--skip-accuracy", action="store_true")
    ap.add_argument("--fold", action="store_true", help="fold BatchNormalization first")
    ap.add_argument("--formats", default=",".join(ACC_FORMATS))
    ap.add_argument("--throughput", action="store_true",
                    help="only the throughput table (per format family and rounding mode)")
    ap.add_argument("--tp-models", default="resnet20-b50,resnet18@128-b1,resnet18@128-b8")
    ap.add_argument("--tp-formats", default=",".join(n for n, _ in TP_FORMATS))
    ap.add_argument("--verify", type=int, default=100, help="--verify K per throughput row")
    args = ap.parse_args()
    if args.throughput:
        load = __import__("os").getloadavg()[0]
        rows = bench_throughput(args.tp_models.split(","), args.tp_formats.split(","),
                                args.repeat, args.verify)
        print(f"\nload average at start {load:.2f}")
        print(table(["model", "format", "G MACs", "seconds", "M MAC/s per core", "x ORT FP32",
                     "x fp32 loop (limit)", "FQ ops share", "verify mismatches"],
                    [[r["model"], r["format"], f"{r['macs'] / 1e9:.3f}", f"{r['seconds']:.3f}",
                      f"{r['mmacs_per_core']:.0f}", f"{r['vs_ort']:.1f}", f"{r['vs_limit']:.1f}",
                      f"{100 * r['fq_share']:.0f}%", r["verify_mismatches"]] for r in rows]))
        print(f"\nwrote {write_json('bench_emulate_throughput', {'load': load, 'rows': rows})}")
        return
    r = bench_resnet18(args.repeat, args.samples)
    print(table(["model", "format", "MACs", "fast engine", "MAC/s", "MAC/s per core (CPU time)",
                 "reference/MAC",
                 "reference (extrapolated)", "fast vs reference", "vs C++ (64 threads)"],
                [[r["model"], r["format"], f"{r['macs'] / 1e9:.3f} G",
                  f"{r['fast_seconds'] * 1000:.0f} ms", f"{r['fast_macs_per_s'] / 1e6:.0f} M",
                  f"{r['fast_macs_per_cpu_s'] / 1e6:.0f} M",
                  f"{r['ref_us_per_mac']:.3f} us", f"{r['ref_extrapolated_seconds']:.0f} s",
                  f"{r['speedup_vs_reference']:.0f}x", f"{r['speedup_vs_cpp_64_threads']:.2f}x"]]))
    print(f"\n{r['ref_sampled_outputs']} sampled outputs re-computed by the reference: "
          f"{r['sample_mismatches']} mismatches")
    payload = {"resnet18": r}
    if not args.skip_accuracy:
        rows = bench_accuracy(args.images, args.formats.split(","), args.fold)
        print()
        print(table(["format", "p", "top-1", "agreement with FP32", "NaN images", "seconds"],
                    [[x["format"], x["p"], f"{100 * x['top1']:.1f}%",
                      f"{100 * x['agreement']:.1f}%", x.get("nan_images", 0),
                      f"{x['seconds']:.1f}"] for x in rows]))
        png = RESULTS / "emulate_accuracy.png"
        RESULTS.mkdir(parents=True, exist_ok=True)
        payload["accuracy"] = {"images": args.images, "fold": args.fold, "rows": rows,
                               "png": str(png) if plot(rows, png) else None}
    print(f"\nwrote {write_json('bench_emulate', payload)}")


if __name__ == "__main__":
    main()
