"""The `mld data` and `mld cp2k` (no CP2K run) commands, the shipped dataset, and extended XYZ import."""

from __future__ import annotations

import re

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from discover.cli import app
from discover.cp2k import cell_from_input, read_cp2k_input, run_settings
from discover.dataset import Dataset
from discover.extxyz import ASE_VELOCITY_TO_ANGSTROM_PER_FS, ExtxyzFormatError, import_extxyz

runner = CliRunner()


def mld(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def assert_one_line_error(result, *fragments: str):
    assert result.exit_code == 1, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def all_command_paths(group, prefix=()):
    import typer.main

    command = typer.main.get_command(group) if isinstance(group, typer.Typer) else group
    yield prefix
    for name, sub in getattr(command, "commands", {}).items():
        yield from all_command_paths(sub, prefix + (name,))


def test_every_command_has_help():
    paths = list(all_command_paths(app))
    assert ("data", "import") in paths and ("cp2k", "run") in paths
    for path in paths:
        result = mld(*path, "--help")
        assert result.exit_code == 0, (path, result.stdout)
        assert "Usage" in result.stdout


# --- the shipped dataset -----------------------------------------------------------------


def test_shipped_dataset_is_small_float64_with_provenance(shipped_dataset_path, shipped_dataset):
    assert shipped_dataset_path.stat().st_size < 25e6
    assert shipped_dataset.forces.dtype == np.float64
    meta = shipped_dataset.metadata
    assert (meta["program"], meta["version"], meta["method"]) == ("CP2K", "2023.1", "GFN1-xTB")
    assert {s["file"] for s in meta["sources"]} >= {"prod-pos-1.xyz", "prod-frc-1.xyz", "prod-vel-1.xyz"}
    assert all(re.fullmatch(r"[0-9a-f]{64}", s["sha256"]) for s in meta["sources"])
    assert meta["cp2k_seconds_per_step"]["n_steps"] == 2399


def test_info_of_shipped_dataset_shows_96_atoms_near_300_k(shipped_dataset_path):
    result = mld("data", "info", shipped_dataset_path)
    assert result.exit_code == 0, result.stderr
    assert "96 (32 O, 64 H)" in result.stdout
    assert "2401" in result.stdout
    assert "9.86541 × 9.86541 × 9.86541 Å" in result.stdout
    mean, std = map(float, re.search(r"([\d.]+) ± ([\d.]+) K", result.stdout).groups())
    assert 290 < mean < 305  # CSVR at 300 K; measured 295.3
    assert 15 < std < 40  # canonical spread ≈ 300 K · √(2/285) ≈ 25 K


def test_info_of_missing_dataset_is_one_line_error(tmp_path):
    assert_one_line_error(mld("data", "info", tmp_path / "nope.npz"), "nope.npz", "no such dataset file")


# --- import --------------------------------------------------------------------------------


def test_import_writes_a_dataset_equal_to_the_library_import(excerpt_dir, tmp_path):
    from discover.cp2k import import_cp2k_run

    out = tmp_path / "data" / "excerpt.npz"
    result = mld("data", "import", excerpt_dir, "--out", out)
    assert result.exit_code == 0, result.stderr
    assert "5 frames, 96 atoms (32 O, 64 H)" in result.stdout
    written, direct = Dataset.load(out), import_cp2k_run(excerpt_dir)
    np.testing.assert_array_equal(written.forces, direct.forces)
    assert written.metadata["sources"] == direct.metadata["sources"]


def test_failed_import_is_one_line_and_leaves_nothing_at_out(excerpt_copy, tmp_path):
    (excerpt_copy / "prod-vel-1.xyz").write_text("96\n i = 0, time = 0.0, E = -1.0\n  O 1 2\n")
    out = tmp_path / "out.npz"
    assert_one_line_error(mld("data", "import", excerpt_copy, "--out", out), "prod-vel-1.xyz")
    assert list(tmp_path.iterdir()) == [excerpt_copy]  # no dataset, no temporary file


def test_allow_truncated_drops_the_killed_frame_with_a_warning(excerpt_copy, tmp_path):
    path = excerpt_copy / "prod-frc-1.xyz"
    path.write_text(path.read_text()[:-1000])
    out = tmp_path / "x.npz"
    assert_one_line_error(mld("data", "import", excerpt_copy, "--out", out), "truncated", "prod-frc-1.xyz")
    assert not out.exists()
    result = mld("data", "import", excerpt_copy, "--out", out, "--allow-truncated")
    assert result.exit_code == 0, result.stderr
    assert re.search(r"^warning: .*prod-frc-1\.xyz: the last frame .* truncated", result.stderr, re.MULTILINE)
    assert Dataset.load(out).n_frames == 4


def test_species_option_restricts_elements(excerpt_dir, tmp_path):
    assert_one_line_error(
        mld("data", "import", excerpt_dir, "--out", tmp_path / "x.npz", "--species", "O"),
        "element 'H'", "allowed species are O",
    )
    assert_one_line_error(mld("data", "import", excerpt_dir, "--out", tmp_path / "x.npz", "--species", "O,Qq"), "Qq")


def test_import_of_unknown_source_is_one_line_error(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    assert_one_line_error(mld("data", "import", tmp_path / "notes.txt", "--out", tmp_path / "x.npz"), "notes.txt")
    assert_one_line_error(mld("data", "import", tmp_path / "absent", "--out", tmp_path / "x.npz"), "absent")


# --- extended XYZ ------------------------------------------------------------------------------


def write_extxyz(path, dataset, with_momenta=True, with_time=True, with_forces=True):
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import write

    frames = []
    for f in range(dataset.n_frames):
        atoms = Atoms(dataset.species, positions=dataset.positions[f], cell=dataset.cell[f], pbc=True)
        if with_momenta:
            atoms.set_velocities(dataset.velocities[f] / ASE_VELOCITY_TO_ANGSTROM_PER_FS)
        results = {"energy": dataset.energy[f]}
        if with_forces:
            results["forces"] = dataset.forces[f]
        atoms.calc = SinglePointCalculator(atoms, **results)
        if with_time:
            atoms.info["time"] = dataset.time[f]
        frames.append(atoms)
    write(path, frames, format="extxyz")
    return path


@pytest.fixture(scope="module")
def excerpt_dataset(excerpt_dir):
    from discover.cp2k import import_cp2k_run

    return import_cp2k_run(excerpt_dir)


def test_extxyz_written_by_ase_imports_to_the_same_arrays(excerpt_dataset, tmp_path):
    path = write_extxyz(tmp_path / "traj.extxyz", excerpt_dataset)
    dataset = import_extxyz(path)
    for key in ("positions", "forces", "velocities", "cell"):
        np.testing.assert_allclose(getattr(dataset, key), getattr(excerpt_dataset, key), atol=1e-7, err_msg=key)
    np.testing.assert_allclose(dataset.energy, excerpt_dataset.energy, rtol=1e-12)
    np.testing.assert_allclose(dataset.time, excerpt_dataset.time)
    np.testing.assert_allclose(dataset.temperature_k(), excerpt_dataset.temperature_k(), rtol=1e-6)
    assert dataset.metadata["sources"][0]["file"] == "traj.extxyz"


def test_extxyz_without_momenta_or_time_uses_zeros_and_timestep(excerpt_dataset, tmp_path):
    path = write_extxyz(tmp_path / "t.xyz", excerpt_dataset, with_momenta=False, with_time=False)
    with pytest.raises(ExtxyzFormatError, match=r"t\.xyz: frames carry no time=; give the timestep"):
        import_extxyz(path)
    dataset = import_extxyz(path, timestep_fs=0.25)
    np.testing.assert_allclose(dataset.time, 0.25 * np.arange(5))
    assert not dataset.velocities.any()
    result = mld("data", "import", path, "--out", tmp_path / "x.npz", "--timestep", "0.25")
    assert result.exit_code == 0, result.stderr
    assert Dataset.load(tmp_path / "x.npz").n_frames == 5


def test_extxyz_without_forces_is_refused(excerpt_dataset, tmp_path):
    path = write_extxyz(tmp_path / "t.extxyz", excerpt_dataset, with_forces=False)
    assert_one_line_error(mld("data", "import", path, "--out", tmp_path / "x.npz"), "frame 0: no forces")


def test_extxyz_garbage_is_refused(tmp_path):
    path = tmp_path / "bad.extxyz"
    path.write_text("3\nnot a comment line\nO 0 0\n")
    with pytest.raises(ExtxyzFormatError, match=r"bad\.extxyz: not a readable extended XYZ file"):
        import_extxyz(path)


# --- mld cp2k water-box / input (no CP2K needed) -----------------------------------------------


def test_water_box_and_input_commands_write_a_consistent_run(tmp_path):
    box = tmp_path / "box.xyz"
    result = mld("cp2k", "water-box", "--molecules", "6", "--density", "0.997", "--seed", "3", "--out", box)
    assert result.exit_code == 0, result.stderr
    inp = tmp_path / "run" / "md.inp"
    result = mld("cp2k", "input", box, "--out", inp, "--method", "pbe-d3", "--thermostat", "nose",
                 "--temperature", "350", "--timestep", "0.25", "--steps", "20")
    assert result.exit_code == 0, result.stderr
    root = read_cp2k_input(inp)
    settings = run_settings(root)
    assert (settings["project"], settings["method"], settings["thermostat"]) == ("md", "PBE-D3", "NOSE")
    assert (settings["temperature_k"], settings["timestep_fs"]) == (350.0, 0.25)
    length = float(re.search(r"in a ([\d.]+) Å cubic box", mld("cp2k", "water-box", "--molecules", "6",
                                                                   "--out", tmp_path / "b2.xyz").stdout)[1])
    np.testing.assert_allclose(cell_from_input(root), np.eye(3) * length, atol=1e-4)


def test_input_from_a_box_without_cell_is_one_line_error(tmp_path):
    box = tmp_path / "plain.xyz"
    box.write_text("3\nwater\nO 0 0 0\nH 0.96 0 0\nH 0 0.96 0\n")
    assert_one_line_error(mld("cp2k", "input", box, "--out", tmp_path / "x.inp"), "plain.xyz", "Lattice")
    assert not (tmp_path / "x.inp").exists()


def test_bad_method_is_one_line_error(tmp_path):
    mld("cp2k", "water-box", "--molecules", "2", "--out", tmp_path / "b.xyz")
    assert_one_line_error(
        mld("cp2k", "input", tmp_path / "b.xyz", "--out", tmp_path / "x.inp", "--method", "hf"), "method 'hf'"
    )


def test_cli_errors_decorator_is_reusable():
    from discover.cli import cli_errors
    from simulate.errors import MldError

    @cli_errors
    def failing(name: str):
        raise MldError(f"{name}: broken\nacross lines")

    extra = typer.Typer()
    extra.command()(failing)
    result = runner.invoke(extra, ["thing"])
    assert_one_line_error(result, "thing: broken across lines")
