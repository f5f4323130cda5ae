"""Driving the real CP2K: a few xTB MD steps of a tiny water box, end to end through `mld cp2k run`."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from discover.cli import app
from discover.cp2k import (
    Cp2kRunError,
    check_cp2k_input,
    find_cp2k_binary,
    run_cp2k,
    water_box,
    write_cp2k_input,
)
from discover.dataset import Dataset

CP2K = shutil.which("cp2k.psmp") or shutil.which("cp2k")
needs_cp2k = pytest.mark.skipif(CP2K is None, reason="no CP2K binary (cp2k.psmp or cp2k) on PATH; apt-get install cp2k")

runner = CliRunner()


def test_missing_cp2k_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(Cp2kRunError, match=r"CP2K not found on PATH .*apt-get install cp2k"):
        find_cp2k_binary()


@pytest.mark.cp2k
@needs_cp2k
def test_xtb_water_box_runs_and_imports(tmp_path):
    """4 H2O, 3 MD steps of GFN1-xTB at 300 K: about 5–10 s on two cores."""
    box = tmp_path / "box.xyz"
    assert runner.invoke(app, ["cp2k", "water-box", "--molecules", "4", "--seed", "5", "--out", str(box)]).exit_code == 0
    out = tmp_path / "tiny.npz"
    result = runner.invoke(app, ["cp2k", "run", str(box), "--workdir", str(tmp_path / "run"), "--out", str(out),
                                 "--steps", "3", "--threads", "2", "--seed", "7"])
    assert result.exit_code == 0, result.stderr
    dataset = Dataset.load(out)
    assert dataset.n_frames == 4
    np.testing.assert_array_equal(dataset.step, [0, 1, 2, 3])
    assert list(dataset.species) == ["O", "H", "H"] * 4
    assert np.all(np.isfinite(dataset.forces)) and np.abs(dataset.forces).mean() > 0.05
    # xTB energy is translation invariant: the forces sum to zero.
    assert np.abs(dataset.forces.sum(axis=1)).max() < 1e-5
    # CP2K draws initial velocities at exactly the requested temperature (3N − 3 dof).
    assert dataset.temperature_k()[0] == pytest.approx(300.0, rel=1e-3)
    # Work of the forces over each step equals the potential-energy drop (trapezoid rule).
    dx = dataset.positions[1:] - dataset.positions[:-1]
    work = -np.einsum("fij,fij->f", 0.5 * (dataset.forces[1:] + dataset.forces[:-1]), dx)
    np.testing.assert_allclose(np.diff(dataset.energy), work, rtol=0.1, atol=2e-3)
    meta = dataset.metadata
    assert (meta["program"], meta["method"], meta["thermostat"], meta["timestep_fs"]) == (
        "CP2K", "GFN1-xTB", "CSVR", 0.5)
    assert meta["version"]

    again = runner.invoke(app, ["cp2k", "run", str(tmp_path / "run" / "md.inp"), "--workdir", str(tmp_path / "run"),
                                "--out", str(tmp_path / "again.npz")])
    assert again.exit_code == 1 and "earlier run" in again.stderr


@pytest.mark.cp2k
@needs_cp2k
def test_pbe_d3_input_passes_cp2k_syntax_check(tmp_path):
    species, positions, cell = water_box(4, seed=1)
    path = write_cp2k_input(tmp_path / "pbe.inp", species, positions, cell, method="pbe-d3", thermostat="nose", steps=5)
    check_cp2k_input(path)
    broken = tmp_path / "broken.inp"
    broken.write_text(path.read_text().replace("REFERENCE_FUNCTIONAL PBE", "REFERENCE_FUNKTIONAL PBE"))
    with pytest.raises(Cp2kRunError, match=r"broken\.inp: CP2K rejects the input: .*REFERENCE_FUNKTIONAL"):
        check_cp2k_input(broken)


@pytest.mark.cp2k
@needs_cp2k
def test_failing_cp2k_run_reports_cp2k_abort_message(tmp_path):
    species, positions, cell = water_box(2, seed=1)
    path = write_cp2k_input(tmp_path / "md.inp", species, positions, cell, steps=1)
    path.write_text(path.read_text().replace("EPS_SCF 1.0E-6\n      MAX_SCF 50", "EPS_SCF 1.0E-6\n      MAX_SCF fifty"))
    with pytest.raises(Cp2kRunError, match=r"md\.inp: CP2K failed \(exit \d+\): .*") as failure:
        run_cp2k(path, tmp_path / "run", threads=1, timeout_s=120)
    assert "\n" not in str(failure.value)
