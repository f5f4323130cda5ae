"""Tabulated pair laws (simulate.tabulate): as accurate as the closed form on real water, exactly conservative."""

import math
from pathlib import Path
from types import ModuleType

import numba
import numpy as np
import pandas as pd
import pytest

from simulate import energy, md, tabulate, topology
from simulate.kernels import KernelModuleError, check_kernel_module, load_kernel_module
from simulate.reference import compile_reference
from tests.kernel_examples.starting_frames import DATASET, water32_frame

# the learned models of `mld run` on the shipped dataset (closed-form pairwise, many-body and molecular
# pairwise), copied from models/ as they were written; kernels are generated from them per session
LEARNED_MODELS = Path(__file__).resolve().parent / "fixtures" / "learned_models"


pytestmark = pytest.mark.skipif(not DATASET.is_file(), reason="needs data/water32_300K.npz")


@pytest.fixture(scope="module")
def modules(tmp_path_factory):
    """{name: (closed form, tabulated)} for the learned pairwise, many-body and molecular models."""
    from discover.codegen import write_kernels
    from discover.model import Model

    out = {}
    work = tmp_path_factory.mktemp("learned_kernels")
    for name in ("pairwise", "manybody", "molecular"):
        model = Model.load(LEARNED_MODELS / f"{name}.json")
        closed = load_kernel_module(write_kernels(model, work / name / "kernels.py"))
        out[name] = (closed, tabulate.tabulate_kernel_module(closed))
    return out


@pytest.fixture(scope="module")
def frames():
    """(types, box, positions of 8 frames spread over the CP2K run) of the shipped dataset."""
    with np.load(DATASET) as npz:
        species = npz["species"].astype(str)
        positions = npz["positions"]
        box = np.diag(npz["cell"][0]).copy()
    chosen = np.linspace(0, len(positions) - 1, 8).astype(int)
    types = np.array([("O", "H").index(s) for s in species], dtype=np.int64)
    return types, box, positions[chosen]


def _energy_forces(module, positions, types, box):
    if getattr(module, "TOPOLOGY", "atomic") == "molecular":
        bond = topology.bond_cutoff_matrix(module.BOND_CUTOFF_ANGSTROM, len(module.SPECIES))
        molecules = topology.assign_molecules(positions, box, types, bond)
        return module.energy_forces(positions, types, box, molecules)
    return module.energy_forces(positions, types, box)


# --- the interpolant -------------------------------------------------------------------------------


def test_quintic_hermite_takes_the_given_value_slope_and_curvature_at_both_knots():
    rng = np.random.default_rng(1)
    u, du, d2u = rng.normal(size=(3, 9))
    step = 0.037
    c = tabulate.quintic_hermite_coefficients(u, du, d2u, step)
    powers = np.arange(6)
    for s, k in ((0.0, slice(None, -1)), (1.0, slice(1, None))):
        value = c @ (s ** powers)
        slope = c[:, 1:] @ (powers[1:] * s ** (powers[1:] - 1)) / step
        curvature = c[:, 2:] @ (powers[2:] * (powers[2:] - 1) * s ** (powers[2:] - 2)) / step**2
        np.testing.assert_allclose(value, u[k], rtol=0, atol=1e-13)
        np.testing.assert_allclose(slope, du[k], rtol=0, atol=1e-12)
        np.testing.assert_allclose(curvature, d2u[k], rtol=0, atol=1e-10)


def test_quintic_hermite_reproduces_a_quintic_exactly():
    poly = np.polynomial.Polynomial([0.3, -1.2, 0.7, 2.0, -0.4, 0.05])
    knots = np.linspace(0.5, 2.5, 11)
    c = tabulate.quintic_hermite_coefficients(poly(knots), poly.deriv()(knots), poly.deriv(2)(knots), 0.2)
    table = tabulate.LawTable("p", 0.5, 2.5, 10, np.pad(np.vstack([c, np.zeros(6)]), ((0, 0), (0, 2))), 0.0, 0.0)
    r = np.linspace(0.5, 2.4999, 997)
    u, du = tabulate.evaluate_table(table, r)
    np.testing.assert_allclose(u, poly(r), rtol=0, atol=1e-12)
    np.testing.assert_allclose(du, poly.deriv()(r), rtol=0, atol=1e-11)


def test_table_is_exact_at_its_knots(modules):
    """At every knot the table returns the kernel's own u and u' (to rounding)."""
    closed, tabulated = modules["pairwise"]
    for a, b in ((0, 0), (0, 1), (1, 1)):
        table = tabulated.PAIR_TABLES[[(0, 0), (0, 1), (1, 1)].index((a, b))]
        knots = table.knots_angstrom[:-1]
        u, du = tabulate.evaluate_table(table, knots)
        exact = np.array([closed.pair_energy_force(a, b, r) for r in knots])
        np.testing.assert_allclose(u, exact[:, 0], rtol=0, atol=1e-13)
        np.testing.assert_allclose(du, -exact[:, 1] * knots, rtol=1e-12, atol=1e-12)


# --- against the closed form -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["pairwise", "manybody", "molecular"])
def test_tabulated_forces_match_the_closed_form_on_cp2k_frames(modules, frames, name):
    closed, tabulated = modules[name]
    types, box, positions = frames
    force_error = force_norm = 0.0
    for x in positions:
        e_closed, f_closed, loss_closed = _energy_forces(closed, x, types, box)
        e_table, f_table, loss_table = _energy_forces(tabulated, x, types, box)
        force_error += np.sum((f_table - f_closed) ** 2)
        force_norm += np.sum(f_closed**2)
        assert abs(e_table - e_closed) <= 1e-7 * abs(e_closed)
        np.testing.assert_allclose(loss_table, loss_closed, rtol=0, atol=1e-7 * np.abs(loss_closed).max())
    assert math.sqrt(force_error / force_norm) <= 1e-6


def test_tabulated_module_runs_in_the_compiled_force_loops(modules, frames):
    """simulate.energy's neighbour-list loops give the tabulated module's own O(N²) reference."""
    _, tabulated = modules["pairwise"]
    types, box, positions = frames
    force_fn = energy.make_force_fn(tabulated, types, box)
    for x in positions[:3]:
        _, result = force_fn(x)
        e, f, loss = tabulated.energy_forces(x, types, box)
        assert result.energy_ev == pytest.approx(e, rel=1e-12)
        np.testing.assert_allclose(result.forces_ev_per_angstrom, f, rtol=0, atol=1e-10)
        np.testing.assert_allclose(result.atom_loss_ev, loss, rtol=0, atol=1e-10)


def test_pair_tables_are_in_r_squared_and_the_r_squared_law_is_the_closed_form(modules):
    """Pair laws are looked up by r² (no square root in the passes), bonded laws by r. The r² kernel is
    the closed form bit for bit below the table and at and beyond the cutoff, and within the force
    tolerance inside the table."""
    closed, tabulated = modules["molecular"]
    squared = {t.name: t.squared for t in tabulated.PAIR_TABLES}
    assert squared == {"OO": True, "OH": True, "HH": True, "OH_intra": False, "HH_intra": False}
    rng = np.random.default_rng(7)
    rc = tabulated.CUTOFF_ANGSTROM
    for a, b in ((0, 0), (0, 1), (1, 0), (1, 1)):
        table = tabulated.PAIR_TABLES[a + b]
        for r in np.append(rng.uniform(0.6, table.inner_angstrom, 50), [rc, np.nextafter(rc, np.inf), 1.3 * rc]):
            assert tabulated.pair_energy_force_r2(a, b, r * r) == closed.pair_energy_force(a, b, r)
        r = rng.uniform(table.inner_angstrom, rc, 400)
        got = np.array([tabulated.pair_energy_force_r2(a, b, x * x) for x in r])
        want = np.array([closed.pair_energy_force(a, b, x) for x in r])
        assert np.max(np.abs(got[:, 1] - want[:, 1]) * r) <= tabulate.DEFAULT_FORCE_TOLERANCE_EV_PER_ANGSTROM
        assert np.max(np.abs(got[:, 0] - want[:, 0])) <= 1e-9


def test_tabulated_molecular_module_runs_in_the_compiled_force_loops(modules, frames):
    """The bonded pass takes off the r² pair law the neighbour pass put on each intramolecular pair."""
    _, tabulated = modules["molecular"]
    types, box, positions = frames
    bond = topology.bond_cutoff_matrix(tabulated.BOND_CUTOFF_ANGSTROM, len(tabulated.SPECIES))
    molecules = topology.assign_molecules(positions[0], box, types, bond)
    force_fn = energy.make_force_fn(tabulated, types, box, molecules=molecules)
    for x in positions[:3]:
        _, result = force_fn(x)
        e, f, loss = tabulated.energy_forces(x, types, box, molecules)
        assert result.energy_ev == pytest.approx(e, rel=1e-12)
        np.testing.assert_allclose(result.forces_ev_per_angstrom, f, rtol=0, atol=1e-10)
        np.testing.assert_allclose(result.atom_loss_ev, loss, rtol=0, atol=1e-10)


def test_force_loops_call_the_law_of_r_squared_where_a_module_has_one(modules, frames):
    """A module whose ``pair_energy_force_r2`` is twice its ``pair_energy_force`` (built in memory: the
    interface's check would refuse it) gets twice the forces and energy from every pass."""
    _, tabulated = modules["pairwise"]
    law_r2 = tabulated.pair_energy_force_r2

    @numba.njit
    def doubled(type_i, type_j, r2):
        u, f = law_r2(type_i, type_j, r2)
        return 2.0 * u, 2.0 * f

    module = ModuleType("doubled_r2")
    for name in ("SPECIES", "MASSES_AMU", "CUTOFF_ANGSTROM", "pair_energy_force", "energy_forces"):
        setattr(module, name, getattr(tabulated, name))
    module.pair_energy_force_r2 = doubled
    with pytest.raises(KernelModuleError, match="pair_energy_force_r2 gives u = "):
        check_kernel_module(module, "doubled")
    types, box, positions = frames
    e, f, _ = tabulated.energy_forces(positions[0], types, box)
    _, result = energy.make_force_fn(module, types, box)(positions[0])
    assert result.energy_ev == pytest.approx(2.0 * e, rel=1e-12)
    np.testing.assert_allclose(result.forces_ev_per_angstrom, 2.0 * f, rtol=0, atol=1e-10)


def test_the_r_squared_force_is_minus_twice_the_slope_of_the_energy_in_r_squared(coarse_pairwise):
    """−u'(r)/r = −2 du/d(r²): the r² kernel's force is the exact derivative of its own energy."""
    rng = np.random.default_rng(8)
    step = 1e-6
    for a, b in ((0, 0), (0, 1), (1, 1)):
        table = coarse_pairwise.PAIR_TABLES[a + b]
        s = rng.uniform(table.grid[0] + step, table.grid[1] - step, 400)
        u_plus = np.array([coarse_pairwise.pair_energy_force_r2(a, b, x + step)[0] for x in s])
        u_minus = np.array([coarse_pairwise.pair_energy_force_r2(a, b, x - step)[0] for x in s])
        force_over_r = np.array([coarse_pairwise.pair_energy_force_r2(a, b, x)[1] for x in s])
        np.testing.assert_allclose(force_over_r, -2.0 * (u_plus - u_minus) / (2 * step), rtol=0, atol=1e-8)
        closed = np.array([coarse_pairwise.SOURCE_KERNEL_MODULE.pair_energy_force(a, b, math.sqrt(x))[1] for x in s])
        assert np.max(np.abs(closed - force_over_r)) > 1e-7  # the claim is the table's, not the closed form's


def test_tables_start_at_the_wall_joints_and_leave_the_core_to_the_closed_form(modules):
    from discover.model import Model

    closed, tabulated = modules["pairwise"]
    # the learned laws meet their repulsive walls at the smallest sampled distance r_min
    r_min = Model.load(LEARNED_MODELS / "pairwise.json").r_min_angstrom
    for table in tabulated.PAIR_TABLES:
        assert table.inner_angstrom == pytest.approx(r_min[table.name], abs=1e-12)
        assert table.outer_angstrom == closed.CUTOFF_ANGSTROM
    # below the joint the kernel is the closed form itself, bit for bit
    for a, b in ((0, 0), (0, 1), (1, 1)):
        joint = tabulated.PAIR_TABLES[a + b].inner_angstrom
        for r in np.linspace(0.7, joint, 20)[:-1]:
            assert tabulated.pair_energy_force(a, b, r) == closed.pair_energy_force(a, b, r)


def test_pair_laws_are_exactly_zero_at_and_beyond_the_cutoff(modules):
    _, tabulated = modules["pairwise"]
    rc = tabulated.CUTOFF_ANGSTROM
    for a, b in ((0, 0), (0, 1), (1, 1)):
        for r in (rc, np.nextafter(rc, np.inf), 1.2 * rc, 50.0):
            assert tabulated.pair_energy_force(a, b, r) == (0.0, 0.0)
        u, f = tabulated.pair_energy_force(a, b, np.nextafter(rc, 0.0))
        assert abs(u) < 1e-12 and abs(f) < 1e-12  # and continuous there


def test_manybody_and_molecular_modules_keep_their_other_parts(modules, frames):
    closed, tabulated = modules["manybody"]
    assert tabulated.triplet_energy_gradient is closed.triplet_energy_gradient  # exports, O(N³) reference
    assert tabulated.THREEBODY_CUTOFF_ANGSTROM == closed.THREEBODY_CUTOFF_ANGSTROM
    assert tabulated.TRIPLET_COS_POLYNOMIAL == closed.TRIPLET_COS_POLYNOMIAL
    assert tabulated.pair_energy_force is not closed.pair_energy_force
    assert tabulated.triplet_radial is not closed.triplet_radial
    check_kernel_module(tabulated, "tabulated")  # its legs pass the interface's check, to the tables' allowance

    closed, tabulated = modules["molecular"]
    for name in ("TOPOLOGY", "BOND_CUTOFF_ANGSTROM", "INTRA_PAIR_TYPES", "SPECIES", "MASSES_AMU", "CUTOFF_ANGSTROM"):
        assert getattr(tabulated, name) == getattr(closed, name)
    # the bonded laws are tabulated between their inner and outer walls, the walls stay closed form
    intra = {t.name: t for t in tabulated.PAIR_TABLES if t.name.endswith("_intra")}
    assert sorted(intra) == ["HH_intra", "OH_intra"]
    oh = intra["OH_intra"]
    assert oh.inner_angstrom == pytest.approx(0.8954048302215907, abs=1e-12)
    assert oh.outer_angstrom == pytest.approx(1.053809457184908, abs=1e-12)
    for r in (0.85, 1.06, 1.3):
        assert tabulated.intra_pair_energy_force(0, 1, r) == closed.intra_pair_energy_force(0, 1, r)
    r = np.linspace(oh.inner_angstrom, oh.outer_angstrom, 101)[1:-1]
    got = np.array([tabulated.intra_pair_energy_force(1, 0, x) for x in r])
    want = np.array([closed.intra_pair_energy_force(1, 0, x) for x in r])
    np.testing.assert_allclose(got * np.stack([np.ones_like(r), r], 1), want * np.stack([np.ones_like(r), r], 1),
                               rtol=0, atol=1e-8)


# --- conservative ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def coarse_pairwise(modules):
    """The learned pairwise model from a deliberately coarse table (10⁻³ eV/Å): far from the closed
    form, still the exact derivative of its own energy."""
    return tabulate.tabulate_kernel_module(modules["pairwise"][0], 1e-3)


def test_tabulated_force_is_the_exact_derivative_of_the_tabulated_energy(modules, coarse_pairwise):
    closed = modules["pairwise"][0]
    step = 1e-6
    rng = np.random.default_rng(4)
    for a, b in ((0, 0), (0, 1), (1, 1)):
        table = coarse_pairwise.PAIR_TABLES[a + b]
        r = rng.uniform(table.inner_angstrom + step, table.outer_angstrom - step, 400)
        u_plus = np.array([coarse_pairwise.pair_energy_force(a, b, x + step)[0] for x in r])
        u_minus = np.array([coarse_pairwise.pair_energy_force(a, b, x - step)[0] for x in r])
        force = np.array([coarse_pairwise.pair_energy_force(a, b, x)[1] for x in r]) * r
        closed_force = np.array([closed.pair_energy_force(a, b, x)[1] for x in r]) * r
        finite_difference = -(u_plus - u_minus) / (2 * step)
        assert np.max(np.abs(finite_difference - force)) < 2e-8
        assert np.max(np.abs(closed_force - force)) > 1e-6  # the claim above is the table's, not the closed form's


def test_tabulated_forces_are_minus_the_gradient_of_the_tabulated_energy(coarse_pairwise, frames):
    types, box, positions = frames
    x = positions[0].copy()
    _, forces, _ = coarse_pairwise.energy_forces(x, types, box)
    step = 1e-5
    for atom, axis in ((0, 0), (1, 2), (50, 1), (95, 0)):
        plus, minus = x.copy(), x.copy()
        plus[atom, axis] += step
        minus[atom, axis] -= step
        gradient = (coarse_pairwise.energy_forces(plus, types, box)[0]
                    - coarse_pairwise.energy_forces(minus, types, box)[0]) / (2 * step)
        assert -gradient == pytest.approx(forces[atom, axis], abs=1e-7)


def _nve_energy_error(module, tmp_path: Path, steps: int) -> tuple[float, float]:
    """(standard deviation, drift) in eV of the total energy of an NVE run of ``mld simulate``'s loop
    (compiled blocks) from CP2K frame 0; drift = mean of the last quarter − mean of the first."""
    species, positions, box, velocities = water32_frame()
    md.simulate(module, species, positions, box, velocities, steps=steps, dt_fs=0.5, thermostat="nve",
                out_dir=tmp_path, thermo_every=10, trajectory_every=steps, checkpoint_every=steps)
    total = pd.read_csv(tmp_path / "thermo.csv")["total_ev"].to_numpy()
    quarter = len(total) // 4
    return float(np.std(total)), float(abs(total[-quarter:].mean() - total[:quarter].mean()))


def test_nve_conserves_energy_as_well_as_the_closed_form(modules, coarse_pairwise, tmp_path):
    closed, tabulated = modules["pairwise"]
    steps = 1000  # 0.5 ps
    spread_closed, drift_closed = _nve_energy_error(closed, tmp_path / "closed", steps)
    spread_table, drift_table = _nve_energy_error(tabulated, tmp_path / "table", steps)
    spread_coarse, drift_coarse = _nve_energy_error(coarse_pairwise, tmp_path / "coarse", steps)
    assert spread_closed < 1e-4 * 96  # a real NVE run: ~3e-5 eV/atom of velocity-Verlet fluctuation
    assert spread_table <= 1.1 * spread_closed
    assert drift_table <= drift_closed + spread_closed
    # conservation is the construction's, not the accuracy's: a table 10⁵× coarser conserves as well
    assert spread_coarse <= 1.25 * spread_closed
    assert drift_coarse <= drift_closed + spread_closed


# --- other kernel modules and bad input ----------------------------------------------------------------


def _module(law, cutoff: float, name: str = "hand_written") -> ModuleType:
    """A one-species kernel module around a scalar njit law u(r), du/dr (shifted elsewhere if needed)."""

    @numba.njit
    def pair_energy_force(type_i, type_j, r):
        if r >= cutoff:
            return 0.0, 0.0
        u, du = law(r)
        return u, -du / r

    module = ModuleType(name)
    module.SPECIES = ("Ar",)
    module.MASSES_AMU = (39.948,)
    module.CUTOFF_ANGSTROM = cutoff
    module.pair_energy_force = pair_energy_force
    module.energy_forces = compile_reference({"pair_energy_force": pair_energy_force, "CUTOFF_ANGSTROM": cutoff})
    return module


JOINT = 1.234567890123


@numba.njit
def _smooth(r):
    """u = x³(0.02 + 0.01x)·cos r, x = 4 − r: goes to zero with its slope at 4 Å; and du/dr."""
    x = 4.0 - r
    p = x**3 * (0.02 + 0.01 * x)
    dp_dr = -(3.0 * x**2 * (0.02 + 0.01 * x) + 0.01 * x**3)
    return p * math.cos(r), dp_dr * math.cos(r) - p * math.sin(r)


@numba.njit
def _law_with_a_joint(r):
    """The smooth law above JOINT; below it a steep wall joined C¹ (u'' jumps by 18 eV/Å²)."""
    if r >= JOINT:
        return _smooth(r)
    u0, du0 = _smooth(JOINT)
    x = r - JOINT
    return u0 + du0 * x + 0.5 * (math.exp(-6.0 * x) - 1.0 + 6.0 * x), du0 + 3.0 * (1.0 - math.exp(-6.0 * x))


def test_joint_of_a_hand_written_law_is_found_and_tabulated():
    module = _module(_law_with_a_joint, 4.0)
    tabulated = tabulate.tabulate_kernel_module(module, 1e-9)
    (table,) = tabulated.PAIR_TABLES
    assert table.inner_angstrom == pytest.approx(JOINT, abs=1e-12)
    r = np.linspace(0.9, 3.999, 3001)
    got = np.array([tabulated.pair_energy_force(0, 0, x) for x in r])
    want = np.array([module.pair_energy_force(0, 0, x) for x in r])
    assert np.max(np.abs(got[:, 1] - want[:, 1]) * r) < 1e-9
    assert np.max(np.abs(got[:, 0] - want[:, 0])) < 1e-10


@numba.njit
def _law_cut_without_shift(r):
    """The smooth law plus a constant and a slope: u and u' jump to zero at the 4 Å cutoff."""
    u, du = _smooth(r)
    return u + 0.05 - 0.02 * r, du - 0.02


# at 4.5 Å, √ of the float below 4.5·4.5 rounds to 4.5 itself; at 6.692801 Å, 6.692801**2 exceeds 6.692801·6.692801
@pytest.mark.parametrize("cutoff", [4.0, 4.5, 6.692801])
def test_a_law_cut_without_shift_keeps_its_step_at_the_cutoff(cutoff):
    module = _module(_law_cut_without_shift, cutoff)
    tabulated = tabulate.tabulate_kernel_module(module)
    (table,) = tabulated.PAIR_TABLES
    assert table.outer_angstrom == cutoff
    below = np.nextafter(cutoff, 0.0)
    u, f = tabulated.pair_energy_force(0, 0, below)
    u_closed, f_closed = module.pair_energy_force(0, 0, below)
    assert u == pytest.approx(u_closed, abs=1e-10) and f == pytest.approx(f_closed, abs=1e-10)
    assert abs(u_closed) > 0.01  # the step is there, and the table keeps it
    assert tabulated.pair_energy_force(0, 0, cutoff) == (0.0, 0.0)


@numba.njit
def _law_not_finite(r):
    if r > 2.0:
        return math.nan, math.nan
    return 1.0 / r, -1.0 / r**2


def test_a_law_that_cannot_be_tabulated_is_a_one_line_error():
    with pytest.raises(tabulate.TabulationError) as caught:
        tabulate.tabulate_kernel_module(_module(_law_not_finite, 3.0), label="nan_law.py")
    message = str(caught.value)
    assert "nan_law.py" in message and "ArAr" in message and "\n" not in message


# --- the legs of a separable three-body law ------------------------------------------------------------


def _leg_types(module, name: str) -> tuple[int, int, int]:
    """(centre, neighbour, other neighbour) of a leg named like "OH|O"."""
    centre, neighbour, other = name[0], name[1], name[3]
    return tuple(module.SPECIES.index(s) for s in (centre, neighbour, other))


def _radial(module, types, r: np.ndarray) -> np.ndarray:
    return np.array([module.triplet_radial(*types, x) for x in r])


def test_radial_tables_keep_each_triplet_force_within_the_tolerance_up_to_the_three_body_cutoff(modules):
    """On a dense grid up to r_3 (and a hair below it), |ΔR'| × max|R of the partner leg| × Σ|p_n|, the
    largest change of one triplet's force, is within the force tolerance; R is C⁰ → 0 at r_3."""
    closed, tabulated = modules["manybody"]
    r3 = closed.THREEBODY_CUTOFF_ANGSTROM
    poly = np.asarray(closed.TRIPLET_COS_POLYNOMIAL)
    r = np.concatenate([np.linspace(0.3, r3, 20001)[:-1], r3 - np.logspace(-15, -3, 50)])
    assert len(tabulated.RADIAL_TABLES) == 8  # every leg of the learned O/H law carries one
    largest = {}
    exact = {}
    for table in tabulated.RADIAL_TABLES:
        types = _leg_types(closed, table.name)
        exact[types] = _radial(closed, types, r)
        largest[types] = np.abs(exact[types][:, 0]).max()
        assert table.inner_angstrom == 0.5 and table.outer_angstrom == r3
    for table in tabulated.RADIAL_TABLES:
        k, j, o = _leg_types(closed, table.name)
        got = _radial(tabulated, (k, j, o), r)
        slope_error = np.abs(got[:, 1] - exact[(k, j, o)][:, 1]).max()
        assert slope_error * largest[(k, o, j)] * np.abs(poly[k, j, o]).sum() <= 1.05e-8, table.name
        assert np.abs(got[:, 0] - exact[(k, j, o)][:, 0]).max() <= 0.1 * slope_error + 1e-15
        # below the table the closed form, bit for bit; at and beyond r_3 exactly zero
        for x in (0.2, 0.4999):
            assert tabulated.triplet_radial(k, j, o, x) == closed.triplet_radial(k, j, o, x)
        for x in (r3, np.nextafter(r3, np.inf), 4.0, 50.0):
            assert tabulated.triplet_radial(k, j, o, x) == (0.0, 0.0)
        value, slope = tabulated.triplet_radial(k, j, o, np.nextafter(r3, 0.0))
        assert abs(value) < 1e-15 and abs(slope) < 1e-15  # (1 − r²/r_3²)³: R, R', R'' → 0


def test_legs_of_one_neighbour_share_a_grid_and_are_read_two_at_a_time(modules):
    """The legs (k, j, ·) sit on one grid, so triplet_radial_two reads the legs o and o + 1 from one cell:
    the numbers of two triplet_radial calls, bit for bit, inside the table, below it and beyond r_3."""
    closed, tabulated = modules["manybody"]
    grids = {}
    for table in tabulated.RADIAL_TABLES:
        k, j, _ = _leg_types(closed, table.name)
        grids.setdefault((k, j), set()).add((table.inner_angstrom, table.outer_angstrom, table.cells))
    assert len(grids) == 4 and all(len(grid) == 1 for grid in grids.values())
    r3 = closed.THREEBODY_CUTOFF_ANGSTROM
    r = np.concatenate([np.random.default_rng(2).uniform(0.2, r3, 500), [0.5, r3, 4.0]])
    for k, j, o in np.ndindex(2, 2, 2):
        for x in r:
            want = tabulated.triplet_radial(k, j, o, x) + (
                tabulated.triplet_radial(k, j, o + 1, x) if o == 0 else (0.0, 0.0))
            assert tabulated.triplet_radial_two(k, j, o, x) == want


def test_legs_without_a_law_get_no_table_and_answer_zero():
    """Stillinger–Weber legs exp(γ/(r − r_3)) of the H–O–H triplets only: one table; it follows the
    essential singularity to zero at r_3, and every other leg is zero everywhere."""
    sw = load_kernel_module(Path(__file__).resolve().parent / "kernel_examples" / "sw_triplet.py")
    tabulated = tabulate.tabulate_kernel_module(sw)
    (table,) = tabulated.RADIAL_TABLES
    assert table.name == "OH|H"
    r3 = sw.THREEBODY_CUTOFF_ANGSTROM
    r = np.concatenate([np.linspace(0.3, r3, 8001)[:-1], r3 - np.logspace(-15, -2, 40)])
    got, want = _radial(tabulated, (0, 1, 1), r), _radial(sw, (0, 1, 1), r)
    # P = λ(c − c0)², Σ|p_n| ≈ 2.7 eV, and R ≤ 1: a triplet's force within 10⁻⁸ eV/Å
    assert np.abs(got[:, 1] - want[:, 1]).max() < 1e-8 / 2.5
    assert np.abs(got[:, 0] - want[:, 0]).max() < 1e-10
    assert np.abs(got[-40:-10]).max() < 1e-12  # within 10⁻⁵ Å of r_3: exp(−γ/10⁻⁵) and its slope
    for types in np.ndindex(2, 2, 2):
        if types != (0, 1, 1):
            assert not _radial(tabulated, types, r).any()


def test_legs_that_depend_on_the_other_neighbour_get_a_table_each():
    module = load_kernel_module(Path(__file__).resolve().parent / "kernel_examples" / "separable_triplet.py")
    tabulated = tabulate.tabulate_kernel_module(module)
    assert sorted(t.name for t in tabulated.RADIAL_TABLES) == sorted(
        f"{a}{b}|{c}" for a in "OH" for b in "OH" for c in "OH")
    r = np.linspace(0.3, module.THREEBODY_CUTOFF_ANGSTROM, 3001)
    for table in tabulated.RADIAL_TABLES:
        types = _leg_types(module, table.name)
        got, want = _radial(tabulated, types, r), _radial(module, types, r)
        assert np.abs(got[:, 1] - want[:, 1]).max() <= 1.05 * table.force_error_ev_per_angstrom
        assert np.abs(got[:, 1] - want[:, 1]).max() <= 1e-7  # R' ≤ 1.3/Å, |P| ≤ 1.1: 10⁻⁸ eV/Å and less


@pytest.fixture(scope="module")
def coarse_manybody(modules):
    """The learned many-body model from deliberately coarse tables (10⁻³)."""
    return tabulate.tabulate_kernel_module(modules["manybody"][0], 1e-3)


def test_tabulated_radial_slope_is_the_exact_derivative_of_the_tabulated_radial(modules, coarse_manybody):
    closed = modules["manybody"][0]
    step = 1e-6
    rng = np.random.default_rng(5)
    for table in coarse_manybody.RADIAL_TABLES:
        types = _leg_types(closed, table.name)
        r = rng.uniform(table.inner_angstrom + step, table.outer_angstrom - step, 300)
        finite_difference = (_radial(coarse_manybody, types, r + step)[:, 0]
                             - _radial(coarse_manybody, types, r - step)[:, 0]) / (2 * step)
        slope = _radial(coarse_manybody, types, r)[:, 1]
        assert np.max(np.abs(finite_difference - slope)) < 1e-8, table.name
        assert np.max(np.abs(_radial(closed, types, r)[:, 1] - slope)) > 1e-6  # the table's claim, not the law's


def test_tabulated_manybody_forces_match_the_closed_form_in_the_moment_loops(modules, frames):
    """The engine sums the triplets by moments with the tabulated legs: forces, energy and losses as the
    closed form's (measured over all 2,401 frames: max |ΔF| 2.1·10⁻⁸ eV/Å, 2.0·10⁻⁸ from the legs)."""
    closed, tabulated = modules["manybody"]
    types, box, positions = frames
    closed_fn = energy.make_force_fn(closed, types, box)
    table_fn = energy.make_force_fn(tabulated, types, box)
    for x in positions:
        want = closed_fn(x, None)[1]
        got = table_fn(x, None)[1]
        assert np.abs(got.forces_ev_per_angstrom - want.forces_ev_per_angstrom).max() < 5e-8
        assert got.energy_ev == pytest.approx(want.energy_ev, abs=1e-7)
        np.testing.assert_allclose(got.atom_loss_ev, want.atom_loss_ev, rtol=0, atol=1e-8)


def test_moment_pass_reads_two_legs_at_once_as_it_reads_them_one_at_a_time(modules, frames):
    """The moment pass takes a neighbour's legs from triplet_radial_two (one cell lookup for two legs);
    without it, from triplet_radial twice: the same forces, energy and losses, bit for bit."""
    _, tabulated = modules["manybody"]
    one_at_a_time = ModuleType("one_leg_at_a_time")
    for name in dir(tabulated):
        if not name.startswith("__") and name != "triplet_radial_two":
            setattr(one_at_a_time, name, getattr(tabulated, name))
    types, box, positions = frames
    two_fn = energy.make_force_fn(tabulated, types, box)
    one_fn = energy.make_force_fn(one_at_a_time, types, box)
    for x in positions[:3]:
        two, one = two_fn(x, None)[1], one_fn(x, None)[1]
        assert two.energy_ev == one.energy_ev
        np.testing.assert_array_equal(two.forces_ev_per_angstrom, one.forces_ev_per_angstrom)
        np.testing.assert_array_equal(two.atom_loss_ev, one.atom_loss_ev)


def _one_species_separable():
    """The separable example's law of its first species alone (S = 1: one leg per neighbour, the second of
    triplet_radial_two the zero lane past the last species)."""
    source = load_kernel_module(Path(__file__).resolve().parent / "kernel_examples" / "separable_triplet.py")
    module = ModuleType("one_species_separable")
    module.SPECIES, module.MASSES_AMU = source.SPECIES[:1], source.MASSES_AMU[:1]
    module.CUTOFF_ANGSTROM, module.THREEBODY_CUTOFF_ANGSTROM = source.CUTOFF_ANGSTROM, source.THREEBODY_CUTOFF_ANGSTROM
    module.pair_energy_force = source.pair_energy_force
    module.triplet_radial, module.triplet_energy_gradient = source.triplet_radial, source.triplet_energy_gradient
    module.TRIPLET_COS_POLYNOMIAL = (((source.TRIPLET_COS_POLYNOMIAL[0][0][0],),),)
    module.energy_forces = compile_reference(
        {"pair_energy_force": source.pair_energy_force, "CUTOFF_ANGSTROM": source.CUTOFF_ANGSTROM,
         "triplet_energy_gradient": source.triplet_energy_gradient,
         "THREEBODY_CUTOFF_ANGSTROM": source.THREEBODY_CUTOFF_ANGSTROM}, threebody=True)
    check_kernel_module(module, "one species")
    return module


def test_a_one_species_law_reads_its_leg_and_the_zero_lane_past_it():
    closed = _one_species_separable()
    tabulated = tabulate.tabulate_kernel_module(closed)  # checks triplet_radial_two against triplet_radial
    assert [t.name for t in tabulated.RADIAL_TABLES] == ["OO|O"]
    for r in (0.3, 1.0, 2.5, closed.THREEBODY_CUTOFF_ANGSTROM):
        value, slope, other, other_slope = tabulated.triplet_radial_two(0, 0, 0, r)
        assert (other, other_slope) == (0.0, 0.0)
        assert (value, slope) == pytest.approx(closed.triplet_radial(0, 0, 0, r), abs=1e-9)
    # the oxygens of a CP2K frame, closer than r_3 = 3 Å in places: moment pass, tabulated, against the
    # closed form's O(N³) reference
    species, positions, box, _ = water32_frame()
    oxygens = positions[np.asarray(species) == "O"]
    types = np.zeros(len(oxygens), dtype=np.int64)
    energy_ev, forces = closed.energy_forces(oxygens, types, box)[:2]
    got = energy.make_force_fn(tabulated, types, box)(oxygens, None)[1]
    assert got.energy_ev == pytest.approx(energy_ev, abs=1e-7)
    assert np.abs(got.forces_ev_per_angstrom - forces).max() < 1e-7
    assert np.abs(forces).max() > 0.1  # the triplets are there


def test_moment_loop_forces_are_minus_the_gradient_of_its_energy_with_coarse_legs(modules, coarse_manybody, frames):
    types, box, positions = frames
    x = positions[3].copy()
    force_fn = energy.make_force_fn(coarse_manybody, types, box)
    forces = force_fn(x, None)[1].forces_ev_per_angstrom
    closed_forces = energy.make_force_fn(modules["manybody"][0], types, box)(x, None)[1].forces_ev_per_angstrom
    assert np.abs(forces - closed_forces).max() > 1e-5  # coarse indeed
    step = 1e-5
    for atom, axis in ((0, 0), (1, 2), (50, 1), (95, 0)):
        plus, minus = x.copy(), x.copy()
        plus[atom, axis] += step
        minus[atom, axis] -= step
        gradient = (force_fn(plus, None)[1].energy_ev - force_fn(minus, None)[1].energy_ev) / (2 * step)
        assert -gradient == pytest.approx(forces[atom, axis], abs=1e-7)


def test_describe_lists_the_pair_and_leg_tables(modules):
    _, tabulated = modules["manybody"]
    lines = tabulate.describe(tabulated).splitlines()
    assert len(lines) == len(tabulated.PAIR_TABLES) + len(tabulated.RADIAL_TABLES) == 3 + 8
    for table, line in zip(tabulated.PAIR_TABLES + tabulated.RADIAL_TABLES, lines):
        assert line.split(":")[0].strip() == table.name
        assert f"{table.cells} cells" in line
    assert "|ΔR'|" in lines[-1] and "|ΔF|" in lines[0]
