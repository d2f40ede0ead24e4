"""Hostile inputs and parameter values, each classified by its outcome (issue 24's sweep).

Every case has an expectation: "work" (a legitimate input: an error is a crash), "error" (a bad value:
a result is a silent wrong answer), or either. Prints the cases that went wrong and the counts:

    OMP_NUM_THREADS=1 python benchmarks/bench_hostile_inputs.py        # about a minute
    OMP_NUM_THREADS=1 python benchmarks/bench_hostile_inputs.py -v     # every case

clear  : ValueError/TypeError (InvalidParameterError included) or NotFittedError with a message
ok     : finite results
silent : returned non-finite results, or a wrong answer caught by an oracle
crash  : any other exception
"""

import json
import math
import sys
import warnings

import numpy as np
import pandas as pd
import torch
from sklearn.datasets import make_moons
from sklearn.exceptions import NotFittedError

from sklearn_otflow import OTFlowDensity

torch.set_num_threads(1)
warnings.simplefilter("ignore")
TINY = dict(hidden_width=8, n_layers=1, n_steps=2, max_iter=6, random_state=0)
moons = make_moons(300, noise=0.05, random_state=0)[0]
fitted = OTFlowDensity(**TINY).fit(moons)
results = []


def classify(fn, oracle=None, expect="either"):
    """expect: 'work' (an error is a crash: the input is legitimate), 'error' (a result is silent)."""
    try:
        out = fn()
    except (ValueError, TypeError, NotFittedError) as exc:
        if expect == "work":
            return "crash", f"refused a legitimate input: {type(exc).__name__}: {str(exc)[:90]}"
        return "clear" if str(exc) else "crash", f"{type(exc).__name__}: {str(exc)[:90]}"
    except Exception as exc:  # noqa: BLE001
        return "crash", f"{type(exc).__name__}: {str(exc)[:90]}"
    arrays = out if isinstance(out, tuple) else (out,)
    for a in arrays:
        a = np.asarray(a, dtype=float)
        if not np.isfinite(a).all():
            return "silent", f"non-finite output {a.ravel()[:3]}"
    if expect == "error":
        return "silent", "accepted a bad value"
    if oracle is not None:
        msg = oracle(out)
        if msg:
            return "silent", msg
    return "ok", ""


def fit_and_use(X):
    est = OTFlowDensity(**TINY).fit(X)
    return est.score_samples(X), est.sample(5, random_state=0), est.transform(X)


rng = np.random.default_rng(0)
base = rng.normal(size=(50, 2))
inputs = {
    "nan": np.array([[0.0, np.nan], [1, 2], [3, 4]]),
    "inf": np.array([[0.0, np.inf], [1, 2], [3, 4]]),
    "-inf": np.array([[0.0, -np.inf], [1, 2], [3, 4]]),
    "complex": np.array([[1 + 1j, 2.0], [3.0, 4.0]]),
    "strings": np.array([["a", "b"], ["c", "d"]], dtype=object),
    "numeric strings": np.array([["1", "2"], ["3", "4"], ["5", "7"]]),
    "empty": np.empty((0, 2)),
    "no features": np.empty((5, 0)),
    "one row": np.array([[1.0, 2.0]]),
    "1-d": np.arange(5.0),
    "3-d": np.zeros((3, 2, 2)),
    "scalar": np.float64(3.0),
    "list of lists": [[0.0, 1.0], [1.0, 0.5], [2.0, 3.0], [1.5, 0.2]],
    "ragged": [[0.0, 1.0], [1.0]],
    "None": None,
    "sparse": __import__("scipy.sparse", fromlist=["csr_matrix"]).csr_matrix(base),
    "bool": base > 0,
    "int8": (base * 10).astype(np.int8),
    "uint64": np.abs(base * 100).astype(np.uint64),
    "float16": base.astype(np.float16),
    "float32": base.astype(np.float32),
    "longdouble": base.astype(np.longdouble),
    "object floats": base.astype(object),
    "X[::-1]": base[::-1],
    "np.flip": np.flip(base, 0),
    "X[:, ::-1]": base[:, ::-1],
    "fortran": np.asfortranarray(base),
    "strided": np.repeat(base, 2, axis=0)[::2],
    "read-only": np.require(base, requirements="C").copy(),
    "df": pd.DataFrame(base, columns=["a", "b"]),
    "df reversed": pd.DataFrame(base, columns=["a", "b"]).iloc[::-1],
    "df int columns": pd.DataFrame(base),
    "df mixed names": pd.DataFrame(base, columns=["a", 1]),
    "df category": pd.DataFrame({"a": pd.Categorical(["x", "y"] * 25), "b": base[:, 1]}),
    "df nullable NA": pd.DataFrame(
        {"a": pd.array([1.0, None] + [0.5] * 48, dtype="Float64"), "b": base[:, 1]}
    ),
    "df Int64": pd.DataFrame({"a": pd.array(np.arange(50), dtype="Int64"), "b": base[:, 1]}),
    "series": pd.Series(base[:, 0]),
    "tensor": torch.tensor(base),
    "1e-15": base * 1e-15,
    "1e-300": base * 1e-300,
    "1e15": base * 1e15,
    "1e154": base * 1e154,
    "1e200": base * 1e200,
    "1e300": base * 1e300,
    "offset 1e8": base + 1e8,
    "offset 1e300": base + 1e300,
    "constant": np.ones((50, 2)),
    "one constant column": np.column_stack([base[:, 0], np.full(50, 3.0)]),
    "two distinct rows": np.array([[0.0, 0.0], [1.0, 1.0]] * 10),
    "duplicates": np.repeat(base[:5], 10, axis=0),
    "two rows": base[:2],
    "d=1": base[:, :1],
    "d=10": rng.normal(size=(40, 10)),
    "huge range": np.column_stack([base[:, 0] * 1e-10, base[:, 1] * 1e10]),
    "subnormal": base * 1e-310,
    "max float": np.column_stack([np.full(50, 1.7e308), base[:, 1]]),
    "+-max float": np.array([[1.7e308, 0.0], [-1.7e308, 1.0], [0.0, 2.0]]),
}
read_only = base.copy()
read_only.flags.writeable = False
inputs["read-only"] = read_only

# every memory layout and container is legitimate, at fit and at scoring
LAYOUTS = {
    "X[::-1]",
    "np.flip",
    "X[:, ::-1]",
    "fortran",
    "strided",
    "read-only",
    "df",
    "df reversed",
    "df int columns",
    "list of lists",
}
MUST_WORK = LAYOUTS | {
    "1e-15",
    "1e-300",
    "1e15",
    "1e154",
    "1e200",
    "1e300",
    "bool",
    "constant",
    "d=1",
    "d=10",
    "df Int64",
    "duplicates",
    "float16",
    "float32",
    "huge range",
    "int8",
    "longdouble",
    "numeric strings",
    "object floats",
    "offset 1e300",
    "offset 1e8",
    "one constant column",
    "tensor",
    "two distinct rows",
    "two rows",
    "uint64",
}
MUST_FAIL = {
    "nan",
    "inf",
    "-inf",
    "complex",
    "strings",
    "empty",
    "no features",
    "one row",
    "1-d",
    "3-d",
    "scalar",
    "ragged",
    "None",
    "df nullable NA",
    "series",
    "df category",
}
for name, X in inputs.items():
    expect = "work" if name in MUST_WORK else "error" if name in MUST_FAIL else "either"
    results.append(("fit " + name,) + classify(lambda X=X: fit_and_use(X), expect=expect))
    results.append(
        ("partial_fit " + name,)
        + classify(lambda X=X: OTFlowDensity(**TINY).partial_fit(X).score_samples(X), expect=expect)
    )

# scoring a fitted 2-feature model
score_inputs = {k: v for k, v in inputs.items()}
score_inputs.update(
    {
        "far 1e10": np.array([[1e10, 0.0]]),
        "far 1e100": np.array([[1e100, 0.0]]),
        "far 1e160": np.array([[1e160, 0.0]]),
        "far 1e300": np.array([[1e300, 0.0]]),
        "one row": np.array([[0.5, 0.2]]),
        "wrong names": pd.DataFrame(moons[:5], columns=["p", "q"]),
    }
)
SCORE_WORK = LAYOUTS | {
    "1e-15",
    "bool",
    "constant",
    "duplicates",
    "far 1e10",
    "far 1e100",
    "float16",
    "float32",
    "int8",
    "object floats",
    "one row",
    "two rows",
}
for name, X in score_inputs.items():
    for method in ("score_samples", "transform", "inverse_transform", "flow_diagnostics"):
        expect = "work" if name in SCORE_WORK else "error" if name in MUST_FAIL else "either"
        if method == "inverse_transform" and name.startswith("far"):
            expect = "either"
        results.append(
            (f"{method} {name}",)
            + classify(
                lambda X=X, method=method: (lambda r: tuple(r.values()) if isinstance(r, dict) else r)(
                    getattr(fitted, method)(X)
                ),
                expect=expect,
            )
        )
for n in [0, -1, 2.5, True, np.True_, "3", None, np.int64(3), 10**6 // 1000]:
    expect = "work" if n is not True and isinstance(n, (int, np.integer)) and n > 0 else "error"
    results.append(
        (f"sample({n!r})",) + classify(lambda n=n: fitted.sample(n, random_state=0), expect=expect)
    )

# parameter values
params = {
    "alpha": [0, -1, True, math.inf, math.nan, "1", None, 1e300, 1e-300],
    "alpha_hjb": [-1, True, math.inf, math.nan, None],
    "hidden_width": [0, True, 2.5, "wide", None, -3],
    "n_layers": [0, True, 1.5, None],
    "rank": [0, True, None, 1000],
    "n_steps": [0, True, 1.5, None],
    "n_steps_eval": [0, True, 1.5],
    "max_iter": [0, True, 1.5, None],
    "max_time": [0, -1, True, math.inf, math.nan, 1e-9],
    "n_init": [0, True, 1.5],
    "batch_size": [0, True, 1.5, "big", 10**6],
    "learning_rate": [0, True, math.inf, math.nan, 1e6, "fast"],
    "weight_decay": [-1, True, math.inf, "strong"],
    "ema_decay": [1.0, -0.1, True, math.nan],
    "early_stopping": ["yes", 2, None],
    "validation_fraction": [0, 1, 0.999, True, math.nan],
    "n_iter_no_change": [0, True, 1.5],
    "standardize": ["yes", None],
    "dtype": ["float16", np.float32, None],
    "trace_precision": ["fast", None],
    "callbacks": [[1], "cb", (), [None]],
    "warm_start": ["yes", None],
    "random_state": [-1, 2**40, "seed", 1.5, np.random.default_rng(0)],
    "device": ["meta", "gpu", "cuda", "cpu:x", "mps", 3],
    "verbose": [-1, "loud", 1.5],
}
for name, values in params.items():
    for v in values:

        def run(name=name, v=v):
            est = OTFlowDensity(**{**TINY, name: v}).fit(moons)
            return est.score_samples(moons)

        legit = {
            ("alpha", 1e-300),
            ("rank", 1000),
            ("batch_size", 10**6),
            ("max_time", 1e-9),
            ("learning_rate", 1e6),
            ("alpha", 1e300),
            ("validation_fraction", 0.999),
            ("dtype", np.float32),
            ("random_state", 2**40),
        }
        legit = [(n, repr(x)) for n, x in legit]
        expect = "either" if (name, repr(v)) in legit or (name, v) == ("device", "cuda") else "error"
        results.append((f"param {name}={v!r}",) + classify(run, expect=expect))

counts = {}
for _, kind, _ in results:
    counts[kind] = counts.get(kind, 0) + 1
for name, kind, msg in results:
    if kind in ("silent", "crash") or "-v" in sys.argv:
        print(f"{kind:7s} {name}: {msg}")
print(json.dumps(counts), len(results))
