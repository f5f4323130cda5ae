"""The plain minimum-image reference sums of the kernel interface, as Python source.

Every kernel module has ``energy_forces`` (see :mod:`simulate.kernels`): O(N²) pairs by the minimum
image, plus O(N³) triplets for a many-body model. It is the reference the cell-list loops of
:mod:`simulate.energy` are tested against, so it is kept as simple as it can be. Its text lives here
once: :mod:`discover.codegen` writes it into every generated ``kernels.py``, and
:mod:`simulate.tabulate` compiles it in-process over its table kernels (:func:`compile_reference`).
The text is this package's own, never a model file's.

The sums call, as globals of the module they end up in: ``pair_energy_force`` and ``CUTOFF_ANGSTROM``;
``intra_pair_energy_force`` (molecular); ``triplet_energy_gradient`` and ``THREEBODY_CUTOFF_ANGSTROM``
with the pair sum named ``pair_energy_forces`` (many-body).
"""

from __future__ import annotations

import math

import numba
import numpy as np

PAIR_SUM = '''

@numba.njit(cache=False)
def {function}(positions, types, box{molecules}):
    """{doc}"""
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
{select}
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
'''

ATOMIC_SELECT = """\
            if r >= CUTOFF_ANGSTROM:
                continue
            e, f = pair_energy_force(types[i], types[j], r)"""

MOLECULAR_SELECT = """\
            if molecules[i] == molecules[j]:
                e, f = intra_pair_energy_force(types[i], types[j], r)
            elif r < CUTOFF_ANGSTROM:
                e, f = pair_energy_force(types[i], types[j], r)
            else:
                continue"""


def pair_sum_source(function: str = "energy_forces", molecular: bool = False) -> str:
    """The O(N²) minimum-image pair sum of a kernel module (atomic, or molecular with a ``molecules`` argument)."""
    if molecular:
        doc = ("O(N²) minimum-image reference of a molecular model: atoms of one molecule (``molecules[i]``, an\n"
               "    integer per atom) interact by the bonded law at any distance, all other pairs by the pair law below\n"
               "    the cutoff. Returns (energy eV, forces (N,3) eV/Å, per-atom loss H_k (N,) eV).")
    else:
        doc = "O(N²) minimum-image reference: (energy eV, forces (N,3) eV/Å, per-atom loss H_k (N,) eV)."
    return PAIR_SUM.format(function=function, molecules=", molecules" if molecular else "", doc=doc,
                            select=MOLECULAR_SELECT if molecular else ATOMIC_SELECT)


TRIPLET_SUM_SOURCE = '''

@numba.njit(cache=False)
def energy_forces(positions, types, box):
    """O(N²) pairs plus O(N³) triplets by the minimum image: (energy eV, forces (N,3) eV/Å, loss H_k (N,) eV)."""
    energy, forces, loss = pair_energy_forces(positions, types, box)
    n = positions.shape[0]
    near = np.empty(n, dtype=np.int64)
    dvec = np.empty((n, 3))
    rnear = np.empty(n)
    for k in range(n):
        m = 0
        for j in range(n):
            if j == k:
                continue
            d0 = positions[j, 0] - positions[k, 0]
            d1 = positions[j, 1] - positions[k, 1]
            d2 = positions[j, 2] - positions[k, 2]
            d0 -= box[0] * round(d0 / box[0])
            d1 -= box[1] * round(d1 / box[1])
            d2 -= box[2] * round(d2 / box[2])
            r = math.sqrt(d0 * d0 + d1 * d1 + d2 * d2)
            if r < THREEBODY_CUTOFF_ANGSTROM:
                near[m] = j
                rnear[m] = r
                dvec[m, 0] = d0
                dvec[m, 1] = d1
                dvec[m, 2] = d2
                m += 1
        for a in range(m):
            for b in range(a + 1, m):
                j = near[a]
                l = near[b]
                r1 = rnear[a]
                r2 = rnear[b]
                inv12 = 1.0 / (r1 * r2)
                cos = (dvec[a, 0] * dvec[b, 0] + dvec[a, 1] * dvec[b, 1] + dvec[a, 2] * dvec[b, 2]) * inv12
                w, g1, g2, gc = triplet_energy_gradient(types[k], types[j], types[l], r1, r2, cos)
                energy += w
                loss[k] += w
                for c in range(3):
                    grad_j = g1 * dvec[a, c] / r1 + gc * (dvec[b, c] * inv12 - cos * dvec[a, c] / (r1 * r1))
                    grad_l = g2 * dvec[b, c] / r2 + gc * (dvec[a, c] * inv12 - cos * dvec[b, c] / (r2 * r2))
                    forces[j, c] -= grad_j
                    forces[l, c] -= grad_l
                    forces[k, c] += grad_j + grad_l
    return energy, forces, loss
'''


def compile_reference(globals_: dict, molecular: bool = False, threebody: bool = False):
    """``energy_forces`` compiled from the source above, over the kernels and cutoffs in ``globals_``."""
    namespace = {"math": math, "numba": numba, "np": np, **globals_}
    if threebody:
        exec(pair_sum_source("pair_energy_forces") + TRIPLET_SUM_SOURCE, namespace)  # noqa: S102 (our own text)
    else:
        exec(pair_sum_source(molecular=molecular), namespace)  # noqa: S102 (our own text)
    return namespace["energy_forces"]
