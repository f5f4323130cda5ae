"""Units and physical constants: the one place where every conversion lives.

Internal units of mld are Å (length), fs (time), eV (energy) and amu (mass).
Derived: forces in eV/Å, velocities in Å/fs, temperatures in K.

CP2K writes other units; convert them at the edge with the constants below
(CODATA 2018 values, as used by CP2K 2023 and ASE):

=====================  ========================  ==================================
CP2K file              quantity                  unit as written
=====================  ========================  ==================================
``*-pos-1.xyz``        positions                 Å (no conversion)
``*-frc-1.xyz``        forces                    Hartree/Bohr  (× HARTREE_PER_BOHR_TO_EV_PER_ANGSTROM)
``*-vel-1.xyz``        velocities                Bohr / atomic time unit (× BOHR_PER_AU_TIME_TO_ANGSTROM_PER_FS)
``*-1.ener``           kinetic, potential, cons  Hartree (× HARTREE_TO_EV)
``*-1.ener``           time                      fs (no conversion)
=====================  ========================  ==================================
"""

from __future__ import annotations

import numpy as np

# --- CODATA 2018 -------------------------------------------------------------
HARTREE_TO_EV = 27.211386245988
BOHR_TO_ANGSTROM = 0.529177210903
AU_TIME_TO_FS = 0.024188843265857  # ħ / E_h in fs
BOLTZMANN_EV_PER_K = 8.617333262e-5
EV_TO_JOULE = 1.602176634e-19
AMU_TO_KG = 1.66053906660e-27
AVOGADRO = 6.02214076e23
SPEED_OF_LIGHT_CM_PER_FS = 2.99792458e-5  # c in cm/fs, for wavenumbers

# --- derived conversions -------------------------------------------------------
HARTREE_PER_BOHR_TO_EV_PER_ANGSTROM = HARTREE_TO_EV / BOHR_TO_ANGSTROM
BOHR_PER_AU_TIME_TO_ANGSTROM_PER_FS = BOHR_TO_ANGSTROM / AU_TIME_TO_FS

# a = F/m: (eV/Å)/amu expressed in Å/fs².  1 eV/(amu·Å²) = EV_TO_JOULE/AMU_TO_KG m²/s²,
# and 1 m²/s² = 1e-10 Å²/fs².
EV_PER_ANGSTROM_PER_AMU_TO_ANGSTROM_PER_FS2 = EV_TO_JOULE / AMU_TO_KG * 1e-10
# ½ m v² with m in amu and v in Å/fs, expressed in eV.
AMU_ANGSTROM2_PER_FS2_TO_EV = 1.0 / EV_PER_ANGSTROM_PER_AMU_TO_ANGSTROM_PER_FS2
# diffusion: 1 Å²/fs = 1e-20 m² / 1e-15 s = 1e-5 m²/s = 1e4 × 1e-9 m²/s
ANGSTROM2_PER_FS_TO_1E9_M2_PER_S = 1e4
# pressure: eV/Å³ in bar
EV_PER_ANGSTROM3_TO_BAR = EV_TO_JOULE * 1e30 / 1e5

# Standard atomic masses (amu), IUPAC 2013 abridged, as ASE uses.
ATOMIC_MASSES_AMU = {
    "H": 1.008,
    "D": 2.014,
    "C": 12.011,
    "N": 14.007,
    "O": 15.999,
    "F": 18.998,
    "Na": 22.990,
    "Cl": 35.45,
}


def masses_amu(species) -> np.ndarray:
    """Masses in amu for a sequence of element symbols."""
    try:
        return np.array([ATOMIC_MASSES_AMU[str(s)] for s in species], dtype=float)
    except KeyError as exc:
        raise ValueError(f"no mass known for element {exc.args[0]!r}") from None


def kinetic_energy_ev(velocities_angstrom_per_fs: np.ndarray, masses: np.ndarray) -> float:
    """Total kinetic energy ½ Σ m v² in eV (masses in amu)."""
    v2 = np.einsum("...ij,...ij->...i", velocities_angstrom_per_fs, velocities_angstrom_per_fs)
    return 0.5 * AMU_ANGSTROM2_PER_FS2_TO_EV * np.sum(masses * v2, axis=-1)


def temperature_k(
    velocities_angstrom_per_fs: np.ndarray, masses: np.ndarray, degrees_of_freedom: int | None = None
) -> np.ndarray | float:
    """Instantaneous kinetic temperature 2 K / (n_dof k_B).

    By default n_dof = 3N − 3 (centre-of-mass motion removed), which is what
    CP2K uses for its ``Temp[K]`` column; works on one frame (N,3) or many (F,N,3).
    """
    return temperature_of_kinetic_k(kinetic_energy_ev(velocities_angstrom_per_fs, masses),
                                    velocities_angstrom_per_fs.shape[-2], degrees_of_freedom)


def temperature_of_kinetic_k(kinetic_ev, n_atoms: int, degrees_of_freedom: int | None = None):
    """2 K / (n_dof k_B) of a kinetic energy K (eV) of ``n_atoms`` atoms, n_dof as in :func:`temperature_k`."""
    if degrees_of_freedom is None:
        degrees_of_freedom = 3 * n_atoms - 3
    return 2.0 * kinetic_ev / (degrees_of_freedom * BOLTZMANN_EV_PER_K)
