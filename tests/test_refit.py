"""Refit and selection: laws judged by forces; recovery of a known law; rejection of laws with poles."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import sympy

from discover import symbolic
from discover.engines import search_tabulated
from discover.force_matching import default_cutoff, fit_tabulated, split_frames
from discover.model import parse_expression
from discover.refit import check_law, fit_closed_form, structural_problem

SIGMA_ANGSTROM, EPSILON_EV = 3.4, 0.0104  # argon-like Lennard-Jones
LJ_TEXT = f"4*{EPSILON_EV}*(({SIGMA_ANGSTROM}/r)**12 - ({SIGMA_ANGSTROM}/r)**6)"


def lj_du(r):
    return 4 * EPSILON_EV * (-12 * SIGMA_ANGSTROM**12 / r**13 + 6 * SIGMA_ANGSTROM**6 / r**7)


@pytest.fixture(scope="module")
def lj_data():
    """64 argon-like atoms on a jittered cubic lattice; shifted-force Lennard-Jones forces, exact."""
    rng = np.random.default_rng(0)
    n_side, n_frames = 4, 40
    spacing = 1.1 * SIGMA_ANGSTROM
    box = n_side * spacing
    lattice = np.stack(np.meshgrid(*[np.arange(n_side)] * 3, indexing="ij"), -1).reshape(-1, 3) * spacing
    positions = lattice[None] + rng.uniform(-0.17 * spacing, 0.17 * spacing, (n_frames, len(lattice), 3))
    cells = np.tile(np.eye(3) * box, (n_frames, 1, 1))
    cutoff = default_cutoff(cells[0])
    forces = np.zeros_like(positions)
    for f in range(n_frames):
        d = positions[f][:, None] - positions[f][None]
        d -= box * np.round(d / box)
        r = np.linalg.norm(d, axis=-1)
        np.fill_diagonal(r, np.inf)
        f_over_r = np.where(r < cutoff, -(lj_du(r) - lj_du(cutoff)) / r, 0.0)
        forces[f] = np.einsum("ij,ijk->ik", f_over_r, d)
    species = np.array(["Ar"] * len(lattice))
    train, validation = split_frames(n_frames)
    tabulated = fit_tabulated(positions, forces, cells, species, ("Ar",), train, cutoff)
    return {"positions": positions, "forces": forces, "cells": cells, "species": species, "train": train,
                "validation": validation, "tabulated": tabulated}


def same_law_to_digits(found: sympy.Expr, expected: sympy.Expr, digits: int = 4) -> bool:
    difference = symbolic.round_constants(sympy.expand(found), digits) - symbolic.round_constants(
        sympy.expand(expected), digits)
    return sympy.simplify(difference) == 0


def test_lennard_jones_law_is_recovered_exactly_by_operon_and_refit(lj_data):
    fm = lj_data["tabulated"]
    front, engine, _ = search_tabulated(fm.model, fm.histogram, "operon", seed=0, budget_s=120,
                                        population_size=300, generations=100, n_threads=2)
    assert engine == "operon"
    fit = fit_closed_form(front, fm.model, lj_data["positions"], lj_data["forces"], lj_data["cells"],
                          lj_data["species"], lj_data["train"], lj_data["validation"], masses_amu=[39.948])
    found = fit.model.expressions["ArAr"]
    assert same_law_to_digits(found, parse_expression(LJ_TEXT)), found
    assert fit.validation["all"]["relative"] < 1e-5
    assert len(fit.candidates) == len(front) and fit.candidates["selected"].sum() == 1


def test_check_law_rejects_poles_and_runaway_forces_in_unsampled_gaps():
    r_min, cutoff = 0.9, 4.8
    limit = 50.0
    assert check_law(parse_expression("4.5*(1 - exp(-2.2*(r - 0.98)))**2"), r_min, cutoff, limit) == ""
    # a pole between bond and hydrogen bond, exactly on and between grid points
    assert check_law(parse_expression("0.01/(r - 1.23) + exp(-r)"), r_min, cutoff, limit) != ""
    reason = check_law(parse_expression("1e-12/(r - 1.2300001234)"), r_min, cutoff, 1e9)
    assert "pole near r = 1.23" in reason
    assert "not finite" in check_law(parse_expression("sqrt(r - 1.5)"), r_min, cutoff, limit)
    assert "exceeds" in check_law(parse_expression("exp(20/r)"), r_min, cutoff, limit)


def test_selection_takes_the_simplest_law_within_tolerance_of_the_best(lj_data):
    front = pd.DataFrame({
        "pair_type": "ArAr",
        "engine": "test",
        "complexity": [5, 11, 14, 9],
        "loss": [1.0, 1e-6, 1e-7, 1e-3],
        "expression": [
            "10.0*exp(-2.0*r)",                               # simple, wrong shape
            "90000.0/r**12 - 80.0/r**6",                      # the right law, constants 10-25 % off
            "90000.0/r**12 - 80.0/r**6 + 0.001*exp(-r)",      # the right law plus a spurious term
            "0.01/(r - 4.0) + 90000.0/r**12",                 # a pole inside the range
        ],
    })
    fit = fit_closed_form(front, lj_data["tabulated"].model, lj_data["positions"], lj_data["forces"],
                          lj_data["cells"], lj_data["species"], lj_data["train"], lj_data["validation"],
                          masses_amu=[39.948])
    table = fit.candidates
    assert list(table["search_expression"]) == list(front["expression"])
    assert table.loc[3, "status"] != "ok"
    assert table.loc[1, "selected"] and table["selected"].sum() == 1
    assert table.loc[0, "validation_relative_all"] > 100 * table.loc[1, "validation_relative_all"]
    assert same_law_to_digits(fit.model.expressions["ArAr"], parse_expression(LJ_TEXT))


def test_powers_with_r_dependent_exponents_are_refused_before_any_refit():
    assert structural_problem(parse_expression(LJ_TEXT)) == ""
    assert "r-dependent exponent" in structural_problem(parse_expression("2.6*(1.72/r)**(4.35*r)"))
    assert "r-dependent exponent" in structural_problem(parse_expression("7.8e9*1.3e-11**exp(1/r) + 1.5/r"))
    assert "longer than" in structural_problem(parse_expression(" + ".join(f"exp(-{k}.5*r)" for k in range(12))))


def test_tidy_keeps_a_gaussian_in_centre_and_width_form():
    law = parse_expression("1.2/r**1.1 + 0.0557*exp(-90.0*(r - 1.676)**2)")
    tidied = symbolic.tidy(law)
    assert "(r - 1.676)**2" in symbolic.to_text(tidied), symbolic.to_text(tidied)
    r = np.linspace(1.3, 4.8, 50)
    values = [np.asarray(sympy.lambdify(symbolic.R, e, "numpy")(r), dtype=float) for e in (law, tidied)]
    np.testing.assert_allclose(values[0], values[1], rtol=1e-12)
    # the refit's parameterisation sees three constants in the Gaussian, not an expanded polynomial exponent
    _, _, constants = symbolic.parameterize(tidied)
    assert len(constants) == 5
