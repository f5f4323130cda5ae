"""The library engine: classic physically motivated pair-law families, fitted rather than searched.

Genetic programming rediscovers simple laws but on real data its fronts grow long and arbitrary
(nested exponentials of 1/r, vestigial terms). Interatomic potentials have a short list of classic
forms, and most of them are sums of a few terms, each an amplitude times a fixed shape:

=========================  ==========================================  ================================
term                       shape s(r)                                  origin
=========================  ==========================================  ================================
``exp``                    exp(−b r)                                   Born & Mayer (1932) repulsion
``power``                  r^−n                                        inverse-power (soft-sphere) law
``yukawa``                 exp(−b r)/r                                 screened Coulomb (Yukawa 1935)
``inv1``/``inv6``/``inv12``  1/r, r^−6, r^−12                          Coulomb, dispersion, LJ repulsion
``gauss``                  exp(−d (r − r₀)²)                           a localised well or bump
=========================  ==========================================  ================================

Families (``FAMILIES``) combine them: Lennard-Jones 12-6 (Jones 1924), Buckingham exp-6 (Buckingham
1938), a Morse-like double exponential (Morse 1929, with its two amplitudes and rates left free),
and sums with a Coulomb-like 1/r tail or a Gaussian, which can carry what a monotone law cannot: a
bonded geometry's preferred distance (the intramolecular H–H distance that encodes the H–O–H angle).

Each family is fitted to the force −du/dr on the engine's weighted samples, the quantity the
refit will later match (an energy offset is invisible to forces). The amplitudes enter linearly,
so every point of a small grid over the shape constants (rates, powers, Gaussian centres and
widths) is scored by one linear least squares; the best few grid points start a nonlinear
least-squares fit of all constants (variable projection in its simplest form: Golub & Pereyra,
SIAM J. Numer. Anal. 10, 413 (1973)). No randomness: a curve gives one front.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import pandas as pd
import sympy
from scipy.optimize import least_squares

from discover import symbolic

R = symbolic.R
RATE_GRID = (0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 9.0)
POWER_GRID = (1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 10.0, 12.0)
GAUSS_WIDTH_GRID = (3.0, 10.0, 30.0, 100.0)  # d in Å⁻²: widths 1/sqrt(2d) of 0.4, 0.22, 0.13, 0.07 Å
GAUSS_CENTRES = 12  # Gaussian centres tried, at evenly spaced quantiles of the samples
STARTS = 5  # best grid points refined by nonlinear least squares, per family
RATE_BOUNDS = (0.1, 30.0)  # Å⁻¹: decaying terms only; a slower one is a constant plus a linear term on the range
POWER_BOUNDS = (0.5, 18.0)
GAUSS_WIDTH_BOUNDS = (0.5, 1000.0)  # Å⁻²
# terms whose contributions exceed the fitted force this many times cancel each other: two nearly
# equal rates with huge opposite amplitudes, a derivative in disguise that rounding destroys
CANCELLATION_LIMIT = 10.0


@dataclass(frozen=True)
class Term:
    """One additive term: a linear amplitude times a shape with 0–2 nonlinear constants."""

    kind: str

    @property
    def n_shape(self) -> int:
        return {"exp": 1, "power": 1, "yukawa": 1, "gauss": 2}.get(self.kind, 0)

    def shape(self, shape: tuple) -> sympy.Expr:
        """The shape as a sympy expression with the given constants (floats or symbols)."""
        if self.kind == "exp":
            return sympy.exp(-shape[0] * R)
        if self.kind == "power":
            return R ** (-shape[0])
        if self.kind == "yukawa":
            return sympy.exp(-shape[0] * R) / R
        if self.kind == "gauss":
            return sympy.exp(-shape[0] * (R - shape[1]) ** 2)
        return R ** -{"inv1": 1, "inv6": 6, "inv12": 12}[self.kind]

    def shape_derivative(self, r: np.ndarray, shape: tuple) -> np.ndarray:
        """d(shape)/dr on the samples, in numpy."""
        if self.kind == "exp":
            return -shape[0] * np.exp(-shape[0] * r)
        if self.kind == "power":
            return -shape[0] * r ** (-shape[0] - 1.0)
        if self.kind == "yukawa":
            return -np.exp(-shape[0] * r) * (shape[0] * r + 1.0) / r**2
        if self.kind == "gauss":
            return -2.0 * shape[0] * (r - shape[1]) * np.exp(-shape[0] * (r - shape[1]) ** 2)
        n = {"inv1": 1, "inv6": 6, "inv12": 12}[self.kind]
        return -n * r ** (-n - 1.0)

    def bounds(self, r: np.ndarray) -> list[tuple]:
        """(low, high) of each shape constant."""
        if self.kind in ("exp", "yukawa"):
            return [RATE_BOUNDS]
        if self.kind == "power":
            return [POWER_BOUNDS]
        if self.kind == "gauss":
            return [GAUSS_WIDTH_BOUNDS, (float(r.min()) - 0.5, float(r.max()))]
        return []

    def shape_grid(self, r: np.ndarray) -> list[tuple]:
        if self.kind in ("exp", "yukawa"):
            return [(b,) for b in RATE_GRID]
        if self.kind == "power":
            return [(n,) for n in POWER_GRID]
        if self.kind == "gauss":
            centres = np.quantile(r, (np.arange(GAUSS_CENTRES) + 0.5) / GAUSS_CENTRES)
            return [(d, float(c)) for d in GAUSS_WIDTH_GRID for c in centres]
        return [()]


# name -> terms; every family is a sum of amplitude × shape
FAMILIES = {
    "inverse power": ("power",),
    "Born-Mayer exponential": ("exp",),
    "Yukawa": ("yukawa",),
    "Lennard-Jones 12-6": ("inv12", "inv6"),
    "Buckingham exp-6": ("exp", "inv6"),
    "exponential + inverse power": ("exp", "power"),
    "Morse-like double exponential": ("exp", "exp"),
    "double exponential + 1/r": ("exp", "exp", "inv1"),
    "triple exponential": ("exp", "exp", "exp"),
    "exponential + Gaussian": ("exp", "gauss"),
    "inverse power + Gaussian": ("power", "gauss"),
    "double exponential + Gaussian": ("exp", "exp", "gauss"),
}


def _design(terms, r: np.ndarray, shapes) -> np.ndarray:
    """(samples, terms): d(shape)/dr of each term; non-finite where a trial shape overflows."""
    with np.errstate(all="ignore"):
        return np.column_stack([term.shape_derivative(r, shape) for term, shape in zip(terms, shapes)])


def _linear_amplitudes(design: np.ndarray, du: np.ndarray) -> tuple[np.ndarray, float]:
    with np.errstate(all="ignore"):
        if not np.all(np.isfinite(design)):
            return np.zeros(design.shape[1]), np.inf
        amplitudes, *_ = np.linalg.lstsq(design, du, rcond=None)
        fitted = design @ amplitudes
        largest = np.max(np.linalg.norm(design * amplitudes, axis=0))
    if largest > CANCELLATION_LIMIT * np.linalg.norm(fitted):
        return amplitudes, np.inf
    return amplitudes, float(np.mean((fitted - du) ** 2))


def fit_family(kinds: tuple, r: np.ndarray, force: np.ndarray, seeds=(), starts: int = STARTS
               ) -> tuple[sympy.Expr, float, list[tuple]]:
    """Best fit of one family to the force samples.

    ``seeds`` are shape constants of fitted sub-families, one shape per term with ``None`` where the
    sub-family lacks the term; each is completed by the grid of the missing term, so a family is
    never fitted worse than a family it contains. Returns (u(r) as sympy, mean squared force error
    (eV/Å)², fitted shape constants per term).
    """
    terms = [Term(kind) for kind in kinds]
    du = -np.asarray(force, dtype=float)
    grids = [term.shape_grid(r) for term in terms]
    candidates = list(itertools.product(*grids))
    for seed in seeds:
        candidates += itertools.product(*([shape] if shape is not None else grid for shape, grid in zip(seed, grids)))
    scored = []
    for shapes in candidates:
        _, mse = _linear_amplitudes(_design(terms, r, shapes), du)
        if np.isfinite(mse):
            scored.append((mse, np.array([c for shape in shapes for c in shape], dtype=float)))
    scored.sort(key=lambda item: item[0])

    def shapes_of(x):
        rest, shapes = list(x), []
        for term in terms:
            shapes.append(tuple(rest[:term.n_shape]))
            rest = rest[term.n_shape:]
        return shapes

    def residual(x):
        # variable projection: the amplitudes are the linear least-squares solution for these shapes
        design = _design(terms, r, shapes_of(x))
        amplitudes, mse = _linear_amplitudes(design, du)
        out = design @ amplitudes - du if np.isfinite(mse) else np.full_like(du, 1e3)
        return np.where(np.isfinite(out), out, 1e3)

    if not scored:
        return sympy.Integer(0), np.inf, []
    best_mse, best_x = scored[0]
    limits = np.array([b for term in terms for b in term.bounds(r)], dtype=float).reshape(-1, 2)
    low, high = limits[:, 0], limits[:, 1]
    if len(best_x):  # with no shape constants the linear solution is already the optimum
        for _, x0 in scored[:starts]:
            try:
                x = least_squares(residual, np.clip(x0, low, high), bounds=(low, high), method="trf", x_scale="jac",
                                  ftol=1e-12, xtol=1e-12, max_nfev=200 * len(x0)).x
            except (ValueError, np.linalg.LinAlgError):
                continue
            mse = float(np.mean(residual(x) ** 2))
            if mse < best_mse:
                best_mse, best_x = mse, x
    shapes = shapes_of(best_x)
    amplitudes, _ = _linear_amplitudes(_design(terms, r, shapes), du)
    expr = sympy.Add(*(sympy.Float(float(a)) * term.shape(tuple(sympy.Float(float(c)) for c in shape))
                       for a, term, shape in zip(amplitudes, terms, shapes)))
    return expr, best_mse, [tuple(float(c) for c in shape) for shape in shapes]


def _sub_family_seeds(kinds: tuple, fitted: dict) -> list:
    """Shapes of every fitted family that is ``kinds`` less one term, with ``None`` in its place."""
    seeds = []
    for k in range(len(kinds)):
        sub = kinds[:k] + kinds[k + 1:]
        if sub in fitted:
            shapes = list(fitted[sub])
            seeds.append(shapes[:k] + [None] + shapes[k:])
    return seeds


def search(r: np.ndarray, force: np.ndarray, families: dict | None = None) -> pd.DataFrame:
    """Every family fitted to the force samples; columns engine, complexity, loss (force mse), expression."""
    rows, fitted = [], {}
    # fewer terms first, so that every family can start from the families it contains
    for name, kinds in sorted((families or FAMILIES).items(), key=lambda item: len(item[1])):
        kinds = tuple(kinds)
        expr, mse, shapes = fit_family(kinds, np.asarray(r, dtype=float), force, _sub_family_seeds(kinds, fitted))
        if not np.isfinite(mse) or not expr.has(R):
            continue
        fitted[kinds] = shapes
        rows.append({"engine": "library", "family": name, "complexity": symbolic.complexity(expr), "loss": mse,
                     "expression": symbolic.to_text(expr)})
    front = pd.DataFrame(rows, columns=["engine", "family", "complexity", "loss", "expression"])
    return front.drop_duplicates("expression").sort_values(["complexity", "loss"]).reset_index(drop=True)
