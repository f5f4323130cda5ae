"""Force matching on real CP2K configurations: recovery of a known pair law, the core, the cutoff, I/O."""

import json
from pathlib import Path

import numba
import numpy as np
import pytest

from discover.dataset import Dataset
from discover.force_matching import (
    ForceMatchingError,
    TabulatedModel,
    check_cutoff,
    default_cutoff,
    fit_tabulated,
    pair_histogram,
    repulsive_core,
    split_frames,
)
from discover.invariants import pair_table, species_types
from discover.metrics import force_errors, pair_model_forces

DATASET = Path(__file__).resolve().parents[1] / "data" / "water32_300K.npz"
SPECIES = ("O", "H")
CUTOFF = 4.8

# --- a known pair law: Yukawa-screened charges on every pair, plus LJ 12-6 (O–O), Morse (O–H), exp (H–H)
COULOMB_EV_ANGSTROM = 14.399645
CHARGES = {0: (-0.8, -0.8), 1: (-0.8, 0.4), 2: (0.4, 0.4)}  # by pair type OO, OH, HH
SCREENING_PER_ANGSTROM = 0.8


def _raw_law(t, r):
    """u and du/dr of the known law for pair type t, before the shifted-force cutoff."""
    qa, qb = CHARGES[t]
    screen = np.exp(-SCREENING_PER_ANGSTROM * r)
    u = COULOMB_EV_ANGSTROM * qa * qb * screen / r
    du = -COULOMB_EV_ANGSTROM * qa * qb * screen * (1.0 / r**2 + SCREENING_PER_ANGSTROM / r)
    if t == 0:
        s6 = (3.166 / r) ** 6
        u = u + 4 * 0.0067 * (s6 * s6 - s6)
        du = du + 4 * 0.0067 * (-12 * s6 * s6 + 6 * s6) / r
    elif t == 1:
        x = np.exp(-2.2 * (r - 0.98))
        u = u + 4.5 * (1 - x) ** 2
        du = du + 2 * 4.5 * 2.2 * x * (1 - x)
    else:
        u = u + 20.0 * np.exp(-r / 0.3)
        du = du - 20.0 / 0.3 * np.exp(-r / 0.3)
    return u, du


def known_law(t, r):
    """Shifted-force u(r) and f(r) = −du/dr: both vanish at the cutoff."""
    u_c, du_c = _raw_law(t, CUTOFF)
    u, du = _raw_law(t, r)
    return u - u_c - (r - CUTOFF) * du_c, -(du - du_c)


def known_force_over_r(pair_type, r):
    out = np.zeros_like(r)
    for t in range(3):
        mine = pair_type == t
        out[mine] = known_law(t, r[mine])[1] / r[mine]
    return out


@pytest.fixture(scope="module")
def water():
    if not DATASET.is_file():
        pytest.skip(f"{DATASET} not present")
    return Dataset.load(DATASET)


@pytest.fixture(scope="module")
def synthetic(water):
    """Real configurations (every 40th frame) with forces from the known law; last 12 frames validate."""
    train, validation = split_frames(water.n_frames)
    frames = np.concatenate([train[::40], validation[::40]])
    forces = pair_model_forces(water.positions, water.cell, water.species, SPECIES, CUTOFF, known_force_over_r, frames)
    n_train = len(train[::40])
    result = fit_tabulated(water.positions[frames], forces, water.cell[frames], water.species, SPECIES,
                           np.arange(n_train), cutoff_angstrom=CUTOFF)
    return water.positions[frames], water.cell[frames], forces, n_train, result


@pytest.fixture(scope="module")
def real_fit(water):
    """The tabulated model fitted to the real xTB forces of 40 training frames."""
    train, _ = split_frames(water.n_frames)
    return fit_tabulated(water.positions, water.forces, water.cell, water.species, SPECIES, train[::48])


# --- frames and cutoff ---------------------------------------------------------------


def test_split_frames_holds_out_the_final_fifth_in_time():
    train, validation = split_frames(2401)
    assert len(validation) == 480 and len(train) == 1921
    assert train.max() < validation.min()
    assert np.array_equal(np.concatenate([train, validation]), np.arange(2401))


@pytest.mark.parametrize("n_frames, fraction", [(1, 0.2), (10, 0.0), (10, 1.0), (3, 0.01)])
def test_split_frames_refuses_splits_without_both_sets(n_frames, fraction):
    with pytest.raises(ForceMatchingError):
        split_frames(n_frames, fraction)


def test_default_cutoff_is_half_the_narrowest_width_less_the_margin():
    cubic = np.eye(3) * 9.865406
    assert default_cutoff(cubic, margin_angstrom=0.05) == pytest.approx(9.865406 / 2 - 0.05)
    # a sheared cell: the perpendicular width, not the edge length, limits the minimum image
    sheared = np.array([[10.0, 0.0, 0.0], [5.0, 10.0, 0.0], [0.0, 0.0, 12.0]])
    width = 10.0 * 10.0 / np.hypot(10.0, 5.0)  # area / |b| for the a–b face pair
    assert default_cutoff(np.stack([cubic, sheared]), margin_angstrom=0.0) == pytest.approx(width / 2)


def test_cutoff_beyond_the_minimum_image_is_refused(water):
    with pytest.raises(ForceMatchingError, match="minimum-image limit"):
        check_cutoff(5.0, water.cell[:1])
    with pytest.raises(ForceMatchingError, match="minimum-image limit"):
        fit_tabulated(water.positions[:4], water.forces[:4], water.cell[:4], water.species, SPECIES,
                      cutoff_angstrom=5.0)


def test_inconsistent_arrays_are_refused_with_one_line(water):
    with pytest.raises(ForceMatchingError, match="forces"):
        fit_tabulated(water.positions[:4], water.forces[:3], water.cell[:4], water.species, SPECIES)
    with pytest.raises(ForceMatchingError, match="species C not among"):
        fit_tabulated(water.positions[:4], water.forces[:4], water.cell[:4],
                      np.where(np.arange(96) == 5, "C", water.species), SPECIES)


# --- recovery of a known law ---------------------------------------------------------------


def test_known_pair_law_energy_recovered_within_one_percent(synthetic):
    """RMS of u_fit − u_true on a uniform grid over [r_min, r_c], relative to the std of u_true there."""
    *_, result = synthetic
    model = result.model
    for t, name in enumerate(model.pair_types):
        r = np.linspace(model.r_min_angstrom[t], CUTOFF, 2000)
        u_true, f_true = known_law(t, r)
        u_fit, f_fit = model.energy_and_force(t, r)
        assert np.sqrt(np.mean((u_fit - u_true) ** 2)) < 0.01 * np.std(u_true), name
        assert np.sqrt(np.mean((f_fit - f_true) ** 2)) < 0.03 * np.std(f_true), name


def test_known_pair_law_validation_forces_reproduced(synthetic):
    positions, cells, forces, n_train, result = synthetic
    validation = np.arange(n_train, len(positions))
    species = np.tile(["O", "H", "H"], 32)  # the dataset's atom order
    predicted = pair_model_forces(positions, cells, species, SPECIES, CUTOFF, result.model.force_over_r, validation)
    errors = force_errors(predicted, forces[validation], species)
    assert errors["all"]["relative"] < 1e-3
    assert errors["O"]["relative"] < 1e-3 and errors["H"]["relative"] < 1e-3


def test_fit_does_not_depend_on_chunking(synthetic):
    positions, cells, forces, n_train, result = synthetic
    again = fit_tabulated(positions, forces, cells, np.tile(["O", "H", "H"], 32), SPECIES, np.arange(n_train),
                          cutoff_angstrom=CUTOFF, smoothing=result.smoothing, chunk_frames=5)
    for a, b in zip(result.model.force_coefficients, again.model.force_coefficients):
        np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-9 * np.abs(a).max())


# --- the model's own consistency ------------------------------------------------------------


def test_force_is_minus_the_derivative_of_energy_on_table_and_core(real_fit):
    model = real_fit.model
    h = 1e-5
    for t in range(len(model.pair_types)):
        r = np.linspace(model.r_min_angstrom[t] - 0.5, model.cutoff_angstrom - 1e-3, 400)
        r = r[np.abs(r - model.r_min_angstrom[t]) > 2 * h]  # the join is C¹, not C², so skip its stencil
        numeric = -(model.energy(t, r + h) - model.energy(t, r - h)) / (2 * h)
        np.testing.assert_allclose(model.force(t, r), numeric, rtol=1e-5, atol=1e-6)


def test_energy_and_force_vanish_at_the_cutoff(real_fit):
    model = real_fit.model
    rc = model.cutoff_angstrom
    for t in range(len(model.pair_types)):
        u, f = model.energy_and_force(t, np.array([rc - 1e-9, rc, rc + 0.5]))
        assert abs(u[0]) < 1e-8 and abs(f[0]) < 1e-6
        assert u[1] == 0.0 and f[1] == 0.0 and u[2] == 0.0 and f[2] == 0.0


def test_predicted_forces_obey_newtons_third_law(water, real_fit):
    frames = np.arange(2000, 2400, 50)
    predicted = pair_model_forces(water.positions, water.cell, water.species, SPECIES,
                                  real_fit.model.cutoff_angstrom, real_fit.model.force_over_r, frames)
    scale = np.abs(predicted).max()
    assert scale > 1.0
    np.testing.assert_allclose(predicted.sum(axis=1), 0.0, atol=1e-11 * scale * water.n_atoms)


# --- the repulsive core ----------------------------------------------------------------------


def test_fitted_core_is_repulsive_and_growing_below_r_min(real_fit):
    model = real_fit.model
    for t, name in enumerate(model.pair_types):
        r0 = model.r_min_angstrom[t]
        r = np.linspace(0.3, r0 - model.core_length_angstrom, 500)
        f = model.force(t, r)
        assert np.all(f > 0.0), name
        assert np.all(np.diff(f) < 0.0), name  # r increases along the grid, so f must fall


def test_fitted_core_joins_the_table_with_continuous_energy_and_slope(real_fit):
    model = real_fit.model
    for t, name in enumerate(model.pair_types):
        r0 = model.r_min_angstrom[t]
        for eps in (1e-6, 1e-8):
            u_in, f_in = model.energy_and_force(t, r0 - eps)
            u_out, f_out = model.energy_and_force(t, r0 + eps)
            assert abs(u_in - u_out) < 10 * eps * (1.0 + abs(f_out)), name
            assert abs(f_in - f_out) < 1e-3 * (1.0 + abs(f_out)) * (eps / 1e-6), name


def test_core_join_and_repulsive_core_reproduce_the_model_below_r_min(real_fit):
    """The route a generated kernel takes: repulsive_core called with the model's join values."""
    model = real_fit.model
    for t in range(len(model.pair_types)):
        r0, u0, du0 = model.core_join(t)
        r = np.linspace(r0 - 0.6, r0, 50, endpoint=False)
        u, du = repulsive_core(r, r0, u0, du0, model.core_stiffness, model.core_length_angstrom)
        np.testing.assert_array_equal(model.energy(t, r), u)
        np.testing.assert_array_equal(model.force(t, r), -du)


@pytest.mark.parametrize("du0", [-3.0, -0.2, 0.0, 0.5, 4.0])
def test_repulsive_core_matches_join_and_turns_repulsive_within_one_length(du0):
    r0, u0, length = 2.4, 0.7, 0.1
    u, du = repulsive_core(np.array([r0]), r0, u0, du0, 10.0, length)
    assert u[0] == pytest.approx(u0) and du[0] == pytest.approx(du0)
    r = np.linspace(0.5, r0, 2001)
    u, du = repulsive_core(r, r0, u0, du0, 10.0, length)
    force = -du
    assert np.all(force[r <= r0 - length] > 0.0)
    assert np.all(np.diff(force) < 0.0)
    # the returned derivative is the derivative of the returned energy
    h = 1e-6
    numeric = (repulsive_core(r[:-1] + h, r0, u0, du0, 10.0, length)[0]
               - repulsive_core(r[:-1] - h, r0, u0, du0, 10.0, length)[0]) / (2 * h)
    np.testing.assert_allclose(du[:-1], numeric, rtol=1e-6, atol=1e-5)


def test_repulsive_core_compiles_in_numba_on_scalars():
    compiled = numba.njit(repulsive_core)
    expected = repulsive_core(np.array([2.0]), 2.4, 0.7, 0.3, 10.0, 0.1)
    got = compiled(2.0, 2.4, 0.7, 0.3, 10.0, 0.1)
    assert got[0] == pytest.approx(expected[0][0]) and got[1] == pytest.approx(expected[1][0])


# --- histogram and r_min ---------------------------------------------------------------------


def test_histogram_counts_every_pair_and_r_min_is_the_closest_pair(water):
    frames = np.array([0, 700, 1400])
    histogram = pair_histogram(water.positions, water.cell, water.species, SPECIES, CUTOFF, frames)
    types = species_types(water.species, SPECIES)
    tables = [pair_table(water.positions[f], water.cell[f], types, CUTOFF, 2) for f in frames]
    pair_types = np.concatenate([t.pair_type for t in tables])
    r = np.concatenate([t.r for t in tables])
    assert histogram.pair_types == ("OO", "OH", "HH")
    assert histogram.n_frames == 3
    for t in range(3):
        assert histogram.counts[t].sum() == np.count_nonzero(pair_types == t)
        assert histogram.r_min_angstrom[t] == r[pair_types == t].min()
    # the O–H bond peak sits near 1 Å
    oh_peak = histogram.centres_angstrom[np.argmax(histogram.counts[1])]
    assert 0.9 < oh_peak < 1.1


def test_real_data_r_min_lies_where_water_never_goes(real_fit):
    r_min = dict(zip(real_fit.model.pair_types, real_fit.model.r_min_angstrom))
    assert 2.2 < r_min["OO"] < 2.7 and 0.8 < r_min["OH"] < 0.95 and 1.2 < r_min["HH"] < 1.5


def test_real_data_fit_explains_most_of_the_force(water, real_fit):
    _, validation = split_frames(water.n_frames)
    frames = validation[::24]
    predicted = pair_model_forces(water.positions, water.cell, water.species, SPECIES,
                                  real_fit.model.cutoff_angstrom, real_fit.model.force_over_r, frames)
    errors = force_errors(predicted, water.forces[frames], water.species)
    assert errors["all"]["relative"] < 0.3


# --- plain-dict round trip -------------------------------------------------------------------


def test_model_survives_a_json_round_trip(real_fit):
    model = real_fit.model
    again = TabulatedModel.from_dict(json.loads(json.dumps(model.to_dict())))
    r = np.linspace(0.5, model.cutoff_angstrom + 0.2, 300)
    for t in range(len(model.pair_types)):
        np.testing.assert_array_equal(model.energy(t, r), again.energy(t, r))
        np.testing.assert_array_equal(model.force(t, r), again.force(t, r))
    table = again.table(r)
    assert set(table) == {"OO", "OH", "HH"}
    np.testing.assert_array_equal(table["OH"][1], model.force(1, r))


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda d: d.pop("pairs"), "malformed"),
        (lambda d: d["pairs"].pop("HH"), "missing pair type"),
        (lambda d: d["pairs"]["OO"]["knots_angstrom"].pop(), "len"),
        (lambda d: d.update(kind="something else"), "kind"),
    ],
)
def test_malformed_model_dict_is_refused_with_one_line(real_fit, damage, message):
    data = json.loads(json.dumps(real_fit.model.to_dict()))
    damage(data)
    with pytest.raises(ForceMatchingError, match=message) as info:
        TabulatedModel.from_dict(data, label="model.json")
    assert "\n" not in str(info.value) and "model.json" in str(info.value)
