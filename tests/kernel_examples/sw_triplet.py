"""A hand-written kernel module with a three-body term: morse_water pairs plus a Stillinger–Weber angle.

The triplet term, centred on an O with two H neighbours j < l within r_3,

    w = λ (cosθ − cosθ₀)² · exp(γ/(r_kj − r_3)) · exp(γ/(r_kl − r_3)),

is the Stillinger–Weber (1985, Phys. Rev. B 31, 5262) angular form; it and all its derivatives go
to zero at r_3. Here it pulls the H–O–H angle toward 104.5°. Its reference ``energy_forces`` is an
O(N³) minimum-image loop, for tests only.

It also gives the optional separable form of ``simulate.kernels``: the radial factor
exp(γ/(r − r_3)) of each leg (``triplet_radial``) and λ (c − cosθ₀)² expanded in powers of c
(``TRIPLET_COS_POLYNOMIAL``), zero for every other triplet type.
"""

import math
import os
import sys

import numba
import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from morse_water import CUTOFF_ANGSTROM, MASSES_AMU, SPECIES, pair_energy_force
from morse_water import energy_forces as pair_energy_forces

__all__ = ["CUTOFF_ANGSTROM", "MASSES_AMU", "SPECIES", "pair_energy_force"]

THREEBODY_CUTOFF_ANGSTROM = 1.6
_LAMBDA_EV = 2.0
_GAMMA_ANGSTROM = 0.3
_COS0 = math.cos(math.radians(104.5))

# [type_k][type_j][type_l][n]: λ (c − c0)² = λ c0² − 2 λ c0 c + λ c² for centre O (0), neighbours H (1), H (1)
_NO_LAW = (0.0, 0.0, 0.0)
TRIPLET_COS_POLYNOMIAL = (
    ((_NO_LAW, _NO_LAW), (_NO_LAW, (_LAMBDA_EV * _COS0**2, -2.0 * _LAMBDA_EV * _COS0, _LAMBDA_EV))),
    ((_NO_LAW, _NO_LAW), (_NO_LAW, _NO_LAW)),
)


@numba.njit(cache=False)
def triplet_energy_gradient(type_k, type_j, type_l, r_kj, r_kl, cos_theta):
    if type_k != 0 or type_j != 1 or type_l != 1:
        return 0.0, 0.0, 0.0, 0.0
    r3 = THREEBODY_CUTOFF_ANGSTROM
    if r_kj >= r3 or r_kl >= r3:
        return 0.0, 0.0, 0.0, 0.0
    e1 = math.exp(_GAMMA_ANGSTROM / (r_kj - r3))
    e2 = math.exp(_GAMMA_ANGSTROM / (r_kl - r3))
    a = cos_theta - _COS0
    w = _LAMBDA_EV * a * a * e1 * e2
    dw_dr1 = -w * _GAMMA_ANGSTROM / (r_kj - r3) ** 2
    dw_dr2 = -w * _GAMMA_ANGSTROM / (r_kl - r3) ** 2
    dw_dcos = 2.0 * _LAMBDA_EV * a * e1 * e2
    return w, dw_dr1, dw_dr2, dw_dcos


@numba.njit(cache=False)
def triplet_radial(type_k, type_j, type_other, r):
    """(exp(γ/(r − r_3)), its derivative) for a leg O–H of an H–O–H triplet; zero otherwise and beyond r_3."""
    r3 = THREEBODY_CUTOFF_ANGSTROM
    if r >= r3 or type_k != 0 or type_j != 1 or type_other != 1:
        return 0.0, 0.0
    e = math.exp(_GAMMA_ANGSTROM / (r - r3))
    return e, -e * _GAMMA_ANGSTROM / (r - r3) ** 2


@numba.njit(cache=False)
def energy_forces(positions, types, box):
    energy, forces, loss = pair_energy_forces(positions, types, box)
    n = positions.shape[0]
    for k in range(n):
        for j in range(n):
            for l in range(j + 1, n):
                if j == k or l == k:
                    continue
                d1 = positions[j] - positions[k]
                d2 = positions[l] - positions[k]
                for c in range(3):
                    d1[c] -= box[c] * round(d1[c] / box[c])
                    d2[c] -= box[c] * round(d2[c] / box[c])
                r1 = math.sqrt(np.sum(d1 * d1))
                r2 = math.sqrt(np.sum(d2 * d2))
                cos = np.sum(d1 * d2) / (r1 * r2)
                w, g1, g2, gc = triplet_energy_gradient(types[k], types[j], types[l], r1, r2, cos)
                if w == 0.0 and g1 == 0.0 and gc == 0.0:
                    continue
                energy += w
                loss[k] += w
                grad_j = g1 * d1 / r1 + gc * (d2 / (r1 * r2) - cos * d1 / r1**2)
                grad_l = g2 * d2 / r2 + gc * (d1 / (r1 * r2) - cos * d2 / r2**2)
                forces[j] -= grad_j
                forces[l] -= grad_l
                forces[k] += grad_j + grad_l
    return energy, forces, loss
