"""The Operon engine: multi-objective genetic programming (accuracy vs length) with pyoperon.

Operon (Burlacu, Kronberger & Kommenda, GECCO 2020) evolves trees with NSGA-II on the objectives
(R², length) and tunes every constant by Levenberg–Marquardt inside the search. Its front is read
node by node into sympy (never through its printed text), with inputs X1 = r and X2 = 1/r.

Settings that recover laws like Lennard-Jones exactly: the ``pow`` primitive with tunable exponents
and the 1/r input, a few local-optimiser iterations per individual (Operon's default is none), and
a fixed number of generations (the time budget is only a cap), so a seed gives one result.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import sympy

from discover import symbolic

DEFAULT_SYMBOLS = "add,sub,mul,pow,exp,constant,variable"
DEFAULTS = {
    "allowed_symbols": DEFAULT_SYMBOLS,
    "population_size": 300,
    "generations": 100,
    "max_length": 20,
    "optimizer_iterations": 10,
    "n_threads": 1,
}


def _unary(function):
    return lambda args: function(args[0])


def _node_builders():
    import pyoperon as op

    t = op.NodeType
    return {
        t.Add: lambda args: sympy.Add(*args),
        t.Mul: lambda args: sympy.Mul(*args),
        t.Sub: lambda args: args[0] - sympy.Add(*args[1:]) if len(args) > 1 else -args[0],
        t.Div: lambda args: args[0] / sympy.Mul(*args[1:]) if len(args) > 1 else 1 / args[0],
        t.Pow: lambda args: sympy.Pow(args[0], args[1]),
        t.Exp: _unary(sympy.exp),
        t.Log: _unary(sympy.log),
        t.Sqrt: _unary(sympy.sqrt),
        t.Square: lambda args: args[0] ** 2,
        t.Tanh: _unary(sympy.tanh),
        t.Sin: _unary(sympy.sin),
        t.Cos: _unary(sympy.cos),
        t.Abs: _unary(sympy.Abs),
    }


def tree_to_sympy(tree, variables: dict) -> sympy.Expr:
    """An Operon tree as a sympy expression; ``variables`` maps variable hash -> sympy symbol.

    Nodes are stored in postfix order and a node's first child is the one just before it, so with
    a stack the first pop is the first argument.
    """
    builders = _node_builders()
    stack: list[sympy.Expr] = []
    for node in tree.Nodes:
        if node.IsConstant:
            stack.append(sympy.Float(float(node.Value)))
        elif node.IsVariable:
            stack.append(sympy.Float(float(node.Value)) * variables[node.HashValue])
        else:
            args = [stack.pop() for _ in range(node.Arity)]
            if node.Type not in builders:
                raise ValueError(f"Operon node {node.Name!r} has no sympy form")
            stack.append(builders[node.Type](args))
    if len(stack) != 1:
        raise ValueError("malformed Operon tree")
    return stack[0]


def search(r: np.ndarray, u: np.ndarray, *, seed: int = 0, budget_s: float = 60.0, **options) -> pd.DataFrame:
    """Pareto front of u(r) with columns engine, complexity, loss (mse on the samples, eV²), expression."""
    from pyoperon.sklearn import SymbolicRegressor

    settings = {**DEFAULTS, **options}
    regressor = SymbolicRegressor(
        objectives=["r2", "length"],
        random_state=int(seed),
        max_time=max(1, int(budget_s)),
        max_evaluations=10**9,
        **settings,
    )
    x = np.column_stack([r, 1.0 / r])
    regressor.fit(x, u)
    hashes = sorted(regressor.variables_, key=lambda h: int(regressor.variables_[h].lstrip("X")))
    variables = dict(zip(hashes, (symbolic.R, symbolic.INV_R)))
    rows = []
    for solution in regressor.pareto_front_:
        try:
            expr = symbolic.tidy(symbolic.from_engine_variables(tree_to_sympy(solution["tree"], variables)))
        except (ValueError, TypeError):
            continue
        if not expr.has(symbolic.R):
            continue
        rows.append({
            "engine": "operon",
            "complexity": symbolic.complexity(expr),
            "loss": float(solution["mean_squared_error"]),
            "expression": symbolic.to_text(expr),
        })
    front = pd.DataFrame(rows, columns=["engine", "complexity", "loss", "expression"])
    return front.drop_duplicates("expression").sort_values(["complexity", "loss"]).reset_index(drop=True)
