"""Three-body agent losses: triplet invariants, F = −∇E, joint force matching, model files and kernels."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import sympy

from discover import codegen, force_matching, threebody
from discover.metrics import force_errors
from discover.model import Model, ModelError, load_model
from discover.threebody import R1, R2, C
from simulate import energy, partition
from simulate.kernels import has_threebody, load_kernel_module

SPECIES = ("O", "H")
R3 = 3.2


def random_table(seed: int = 0, cutoff: float = R3) -> threebody.ThreeBodyTable:
    """A three-body table with random coefficients, symmetric where the neighbours are alike."""
    rng = np.random.default_rng(seed)
    centres, width = threebody.default_basis(cutoff, 3)
    coefficients = rng.normal(0.0, 0.05, (6, 3, 3, 3))
    for t, same in enumerate(threebody.same_neighbour_species(2)):
        if same:
            coefficients[t] = 0.5 * (coefficients[t] + coefficients[t].transpose(1, 0, 2))
    return threebody.ThreeBodyTable(SPECIES, cutoff, centres, width, 2, coefficients)


def closed_form_term(cutoff: float = R3) -> threebody.ThreeBodyLaws:
    """Stillinger–Weber angles on H–O–H and O–H···O, and an unlike-neighbour O–O–H term."""
    a = sympy.nsimplify(cutoff)
    return threebody.ThreeBodyLaws(SPECIES, cutoff, {
        "HOH": 2.0 * sympy.exp(0.8 / (R1 - a)) * sympy.exp(0.8 / (R2 - a)) * (C + 0.25) ** 2,
        "OHO": 0.7 * sympy.exp(1.1 / (R1 - a)) * sympy.exp(1.1 / (R2 - a)) * (C + 1) ** 2,
        "OOH": 0.3 * sympy.exp(0.9 / (R1 - a)) * sympy.exp(0.5 / (R2 - a)) * (C - 0.1) ** 2,
    })


def pair_model(threebody_term=None) -> Model:
    """Soft closed-form pairs: a model to carry three-body terms in tests."""
    r = sympy.Symbol("r", positive=True)
    expressions = {"OO": 3.0 * sympy.exp(-2.0 * r), "OH": -1.0 / r + 0.5 * sympy.exp(-3.0 * r),
                   "HH": 0.4 * sympy.exp(-1.5 * r)}
    return Model.closed_form(expressions, SPECIES, 4.5, {"OO": 2.2, "OH": 0.85, "HH": 1.3}, threebody=threebody_term)


@pytest.fixture(scope="module")
def water(shipped_dataset):
    return shipped_dataset


def test_triplet_table_lists_every_triplet_once_with_its_angle(water):
    positions, cell = water.positions[0][:30], water.cell[0]
    types = threebody.species_types(water.species[:30], SPECIES)
    table = threebody.triplet_table(positions, cell, types, R3, 2)
    found = {}
    for k, j, l, r1, r2, cos in zip(table.k, table.j, table.l, table.r1, table.r2, table.cos):
        found[(k, frozenset((j, l)))] = (r1, r2, cos)
    expected = 0
    for k in range(30):
        for j, l in itertools.combinations([i for i in range(30) if i != k], 2):
            dj = positions[j] - positions[k]
            dl = positions[l] - positions[k]
            box = np.diag(cell)
            dj -= box * np.round(dj / box)
            dl -= box * np.round(dl / box)
            rj, rl = np.linalg.norm(dj), np.linalg.norm(dl)
            if rj < R3 and rl < R3:
                expected += 1
                r1, r2, cos = found[(k, frozenset((j, l)))]
                assert sorted((r1, r2)) == pytest.approx(sorted((rj, rl)), abs=1e-12)
                assert cos == pytest.approx(dj @ dl / (rj * rl), abs=1e-12)
    assert len(table.k) == expected > 100
    # canonical order: the first neighbour is never of a higher species than the second
    assert np.all(types[table.j] <= types[table.l])


@pytest.mark.parametrize("term", [random_table(), closed_form_term()], ids=["tabulated", "closed_form"])
def test_threebody_forces_are_minus_energy_gradient(water, term):
    model = pair_model(term)
    positions, cell = water.positions[3].copy(), water.cell[3]
    _, forces, _ = threebody.frame_energy_forces(model, positions, cell, water.species)
    step = 1e-5
    for atom in (0, 1, 2, 40, 77):
        for axis in range(3):
            plus, minus = positions.copy(), positions.copy()
            plus[atom, axis] += step
            minus[atom, axis] -= step
            e_plus = threebody.frame_energy_forces(model, plus, cell, water.species)[0]
            e_minus = threebody.frame_energy_forces(model, minus, cell, water.species)[0]
            assert forces[atom, axis] == pytest.approx(-(e_plus - e_minus) / (2 * step), abs=1e-6)


def test_threebody_forces_sum_to_zero_and_loss_sums_to_energy(water):
    term = random_table(1)
    triplet_forces = threebody.threebody_forces(term, water.positions, water.cell, water.species, frames=[5, 6])
    assert np.abs(triplet_forces).max() > 1e-2
    np.testing.assert_allclose(triplet_forces.sum(axis=1), 0.0, atol=1e-11)
    energy_ev, _, loss = threebody.frame_energy_forces(pair_model(term), water.positions[5], water.cell[5],
                                                       water.species)
    # each pair's u is in two atoms' losses, each triplet's w in its centre's only
    pair_only = threebody.frame_energy_forces(pair_model(), water.positions[5], water.cell[5], water.species)
    assert loss.sum() - pair_only[2].sum() == pytest.approx(energy_ev - pair_only[0], rel=1e-12)


def test_tabulated_threebody_term_vanishes_smoothly_at_its_cutoff():
    term = random_table(2)
    r_inside = np.array([R3 * (1 - 1e-6)])
    for t in range(6):
        w, g1, g2, gc = term.energy_gradient([t], r_inside, [1.0], [0.3])
        assert abs(w[0]) < 1e-15 and abs(g1[0]) < 1e-9 and abs(gc[0]) < 1e-15
        w, g1, g2, gc = term.energy_gradient([t], [R3 + 0.1], [1.0], [0.3])
        assert w[0] == g1[0] == g2[0] == gc[0] == 0.0


def test_joint_fit_recovers_a_known_threebody_law(water):
    """Forces made by a known three-body table (and no pair force) are matched on unseen frames."""
    truth = random_table(3)
    frames = np.arange(0, 1900, 100)  # spread out: close frames sample too few distinct configurations
    synthetic = water.forces.copy()
    synthetic[frames] = threebody.threebody_forces(truth, water.positions, water.cell, water.species, frames)
    fit = threebody.fit_manybody_tabulated(water.positions, synthetic, water.cell, water.species, SPECIES, frames,
                                           cutoff_angstrom=4.0, threebody_cutoff_angstrom=R3, n_radial=3,
                                           legendre_degree=2, smoothing=1e-10)
    check = [70, 1950]
    synthetic[check] = threebody.threebody_forces(truth, water.positions, water.cell, water.species, check)
    predicted = threebody.model_forces(Model.from_tabulated(fit.pair, threebody=fit.threebody), water.positions,
                                       water.cell, water.species, check)
    assert force_errors(predicted, synthetic[check], water.species)["all"]["relative"] < 1e-4


def test_manybody_force_matching_halves_the_pairwise_error_on_cp2k_water(water):
    train, valid = force_matching.split_frames(water.n_frames)
    frames, check = train[::64], valid[::40]
    arrays = (water.positions, water.forces, water.cell, water.species)
    pair = force_matching.fit_tabulated(*arrays, SPECIES, frames, smoothing=1e-5).model
    many = threebody.fit_manybody_tabulated(*arrays, SPECIES, frames, threebody_cutoff_angstrom=R3, smoothing=1e-5)
    pairwise = force_errors(threebody.model_forces(Model.from_tabulated(pair), water.positions, water.cell,
                                                   water.species, check),
                            water.forces[check], water.species)["all"]["relative"]
    model = Model.from_tabulated(many.pair, threebody=many.threebody)
    manybody = force_errors(threebody.model_forces(model, water.positions, water.cell, water.species, check),
                            water.forces[check], water.species)
    assert pairwise > 0.2
    assert manybody["all"]["relative"] < 0.12 and manybody["all"]["relative"] < 0.5 * pairwise


# --- model files and kernels ---------------------------------------------------------------------------


@pytest.mark.parametrize("term", [random_table(4), closed_form_term()], ids=["tabulated", "closed_form"])
def test_manybody_model_file_round_trips_to_the_same_forces(water, tmp_path, term):
    model = pair_model(term)
    loaded = load_model(model.save(tmp_path / "model.json"))
    assert loaded.is_many_body
    a = threebody.model_forces(model, water.positions, water.cell, water.species, [0])
    b = threebody.model_forces(loaded, water.positions, water.cell, water.species, [0])
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "law, says",
    [
        ("__import__('os').system('touch HACKED')", "only plain calls"),
        ("(c + 0.25)**2", "does not vanish smoothly"),
        ("exp(1/(r1 - 16/5))*exp(2/(r2 - 16/5))*c", "not symmetric"),
        ("exp(1/(r1 - 16/5))*exp(1/(r2 - 16/5))*r", "unknown name 'r'"),
    ],
)
def test_loading_refuses_bad_threebody_laws(tmp_path, monkeypatch, law, says):
    monkeypatch.chdir(tmp_path)
    data = pair_model(closed_form_term()).to_dict()
    data["threebody"]["triplet_types"]["HOH"]["expression"] = law
    path = tmp_path / "model.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ModelError) as error:
        load_model(path)
    assert str(error.value).startswith(str(path)) and "threebody" in str(error.value) and says in str(error.value)
    assert not (tmp_path / "HACKED").exists()


@pytest.fixture(scope="module", params=["tabulated", "closed_form"])
def manybody_kernels(request, tmp_path_factory):
    term = random_table(5) if request.param == "tabulated" else closed_form_term()
    model = pair_model(term)
    return model, load_kernel_module(codegen.write_kernels(model, tmp_path_factory.mktemp(request.param)))


def test_generated_triplet_kernel_is_symmetric_and_its_gradient_is_exact(manybody_kernels):
    model, kernels = manybody_kernels
    assert has_threebody(kernels) and kernels.THREEBODY_CUTOFF_ANGSTROM == R3
    rng = np.random.default_rng(0)
    step = 1e-6
    for tk, tj, tl in itertools.product((0, 1), repeat=3):
        for r1, r2, c in zip(rng.uniform(0.9, 3.1, 5), rng.uniform(0.9, 3.1, 5), rng.uniform(-0.95, 0.95, 5)):
            w, g1, g2, gc = kernels.triplet_energy_gradient(tk, tj, tl, r1, r2, c)
            ws, g1s, g2s, gcs = kernels.triplet_energy_gradient(tk, tl, tj, r2, r1, c)
            assert (ws, g1s, g2s, gcs) == pytest.approx((w, g2, g1, gc), rel=1e-12, abs=1e-15)
            numeric = [(kernels.triplet_energy_gradient(tk, tj, tl, *(x + step * e))[0]
                        - kernels.triplet_energy_gradient(tk, tj, tl, *(x - step * e))[0]) / (2 * step)
                       for x in [np.array([r1, r2, c])] for e in np.eye(3)]
            assert numeric == pytest.approx([g1, g2, gc], abs=1e-7)
            # and the kernel is the model's law
            t = threebody.triplet_type_index(tk, tj, tl, 2)
            p, q = (r1, r2) if tj <= tl else (r2, r1)
            expected = model.threebody.energy_gradient([t], [p], [q], [c])[0][0]
            assert w == pytest.approx(expected, rel=1e-10, abs=1e-15)


def test_generated_manybody_kernels_agree_with_model_and_simulator(water, manybody_kernels):
    model, kernels = manybody_kernels
    positions, box = water.positions[7].copy(), np.diag(water.cell[7]).copy()
    types = threebody.species_types(water.species, SPECIES)
    energy_ev, forces, loss = kernels.energy_forces(positions, types, box)
    expected = threebody.frame_energy_forces(model, positions, water.cell[7], water.species)
    assert energy_ev == pytest.approx(expected[0], rel=1e-11)
    np.testing.assert_allclose(forces, expected[1], atol=1e-10)
    np.testing.assert_allclose(loss, expected[2], atol=1e-10)
    neighbors = partition.neighbor_list(positions, box, energy.interaction_cutoff_angstrom(kernels), 1.0, half=False)
    result = energy.compute_forces(kernels, positions, types, neighbors)
    assert result.energy_ev == pytest.approx(energy_ev, rel=1e-11)
    np.testing.assert_allclose(result.forces_ev_per_angstrom, forces, atol=1e-10)
    np.testing.assert_allclose(result.atom_loss_ev, loss, atol=1e-10)
    np.testing.assert_allclose(forces.sum(axis=0), 0.0, atol=1e-10)


def water_pair_model(threebody_term=None) -> Model:
    """The closed-form pair laws of water fitted to the shipped CP2K data (models/default/pairwise)."""
    r = sympy.Symbol("r", positive=True)
    expressions = {"OO": 107.755 / r**5.55017,
                   "OH": -2.56297 * sympy.exp(-7.3799 * (r - 0.775804) ** 2) + 123.144 * sympy.exp(-4.46646 * r)
                   - 6.28085 * sympy.exp(-1.20871 * r),
                   "HH": 1.22404 / r**1.10274 + 0.0557404 * sympy.exp(-90.0255 * (r - 1.67601) ** 2)}
    return Model.closed_form(expressions, SPECIES, 4.88, {"OO": 2.46, "OH": 0.9, "HH": 1.36},
                             threebody=threebody_term)


def test_md_screen_catches_a_threebody_law_that_rewards_a_third_hydrogen(water):
    # w_HOH < 0 at bonded distances pays an O for every extra H–O–H triplet: H3O+ + OH− become favourable
    a = sympy.nsimplify(R3)
    bonded = (1 - (R1 / a) ** 2) ** 3 * (1 - (R2 / a) ** 2) ** 3 * sympy.exp(-4 * (R1 - 1) ** 2 - 4 * (R2 - 1) ** 2)
    greedy = threebody.ThreeBodyLaws(SPECIES, R3, {"HOH": -1.5 * bonded})
    box = np.diag(water.cell[0])
    args = (water.positions[0], box, water.species, water.velocities[0])
    assert threebody.broken_water_fraction(water_pair_model(), *args, steps=1000) == 0.0
    assert threebody.broken_water_fraction(water_pair_model(greedy), *args, steps=1000) > 0.1


def test_family_selection_skips_candidates_that_break_molecules():
    def row(family, n, error, broken=None):
        out = {"family": family, "n_parameters": n, "status": "ok", "validation_relative_all": error}
        return out if broken is None else {**out, "md_broken_oxygen_fraction": broken}

    unscreened = [row("sw", 34, 0.18), row("quadratic", 48, 0.105), row("cubic", 54, 0.100)]
    assert threebody.select_family(unscreened, 0.03)["family"] == "cubic"  # quadratic is 5 % worse
    assert threebody.select_family(unscreened, 0.06)["family"] == "quadratic"  # fewest constants in tolerance
    screened = [row("sw", 34, 0.18, 0.0), row("quadratic", 48, 0.105, 0.0), row("cubic", 54, 0.100, 0.09)]
    assert threebody.select_family(screened, 0.03)["family"] == "quadratic"
    all_broken = [row("sw", 34, 0.18, 0.2), row("quadratic", 48, 0.105, 0.03), row("cubic", 54, 0.100, 0.09)]
    assert threebody.select_family(all_broken, 0.03)["family"] == "quadratic"
    failed = [{**row("cubic", 54, 0.1, 0.0), "status": "not finite"}]
    with pytest.raises(threebody.ThreeBodyError):
        threebody.select_family(failed)
