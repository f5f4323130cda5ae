"""The run loop: logs ASE can read, checkpoints that resume bit for bit, and clean blow-ups."""

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from ase.io import read

from simulate import md, quantity
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


@pytest.mark.parametrize("thermostat", ["nose-hoover", "langevin"])
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


# a frame every step: blocks of one step; none before the end: blocks that record the rows and stop early at
# the failing step, the rows before it waiting in memory
@pytest.mark.parametrize("trajectory_every", [1, 1000])
def test_blow_up_names_the_step_and_atoms_and_keeps_the_last_good_frame(argon, tmp_path, trajectory_every):
    with pytest.raises(md.SimulationBlowUp, match=r"step \d+: force on atom [01] \(Ar\)") as caught:
        two_atoms_colliding(argon, tmp_path, trajectory_every)
    failed_step = int(str(caught.value).split("step ")[1].split(":")[0])
    last_good = read(tmp_path / "last_good.xyz")
    assert last_good.info["step"] == failed_step - 1
    assert np.abs(last_good.get_forces()).max() <= 1e3
    meta, arrays = md.read_checkpoint(tmp_path / "checkpoint.npz")
    assert meta["step"] == failed_step - 1
    np.testing.assert_allclose(arrays["positions"], last_good.get_positions(), atol=1e-9)
    thermo = pd.read_csv(tmp_path / "thermo.csv")
    assert list(thermo.step) == list(range(failed_step))


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


def test_atoms_closer_than_the_floor_stop_the_run(argon, tmp_path):
    with pytest.raises(md.SimulationBlowUp, match=r"atoms (0|1) \(Ar\) and (1|0) \(Ar\) are 1\.\d+ Å apart"):
        two_atoms_colliding(argon, tmp_path, max_force_ev_per_angstrom=1e12, min_distance_angstrom=2.0)


def test_species_unknown_to_the_model_is_a_clear_error(argon, tmp_path):
    with pytest.raises(MldError, match="not He"):
        md.simulate(argon, ["Ar", "He"], np.array([[0.0, 0, 0], [3.0, 0, 0]]), np.full(3, 20.0), steps=1,
                    out_dir=tmp_path)
