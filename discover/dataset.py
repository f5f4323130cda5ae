"""The mld dataset: one compressed ``.npz`` file of an MD trajectory with forces.

Arrays (internal units, Å, fs, eV, amu):

==============  ==========  ===================================================
key             shape       meaning
==============  ==========  ===================================================
``species``     (N,)        element symbols, same order in every frame
``positions``   (F, N, 3)   Å, as the source wrote them (not necessarily wrapped)
``forces``      (F, N, 3)   eV/Å
``velocities``  (F, N, 3)   Å/fs
``energy``      (F,)        potential energy, eV
``cell``        (F, 3, 3)   Å, rows are the cell vectors
``time``        (F,)        fs
``step``        (F,)        MD step number
``metadata``    ()          JSON text: program, version, method, temperature,
                            timestep, sources with sha256, importer version
==============  ==========  ===================================================
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from simulate.errors import MldError
from simulate.fileio import atomic_path
from simulate.units import masses_amu, temperature_k

FORMAT_VERSION = 1
ARRAY_KEYS = ("species", "positions", "forces", "velocities", "energy", "cell", "time", "step")


class DatasetError(MldError, ValueError):
    """Bad dataset input; the message names the file and what is wrong."""


@dataclass(frozen=True)
class Dataset:
    species: np.ndarray  # (N,) str
    positions: np.ndarray  # (F,N,3) Å
    forces: np.ndarray  # (F,N,3) eV/Å
    velocities: np.ndarray  # (F,N,3) Å/fs
    energy: np.ndarray  # (F,) eV
    cell: np.ndarray  # (F,3,3) Å
    time: np.ndarray  # (F,) fs
    step: np.ndarray  # (F,) int
    metadata: dict = field(default_factory=dict)

    def __post_init__(self):
        n_frames, n_atoms = self.positions.shape[:2]
        expected = {
            "species": (n_atoms,),
            "positions": (n_frames, n_atoms, 3),
            "forces": (n_frames, n_atoms, 3),
            "velocities": (n_frames, n_atoms, 3),
            "energy": (n_frames,),
            "cell": (n_frames, 3, 3),
            "time": (n_frames,),
            "step": (n_frames,),
        }
        for key, shape in expected.items():
            if getattr(self, key).shape != shape:
                raise DatasetError(f"dataset array {key!r} has shape {getattr(self, key).shape}, expected {shape}")

    # --- sizes -------------------------------------------------------------------
    @property
    def n_frames(self) -> int:
        return self.positions.shape[0]

    @property
    def n_atoms(self) -> int:
        return self.positions.shape[1]

    @property
    def masses_amu(self) -> np.ndarray:
        return masses_amu(self.species)

    def species_counts(self) -> dict[str, int]:
        names, counts = np.unique(self.species, return_counts=True)
        return {str(n): int(c) for n, c in zip(names, counts)}

    # --- derived observables -----------------------------------------------------
    def temperature_k(self) -> np.ndarray:
        """Kinetic temperature per frame from the velocities (3N − 3 degrees of freedom)."""
        return np.asarray(temperature_k(self.velocities, self.masses_amu))

    def frames(self) -> pd.DataFrame:
        """One row per frame: step, time (fs), temperature (K), potential energy (eV)."""
        return pd.DataFrame(
            {
                "step": self.step,
                "time_fs": self.time,
                "temperature_k": self.temperature_k(),
                "potential_energy_ev": self.energy,
            }
        )

    def select(self, frame_indices) -> "Dataset":
        """A new dataset holding only the given frames (indices or a slice)."""
        idx = np.arange(self.n_frames)[frame_indices]
        return Dataset(
            species=self.species,
            positions=self.positions[idx],
            forces=self.forces[idx],
            velocities=self.velocities[idx],
            energy=self.energy[idx],
            cell=self.cell[idx],
            time=self.time[idx],
            step=self.step[idx],
            metadata=dict(self.metadata),
        )

    # --- files -------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically: a temporary file in the same folder, then rename."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = dict(self.metadata)
        meta.setdefault("format_version", FORMAT_VERSION)
        arrays = {key: getattr(self, key) for key in ARRAY_KEYS}
        arrays["species"] = np.asarray(self.species, dtype="U3")
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as handle:
                np.savez_compressed(handle, metadata=np.array(json.dumps(meta, sort_keys=True)), **arrays)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Dataset":
        path = Path(path)
        if not path.is_file():
            raise DatasetError(f"{path}: no such dataset file")
        try:
            with np.load(path, allow_pickle=False) as npz:
                missing = [k for k in ARRAY_KEYS + ("metadata",) if k not in npz.files]
                if missing:
                    raise DatasetError(f"{path}: not an mld dataset, missing {', '.join(missing)}")
                arrays = {k: npz[k] for k in ARRAY_KEYS}
                metadata = json.loads(str(npz["metadata"]))
        except DatasetError:
            raise
        except Exception as exc:  # zip/npy/json corruption
            raise DatasetError(f"{path}: cannot read dataset ({type(exc).__name__}: {exc})") from None
        arrays["species"] = arrays["species"].astype(str)
        try:
            return cls(metadata=metadata, **arrays)
        except DatasetError as exc:
            raise DatasetError(f"{path}: {exc}") from None
