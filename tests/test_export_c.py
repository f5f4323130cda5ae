"""C export: sympy-printed pair and triplet kernels compile with gcc and equal the Python kernels."""

from __future__ import annotations

import ctypes
import shutil
import subprocess

import numpy as np
import pytest

from discover import threebody
from discover.export import ExportError, export_model
from discover.model import Model
from tests.export_support import (
    generated_kernels,
    manybody_water_model,
    morse_kernels,
    morse_water_expressions,
    morse_water_model,
    water_frame,
)

CC = shutil.which("gcc") or shutil.which("cc")
needs_cc = pytest.mark.skipif(CC is None, reason="no C compiler (gcc or cc) on PATH")


def _build(model, out):
    export_model("c", model, out)
    # the README build line, with warnings as errors so that the generated code stays clean
    subprocess.run([CC, "-O2", "-std=c99", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC", "mld_pairs.c",
                    "-o", "libmld_pairs.so", "-lm"], cwd=out, check=True, capture_output=True)
    lib = ctypes.CDLL(str(out / "libmld_pairs.so"))
    doubles = np.ctypeslib.ndpointer(np.float64, flags="C_CONTIGUOUS")
    ints = np.ctypeslib.ndpointer(np.int32, flags="C_CONTIGUOUS")
    lib.mld_energy_forces.restype = ctypes.c_double
    lib.mld_energy_forces.argtypes = [ctypes.c_int, doubles, ints, doubles, doubles, doubles]
    lib.mld_pair_energy_force.restype = None
    lib.mld_pair_energy_force.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_double,
                                          ctypes.POINTER(ctypes.c_double), ctypes.POINTER(ctypes.c_double)]
    return lib


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    return _build(morse_water_expressions(), tmp_path_factory.mktemp("c"))


def _c_energy_forces(library, frame, types):
    n = len(types)
    forces, loss = np.zeros((n, 3)), np.zeros(n)
    energy = library.mld_energy_forces(n, np.ascontiguousarray(frame.positions_angstrom, dtype=float),
                                       types.astype(np.int32), np.asarray(frame.box_angstrom, dtype=float),
                                       forces, loss)
    return energy, forces, loss


def assert_relative_within(c_result, reference, tolerance):
    """(energy, forces, loss) of the C library against a reference, each to a relative ``tolerance``."""
    (c_energy, c_forces, c_loss), (energy, forces, loss) = c_result, reference
    assert abs(c_energy - energy) / abs(energy) < tolerance
    assert np.abs(c_forces - forces).max() / np.abs(forces).max() < tolerance
    assert np.abs(c_loss - loss).max() / np.abs(loss).max() < tolerance


@needs_cc
def test_c_pair_kernels_equal_python_kernels(library):
    kernels = morse_kernels()
    u, f = ctypes.c_double(), ctypes.c_double()
    for type_i, type_j in [(0, 0), (0, 1), (1, 0), (1, 1)]:
        for r in np.linspace(0.6, 4.6, 41):
            library.mld_pair_energy_force(type_i, type_j, r, ctypes.byref(u), ctypes.byref(f))
            u_py, f_py = kernels.pair_energy_force(type_i, type_j, r)
            assert u.value == pytest.approx(u_py, rel=1e-12, abs=1e-14)
            assert f.value == pytest.approx(f_py, rel=1e-12, abs=1e-14)


@needs_cc
def test_c_energy_forces_equal_python_kernels_on_real_water(library):
    kernels = morse_kernels()
    frame = water_frame()
    types = frame.types(kernels.SPECIES)
    # measured: 6.7e-16 (energy), 1.9e-15 (forces), 1.6e-15 (losses)
    assert_relative_within(_c_energy_forces(library, frame, types),
                           kernels.energy_forces(frame.positions_angstrom, types, frame.box_angstrom), 1e-12)


@needs_cc
def test_c_from_a_model_json_equals_its_generated_kernels_walls_included(tmp_path):
    model = morse_water_model()
    kernels = generated_kernels(model, tmp_path)
    library = _build(model.save(tmp_path / "model.json"), tmp_path / "c")
    frame = water_frame()
    types = frame.types(kernels.SPECIES)
    # measured: 0 (energy), 6.8e-16 (forces), 0 (losses)
    assert_relative_within(_c_energy_forces(library, frame, types),
                           kernels.energy_forces(frame.positions_angstrom, types, frame.box_angstrom), 1e-12)


def test_c_export_refuses_a_kernel_module(tmp_path):
    with pytest.raises(ExportError, match="closed-form"):
        export_model("c", morse_kernels(), tmp_path)
    assert not any(tmp_path.iterdir())


def test_unknown_export_kind_is_named(tmp_path):
    with pytest.raises(ExportError, match="unknown export 'gromacs'"):
        export_model("gromacs", morse_water_expressions(), tmp_path)


# --- many-body models ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def manybody(tmp_path_factory):
    """(model, its generated kernels, the compiled C library) of the closed-form many-body test model."""
    directory = tmp_path_factory.mktemp("manybody")
    model = manybody_water_model()
    return model, generated_kernels(model, directory), _build(model, directory / "c")


@needs_cc
def test_c_manybody_energy_forces_equal_python_kernels_and_model_on_real_water(manybody):
    model, kernels, library = manybody
    frame = water_frame()
    types = frame.types(kernels.SPECIES)
    c_result = _c_energy_forces(library, frame, types)
    c_energy, c_forces, _ = c_result
    # the three-body part is a real share of this frame: measured 2.8 eV, and 0.76 of 5.5 eV/Å in forces
    pair_energy, pair_forces, _ = kernels.pair_energy_forces(frame.positions_angstrom, types, frame.box_angstrom)
    assert abs(c_energy - pair_energy) > 1.0
    assert np.abs(c_forces - pair_forces).max() > 0.5
    references = [kernels.energy_forces(frame.positions_angstrom, types, frame.box_angstrom),
                  threebody.frame_energy_forces(model, frame.positions_angstrom, np.diag(frame.box_angstrom),
                                                frame.species)]
    for reference in references:
        # measured: 0, 6.6e-16, 0 against the kernels; 9.1e-15, 2.7e-15, 8.8e-15 against discover.threebody
        assert_relative_within(c_result, reference, 1e-10)


@needs_cc
def test_c_triplet_kernel_equals_python_and_is_symmetric_in_its_neighbours(manybody):
    _, kernels, library = manybody
    out = [ctypes.c_double() for _ in range(4)]
    lib_args = [ctypes.byref(v) for v in out]
    library.mld_triplet_energy_gradient.restype = None
    library.mld_triplet_energy_gradient.argtypes = [ctypes.c_int] * 3 + [ctypes.c_double] * 3 + \
        [ctypes.POINTER(ctypes.c_double)] * 4
    rng = np.random.default_rng(3)
    nonzero = 0
    for type_k, type_j, type_l in [(0, 1, 1), (1, 0, 0), (0, 0, 1), (0, 1, 0), (1, 1, 1), (0, 0, 0)]:
        for r1, r2, cos in zip(rng.uniform(0.8, 3.3, 20), rng.uniform(0.8, 3.3, 20), rng.uniform(-1, 1, 20)):
            library.mld_triplet_energy_gradient(type_k, type_j, type_l, r1, r2, cos, *lib_args)
            c_values = [v.value for v in out]
            np.testing.assert_allclose(c_values, kernels.triplet_energy_gradient(type_k, type_j, type_l, r1, r2, cos),
                                       rtol=1e-12, atol=1e-15)
            library.mld_triplet_energy_gradient(type_k, type_l, type_j, r2, r1, cos, *lib_args)
            swapped = [v.value for v in out]
            np.testing.assert_allclose(swapped, [c_values[0], c_values[2], c_values[1], c_values[3]],
                                       rtol=1e-12, atol=1e-15)
            nonzero += c_values[0] != 0.0
    assert nonzero > 30  # inside r_3 for typed triplets with a law, zero beyond and for OOO, HHH


@needs_cc
def test_c_manybody_forces_are_minus_the_energy_gradient(manybody):
    _, kernels, library = manybody
    frame = water_frame()
    types = frame.types(kernels.SPECIES)
    _, forces, _ = _c_energy_forces(library, frame, types)
    h = 1e-6
    for atom, axis in [(0, 0), (1, 1), (2, 2), (40, 0)]:
        energies = []
        for step in (h, -h):
            moved = frame.positions_angstrom.copy()
            moved[atom, axis] += step
            energies.append(_c_energy_forces(library, frame._replace(positions_angstrom=moved), types)[0])
        assert forces[atom, axis] == pytest.approx(-(energies[0] - energies[1]) / (2 * h), rel=1e-6, abs=1e-7)


def test_c_export_refuses_a_tabulated_threebody_term(tmp_path):
    base = manybody_water_model()
    centres, width = threebody.default_basis(3.2, 3)
    table = threebody.ThreeBodyTable(base.species, 3.2, centres, width, 2, np.zeros((6, 3, 3, 3)))
    model = Model.closed_form(base.expressions, base.species, base.cutoff_angstrom, base.r_min_angstrom,
                              masses_amu=base.masses_amu, threebody=table)
    with pytest.raises(ExportError, match="Gaussian × Legendre table"):
        export_model("c", model, tmp_path)
    assert not any(tmp_path.iterdir())
