"""The quadratic agent-loss baseline of Gusev & Vanchurin on real CP2K configurations."""

from pathlib import Path

import numpy as np
import pytest

from discover.baseline import (
    BaselineError,
    QuadraticBaseline,
    agent_losses,
    fit_quadratic_baseline,
    parameter_count,
    predict_forces,
    radial_basis,
)
from discover.dataset import Dataset
from discover.force_matching import split_frames
from discover.metrics import force_errors

DATASET = Path(__file__).resolve().parents[1] / "data" / "water32_300K.npz"
SPECIES = ("O", "H")
CUTOFF = 4.5


@pytest.fixture(scope="module")
def water():
    if not DATASET.is_file():
        pytest.skip(f"{DATASET} not present")
    return Dataset.load(DATASET)


def random_model(n_radial: int, seed: int) -> QuadraticBaseline:
    """A known quadratic loss on the same radial basis the fit builds (centres on [0.8 Å, r_c])."""
    rng = np.random.default_rng(seed)
    centres = np.linspace(0.8, CUTOFF, n_radial)
    n = 2 * n_radial
    quadratic = 0.05 * rng.normal(size=(2, n, n))
    return QuadraticBaseline(
        species=SPECIES,
        cutoff_angstrom=CUTOFF,
        centres_angstrom=centres,
        width_angstrom=float(centres[1] - centres[0]),
        linear=rng.normal(size=(2, n)),
        quadratic=quadratic + quadratic.transpose(0, 2, 1),
    )


def test_radial_basis_derivative_and_smooth_cutoff():
    centres = np.linspace(0.8, CUTOFF, 6)
    r = np.linspace(0.5, CUTOFF - 1e-4, 300)
    h = 1e-6
    g, dg = radial_basis(r, centres, 0.74, CUTOFF)
    numeric = (radial_basis(r + h, centres, 0.74, CUTOFF)[0] - radial_basis(r - h, centres, 0.74, CUTOFF)[0]) / (2 * h)
    np.testing.assert_allclose(dg, numeric, rtol=1e-6, atol=1e-9)
    assert np.all(g > 0.0)
    g_c, dg_c = radial_basis(np.array([CUTOFF]), centres, 0.74, CUTOFF)
    np.testing.assert_allclose(g_c, 0.0, atol=1e-15)
    np.testing.assert_allclose(dg_c, 0.0, atol=1e-15)


def test_force_is_minus_the_gradient_of_the_agents_own_loss(water):
    """m q̈_k = −∂H_{A_k}(k)/∂q_k: central differences of atom k's own loss in its own coordinates."""
    model = random_model(5, seed=1)
    positions, cell = water.positions[100], water.cell[100]
    forces = predict_forces(model, positions[None], cell[None], water.species)[0]
    h = 1e-5
    for k in (0, 1, 2, 40, 95):
        for axis in range(3):
            plus, minus = positions.copy(), positions.copy()
            plus[k, axis] += h
            minus[k, axis] -= h
            numeric = -(agent_losses(model, plus, cell, water.species)[k]
                        - agent_losses(model, minus, cell, water.species)[k]) / (2 * h)
            assert forces[k, axis] == pytest.approx(numeric, rel=1e-6, abs=1e-6 * np.abs(forces).max())


def test_quadratic_forces_are_many_body_and_break_the_third_law(water):
    """Each agent follows only its own loss, so with W ≠ 0 the total force need not vanish."""
    model = random_model(5, seed=2)
    forces = predict_forces(model, water.positions[:2], water.cell[:2], water.species)
    assert np.abs(forces.sum(axis=1)).max() > 1e-3 * np.abs(forces).max()


def test_fit_recovers_a_known_quadratic_loss_exactly(water):
    truth = random_model(4, seed=3)
    train = np.arange(0, 1900, 95)
    validation = np.arange(2000, 2400, 100)
    forces = predict_forces(truth, water.positions, water.cell, water.species, train)
    fitted = fit_quadratic_baseline(water.positions[train], forces, water.cell[train], water.species, SPECIES,
                                    cutoff_angstrom=CUTOFF, n_radial=4, ridge=1e-15)
    np.testing.assert_allclose(fitted.centres_angstrom, truth.centres_angstrom)
    np.testing.assert_allclose(fitted.linear, truth.linear, rtol=0, atol=1e-6 * np.abs(truth.linear).max())
    np.testing.assert_allclose(fitted.quadratic, truth.quadratic, rtol=0, atol=1e-5 * np.abs(truth.quadratic).max())
    expected = predict_forces(truth, water.positions, water.cell, water.species, validation)
    predicted = predict_forces(fitted, water.positions, water.cell, water.species, validation)
    assert force_errors(predicted, expected, water.species)["all"]["relative"] < 1e-8
    assert fitted.train_rmse_ev_per_angstrom < 1e-6 * forces.std()


def test_parameter_count_is_linear_plus_symmetric_quadratic_per_species():
    model = random_model(8, seed=0)
    assert parameter_count(model) == 2 * (16 + 16 * 17 // 2) == 304


def test_real_data_baseline_explains_part_of_the_force(water):
    train, validation = split_frames(water.n_frames)
    fitted = fit_quadratic_baseline(water.positions, water.forces, water.cell, water.species, SPECIES,
                                    train[::40])
    frames = validation[::40]
    predicted = predict_forces(fitted, water.positions, water.cell, water.species, frames)
    errors = force_errors(predicted, water.forces[frames], water.species)
    assert errors["all"]["relative"] < 0.35
    assert errors["H"]["relative"] < errors["O"]["relative"]


def test_bad_radial_basis_is_refused(water):
    with pytest.raises(BaselineError, match="radial basis"):
        fit_quadratic_baseline(water.positions[:2], water.forces[:2], water.cell[:2], water.species, SPECIES,
                               train_frames=[0, 1], n_radial=0)
