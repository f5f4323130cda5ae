"""Energy and forces of a kernel module, summed over a neighbour list.

A kernel module (see :mod:`simulate.kernels`) supplies the scalar law ``pair_energy_force(ti, tj, r)``
and, optionally, ``triplet_energy_gradient``. Here one generic loop maps it over the neighbours of
every atom. The loop is made by a factory that closes over the kernel, so Numba compiles the kernel
into the loop (and LLVM inlines it) instead of calling through Python; the compiled loops are
cached per kernel module for the life of the process.

Each atom k gets its own loss ``H_k = Σ_j u(r_kj)`` — the agent's view of the model: m_k q̈_k =
−∂H_{A_k}/∂q_k summed over the pair terms it shares — plus, with three-body terms, every ``w``
centred on k. The total energy counts each pair once and each triplet once.

The virial ``W = Σ_pairs r_ij · F_ij`` (eV) gives the pressure, see :mod:`simulate.quantity`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from types import ModuleType
from typing import NamedTuple

import numba
import numpy as np
from numba import prange

from simulate import partition
from simulate.kernels import has_threebody
from simulate.space import box_lengths


class ForceResult(NamedTuple):
    energy_ev: float
    forces_ev_per_angstrom: np.ndarray  # (N, 3)
    atom_loss_ev: np.ndarray  # (N,) H_k
    virial_ev: float  # Σ_pairs r_ij·F_ij (+ three-body Σ r·F)
    nearest_angstrom: np.ndarray  # (N,) distance to the nearest atom within the cutoff (inf if none)


def _make_pair_loop(pair_energy_force):
    def pair_loop(positions, types, box, neighbors, counts, cutoff):
        n = positions.shape[0]
        forces = np.empty((n, 3))
        loss = np.empty(n)
        virial = np.empty(n)
        nearest = np.empty(n)
        lx, ly, lz = box[0], box[1], box[2]
        rc2 = cutoff * cutoff
        for i in prange(n):
            xi, yi, zi = positions[i, 0], positions[i, 1], positions[i, 2]
            ti = types[i]
            fx = 0.0
            fy = 0.0
            fz = 0.0
            e = 0.0
            w = 0.0
            r2min = np.inf
            for a in range(counts[i]):
                j = neighbors[i, a]
                dx = xi - positions[j, 0]
                dy = yi - positions[j, 1]
                dz = zi - positions[j, 2]
                dx -= lx * np.rint(dx / lx)
                dy -= ly * np.rint(dy / ly)
                dz -= lz * np.rint(dz / lz)
                r2 = dx * dx + dy * dy + dz * dz
                if r2 < rc2:
                    u, f = pair_energy_force(ti, types[j], math.sqrt(r2))
                    e += u
                    fx += f * dx
                    fy += f * dy
                    fz += f * dz
                    w += f * r2
                    r2min = min(r2min, r2)
            forces[i, 0] = fx
            forces[i, 1] = fy
            forces[i, 2] = fz
            loss[i] = e
            # each pair is visited from both ends; half of r·F to each
            virial[i] = 0.5 * w
            nearest[i] = math.sqrt(r2min)
        return forces, loss, virial, nearest

    return partition.serial_and_parallel(pair_loop, cache=False)


def _make_triplet_loop(triplet_energy_gradient):
    # Serial: a triplet moves three atoms, so a parallel loop over centres would race on j and l.
    # Three-body cutoffs are short (first shell), so this loop is small next to the pair loop.
    @numba.njit
    def triplet_loop(positions, types, box, neighbors, counts, cutoff3, forces, loss, virial):
        n = positions.shape[0]
        capacity = neighbors.shape[1]
        near = np.empty(capacity, dtype=np.int64)
        dvec = np.empty((capacity, 3))
        rnear = np.empty(capacity)
        energy = 0.0
        for k in range(n):
            # neighbours of k inside the three-body cutoff, in ascending index so that j < l
            m = 0
            for a in range(counts[k]):
                j = neighbors[k, a]
                d0 = positions[j, 0] - positions[k, 0]
                d1 = positions[j, 1] - positions[k, 1]
                d2 = positions[j, 2] - positions[k, 2]
                d0 -= box[0] * np.rint(d0 / box[0])
                d1 -= box[1] * np.rint(d1 / box[1])
                d2 -= box[2] * np.rint(d2 / box[2])
                r = math.sqrt(d0 * d0 + d1 * d1 + d2 * d2)
                if r < cutoff3:
                    b = m
                    while b > 0 and near[b - 1] > j:  # insertion sort: m is a handful
                        near[b] = near[b - 1]
                        rnear[b] = rnear[b - 1]
                        dvec[b] = dvec[b - 1]
                        b -= 1
                    near[b] = j
                    rnear[b] = r
                    dvec[b, 0] = d0
                    dvec[b, 1] = d1
                    dvec[b, 2] = d2
                    m += 1
            tk = types[k]
            for a in range(m):
                j = near[a]
                r1 = rnear[a]
                for b in range(a + 1, m):
                    l = near[b]
                    r2 = rnear[b]
                    dot = dvec[a, 0] * dvec[b, 0] + dvec[a, 1] * dvec[b, 1] + dvec[a, 2] * dvec[b, 2]
                    inv12 = 1.0 / (r1 * r2)
                    cos = dot * inv12
                    w, g1, g2, gc = triplet_energy_gradient(tk, types[j], types[l], r1, r2, cos)
                    energy += w
                    loss[k] += w
                    wv = 0.0
                    for c in range(3):
                        # ∂cosθ/∂x_j = d_kl/(r1 r2) − cosθ d_kj/r1², and alike for l
                        grad_j = g1 * dvec[a, c] / r1 + gc * (dvec[b, c] * inv12 - cos * dvec[a, c] / (r1 * r1))
                        grad_l = g2 * dvec[b, c] / r2 + gc * (dvec[a, c] * inv12 - cos * dvec[b, c] / (r2 * r2))
                        forces[j, c] -= grad_j
                        forces[l, c] -= grad_l
                        forces[k, c] += grad_j + grad_l
                        # Σ x·F with x taken relative to the centre k (translation invariant)
                        wv -= dvec[a, c] * grad_j + dvec[b, c] * grad_l
                    virial[k] += wv
        return energy

    return triplet_loop


_LOOPS: dict = {}


def _loops(kernel_module: ModuleType):
    """The compiled loops of one kernel module, made once per process."""
    key = id(kernel_module)
    cached = _LOOPS.get(key)
    if cached is None or cached[0] is not kernel_module:
        pair = _make_pair_loop(kernel_module.pair_energy_force)
        triplet = _make_triplet_loop(kernel_module.triplet_energy_gradient) if has_threebody(kernel_module) else None
        cached = (kernel_module, pair, triplet)
        _LOOPS[key] = cached
    return cached[1], cached[2]


def interaction_cutoff_angstrom(kernel_module: ModuleType) -> float:
    """The range the neighbour list must cover: the pair cutoff or the three-body cutoff, if longer."""
    cutoff = float(kernel_module.CUTOFF_ANGSTROM)
    if has_threebody(kernel_module):
        cutoff = max(cutoff, float(kernel_module.THREEBODY_CUTOFF_ANGSTROM))
    return cutoff


def compute_forces(
    kernel_module: ModuleType, positions: np.ndarray, types: np.ndarray, neighbors: partition.NeighborList
) -> ForceResult:
    """Energy, forces, per-atom loss and virial of ``positions`` (Å) using an up-to-date list."""
    pair_loop, triplet_loop = _loops(kernel_module)
    box = neighbors.box_angstrom
    parallel = partition.use_parallel(len(positions))
    forces, loss, virial, nearest = pair_loop[parallel](
        positions, types, box, neighbors.neighbors, neighbors.counts, float(kernel_module.CUTOFF_ANGSTROM)
    )
    energy = 0.5 * float(loss.sum())
    if triplet_loop is not None:
        energy += triplet_loop(
            positions, types, box, neighbors.neighbors, neighbors.counts,
            float(kernel_module.THREEBODY_CUTOFF_ANGSTROM), forces, loss, virial,
        )
    return ForceResult(energy, forces, loss, float(virial.sum()), nearest)


ForceFn = Callable[[np.ndarray, "partition.NeighborList | None"], "tuple[partition.NeighborList, ForceResult]"]


def make_force_fn(kernel_module: ModuleType, types: np.ndarray, box, skin_angstrom: float = 1.0) -> ForceFn:
    """``force_fn(positions, neighbors) -> (neighbors, ForceResult)`` for the integrators.

    Pass ``neighbors=None`` to build the list; afterwards the list is rebuilt only when an atom has
    moved more than half the skin.
    """
    types = np.ascontiguousarray(types, dtype=np.int64)
    box = box_lengths(box)
    cutoff = interaction_cutoff_angstrom(kernel_module)

    def force_fn(positions, neighbors=None):
        positions = np.ascontiguousarray(positions, dtype=float)
        if neighbors is None:
            neighbors = partition.neighbor_list(positions, box, cutoff, skin_angstrom)
        else:
            neighbors = partition.update(neighbors, positions)
        return neighbors, compute_forces(kernel_module, positions, types, neighbors)

    return force_fn
