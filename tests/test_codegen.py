"""Generated kernels: the simulate.kernels contract, physics, and agreement with the model they came from."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import sympy
from test_model import CUTOFF, R_MIN, smooth_tabulated, water_like_model

from discover.codegen import kernel_source, write_kernels
from discover.model import Model
from discover.symbolic import R
from simulate.kernels import load_kernel_module


@pytest.fixture(scope="module")
def closed_form():
    return water_like_model()


@pytest.fixture(scope="module")
def closed_form_kernels(closed_form, tmp_path_factory):
    return load_kernel_module(write_kernels(closed_form, tmp_path_factory.mktemp("closed") / "kernels.py"))


@pytest.fixture(scope="module")
def tabulated_kernels(tmp_path_factory):
    return load_kernel_module(write_kernels(Model.from_tabulated(smooth_tabulated()), tmp_path_factory.mktemp("tab")))


def water_frame(shipped_dataset):
    box = np.diag(shipped_dataset.cell[0]).copy()
    types = np.where(shipped_dataset.species == "O", 0, 1).astype(np.int64)
    return shipped_dataset.positions[0].copy(), types, box


def test_kernel_module_imports_from_its_file_with_only_numpy_and_numba(closed_form, tmp_path):
    (tmp_path / "kernels.py").write_text(kernel_source(closed_form))
    script = textwrap.dedent("""
        import sys
        class Refuse:
            def find_spec(self, name, path=None, target=None):
                if name.split('.')[0] in ('discover', 'simulate', 'sympy', 'scipy', 'pandas'):
                    raise ImportError('kernel module imported ' + name)
        sys.meta_path.insert(0, Refuse())
        import kernels
        u, f = kernels.pair_energy_force(0, 1, 1.0)
        print(kernels.SPECIES, kernels.MASSES_AMU, kernels.CUTOFF_ANGSTROM, u, f)
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert "('O', 'H') (15.999, 1.008) 4.5" in done.stdout


def test_closed_form_kernels_agree_with_direct_sympy_evaluation(closed_form, closed_form_kernels):
    for (a, b), (name, piecewise) in zip([(0, 0), (0, 1), (1, 1)], closed_form.pair_expressions().items()):
        du = sympy.diff(piecewise, R)
        for r in np.linspace(R_MIN[name] - 0.4, CUTOFF + 0.2, 23):
            u_kernel, f_over_r = closed_form_kernels.pair_energy_force(a, b, r)
            u_exact = float(piecewise.subs(R, r).evalf(30))
            f_exact = -float(du.subs(R, r).evalf(30)) / r
            assert u_kernel == pytest.approx(u_exact, rel=1e-11, abs=1e-13)
            assert f_over_r == pytest.approx(f_exact, rel=1e-10, abs=1e-12)
            assert closed_form_kernels.pair_energy_force(b, a, r) == (u_kernel, f_over_r)


def test_tabulated_kernels_agree_with_the_tabulated_model(tabulated_kernels):
    tabulated = smooth_tabulated()
    for t, (a, b) in enumerate([(0, 0), (0, 1), (1, 1)]):
        r = np.linspace(0.4, CUTOFF + 0.2, 997)
        kernel = np.array([tabulated_kernels.pair_energy_force(a, b, x) for x in r])
        u, f = tabulated.energy_and_force(t, r)
        np.testing.assert_allclose(kernel[:, 0], u, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(kernel[:, 1], f / r, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("which", ["closed_form_kernels", "tabulated_kernels"])
def test_kernel_forces_are_minus_the_energy_gradient_and_sum_to_zero(which, request, shipped_dataset):
    kernels = request.getfixturevalue(which)
    positions, types, box = water_frame(shipped_dataset)
    energy, forces, loss = kernels.energy_forces(positions, types, box)
    assert abs(forces.sum(axis=0)).max() < 1e-9 * abs(forces).max()
    assert loss.sum() == pytest.approx(2.0 * energy, rel=1e-12)
    h = 1e-5
    rng = np.random.default_rng(1)
    for atom in rng.choice(len(positions), 6, replace=False):
        for axis in range(3):
            plus, minus = positions.copy(), positions.copy()
            plus[atom, axis] += h
            minus[atom, axis] -= h
            numeric = -(kernels.energy_forces(plus, types, box)[0] - kernels.energy_forces(minus, types, box)[0]) / (2 * h)
            assert forces[atom, axis] == pytest.approx(numeric, rel=1e-5, abs=1e-6)
