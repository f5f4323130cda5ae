"""A hand-written kernel module that follows simulate.kernels: shifted-force Lennard-Jones argon.

ε = 0.0103 eV (119.8 K), σ = 3.405 Å (Rahman 1964), cut at 2.5σ with the shifted-force form, so
energy and force go smoothly to zero at r_c. A smooth, stable liquid for integrator tests.
"""

import math

import numba
import numpy as np

SPECIES = ("Ar",)
MASSES_AMU = (39.948,)
CUTOFF_ANGSTROM = 8.5

_EPSILON_EV = 0.0103
_SIGMA_ANGSTROM = 3.405


@numba.njit(cache=False)
def _raw(r):
    s6 = (_SIGMA_ANGSTROM / r) ** 6
    return 4.0 * _EPSILON_EV * (s6 * s6 - s6), 4.0 * _EPSILON_EV * (-12.0 * s6 * s6 + 6.0 * s6) / r


@numba.njit(cache=False)
def pair_energy_force(type_i, type_j, r):
    if r >= CUTOFF_ANGSTROM:
        return 0.0, 0.0
    e, d = _raw(r)
    ec, dc = _raw(CUTOFF_ANGSTROM)
    return e - ec - (r - CUTOFF_ANGSTROM) * dc, -(d - dc) / r


@numba.njit(cache=False)
def energy_forces(positions, types, box):
    n = positions.shape[0]
    forces = np.zeros((n, 3))
    loss = np.zeros(n)
    energy = 0.0
    for i in range(n):
        for j in range(i + 1, n):
            d = positions[i] - positions[j]
            for c in range(3):
                d[c] -= box[c] * round(d[c] / box[c])
            r = math.sqrt(d[0] ** 2 + d[1] ** 2 + d[2] ** 2)
            if r < CUTOFF_ANGSTROM:
                e, f = pair_energy_force(types[i], types[j], r)
                energy += e
                loss[i] += e
                loss[j] += e
                forces[i] += f * d
                forces[j] -= f * d
    return energy, forces, loss
