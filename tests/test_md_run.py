"""The run loop: logs ASE can read, checkpoints that resume bit for bit, and clean blow-ups."""

import shutil
from pathlib import Path

import numba
import numpy as np
import pandas as pd
import pytest
from ase.io import read

from simulate import md, quantity, setup
from simulate.errors import MldError
from simulate.kernels import load_kernel_module
from tests.kernel_examples.starting_frames import argon_fcc

EXAMPLES = Path(__file__).parent / "kernel_examples"


@pytest.fixture(scope="module")
def argon():
    return load_kernel_module(EXAMPLES / "lj_argon.py")


def run_argon(kernel, out_dir, steps, thermostat="nose-hoover", **options):
    species, positions, box = argon_fcc(3)
    settings = {"steps": steps, "dt_fs": 2.0, "temperature_k": 100.0, "thermostat": thermostat,
                "out_dir": out_dir, "seed": 11, "thermo_every": 10, "trajectory_every": 50,
                "checkpoint_every": 100, **options}
    return md.simulate(kernel, species, positions, box, **settings)


@pytest.mark.parametrize("thermostat", ["nose-hoover", "langevin", "nve"])
def test_resumed_run_is_bit_for_bit_the_unbroken_run(argon, tmp_path, thermostat):
    unbroken = run_argon(argon, tmp_path / "a", 300, thermostat)
    broken = tmp_path / "b"
    run_argon(argon, broken, 100, thermostat)
    saved = tmp_path / "checkpoint_at_100.npz"
    shutil.copy(broken / "checkpoint.npz", saved)
    run_argon(argon, broken, 170, thermostat, resume=True)
    # a crash after step 170 whose last checkpoint was step 100: logs hold frames past the checkpoint
    shutil.copy(saved, broken / "checkpoint.npz")
    resumed = run_argon(argon, broken, 300, thermostat, resume=True)
    assert resumed.steps == unbroken.steps == 300
    assert np.array_equal(resumed.state.positions, unbroken.state.positions)
    assert np.array_equal(resumed.state.velocities, unbroken.state.velocities)
    for name in ("thermo.csv", "trajectory.xyz"):
        assert (broken / name).read_bytes() == (tmp_path / "a" / name).read_bytes()


def test_resume_with_other_settings_is_refused(argon, tmp_path):
    run_argon(argon, tmp_path, 20)
    with pytest.raises(md.CheckpointError, match="dt_fs"):
        run_argon(argon, tmp_path, 40, dt_fs=1.0, resume=True)


def test_trajectory_and_thermo_log_agree_and_ase_reads_them(argon, tmp_path):
    result = run_argon(argon, tmp_path, 200)
    frames = read(result.trajectory_path, index=":")
    thermo = pd.read_csv(result.thermo_path)
    assert list(thermo.columns) == list(md.THERMO_COLUMNS)
    assert list(thermo.step) == list(range(0, 201, 10))
    assert [f.info["step"] for f in frames] == [0, 50, 100, 150, 200]
    last = frames[-1]
    np.testing.assert_allclose(last.get_positions(), result.state.positions, atol=1e-9)
    np.testing.assert_allclose(last.arrays["velocities"], result.state.velocities, rtol=1e-9, atol=1e-14)
    np.testing.assert_allclose(last.get_forces(), result.state.force.forces_ev_per_angstrom, rtol=1e-9, atol=1e-14)
    np.testing.assert_allclose(last.arrays["atom_loss"], result.state.force.atom_loss_ev, rtol=1e-9)
    assert last.get_potential_energy() == pytest.approx(thermo.potential_ev.iloc[-1], rel=1e-10)
    assert thermo.temperature_k.iloc[-1] == pytest.approx(
        quantity.temperature_k(result.state.velocities, result.state.masses), rel=1e-10)
    np.testing.assert_allclose(last.cell.lengths(), np.full(3, 3 * 5.72))


def two_atoms_colliding(kernel, out_dir, trajectory_every=1, **limits):
    positions = np.array([[8.0, 10.0, 10.0], [12.0, 10.0, 10.0]])
    velocities = np.array([[0.3, 0.0, 0.0], [-0.3, 0.0, 0.0]])
    return md.simulate(kernel, ["Ar", "Ar"], positions, np.full(3, 20.0), velocities, steps=100, dt_fs=0.5,
                       thermostat="nve", out_dir=out_dir, thermo_every=1, trajectory_every=trajectory_every, **limits)


def failed_step_of(blow_up: md.SimulationBlowUp) -> int:
    return int(str(blow_up).split("step ")[1].split(":")[0])


def assert_last_good_frame_kept(out_dir: Path, failed_step: int):
    """A blow-up at ``failed_step`` keeps the frame, checkpoint and thermo rows of the step before."""
    assert failed_step >= 2  # a frame before the failing one that is not the starting frame
    last_good = read(out_dir / "last_good.xyz")
    assert last_good.info["step"] == failed_step - 1
    assert np.isfinite(last_good.get_positions()).all() and np.isfinite(last_good.get_forces()).all()
    meta, arrays = md.read_checkpoint(out_dir / "checkpoint.npz")
    assert meta["step"] == failed_step - 1
    np.testing.assert_allclose(arrays["positions"], last_good.get_positions(), atol=1e-9)
    thermo = pd.read_csv(out_dir / "thermo.csv")
    assert list(thermo.step) == list(range(failed_step))  # two_atoms_colliding logs every step
    assert np.isfinite(thermo.pressure_bar).all()
    return last_good


# a frame every step: blocks of one step; none before the end: blocks that record the rows and stop early at
# the failing step, the rows before it waiting in memory
@pytest.mark.parametrize("trajectory_every", [1, 1000])
def test_blow_up_names_the_step_and_atoms_and_keeps_the_last_good_frame(argon, tmp_path, trajectory_every):
    with pytest.raises(md.SimulationBlowUp, match=r"step \d+: force on atom [01] \(Ar\)") as caught:
        two_atoms_colliding(argon, tmp_path, trajectory_every)
    last_good = assert_last_good_frame_kept(tmp_path, failed_step_of(caught.value))
    assert np.abs(last_good.get_forces()).max() <= 1e3


@pytest.fixture(scope="module")
def nan_below_2_5():
    return load_kernel_module(EXAMPLES / "nan_below.py")


@pytest.mark.parametrize("trajectory_every", [1, 1000])
def test_non_finite_forces_stop_the_run_and_keep_the_last_good_frame(nan_below_2_5, tmp_path, trajectory_every):
    # the atoms start 4 Å apart and close at 0.6 Å/fs: the law turns NaN after a few steps; bounds on
    # force and distance that never trip, so the NaN is what stops the run
    with pytest.raises(md.SimulationBlowUp, match=r"^step \d+: non-finite position, velocity or force on atom "
                                                  r"[01] \(Ar\); last good frame \(step \d+\)") as caught:
        two_atoms_colliding(nan_below_2_5, tmp_path, trajectory_every, max_force_ev_per_angstrom=1e12,
                            min_distance_angstrom=1e-6)
    failed_step = failed_step_of(caught.value)
    last_good = assert_last_good_frame_kept(tmp_path, failed_step)
    # the kept frame is the last one the law is defined at: one more step crosses into the NaN
    positions = last_good.get_positions()
    assert np.linalg.norm(positions[1] - positions[0]) >= nan_below_2_5.NAN_BELOW_ANGSTROM
    assert f"last good frame (step {failed_step - 1})" in str(caught.value)


def test_thermo_rows_held_in_memory_reach_the_file_however_the_run_stops(argon, tmp_path, monkeypatch):
    # rows wait in memory until a frame, a checkpoint or a second has passed (md.THERMO_FLUSH_S): none
    # comes here before the progress callback fails, at its first call from step 37 on; the rows of the
    # steps up to the one it was told of must be there
    failed_at = []

    def failing(step, steps, elapsed_s):
        if step >= 37:
            failed_at.append(step)
            raise RuntimeError("the progress display broke")

    with pytest.raises(RuntimeError, match="progress display"):
        run_argon(argon, tmp_path / "a", 100, thermo_every=1, trajectory_every=1000, checkpoint_every=1000,
                  progress=failing)
    assert list(pd.read_csv(tmp_path / "a" / "thermo.csv").step) == list(range(failed_at[0] + 1))
    # with no wait, every row is in the file by the time the progress callback hears of it
    monkeypatch.setattr(md, "THERMO_FLUSH_S", 0.0)
    seen = []

    def reading(step, steps, elapsed_s):
        seen.append((step, list(pd.read_csv(tmp_path / "b" / "thermo.csv").step)))

    run_argon(argon, tmp_path / "b", 30, thermo_every=3, trajectory_every=1000, checkpoint_every=1000,
              progress=reading)
    assert seen and seen[-1][0] == 30
    for step, logged in seen:
        assert logged == list(range(0, step + 1, 3))


@pytest.mark.parametrize("trajectory_every", [1, 1000])
def test_atoms_closer_than_the_floor_stop_the_run(argon, tmp_path, trajectory_every):
    with pytest.raises(md.SimulationBlowUp,
                       match=r"step \d+: atoms (0|1) \(Ar\) and (1|0) \(Ar\) are 1\.\d+ Å apart") as caught:
        two_atoms_colliding(argon, tmp_path, trajectory_every, max_force_ev_per_angstrom=1e12,
                            min_distance_angstrom=2.0)
    last_good = assert_last_good_frame_kept(tmp_path, failed_step_of(caught.value))
    positions = last_good.get_positions()
    assert np.linalg.norm(positions[1] - positions[0]) >= 2.0


def test_species_unknown_to_the_model_is_a_clear_error(argon, tmp_path):
    with pytest.raises(MldError, match="not He"):
        md.simulate(argon, ["Ar", "He"], np.array([[0.0, 0, 0], [3.0, 0, 0]]), np.full(3, 20.0), steps=1,
                    out_dir=tmp_path)


# --- pressure and speed figures, against numbers computed here ---------------------------------------------

BOX = np.array([8.0, 10.0, 12.5])  # Å; not a cube, so a volume from one edge would show
EV_PER_ANGSTROM3_IN_BAR = 1.602176634e6  # exact: e · 1e30 Å³/m³ / 1e5 Pa/bar


def test_ideal_gas_pressure_is_n_k_t_over_v():
    # scipy.constants (CODATA), not simulate.units: N k_B T / V in Pa, then bar; K = 3/2 N k_B T in eV
    from scipy import constants

    n_atoms, temperature_k = 250, 300.0
    kinetic_ev = 1.5 * n_atoms * constants.k * temperature_k / constants.e
    volume_m3 = np.prod(BOX) * constants.angstrom**3
    expected_bar = n_atoms * constants.k * temperature_k / volume_m3 / constants.bar
    assert quantity.pressure_bar(kinetic_ev, 0.0, BOX) == pytest.approx(expected_bar, rel=1e-12)
    assert expected_bar == pytest.approx(1.0355e4, rel=1e-3)  # 250 atoms in 1 nm³ at 300 K: about 1 GPa


@pytest.mark.parametrize("virial_ev", [-7.5, 3.25])
def test_pressure_adds_the_virial_to_twice_the_kinetic_energy(virial_ev):
    kinetic_ev = 2.0
    expected_bar = (2 * kinetic_ev + virial_ev) / (3 * 8.0 * 10.0 * 12.5) * EV_PER_ANGSTROM3_IN_BAR
    assert quantity.pressure_bar(kinetic_ev, virial_ev, BOX) == pytest.approx(expected_bar, rel=1e-12)


def pair_virial_ev(kernel, positions, box):
    """W = Σ_pairs r_ij · F_ij = Σ_pairs (force over r) r², minimum image, straight from the pair law."""
    d = positions[:, None, :] - positions[None, :, :]
    d -= box * np.round(d / box)
    r = np.sqrt(np.einsum("ijk,ijk->ij", d, d))
    i, j = np.triu_indices(len(positions), 1)
    return sum(kernel.pair_energy_force(0, 0, rij)[1] * rij**2 for rij in r[i, j])


def test_thermo_pressure_column_is_the_virial_pressure_of_the_logged_state(argon, tmp_path):
    result = run_argon(argon, tmp_path, 20)
    last = pd.read_csv(result.thermo_path).iloc[-1]
    assert last.step == 20
    box = np.full(3, 3 * 5.72)
    virial = pair_virial_ev(argon, result.state.positions, box)
    assert virial == pytest.approx(result.state.force.virial_ev, rel=1e-9)
    assert last.pressure_bar == pytest.approx(quantity.pressure_bar(last.kinetic_ev, virial, box), rel=1e-9)
    # the interactions matter here: the ideal-gas part alone is far off
    assert abs(last.pressure_bar - quantity.pressure_bar(last.kinetic_ev, 0.0, box)) > 100.0


def test_ns_per_day_is_simulated_time_over_wall_time():
    assert md.ns_per_day(1000, 0.5, 1.0) == pytest.approx(43.2)  # 500 fs a second, 86400 s a day
    assert md.ns_per_day(2000, 2.0, 86400.0) == pytest.approx(0.004)  # 4 ps in a day
    assert md.ns_per_day(10, 0.5, 0.0) == float("inf")


def test_run_reports_the_ns_per_day_of_its_own_steps(argon, tmp_path):
    first = run_argon(argon, tmp_path, 20)
    assert first.wall_s > 0
    assert first.ns_per_day == pytest.approx(md.ns_per_day(20, 2.0, first.wall_s), rel=1e-12)
    # a resumed run counts the steps it took, not those of the run before
    resumed = run_argon(argon, tmp_path, 50, resume=True)
    assert resumed.steps == 50
    assert resumed.ns_per_day == pytest.approx(md.ns_per_day(30, 2.0, resumed.wall_s), rel=1e-12)


def test_engine_timing_takes_the_steps_of_a_run_and_puts_the_threads_back(argon, tmp_path):
    # md.advance, which the engine's timing (and the benchmark) runs, reaches the state of a run of md.simulate
    # bit for bit, in blocks of another length and with a long run's forces-only pass; the timing puts Numba's
    # thread count back, also when it fails
    species, positions, box = argon_fcc(3)
    masses = np.full(len(species), argon.MASSES_AMU[0])
    velocities = setup.maxwell_boltzmann(masses, 100.0, 3)
    run = md.simulate(argon, species, positions, box, velocities, steps=60, dt_fs=2.0, thermostat="nve",
                      out_dir=tmp_path, trajectory_every=60)
    integrator, state = md.nve_from_frame(argon, species, positions, box, velocities, dt_fs=2.0)
    state, _ = md.advance(integrator, state, 60, block_steps=7, planned_steps=md.LONG_RUN_STEPS)
    np.testing.assert_array_equal(state.positions, run.state.positions)
    np.testing.assert_array_equal(state.velocities, run.state.velocities)
    threads = min(2, numba.config.NUMBA_NUM_THREADS)
    numba.set_num_threads(threads)
    seconds = md.engine_seconds_per_step(argon, species, positions, box, velocities, steps=40, dt_fs=2.0, threads=1,
                                         lead_steps=5)
    assert 0 < seconds < 1
    assert numba.get_num_threads() == threads
    with pytest.raises(ValueError):
        md.engine_seconds_per_step(argon, species, positions, box, velocities[:5], steps=5, threads=1)
    assert numba.get_num_threads() == threads
