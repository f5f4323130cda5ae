"""Molecular topology: molecules from bonds, dissociation checks, and molecular (intra/inter) pair models.

A molecular model's intramolecular laws must be learned apart from the intermolecular ones: with
forces from a known law whose O–H bond (Morse) and H–O–H spring (harmonic H–H) act only inside a
molecule, the molecular fit recovers every law, and an atomic fit cannot.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from typer.testing import CliRunner

from discover import codegen, topology
from discover.cli import app
from discover.force_matching import fit_tabulated, split_frames
from discover.invariants import molecular_typing, pair_table, species_types
from discover.metrics import force_errors, pair_model_forces
from discover.model import Model, ModelError
from simulate import topology as simulate_topology
from simulate.kernels import load_kernel_module

SPECIES = ("O", "H")
CUTOFF = 4.8
BOND_CUTOFFS = {"OO": 1.716, "OH": 1.261, "HH": 0.806}
NAMES = ("OO", "OH", "HH", "OH_intra", "HH_intra")

COULOMB_EV_ANGSTROM = 14.399645
CHARGE_PRODUCT = {0: 0.64, 1: -0.32, 2: 0.16}
SCREENING_PER_ANGSTROM = 0.8


def _raw(t, r):
    """u and du/dr of the known molecular law: screened charges between molecules (plus LJ for O–O),
    a Morse O–H bond and a harmonic H–H spring inside a molecule."""
    if t == 3:
        x = np.exp(-2.2 * (r - 0.97))
        return 4.5 * (1 - x) ** 2, 2 * 4.5 * 2.2 * x * (1 - x)
    if t == 4:
        return 3.0 * (r - 1.55) ** 2, 6.0 * (r - 1.55)
    q = CHARGE_PRODUCT[t]
    screen = np.exp(-SCREENING_PER_ANGSTROM * r)
    u = COULOMB_EV_ANGSTROM * q * screen / r
    du = -COULOMB_EV_ANGSTROM * q * screen * (1.0 / r**2 + SCREENING_PER_ANGSTROM / r)
    if t == 0:
        s6 = (3.166 / r) ** 6
        u, du = u + 4 * 0.0067 * (s6 * s6 - s6), du + 4 * 0.0067 * (-12 * s6 * s6 + 6 * s6) / r
    return u, du


def known_law(t, r):
    """u(r), f(r): shifted force between molecules, as it is inside them."""
    u, du = _raw(t, r)
    if t >= 3:
        return u, -du
    u_c, du_c = _raw(t, CUTOFF)
    return u - u_c - (r - CUTOFF) * du_c, -(du - du_c)


def known_force_over_r(pair_type, r):
    out = np.zeros_like(r)
    for t in range(5):
        mine = pair_type == t
        out[mine] = known_law(t, r[mine])[1] / r[mine]
    return out


@pytest.fixture(scope="module")
def water(shipped_dataset):
    return shipped_dataset


@pytest.fixture(scope="module")
def typing(water):
    return topology.dataset_typing(water.positions, water.cell, water.species, SPECIES, BOND_CUTOFFS,
                                   frames=np.arange(0, water.n_frames, 40))


@pytest.fixture(scope="module")
def synthetic(water, typing):
    """Real configurations (every 40th frame) with forces from the known molecular law."""
    train, validation = split_frames(water.n_frames)
    frames = np.concatenate([train[::40], validation[::40]])
    forces = pair_model_forces(water.positions, water.cell, water.species, SPECIES, CUTOFF, known_force_over_r,
                               frames, typing=typing)
    return frames, forces, len(train[::40])


# --- molecules ------------------------------------------------------------------------------


def test_real_water_frame_has_32_molecules_of_one_oxygen_and_two_hydrogens(water, typing):
    molecules = typing.molecules
    types = species_types(water.species, SPECIES)
    assert molecules.max() + 1 == 32
    for m in range(32):
        members = np.flatnonzero(molecules == m)
        assert sorted(types[members].tolist()) == [0, 1, 1]
    i, j = simulate_topology.intramolecular_pairs(molecules)
    assert len(i) == 96 and np.all(molecules[i] == molecules[j]) and np.all(i < j)
    assert typing.pair_types == NAMES


def _with_frame(water, frame, positions):
    """(positions, cells) of two frames: ``frame`` as it is, then with ``positions``."""
    return np.stack([water.positions[frame], positions]), np.stack([water.cell[frame]] * 2)


def test_a_proton_moved_to_another_water_is_a_dissociation_naming_frame_and_atoms(water):
    types = species_types(water.species, SPECIES)
    positions = water.positions[0].copy()
    box = np.diag(water.cell[0])
    molecules = simulate_topology.assign_molecules(positions, box, types, topology.bond_matrix(BOND_CUTOFFS, SPECIES))
    # move H 1 onto the nearest oxygen of another molecule, 1.0 Å from it
    oxygens = np.flatnonzero((types == 0) & (molecules != molecules[1]))
    d = positions[oxygens] - positions[1]
    d -= box * np.round(d / box)
    target = oxygens[np.argmin(np.linalg.norm(d, axis=1))]
    moved = positions.copy()
    moved[1] = positions[target] + np.array([1.0, 0.0, 0.0])
    pos, cells = _with_frame(water, 0, moved)
    with pytest.raises(topology.TopologyError) as info:
        topology.dataset_molecules(pos, cells, water.species, SPECIES, BOND_CUTOFFS, label="data.npz")
    message = str(info.value)
    assert "data.npz: frame 1:" in message and "H1" in message and f"molecule {molecules[target]}" in message
    assert "\n" not in message


def test_a_hydrogen_torn_off_its_molecule_is_a_dissociation(water):
    moved = water.positions[0].copy()
    box = np.diag(water.cell[0])
    # H1 to the point of a grid farthest from every other atom: bonded to nothing
    grid = np.stack(np.meshgrid(*[np.linspace(0, L, 12, endpoint=False) for L in box]), -1).reshape(-1, 3)
    d = grid[:, None, :] - np.delete(moved, 1, axis=0)[None]
    d -= box * np.round(d / box)
    moved[1] = grid[np.argmax(np.linalg.norm(d, axis=2).min(axis=1))]
    pos, cells = _with_frame(water, 0, moved)
    with pytest.raises(topology.TopologyError, match="broke apart"):
        topology.dataset_molecules(pos, cells, water.species, SPECIES, BOND_CUTOFFS)


def test_intact_frames_pass_the_dissociation_check(water):
    molecules = topology.dataset_molecules(water.positions, water.cell, water.species, SPECIES, BOND_CUTOFFS,
                                           frames=np.arange(0, water.n_frames, 10))
    assert molecules.max() + 1 == 32


def test_bonds_match_a_brute_force_minimum_image_search(water):
    types = species_types(water.species, SPECIES)
    matrix = topology.bond_matrix({"OO": 2.9, "OH": 1.9, "HH": 1.7}, SPECIES)  # many bonds, across the box too
    positions = water.positions[7]
    i, j = simulate_topology.bonds(positions, water.cell[7], types, matrix)
    pairs = pair_table(positions, water.cell[7], types, 2.9, 2)
    keep = pairs.r < matrix[types[pairs.i], types[pairs.j]]
    assert set(zip(i.tolist(), j.tolist())) == set(zip(pairs.i[keep].tolist(), pairs.j[keep].tolist()))
    assert len(i) > 100


# --- learning a molecular law ------------------------------------------------------------------


def test_molecular_force_matching_recovers_intra_and_intermolecular_laws(water, typing, synthetic):
    frames, forces, n_train = synthetic
    fit = fit_tabulated(water.positions[frames], forces, water.cell[frames], water.species, SPECIES,
                        np.arange(n_train), cutoff_angstrom=CUTOFF, typing=typing)
    model = fit.model
    assert model.pair_types == NAMES
    for t in range(5):
        r = np.linspace(model.r_min_angstrom[t], model.r_end(t), 200)
        u, f = model.energy_and_force(t, r)
        u_true, f_true = known_law(t, r)
        # energies up to a constant for the bonded laws (their zero is at r_max)
        offset = np.mean(u - u_true) if t >= 3 else 0.0
        scale = np.abs(u_true - u_true.mean()).max() if t >= 3 else np.abs(u_true).max()
        assert np.sqrt(np.mean((u - offset - u_true) ** 2)) < 0.01 * scale, NAMES[t]
        assert np.sqrt(np.mean((f - f_true) ** 2)) < 0.02 * np.abs(f_true).max(), NAMES[t]
    predicted = pair_model_forces(water.positions[frames], water.cell[frames], water.species, SPECIES, CUTOFF,
                                  model.force_over_r, np.arange(n_train, len(frames)), typing=typing)
    errors = force_errors(predicted, forces[n_train:], water.species)
    assert errors["all"]["relative"] < 0.01
    # an atomic model, one law per species pair, cannot tell the bond from the hydrogen bond
    atomic = fit_tabulated(water.positions[frames], forces, water.cell[frames], water.species, SPECIES,
                           np.arange(n_train), cutoff_angstrom=CUTOFF).model
    predicted = pair_model_forces(water.positions[frames], water.cell[frames], water.species, SPECIES, CUTOFF,
                                  atomic.force_over_r, np.arange(n_train, len(frames)))
    assert force_errors(predicted, forces[n_train:], water.species)["all"]["relative"] > 10 * errors["all"]["relative"]


def test_bonded_law_continues_with_a_restoring_outer_wall(water, typing, synthetic):
    frames, forces, n_train = synthetic
    model = fit_tabulated(water.positions[frames], forces, water.cell[frames], water.species, SPECIES,
                          np.arange(n_train), cutoff_angstrom=CUTOFF, typing=typing).model
    t = NAMES.index("OH_intra")
    r_max = model.r_end(t)
    r = np.linspace(r_max, r_max + 1.5, 300)
    u, f = model.energy_and_force(t, r)
    assert np.all(np.diff(u) > 0) and np.all(f[1:] < 0)  # ever higher, pulling back
    # C¹ at r_max
    eps = 1e-7
    u_in, f_in = model.energy_and_force(t, np.array([r_max - eps]))
    u_out, f_out = model.energy_and_force(t, np.array([r_max + eps]))
    assert abs(u_in[0] - u_out[0]) < 1e-5 and abs(f_in[0] - f_out[0]) < 1e-4


# --- a molecular model as a file and as kernels -------------------------------------------------------


def _closed_form_truth() -> Model:
    """The known law as a closed-form molecular model (no cores or walls inside the test range)."""
    expressions = {
        "OO": "14.399645*0.64*exp(-0.8*r)/r + 0.0268*((3.166/r)**12 - (3.166/r)**6)",
        "OH": "-14.399645*0.32*exp(-0.8*r)/r",
        "HH": "14.399645*0.16*exp(-0.8*r)/r",
        "OH_intra": "4.5*(1 - exp(-2.2*(r - 0.97)))**2",
        "HH_intra": "3.0*(r - 1.55)**2",
    }
    from discover.model import parse_expression

    return Model.closed_form({n: parse_expression(e) for n, e in expressions.items()}, SPECIES, CUTOFF,
                             {"OO": 2.0, "OH": 1.2, "HH": 1.0, "OH_intra": 0.6, "HH_intra": 1.0},
                             r_max_angstrom={"OH_intra": 1.6, "HH_intra": 2.2}, bond_cutoff_angstrom=BOND_CUTOFFS)


def test_closed_form_molecular_model_equals_the_known_law_and_survives_json(tmp_path, water, typing):
    model = _closed_form_truth()
    r = np.linspace(2.5, 4.7, 50)
    for t in range(5):
        rr = r if t < 3 else np.linspace(1.0, 1.5, 50) if t == 3 else np.linspace(1.2, 2.1, 50)
        u, f = model.energy_and_force(t, rr)
        u_true, f_true = known_law(t, rr)
        if t >= 3:  # a bonded law is zero at its r_max
            u_true = u_true - known_law(t, np.array([model.r_max_angstrom[NAMES[t]]]))[0][0]
        assert np.allclose(u, u_true, atol=1e-9) and np.allclose(f, f_true, atol=1e-8)
    path = model.save(tmp_path / "model.json")
    again = Model.load(path)
    assert again.pair_types == NAMES and again.is_molecular and again.bond_cutoff_angstrom == BOND_CUTOFFS
    assert again.r_max_angstrom == model.r_max_angstrom


@pytest.mark.parametrize("damage, message", [
    (lambda d: d["topology"].update(kind="rings"), "topology.kind"),
    (lambda d: d["topology"]["bond_cutoff_angstrom"].update(OX=1.0), "'OX' is not one of"),
    (lambda d: d["pair_types"].update(OC_intra=d["pair_types"]["OH_intra"]), "pair_types"),
    (lambda d: d["pair_types"]["HH_intra"].pop("r_max_angstrom"), "HH_intra.r_max_angstrom"),
    (lambda d: d.pop("topology"), "pair_types: expected exactly OO, OH, HH"),
])
def test_malformed_molecular_model_files_are_refused_with_one_line(damage, message):
    data = _closed_form_truth().to_dict()
    damage(data)
    with pytest.raises(ModelError) as info:
        Model.from_dict(data, label="m.json")
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.fixture(scope="module")
def molecular_kernels(tmp_path_factory):
    model = _closed_form_truth()
    return model, load_kernel_module(codegen.write_kernels(model, tmp_path_factory.mktemp("k") / "kernels.py"))


def test_molecular_kernels_match_the_model_and_obey_newton(water, typing, molecular_kernels):
    model, kernels = molecular_kernels
    types = species_types(water.species, SPECIES)
    frame = 11
    energy, forces, loss = kernels.energy_forces(water.positions[frame], types, np.diag(water.cell[frame]),
                                                 typing.molecules)
    expected = pair_model_forces(water.positions, water.cell, water.species, SPECIES, CUTOFF, model.force_over_r,
                                 [frame], typing=typing)[0]
    assert np.allclose(forces, expected, atol=1e-9)
    assert np.allclose(forces.sum(axis=0), 0.0, atol=1e-9)
    assert np.isclose(0.5 * loss.sum(), energy)
    assert kernels.TOPOLOGY == "molecular" and kernels.INTRA_PAIR_TYPES == ((False, True), (True, True))


def test_molecular_kernel_forces_are_minus_the_energy_gradient_across_walls(water, typing, molecular_kernels):
    _model, kernels = molecular_kernels
    # a stretched bond (outer wall) and a squeezed one (core) in one frame
    types = species_types(water.species, SPECIES)
    positions = water.positions[0].copy()
    box = np.diag(water.cell[0])
    d = positions[1] - positions[0]
    positions[1] = positions[0] + d / np.linalg.norm(d) * 1.75  # beyond OH_intra r_max 1.6
    d = positions[2] - positions[0]
    positions[2] = positions[0] + d / np.linalg.norm(d) * 0.5  # below OH_intra r_min 0.6
    _, forces, _ = kernels.energy_forces(positions, types, box, typing.molecules)
    h = 1e-6
    for atom in (0, 1, 2, 5):
        for axis in range(3):
            plus, minus = positions.copy(), positions.copy()
            plus[atom, axis] += h
            minus[atom, axis] -= h
            e_plus = kernels.energy_forces(plus, types, box, typing.molecules)[0]
            e_minus = kernels.energy_forces(minus, types, box, typing.molecules)[0]
            assert abs(-(e_plus - e_minus) / (2 * h) - forces[atom, axis]) < 1e-5 * max(1.0, abs(forces[atom, axis]))


def test_molecular_model_exports_to_ase_and_is_refused_by_openmm_and_c(tmp_path, water, typing, molecular_kernels):
    from ase.io import read

    from discover.export import ExportError, Frame, export_model
    from discover.export.ase_calculator import MldCalculator

    model, kernels = molecular_kernels
    for kind in ("openmm", "c"):
        with pytest.raises(ExportError, match="molecular topology") as info:
            export_model(kind, model, tmp_path / kind, Frame.from_dataset(water, 0))
        assert "\n" not in str(info.value)
    written = export_model("ase", model, tmp_path / "ase", Frame.from_dataset(water, 0))
    atoms = read(written[1])
    atoms.calc = MldCalculator(written[0])
    types = species_types(water.species, SPECIES)
    _, forces, _ = kernels.energy_forces(water.positions[0], types, np.diag(water.cell[0]), typing.molecules)
    assert np.allclose(atoms.get_forces(), forces, atol=1e-9)


# --- the command line -------------------------------------------------------------------------


def test_discover_topology_molecular_writes_a_molecular_model(tmp_path, shipped_dataset):
    path = tmp_path / "small.npz"
    shipped_dataset.select(slice(None, None, 24)).save(path)
    out = tmp_path / "model"
    result = CliRunner().invoke(app, ["discover", str(path), "--out", str(out), "--budget", "quick",
                                      "--engine", "library", "--topology", "molecular"])
    assert result.exit_code == 0, result.output
    model = Model.load(out / "model.json")
    assert model.is_molecular and model.pair_types == NAMES and not model.is_many_body
    kernels = load_kernel_module(out / "kernels.py")
    assert kernels.TOPOLOGY == "molecular"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["topology"] == "molecular" and set(metrics["models"]) == {"tabulated", "closed_form",
                                                                            "quadratic_baseline"}
    assert "u_OH_intra" in (out / "equations.md").read_text()
    evaluated = CliRunner().invoke(app, ["evaluate", str(out), str(path), "--json", str(tmp_path / "e.json")])
    assert evaluated.exit_code == 0, evaluated.output


def test_unknown_topology_is_one_line_error(tmp_path, shipped_dataset_path):
    result = CliRunner().invoke(app, ["discover", str(shipped_dataset_path), "--out", str(tmp_path / "m"),
                                      "--topology", "rings"])
    assert result.exit_code != 0
    assert "--topology 'rings'" in result.output and "Traceback" not in result.output


def test_molecular_typing_refuses_a_pair_without_a_law():
    types = np.array([0, 1, 1, 0, 1, 1])
    molecules = np.array([0, 0, 0, 1, 1, 1])
    typing = molecular_typing(SPECIES, types, molecules, ("OO", "OH", "HH", "OH_intra"))
    with pytest.raises(ValueError, match="intramolecular HH pair"):
        typing.index(types[[1]], types[[2]], np.array([1]), np.array([2]), 2)


def test_a_bond_law_without_the_bond_minimum_is_rejected():
    from discover.model import parse_expression
    from discover.refit import check_equilibrium

    spring = parse_expression("3.0*(r - 1.55)**2")
    repulsion = parse_expression("408600.0*exp(-10.8805*r)")  # the kind of law that once won on force error
    assert check_equilibrium(spring, 1.56, 1.36, 1.70) == ""
    assert "no equilibrium" in check_equilibrium(repulsion, 1.56, 1.36, 1.70)
    assert "no equilibrium" in check_equilibrium(spring, 1.45, 1.36, 1.70)  # minimum in the wrong place


# --- the simulator runs molecular kernels ---------------------------------------------------------


def test_simulator_forces_of_a_molecular_model_equal_the_reference_small_and_replicated(water, molecular_kernels):
    from simulate import energy, setup

    _, kernels = molecular_kernels
    for repeats in ((1, 1, 1), (2, 2, 2)):
        positions, species, box = setup.replicate(water.positions[3], water.species, np.diag(water.cell[3]), repeats)
        types = species_types(species, SPECIES)
        molecules = simulate_topology.assign_molecules(positions, box, types, np.asarray(kernels.BOND_CUTOFF_ANGSTROM))
        assert molecules.max() + 1 == 32 * int(np.prod(repeats))
        _, result = energy.make_force_fn(kernels, types, box, molecules=molecules)(positions)
        e_ref, f_ref, loss_ref = kernels.energy_forces(positions, types, box, molecules)
        assert np.allclose(result.forces_ev_per_angstrom, f_ref, atol=1e-9)
        assert np.isclose(result.energy_ev, e_ref, rtol=1e-12)
        assert np.allclose(result.atom_loss_ev, loss_ref, atol=1e-9)


def test_a_molecular_kernel_without_molecules_or_with_an_unknown_pair_is_refused(water, molecular_kernels):
    from simulate import energy

    _, kernels = molecular_kernels
    types = species_types(water.species, SPECIES)
    with pytest.raises(simulate_topology.MoleculeError, match="molecule of every atom"):
        energy.make_force_fn(kernels, types, np.diag(water.cell[0]))
    one_molecule = np.zeros(len(types), dtype=np.int64)  # O–O pairs inside a molecule: no law for them
    with pytest.raises(simulate_topology.MoleculeError, match="no intramolecular law"):
        energy.make_force_fn(kernels, types, np.diag(water.cell[0]), molecules=one_molecule)


def test_molecular_md_conserves_energy_and_momentum_and_keeps_molecules(tmp_path, water, molecular_kernels):
    import pandas as pd

    from simulate import md

    _, kernels = molecular_kernels
    result = md.simulate(kernels, water.species, water.positions[0], np.diag(water.cell[0]),
                         water.velocities[0], steps=2000, dt_fs=0.25, thermostat="nve", out_dir=tmp_path,
                         thermo_every=20, trajectory_every=200)
    thermo = pd.read_csv(result.thermo_path)
    conserved = thermo["conserved_ev"].to_numpy()
    assert np.ptp(conserved) / len(water.species) < 1e-4
    masses = np.asarray(kernels.MASSES_AMU)[species_types(water.species, SPECIES)]
    assert np.abs((masses[:, None] * result.state.velocities).sum(axis=0)).max() < 1e-10
    types = species_types(water.species, SPECIES)
    assert simulate_topology.dissociation(result.state.positions, np.diag(water.cell[0]), types,
                                          simulate_topology.assign_molecules(
                                              water.positions[0], np.diag(water.cell[0]), types,
                                              np.asarray(kernels.BOND_CUTOFF_ANGSTROM)),
                                          np.asarray(kernels.BOND_CUTOFF_ANGSTROM)) is None
    # the engine's timing (the report's speed) of a molecular model finds its molecules as a run does
    seconds = md.engine_seconds_per_step(kernels, water.species, water.positions[0], np.diag(water.cell[0]),
                                         water.velocities[0], steps=20, dt_fs=0.25, lead_steps=2)
    assert 0 < seconds < 1


def test_lammps_runs_a_molecular_model_with_the_forces_of_mld(tmp_path, water, typing):
    from discover.export import Frame, export_model
    from discover.export.lammps import DUMP_FILE, read_dump
    from tests.export_support import lammps_missing_reason, run_lammps

    reason = lammps_missing_reason()
    if reason:
        pytest.skip(reason)
    # the learned-looking law of a real molecular fit: tabulated, walls and all
    frames = np.arange(0, 600, 60)
    fit = fit_tabulated(water.positions[frames], water.forces[frames], water.cell[frames], water.species, SPECIES,
                        np.arange(len(frames)), cutoff_angstrom=CUTOFF, typing=typing)
    model = Model.from_tabulated(fit.model, bond_cutoff_angstrom=BOND_CUTOFFS)
    frame = Frame.from_dataset(water, 5)
    written = export_model("lammps", model, tmp_path, frame, ensemble="nve", steps=0, dump_every=1)
    assert {p.name for p in written} >= {"mld.table", "mld_bonds.table", "data.lmp", "in.lammps"}
    run_lammps(tmp_path)
    (_, dump), = read_dump(tmp_path / DUMP_FILE)
    forces = np.c_[dump["fx"], dump["fy"], dump["fz"]]
    kernels = load_kernel_module(codegen.write_kernels(model, tmp_path / "k" / "kernels.py"))
    types = species_types(water.species, SPECIES)
    energy, reference, _ = kernels.energy_forces(water.positions[5], types, np.diag(water.cell[5]), typing.molecules)
    assert np.abs(forces - reference).max() / np.abs(reference).max() < 1e-4
    assert abs(dump["c_pe_atom"].sum() - energy) / abs(energy) < 1e-4


# --- review fixes: refusals, resume, dissociation in MD -------------------------------------------


def test_a_molecular_model_cannot_carry_a_threebody_term():
    from tests.export_support import manybody_water_model

    data = _closed_form_truth().to_dict()
    data["threebody"] = manybody_water_model().to_dict()["threebody"]
    with pytest.raises(ModelError, match="molecular model is pairwise") as info:
        Model.from_dict(data, label="m.json")
    assert "\n" not in str(info.value)


def test_a_tabulated_molecular_model_with_reordered_laws_is_refused(water, typing, synthetic):
    frames, forces, n_train = synthetic
    fit = fit_tabulated(water.positions[frames], forces, water.cell[frames], water.species, SPECIES,
                        np.arange(n_train), cutoff_angstrom=CUTOFF, typing=typing)
    data = Model.from_tabulated(fit.model, bond_cutoff_angstrom=BOND_CUTOFFS).to_dict()
    assert Model.from_dict(data).pair_types == NAMES
    pairs = data["pair_types"]
    data["pair_types"] = {n: pairs[n] for n in ("OO", "OH", "HH", "HH_intra", "OH_intra")}
    data["tabulated"]["pair_types"] = ["OO", "OH", "HH", "HH_intra", "OH_intra"]
    with pytest.raises(ModelError, match="pair_types"):
        Model.from_dict(data, label="m.json")


def test_evaluating_a_molecular_model_without_a_needed_law_is_one_line(tmp_path, shipped_dataset):
    data = _closed_form_truth().to_dict()
    del data["pair_types"]["HH_intra"]
    path = tmp_path / "model.json"
    path.write_text(json.dumps(data))
    small = tmp_path / "small.npz"
    shipped_dataset.select(slice(0, 3)).save(small)
    result = CliRunner().invoke(app, ["evaluate", str(path), str(small)])
    assert result.exit_code == 1
    assert "intramolecular HH pair" in result.output and str(small) in result.output
    assert "Traceback" not in result.output


def test_a_resumed_molecular_run_continues_bit_for_bit(tmp_path, water, molecular_kernels):
    from simulate import md

    _, kernels = molecular_kernels
    common = {"dt_fs": 0.5, "thermostat": "nose-hoover", "thermo_every": 50, "trajectory_every": 100,
              "checkpoint_every": 100}
    start = (kernels, water.species, water.positions[0], np.diag(water.cell[0]), water.velocities[0])
    whole = md.simulate(*start, steps=300, out_dir=tmp_path / "whole", **common)
    md.simulate(*start, steps=200, out_dir=tmp_path / "split", **common)
    # the resumed run is given another starting frame: the checkpoint's molecules are used, not its
    resumed = md.simulate(kernels, water.species, water.positions[50], np.diag(water.cell[0]), water.velocities[0],
                          steps=300, out_dir=tmp_path / "split", resume=True, **common)
    assert np.array_equal(whole.state.positions, resumed.state.positions)


def test_a_dissociation_in_md_stops_the_run_naming_step_and_atoms(tmp_path, water):
    from simulate import md

    # bond cutoff 1.7 Å for O–H: a hydrogen bond that closes below it counts as a new bond, as a proton
    # transfer would (the CP2K run itself has one at frame 140)
    model = _closed_form_truth()
    model.bond_cutoff_angstrom = {**BOND_CUTOFFS, "OH": 1.7}
    kernels = load_kernel_module(codegen.write_kernels(model, tmp_path / "k" / "kernels.py"))
    with pytest.raises(md.SimulationBlowUp) as info:
        md.simulate(kernels, water.species, water.positions[0], np.diag(water.cell[0]), water.velocities[0],
                    steps=4000, dt_fs=0.5, thermostat="nose-hoover", out_dir=tmp_path / "run", trajectory_every=10)
    message = str(info.value)
    assert message.startswith("step ") and "bonded to" in message and "\n" not in message
    a, b = (int(x) for x in re.findall(r"[OH](\d+) of molecule", message))
    species = np.asarray(water.species)
    names = re.findall(r"([OH])\d+ of molecule", message)
    assert [species[a], species[b]] == names  # the atoms named carry their own element


def test_the_ase_calculator_refuses_a_structure_whose_molecules_changed(tmp_path, water, molecular_kernels):
    from ase import Atoms

    from discover.export import ExportError
    from discover.export.ase_calculator import MldCalculator

    _, kernels = molecular_kernels
    atoms = Atoms(symbols=list(water.species), positions=water.positions[0], cell=np.diag(water.cell[0]), pbc=True)
    atoms.calc = MldCalculator(kernels)
    atoms.get_forces()
    moved = atoms.copy()
    moved.calc = atoms.calc
    types = species_types(water.species, SPECIES)
    oxygen = int(np.flatnonzero(types == 0)[5])
    moved.positions[1] = moved.positions[oxygen] + np.array([0.0, 0.0, 1.0])  # H1 onto another water's O
    with pytest.raises(ExportError, match="bonded to"):
        moved.get_forces()


def test_compiled_molecular_run_is_bit_for_bit_the_stepwise_integrator(tmp_path, water, molecular_kernels):
    """The compiled multi-step block runs the bonded pass too: md.simulate equals plain step() calls."""
    from simulate import energy, md, setup

    _, kernels = molecular_kernels
    types = species_types(water.species, SPECIES)
    box = np.diag(water.cell[0])
    masses = np.asarray(kernels.MASSES_AMU)[types]
    molecules = simulate_topology.assign_molecules(water.positions[0], box, types,
                                                   np.asarray(kernels.BOND_CUTOFF_ANGSTROM))
    result = md.simulate(kernels, water.species, water.positions[0], box, water.velocities[0], steps=150, dt_fs=0.5,
                         thermostat="nose-hoover", out_dir=tmp_path, thermo_every=7, trajectory_every=50,
                         checkpoint_every=1000)
    force_fn = energy.make_force_fn(kernels, types, box, molecules=molecules)
    integrator = md.make_integrator(force_fn, "nose-hoover", 0.5, 300.0, 100.0, 0.01, 0)
    assert integrator.run is not None  # md.simulate took the compiled path
    state = integrator.init(water.positions[0], setup.remove_com_momentum(water.velocities[0], masses), masses)
    for _ in range(150):
        state = integrator.step(state)
    assert np.array_equal(result.state.positions, state.positions)
    assert np.array_equal(result.state.force.atom_loss_ev, state.force.atom_loss_ev)
    assert result.state.force.energy_ev == state.force.energy_ev
