"""A soft repulsion whose law is NaN closer than NAN_BELOW_ANGSTROM: a model evaluated where it is undefined
(tests/test_md_run.py: a run that meets it stops cleanly)."""

import math

import numba

from simulate.reference import compile_reference

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


# the O(N²) reference every kernel module carries, from the one text of it (simulate.reference)
energy_forces = compile_reference({"pair_energy_force": pair_energy_force, "CUTOFF_ANGSTROM": CUTOFF_ANGSTROM})
