"""``fold``: fold BatchNormalization into the preceding Conv / ConvTranspose / Gemm.

Inference BN is an affine map per channel c:  ``y = s_c * (x - mu_c) + beta_c`` with
``s_c = gamma_c / sqrt(var_c + eps)`` (eps defaults to 1e-5). When ``x = W * a + b`` is the
output of a linear op, ``y = (s * W) * a + (s * (b - mu) + beta)``, so

    W' = W * s   (broadcast on the output-channel axis)
    b' = (b - mu) * s + beta          (b = 0 when the op has no bias)

Output-channel axis: Conv weight [Cout, Cin/g, k...] -> axis 0. ConvTranspose weight
[Cin, Cout/g, k...] -> channel ``g*(Cout/g) + j`` scales ``W[g*Cin/g : (g+1)*Cin/g, j]``.
Gemm ``Y = alpha*A*B' + beta*C``: B' is [N, K] when transB=1 (axis 0), else [K, N] (axis 1);
the new bias is ``C' = beta*C*s + (beta_bn - s*mu)`` with beta set to 1.

Computed in float64 and stored in the weight's dtype. Declines (counted in stats, explained
in notes): weight/bias/BN parameters not constant, weight or bias shared with another node,
the linear op's output used elsewhere, BN in training mode, BN not after a foldable op,
Gemm with a full [M, N] bias.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qcompile.ir import RANGE, Graph, Node
from qcompile.passes import checks
from qcompile.passes.base import Pass, PassContext, PassResult, Stats


@dataclass(frozen=True)
class FoldBatchNorm(Pass):
    """Fold BatchNormalization into the preceding Conv, ConvTranspose or Gemm."""

    name = "fold"
    summary = "fold BatchNormalization into the preceding Conv/ConvTranspose/Gemm"
    ensures = (checks.bn_folded,)

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        st = Stats()
        modified = False
        for bn in graph.nodes:
            if bn.op != "BatchNormalization" or bn.domain != "":
                continue
            reason = checks.fold_blocker(bn)
            if reason is not None:
                st.skip(reason[0], f"BatchNormalization {bn.name!r}", reason[1])
                continue
            _rewrite(graph, bn)
            st.count("folded")
            modified = True
        return st.result(graph, modified)


def _rewrite(graph: Graph, bn: Node) -> None:
    x = bn.inputs[0]
    prod = x.producer  # type: ignore[union-attr]
    gamma, beta, mu, var = (np.asarray(v.const, np.float64) for v in bn.inputs[1:5])  # type: ignore
    s = gamma / np.sqrt(var + float(bn.attrs.get("epsilon", 1e-5)))
    w = prod.inputs[1]
    w64 = np.asarray(w.const, np.float64)
    b_val = prod.inputs[2] if len(prod.inputs) > 2 else None
    if prod.op == "Conv":
        w_new = w64 * s.reshape((-1,) + (1,) * (w64.ndim - 1))
    elif prod.op == "ConvTranspose":
        g = int(prod.attrs.get("group", 1))
        cin, cout_g = w64.shape[0], w64.shape[1]
        grouped = w64.reshape((g, cin // g, cout_g) + w64.shape[2:])
        w_new = (grouped * s.reshape((g, 1, cout_g) + (1,) * (w64.ndim - 2))).reshape(w64.shape)
    else:  # Gemm
        w_new = w64 * (s[:, None] if prod.attrs.get("transB", 0) else s[None, :])
    if prod.op == "Gemm":
        c = 0.0 if b_val is None else np.asarray(b_val.const, np.float64).reshape(-1)
        b_new = float(prod.attrs.get("beta", 1.0)) * c * s + (beta - s * mu)
        prod.attrs["beta"] = 1.0
    else:
        b = 0.0 if b_val is None else np.asarray(b_val.const, np.float64)
        b_new = (b - mu) * s + beta
    dtype = w.const.dtype
    w.const = w_new.astype(dtype)  # exclusive to prod (checked), so updating in place is safe
    b_arr = np.asarray(b_new, np.float64).reshape(-1).astype(dtype)
    if b_val is not None:
        b_val.const = b_arr.reshape(b_val.const.shape) if b_val.const.size == b_arr.size else b_arr
        b_val.type = type(b_val.type).of(b_val.const)
    else:
        bias = graph.add_const(f"{prod.name}.bias", b_arr)
        if len(prod.inputs) > 2:  # the bias slot is there but omitted (ONNX name "")
            prod.replace_input(2, bias)
        else:
            prod.add_input(bias)
    bn_out = bn.outputs[0]
    x.type = bn_out.type
    graph.replace_value(bn_out, x)
    graph.remove(bn, drop_dead_consts=True)  # BN's constants, unless something shares them
    x.meta.pop(RANGE, None)  # the values changed: any range observed before is stale
