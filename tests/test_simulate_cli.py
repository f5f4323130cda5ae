"""`mld simulate` from an extended XYZ starting frame, on the hand-written argon kernel (no learned model needed)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from ase import Atoms
from typer.testing import CliRunner

from discover.cli import app, md_progress
from simulate import md
from simulate.trajectory import read_trajectory
from tests.kernel_examples.starting_frames import argon_fcc

ARGON = Path(__file__).parent / "kernel_examples" / "lj_argon.py"


def simulate_cli(init, out, *flags):
    # a wide console, so that the progress line is never wrapped (rich reads COLUMNS)
    return CliRunner().invoke(app, ["simulate", str(ARGON), "--init", str(init), "--no-tabulate", "--dt", "2",
                                    "--temperature", "100", *flags, "--out", str(out)], env={"COLUMNS": "200"})


def test_simulate_cli_starts_from_an_extended_xyz_frame(tmp_path):
    species, positions, box = argon_fcc(3)
    # a jiggled lattice, so that the frame cannot be mistaken for one built elsewhere
    positions = positions + np.random.default_rng(5).uniform(0.05, 0.15, positions.shape)
    Atoms(list(species), positions=positions, cell=box, pbc=True).write(tmp_path / "start.xyz")
    out = tmp_path / "md"
    result = simulate_cli(tmp_path / "start.xyz", out, "--steps", "40", "--trajectory-every", "20")
    assert result.exit_code == 0, result.stdout + result.stderr
    traj = read_trajectory(out / "trajectory.xyz")
    assert list(traj["step"]) == [0, 20, 40]
    assert list(traj["species"]) == list(species)
    np.testing.assert_allclose(traj["positions"][0], positions, atol=1e-8)
    assert not np.allclose(traj["positions"][-1], positions, atol=1e-3)  # and it moved on from there
    np.testing.assert_allclose(traj["box"][0], box)
    assert list(pd.read_csv(out / "thermo.csv").step) == list(range(0, 41, 10))
    assert re.search(rf"wrote {re.escape(str(out))}/: 108 atoms, 40 steps, \d+\.\d ns/day", result.stdout)
    # the progress display on stderr shows the speed as well
    assert re.search(r"40/40 steps\s+\d+\.\d ns/day", result.stderr), result.stderr


@pytest.mark.parametrize(("content", "fragment"), [
    (None, "no such structure file"),
    ("this is not\nan xyz file\n", "cannot read frame"),
    ("1\n\nAr 0.0 0.0 0.0\n", "no periodic cell"),  # plain XYZ: no Lattice=
], ids=["missing", "malformed", "no-cell"])
def test_simulate_cli_bad_init_file_is_a_one_line_error(tmp_path, content, fragment):
    init = tmp_path / "start.xyz"
    if content is not None:
        init.write_text(content)
    result = simulate_cli(init, tmp_path / "md", "--steps", "10")
    assert result.exit_code == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert str(init) in lines[0] and fragment in lines[0], lines[0]
    assert "Traceback" not in result.stdout + result.stderr
    assert not (tmp_path / "md" / "trajectory.xyz").exists()


def test_md_progress_shows_the_ns_per_day_of_the_steps_so_far():
    progress, callback = md_progress(2000, 0.5)
    callback(1000, 2000, 1.0)
    task = progress.tasks[0]
    assert task.completed == 1000
    assert task.fields["rate"] == f"{md.ns_per_day(1000, 0.5, 1.0):.1f} ns/day" == "43.2 ns/day"
