"""Neighbour lists: O(N) cell lists with a Verlet skin.

A Verlet list holds, for every atom i, the atoms j ≠ i closer than ``cutoff + skin`` when it was
built (Verlet 1967, Phys. Rev. 159, 98). It stays exact until some atom has moved more than
half the skin: then a pair can have closed from beyond ``cutoff + skin`` to inside ``cutoff``.
The list is built in O(N) by binning atoms into cells no smaller than ``cutoff + skin`` and
searching the 27 cells around each atom (Allen & Tildesley, *Computer Simulation of Liquids*,
§5.3.2).

The list is *full* (both i→j and j→i are stored), padded to a fixed width per atom. Every
thread then writes only its own atom's row here and its own atom's force in :mod:`simulate.energy`,
so the parallel loops are race-free and, because each atom's sum runs in one fixed order, the
results are the same bit for bit whatever the number of threads — which is what makes a resumed
run identical to an unbroken one.

Displacements are taken by the minimum image at use, so positions never need wrapping and a pair
is found in whichever image is nearest now. With fewer than three cells per side the 27 cells
would repeat, so small boxes are searched by brute force over all pairs (still exact while the
cutoff is at most half the box: the minimum-image distance moves by at most the skin between
builds). A cutoff beyond half the box would need several images of one atom and is refused.
"""

from __future__ import annotations

import math
import types
from typing import NamedTuple

import numba
import numpy as np
from numba import prange

from simulate.errors import MldError
from simulate.space import box_lengths


class BoxTooSmall(MldError, ValueError):
    """The box is smaller than twice the cutoff, so the minimum image would miss neighbours."""


class NeighborList(NamedTuple):
    """A full Verlet list. Row i of ``neighbors`` holds ``counts[i]`` atom indices, then −1."""

    neighbors: np.ndarray  # (N, capacity) int32
    counts: np.ndarray  # (N,) int32
    reference_positions: np.ndarray  # (N, 3) Å, positions at the build
    cutoff_angstrom: float  # the interaction cutoff the list serves
    skin_angstrom: float
    box_angstrom: np.ndarray  # (3,)
    cells_per_side: tuple  # (nx, ny, nz); (1, 1, 1) means brute force


# --- binning -------------------------------------------------------------------------------------


@numba.njit(cache=True)
def _bin_atoms(positions, box, n_cells):
    """Counting sort of atoms into cells: (cell_start (C+1,), cell_atoms (N,)); stable in atom index."""
    n = positions.shape[0]
    cell_of = np.empty(n, dtype=np.int64)
    counts = np.zeros(n_cells[0] * n_cells[1] * n_cells[2] + 1, dtype=np.int64)
    for i in range(n):
        cell = 0
        for d in range(3):
            s = positions[i, d] / box[d]
            s -= math.floor(s)
            # s can round to exactly 1.0 for a coordinate a hair below a box edge
            k = min(max(int(s * n_cells[d]), 0), n_cells[d] - 1)
            cell = cell * n_cells[d] + k
        cell_of[i] = cell
        counts[cell + 1] += 1
    cell_start = np.cumsum(counts)
    fill = cell_start[:-1].copy()
    cell_atoms = np.empty(n, dtype=np.int64)
    for i in range(n):
        cell_atoms[fill[cell_of[i]]] = i
        fill[cell_of[i]] += 1
    return cell_start, cell_atoms, cell_of


def _build_cells(positions, box, n_cells, list_cutoff, capacity):
    n = positions.shape[0]
    nx, ny, nz = n_cells[0], n_cells[1], n_cells[2]
    cell_start, cell_atoms, cell_of = _bin_atoms(positions, box, n_cells)
    neighbors = np.full((n, capacity), -1, dtype=np.int32)
    counts = np.zeros(n, dtype=np.int32)
    rl2 = list_cutoff * list_cutoff
    lx, ly, lz = box[0], box[1], box[2]
    for i in prange(n):
        cell = cell_of[i]
        cx = cell // (ny * nz)
        cy = (cell // nz) % ny
        cz = cell % nz
        xi, yi, zi = positions[i, 0], positions[i, 1], positions[i, 2]
        m = 0
        for ox in range(-1, 2):
            for oy in range(-1, 2):
                for oz in range(-1, 2):
                    other = (((cx + ox) % nx) * ny + (cy + oy) % ny) * nz + (cz + oz) % nz
                    for a in range(cell_start[other], cell_start[other + 1]):
                        j = cell_atoms[a]
                        if j == i:
                            continue
                        dx = xi - positions[j, 0]
                        dy = yi - positions[j, 1]
                        dz = zi - positions[j, 2]
                        dx -= lx * np.rint(dx / lx)
                        dy -= ly * np.rint(dy / ly)
                        dz -= lz * np.rint(dz / lz)
                        if dx * dx + dy * dy + dz * dz < rl2:
                            if m < capacity:
                                neighbors[i, m] = j
                            m += 1
        counts[i] = m
    return neighbors, counts


def _build_brute(positions, box, list_cutoff, capacity):
    n = positions.shape[0]
    neighbors = np.full((n, capacity), -1, dtype=np.int32)
    counts = np.zeros(n, dtype=np.int32)
    rl2 = list_cutoff * list_cutoff
    lx, ly, lz = box[0], box[1], box[2]
    for i in prange(n):
        m = 0
        for j in range(n):
            if j == i:
                continue
            dx = positions[i, 0] - positions[j, 0]
            dy = positions[i, 1] - positions[j, 1]
            dz = positions[i, 2] - positions[j, 2]
            dx -= lx * np.rint(dx / lx)
            dy -= ly * np.rint(dy / ly)
            dz -= lz * np.rint(dz / lz)
            if dx * dx + dy * dy + dz * dz < rl2:
                if m < capacity:
                    neighbors[i, m] = j
                m += 1
        counts[i] = m
    return neighbors, counts


# Each loop is compiled twice: threads pay off only once there is enough work per step to share.
PARALLEL_MIN_ATOMS = 1000


def serial_and_parallel(function, cache=True):
    """(serial, parallel) Numba compilations of one function written with ``prange``.

    The parallel one compiles a renamed twin: Numba's on-disk cache is keyed by the function's
    name and signature, not its options, so one name would let the two overwrite each other.
    """
    twin = types.FunctionType(
        function.__code__, function.__globals__, function.__name__ + "_parallel",
        function.__defaults__, function.__closure__,
    )
    twin.__qualname__ = function.__qualname__ + "_parallel"
    return numba.njit(cache=cache)(function), numba.njit(parallel=True, cache=cache)(twin)


def use_parallel(n_atoms: int) -> bool:
    return n_atoms >= PARALLEL_MIN_ATOMS and numba.get_num_threads() > 1


_BUILD_CELLS = serial_and_parallel(_build_cells)
_BUILD_BRUTE = serial_and_parallel(_build_brute)


@numba.njit(cache=True)
def max_displacement_angstrom(positions, reference_positions):
    """Largest distance any atom has moved from its reference position (Å)."""
    worst = 0.0
    for i in range(positions.shape[0]):
        dx = positions[i, 0] - reference_positions[i, 0]
        dy = positions[i, 1] - reference_positions[i, 1]
        dz = positions[i, 2] - reference_positions[i, 2]
        worst = max(worst, dx * dx + dy * dy + dz * dz)
    return math.sqrt(worst)


# --- public API ------------------------------------------------------------------------------------


def cells_per_side(box_angstrom: np.ndarray, list_cutoff_angstrom: float) -> tuple:
    """Cells per box edge for a cell list, or (1, 1, 1) when some edge holds fewer than three."""
    n = np.floor(np.asarray(box_angstrom) / list_cutoff_angstrom).astype(np.int64)
    if np.any(n < 3):
        return (1, 1, 1)
    return tuple(int(k) for k in n)


def _initial_capacity(n_atoms: int, box: np.ndarray, list_cutoff: float) -> int:
    density = n_atoms / float(np.prod(box))
    expected = density * 4.0 / 3.0 * math.pi * list_cutoff**3
    return int(min(max(n_atoms - 1, 1), math.ceil(1.3 * expected) + 8))


def neighbor_list(
    positions: np.ndarray,
    box,
    cutoff_angstrom: float,
    skin_angstrom: float = 1.0,
    capacity: int | None = None,
) -> NeighborList:
    """Build a full Verlet list of all pairs closer than ``cutoff + skin`` (Å) by the minimum image."""
    box = box_lengths(box)
    positions = np.ascontiguousarray(positions, dtype=float)
    if cutoff_angstrom > 0.5 * box.min() + 1e-12:
        raise BoxTooSmall(
            f"box edge {box.min():.4g} Å is shorter than twice the cutoff {cutoff_angstrom:.4g} Å; "
            "replicate the box (e.g. --replicate 2x2x2)"
        )
    list_cutoff = cutoff_angstrom + skin_angstrom
    n_cells = cells_per_side(box, list_cutoff)
    if capacity is None:
        capacity = _initial_capacity(len(positions), box, list_cutoff)
    parallel = use_parallel(len(positions))
    while True:
        if n_cells == (1, 1, 1):
            neighbors, counts = _BUILD_BRUTE[parallel](positions, box, list_cutoff, capacity)
        else:
            neighbors, counts = _BUILD_CELLS[parallel](positions, box, np.array(n_cells, dtype=np.int64), list_cutoff, capacity)
        needed = int(counts.max()) if len(counts) else 0
        if needed <= capacity:
            break
        capacity = needed + 8 + needed // 4  # rows overflowed: widen and search again
    return NeighborList(
        neighbors=neighbors,
        counts=counts,
        reference_positions=positions.copy(),
        cutoff_angstrom=float(cutoff_angstrom),
        skin_angstrom=float(skin_angstrom),
        box_angstrom=box,
        cells_per_side=n_cells,
    )


def needs_rebuild(neighbors: NeighborList, positions: np.ndarray) -> bool:
    """True once any atom has moved more than half the skin since the list was built."""
    return bool(max_displacement_angstrom(positions, neighbors.reference_positions) > 0.5 * neighbors.skin_angstrom)


def update(neighbors: NeighborList, positions: np.ndarray) -> NeighborList:
    """The same list while it is still exact for ``positions``, else a fresh one (same width or wider)."""
    if not needs_rebuild(neighbors, positions):
        return neighbors
    return neighbor_list(
        positions,
        neighbors.box_angstrom,
        neighbors.cutoff_angstrom,
        neighbors.skin_angstrom,
        capacity=neighbors.neighbors.shape[1],
    )
