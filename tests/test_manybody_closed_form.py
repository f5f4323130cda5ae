"""Closed-form many-body laws that keep water molecules whole: the proton-transfer prior of the joint refit."""

from __future__ import annotations

import numpy as np
import pytest
import sympy

from discover import force_matching, symbolic, threebody
from discover.model import Model
from discover.threebody import R1, R2, C
from simulate.observables import water_geometry
from simulate.space import minimum_image

SPECIES = ("O", "H")
R3 = 3.2


@pytest.fixture(scope="module")
def water(shipped_dataset):
    return shipped_dataset


def water_pair_laws() -> dict:
    """The closed-form pair laws of water fitted to the shipped CP2K data (models/default/pairwise)."""
    r = sympy.Symbol("r", positive=True)
    return {"OO": 107.755 / r**5.55017,
            "OH": -2.56297 * sympy.exp(-7.3799 * (r - 0.775804) ** 2) + 123.144 * sympy.exp(-4.46646 * r)
            - 6.28085 * sympy.exp(-1.20871 * r),
            "HH": 1.22404 / r**1.10274 + 0.0557404 * sympy.exp(-90.0255 * (r - 1.67601) ** 2)}


def test_proton_transfer_moves_make_one_hydronium_and_one_hydroxide(water):
    frame = 100
    positions, cell = water.positions[frame], water.cell[frame]
    hydrogens, moved = threebody.proton_transfer_moves(positions, cell, water.species, 5)
    assert len(hydrogens) == 5 and set(water.species[hydrogens]) == {"H"}
    oxygens = np.flatnonzero(water.species == "O")
    assert water_geometry(positions, cell, water.species).bad_oxygens[0] == 0
    for atom, new in zip(hydrogens, moved):
        before = np.linalg.norm(minimum_image(positions[oxygens] - positions[atom], cell), axis=1)
        after = np.linalg.norm(minimum_image(positions[oxygens] - new, cell), axis=1)
        # now 1 Å from the O that was its second nearest: its hydrogen-bond acceptor
        assert np.argmin(after) == np.argsort(before)[1] and after.min() == pytest.approx(1.0, abs=1e-12)
        shifted = positions.copy()
        shifted[atom] = new
        assert water_geometry(shifted, cell, water.species).bad_oxygens[0] == 2  # H3O+ and OH−
    # the most likely transfers come first: the shortest H···acceptor distances
    assert len(threebody.proton_transfer_moves(positions, cell, water.species, 5, max_acceptor_angstrom=1.0)[0]) == 0
    no_oxygen = np.where(water.species == "O", "N", water.species)
    assert len(threebody.proton_transfer_moves(positions, cell, no_oxygen, 5)[0]) == 0


def _joint_laws(model: Model):
    names = list(model.pair_types)
    pair = {n: symbolic.parameterize(model.expressions[n], prefix=f"{n}_c") for n in names}
    three = {n: symbolic.parameterize(e, prefix=f"{n}_k") for n, e in model.threebody.expressions.items()}
    triplet_names = threebody.triplet_type_names(model.species)
    laws = threebody._JointLaws({n: p[0] for n, p in pair.items()}, {n: p[1] for n, p in pair.items()},
                                {n: t[0] for n, t in three.items()}, {n: t[1] for n, t in three.items()},
                                model.cutoff_angstrom, names, triplet_names)
    x = np.concatenate([pair[n][2] for n in names] + [three[n][2] for n in three])
    return laws, x


def test_refit_energy_differences_equal_whole_frame_energies_and_their_gradient(water):
    """ΔE of the refit (only the terms the moved H is in) is the whole model's, and its Jacobian is exact."""
    a = sympy.nsimplify(R3)
    term = threebody.ThreeBodyLaws(SPECIES, R3, {
        "HOH": 2.0 * sympy.exp(0.8 / (R1 - a)) * sympy.exp(0.8 / (R2 - a)) * (C + 0.25) ** 2,
        "OHO": 0.7 * sympy.exp(1.1 / (R1 - a)) * sympy.exp(1.1 / (R2 - a)) * (C + 1) ** 2,
        "OOH": 0.3 * sympy.exp(0.9 / (R1 - a)) * sympy.exp(0.5 / (R2 - a)) * (C - 0.1) ** 2})
    # r_min low enough that no repulsive core replaces a law in the moved frames: the refit sees laws only
    model = Model.closed_form(water_pair_laws(), SPECIES, 4.5, {"OO": 1.0, "OH": 0.5, "HH": 0.5}, threebody=term)
    frames = [0, 900]
    differences = threebody._proton_transfer_differences(water.positions, water.cell, water.species, SPECIES, frames,
                                                         4.5, R3, 3, np.array([1.0, 0.5, 0.5]))
    laws, x = _joint_laws(model)
    expected = np.concatenate([threebody.proton_transfer_energies(model, water.positions[f], water.cell[f],
                                                                  water.species, 3) for f in frames])
    assert differences.n_configs == 6 and np.ptp(expected) > 0.05
    np.testing.assert_allclose(laws.energy_differences(x, differences), expected, rtol=1e-9, atol=1e-9)
    jacobian = laws.energy_jacobian(x, differences)
    step = 1e-6
    for k in range(len(x)):
        plus, minus = x.copy(), x.copy()
        plus[k] += step
        minus[k] -= step
        numeric = (laws.energy_differences(plus, differences) - laws.energy_differences(minus, differences)) / (2 * step)
        np.testing.assert_allclose(jacobian[:, k], numeric, rtol=1e-5, atol=1e-7)


def test_moves_that_bring_a_pair_below_its_r_min_are_left_out_of_the_prior(water):
    """Below r_min the model uses its wall, not the law the refit sums: such moves must not be judged by the law."""
    frames = list(range(0, 1900, 100))
    kept = threebody._proton_transfer_differences(water.positions, water.cell, water.species, SPECIES, frames,
                                                  4.5, R3, 4, np.array([1.0, 0.5, 0.5])).n_configs
    # the shipped data's sampled r_min: H–H 1.356 Å; a moved proton comes closer than that to an H in some moves
    strict = threebody._proton_transfer_differences(water.positions, water.cell, water.species, SPECIES, frames,
                                                    4.5, R3, 4, np.array([2.457, 0.895, 1.356])).n_configs
    assert kept == 4 * len(frames) and 0 < strict < kept


def test_gaussian_radial_weights_decay_for_any_constants():
    """e^{−(b (r − m))²} ≤ 1 whatever the sign of b: no growing wall where nothing was sampled."""
    rng = np.random.default_rng(0)
    for name in ("OOO", "OOH", "HOH"):
        template, symbols, _, bounds = threebody.family_template("gaussian_quadratic", name, R3)
        assert len(bounds) == len(symbols)
        polynomial = template
        for s in symbols:
            if "_b" in s.name or "_m" in s.name:
                polynomial = polynomial.subs(s, 0)
        for _ in range(5):
            values = dict(zip(symbols, rng.normal(0.0, 3.0, len(symbols))))
            w = sympy.lambdify((R1, R2, C), template.subs(values))
            bound = sympy.lambdify((R1, R2, C), sympy.Abs(polynomial.subs(values)))
            r1, r2, c = rng.uniform(0.5, R3, 50), rng.uniform(0.5, R3, 50), rng.uniform(-1, 1, 50)
            assert np.all(np.abs(w(r1, r2, c)) <= bound(r1, r2, c) + 1e-12)


def test_refit_with_the_prior_makes_moving_a_proton_to_its_acceptor_cost_energy(water):
    """With the prior, putting an H onto its acceptor O costs energy on frames the refit never saw.

    The same refit without the prior left such moves at −0.13 eV (measured): H3O+ + OH− cheaper than water.
    """
    pair = Model.closed_form(water_pair_laws(), SPECIES, 4.88, {"OO": 2.46, "OH": 0.9, "HH": 1.36})
    train, valid = force_matching.split_frames(water.n_frames)
    fit = threebody.fit_manybody_closed_form(pair, water.positions, water.forces, water.cell, water.species, train,
                                             valid, families=("gaussian_quadratic",), n_refit_frames=3,
                                             n_validation_frames=8, screen_steps=0, max_evaluations=100)
    least = min(threebody.proton_transfer_energies(fit.model, water.positions[f], water.cell[f], water.species,
                                                   threebody.PROTON_TRANSFER_MOVES_PER_FRAME).min()
                for f in valid[::120])
    assert least > 0.3
    assert fit.candidates[0]["proton_transfer_min_ev"] > 0.3
    assert fit.validation["all"]["relative"] < 0.16
