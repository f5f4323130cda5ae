"""Trajectory files: extended XYZ frames out, XYZ/extended XYZ frames in.

Frames are written in the extended XYZ format that ``ase.io.read`` understands: a ``Lattice``, a
``Properties`` line naming the per-atom columns, and ``key=value`` info. Columns are

    species, pos (Å, unwrapped), velocities (Å/fs), forces (eV/Å), atom_loss (eV, H_k)

and the info carries ``step``, ``time_fs``, ``energy`` (potential energy, eV; ASE reads it as the
calculator's energy, as it reads ``forces``) and ``temperature_k``. Positions are unwrapped, so
mean-square displacements can be taken straight from the file.

Each frame is appended with one write and a flush, so a crash leaves whole frames behind; a
resumed run cuts the file back to the length recorded in its checkpoint.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from simulate.errors import MldError
from simulate.space import box_lengths

PROPERTIES = "species:S:1:pos:R:3:velocities:R:3:forces:R:3:atom_loss:R:1"


class TrajectoryError(MldError, ValueError):
    """A structure file that cannot be read as a starting frame."""


def extxyz_frame(
    species,
    positions: np.ndarray,
    box_angstrom: np.ndarray,
    velocities: np.ndarray,
    forces: np.ndarray,
    atom_loss: np.ndarray,
    info: dict,
) -> str:
    """One extended XYZ frame as text."""
    lx, ly, lz = (float(v) for v in box_angstrom)
    pairs = " ".join(f"{k}={v}" for k, v in info.items())
    header = (
        f'{len(positions)}\nLattice="{lx!r} 0.0 0.0 0.0 {ly!r} 0.0 0.0 0.0 {lz!r}" '
        f'Properties={PROPERTIES} {pairs} pbc="T T T"\n'
    )
    table = np.column_stack([positions, velocities, forces, atom_loss]).tolist()
    # %.10f: 1e-10 Å is far below any physical resolution; forces keep 10 significant digits.
    # One %-format per row: half the time of np.savetxt, which matters at a frame every few steps.
    return header + "".join(_ATOM_LINE % (s, *row) for s, row in zip(np.asarray(species).astype(str).tolist(), table))


_ATOM_LINE = "%-2s" + " %.10f" * 3 + " %.10e" * 7 + "\n"


def append_text(path: str | os.PathLike, text: str) -> None:
    """Append whole records with one write, flushed to the OS."""
    with open(path, "a") as handle:
        handle.write(text)
        handle.flush()


def truncate(path: str | os.PathLike, n_bytes: int) -> None:
    """Cut a log back to ``n_bytes`` (what a checkpoint saw), dropping frames written after it."""
    path = Path(path)
    if path.exists():
        with open(path, "r+b") as handle:
            handle.truncate(n_bytes)


def file_size(path: str | os.PathLike) -> int:
    path = Path(path)
    return path.stat().st_size if path.exists() else 0


def read_xyz_frame(path: str | os.PathLike, index: int = -1):
    """(species (N,), positions (N,3) Å, box (3,) Å or None, velocities (N,3) Å/fs or None) of one frame.

    Reads XYZ and extended XYZ (ours or any other writer's) through ASE. The box comes from the
    Lattice when the frame is periodic; velocities only from our own ``velocities`` column.
    """
    from ase.io import read

    path = Path(path)
    if not path.is_file():
        raise TrajectoryError(f"{path}: no such structure file")
    try:
        atoms = read(path, index=index)
    except Exception as exc:  # noqa: BLE001 -- ASE raises many kinds for malformed files
        raise TrajectoryError(f"{path}: cannot read frame {index} ({type(exc).__name__}: {exc})") from None
    box = None
    if atoms.pbc.any() and atoms.cell.rank == 3:
        try:
            box = box_lengths(np.array(atoms.cell))
        except MldError as exc:
            raise TrajectoryError(f"{path}: {exc}") from None
    velocities = atoms.arrays.get("velocities")
    return (
        np.array(atoms.get_chemical_symbols()),
        atoms.get_positions(),
        box,
        None if velocities is None else np.array(velocities, dtype=float),
    )


def read_trajectory(path: str | os.PathLike) -> dict:
    """All frames of a trajectory written by :func:`extxyz_frame`, as arrays.

    Returns ``species`` (N,), ``positions``, ``velocities``, ``forces`` (F,N,3), ``atom_loss`` (F,N),
    ``box`` (F,3) and ``step``, ``time_fs`` (F,). Much faster than ASE for long runs: the numeric
    block of every frame is parsed in one pass.
    """
    path = Path(path)
    if not path.is_file():
        raise TrajectoryError(f"{path}: no such trajectory file")
    lines = path.read_text().splitlines()
    if not lines:
        raise TrajectoryError(f"{path}: empty trajectory")
    try:
        n_atoms = int(lines[0])
    except ValueError:
        raise TrajectoryError(f"{path}: line 1 is not an atom count") from None
    block = n_atoms + 2
    n_frames = len(lines) // block
    if n_frames == 0 or len(lines) % block:
        raise TrajectoryError(f"{path}: {len(lines)} lines are not whole frames of {n_atoms} atoms")
    headers = lines[1::block][:n_frames]
    body = [line for f in range(n_frames) for line in lines[f * block + 2 : (f + 1) * block]]
    species = np.array([line.split(None, 1)[0] for line in body[:n_atoms]])
    try:
        table = np.array(" ".join(line.split(None, 1)[1] for line in body).split(), dtype=float)
        table = table.reshape(n_frames, n_atoms, 10)
    except ValueError:
        raise TrajectoryError(f"{path}: atom lines are not 10 numeric columns ({PROPERTIES})") from None

    def info_value(header: str, key: str) -> float:
        for token in header.split():
            if token.startswith(key + "="):
                return float(token.split("=", 1)[1])
        raise TrajectoryError(f"{path}: a frame header lacks {key}=")

    boxes = np.array([[float(v) for v in h.split('"')[1].split()][::4] for h in headers])
    return {
        "species": species,
        "positions": table[:, :, 0:3],
        "velocities": table[:, :, 3:6],
        "forces": table[:, :, 6:9],
        "atom_loss": table[:, :, 9],
        "box": boxes,
        "step": np.array([int(info_value(h, "step")) for h in headers]),
        "time_fs": np.array([info_value(h, "time_fs") for h in headers]),
    }
