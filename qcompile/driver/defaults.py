"""Defaults every command resolves the same way, from what the model says about itself:
the preprocessing (:mod:`qcompile.data.recipe` holds the rule), ``--limit`` (the seeded
class-stratified draw of :func:`qcompile.data.select.draw_limit`), and the float model an int8
model was compiled from (recorded by ``qcompile run`` under :data:`SOURCE_KEY`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from qcompile.data.recipe import resolve_preprocess
from qcompile.data.select import draw_limit

__all__ = ["SOURCE_KEY", "choose_preprocess", "file_facts", "graph_facts", "limited",
           "runner_facts"]

#: metadata key: the path of the model ``qcompile run`` read (the FP32 baseline of an int8 model)
SOURCE_KEY = "qcompile.source_model"

Facts = tuple[str, dict, str | None, int | None, str | None]  # name, metadata, doc, side, dtype


def _side(shape: Any) -> int | None:
    """The fixed square spatial side of an NCHW/NHWC input shape, else None."""
    from qcompile.data.model_input import ModelInput

    if not shape:
        return None
    sp = ModelInput("x", tuple(shape)).spatial
    return sp[0] if sp and sp[0] == sp[1] else None


def graph_facts(graph: Any, name: str | None = None) -> Facts:
    from qcompile.passes._feeds import input_spec

    spec = input_spec(graph.inputs[0]) if graph.inputs else None
    shape = spec.shape if spec is not None else None
    return (name or graph.name, dict(graph.metadata),
            getattr(graph, "model_props", {}).get("doc_string"), _side(shape),
            spec.dtype if spec is not None else None)


def runner_facts(runner: Any) -> Facts:
    """Facts of an ORT ``ModelRunner`` (eval/compare)."""
    doc = runner.sess.get_modelmeta().description
    t = runner.input.type
    return (runner.path, dict(runner.metadata), doc, _side(runner.input.shape),
            "uint8" if t == "tensor(uint8)" else None)


def file_facts(path: str) -> Facts:
    """Facts of a model file, without lifting it (verify)."""
    from qcompile.backends.ort.measure import read_model

    m = read_model(path)
    inp = m.graph.input[0] if m.graph.input else None
    shape, dtype = None, None
    if inp is not None:
        dims = inp.type.tensor_type.shape.dim
        shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in dims)
        dtype = "uint8" if inp.type.tensor_type.elem_type == 2 else None
    return (str(path), {p.key: p.value for p in m.metadata_props}, m.doc_string,
            _side(shape), dtype)


def choose_preprocess(given: str | None, facts: Iterable[Facts], data: Any = None,
                      log: Callable[[str], None] = lambda m: None) -> str:
    """``--preprocess`` as given, else recorded / detected / refused (data/recipe.py)."""
    facts = list(facts)
    raw = bool(facts) and all(f[4] == "uint8" for f in facts)
    return resolve_preprocess(given, [f[:4] for f in facts], data, raw_input=raw, log=log)


def limited(ds: Any, candidates: np.ndarray, limit: int | None, seed: int = 0
            ) -> tuple[np.ndarray, dict | None]:
    """``--limit``: the seeded class-stratified draw among ``candidates`` (after the held-out
    rule), and its JSON record."""
    if limit is not None and limit < 1:
        from qcompile.errors import OptionError

        raise OptionError(f"--limit {limit}: need at least 1 image")
    return draw_limit(candidates, limit, seed, getattr(ds, "labels", None))
