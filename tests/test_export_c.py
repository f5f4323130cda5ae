"""C export: sympy-printed pair kernels compile with gcc and equal the Python kernels."""

from __future__ import annotations

import ctypes
import shutil
import subprocess

import numpy as np
import pytest

from discover.export import ExportError, export_model
from tests.export_support import (
    generated_kernels,
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
    energy, forces, loss = kernels.energy_forces(frame.positions_angstrom, types, frame.box_angstrom)
    c_energy, c_forces, c_loss = _c_energy_forces(library, frame, types)
    # measured: 6.7e-16 (energy), 1.9e-15 (forces), 1.6e-15 (losses)
    assert abs(c_energy - energy) / abs(energy) < 1e-12
    assert np.abs(c_forces - forces).max() / np.abs(forces).max() < 1e-12
    assert np.abs(c_loss - loss).max() / np.abs(loss).max() < 1e-12


@needs_cc
def test_c_from_a_model_json_equals_its_generated_kernels_walls_included(tmp_path):
    model = morse_water_model()
    kernels = generated_kernels(model, tmp_path)
    library = _build(model.save(tmp_path / "model.json"), tmp_path / "c")
    frame = water_frame()
    types = frame.types(kernels.SPECIES)
    energy, forces, loss = kernels.energy_forces(frame.positions_angstrom, types, frame.box_angstrom)
    c_energy, c_forces, c_loss = _c_energy_forces(library, frame, types)
    # measured: 0 (energy), 6.8e-16 (forces), 0 (losses)
    assert abs(c_energy - energy) / abs(energy) < 1e-12
    assert np.abs(c_forces - forces).max() / np.abs(forces).max() < 1e-12
    assert np.abs(c_loss - loss).max() / np.abs(loss).max() < 1e-12


def test_c_export_refuses_a_kernel_module(tmp_path):
    with pytest.raises(ExportError, match="closed-form"):
        export_model("c", morse_kernels(), tmp_path)
    assert not any(tmp_path.iterdir())


def test_unknown_export_kind_is_named(tmp_path):
    with pytest.raises(ExportError, match="unknown export 'gromacs'"):
        export_model("gromacs", morse_water_expressions(), tmp_path)
