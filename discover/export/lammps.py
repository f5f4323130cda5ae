"""LAMMPS export: ``pair_style table`` files, ``pair_style lepton`` lines, a data file and an input deck.

Units are LAMMPS ``metal``: Å, eV, ps, amu, velocities Å/ps. Atom type k+1 is species k of the model.

Tables are written on LAMMPS's own r² grid (``RSQ``) with as many points as ``pair_style table
linear N`` asks for, and with r_hi equal to the cutoff: then LAMMPS uses the written values as they
are instead of re-splining them (pair_table.cpp, ``tb->match``), and the only error left is linear
interpolation in r² between exact values. The lepton variant carries the closed-form law itself;
Lepton differentiates it analytically, so its forces are exact to rounding.

A molecular model (intramolecular laws on fixed molecules, ``simulate.topology``) becomes LAMMPS's
own molecular picture: ``atom_style molecular``, every intramolecular pair a bond of the type of its
law (``bond_style table``, on [r_min − 0.5 Å, r_max + 0.6 Å]: the core and the outer wall included),
``special_bonds lj 0 0 0`` so that the pair style skips every bonded pair, and the intermolecular
laws as ``pair_style table``.

A many-body model is refused (``pairs.pair_source``): ``pair_style sw`` holds only Stillinger–Weber
laws, and ``threebody/table`` looks forces up at the nearest point of an (r_ij, r_ik, θ) grid with no
interpolation, so a relative force error of 1e-3 on laws that vary on a 0.5 Å scale would need a grid
step of ~5e-4 Å, some 10¹¹ table lines per triplet type. The ase and c exports carry three-body terms.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from discover.export.lepton import lepton_expression
from discover.export.pairs import ExportError, Frame, PairSource, pair_source, tabulation_grid
from simulate import topology
from simulate.fileio import write_text_atomic
from simulate.space import wrap_positions

DEFAULT_TABLE_POINTS = 20000
DEFAULT_INNER_ANGSTROM = 0.5
ANGSTROM_PER_FS_TO_ANGSTROM_PER_PS = 1000.0
PS_PER_FS = 1e-3

TABLE_FILE = "mld.table"
BOND_TABLE_FILE = "mld_bonds.table"
BOND_TABLE_INNER_MARGIN_ANGSTROM = 0.5
BOND_TABLE_OUTER_MARGIN_ANGSTROM = 0.6
DATA_FILE = "data.lmp"
INPUT_FILE = "in.lammps"
DUMP_FILE = "dump.lammpstrj"


def _g(x) -> str:
    """A number as LAMMPS reads it back to the same double."""
    return repr(float(x))


def pair_file_name(style: str) -> str:
    return f"pair_{style}.lmp"


# --- potentials ------------------------------------------------------------------------
def table_text(source: PairSource, n_points: int = DEFAULT_TABLE_POINTS,
               inner_angstrom: float = DEFAULT_INNER_ANGSTROM) -> str:
    """A LAMMPS table file with one section per species pair (named like ``pair_type_names``)."""
    r = tabulation_grid(inner_angstrom, source.cutoff_angstrom, n_points, "rsq")
    lines = [f"# mld pair tables from {source.label}: u in eV, F = -du/dr in eV/Angstrom", ""]
    for (a, b), name in zip(source.type_pairs(), source.pair_names()):
        u, force_over_r = source.energy_force_over_r(a, b, r)
        if not (np.all(np.isfinite(u)) and np.all(np.isfinite(force_over_r))):
            raise ExportError(f"{source.label}: pair {name} is not finite on [{inner_angstrom}, cutoff] Å; "
                              "raise the table inner radius")
        lines += [name, f"N {n_points} RSQ {_g(inner_angstrom)} {_g(source.cutoff_angstrom)}", ""]
        lines += [f"{i + 1} {ri:.17g} {ui:.17g} {fi:.17g}" for i, (ri, ui, fi) in enumerate(zip(r, u, force_over_r * r))]
        lines.append("")
    return "\n".join(lines)


def table_pair_commands(source: PairSource, table_file: str = TABLE_FILE,
                        n_points: int = DEFAULT_TABLE_POINTS) -> list[str]:
    lines = [f"pair_style      table linear {n_points}"]
    for (a, b), name in zip(source.type_pairs(), source.pair_names()):
        lines.append(f"pair_coeff      {a + 1} {b + 1} {table_file} {name} {_g(source.cutoff_angstrom)}")
    return lines


def lepton_pair_commands(source: PairSource) -> list[str]:
    """``pair_style lepton`` with one closed-form expression per species pair."""
    if source.expressions is None:
        raise ExportError(f"{source.label}: pair_style lepton needs closed-form pair expressions, "
                          "not a compiled kernel module")
    lines = [f"pair_style      lepton {_g(source.cutoff_angstrom)}"]
    for (a, b), name in zip(source.type_pairs(), source.pair_names()):
        text = lepton_expression(source.expressions.expression(a, b))
        lines.append(f'pair_coeff      {a + 1} {b + 1} "{text}" {_g(source.cutoff_angstrom)}  # {name}')
    return lines


def bond_table_range(source: PairSource, a: int, b: int) -> tuple[float, float]:
    """[lo, hi] (Å) of the bond table of the intramolecular law of (a, b): its sampled range widened."""
    model = source.model
    if model is not None:
        name = next(n for x, y, n in source.intra_pairs() if (x, y) == (a, b))
        r_min, r_max = model.r_min_angstrom[name], model.r_max_angstrom[name]
        return max(0.1, r_min - BOND_TABLE_INNER_MARGIN_ANGSTROM), r_max + BOND_TABLE_OUTER_MARGIN_ANGSTROM
    # a kernel module does not say where its laws were sampled: the pair table's range
    return DEFAULT_INNER_ANGSTROM, source.cutoff_angstrom


def bond_table_text(source: PairSource, n_points: int = DEFAULT_TABLE_POINTS) -> str:
    """A LAMMPS ``bond_style table`` file with one section per intramolecular law, uniform in r."""
    lines = [f"# mld bond tables (intramolecular laws) from {source.label}: u in eV, F = -du/dr in eV/Angstrom", ""]
    for a, b, name in source.intra_pairs():
        lo, hi = bond_table_range(source, a, b)
        r = lo + np.arange(n_points) * (hi - lo) / (n_points - 1)
        u, force_over_r = source.intra_energy_force_over_r(a, b, r)
        if not (np.all(np.isfinite(u)) and np.all(np.isfinite(force_over_r))):
            raise ExportError(f"{source.label}: bond {name} is not finite on [{lo:.3f}, {hi:.3f}] Å")
        lines += [name, f"N {n_points}", ""]
        lines += [f"{i + 1} {ri:.17g} {ui:.17g} {fi:.17g}" for i, (ri, ui, fi) in enumerate(zip(r, u, force_over_r * r))]
        lines.append("")
    return "\n".join(lines)


def bond_commands(source: PairSource, n_points: int = DEFAULT_TABLE_POINTS) -> list[str]:
    """Bond style, one bond type per intramolecular law, and the exclusion of bonded pairs from the pair style."""
    lines = [f"bond_style      table linear {n_points}"]
    for k, (_, _, name) in enumerate(source.intra_pairs()):
        lines.append(f"bond_coeff      {k + 1} {BOND_TABLE_FILE} {name}")
    # every intramolecular pair is a bond: weight 0 removes it from the pair style's neighbour list
    lines.append("special_bonds   lj 0.0 0.0 0.0")
    return lines


def molecular_bonds(frame: Frame, source: PairSource) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(molecule of each atom, bond atoms i, j, bond type 0-based) of a frame, for a molecular model."""
    types = frame.types(source.species)
    box = np.asarray(frame.box_angstrom, dtype=float)
    molecules = topology.assign_molecules(np.asarray(frame.positions_angstrom, dtype=float), box, types,
                                          source.bond_cutoff_angstrom)
    i, j = topology.intramolecular_pairs(molecules)
    kinds = {(a, b): k for k, (a, b, _) in enumerate(source.intra_pairs())}
    lo, hi = np.minimum(types[i], types[j]), np.maximum(types[i], types[j])
    missing = [(x, y) for x, y in zip(lo, hi) if (x, y) not in kinds]
    if missing:
        x, y = missing[0]
        raise ExportError(f"{source.label}: the frame has an intramolecular {source.species[x]}–{source.species[y]} "
                          "pair, and the model has no law for it")
    return molecules, i, j, np.array([kinds[(x, y)] for x, y in zip(lo, hi)], dtype=np.int64)


# --- configuration ----------------------------------------------------------------------
def data_text(frame: Frame, source: PairSource) -> str:
    """A ``read_data`` file (atom_style atomic, or molecular with its bonds for a molecular model): wrapped
    positions with image flags, so that the unwrapped coordinates LAMMPS reports (xu, yu, zu) are the frame's."""
    box = np.asarray(frame.box_angstrom, dtype=float)
    if box.shape != (3,):
        raise ExportError(f"LAMMPS export needs an orthorhombic box of three lengths, got shape {box.shape}")
    types = frame.types(source.species)
    positions = np.asarray(frame.positions_angstrom, dtype=float)
    cell = np.diag(box)
    wrapped = wrap_positions(positions, cell)
    images = np.rint((positions - wrapped) / box).astype(int)
    molecular = source.is_molecular
    if molecular:
        molecules, bond_i, bond_j, bond_type = molecular_bonds(frame, source)
    lines = [
        f"LAMMPS data file written by mld from {source.label}",
        "",
        f"{len(types)} atoms",
        f"{source.n_species} atom types",
        *([f"{len(bond_i)} bonds", f"{len(source.intra_pairs())} bond types"] if molecular else []),
        "",
        f"0.0 {_g(box[0])} xlo xhi",
        f"0.0 {_g(box[1])} ylo yhi",
        f"0.0 {_g(box[2])} zlo zhi",
        "",
        "Masses",
        "",
    ]
    lines += [f"{k + 1} {_g(m)}  # {s}" for k, (s, m) in enumerate(zip(source.species, source.masses_amu))]
    if molecular:
        lines += ["", "Atoms  # molecular", ""]
        lines += [
            f"{i + 1} {m + 1} {t + 1} {x:.17g} {y:.17g} {z:.17g} {ix} {iy} {iz}"
            for i, (m, t, (x, y, z), (ix, iy, iz)) in enumerate(zip(molecules, types, wrapped, images))
        ]
        lines += ["", "Bonds", ""]
        lines += [f"{k + 1} {t + 1} {a + 1} {b + 1}" for k, (t, a, b) in enumerate(zip(bond_type, bond_i, bond_j))]
    else:
        lines += ["", "Atoms  # atomic", ""]
        lines += [
            f"{i + 1} {t + 1} {x:.17g} {y:.17g} {z:.17g} {ix} {iy} {iz}"
            for i, (t, (x, y, z), (ix, iy, iz)) in enumerate(zip(types, wrapped, images))
        ]
    if frame.velocities_angstrom_per_fs is not None:
        v = np.asarray(frame.velocities_angstrom_per_fs, dtype=float) * ANGSTROM_PER_FS_TO_ANGSTROM_PER_PS
        lines += ["", "Velocities", ""]
        lines += [f"{i + 1} {vx:.17g} {vy:.17g} {vz:.17g}" for i, (vx, vy, vz) in enumerate(v)]
    lines.append("")
    return "\n".join(lines)


def input_deck(
    pair_include: str,
    *,
    label: str,
    ensemble: str = "nvt",
    temperature_k: float = 300.0,
    timestep_fs: float = 0.5,
    steps: int = 1000,
    thermo_every: int = 100,
    dump_every: int = 100,
    thermostat_damping_fs: float = 50.0,
    create_velocities: bool = False,
    seed: int = 4928459,
    skin_angstrom: float = 1.0,
    atom_style: str = "atomic",
) -> str:
    """The input script: read the data, include the pair lines, integrate, print and dump."""
    if ensemble == "nvt":
        fix = (f"fix             integrate all nvt temp {_g(temperature_k)} {_g(temperature_k)} "
               f"{_g(thermostat_damping_fs * PS_PER_FS)}")
    elif ensemble == "nve":
        fix = "fix             integrate all nve"
    else:
        raise ExportError(f"unknown ensemble {ensemble!r} (use 'nvt' or 'nve')")
    lines = [
        f"# LAMMPS input written by mld (discover.export.lammps) from {label}",
        "# units metal: Angstrom, eV, ps, amu; atom type k+1 is species k of the model",
        "units           metal",
        f"atom_style      {atom_style}",
        "boundary        p p p",
        f"read_data       {DATA_FILE}",
        f"include         {pair_include}",
        f"neighbor        {_g(skin_angstrom)} bin",
        "neigh_modify    every 1 delay 0 check yes",
        f"timestep        {_g(timestep_fs * PS_PER_FS)}",
        "compute         pe_atom all pe/atom",
    ]
    if create_velocities:
        lines.append(f"velocity        all create {_g(temperature_k)} {seed} mom yes rot no dist gaussian")
    lines += [
        fix,
        "thermo_style    custom step time temp pe ke etotal press",
        "thermo_modify   norm no format float %.10g",
        f"thermo          {thermo_every}",
        # per-atom pe is half of each atom's agent loss H_k for a pairwise model
        f"dump            traj all custom {dump_every} {DUMP_FILE} id type xu yu zu vx vy vz fx fy fz c_pe_atom",
        "dump_modify     traj sort id format float %.17g",
        f"run             {steps}",
        "",
    ]
    return "\n".join(lines)


# --- the export ---------------------------------------------------------------------------
def export_lammps(
    model,
    out_dir,
    frame: Frame | None = None,
    *,
    style: str = "auto",
    n_points: int = DEFAULT_TABLE_POINTS,
    inner_angstrom: float = DEFAULT_INNER_ANGSTROM,
    **deck_options,
) -> list[Path]:
    """Write the LAMMPS files for a model into ``out_dir``; return their paths.

    Always ``mld.table`` and ``pair_table.lmp``; ``pair_lepton.lmp`` when the model is closed-form.
    With a frame, also ``data.lmp`` and ``in.lammps`` (run it with ``lmp -in in.lammps``) using the
    lepton pair lines when available (``style='auto'``), else the table. ``deck_options`` go to
    :func:`input_deck` (ensemble, temperature_k, timestep_fs, steps, thermo_every, dump_every, ...).
    """
    source = pair_source(model, "lammps")
    out_dir = Path(out_dir)
    if source.is_molecular and style == "lepton":
        raise ExportError(f"{source.label}: a molecular model is exported with tables (pair and bond); "
                          "use style 'table' or 'auto'")
    if style == "auto":
        style = "lepton" if source.expressions is not None else "table"
    if style not in ("table", "lepton"):
        raise ExportError(f"unknown LAMMPS pair style {style!r} (use 'table', 'lepton' or 'auto')")
    if style == "lepton" and source.expressions is None:
        lepton_pair_commands(source)  # raises: a kernel module has no expressions
    pair_lines = table_pair_commands(source, TABLE_FILE, n_points)
    files = {TABLE_FILE: table_text(source, n_points, inner_angstrom)}
    if source.is_molecular:
        files[BOND_TABLE_FILE] = bond_table_text(source, n_points)
        pair_lines += bond_commands(source, n_points)
        deck_options.setdefault("atom_style", "molecular")
    files[pair_file_name("table")] = "\n".join(pair_lines) + "\n"
    if source.expressions is not None:
        files[pair_file_name("lepton")] = "\n".join(lepton_pair_commands(source)) + "\n"
    if frame is not None:
        deck_options.setdefault("create_velocities", frame.velocities_angstrom_per_fs is None)
        files[DATA_FILE] = data_text(frame, source)
        files[INPUT_FILE] = input_deck(pair_file_name(style), label=source.label, **deck_options)
    # everything is formatted before the first write, so a refused export leaves no files behind
    return [write_text_atomic(out_dir / name, text) for name, text in files.items()]


# --- reading results back -------------------------------------------------------------------
def read_dump(path) -> list[tuple[int, dict[str, np.ndarray]]]:
    """Frames of a LAMMPS text dump (``dump custom``): (timestep, {column: array}) in file order."""
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"{path}: no such LAMMPS dump file")
    lines = path.read_text().splitlines()
    frames = []
    k = 0
    try:
        while k < len(lines):
            if not lines[k].startswith("ITEM: TIMESTEP"):
                raise ValueError(f"line {k + 1}: expected 'ITEM: TIMESTEP'")
            step = int(lines[k + 1])
            n_atoms = int(lines[k + 3])
            header = lines[k + 8].split()
            if header[:2] != ["ITEM:", "ATOMS"]:
                raise ValueError(f"line {k + 9}: expected 'ITEM: ATOMS'")
            table = np.loadtxt(lines[k + 9: k + 9 + n_atoms], ndmin=2)
            frames.append((step, {name: table[:, c] for c, name in enumerate(header[2:])}))
            k += 9 + n_atoms
    except (ValueError, IndexError) as exc:
        raise ExportError(f"{path}: not a LAMMPS text dump ({exc})") from None
    return frames
