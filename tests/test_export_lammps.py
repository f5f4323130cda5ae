"""LAMMPS export: tables and lepton lines reproduce the kernel on real water, in MD and under MPI."""

from __future__ import annotations

import math

import numpy as np
import pytest
import sympy

from discover.export import ExportError, export_model
from discover.export.lammps import DUMP_FILE, export_lammps, read_dump, table_text
from discover.export.lepton import lepton_expression
from discover.export.pairs import R, pair_source, tabulation_grid
from discover.invariants import pair_table, pair_type_names
from discover.model import Model
from tests.export_support import (
    LAMMPS_METAL_ACCELERATION,
    MORSE_MODEL_R_MIN_ANGSTROM,
    MORSE_WATER,
    generated_kernels,
    lammps_missing_reason,
    manybody_water_model,
    morse_kernels,
    morse_water_expressions,
    morse_water_model,
    mpirun_missing_reason,
    run_lammps,
    velocity_verlet,
    water_frame,
)
from tests.test_model import smooth_tabulated

needs_lammps = pytest.mark.skipif(lammps_missing_reason() is not None, reason=str(lammps_missing_reason()))
needs_lepton = pytest.mark.skipif(lammps_missing_reason("lepton") is not None,
                                  reason=str(lammps_missing_reason("lepton")))
needs_mpi = pytest.mark.skipif(mpirun_missing_reason() is not None, reason=str(mpirun_missing_reason()))


@pytest.fixture(scope="module")
def kernels():
    return morse_kernels()


@pytest.fixture(scope="module")
def frame():
    return water_frame()


@pytest.fixture(scope="module")
def reference(kernels, frame):
    types = frame.types(kernels.SPECIES)
    return kernels.energy_forces(frame.positions_angstrom, types, frame.box_angstrom)


def _dump_arrays(columns):
    return (
        np.c_[columns["xu"], columns["yu"], columns["zu"]],
        np.c_[columns["vx"], columns["vy"], columns["vz"]] / 1000.0,  # Å/ps → Å/fs
        np.c_[columns["fx"], columns["fy"], columns["fz"]],
        columns["c_pe_atom"],
    )


def _single_point(model, out_dir, frame, **options):
    export_lammps(model, out_dir, frame, steps=0, ensemble="nve", **options)
    run_lammps(out_dir)
    (_, columns), = read_dump(out_dir / DUMP_FILE)
    return _dump_arrays(columns)


# --- pure checks, no LAMMPS needed -------------------------------------------------------------
def _eval_lepton(text: str, r: float) -> float:
    """Evaluate a Lepton string with Lepton's semantics, independently of the printer."""
    namespace = {
        "r": r, "exp": math.exp, "sqrt": math.sqrt, "log": math.log, "abs": abs, "min": min, "max": max,
        "step": lambda x: 1.0 if x >= 0 else 0.0, "select": lambda x, y, z: y if x != 0 else z,
    }
    return eval(text.replace("^", "**"), namespace)


def test_lepton_strings_evaluate_like_sympy_including_every_piecewise_condition():
    r = R
    law = sympy.Piecewise(
        (sympy.Float(50.0) - 3 * r, r <= 0.8),
        (sympy.exp(-r) / r**6 + sympy.sqrt(r), r < 2.0),
        (sympy.Rational(1, 3) * (r - 3) ** 2, sympy.And(r >= 2.0, r < 3.0)),
        (sympy.Float(0.0), True),
    )
    text = lepton_expression(law)
    for value in [0.5, 0.8, 0.80001, 1.3, 2.0, 2.5, 3.0, 4.0]:
        assert _eval_lepton(text, value) == pytest.approx(float(law.subs(r, value)), rel=1e-14, abs=1e-15)


def test_lepton_refuses_what_it_cannot_write():
    with pytest.raises(ExportError, match="Lepton"):
        lepton_expression(sympy.besselj(0, R))


def test_table_values_are_the_kernel_values_on_lammps_rsq_grid(kernels):
    source = pair_source(kernels)
    text = table_text(source, n_points=101, inner_angstrom=0.8)
    sections = text.split("\n\n")
    assert sections[1].splitlines() == ["OO", "N 101 RSQ 0.8 4.5"]
    rows = np.loadtxt(sections[2].splitlines())
    # LAMMPS recomputes r_i = sqrt(rlo² + i Δ(r²)) and warns if the file disagrees
    r_lammps = np.sqrt(0.8**2 + np.arange(101) * (4.5**2 - 0.8**2) / 100)
    np.testing.assert_allclose(rows[:, 1], r_lammps, rtol=1e-15)
    for k in [0, 37, 99]:
        u, f = kernels.pair_energy_force(0, 0, rows[k, 1])
        assert rows[k, 2] == pytest.approx(u, rel=1e-15)
        assert rows[k, 3] == pytest.approx(f * rows[k, 1], rel=1e-15)
    assert rows[-1, 2] == 0.0 and rows[-1, 3] == 0.0  # shifted force: nothing left at the cutoff


def test_kernel_module_has_no_lepton_variant(kernels, tmp_path):
    with pytest.raises(ExportError, match="closed-form"):
        export_lammps(kernels, tmp_path, style="lepton")
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_pair_exports_refuse_a_threebody_kernel_module(tmp_path):
    with pytest.raises(ExportError, match="three-body"):
        export_lammps(MORSE_WATER.with_name("sw_triplet.py"), tmp_path)


def test_tabulation_grid_rejects_an_inner_radius_beyond_the_cutoff():
    with pytest.raises(ExportError, match="inner radius"):
        tabulation_grid(5.0, 4.5, 100, "rsq")


# --- LAMMPS runs ----------------------------------------------------------------------------
@needs_lammps
def test_lammps_table_energy_forces_equal_kernel_on_real_water(kernels, frame, reference, tmp_path):
    energy, forces, loss = reference
    x, _, f, pe_atom = _single_point(kernels, tmp_path, frame)
    np.testing.assert_allclose(x, frame.positions_angstrom, atol=1e-12)  # image flags keep xu unwrapped
    # measured with 20000 points: 2.1e-7 (energy), 4.2e-6 (forces); the brief's bound is 1e-4
    assert abs(pe_atom.sum() - energy) / abs(energy) < 1e-6
    assert np.abs(f - forces).max() / np.abs(forces).max() < 2e-5
    # per-atom pe is half the agent loss for a pairwise model
    assert np.abs(2 * pe_atom - loss).max() / np.abs(loss).max() < 2e-5


@needs_lepton
def test_lammps_lepton_energy_forces_equal_kernel_on_real_water(frame, reference, tmp_path):
    energy, forces, loss = reference
    _, _, f, pe_atom = _single_point(morse_water_expressions(), tmp_path, frame)
    # measured: 7e-16 (energy), 9e-15 (forces)
    assert abs(pe_atom.sum() - energy) / abs(energy) < 1e-8
    assert np.abs(f - forces).max() / np.abs(forces).max() < 1e-8
    np.testing.assert_allclose(2 * pe_atom, loss, rtol=1e-8, atol=1e-10)


@needs_lepton
def test_model_json_lepton_deck_equals_its_generated_kernels_walls_included(frame, tmp_path):
    model = morse_water_model()
    model_path = model.save(tmp_path / "model.json")
    kernels = generated_kernels(model, tmp_path)
    types = frame.types(kernels.SPECIES)
    # the frame reaches below r_min for every pair type, so the Piecewise walls are exercised
    pairs = pair_table(frame.positions_angstrom, np.diag(frame.box_angstrom), types, 4.5, 2)
    for k, name in enumerate(pair_type_names(kernels.SPECIES)):
        assert pairs.r[pairs.pair_type == k].min() < MORSE_MODEL_R_MIN_ANGSTROM[name]
    energy, forces, loss = kernels.energy_forces(frame.positions_angstrom, types, frame.box_angstrom)
    paths = export_model("lammps", model_path, tmp_path / "lammps", frame=frame, steps=0, ensemble="nve")
    assert "pair_lepton.lmp" in {p.name for p in paths}
    assert "include         pair_lepton.lmp" in (tmp_path / "lammps" / "in.lammps").read_text()
    run_lammps(tmp_path / "lammps")
    _, _, f, pe_atom = _dump_arrays(read_dump(tmp_path / "lammps" / DUMP_FILE)[0][1])
    # measured: 0 (energy), 9.4e-15 (forces)
    assert abs(pe_atom.sum() - energy) / abs(energy) < 1e-8
    assert np.abs(f - forces).max() / np.abs(forces).max() < 1e-8
    np.testing.assert_allclose(2 * pe_atom, loss, rtol=1e-8, atol=1e-10)


@needs_lammps
def test_tabulated_model_table_deck_equals_its_generated_kernels(frame, tmp_path):
    model = Model.from_tabulated(smooth_tabulated())
    kernels = generated_kernels(model, tmp_path)
    energy, forces, _ = kernels.energy_forces(frame.positions_angstrom, frame.types(kernels.SPECIES),
                                              frame.box_angstrom)
    paths = export_model("lammps", model, tmp_path / "lammps", frame=frame, steps=0, ensemble="nve")
    assert "pair_lepton.lmp" not in {p.name for p in paths}  # a tabulated model has no formula
    run_lammps(tmp_path / "lammps")
    _, _, f, pe_atom = _dump_arrays(read_dump(tmp_path / "lammps" / DUMP_FILE)[0][1])
    # measured: 3.0e-8 (energy), 6.2e-7 (forces)
    assert abs(pe_atom.sum() - energy) / abs(energy) < 1e-6
    assert np.abs(f - forces).max() / np.abs(forces).max() < 2e-5


@needs_lepton
def test_lammps_nve_follows_reference_velocity_verlet(kernels, frame, tmp_path):
    # morse_water is a toy law: on a real water frame it collapses and heats by thousands of K within
    # 100 fs, which makes trajectories very chaotic; 0.25 fs steps keep 200 steps comparable
    dt_fs, steps = 0.25, 200
    types = frame.types(kernels.SPECIES)
    masses = np.asarray(kernels.MASSES_AMU)[types]
    xs, vs, es = velocity_verlet(kernels.energy_forces, frame, types, masses, dt_fs, steps,
                                 acceleration_unit=LAMMPS_METAL_ACCELERATION)
    results = {}
    for style, model in [("lepton", morse_water_expressions()), ("table", kernels)]:
        out = tmp_path / style
        export_lammps(model, out, frame, style=style, ensemble="nve", timestep_fs=dt_fs, steps=steps,
                      dump_every=steps)
        run_lammps(out)
        step, columns = read_dump(out / DUMP_FILE)[-1]
        assert step == steps
        results[style] = _dump_arrays(columns)
    x, v, _, pe_atom = results["lepton"]
    # measured: 1.2e-12 Å, exact forces leave only rounding
    assert np.abs(x - xs[-1]).max() < 1e-9
    assert np.abs(v - vs[-1]).max() < 1e-9
    assert pe_atom.sum() == pytest.approx(es[-1], abs=1e-8)
    x, v, _, pe_atom = results["table"]
    # measured: 1.1e-4 Å, the 4e-6 relative table force error grown by the chaotic collapse
    assert np.abs(x - xs[-1]).max() < 1e-3
    assert pe_atom.sum() == pytest.approx(es[-1], abs=3e-3)


@needs_lammps
@needs_mpi
def test_mpi_two_processes_give_the_one_process_trajectory(kernels, frame, tmp_path):
    runs = []
    for n_procs in (1, 2):
        out = tmp_path / f"np{n_procs}"
        export_lammps(kernels, out, frame, ensemble="nve", timestep_fs=0.25, steps=100, dump_every=100)
        done = run_lammps(out, n_procs=n_procs)
        runs.append(_dump_arrays(read_dump(out / DUMP_FILE)[-1][1]))
    (x1, _, f1, e1), (x2, _, f2, e2) = runs
    # only the order of force sums differs between domain decompositions; measured 1e-13 Å
    assert np.abs(x1 - x2).max() < 1e-9
    np.testing.assert_allclose(f2, f1, rtol=0, atol=1e-8)
    assert e2.sum() == pytest.approx(e1.sum(), abs=1e-9)
    assert done.returncode == 0


@needs_lammps
def test_readme_example_lammps_deck_runs_nvt(tmp_path, frame):
    # the README example: export the kernel module with a frame, then `lmp -in in.lammps` (defaults)
    paths = export_model("lammps", MORSE_WATER, tmp_path / "lammps", frame=frame)
    assert sorted(p.name for p in paths) == ["data.lmp", "in.lammps", "mld.table", "pair_table.lmp"]
    deck = (tmp_path / "lammps" / "in.lammps").read_text()
    assert "fix             integrate all nvt temp 300.0 300.0 0.05" in deck
    run_lammps(tmp_path / "lammps")
    frames = read_dump(tmp_path / "lammps" / DUMP_FILE)
    assert [step for step, _ in frames] == list(range(0, 1001, 100))
    assert all(np.isfinite(columns["fx"]).all() for _, columns in frames)


@pytest.mark.parametrize("as_file", [False, True])
def test_lammps_export_of_a_manybody_model_refuses_in_one_line_naming_the_exports_that_cover_it(
        frame, tmp_path, as_file):
    model = manybody_water_model()
    given = model.save(tmp_path / "model.json") if as_file else model
    out = tmp_path / "lammps"
    with pytest.raises(ExportError) as refused:
        export_model("lammps", given, out, frame=frame)
    message = str(refused.value)
    assert "\n" not in message
    assert "three-body term (r_3 = 3.2 Å)" in message and "LAMMPS" in message and "ase or c" in message
    assert not out.exists()  # never the pair part alone


def test_pair_sources_refuse_a_manybody_model_unless_the_target_carries_it():
    model = manybody_water_model()
    with pytest.raises(ExportError, match="pair exports carry pairwise terms only"):
        pair_source(model)
    assert pair_source(model, "ase").threebody_cutoff_angstrom == 3.2
    assert pair_source(MORSE_WATER.with_name("sw_triplet.py"), "c").threebody_cutoff_angstrom == 1.6
    assert pair_source(morse_water_model(), "lammps").threebody_cutoff_angstrom is None


def test_mld_nve_follows_the_same_reference_velocity_verlet(kernels, frame):
    """Closes the chain LAMMPS ≈ reference ≈ mld: the simulator's own NVE, cell lists and all, follows the
    reference loop (with mld's unit constant) that the LAMMPS runs above are checked against."""
    from simulate import energy, integrate

    dt_fs, steps = 0.25, 200
    types = frame.types(kernels.SPECIES)
    masses = np.asarray(kernels.MASSES_AMU)[types]
    xs, vs, _ = velocity_verlet(kernels.energy_forces, frame, types, masses, dt_fs, steps)
    integrator = integrate.nve(energy.make_force_fn(kernels, types, frame.box_angstrom), dt_fs)
    state = integrator.init(np.array(frame.positions_angstrom, dtype=float),
                            np.array(frame.velocities_angstrom_per_fs, dtype=float), masses)
    for _ in range(steps):
        state = integrator.step(state)
    # same arithmetic up to summation order: measured 1.3e-13 Å after 200 steps
    assert np.abs(state.positions - xs[-1]).max() < 1e-6
    assert np.abs(state.velocities - vs[-1]).max() < 1e-6
