"""Reading CP2K MD runs: values against the raw text, physics checks on units, and every refusal."""

from __future__ import annotations

import hashlib
import math
import re

import numpy as np
import pytest

import discover
from discover.cp2k import (
    Cp2kFormatError,
    Cp2kWarning,
    cell_from_input,
    cp2k_input_text,
    import_cp2k_run,
    read_cp2k_cores,
    read_cp2k_input,
    read_ener,
    read_xyz_frame,
    read_xyz_trajectory,
    run_cores,
    run_settings,
    water_box,
    write_water_box,
)
from simulate.errors import MldError
from simulate.space import minimum_image
from simulate.units import (
    AVOGADRO,
    BOHR_PER_AU_TIME_TO_ANGSTROM_PER_FS,
    BOHR_TO_ANGSTROM,
    HARTREE_PER_BOHR_TO_EV_PER_ANGSTROM,
    HARTREE_TO_EV,
    masses_amu,
)

N_ATOMS = 96
STRIDE = N_ATOMS + 2  # count line, header line, atom lines


def raw_atom_line(path, frame: int, atom: int) -> list[str]:
    """The raw text fields of one atom line, located by arithmetic on the file layout."""
    return path.read_text().splitlines()[frame * STRIDE + 2 + atom].split()


def edit_lines(path, edit):
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(edit(lines)))


# --- values ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def excerpt(excerpt_dir):
    return import_cp2k_run(excerpt_dir)


def test_excerpt_has_five_frames_of_32_waters(excerpt):
    assert excerpt.n_frames == 5
    assert excerpt.species_counts() == {"O": 32, "H": 64}
    assert list(excerpt.species[:3]) == ["O", "H", "H"]
    np.testing.assert_array_equal(excerpt.step, [0, 1, 2, 3, 4])
    np.testing.assert_allclose(excerpt.time, [0.0, 0.5, 1.0, 1.5, 2.0])
    np.testing.assert_allclose(excerpt.cell, np.broadcast_to(np.eye(3) * 9.865406, (5, 3, 3)))


@pytest.mark.parametrize("frame, atom", [(0, 0), (3, 7), (4, 95)])
def test_values_equal_raw_text_after_unit_conversion(excerpt, excerpt_dir, frame, atom):
    pos = raw_atom_line(excerpt_dir / "prod-pos-1.xyz", frame, atom)
    frc = raw_atom_line(excerpt_dir / "prod-frc-1.xyz", frame, atom)
    vel = raw_atom_line(excerpt_dir / "prod-vel-1.xyz", frame, atom)
    assert excerpt.species[atom] == pos[0] == frc[0] == vel[0]
    np.testing.assert_array_equal(excerpt.positions[frame, atom], [float(x) for x in pos[1:]])
    np.testing.assert_allclose(
        excerpt.forces[frame, atom], [float(x) * HARTREE_PER_BOHR_TO_EV_PER_ANGSTROM for x in frc[1:]], rtol=1e-15
    )
    np.testing.assert_allclose(
        excerpt.velocities[frame, atom], [float(x) * BOHR_PER_AU_TIME_TO_ANGSTROM_PER_FS for x in vel[1:]], rtol=1e-15
    )


def test_potential_energy_is_header_energy_in_ev_and_matches_ener_file(excerpt, excerpt_dir):
    headers = excerpt_dir.joinpath("prod-pos-1.xyz").read_text().splitlines()[1::STRIDE]
    header_hartree = [float(re.search(r"E =\s*(\S+)", h)[1]) for h in headers]
    np.testing.assert_allclose(excerpt.energy, np.array(header_hartree) * HARTREE_TO_EV, rtol=1e-15)
    ener = np.loadtxt(excerpt_dir / "prod-1.ener")
    np.testing.assert_allclose(excerpt.energy, ener[:, 4] * HARTREE_TO_EV, atol=1e-8)


def test_temperature_from_velocities_matches_cp2k_temp_column(excerpt, excerpt_dir):
    # Both use 3N-3 degrees of freedom; CP2K's masses (O 15.9994, H 1.00794) differ from
    # the IUPAC abridged ones in simulate.units by <1e-4 relative: measured 3e-5 here, 4e-5 over 2401 frames.
    cp2k_temperature = np.loadtxt(excerpt_dir / "prod-1.ener")[:, 3]
    np.testing.assert_allclose(excerpt.temperature_k(), cp2k_temperature, rtol=1e-4)


def test_velocities_are_time_derivative_of_positions(excerpt):
    # Central differences over 2 × 0.5 fs agree with CP2K's velocities to 0.2 %: the Bohr/a.u.-time
    # conversion is right (an error in it would show as a factor of order 1 or 40).
    dt = (excerpt.time[2:] - excerpt.time[:-2])[:, None, None]
    finite_difference = minimum_image(excerpt.positions[2:] - excerpt.positions[:-2], excerpt.cell[0]) / dt
    velocities = excerpt.velocities[1:-1]
    assert np.linalg.norm(finite_difference - velocities) / np.linalg.norm(velocities) < 0.01


def test_net_force_vanishes(excerpt):
    # Translational invariance of the xTB energy: Σ F = 0 (here to 1e-7 of a typical force).
    net = np.abs(excerpt.forces.sum(axis=1)).max()
    assert net < 1e-6 * N_ATOMS * np.abs(excerpt.forces).mean()


def test_work_of_forces_equals_energy_drop_along_shipped_trajectory(shipped_dataset):
    # E(x_{k+1}) − E(x_k) = −∫ F·dx ≈ −½ (F_k + F_{k+1})·Δx (trapezoid, error O(Δx³)): checks the sign
    # and the Hartree/Bohr → eV/Å conversion of the forces against the Hartree → eV energies.
    # Measured on the 2400 steps: slope 1.0004, correlation 0.9992.
    d = shipped_dataset
    dx = minimum_image(d.positions[1:] - d.positions[:-1], d.cell[0])
    work = -np.einsum("fij,fij->f", 0.5 * (d.forces[1:] + d.forces[:-1]), dx)
    energy_change = np.diff(d.energy)
    slope = np.dot(energy_change, work) / np.dot(work, work)
    assert slope == pytest.approx(1.0, abs=0.01)
    assert np.corrcoef(energy_change, work)[0, 1] > 0.995


def test_metadata_records_provenance(excerpt, excerpt_dir):
    meta = excerpt.metadata
    assert meta["program"] == "CP2K"
    assert meta["version"] == "2023.1"
    assert meta["method"] == "GFN1-xTB"
    assert meta["temperature_k"] == 300.0
    assert meta["timestep_fs"] == 0.5
    assert meta["thermostat"] == "CSVR"
    assert meta["thermostat_timecon_fs"] == 100.0
    assert meta["importer_version"] == discover.__version__
    files = {s["file"]: s["sha256"] for s in meta["sources"]}
    assert set(files) == {"prod-pos-1.xyz", "prod-frc-1.xyz", "prod-vel-1.xyz", "prod-1.ener", "prod.inp", "prod.out"}
    for name, digest in files.items():
        assert digest == hashlib.sha256((excerpt_dir / name).read_bytes()).hexdigest()
    used_time = np.loadtxt(excerpt_dir / "prod-1.ener")[:, 6]
    assert meta["cp2k_seconds_per_step"]["mean"] == pytest.approx(used_time[2:].mean())
    assert meta["cp2k_seconds_per_step"]["median"] == pytest.approx(np.median(used_time[2:]))


def test_dataset_round_trips_through_npz(excerpt, tmp_path):
    from discover.dataset import Dataset

    loaded = Dataset.load(excerpt.save(tmp_path / "x.npz"))
    np.testing.assert_array_equal(loaded.forces, excerpt.forces)
    assert loaded.metadata["sources"] == excerpt.metadata["sources"]


def test_shipped_dataset_begins_with_the_excerpt(shipped_dataset, excerpt):
    head = shipped_dataset.select(slice(0, 5))
    for key in ("positions", "forces", "velocities", "energy", "cell", "time", "step"):
        np.testing.assert_array_equal(getattr(head, key), getattr(excerpt, key), err_msg=key)
    assert shipped_dataset.n_frames == 2401
    assert shipped_dataset.metadata["method"] == "GFN1-xTB"


def test_import_of_full_size_run_is_fast(tmp_path, excerpt_dir):
    """Parsing is vectorised: 500 frames × 96 atoms × 3 files (a fifth of the real run) in well under 2 s."""
    import time

    for name in ("prod-pos-1.xyz", "prod-frc-1.xyz", "prod-vel-1.xyz"):
        lines = excerpt_dir.joinpath(name).read_text().splitlines(keepends=True)
        frames = []
        for k in range(500):
            block = list(lines[(k % 5) * STRIDE : (k % 5 + 1) * STRIDE])
            block[1] = f" i = {k:8d}, time = {0.5 * k:12.3f}, E = -185.1679973248\n"
            frames.extend(block)
        tmp_path.joinpath(name).write_text("".join(frames))
    tmp_path.joinpath("prod.inp").write_bytes(excerpt_dir.joinpath("prod.inp").read_bytes())
    start = time.perf_counter()
    dataset = import_cp2k_run(tmp_path)
    assert time.perf_counter() - start < 2.0
    assert dataset.n_frames == 500
    np.testing.assert_allclose(dataset.time, 0.5 * np.arange(500))


# --- refusals -------------------------------------------------------------------------


def test_missing_file_is_refused(excerpt_copy):
    (excerpt_copy / "prod-frc-1.xyz").unlink()
    with pytest.raises(Cp2kFormatError, match=r"prod-frc-1\.xyz: no such file"):
        import_cp2k_run(excerpt_copy)


def test_folder_without_trajectory_is_refused(tmp_path):
    with pytest.raises(Cp2kFormatError, match=r"no CP2K trajectory"):
        import_cp2k_run(tmp_path)


def test_frame_counts_that_differ_are_refused_unless_truncation_allowed(excerpt_copy):
    edit_lines(excerpt_copy / "prod-frc-1.xyz", lambda lines: lines[: 4 * STRIDE])
    with pytest.raises(Cp2kFormatError, match=r"frame counts differ .*prod-frc-1\.xyz: 4"):
        import_cp2k_run(excerpt_copy)
    with pytest.warns(Cp2kWarning, match="dropped 1 frame"):
        dataset = import_cp2k_run(excerpt_copy, allow_truncated=True)
    np.testing.assert_array_equal(dataset.step, [0, 1, 2, 3])
    assert dataset.metadata["dropped_frames"] == 1


def test_missing_middle_frame_is_refused_even_when_truncation_allowed(excerpt_copy):
    edit_lines(excerpt_copy / "prod-vel-1.xyz", lambda lines: lines[: 2 * STRIDE] + lines[3 * STRIDE :])
    with pytest.raises(Cp2kFormatError, match=r"holds step 2, which another file of the run lacks"):
        import_cp2k_run(excerpt_copy, allow_truncated=True)


def test_truncated_last_frame_is_refused_by_default_and_dropped_on_request(excerpt_copy, excerpt):
    # A killed run: the last frame stops in the middle of a line, with no final newline.
    path = excerpt_copy / "prod-pos-1.xyz"
    text = path.read_text()
    path.write_text(text[: len(text) - 40 * 60 - 17])
    with pytest.raises(Cp2kFormatError, match=r"prod-pos-1\.xyz: the last frame \(frame 4, from line 393\) is truncated, \d+ of 96"):
        read_xyz_trajectory(path)
    with pytest.raises(Cp2kFormatError, match=r"truncated"):
        import_cp2k_run(excerpt_copy)
    with pytest.warns(Cp2kWarning, match="truncated"):
        dataset = import_cp2k_run(excerpt_copy, allow_truncated=True)
    assert dataset.n_frames == 4
    np.testing.assert_array_equal(dataset.positions, excerpt.positions[:4])


def test_partial_last_line_of_ener_is_truncation(excerpt_copy):
    path = excerpt_copy / "prod-1.ener"
    path.write_text(path.read_text()[:-30])
    with pytest.raises(Cp2kFormatError, match=r"prod-1\.ener: last line 6 is truncated"):
        read_ener(path)
    with pytest.warns(Cp2kWarning):
        assert read_ener(path, allow_truncated=True).step.tolist() == [0, 1, 2, 3]


def test_different_atom_count_between_files_is_refused(excerpt_copy):
    def drop_last_atom(lines):
        kept = []
        for k in range(5):
            block = lines[k * STRIDE : (k + 1) * STRIDE - 1]
            block[0] = "      95\n"
            kept.extend(block)
        return kept

    edit_lines(excerpt_copy / "prod-vel-1.xyz", drop_last_atom)
    with pytest.raises(Cp2kFormatError, match=r"prod-vel-1\.xyz: 95 atoms per frame, but prod-pos-1\.xyz has 96"):
        import_cp2k_run(excerpt_copy)


def test_different_atom_order_between_files_is_refused(excerpt_copy):
    def swap_first_o_and_h(lines):
        for k in range(5):
            i = k * STRIDE + 2
            lines[i], lines[i + 1] = lines[i + 1], lines[i]
        return lines

    edit_lines(excerpt_copy / "prod-frc-1.xyz", swap_first_o_and_h)
    with pytest.raises(Cp2kFormatError, match=r"prod-frc-1\.xyz: line 3: atom 0 is 'H'.*same order"):
        import_cp2k_run(excerpt_copy)


def test_atom_order_changing_between_frames_is_refused(excerpt_copy):
    def swap_in_frame_2(lines):
        i = 2 * STRIDE + 2
        lines[i], lines[i + 1] = lines[i + 1], lines[i]
        return lines

    edit_lines(excerpt_copy / "prod-pos-1.xyz", swap_in_frame_2)
    with pytest.raises(Cp2kFormatError, match=rf"frame 2 \(line {2 * STRIDE + 3}\): atom 0 is 'H'.*must not change"):
        import_cp2k_run(excerpt_copy)


@pytest.mark.parametrize("bad", ["NaN", "-Infinity"])
def test_non_finite_value_is_refused_with_its_line(excerpt_copy, bad):
    line = 3 * STRIDE + 2 + 10  # 0-based index: frame 3, atom 10

    def poison(lines):
        fields = lines[line].split()
        lines[line] = f"  {fields[0]} {fields[1]} {bad} {fields[3]}\n"
        return lines

    edit_lines(excerpt_copy / "prod-frc-1.xyz", poison)
    with pytest.raises(Cp2kFormatError, match=rf"prod-frc-1\.xyz: frame 3 \(line {line + 1}\): atom 10 .*non-finite"):
        import_cp2k_run(excerpt_copy)


@pytest.mark.parametrize("bad", ["**************", "0.12.5", "1.0 2.0 3.0"])
def test_non_numeric_or_misshapen_line_is_refused_with_its_line(excerpt_copy, bad):
    line = 1 * STRIDE + 2 + 50

    def poison(lines):
        fields = lines[line].split()
        lines[line] = f"  {fields[0]} {fields[1]} {bad}\n"
        return lines

    edit_lines(excerpt_copy / "prod-vel-1.xyz", poison)
    with pytest.raises(Cp2kFormatError, match=rf"prod-vel-1\.xyz: frame 1 \(line {line + 1}\)"):
        import_cp2k_run(excerpt_copy)


def test_garbled_header_is_refused(excerpt_copy):
    def garble(lines):
        lines[2 * STRIDE + 1] = " step 2 at 1 fs\n"
        return lines

    edit_lines(excerpt_copy / "prod-pos-1.xyz", garble)
    with pytest.raises(Cp2kFormatError, match=rf"frame 2 \(line {2 * STRIDE + 2}\): header"):
        import_cp2k_run(excerpt_copy)


@pytest.mark.parametrize("element", ["Xx", "C"])
def test_species_outside_the_allowed_set_is_refused(excerpt_copy, element):
    def relabel_atom_1(lines):
        for k in range(5):
            i = k * STRIDE + 3
            lines[i] = lines[i].replace("H", element, 1)
        return lines

    for kind in ("pos", "frc", "vel"):
        edit_lines(excerpt_copy / f"prod-{kind}-1.xyz", relabel_atom_1)
    with pytest.raises(Cp2kFormatError, match=rf"line 4: atom 1 is element '{element}'; allowed species are O, H"):
        import_cp2k_run(excerpt_copy)
    if element == "C":  # allowed when asked for
        assert import_cp2k_run(excerpt_copy, species=("O", "H", "C")).species[1] == "C"


def test_missing_cell_is_refused(excerpt_copy):
    edit_lines(excerpt_copy / "prod.inp", lambda lines: [x for x in lines if "ABC" not in x])
    with pytest.raises(Cp2kFormatError, match=r"cannot find the cell: .*prod\.inp: no &CELL ABC"):
        import_cp2k_run(excerpt_copy)
    (excerpt_copy / "prod.inp").unlink()
    with pytest.raises(Cp2kFormatError, match=r"cannot find the cell: no CP2K input"):
        import_cp2k_run(excerpt_copy)


def test_cell_file_supplies_the_cell_per_frame(excerpt_copy):
    (excerpt_copy / "prod.inp").unlink()
    rows = ["#   Step   Time [fs]  Ax Ay Az Bx By Bz Cx Cy Cz  Volume [Angstrom^3]"]
    for step in range(5):
        length = 9.8 + 0.01 * step
        rows.append(f"{step} {0.5 * step} {length} 0 0 0 {length} 0 0 0 {length} {length**3}")
    (excerpt_copy / "prod-1.cell").write_text("\n".join(rows) + "\n")
    dataset = import_cp2k_run(excerpt_copy)
    np.testing.assert_allclose(dataset.cell[:, 2, 2], 9.8 + 0.01 * np.arange(5))


def test_energies_from_another_run_are_refused(excerpt_copy):
    def shift_potential(lines):
        fields = lines[3].split()
        fields[4] = f"{float(fields[4]) + 0.001:.9f}"
        lines[3] = "  ".join(fields) + "\n"
        return lines

    edit_lines(excerpt_copy / "prod-1.ener", shift_potential)
    with pytest.raises(Cp2kFormatError, match=r"prod-1\.ener: potential energy at step 2 differs"):
        import_cp2k_run(excerpt_copy)


def test_appended_restart_with_repeated_steps_is_refused(excerpt_copy):
    for kind in ("pos", "frc", "vel"):
        edit_lines(excerpt_copy / f"prod-{kind}-1.xyz", lambda lines: lines + lines[STRIDE : 2 * STRIDE])
    with pytest.raises(Cp2kFormatError, match=r"step 1 does not follow step 4"):
        import_cp2k_run(excerpt_copy)


# --- input files ----------------------------------------------------------------------


def test_input_cell_from_vectors_angles_and_units(tmp_path):
    def cell_of(body: str) -> np.ndarray:
        path = tmp_path / "x.inp"
        path.write_text(f"@SET L 9.5\n&FORCE_EVAL\n  &SUBSYS\n    &CELL\n{body}\n    &END CELL\n  &END SUBSYS\n&END FORCE_EVAL\n")
        return cell_from_input(read_cp2k_input(path), path)

    np.testing.assert_allclose(cell_of("ABC ${L} 8 7 # comment"), np.diag([9.5, 8.0, 7.0]))
    np.testing.assert_allclose(cell_of("ABC [bohr] 10 10 10"), np.eye(3) * 10 * BOHR_TO_ANGSTROM)
    vectors = cell_of("A 10 0 0\nB 1 9 0\nC 0.5 0.5 8")
    np.testing.assert_allclose(vectors, [[10, 0, 0], [1, 9, 0], [0.5, 0.5, 8]])
    triclinic = cell_of("ABC 10 9 8\nALPHA_BETA_GAMMA 80 85 95")
    lengths = np.linalg.norm(triclinic, axis=1)
    np.testing.assert_allclose(lengths, [10, 9, 8])
    a, b, c = triclinic

    def angle(u, v):
        return math.degrees(math.acos(np.dot(u, v) / np.linalg.norm(u) / np.linalg.norm(v)))

    np.testing.assert_allclose([angle(b, c), angle(a, c), angle(a, b)], [80, 85, 95])


def test_unbalanced_input_is_refused_with_its_line(tmp_path):
    path = tmp_path / "bad.inp"
    path.write_text("&GLOBAL\n  PROJECT x\n&END MOTION\n")
    with pytest.raises(Cp2kFormatError, match=r"bad\.inp: line 3: &END MOTION closes section &GLOBAL"):
        read_cp2k_input(path)


# --- building inputs -------------------------------------------------------------------


def test_water_box_has_rigid_molecules_at_the_requested_density():
    species, positions, cell = water_box(32, density_g_cm3=0.997, seed=4)
    assert list(species) == ["O", "H", "H"] * 32
    molecules = positions.reshape(32, 3, 3)
    oh = np.linalg.norm(molecules[:, 1:] - molecules[:, :1], axis=2)
    np.testing.assert_allclose(oh, 0.9572, atol=1e-12)
    u, v = molecules[:, 1] - molecules[:, 0], molecules[:, 2] - molecules[:, 0]
    hoh = np.degrees(np.arccos(np.einsum("ij,ij->i", u, v) / (oh[:, 0] * oh[:, 1])))
    np.testing.assert_allclose(hoh, 104.52, atol=1e-9)
    mass_g = masses_amu(species).sum() / AVOGADRO
    assert mass_g / (np.linalg.det(cell) * 1e-24) == pytest.approx(0.997, rel=1e-12)
    molecule_of = np.repeat(np.arange(32), 3)
    i, j = np.triu_indices(96, k=1)
    r = np.linalg.norm(minimum_image(positions[i] - positions[j], cell), axis=1)
    between = molecule_of[i] != molecule_of[j]
    assert r[between].min() >= 1.6
    oxygen = (species[i] == "O") & (species[j] == "O")
    assert r[oxygen].min() >= 2.5


def test_water_box_is_reproducible_and_seeded():
    a = water_box(8, seed=1)[1]
    np.testing.assert_array_equal(a, water_box(8, seed=1)[1])
    assert not np.allclose(a, water_box(8, seed=2)[1])


def test_water_box_that_cannot_be_packed_fails_clearly():
    with pytest.raises(MldError, match=r"could not place molecule \d+ of 64 .* lower the density"):
        water_box(64, density_g_cm3=3.0, seed=0, max_attempts=200)


def test_written_input_reads_back_as_the_same_run(tmp_path):
    species, positions, cell = write_water_box(tmp_path / "box.xyz", 4, seed=2)
    s2, p2, c2 = read_xyz_frame(tmp_path / "box.xyz")
    np.testing.assert_allclose(p2, positions, atol=1e-9)
    np.testing.assert_allclose(c2, cell, atol=1e-9)
    for method, name in (("xtb", "GFN1-xTB"), ("pbe-d3", "PBE-D3")):
        for thermostat in ("csvr", "nose", "none"):
            path = tmp_path / f"{method}-{thermostat}.inp"
            path.write_text(cp2k_input_text(s2, p2, c2, method=method, thermostat=thermostat,
                                            temperature_k=320, timestep_fs=0.25, steps=7))
            root = read_cp2k_input(path)
            settings = run_settings(root)
            assert settings["method"] == name
            assert settings["timestep_fs"] == 0.25
            assert settings["thermostat"] == (None if thermostat == "none" else thermostat.upper())
            assert settings["ensemble"] == ("NVE" if thermostat == "none" else "NVT")
            np.testing.assert_allclose(cell_from_input(root, path), cell, atol=1e-9)
            coords = root.section("FORCE_EVAL/SUBSYS/COORD")
            assert [k for k, _ in coords.keywords] == list(species)


def test_input_options_are_checked():
    species, positions, cell = water_box(2, seed=0)
    with pytest.raises(MldError, match="method 'lda'"):
        cp2k_input_text(species, positions, cell, method="lda")
    with pytest.raises(MldError, match="thermostat 'berendsen'"):
        cp2k_input_text(species, positions, cell, thermostat="berendsen")


def test_the_cores_of_a_run_come_from_its_output(excerpt_dir, excerpt_copy):
    # the excerpt's prod.out (its first 60 lines) states 2 OpenMP threads (DBCSR| OMP: Current number of
    # threads); a whole output states MPI processes and threads per process, and the cores are their product
    assert read_cp2k_cores(excerpt_dir / "prod.out") == 2
    text = (excerpt_copy / "prod.out").read_text()
    out = excerpt_copy / "prod.out"
    out.write_text(text + " GLOBAL| Total number of message passing processes                             4\n"
                          " GLOBAL| Number of threads for this process                                    3\n")
    assert read_cp2k_cores(out) == 12
    out.write_text("\n".join(line for line in text.splitlines() if "OMP" not in line))
    assert read_cp2k_cores(out) is None
    # a dataset's metadata leads to the output among the run's sources; without it at hand: unknown, not a guess
    sources = [{"file": "prod-pos-1.xyz"}, {"file": "prod.out"}]
    assert run_cores({"source_dir": str(excerpt_dir), "sources": sources}) == 2
    assert run_cores({"source_dir": str(excerpt_dir), "sources": [{"file": "other.out"}]}) is None
    assert run_cores({"source_dir": str(excerpt_dir)}) is None
    assert run_cores({}) is None
