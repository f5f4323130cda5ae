"""The PySR engine: SymbolicRegression.jl through PySR, used only where Julia is already installed.

PySR (Cranmer, arXiv 2305.01582) runs in Julia through juliacall, whose package manager would
otherwise download Julia and its packages on first import. mld never lets that happen: it looks
for an existing ``julia`` first and, when there is none, stops with one line before importing
pysr or juliacall; when there is one, it points juliapkg at it (``PYTHON_JULIAPKG_EXE``) and
forbids every download (``PYTHON_JULIAPKG_OFFLINE=yes``), so missing Julia packages are an error,
not an install.

The force is fitted directly: a template expression u(r) whose derivative D(u, 1)(r) must match
du/dr = −f (PySR ≥ 1.3, differential operators of SymbolicRegression.jl), so the law found is an
energy whose force is the one the data show.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil

import numpy as np
import pandas as pd

from discover import symbolic
from discover.engines import EngineError

JULIA_ENV_VARIABLES = ("PYTHON_JULIAPKG_EXE", "PYTHON_JULIACALL_EXE")
DEFAULTS = {
    "binary_operators": ["+", "-", "*", "/", "^"],
    "unary_operators": ["exp"],
    "maxsize": 20,
    "niterations": 100,
    "populations": 8,
}


def find_julia() -> str | None:
    """Path of an installed Julia executable, from the juliapkg variables or PATH; None if there is none."""
    for variable in JULIA_ENV_VARIABLES:
        path = os.environ.get(variable)
        if path and os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return shutil.which("julia")


def pysr_installed() -> bool:
    return importlib.util.find_spec("pysr") is not None


def _import_pysr():
    julia = find_julia()
    if julia is None:
        raise EngineError(
            "engine pysr: no Julia installation found (no julia on PATH, PYTHON_JULIAPKG_EXE unset); "
            "mld never downloads Julia: install it, or use --engine operon"
        )
    if not pysr_installed():
        raise EngineError("engine pysr: the pysr package is not installed (pip install pysr), or use --engine operon")
    os.environ["PYTHON_JULIAPKG_EXE"] = julia
    os.environ["PYTHON_JULIAPKG_OFFLINE"] = "yes"
    try:
        import pysr
    except Exception as exc:  # noqa: BLE001 - juliacall/juliapkg fail in many ways offline
        raise EngineError(f"engine pysr: cannot start PySR with {julia} offline ({type(exc).__name__}: {exc})") from None
    return pysr


def _equation_text(equation: str) -> str:
    """A PySR template equation ('u = (#1 ^ -6.0) * 2.1') in mld's grammar ('(r ** -6.0) * 2.1')."""
    text = equation.split("=", 1)[1] if re.match(r"^\s*u\s*=", equation) else equation
    return text.replace("#1", "r").replace("^", "**")


def search(r: np.ndarray, u: np.ndarray, force: np.ndarray, *, seed: int = 0, budget_s: float = 60.0,
           **options) -> pd.DataFrame:
    """Pareto front of u(r) fitted through its derivative to −force; same columns as the Operon engine."""
    from discover.model import ModelError, parse_expression

    pysr = _import_pysr()
    spec = pysr.TemplateExpressionSpec(expressions=["u"], variable_names=["r"], combine="D(u, 1)(r)")
    regressor = pysr.PySRRegressor(
        expression_spec=spec,
        random_state=int(seed),
        deterministic=True,
        parallelism="serial",
        timeout_in_seconds=float(budget_s),
        progress=False,
        verbosity=0,
        **{**DEFAULTS, **options},
    )
    regressor.fit(np.asarray(r, dtype=float)[:, None], -np.asarray(force, dtype=float))
    rows = []
    for _, row in regressor.equations_.iterrows():
        try:
            expr = symbolic.tidy(parse_expression(_equation_text(str(row["equation"])), "pysr equation"))
        except ModelError:
            continue
        if expr.has(symbolic.R):
            rows.append({"engine": "pysr", "complexity": symbolic.complexity(expr), "loss": float(row["loss"]),
                         "expression": symbolic.to_text(expr)})
    front = pd.DataFrame(rows, columns=["engine", "complexity", "loss", "expression"])
    return front.drop_duplicates("expression").sort_values(["complexity", "loss"]).reset_index(drop=True)
