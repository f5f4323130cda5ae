"""OpenMM export: closed-form and tabulated CustomNonbondedForces reproduce the kernel on real water."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from discover.export import ExportError, export_model
from tests.export_support import (
    MORSE_WATER,
    generated_kernels,
    manybody_water_model,
    morse_kernels,
    morse_water_expressions,
    morse_water_model,
    water_frame,
)

openmm = pytest.importorskip("openmm", reason="the OpenMM export needs the openmm package")

from discover.export.openmm import build_system, energy_expression, energy_forces
from discover.export.pairs import pair_source


@pytest.fixture(scope="module")
def kernels():
    return morse_kernels()


@pytest.fixture(scope="module")
def frame():
    return water_frame()


@pytest.fixture(scope="module")
def reference(kernels, frame):
    return kernels.energy_forces(frame.positions_angstrom, frame.types(kernels.SPECIES), frame.box_angstrom)


def _errors(result, reference):
    energy, forces = result
    return (abs(energy - reference[0]) / abs(reference[0]),
            np.abs(forces - reference[1]).max() / np.abs(reference[1]).max())


def test_closed_form_force_equals_kernel_on_reference_platform(frame, reference):
    system = build_system(morse_water_expressions(), frame)
    assert system.getNumForces() == 3  # one CustomNonbondedForce per species pair
    energy_error, force_error = _errors(energy_forces(system, frame.positions_angstrom, "Reference"), reference)
    # measured: 1.7e-16 and 9.2e-15 (double precision, analytic derivative)
    assert energy_error < 1e-12
    assert force_error < 1e-12


def test_tabulated_force_equals_kernel_on_reference_platform(kernels, frame, reference):
    system = build_system(kernels, frame)
    energy_error, force_error = _errors(energy_forces(system, frame.positions_angstrom, "Reference"), reference)
    # measured with 20000 spline points: 5e-16 and 2.9e-11
    assert energy_error < 1e-10
    assert force_error < 1e-8


def test_model_force_equals_its_generated_kernels_walls_included(frame, tmp_path):
    model = morse_water_model()
    kernels = generated_kernels(model, tmp_path)
    reference = kernels.energy_forces(frame.positions_angstrom, frame.types(kernels.SPECIES), frame.box_angstrom)
    closed = _errors(energy_forces(build_system(model, frame), frame.positions_angstrom, "Reference"), reference)
    tables = _errors(energy_forces(build_system(model, frame, tabulate=True), frame.positions_angstrom,
                                   "Reference"), reference)
    # measured: 3.3e-16 / 1.0e-14 closed form; 3.2e-14 / 1.9e-8 tabulated (steep walls)
    assert closed[0] < 1e-12 and closed[1] < 1e-12
    assert tables[0] < 1e-10 and tables[1] < 1e-6


def test_cpu_platform_agrees_to_single_precision(kernels, frame, reference):
    for model in (kernels, morse_water_expressions()):
        system = build_system(model, frame)
        energy_error, force_error = _errors(energy_forces(system, frame.positions_angstrom, "CPU"), reference)
        # measured: 2.4e-8 and 3.8e-6 for both; the CPU platform works in float32
        assert energy_error < 1e-6
        assert force_error < 5e-5


def test_each_force_sees_only_its_species_pair(frame):
    system = build_system(morse_water_expressions(), frame)
    types = frame.types(("O", "H"))
    for k, name in enumerate(["OO", "OH", "HH"]):
        force = system.getForce(k)
        assert force.getName() == f"mld pair {name}"
        set_a, set_b = force.getInteractionGroupParameters(0)
        a, b = {"OO": (0, 0), "OH": (0, 1), "HH": (1, 1)}[name]
        assert sorted(set_a) == list(np.flatnonzero(types == a))
        assert sorted(set_b) == list(np.flatnonzero(types == b))


def test_energy_expression_is_in_openmm_units():
    source = pair_source(morse_water_expressions())
    text = energy_expression(source, 0, 1)
    assert text.startswith("96.48533212331")  # kJ/mol per eV
    assert text.endswith("r_angstrom=r/0.1")


def test_kernel_module_cannot_give_a_closed_form_force(kernels, frame):
    with pytest.raises(ExportError, match="pair expressions"):
        build_system(kernels, frame, tabulate=False)


def test_readme_example_openmm_export_runs(frame, tmp_path):
    # the README example, with its defaults: 1000 steps, a report every 100
    paths = export_model("openmm", MORSE_WATER, tmp_path / "openmm", frame=frame)
    assert sorted(p.name for p in paths) == ["run_openmm.py", "state.xml", "system.xml"]
    done = subprocess.run([sys.executable, "run_openmm.py"], check=False, cwd=tmp_path / "openmm",
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    rows = [line.split() for line in done.stdout.splitlines()[1:]]
    assert [int(r[0]) for r in rows] == list(range(0, 1001, 100))
    assert all(np.isfinite(float(v)) for r in rows for v in r[1:])
    energy0 = float(rows[0][1])
    kernels = morse_kernels()
    expected = kernels.energy_forces(frame.positions_angstrom, frame.types(kernels.SPECIES), frame.box_angstrom)[0]
    assert energy0 == pytest.approx(expected, rel=1e-6)


def test_openmm_export_of_a_manybody_model_refuses_in_one_line(frame, tmp_path):
    with pytest.raises(ExportError) as refused:
        export_model("openmm", manybody_water_model(), tmp_path / "openmm", frame=frame)
    message = str(refused.value)
    assert "\n" not in message and "three-body" in message and "OpenMM" in message and "ase or c" in message
    assert not (tmp_path / "openmm").exists()
