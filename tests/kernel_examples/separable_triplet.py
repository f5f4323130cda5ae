"""A hand-written kernel module with a separable three-body law of every species triple.

morse_water pairs plus, for every centre k and neighbours j, l within r_3,

    w = R_{k;j|l}(r_kj) · R_{k;l|j}(r_kl) · Σ_{n≤3} p_n[k, j, l] cos^n θ,
    R_{k;j|l}(r) = a exp(−b (r − m)²) (1 − (r/r_3)²)³,

where (a, b, m) depend on the centre, the leg's neighbour *and the other neighbour's species*, and
the cubic in cos θ on the species triple. It is the most general form of the separable part of the
kernel interface (``triplet_radial``, ``TRIPLET_COS_POLYNOMIAL``, see ``simulate.kernels``), so the
moment sums of ``simulate.energy`` can be tested on it against triplet-by-triplet sums and the
O(N³) reference. The parameters are arbitrary; they make no physical water.
"""

import math
import os
import sys

import numba
import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from morse_water import CUTOFF_ANGSTROM, MASSES_AMU, SPECIES, pair_energy_force

from simulate.reference import compile_reference

__all__ = ["CUTOFF_ANGSTROM", "MASSES_AMU", "SPECIES", "pair_energy_force"]

THREEBODY_CUTOFF_ANGSTROM = 3.0
# (a eV^½, b 1/Å², m Å) of the leg [centre][neighbour][other neighbour]
_RADIAL = np.array([[[(1.0, 1.5, 2.6), (0.8, 2.0, 1.0)], [(0.7, 1.2, 1.1), (1.1, 3.0, 1.0)]],
                    [[(0.9, 1.0, 1.9), (0.6, 1.3, 1.8)], [(1.2, 0.9, 2.2), (0.5, 1.7, 1.6)]]])
_OOO, _OOH, _HOH = (0.2, -0.3, 0.5, 0.1), (0.1, 0.4, 0.2, -0.2), (0.3, 0.6, 0.25, 0.05)
_OHO, _OHH, _HHH = (-0.1, 0.2, 0.3, 0.0), (0.05, 0.1, 0.0, 0.3), (0.4, -0.2, 0.1, 0.2)
TRIPLET_COS_POLYNOMIAL = (((_OOO, _OOH), (_OOH, _HOH)), ((_OHO, _OHH), (_OHH, _HHH)))
_P = np.array(TRIPLET_COS_POLYNOMIAL)


@numba.njit(cache=False)
def triplet_radial(type_k, type_j, type_other, r):
    r3 = THREEBODY_CUTOFF_ANGSTROM
    if r >= r3:
        return 0.0, 0.0
    a, b, m = _RADIAL[type_k, type_j, type_other]
    g = a * math.exp(-b * (r - m) ** 2)
    x = 1.0 - (r / r3) ** 2
    return g * x**3, g * x * x * (-2.0 * b * (r - m) * x - 6.0 * r / r3**2)


@numba.njit(cache=False)
def triplet_energy_gradient(type_k, type_j, type_l, r_kj, r_kl, cos_theta):
    if r_kj >= THREEBODY_CUTOFF_ANGSTROM or r_kl >= THREEBODY_CUTOFF_ANGSTROM:
        return 0.0, 0.0, 0.0, 0.0
    r1, d1 = triplet_radial(type_k, type_j, type_l, r_kj)
    r2, d2 = triplet_radial(type_k, type_l, type_j, r_kl)
    p = _P[type_k, type_j, type_l]
    c = cos_theta
    poly = p[0] + c * (p[1] + c * (p[2] + c * p[3]))
    d_poly = p[1] + c * (2.0 * p[2] + c * 3.0 * p[3])
    return r1 * r2 * poly, d1 * r2 * poly, r1 * d2 * poly, r1 * r2 * d_poly


energy_forces = compile_reference(
    {"pair_energy_force": pair_energy_force, "CUTOFF_ANGSTROM": CUTOFF_ANGSTROM,
     "triplet_energy_gradient": triplet_energy_gradient, "THREEBODY_CUTOFF_ANGSTROM": THREEBODY_CUTOFF_ANGSTROM},
    threebody=True)
