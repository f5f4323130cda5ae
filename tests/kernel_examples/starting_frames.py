"""Starting frames for the engine tests: the real CP2K water box and an argon fcc lattice."""

from pathlib import Path

import numpy as np

from simulate.units import BOHR_PER_AU_TIME_TO_ANGSTROM_PER_FS

REPO = Path(__file__).resolve().parents[2]
DATASET = REPO / "data" / "water32_300K.npz"
CP2K_DIR = REPO / "tests" / "fixtures" / "water32_excerpt"  # first frames of the raw CP2K run
WATER32_BOX_ANGSTROM = np.full(3, 9.865406)  # &CELL ABC of prod.inp


def _first_xyz_frame(path: Path):
    lines = path.read_text().splitlines()
    n = int(lines[0])
    rows = [line.split() for line in lines[2 : 2 + n]]
    return np.array([r[0] for r in rows]), np.array([[float(x) for x in r[1:4]] for r in rows])


def water32_frame():
    """(species, positions Å, box Å, velocities Å/fs) of frame 0 of the CP2K GFN1-xTB water run."""
    if DATASET.is_file():
        with np.load(DATASET) as npz:
            return (npz["species"].astype(str), npz["positions"][0], np.diag(npz["cell"][0]).copy(),
                    npz["velocities"][0])
    species, positions = _first_xyz_frame(CP2K_DIR / "prod-pos-1.xyz")
    _, velocities = _first_xyz_frame(CP2K_DIR / "prod-vel-1.xyz")
    return species, positions, WATER32_BOX_ANGSTROM.copy(), velocities * BOHR_PER_AU_TIME_TO_ANGSTROM_PER_FS


def argon_fcc(cells: int = 3, lattice_angstrom: float = 5.72):
    """(species, positions Å, box Å) of an fcc argon crystal of cells³·4 atoms (liquid density at 5.72 Å)."""
    basis = np.array([[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    grid = np.array([(i, j, k) for i in range(cells) for j in range(cells) for k in range(cells)])
    positions = ((grid[:, None, :] + basis[None, :, :]) * lattice_angstrom).reshape(-1, 3)
    return np.array(["Ar"] * len(positions)), positions, np.full(3, cells * lattice_angstrom)
