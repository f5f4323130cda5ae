"""Extended XYZ trajectories with forces, from codes other than CP2K, read through ASE.

``ase.io.read(path, index=":")`` gives one ``Atoms`` per frame. ASE keeps positions in Å,
forces in eV/Å and energies in eV, which are mld's units already; only velocities need
converting, from ASE's time unit Å·√(amu/eV) to fs.
"""

from __future__ import annotations

import hashlib
import math
import os
import warnings
from pathlib import Path

import numpy as np

from discover.dataset import Dataset, DatasetError
from simulate.units import EV_PER_ANGSTROM_PER_AMU_TO_ANGSTROM_PER_FS2


class ExtxyzFormatError(DatasetError):
    """An extended XYZ file cannot become a dataset; the message names the file and frame."""


# ASE's unit of time is √(amu·Å²/eV); 1 eV/(amu·Å²) = EV_PER_ANGSTROM_PER_AMU_TO_ANGSTROM_PER_FS2 fs⁻²,
# so one ASE time unit is 1/√(that) fs (≈ 10.18 fs) and v[Å/fs] = v_ase · √(that).
ASE_VELOCITY_TO_ANGSTROM_PER_FS = math.sqrt(EV_PER_ANGSTROM_PER_AMU_TO_ANGSTROM_PER_FS2)

_ENERGY_KEYS = ("energy", "potential_energy", "Energy", "E")


def _frame_energy(atoms, path: Path, index: int) -> float:
    """Potential energy in eV from the attached calculator or the info dict."""
    if atoms.calc is not None and "energy" in atoms.calc.results:
        return float(atoms.get_potential_energy())
    for key in _ENERGY_KEYS:
        if key in atoms.info:
            try:
                return float(atoms.info[key])
            except (TypeError, ValueError):
                raise ExtxyzFormatError(f"{path}: frame {index}: energy {atoms.info[key]!r} is not a number") from None
    raise ExtxyzFormatError(f"{path}: frame {index}: no potential energy (energy= in the comment line)")


def _frame_forces(atoms, path: Path, index: int) -> np.ndarray:
    if atoms.calc is not None and "forces" in atoms.calc.results:
        return np.asarray(atoms.get_forces(), dtype=float)
    if "forces" in atoms.arrays:
        return np.asarray(atoms.arrays["forces"], dtype=float)
    raise ExtxyzFormatError(f"{path}: frame {index}: no forces (a forces:R:3 property is required)")


def import_extxyz(
    path: str | os.PathLike,
    species: tuple[str, ...] = ("O", "H"),
    timestep_fs: float | None = None,
    time_key: str = "time",
    program: str | None = None,
) -> Dataset:
    """Read an extended XYZ trajectory with per-frame energy and forces into a Dataset.

    Velocities come from the momenta when the file has them, else are zeros. Time comes from
    ``info[time_key]`` (fs) when every frame has it, else ``index * timestep_fs``. Every frame
    must hold the same atoms in the same order and a periodic cell.
    """
    from ase.io import read

    from discover import __version__

    path = Path(path)
    if not path.is_file():
        raise ExtxyzFormatError(f"{path}: no such file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            frames = read(path, index=":", format="extxyz")
    except Exception as exc:  # noqa: BLE001 - ASE raises many kinds for malformed text
        message = " ".join(str(exc).split()) or type(exc).__name__
        raise ExtxyzFormatError(f"{path}: not a readable extended XYZ file ({message})") from None
    if not frames:
        raise ExtxyzFormatError(f"{path}: no frames")

    symbols = np.array(frames[0].get_chemical_symbols())
    unknown = [s for s in symbols if s not in species]
    if unknown:
        raise ExtxyzFormatError(f"{path}: frame 0: element {unknown[0]!r}; allowed species are {', '.join(species)}")
    positions, forces, velocities, energy, cell, times, steps = [], [], [], [], [], [], []
    for index, atoms in enumerate(frames):
        if len(atoms) != symbols.size or np.any(np.array(atoms.get_chemical_symbols()) != symbols):
            raise ExtxyzFormatError(f"{path}: frame {index}: atoms differ in number or order from frame 0")
        if not np.all(atoms.pbc) or abs(np.linalg.det(atoms.cell.array)) < 1e-9:
            raise ExtxyzFormatError(f"{path}: frame {index}: no periodic cell (Lattice= with pbc in all directions)")
        positions.append(atoms.get_positions())
        forces.append(_frame_forces(atoms, path, index))
        has_momenta = "momenta" in atoms.arrays
        velocities.append(
            atoms.get_velocities() * ASE_VELOCITY_TO_ANGSTROM_PER_FS if has_momenta else np.zeros((len(atoms), 3))
        )
        energy.append(_frame_energy(atoms, path, index))
        cell.append(atoms.cell.array.copy())
        times.append(atoms.info.get(time_key))
        steps.append(atoms.info.get("step", index))

    arrays = {
        "positions": np.array(positions, dtype=float),
        "forces": np.array(forces, dtype=float),
        "velocities": np.array(velocities, dtype=float),
        "energy": np.array(energy, dtype=float),
        "cell": np.array(cell, dtype=float),
    }
    for name, values in arrays.items():
        bad = np.argwhere(~np.isfinite(values.reshape(len(frames), -1)))
        if bad.size:
            raise ExtxyzFormatError(f"{path}: frame {int(bad[0][0])}: non-finite {name}")
    if all(t is not None for t in times):
        time_fs = np.array(times, dtype=float)
    elif timestep_fs is not None:
        time_fs = np.arange(len(frames)) * float(timestep_fs)
    else:
        raise ExtxyzFormatError(f"{path}: frames carry no {time_key}=; give the timestep in fs")
    sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
    metadata = {
        "program": program or frames[0].info.get("program", "unknown"),
        "version": None,
        "method": frames[0].info.get("method"),
        "temperature_k": None,
        "timestep_fs": float(np.median(np.diff(time_fs))) if len(frames) > 1 else timestep_fs,
        "thermostat": None,
        "has_velocities": bool("momenta" in frames[0].arrays),
        "source_dir": str(path.resolve().parent),
        "sources": [{"file": path.name, "sha256": sha256, "bytes": path.stat().st_size}],
        "importer": "discover.extxyz.import_extxyz",
        "importer_version": __version__,
    }
    return Dataset(
        species=symbols.astype(str),
        time=time_fs,
        step=np.array(steps, dtype=np.int64),
        metadata=metadata,
        **arrays,
    )
