"""Refit and selection: every candidate law judged by the forces it gives, not by the curve it fits.

A search engine proposes laws u(r) for one pair type from a tabulated curve. Here each candidate

1. loses the terms the shifted-force cutoff ignores (a constant, a term linear in r);
2. has all its float constants refitted by nonlinear least squares (``scipy.optimize.least_squares``,
   analytic Jacobian from sympy) directly against the per-atom forces of a subsample of training
   frames, with the other pair types held at their force-matched tables;
3. is checked to be finite and smooth on a dense grid over its whole range [r_min, r_c], the
   unsampled gaps included: a law with a pole, NaN or runaway forces between sampled regions is
   rejected whatever its fit (Operon once returned an O–H law with a pole at 1.23 Å, between bond
   and hydrogen bond, whose forces were ~95× off);
4. is scored by its relative force error on validation frames.

Per pair type the simplest candidate within ``tolerance`` (default 3 %) of the best validation error
is chosen; the chosen laws are then refitted jointly, all pair types together, and rounded.
Every candidate's figures are kept (``pareto.csv``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import sympy
from scipy.optimize import least_squares

from discover import symbolic
from discover.force_matching import TabulatedModel
from discover.invariants import PairTable, scatter_pair_forces, species_types, stack_pair_tables
from discover.metrics import force_errors
from discover.model import Model, ModelError, PairLaw, parse_expression
from simulate.errors import MldError

DEFAULT_TOLERANCE = 0.03
DEFAULT_REFIT_FRAMES = 16
DEFAULT_VALIDATION_FRAMES = 48
DEFAULT_DIGITS = 6
CHECK_GRID_POINTS = 4000
# a law may not push harder than this many times the largest tabulated force on its range
FORCE_LIMIT_FACTOR = 10.0
NONFINITE_RESIDUAL = 1e3
# dropping a term that raises the training force residual by less than this fraction simplifies the law
PRUNE_TOLERANCE = 1e-3
MAX_CANDIDATE_COMPLEXITY = 40


class RefitError(MldError, RuntimeError):
    """No usable closed form, or inconsistent refit input."""


# --- force data --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ForceData:
    """Pairs and reference forces of some frames, split by pair type, for repeated force evaluation."""

    by_type: tuple  # PairTable per pair type, atom indices global over the frames
    reference: np.ndarray  # (n_atoms_total, 3) eV/Å
    species: np.ndarray  # (n_atoms_total,) element of each atom
    n_atoms_total: int

    def forces(self, t: int, force_over_r: np.ndarray) -> np.ndarray:
        """Per-atom forces (n_atoms_total, 3) of pair type ``t`` alone, from f/r on its pairs."""
        return scatter_pair_forces(self.by_type[t], force_over_r, self.n_atoms_total)


def _subset(pairs: PairTable, keep: np.ndarray) -> PairTable:
    return PairTable(i=pairs.i[keep], j=pairs.j[keep], r=pairs.r[keep], displacement=pairs.displacement[keep],
                     pair_type=pairs.pair_type[keep])


def force_data(positions, forces, cells, species, species_names, frames, cutoff_angstrom: float,
               typing=None) -> ForceData:
    """Pair tables (split by type) and reference forces of ``frames`` (pair types of ``typing``, if molecular)."""
    species = np.asarray(species).astype(str)
    frames = np.asarray(frames, dtype=np.int64)
    types = species_types(species, species_names)
    n_species = len(species_names)
    pairs = stack_pair_tables(positions[frames], cells[frames], types, cutoff_angstrom, n_species, typing)
    n_types = n_species * (n_species + 1) // 2 if typing is None else len(typing.pair_types)
    return ForceData(
        by_type=tuple(_subset(pairs, pairs.pair_type == t) for t in range(n_types)),
        reference=forces[frames].reshape(-1, 3),
        species=np.tile(species, len(frames)),
        n_atoms_total=len(frames) * len(species),
    )


def spread_frames(frames, n: int) -> np.ndarray:
    """At most ``n`` frames evenly spread over ``frames`` (deterministic)."""
    frames = np.asarray(frames, dtype=np.int64)
    if len(frames) <= n:
        return frames
    return frames[np.unique(np.linspace(0, len(frames) - 1, n).round().astype(np.int64))]


# --- one law, numerically ------------------------------------------------------------------------


@dataclass
class _Parameterized:
    """du/dr of a law and its gradient in the constants, as numpy functions of (r, *constants).

    ``cutoff`` is r_c of the shifted-force law, or None for a bonded law (used as it is).
    """

    template: sympy.Expr
    symbols: list
    values: np.ndarray
    derivative: object  # (r, *c) -> du/dr
    gradient: object  # (r, *c) -> [∂(du/dr)/∂c_k]
    cutoff: float | None

    @classmethod
    def of(cls, expr: sympy.Expr, cutoff: float | None) -> _Parameterized:
        template, symbols, values = symbolic.parameterize(expr)
        du = sympy.diff(template, symbolic.R)
        args = [symbolic.R, *symbols]
        derivative = sympy.lambdify(args, du, modules="numpy", cse=True)
        gradient = sympy.lambdify(args, [sympy.diff(du, c) for c in symbols], modules="numpy", cse=True)
        return cls(template, symbols, np.asarray(values, dtype=float), derivative, gradient, cutoff)

    def expression(self, values) -> sympy.Expr:
        return self.template.xreplace({s: sympy.Float(float(v)) for s, v in zip(self.symbols, values)})

    def shifted_force_over_r(self, r: np.ndarray, values) -> np.ndarray:
        """(f(r) − f(r_c))/r with f = −du/dr: the shifted-force law's f/r (f/r itself for a bonded law)."""
        with np.errstate(all="ignore"):
            du = np.broadcast_to(self.derivative(r, *values), r.shape)
            du_rc = 0.0 if self.cutoff is None else float(self.derivative(np.float64(self.cutoff), *values))
            return -(du - du_rc) / r

    def gradient_over_r(self, r: np.ndarray, values) -> np.ndarray:
        """(P, K): ∂(f_sf/r)/∂c_k on the pairs."""
        with np.errstate(all="ignore"):
            columns = [np.broadcast_to(g, r.shape) for g in self.gradient(r, *values)]
            at_rc = ([0.0] * len(columns) if self.cutoff is None
                     else [float(g) for g in self.gradient(np.float64(self.cutoff), *values)])
            return np.column_stack([-(g - g_rc) / r for g, g_rc in zip(columns, at_rc)]) if columns else np.zeros(
            (r.size, 0))


def _least_squares_forces(laws: dict, data: ForceData, fixed_forces: np.ndarray) -> tuple[dict, float]:
    """Refit the constants of ``laws`` ({t: _Parameterized}) jointly against ``data``'s forces.

    Returns ({t: fitted constants}, sum of squared force residuals in (eV/Å)²).
    """
    order = [t for t in laws if len(laws[t].values)]
    sizes = [len(laws[t].values) for t in order]
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
    zero_parameter = {t: laws[t] for t in laws if not len(laws[t].values)}
    base = fixed_forces.copy()
    for t, law in zero_parameter.items():
        base += data.forces(t, law.shifted_force_over_r(data.by_type[t].r, []))
    if not order:
        return {t: laws[t].values for t in laws}, float(np.sum((base - data.reference) ** 2))

    def split(x):
        return {t: x[offsets[k]:offsets[k + 1]] for k, t in enumerate(order)}

    def residual(x):
        total = base.copy()
        for t, values in split(x).items():
            total += data.forces(t, laws[t].shifted_force_over_r(data.by_type[t].r, values))
        out = (total - data.reference).ravel()
        return np.where(np.isfinite(out), out, NONFINITE_RESIDUAL)

    def jacobian(x):
        columns = []
        for t, values in split(x).items():
            grad = laws[t].gradient_over_r(data.by_type[t].r, values)
            for k in range(grad.shape[1]):
                columns.append(data.forces(t, grad[:, k]).ravel())
        jac = np.column_stack(columns)
        return np.where(np.isfinite(jac), jac, 0.0)

    x0 = np.concatenate([laws[t].values for t in order])
    # Levenberg–Marquardt (MINPACK): a QR per step, much cheaper here than trf's SVD of the Jacobian
    result = least_squares(residual, x0, jac=jacobian, method="lm", x_scale="jac")
    fitted = split(result.x)
    return {t: fitted.get(t, laws[t].values) for t in laws}, float(2.0 * result.cost)


# --- checks ---------------------------------------------------------------------------------------


def structural_problem(expr: sympy.Expr, max_complexity: int = MAX_CANDIDATE_COMPLEXITY) -> str:
    """'' if the form is admissible before any refit, else why not.

    Powers whose exponent depends on r ((a/r)**(b·r), c**exp(1/r), ...) fit a sampled range and then
    run away outside it; search engines with a ``pow`` primitive produce many. Over-long laws are
    neither readable nor worth their refit time.
    """
    if symbolic.complexity(expr) > max_complexity:
        return f"longer than {max_complexity} nodes"
    for power in expr.atoms(sympy.Pow):
        if power.exp.has(symbolic.R):
            return f"power with an r-dependent exponent ({symbolic.to_text(power)[:40]})"
    return ""



def check_law(expr: sympy.Expr, r_min: float, cutoff: float, force_limit: float, bonded: bool = False) -> str:
    """'' if the shifted law is finite and smooth on [r_min, r_c] (a bonded law, as it is, on [r_min, r_max]
    given as ``cutoff``), else why not.

    Checks a dense grid for non-finite values, forces beyond ``force_limit`` (eV/Å), and a sign
    change of the denominator (a pole can hide between grid points, but not its sign change).
    """
    r = np.linspace(r_min, cutoff, CHECK_GRID_POINTS)
    u = sympy.diff(expr, symbolic.R, 0)
    du = sympy.diff(u, symbolic.R)
    d2u = sympy.diff(du, symbolic.R)
    try:
        values = sympy.lambdify(symbolic.R, [u, du, d2u], modules="numpy")
        with np.errstate(all="ignore"):
            u_r, du_r, d2u_r = (np.broadcast_to(np.asarray(v, dtype=float), r.shape) for v in values(r))
    except (TypeError, ValueError, ZeroDivisionError, OverflowError):
        return "cannot be evaluated as a real function"
    for label, array in (("energy", u_r), ("force", du_r), ("force derivative", d2u_r)):
        bad = ~np.isfinite(array)
        if bad.any():
            return f"{label} not finite at r = {r[bad][0]:.3f} Å"
    du_rc = 0.0 if bonded else du_r[-1]
    worst = int(np.argmax(np.abs(du_r - du_rc)))
    if abs(du_r[worst] - du_rc) > force_limit:
        return f"force {abs(du_r[worst] - du_rc):.3g} eV/Å at r = {r[worst]:.3f} Å exceeds {force_limit:.3g}"
    denominator = sympy.denom(sympy.together(expr))
    if denominator.has(symbolic.R):
        with np.errstate(all="ignore"):
            d = np.broadcast_to(np.asarray(sympy.lambdify(symbolic.R, denominator, "numpy")(r), dtype=float),
                                r.shape)
        flips = np.flatnonzero(np.sign(d[1:]) * np.sign(d[:-1]) <= 0)
        if flips.size:
            return f"pole near r = {r[flips[0]]:.3f} Å"
    return ""


EQUILIBRIUM_TOLERANCE_ANGSTROM = 0.05


def equilibrium_angstrom(tabulated: TabulatedModel, t: int) -> float | None:
    """Where the force-matched force of bonded type t changes from push to pull (its equilibrium), if it does."""
    r = np.linspace(float(tabulated.r_min_angstrom[t]), tabulated.r_end(t), 2000)
    f = tabulated.force(t, r)
    flips = np.flatnonzero((f[:-1] > 0) & (f[1:] <= 0))
    return float(r[flips[0]]) if flips.size else None


def check_equilibrium(expr: sympy.Expr, r_eq: float | None, r_min: float, r_max: float) -> str:
    """'' if a bonded law keeps the force-matched equilibrium (within ``EQUILIBRIUM_TOLERANCE_ANGSTROM``).

    The force error of a bond law is small next to the rest of the force, so a law without the
    bond's minimum (a pure repulsion held only by the outer wall) can score well; it would put the
    equilibrium at r_max in MD. Such a law is rejected.
    """
    if r_eq is None:
        return ""
    r = np.linspace(r_min, r_max, 2000)
    with np.errstate(all="ignore"):
        f = -np.broadcast_to(np.asarray(sympy.lambdify(symbolic.R, sympy.diff(expr, symbolic.R), "numpy")(r),
                                        dtype=float), r.shape)
    flips = np.flatnonzero((f[:-1] > 0) & (f[1:] <= 0))
    if flips.size == 0 or np.min(np.abs(r[flips] - r_eq)) > EQUILIBRIUM_TOLERANCE_ANGSTROM:
        return f"no equilibrium within {EQUILIBRIUM_TOLERANCE_ANGSTROM} Å of the force-matched bond length {r_eq:.3f} Å"
    return ""


# --- the pipeline ------------------------------------------------------------------------------------


@dataclass
class ClosedFormFit:
    model: Model  # the selected laws, jointly refitted and rounded
    candidates: pd.DataFrame  # every candidate's figures (pareto.csv)
    selected: dict  # {pair name: row index in candidates}
    validation: dict  # force_errors of the final model on the validation subsample
    tabulated_validation: dict  # force_errors of the tabulated model on the same frames
    wall_time_s: float


def _validation_errors(data: ForceData, by_type_forces: list) -> dict:
    predicted = np.sum(by_type_forces, axis=0)
    return force_errors(predicted, data.reference, data.species)


def _refit_one(expr: sympy.Expr, t: int, data: ForceData, fixed: np.ndarray, cutoff: float | None):
    law = _Parameterized.of(expr, cutoff)
    values, cost = _least_squares_forces({t: law}, data, fixed)
    return law.expression(values[t]), cost


def _prune(expr: sympy.Expr, cost: float, t: int, data: ForceData, fixed: np.ndarray, cutoff: float | None):
    """Drop additive terms whose removal (after a refit) costs less than ``PRUNE_TOLERANCE`` of the fit.

    Search fronts carry vestigial terms (c/r with c → 0 after the refit); a law without them is the
    same law, simpler.
    """
    while True:
        terms = sympy.Add.make_args(expr)
        if len(terms) < 2:
            return expr, cost
        for k in range(len(terms)):
            trial = sympy.Add(*(terms[:k] + terms[k + 1:]))
            if sympy.diff(trial, symbolic.R, 1 if cutoff is None else 2) == 0:
                continue
            fitted, trial_cost = _refit_one(trial, t, data, fixed, cutoff)
            if trial_cost <= cost * (1.0 + PRUNE_TOLERANCE) + 1e-300:
                expr, cost = fitted, trial_cost
                break
        else:
            return expr, cost


def _refine(expr: sympy.Expr, t: int, data: ForceData, fixed: np.ndarray, cutoff: float | None,
            digits: int) -> sympy.Expr:
    """Refit one law's constants, prune vestigial terms, snap near-integer exponents (refitting), round."""
    fitted, cost = _refit_one(expr, t, data, fixed, cutoff)
    fitted, cost = _prune(symbolic.expand_terms(fitted), cost, t, data, fixed, cutoff)
    snapped = symbolic.round_integer_exponents(fitted)
    if snapped != fitted:
        fitted, _ = _refit_one(snapped, t, data, fixed, cutoff)
    return symbolic.round_constants(symbolic.tidy(fitted), digits)


def fit_closed_form(
    front: pd.DataFrame,
    tabulated: TabulatedModel,
    positions: np.ndarray,
    forces: np.ndarray,
    cells: np.ndarray,
    species,
    train_frames,
    validation_frames,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    n_refit_frames: int = DEFAULT_REFIT_FRAMES,
    n_validation_frames: int = DEFAULT_VALIDATION_FRAMES,
    digits: int = DEFAULT_DIGITS,
    masses_amu=None,
    provenance: dict | None = None,
    log=None,
    typing=None,
    bond_cutoff_angstrom: dict | None = None,
) -> ClosedFormFit:
    """Refit, check and score every candidate of ``front``; select per pair type; refit the choice jointly.

    ``front`` has the columns of ``engines.FRONT_COLUMNS``; ``tabulated`` is the force-matched model
    whose r_min, cutoff and core settings the closed form inherits, and which stands in for the
    other pair types while one type's candidates are judged. A molecular model passes its ``typing``
    (``invariants.PairTyping``) and ``bond_cutoff_angstrom``; its bonded laws are fitted on
    [r_min, r_max] without a cutoff shift.
    """
    started = time.perf_counter()
    say = log or (lambda message: None)
    names = list(tabulated.pair_types)
    cutoff = tabulated.cutoff_angstrom
    species_names = tabulated.species
    train = force_data(positions, forces, cells, species, species_names, spread_frames(train_frames, n_refit_frames),
                       cutoff, typing)
    valid = force_data(positions, forces, cells, species, species_names,
                       spread_frames(validation_frames, n_validation_frames), cutoff, typing)
    law_cutoff = [None if tabulated.bonded[t] else cutoff for t in range(len(names))]  # bonded: no shift
    tab_train = [train.forces(t, tabulated.force_over_r(t, train.by_type[t].r)) for t in range(len(names))]
    tab_valid = [valid.forces(t, tabulated.force_over_r(t, valid.by_type[t].r)) for t in range(len(names))]
    tabulated_validation = _validation_errors(valid, tab_valid)
    say(f"tabulated model: validation relative force error {tabulated_validation['all']['relative']:.4f}")

    rows = []
    for index, candidate in front.reset_index(drop=True).iterrows():
        name = candidate["pair_type"]
        if name not in names:
            raise RefitError(f"candidate for unknown pair type {name!r} (model has {', '.join(names)})")
        t = names.index(name)
        r_min, r_end, bonded = float(tabulated.r_min_angstrom[t]), tabulated.r_end(t), bool(tabulated.bonded[t])
        grid = np.linspace(r_min, r_end, 400)
        force_limit = FORCE_LIMIT_FACTOR * float(np.abs(tabulated.force(t, grid)).max()) + 1.0
        row = {"pair_type": name, "engine": candidate.get("engine", ""), "family": candidate.get("family", ""),
               "search_complexity": candidate["complexity"],
               "search_loss": candidate["loss"], "search_expression": candidate["expression"]}
        fixed_train = np.sum([f for s, f in enumerate(tab_train) if s != t], axis=0)
        fixed_valid = np.sum([f for s, f in enumerate(tab_valid) if s != t], axis=0)
        try:
            expr = symbolic.drop_shift_invariant_terms(parse_expression(candidate["expression"], f"candidate {index}"),
                                                       bonded)
            if not expr.has(symbolic.R):
                raise ValueError("no force: the law is constant" + ("" if bonded else " or linear in r"))
            reason = structural_problem(expr)
            if not reason:
                expr = _refine(expr, t, train, fixed_train, law_cutoff[t], digits)
                reason = (check_law(expr, r_min, r_end, force_limit, bonded)
                          if symbolic.drop_shift_invariant_terms(expr, bonded).has(symbolic.R)
                          else "no force after the refit: the law became constant" + ("" if bonded else " or linear"))
                if bonded and not reason:
                    reason = check_equilibrium(expr, equilibrium_angstrom(tabulated, t), r_min, r_end)
        except (ModelError, ValueError, TypeError, ZeroDivisionError, OverflowError, np.linalg.LinAlgError) as exc:
            expr, reason = None, f"refit failed: {exc}"
        row.update({"expression": symbolic.to_text(expr) if expr is not None else "",
                    "complexity": symbolic.complexity(expr) if expr is not None else np.nan,
                    "status": reason or "ok"})
        if not reason:
            law = PairLaw(expr, r_min, cutoff, tabulated.core_stiffness, tabulated.core_length_angstrom,
                          r_end if bonded else None)
            train_f = fixed_train + train.forces(t, law.energy_and_force(train.by_type[t].r)[1] / train.by_type[t].r)
            valid_f = fixed_valid + valid.forces(t, law.energy_and_force(valid.by_type[t].r)[1] / valid.by_type[t].r)
            errors = force_errors(valid_f, valid.reference, valid.species)
            row["train_rmse"] = float(np.sqrt(np.mean((train_f - train.reference) ** 2)))
            for group, figures in errors.items():
                row[f"validation_relative_{group}"] = figures["relative"]
        rows.append(row)
        say(f"  {name} #{index}: {row['status']}  {row['expression'][:70]}")

    table = pd.DataFrame(rows)
    if "validation_relative_all" not in table:
        table["validation_relative_all"] = np.nan
    table["selected"] = False
    selected = {}
    for name in names:
        ok = table[(table["pair_type"] == name) & (table["status"] == "ok")]
        if ok.empty:
            raise RefitError(f"no candidate law for pair type {name} passed the refit and smoothness checks")
        best = ok["validation_relative_all"].min()
        good = ok[ok["validation_relative_all"] <= best * (1.0 + tolerance)]
        choice = good.sort_values(["complexity", "validation_relative_all"]).index[0]
        table.loc[choice, "selected"] = True
        selected[name] = int(choice)

    # all chosen laws refitted together, then rounded
    laws = {t: _Parameterized.of(parse_expression(table.loc[selected[n], "expression"], n), law_cutoff[t])
            for t, n in enumerate(names)}
    values, _ = _least_squares_forces(laws, train, np.zeros_like(train.reference))
    expressions = {n: symbolic.round_constants(symbolic.tidy(laws[t].expression(values[t])), digits)
                   for t, n in enumerate(names)}
    for t, n in enumerate(names):
        r_min, r_end = float(tabulated.r_min_angstrom[t]), tabulated.r_end(t)
        limit = FORCE_LIMIT_FACTOR * float(np.abs(tabulated.force(t, np.linspace(r_min, r_end, 400))).max()) + 1.0
        bonded = bool(tabulated.bonded[t])
        if check_law(expressions[n], r_min, r_end, limit, bonded) or (
                bonded and check_equilibrium(expressions[n], equilibrium_angstrom(tabulated, t), r_min, r_end)):
            # the joint refit made it worse: keep the single refit
            expressions[n] = parse_expression(table.loc[selected[n], "expression"], n)
    model = Model.closed_form(
        expressions, species_names, cutoff, {n: float(r) for n, r in zip(names, tabulated.r_min_angstrom)},
        masses_amu=masses_amu,
        core={n: {"stiffness_ev_per_angstrom2": tabulated.core_stiffness,
                  "length_angstrom": tabulated.core_length_angstrom} for n in names},
        provenance=dict(provenance or {}),
        r_max_angstrom={n: tabulated.r_end(t) for t, n in enumerate(names) if tabulated.bonded[t]},
        bond_cutoff_angstrom=bond_cutoff_angstrom,
    )
    final = [valid.forces(t, model.force_over_r(t, valid.by_type[t].r)) for t in range(len(names))]
    validation = _validation_errors(valid, final)
    say(f"closed form: validation relative force error {validation['all']['relative']:.4f}")
    return ClosedFormFit(model=model, candidates=table, selected=selected, validation=validation,
                         tabulated_validation=tabulated_validation, wall_time_s=time.perf_counter() - started)
