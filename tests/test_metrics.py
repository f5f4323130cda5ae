"""Force metrics and pair-model force prediction on real configurations."""

from pathlib import Path

import numpy as np
import pytest

from discover.dataset import Dataset
from discover.metrics import MetricsError, force_errors, pair_model_forces

DATASET = Path(__file__).resolve().parents[1] / "data" / "water32_300K.npz"
SPECIES = ("O", "H")


@pytest.fixture(scope="module")
def water():
    if not DATASET.is_file():
        pytest.skip(f"{DATASET} not present")
    return Dataset.load(DATASET)


def test_force_errors_of_a_known_offset():
    rng = np.random.default_rng(0)
    species = np.array(["O", "H", "H"] * 4)
    reference = rng.normal(size=(5, 12, 3))
    offset = np.where(species == "O", 0.3, -0.1)[None, :, None]
    errors = force_errors(reference + offset, reference, species)
    assert errors["O"]["rmse"] == pytest.approx(0.3) and errors["O"]["mae"] == pytest.approx(0.3)
    assert errors["H"]["rmse"] == pytest.approx(0.1) and errors["H"]["mae"] == pytest.approx(0.1)
    assert errors["all"]["rmse"] == pytest.approx(np.sqrt((0.09 * 4 + 0.01 * 8) / 12))
    o_spread = reference[:, species == "O"].std()
    assert errors["O"]["relative"] == pytest.approx(0.3 / o_spread)
    assert errors["O"]["n_components"] == 5 * 4 * 3 and errors["all"]["n_components"] == 5 * 12 * 3


def test_predicting_the_mean_scores_relative_error_one():
    rng = np.random.default_rng(1)
    species = np.array(["O", "H", "H"])
    reference = rng.normal(2.0, 0.5, size=(400, 3, 3))
    errors = force_errors(np.full_like(reference, reference.mean()), reference, species)
    assert errors["all"]["relative"] == pytest.approx(1.0)
    assert force_errors(reference, reference, species)["all"]["relative"] == 0.0


def test_force_errors_refuse_mismatched_arrays():
    with pytest.raises(MetricsError, match="shape"):
        force_errors(np.zeros((2, 3, 3)), np.zeros((2, 4, 3)), ["O", "H", "H"])
    with pytest.raises(MetricsError, match="atoms"):
        force_errors(np.zeros((2, 3, 3)), np.zeros((2, 3, 3)), ["O", "H"])


def _brute_force(positions, cell_lengths, species, cutoff, law):
    """Every ordered pair, minimum image by hand: an implementation independent of pair tables."""
    n = len(species)
    forces = np.zeros((n, 3))
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            d = positions[i] - positions[j]
            d -= cell_lengths * np.round(d / cell_lengths)
            r = np.linalg.norm(d)
            if r < cutoff:
                forces[i] += law(species[i] + species[j], r) * d / r
    return forces


def test_pair_model_forces_equal_a_brute_force_double_loop(water):
    # f(r) = −du/dr of a different soft law per unordered pair, nonzero at every distance
    strength = {"OO": 1.0, "OH": -2.0, "HO": -2.0, "HH": 0.5}

    def law(pair, r):
        return strength[pair] * np.exp(-r)

    def force_over_r(pair_type, r):
        return np.array([1.0, -2.0, 0.5])[pair_type] * np.exp(-r) / r

    frames = np.array([3, 1999])
    predicted = pair_model_forces(water.positions, water.cell, water.species, SPECIES, 4.5, force_over_r, frames)
    for k, f in enumerate(frames):
        expected = _brute_force(water.positions[f], np.diag(water.cell[f]), water.species, 4.5, law)
        np.testing.assert_allclose(predicted[k], expected, rtol=1e-10, atol=1e-12)


def test_pair_model_forces_do_not_depend_on_chunking(water):
    def force_over_r(pair_type, r):
        return (1.0 + pair_type) / r**3

    frames = np.arange(0, 2400, 300)
    one = pair_model_forces(water.positions, water.cell, water.species, SPECIES, 4.0, force_over_r, frames, 1)
    many = pair_model_forces(water.positions, water.cell, water.species, SPECIES, 4.0, force_over_r, frames, 64)
    np.testing.assert_array_equal(one, many)
    assert one.shape == (len(frames), water.n_atoms, 3)
