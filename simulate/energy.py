"""Energy and forces of a kernel module, summed over a neighbour list.

A kernel module (see :mod:`simulate.kernels`) supplies the scalar law ``pair_energy_force(ti, tj, r)``
and, optionally, ``triplet_energy_gradient``. Here one generic loop maps it over the neighbours of
every atom. The loop is made by a factory that closes over the kernel, so Numba compiles the kernel
into the loop (and LLVM inlines it) instead of calling through Python; the compiled loops are
cached per kernel module for the life of the process.

Pair-only kernels run on a *half* neighbour list (see :mod:`simulate.partition`): each pair's
kernel is called once and its force applied to both atoms (Newton's third law), half the work
of a full list. The loop goes through blocks of x-layers of cells: even blocks in parallel, then
odd ones; a layer's pairs reach only itself and the next layer, so no two threads write one atom
and every atom's sums run in one fixed order, the same bit for bit for any number of threads.
Three-body kernels need every neighbour pair of a centre and run on a full list.

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
    """The pair loop over a *full* list: each atom sums its own row, so a parallel loop is race-free."""

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


def _make_half_pair_loop(pair_energy_force):
    """The pair loop over a *half* list: one kernel call per pair, its force to both atoms."""

    @numba.njit(inline="always")
    def atom_row(i, positions, types, lx, ly, lz, ix, iy, iz, neighbors, counts, rc2, forces, loss, r2min,
                 near_j, near_d):
        """Every pair of row i; returns its Σ r·F. Writes to i and to its row's atoms only.

        Two passes: the first only measures distances and keeps the pairs inside the cutoff,
        without branching, those with j of i's species from the front of the scratch rows and
        the others from the back; the second calls the kernel on them. The kernel's branches on
        species and the cutoff test then go the same way many times running instead of at random.
        """
        xi, yi, zi = positions[i, 0], positions[i, 1], positions[i, 2]
        ti = types[i]
        front = 0
        back = near_j.shape[0] - 1
        for a in range(counts[i]):
            j = neighbors[i, a]
            dx = xi - positions[j, 0]
            dy = yi - positions[j, 1]
            dz = zi - positions[j, 2]
            dx -= lx * np.rint(dx * ix)
            dy -= ly * np.rint(dy * iy)
            dz -= lz * np.rint(dz * iz)
            r2 = dx * dx + dy * dy + dz * dz
            same = types[j] == ti
            slot = front if same else back
            near_j[slot] = j
            near_d[slot, 0] = dx
            near_d[slot, 1] = dy
            near_d[slot, 2] = dz
            near_d[slot, 3] = r2
            inside = r2 < rc2
            front += inside and same
            back -= inside and not same
        fx = 0.0
        fy = 0.0
        fz = 0.0
        e = 0.0
        w = 0.0
        near = r2min[i]
        for segment in range(2):
            lo, hi = (0, front) if segment == 0 else (back + 1, near_j.shape[0])
            for slot in range(lo, hi):
                j = near_j[slot]
                dx, dy, dz, r2 = near_d[slot, 0], near_d[slot, 1], near_d[slot, 2], near_d[slot, 3]
                u, f = pair_energy_force(ti, types[j], math.sqrt(r2))
                e += u
                loss[j] += u
                fx += f * dx
                fy += f * dy
                fz += f * dz
                forces[j, 0] -= f * dx
                forces[j, 1] -= f * dy
                forces[j, 2] -= f * dz
                w += f * r2
                near = min(near, r2)
                r2min[j] = min(r2min[j], r2)
        forces[i, 0] += fx
        forces[i, 1] += fy
        forces[i, 2] += fz
        loss[i] += e
        r2min[i] = near
        return w

    def half_pair_loop(positions, types, box, neighbors, counts, cutoff, order, layer_start):
        # Plain loops throughout but the one prange: in a parallel function an array expression is
        # a parallel region of its own, and every region wakes the threads (a whole time slice
        # on a busy machine). The list is in cell order (see partition.NeighborList), and so are
        # the copies the loop works on: neighbours then sit close together in memory.
        n = positions.shape[0]
        cell_positions = np.empty((n, 3))
        cell_types = np.empty(n, dtype=types.dtype)
        forces = np.empty((n, 3))
        loss = np.empty(n)
        virial = np.empty(n)
        r2min = np.empty(n)
        for p in range(n):
            i = order[p]
            for d in range(3):
                cell_positions[p, d] = positions[i, d]
                forces[p, d] = 0.0
            cell_types[p] = types[i]
            loss[p] = 0.0
            r2min[p] = np.inf
        lx, ly, lz = box[0], box[1], box[2]
        ix, iy, iz = 1.0 / lx, 1.0 / ly, 1.0 / lz
        rc2 = cutoff * cutoff
        # the x-layers in 2K consecutive blocks; the even blocks run in parallel, then the odd ones.
        # A block writes to its own layers and the next one, which belongs to a block of the
        # other phase, so blocks of one phase never write the same atom. K depends on the layers
        # alone, never on the threads, so the sums run in the same order for any thread count.
        n_layers = layer_start.shape[0] - 1
        n_blocks = 1
        if n_layers >= 2:
            n_blocks = 2
            while 2 * n_blocks <= n_layers and n_blocks < 128:
                n_blocks *= 2
        per_phase = max(n_blocks // 2, 1)  # (a conditional expression in prange stops Numba parallelising it)
        for phase in range(min(n_blocks, 2)):
            for b in prange(per_phase):
                block = 2 * b + phase
                near_j = np.empty(neighbors.shape[1], dtype=np.int64)  # scratch rows, one per block
                near_d = np.empty((neighbors.shape[1], 4))
                first = layer_start[block * n_layers // n_blocks]
                last = layer_start[(block + 1) * n_layers // n_blocks]
                for p in range(first, last):
                    virial[p] = atom_row(p, cell_positions, cell_types, lx, ly, lz, ix, iy, iz, neighbors, counts,
                                         rc2, forces, loss, r2min, near_j, near_d)
        # back to atom order
        atom_forces = np.empty((n, 3))
        atom_loss = np.empty(n)
        atom_virial = np.empty(n)
        nearest = np.empty(n)
        for p in range(n):
            i = order[p]
            for d in range(3):
                atom_forces[i, d] = forces[p, d]
            atom_loss[i] = loss[p]
            atom_virial[i] = virial[p]
            nearest[i] = math.sqrt(r2min[p])
        return atom_forces, atom_loss, atom_virial, nearest

    return partition.serial_and_parallel(half_pair_loop, cache=False)


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
        half_pair = _make_half_pair_loop(kernel_module.pair_energy_force)
        triplet = _make_triplet_loop(kernel_module.triplet_energy_gradient) if has_threebody(kernel_module) else None
        cached = (kernel_module, pair, half_pair, triplet)
        _LOOPS[key] = cached
    return cached[1:]


def interaction_cutoff_angstrom(kernel_module: ModuleType) -> float:
    """The range the neighbour list must cover: the pair cutoff or the three-body cutoff, if longer."""
    cutoff = float(kernel_module.CUTOFF_ANGSTROM)
    if has_threebody(kernel_module):
        cutoff = max(cutoff, float(kernel_module.THREEBODY_CUTOFF_ANGSTROM))
    return cutoff


def compute_forces(
    kernel_module: ModuleType, positions: np.ndarray, types: np.ndarray, neighbors: partition.NeighborList
) -> ForceResult:
    """Energy, forces, per-atom loss and virial of ``positions`` (Å) using an up-to-date list.

    Pair-only kernels take a half or a full list; three-body kernels need a full one.
    """
    pair_loop, half_pair_loop, triplet_loop = _loops(kernel_module)
    box = neighbors.box_angstrom
    parallel = partition.use_parallel(len(positions))
    cutoff = float(kernel_module.CUTOFF_ANGSTROM)
    if neighbors.half:
        if triplet_loop is not None:
            raise ValueError("a three-body kernel needs a full neighbour list (neighbor_list(..., half=False))")
        forces, loss, virial, nearest = half_pair_loop[parallel](
            positions, types, box, neighbors.neighbors, neighbors.counts, cutoff, neighbors.order,
            neighbors.layer_start,
        )
    else:
        forces, loss, virial, nearest = pair_loop[parallel](
            positions, types, box, neighbors.neighbors, neighbors.counts, cutoff
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
    moved more than half the skin. The list is half for pair-only kernels, full for three-body
    ones; a list of the other kind (say, rebuilt from a checkpoint) is built again, of the right
    kind, from its own reference positions, so the run goes on exactly as before.
    """
    types = np.ascontiguousarray(types, dtype=np.int64)
    box = box_lengths(box)
    cutoff = interaction_cutoff_angstrom(kernel_module)
    half = not has_threebody(kernel_module)

    def force_fn(positions, neighbors=None):
        positions = np.ascontiguousarray(positions, dtype=float)
        if neighbors is None:
            neighbors = partition.neighbor_list(positions, box, cutoff, skin_angstrom, half=half)
        else:
            if neighbors.half != half:
                neighbors = partition.neighbor_list(neighbors.reference_positions, box, cutoff, skin_angstrom,
                                                    half=half)
            neighbors = partition.update(neighbors, positions)
        return neighbors, compute_forces(kernel_module, positions, types, neighbors)

    return force_fn
