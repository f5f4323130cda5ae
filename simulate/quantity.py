"""Thermodynamic quantities of a configuration: kinetic energy, temperature, pressure, momentum.

Temperatures follow :func:`simulate.units.temperature_k` (3N − 3 degrees of freedom unless told
otherwise: the integrators conserve the total momentum, which is set to zero at the start).
"""

from __future__ import annotations

import numpy as np

from simulate.units import (
    AMU_ANGSTROM2_PER_FS2_TO_EV,
    EV_PER_ANGSTROM3_TO_BAR,
    kinetic_energy_ev,
    temperature_k,
    temperature_of_kinetic_k,
)

__all__ = ["degrees_of_freedom", "kinetic_energy_ev", "pressure_bar", "temperature_k", "temperature_of_kinetic_k",
           "total_momentum"]


def degrees_of_freedom(n_atoms: int) -> int:
    """3N − 3: the centre-of-mass momentum is fixed at zero."""
    return 3 * n_atoms - 3


def pressure_bar(kinetic_ev: float, virial_ev: float, box_angstrom: np.ndarray) -> float:
    """Virial pressure P = (2K + W) / 3V, W = Σ_pairs r_ij·F_ij (Allen & Tildesley eq. 2.61), in bar."""
    volume = float(np.prod(box_angstrom))
    return (2.0 * kinetic_ev + virial_ev) / (3.0 * volume) * EV_PER_ANGSTROM3_TO_BAR


def total_momentum(velocities_angstrom_per_fs: np.ndarray, masses_amu: np.ndarray) -> np.ndarray:
    """Σ m v, in amu·Å/fs (3,)."""
    return masses_amu @ velocities_angstrom_per_fs


def kinetic_energy_per_atom_ev(velocities_angstrom_per_fs: np.ndarray, masses_amu: np.ndarray) -> np.ndarray:
    """½ m v² of each atom (eV)."""
    return 0.5 * AMU_ANGSTROM2_PER_FS2_TO_EV * masses_amu * np.einsum("ij,ij->i", velocities_angstrom_per_fs,
                                                                       velocities_angstrom_per_fs)
