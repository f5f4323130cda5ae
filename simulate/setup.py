"""Starting a simulation: Maxwell–Boltzmann velocities and replicated supercells."""

from __future__ import annotations

import numpy as np

from simulate import units
from simulate.errors import MldError
from simulate.space import box_lengths


def remove_com_momentum(velocities_angstrom_per_fs: np.ndarray, masses_amu: np.ndarray) -> np.ndarray:
    """Velocities less the centre-of-mass velocity, so that Σ m v = 0."""
    com_velocity = masses_amu @ velocities_angstrom_per_fs / masses_amu.sum()
    return velocities_angstrom_per_fs - com_velocity


def maxwell_boltzmann(
    masses_amu: np.ndarray, temperature_k: float, seed: int, exact: bool = True
) -> np.ndarray:
    """Velocities (N,3) in Å/fs drawn at ``temperature_k`` with zero total momentum.

    Each component is normal with variance k_B T / m. With ``exact`` the velocities are then scaled
    so that the kinetic temperature (3N − 3 degrees of freedom) is exactly the target.
    """
    masses_amu = np.asarray(masses_amu, dtype=float)
    if temperature_k < 0:
        raise MldError(f"temperature must be non-negative, got {temperature_k} K")
    rng = np.random.default_rng(seed)
    sigma = np.sqrt(units.BOLTZMANN_EV_PER_K * temperature_k / (masses_amu * units.AMU_ANGSTROM2_PER_FS2_TO_EV))
    velocities = rng.standard_normal((len(masses_amu), 3)) * sigma[:, None]
    velocities = remove_com_momentum(velocities, masses_amu)
    if exact and temperature_k > 0 and len(masses_amu) > 1:
        velocities *= np.sqrt(temperature_k / units.temperature_k(velocities, masses_amu))
    return velocities


def replicate(positions: np.ndarray, species, box, repeats) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A supercell of ``repeats = (a, b, c)`` copies: (positions (abc·N, 3), species, box (3,)).

    Copies are laid out image by image, so atom i of copy m is index ``m·N + i``.
    """
    box = box_lengths(box)
    repeats = tuple(int(r) for r in repeats)
    if len(repeats) != 3 or min(repeats) < 1:
        raise MldError(f"replicate needs three positive integers, got {repeats}")
    positions = np.asarray(positions, dtype=float)
    shifts = np.array([(a, b, c) for a in range(repeats[0]) for b in range(repeats[1]) for c in range(repeats[2])])
    images = positions[None, :, :] + (shifts * box)[:, None, :]
    species = np.tile(np.asarray(species), len(shifts))
    return images.reshape(-1, 3), species, box * np.array(repeats)


def tile_per_atom(values: np.ndarray, repeats) -> np.ndarray:
    """A per-atom array (N, ...) such as velocities, repeated to match :func:`replicate`."""
    copies = int(np.prod(repeats))
    return np.tile(np.asarray(values), (copies,) + (1,) * (np.ndim(values) - 1))


def parse_repeats(text: str) -> tuple[int, int, int]:
    """'2x2x3' → (2, 2, 3); the CLI's --replicate form."""
    parts = text.lower().split("x")
    try:
        repeats = tuple(int(p) for p in parts)
    except ValueError:
        repeats = ()
    if len(repeats) != 3 or min(repeats) < 1:
        raise MldError(f"--replicate wants AxBxC with positive integers, e.g. 2x2x2; got {text!r}")
    return repeats
