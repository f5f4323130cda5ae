"""A soft repulsion whose law is NaN closer than NAN_BELOW_ANGSTROM: a model evaluated where it is undefined
(tests/test_md_run.py: a run that meets it stops cleanly)."""

import math

import numba
import numpy as np

SPECIES = ("Ar",)
MASSES_AMU = (39.948,)
CUTOFF_ANGSTROM = 6.0
NAN_BELOW_ANGSTROM = 2.5


@numba.njit(cache=False)
def pair_energy_force(type_i, type_j, r):
    if r >= CUTOFF_ANGSTROM:
        return 0.0, 0.0
    if r < NAN_BELOW_ANGSTROM:
        return math.nan, math.nan
    return 0.01 * (CUTOFF_ANGSTROM - r) ** 2, 0.02 * (CUTOFF_ANGSTROM - r) / r


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
            e, f = pair_energy_force(types[i], types[j], math.sqrt(d[0] ** 2 + d[1] ** 2 + d[2] ** 2))
            energy += e
            loss[i] += e
            loss[j] += e
            forces[i] += f * d
            forces[j] -= f * d
    return energy, forces, loss
