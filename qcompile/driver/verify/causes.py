"""The causes ``verify --isolate`` can prove for a layer's own departures (issue 13): each
isolated departure of a QLinearConv / QLinearMatMul output element (ORT's code differs from the
exact network's when the layer is fed ORT's own inputs) is recomputed from ORT's integer
inputs under two rules of ORT's CPU kernels; a rule *explains* a departure when it reproduces
ORT's code exactly.

* **float32 requantisation** (every ORT int8 CPU kernel): with ``acc = sum (x - z_x)(w - z_w)
  + B`` exact, ``code = saturate(rint(float32(acc) * float32(float32(s_x s_w) / s_y)) + z_y)``
  (:func:`float32_requant`) instead of the exact ``rhe(s_x s_w acc / s_y)``.
* **int16 pair saturation** (``vpmaddubsw``, ORT's U8S8 GEMM on x86 without AVX-512 VNNI /
  AVX-VNNI): the raw codes are multiplied u8 x s8 and adjacent products along the reduction
  are summed *with saturation to int16* before widening, ``sum_i sat16(x_2i w_2i + x_2i+1
  w_2i+1)`` (:func:`saturated_pair_sum`); the zero-point terms are exact; then float32
  requantisation as above.  S8 activations enter as ``x + 128`` (u8) with ``z_x + 128``.
  The reduction order is ORT's NHWC im2col: ``(kh, kw, c)`` within a group for a
  convolution, ``k`` for a matrix product.  A departure counts for this rule only when the
  float32 rule alone does not reproduce it.

Only the first rule can fire on a CPU with VNNI (``vpdpbusd`` accumulates in int32).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

FUSED = ("QLinearConv", "QLinearMatMul", "QGemm")  # ORT kernels whose integer rules we know
RULES = ("float32 requantisation", "int16 pair saturation (vpmaddubsw)")
I16 = (-(1 << 15), (1 << 15) - 1)


def float32_requant(acc: int, sx, sw, sy, zy: int, qmin: int, qmax: int) -> int:
    """ORT's requantisation of an exact int32 accumulator (bias included) in float32."""
    m = np.float32(np.float32(sx) * np.float32(sw))
    m = np.float32(m / np.float32(sy))
    v = float(np.rint(np.float32(np.float32(acc) * m)))
    return int(min(max(v + int(zy), qmin), qmax))


def saturated_pair_sum(xu: np.ndarray, ws: np.ndarray) -> int:
    """``sum_i sat16(x_2i w_2i + x_2i+1 w_2i+1)`` of u8 codes ``xu`` and s8 codes ``ws`` (one
    reduction vector each, in the kernel's order; an odd last element is its own pair)."""
    p = xu.astype(np.int64).reshape(-1) * ws.astype(np.int64).reshape(-1)
    if p.size % 2:
        p = np.append(p, 0)
    return int(np.clip(p[0::2] + p[1::2], *I16).sum())


def saturated_acc(x: np.ndarray, w: np.ndarray, zx: int, zw: int) -> int:
    """The accumulator ``vpmaddubsw`` gives for raw codes ``x`` (u8 or s8) and ``w`` (s8):
    the saturated pair sum of the raw products, zero-point corrections exact."""
    x = x.astype(np.int64).reshape(-1)
    w = w.astype(np.int64).reshape(-1)
    if x.min(initial=0) < 0:  # s8 activations: shifted to u8, as the kernel does
        x, zx = x + 128, zx + 128
    return saturated_pair_sum(x, w) - zx * int(w.sum()) - zw * int(x.sum()) + x.size * zx * zw


def _codes_range(a: np.ndarray) -> tuple[int, int]:
    return (-128, 127) if a.dtype == np.int8 else (0, 255)


@dataclass
class Causes:
    """Departure counts per layer and rule, accumulated over batches."""

    layers: dict[str, dict[str, int]] = field(default_factory=dict)
    unfused: int = 0  # departures in layers ORT did not fuse (not recomputed)

    def add_layer(self, name: str, departures: int, explained: tuple[int, int]) -> None:
        d = self.layers.setdefault(name, {"departures": 0, RULES[0]: 0, RULES[1]: 0})
        d["departures"] += departures
        d[RULES[0]] += explained[0]
        d[RULES[1]] += explained[1]

    def to_json(self) -> dict:
        tot = sum(d["departures"] for d in self.layers.values())
        ex = {r: sum(d[r] for d in self.layers.values()) for r in RULES}
        return {"departures": tot, "explained": ex, "unexplained": tot - sum(ex.values()),
                "unfused_departures": self.unfused,
                "layers": {k: v for k, v in self.layers.items() if v["departures"]}}



def describe(j: dict) -> str:
    """The text line of :meth:`Causes.to_json`: "N of M departures explained by <rule>"."""
    m = j["departures"]
    parts = [f"{n} of {m} departures explained by {r}" for r, n in j["explained"].items()]
    un = j.get("unfused_departures", 0)
    return ("causes (isolated departures of ORT's fused QLinearConv/QLinearMatMul/QGemm "
            "recomputed): " + "; ".join(parts) + f"; {j['unexplained']} unexplained"
            + (f"; {un} more in layers ORT ran unfused (DQ -> float32 op -> Q), not "
               "recomputed" if un else ""))


def _arr(vs, ort: dict, v) -> np.ndarray | None:
    if v is None:
        return None
    if v.is_const:
        return np.asarray(vs.interp.const(v))
    return None if v.name not in ort else np.asarray(ort[v.name])


def _conv_vectors(n, x: np.ndarray, w: np.ndarray, zx: int, idx: tuple) -> tuple:
    """The (kh, kw, c)-ordered input patch and weight row of output element ``idx``."""
    b, oc, oh, ow = idx
    g = int(n.attrs.get("group", 1))
    kh, kw = w.shape[2], w.shape[3]
    cin_g = w.shape[1]
    pads = list(n.attrs.get("pads", (0, 0, 0, 0)))
    st = list(n.attrs.get("strides", (1, 1)))
    dl = list(n.attrs.get("dilations", (1, 1)))
    gi = oc // (w.shape[0] // g)
    xp = np.pad(x[b, gi * cin_g:(gi + 1) * cin_g].astype(np.int64),
                ((0, 0), (pads[0], pads[2]), (pads[1], pads[3])), constant_values=zx)
    h0, w0 = oh * st[0], ow * st[1]
    patch = xp[:, h0:h0 + dl[0] * (kh - 1) + 1:dl[0], w0:w0 + dl[1] * (kw - 1) + 1:dl[1]]
    return patch.transpose(1, 2, 0).reshape(-1), w[oc].transpose(1, 2, 0).reshape(-1)


def explain(vs, ort: dict, iso: dict, causes: Causes) -> None:
    """Recompute every isolated departure of the QLinearConv/QLinearMatMul nodes of
    ``vs.exact_graph`` (ORT's codes ``ort`` vs the isolated exact ``iso``) under both rules."""
    kernel = {t.name: t.kernel for t in vs.tensors}
    for n in vs.exact_graph.nodes:
        if n.op not in ("QLinearConv", "QLinearMatMul") or len(n.outputs) != 1:
            continue
        name = n.output.name
        if name not in ort or name not in iso:
            continue
        got, want = np.asarray(ort[name]), np.asarray(iso[name])
        diff = np.argwhere(got.astype(np.int64) != want.astype(np.int64))
        if kernel.get(name) not in FUSED:  # ORT ran DQ -> float32 op -> Q: no integer rule
            causes.unfused += len(diff)
            continue
        if not len(diff):
            causes.add_layer(name, 0, (0, 0))
            continue
        a = [_arr(vs, ort, v) for v in n.inputs] + [None] * 9
        x, sx, zx, w, sw, zw, sy, zy, bias = a[:9]
        if x is None or w is None or any(p is None for p in (sx, sw, sy)):
            causes.add_layer(name, len(diff), (0, 0))
            continue
        qmin, qmax = _codes_range(got)
        zx_i = int(np.asarray(zx if zx is not None else 0).reshape(-1)[0])
        zy_i = int(np.asarray(zy if zy is not None else 0).reshape(-1)[0])
        sw_v = np.asarray(sw, np.float32).reshape(-1)
        zw_v = np.asarray(zw if zw is not None else 0).astype(np.int64).reshape(-1)
        f32 = sat = 0
        for idx in map(tuple, diff):
            if n.op == "QLinearConv":
                oc = idx[1]
                xv, wv = _conv_vectors(n, x, w, zx_i, idx)
            else:
                oc = idx[-1]
                xv, wv = x[idx[:-1]].astype(np.int64), w[..., :, oc].astype(np.int64)
            s_w = sw_v[oc if sw_v.size > 1 else 0]
            z_w = int(zw_v[oc if zw_v.size > 1 else 0])
            b = 0 if bias is None else int(np.asarray(bias).reshape(-1)[oc])
            exact = int(((xv - zx_i) * (wv.astype(np.int64) - z_w)).sum()) + b
            code = int(got[idx])
            if float32_requant(exact, sx, s_w, sy, zy_i, qmin, qmax) == code:
                f32 += 1
            elif float32_requant(saturated_acc(xv, wv, zx_i, z_w) + b, sx, s_w, sy, zy_i,
                                 qmin, qmax) == code:
                sat += 1
        causes.add_layer(name, len(diff), (f32, sat))
