"""ASE export: MldCalculator honours the Calculator contract and drives ASE's MD like the reference NVE."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from ase import Atoms, units
from ase.calculators.calculator import PropertyNotImplementedError
from ase.io import read
from ase.md.verlet import VelocityVerlet

from discover import threebody
from discover.codegen import kernel_source
from discover.export import ExportError, export_model
from discover.export.ase_calculator import MldCalculator, frame_atoms
from discover.model import Model
from tests.export_support import (
    MORSE_WATER,
    manybody_water_model,
    morse_kernels,
    morse_water_expressions,
    morse_water_model,
    velocity_verlet,
    water_frame,
)


@pytest.fixture(scope="module")
def kernels():
    return morse_kernels()


@pytest.fixture(scope="module")
def frame():
    return water_frame()


def test_results_are_the_kernel_numbers(kernels, frame):
    atoms = frame_atoms(frame)
    atoms.calc = MldCalculator(MORSE_WATER)
    energy, forces, loss = kernels.energy_forces(frame.positions_angstrom, frame.types(kernels.SPECIES),
                                                 frame.box_angstrom)
    assert atoms.get_potential_energy() == energy
    np.testing.assert_array_equal(atoms.get_forces(), forces)
    np.testing.assert_array_equal(atoms.calc.get_property("agent_loss", atoms), loss)
    # per-atom energies sum to the total: each pair's u is split half and half
    assert atoms.get_potential_energies().sum() == pytest.approx(energy, rel=1e-13)
    assert atoms.calc.get_property("free_energy", atoms) == energy


def test_results_follow_the_atoms_when_they_move(kernels, frame):
    atoms = frame_atoms(frame)
    atoms.calc = MldCalculator(kernels)
    before = atoms.get_potential_energy()
    atoms.positions[0] += [0.05, 0.0, 0.0]
    assert atoms.get_potential_energy() != before  # check_state saw the change and recalculated


def test_forces_are_minus_the_energy_gradient_without_pbc(kernels):
    # a non-periodic water dimer: forces from the calculator equal central finite differences
    atoms = Atoms("OH2OH2", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0],
                                        [2.9, 0.1, 0.2], [3.3, 0.9, 0.1], [3.3, -0.7, 0.3]], pbc=False)
    atoms.calc = MldCalculator(kernels)
    forces = atoms.get_forces()
    h = 1e-5
    for k in range(len(atoms)):
        for c in range(3):
            shifted = atoms.copy()
            shifted.calc = atoms.calc
            shifted.positions[k, c] += h
            e_plus = shifted.get_potential_energy()
            shifted.positions[k, c] -= 2 * h
            e_minus = shifted.get_potential_energy()
            assert forces[k, c] == pytest.approx(-(e_plus - e_minus) / (2 * h), abs=1e-7)


def test_threebody_module_gives_loss_and_gradient_forces_but_no_split_energies():
    # with a three-body term the per-atom loss counts each triplet in full, so it cannot be halved
    atoms = Atoms("OH2OH2", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0],
                                        [2.9, 0.1, 0.2], [3.3, 0.9, 0.1], [3.3, -0.7, 0.3]], pbc=False)
    atoms.calc = MldCalculator(MORSE_WATER.with_name("sw_triplet.py"))
    with pytest.raises(PropertyNotImplementedError):
        atoms.get_potential_energies()
    loss = atoms.calc.get_property("agent_loss", atoms)
    # Σ_k H_k = 2 E_pair + Σ w = 2 E − Σ w, and w > 0 for the second molecule's off-ideal angle
    assert loss.sum() < 2 * atoms.get_potential_energy() - 1e-3
    forces = atoms.get_forces()
    h = 1e-5
    for k, c in [(0, 0), (1, 1), (2, 0), (2, 1)]:
        shifted = atoms.copy()
        shifted.calc = atoms.calc
        shifted.positions[k, c] += h
        e_plus = shifted.get_potential_energy()
        shifted.positions[k, c] -= 2 * h
        assert forces[k, c] == pytest.approx(-(e_plus - shifted.get_potential_energy()) / (2 * h), abs=1e-7)


def test_velocity_verlet_with_the_calculator_follows_the_reference(kernels, frame):
    dt_fs, steps = 0.5, 100
    atoms = frame_atoms(frame)
    atoms.calc = MldCalculator(kernels)
    types = frame.types(kernels.SPECIES)
    masses = atoms.get_masses()
    # ASE converts with CODATA 2014 (units.fs); the same constant in the reference isolates the calculator
    xs, vs, es = velocity_verlet(kernels.energy_forces, frame, types, masses, dt_fs, steps,
                                 acceleration_unit=units.fs**2)
    VelocityVerlet(atoms, timestep=dt_fs * units.fs).run(steps)
    # measured: 1e-12 Å with ASE's constant; 8e-8 Å against our CODATA 2018 one
    assert np.abs(atoms.get_positions() - xs[-1]).max() < 1e-9
    assert np.abs(atoms.get_velocities() * units.fs - vs[-1]).max() < 1e-9
    assert atoms.get_potential_energy() == pytest.approx(es[-1], abs=1e-8)


def test_unknown_element_and_partial_pbc_are_clear_errors(kernels):
    calc = MldCalculator(kernels)
    atoms = Atoms("OC", positions=[[0, 0, 0], [1.2, 0, 0]])
    atoms.calc = calc
    with pytest.raises(ExportError, match="element"):
        atoms.get_potential_energy()
    atoms = Atoms("OH", positions=[[0, 0, 0], [1.0, 0, 0]], cell=[10, 10, 10], pbc=[True, True, False])
    atoms.calc = calc
    with pytest.raises(ExportError, match="periodic in some directions"):
        atoms.get_potential_energy()
    with pytest.raises(PropertyNotImplementedError):
        atoms.calc.get_property("stress", atoms)


def test_ase_export_of_a_model_carries_its_generated_kernels(tmp_path):
    model = morse_water_model()
    paths = export_model("ase", model.save(tmp_path / "model.json"), tmp_path / "ase")
    assert [p.name for p in paths] == ["kernels.py"]
    assert (tmp_path / "ase" / "kernels.py").read_text() == kernel_source(model)


def test_ase_export_refuses_bare_expressions(tmp_path):
    with pytest.raises(ExportError, match="kernel module or a model"):
        export_model("ase", morse_water_expressions(), tmp_path)


def test_readme_example_ase_export_runs(frame, tmp_path):
    # the README example, with its defaults: 100 steps of 0.5 fs, a report every 10
    paths = export_model("ase", MORSE_WATER, tmp_path / "ase", frame=frame)
    assert sorted(p.name for p in paths) == ["kernels.py", "run_ase.py", "start.traj"]
    done = subprocess.run([sys.executable, "run_ase.py"], check=False, cwd=tmp_path / "ase", capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    rows = np.array([line.split() for line in done.stdout.splitlines()[1:]], dtype=float)
    assert list(rows[:, 0]) == list(range(0, 101, 10))
    kernels = morse_kernels()
    types = frame.types(kernels.SPECIES)
    _, _, energies = velocity_verlet(kernels.energy_forces, frame, types, np.asarray(kernels.MASSES_AMU)[types],
                                     0.5, 100, acceleration_unit=units.fs**2)
    # start.traj kept the frame and its velocities to the last bit: the script's run is the reference's
    np.testing.assert_allclose(rows[:, 1], energies[::10], rtol=1e-10)
    # the README's calculator lines
    atoms = read(tmp_path / "ase" / "start.traj")
    atoms.calc = MldCalculator(tmp_path / "ase" / "kernels.py")
    assert atoms.get_potential_energy() == energies[0]
    assert atoms.calc.get_property("agent_loss", atoms).sum() == pytest.approx(2 * energies[0], rel=1e-12)


# --- many-body models ----------------------------------------------------------------------------
def test_ase_export_of_a_manybody_model_gives_its_energy_forces_and_losses_on_real_water(frame, tmp_path):
    model = manybody_water_model()
    paths = export_model("ase", model.save(tmp_path / "model.json"), tmp_path / "ase", frame=frame)
    assert sorted(p.name for p in paths) == ["kernels.py", "run_ase.py", "start.traj"]
    assert "def triplet_energy_gradient(" in (tmp_path / "ase" / "kernels.py").read_text()
    atoms = read(tmp_path / "ase" / "start.traj")
    atoms.calc = MldCalculator(tmp_path / "ase" / "kernels.py")
    energy, forces, loss = threebody.frame_energy_forces(model, frame.positions_angstrom,
                                                         np.diag(frame.box_angstrom), frame.species)
    pair_only = Model.closed_form(model.expressions, model.species, model.cutoff_angstrom, model.r_min_angstrom,
                                  masses_amu=model.masses_amu)
    pair_energy, pair_forces, _ = threebody.frame_energy_forces(pair_only, frame.positions_angstrom,
                                                                np.diag(frame.box_angstrom), frame.species)
    assert abs(energy - pair_energy) > 1.0 and np.abs(forces - pair_forces).max() > 0.5  # three-body counts
    # measured: 9e-15 (energy), 2.7e-15 (forces), 8.8e-15 (losses)
    assert atoms.get_potential_energy() == pytest.approx(energy, rel=1e-10)
    assert np.abs(atoms.get_forces() - forces).max() / np.abs(forces).max() < 1e-10
    agent_loss = atoms.calc.get_property("agent_loss", atoms)
    assert np.abs(agent_loss - loss).max() / np.abs(loss).max() < 1e-10
    with pytest.raises(PropertyNotImplementedError):  # triplets count in full in a loss: no ½-split energies
        atoms.get_potential_energies()


def test_ase_export_carries_a_threebody_kernel_module_unchanged(frame, tmp_path):
    triplet_module = MORSE_WATER.with_name("sw_triplet.py")
    paths = export_model("ase", triplet_module, tmp_path / "ase")
    assert [p.name for p in paths] == ["kernels.py"]
    assert (tmp_path / "ase" / "kernels.py").read_bytes() == triplet_module.read_bytes()
    atoms = Atoms("OH2", positions=[[0, 0, 0], [0.96, 0, 0], [-0.5, 0.8, 0.0]], pbc=False)
    atoms.calc = MldCalculator(triplet_module)
    pair_atoms = atoms.copy()
    pair_atoms.calc = MldCalculator(MORSE_WATER)
    # the angle is 121°, off the term's 104.5°: the triplet term adds energy and bends the molecule back
    assert atoms.get_potential_energy() > pair_atoms.get_potential_energy() + 1e-3
    assert np.abs(atoms.get_forces() - pair_atoms.get_forces()).max() > 1e-2
