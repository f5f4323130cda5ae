"""A hand-written kernel module that follows simulate.kernels: a smooth, topology-free water-like model.

O–H: Morse bond; O–O and H–H: Buckingham-like exp-6 pairs. Every pair is shifted-force at the
cutoff, so energy and force go continuously to zero at r_c. Used by tests and benchmarks as a
known, smooth potential; it is not a learned model.
"""

import math

import numba
import numpy as np

SPECIES = ("O", "H")
MASSES_AMU = (15.999, 1.008)
CUTOFF_ANGSTROM = 4.5

# (A eV, rho Å, C eV Å^6) for exp-6 pairs; Morse (D eV, a 1/Å, r0 Å) for O–H
_OO = (1500.0, 0.26, 8.0)
_HH = (60.0, 0.30, 0.0)
_OH_MORSE = (4.5, 2.2, 0.98)


@numba.njit(cache=False)
def _raw(type_i, type_j, r):
    """u(r) in eV and du/dr in eV/Å, no cutoff."""
    if type_i == 1 and type_j == 1:
        a, rho, c = _HH
        e = a * math.exp(-r / rho) - c / r**6
        d = -a / rho * math.exp(-r / rho) + 6.0 * c / r**7
        return e, d
    if type_i == 0 and type_j == 0:
        a, rho, c = _OO
        e = a * math.exp(-r / rho) - c / r**6
        d = -a / rho * math.exp(-r / rho) + 6.0 * c / r**7
        return e, d
    dd, aa, r0 = _OH_MORSE
    x = math.exp(-aa * (r - r0))
    e = dd * (1.0 - x) ** 2 - dd
    d = 2.0 * dd * aa * x * (1.0 - x)
    return e, d


@numba.njit(cache=False)
def pair_energy_force(type_i, type_j, r):
    if r >= CUTOFF_ANGSTROM:
        return 0.0, 0.0
    e, d = _raw(type_i, type_j, r)
    ec, dc = _raw(type_i, type_j, CUTOFF_ANGSTROM)
    # shifted force: u_sf(r) = u(r) - u(rc) - (r - rc) u'(rc)
    e_sf = e - ec - (r - CUTOFF_ANGSTROM) * dc
    d_sf = d - dc
    return e_sf, -d_sf / r


@numba.njit(cache=False)
def energy_forces(positions, types, box):
    n = positions.shape[0]
    forces = np.zeros((n, 3))
    loss = np.zeros(n)
    energy = 0.0
    for i in range(n):
        for j in range(i + 1, n):
            dx = positions[i, 0] - positions[j, 0]
            dy = positions[i, 1] - positions[j, 1]
            dz = positions[i, 2] - positions[j, 2]
            dx -= box[0] * round(dx / box[0])
            dy -= box[1] * round(dy / box[1])
            dz -= box[2] * round(dz / box[2])
            r = math.sqrt(dx * dx + dy * dy + dz * dz)
            if r < CUTOFF_ANGSTROM:
                e, f = pair_energy_force(types[i], types[j], r)
                energy += e
                loss[i] += e
                loss[j] += e
                forces[i, 0] += f * dx
                forces[i, 1] += f * dy
                forces[i, 2] += f * dz
                forces[j, 0] -= f * dx
                forces[j, 1] -= f * dy
                forces[j, 2] -= f * dz
    return energy, forces, loss
