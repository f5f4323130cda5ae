"""Neighbour lists: O(N) cell lists with a Verlet skin, full or half.

A Verlet list holds, for every atom i, the atoms j ≠ i closer than ``cutoff + skin`` when it was
built (Verlet 1967, Phys. Rev. 159, 98). It stays exact until some atom has moved more than
half the skin: then a pair can have closed from beyond ``cutoff + skin`` to inside ``cutoff``.
The list is built in O(N) by binning atoms into cells no smaller than ``cutoff + skin`` and
searching the cells around each atom (Allen & Tildesley, *Computer Simulation of Liquids*,
§5.3.2).

Two kinds, both padded to a fixed width per atom:

*full* (``half=False``)
    both i→j and j→i are stored; the 27 cells around each atom are searched. (The force loops of
    :mod:`simulate.energy` take either kind; their three-body terms build their own short full
    rows during the half-list pair pass.)
*half* (``half=True``)
    each pair is stored once, so a pair force is evaluated once and applied to both atoms
    (Newton's third law): half the kernel calls. Atom i keeps the j in the 13 "forward" cells of
    the 26 around its own and, in its own cell, those with j > i — the half stencil of LAMMPS
    (Plimpton 1995, J. Comput. Phys. 117, 1) — so every row holds about half the neighbours.

Every list also records the atoms in cell order (x-major) and where each x-layer of cells
starts in it. A half-list force loop writes to atom i's layer and the next one only, so blocks of
rows two layers apart never touch the same atom: :mod:`simulate.energy` runs even blocks in parallel,
then odd ones (see :func:`simulate.energy.row_blocks`), each block serially in a fixed order. Every atom's sums then run in
the same order whatever the number of threads, and results are the same bit for bit — which is
what makes a resumed run identical to an unbroken one.

Positions are never wrapped: the list fixes, at the build, which periodic image of each neighbour
an entry means (an image code per entry and the box multiple that wraps each row's atom), and a
force loop subtracts that image's shift instead of taking the minimum image of every pair — the
ghost-atom argument of LAMMPS (Plimpton 1995). It is exact until the next build: every image
closer than the cutoff now was closer than ``cutoff + skin`` at the build, so it is in the list.
With at least three cells per side each listed pair has one image within ``cutoff + skin`` (the
cells are no smaller than that). With fewer, the 27 cells would repeat, so a small box's list is
searched by brute force over all pairs, and *every* image within ``cutoff + skin`` gets an entry (a
box edge may be shorter than twice ``cutoff + skin``); since the cutoff is at most half the box, at
most one image of a pair is inside it at a time, so the sum is the minimum-image sum. A half list
there keeps pair (i, j), i < j, in row i when i + j is even, else in row j, which halves every row on
average. A small box's half list of at most ``ALL_PAIRS_MAX_ATOMS`` atoms lists nothing instead (its
rows have no slots, :func:`lists_every_pair`): its force loop takes every pair i < j by minimum
image, in a loop the compiler vectorises, so there is no list to build, to check against the skin or
to rebuild. In the 96-atom water box (cutoff 4.88 Å, skin 1 Å) the half list held 4,070 entries for
the 2,317 pairs within the cutoff, against 4,560 pairs in all, and was rebuilt every 19 steps at 50 µs
a build: every pair took a step from 34 to 25 µs (the learned pairwise water, tabulated, one
thread). A cutoff beyond half the box would need several images inside it and is refused.

The whole build is one compiled function (:data:`BUILD`, serial and parallel), so the compiled
multi-step loops of :mod:`simulate.integrate` rebuild their list exactly as :func:`neighbor_list` does.
Where the CPU compresses vectors (:data:`simulate.simd.NATIVE_COMPRESS`) a half list's cell search keeps
the candidates within ``cutoff + skin`` eight at a time (:func:`simulate.simd.compress_within`): the
same rows, entry for entry; a build of 96,000 atoms (Morse test water, skin 1 Å, into reused rows)
took 32 ms instead of 50 on one thread, 17 instead of 27 on two, in alternating runs on one machine (the
figures of builds elsewhere in this module come from earlier runs, before it).
"""

from __future__ import annotations

import math
import os
import types
from typing import NamedTuple

# Idle OpenMP threads of Numba's parallel loops sleep instead of spinning (read once, when the first
# parallel loop starts the threads). A spinning thread holds a core that other work or this
# process's own serial code needs: on a machine whose cores are all busy, a parallel step then
# stalls for whole time slices, ten times slower (measured on 2 cores). Set it to override. On cores
# of its own a run may let them spin a little before they sleep, as MPI ranks busy-wait:
# GOMP_SPINCOUNT=20000 (about 0.2 ms) took 30 % less time per 2-thread step at 6,144 atoms and 10 %
# at 49,152, but 1.6× more with one of the 2 cores busy with other work (see benchmarks/PERFORMANCE.md).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numba
import numpy as np
from numba import prange

from simulate.errors import MldError
from simulate.simd import COMPRESS_LANES, NATIVE_COMPRESS, compress_within
from simulate.space import box_lengths


class BoxTooSmall(MldError, ValueError):
    """The box is smaller than twice the cutoff, so the minimum image would miss neighbours."""


class NeighborList(NamedTuple):
    """A Verlet list. Row i of ``neighbors`` holds ``counts[i]`` atom indices, then −1.

    A half list is kept in cell order instead, for locality: its row p belongs to atom
    ``order[p]`` and holds positions q in ``order`` (atom ``order[q]``).

    Each entry also records which periodic image of its atom it is: the displacement of the pair
    (row i, entry j, image code c) is ``(x_i − w_i) − (x_j − w_j) − IMAGE_SHIFTS[c] · box``, with
    ``w = wrap_angstrom`` of the row (the positions as they were wrapped into the box at the build).
    A force loop then needs no minimum image per pair (see the module notes), but for a list of
    every pair (below), which takes the minimum image of each.

    A small box's half list of at most ``ALL_PAIRS_MAX_ATOMS`` atoms has rows of no slots (capacity
    0), no counts, atoms in their own order in one layer, and no wraps: its force loop takes every
    pair (:func:`lists_every_pair`).
    """

    neighbors: np.ndarray  # (N, capacity) int32
    counts: np.ndarray  # (N,) int32
    reference_positions: np.ndarray  # (N, 3) Å, positions at the build
    cutoff_angstrom: float  # the interaction cutoff the list serves
    skin_angstrom: float
    box_angstrom: np.ndarray  # (3,)
    cells_per_side: tuple  # (nx, ny, nz); (1, 1, 1): a small box (brute force, or for a half list every pair)
    half: bool = False  # each pair once (True) or from both ends (False)
    order: np.ndarray | None = None  # (N,) int64, the atoms in cell order (x-major)
    layer_start: np.ndarray | None = None  # (nx + 1,) int64, where each x-layer starts in ``order``
    image: np.ndarray | None = None  # (N, capacity) int8, the periodic image of each entry (see IMAGE_SHIFTS)
    wrap_angstrom: np.ndarray | None = None  # (N, 3) Å, per row: the box multiple that wrapped its atom at the build


# --- binning -------------------------------------------------------------------------------------


@numba.njit(cache=True)
def _bin_atoms(positions, box, n_cells):
    """Counting sort of atoms into cells: (cell_start (C+1,), cell_atoms (N,), cell_of (N,)); stable in atom index."""
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


# the 27 cell offsets, and the 13 "forward" ones of the half stencil (lexicographically after 0,0,0)
_FULL_STENCIL = np.array([(a, b, c) for a in (-1, 0, 1) for b in (-1, 0, 1) for c in (-1, 0, 1)], dtype=np.int64)
_HALF_STENCIL = np.array([(0, 0, 0)] + [tuple(o) for o in _FULL_STENCIL if tuple(o) > (0, 0, 0)], dtype=np.int64)


# image codes: code 9(a+1) + 3(b+1) + (c+1) is the image shifted by (a, b, c) box lengths, a, b, c in {−1, 0, 1}
IMAGE_SHIFTS = np.array([(a, b, c) for a in (-1, 0, 1) for b in (-1, 0, 1) for c in (-1, 0, 1)], dtype=np.float64)


@numba.njit(inline="always")
def _image_code(a, b, c):
    return 9 * (a + 1) + 3 * (b + 1) + (c + 1)


@numba.njit(inline="always")
def opposite_image_code(code):
    """The code of the opposite shift, (−a, −b, −c) for (a, b, c): a pair's image code seen from its other atom."""
    return len(IMAGE_SHIFTS) - 1 - code


@numba.njit
def image_shifts_angstrom(box):
    """(27, 3) Å: the shift of each image code (see NeighborList) in a box of lengths ``box``."""
    out = np.empty((27, 3))
    for c in range(27):
        for d in range(3):
            out[c, d] = IMAGE_SHIFTS[c, d] * box[d]
    return out


@numba.njit(inline="always")
def overflowed(longest_row: int, capacity: int) -> bool:
    """Whether a list built ``capacity`` wide must be built again wider.

    A full row overflows too: the cell search writes without a branch, so once a row holds
    ``capacity`` entries later candidates overwrite its last slot (see :func:`_build_cells`).
    """
    return longest_row >= capacity


@numba.njit(inline="always")
def widened_capacity(longest_row: int) -> int:
    """The width to search again at after rows of ``longest_row`` entries overflowed: a quarter more, plus 8."""
    return longest_row + 8 + longest_row // 4


def has_headroom(longest_row: int, capacity: int) -> bool:
    """Whether a fresh list ``capacity`` wide leaves its longest row room to grow: an eighth more, plus 4.

    Rows grow as the atoms move (in the hot Morse water box of 96,000 atoms the longest half row went
    from 73 to 79 entries within 40 steps), and a row that overflows at a rebuild makes the build search
    every row again, wider: that rebuild then took 97 ms instead of 45 (96,000 atoms, one thread).
    """
    return longest_row + longest_row // 8 + 4 <= capacity


# rows to pass a build that has none to spare
NO_SPARE_ROWS = (np.empty((0, 0), dtype=np.int32), np.empty((0, 0), dtype=np.int8))


@numba.njit(inline="always")
def _rows(n, capacity, spare_neighbors, spare_image):
    """(neighbors, image) arrays of n rows ``capacity`` wide: the spare ones where they have that shape,
    else fresh ones. The caller vouches that nothing else reads the spare rows (see
    :func:`simulate.integrate._spare_rows`): a list of 10⁵ atoms takes some 50 MB, and fresh memory costs a
    page fault every 4 KiB (the allocator hands arrays this large back to the system when they are freed),
    some 10 ms of a 50 ms build."""
    fits = (spare_neighbors.shape[0] == n and spare_neighbors.shape[1] == capacity
            and spare_image.shape[0] == n and spare_image.shape[1] == capacity)
    neighbors = spare_neighbors if fits else np.empty((n, capacity), dtype=np.int32)
    image = spare_image if fits else np.empty((n, capacity), dtype=np.int8)
    return neighbors, image


def _build_cells(positions, box, n_cells, list_cutoff, capacity, cell_start, cell_atoms, stencil, half, spare_neighbors,
                 spare_image):
    """Rows of the list by cell search: (neighbors, counts, image codes, wraps), the rows written into
    ``spare_neighbors`` and ``spare_image`` where they have the list's shape (see :func:`_rows`).

    The search reads a cell-ordered copy of the positions wrapped into the box, so each cell's atoms
    are contiguous in memory and the image of a neighbouring cell is one shift by a box length,
    known per cell pair: no minimum image per candidate. With at least three cells per side (each
    no smaller than the list cutoff), that image is the only one within the list cutoff.
    """
    n = positions.shape[0]
    nx, ny, nz = n_cells[0], n_cells[1], n_cells[2]
    # (with COMPRESS_LANES entries past the atoms, which the vector search reads, masked, at the last cell's end)
    sx = np.empty(n + COMPRESS_LANES)
    sy = np.empty(n + COMPRESS_LANES)
    sz = np.empty(n + COMPRESS_LANES)
    for a in range(n, n + COMPRESS_LANES):
        sx[a] = sy[a] = sz[a] = 0.0
    wrap = np.empty((n, 3))
    for a in range(n):
        i = cell_atoms[a]
        row = a if half else i
        for d in range(3):
            wrap[row, d] = box[d] * math.floor(positions[i, d] / box[d])
        sx[a] = positions[i, 0] - wrap[row, 0]
        sy[a] = positions[i, 1] - wrap[row, 1]
        sz[a] = positions[i, 2] - wrap[row, 2]
    # no np.full: in a parallel function an array expression is a parallel region of its own; rows are
    # padded with −1 below instead
    neighbors, image = _rows(n, capacity, spare_neighbors, spare_image)
    counts = np.empty(n, dtype=np.int32)
    filled = np.empty(n, dtype=np.int64)
    rl2 = list_cutoff * list_cutoff
    wx, wy, wz = box[0] / nx, box[1] / ny, box[2] / nz
    margin = 1e-9 * max(box[0], box[1], box[2])
    for cell in prange(nx * ny * nz):
        cx = cell // (ny * nz)
        cy = (cell // nz) % ny
        cz = cell % nz
        lo, hi = cell_start[cell], cell_start[cell + 1]
        for p in range(lo, hi):
            filled[p] = 0
        # cell pair by cell pair, so each pair's image and bounds are worked out once, not once per atom;
        # every row still gets its neighbours in stencil order, then in cell order
        for s in range(stencil.shape[0]):
            ox, oy, oz = cx + stencil[s, 0], cy + stencil[s, 1], cz + stencil[s, 2]
            # a neighbouring cell across an edge is seen through the image one box length away
            kx, ky, kz = ox % nx, oy % ny, oz % nz
            code = _image_code((ox - kx) // nx, (oy - ky) // ny, (oz - kz) // nz)
            shift_x = box[0] * ((ox - kx) // nx)
            shift_y = box[1] * ((oy - ky) // ny)
            shift_z = box[2] * ((oz - kz) // nz)
            other = (kx * ny + ky) * nz + kz
            # the other cell's faces, a hair outside (binning rounds on its own)
            x_lo, x_hi = kx * wx - margin, (kx + 1) * wx + margin
            y_lo, y_hi = ky * wy - margin, (ky + 1) * wy + margin
            z_lo, z_hi = kz * wz - margin, (kz + 1) * wz + margin
            for p in range(lo, hi):
                # a half list is kept in cell order: row p, entries a (see NeighborList)
                row = p if half else cell_atoms[p]
                xi, yi, zi = sx[p] - shift_x, sy[p] - shift_y, sz[p] - shift_z
                # a cell whose nearest point is beyond the list cutoff holds no neighbour: an edge or
                # corner cell of the stencil, for about half the atoms
                gx = max(x_lo - xi, xi - x_hi, 0.0)
                gy = max(y_lo - yi, yi - y_hi, 0.0)
                gz = max(z_lo - zi, zi - z_hi, 0.0)
                if gx * gx + gy * gy + gz * gz >= rl2:
                    continue
                # own cell: every other atom (full), or only the later ones (half)
                first = cell_start[other]
                if other == cell and half:
                    first = p + 1
                # without a branch: every candidate is written at the row's end, which advances only for
                # those within the list cutoff (one in seven or so: a branch on it would mostly mispredict);
                # once the row holds ``capacity`` entries, later candidates overwrite its last slot, so a
                # full row counts as an overflow (see overflowed) and the list is built again wider.
                # Unsigned indices into the row's own 1-D views: Numba then adds no wrap-around of negative
                # indices and no row arithmetic per candidate (31 % less time per build at 49,152 atoms).
                row_neighbors = neighbors[row]
                row_image = image[row]
                m = np.uint64(filled[p])
                last = np.uint64(capacity - 1)
                own = np.uint64(p)
                rest = np.uint64(first)
                end = np.uint64(cell_start[other + 1])
                if BUILD_COMPRESS and half:
                    # eight candidates at a time by vector compression (see simulate.simd), the last eight
                    # masked at the cell's end, while the row has eight free slots: the same rows, entry for
                    # entry (a half row never meets its own atom)
                    while rest < end and m + np.uint64(COMPRESS_LANES) <= np.uint64(capacity):
                        m = np.uint64(compress_within(sx, sy, sz, rest, end, xi, yi, zi, rl2, row_neighbors, row_image,
                                                      m, code))
                        rest += np.uint64(COMPRESS_LANES)
                    rest = min(rest, end)
                for a in range(rest, end):
                    dx = xi - sx[a]
                    dy = yi - sy[a]
                    dz = zi - sz[a]
                    slot = min(m, last)
                    row_neighbors[slot] = np.int32(a) if half else np.int32(cell_atoms[a])  # (no float64 unification)
                    row_image[slot] = code
                    m += np.uint64((dx * dx + dy * dy + dz * dz < rl2) & (a != own))
                filled[p] = m
        for p in range(lo, hi):
            row = p if half else cell_atoms[p]
            m = filled[p]
            counts[row] = m
            # through the row's own views, as above: contiguous stores (2-D indices made a scatter of them,
            # 8 % of a build at 49,152 atoms)
            row_neighbors = neighbors[row]
            row_image = image[row]
            for k in range(np.uint64(m), np.uint64(capacity)):
                row_neighbors[k] = -1
                row_image[k] = 0
    return neighbors, counts, image, wrap


def _build_brute(positions, box, list_cutoff, capacity, half, spare_neighbors, spare_image):
    """Rows of the list by a search over all pairs and all their images within the list cutoff (into the
    spare rows where they fit, as :func:`_build_cells`)."""
    n = positions.shape[0]
    wrap = np.empty((n, 3))
    wrapped = np.empty((n, 3))
    for i in range(n):
        for d in range(3):
            wrap[i, d] = box[d] * math.floor(positions[i, d] / box[d])
            wrapped[i, d] = positions[i, d] - wrap[i, d]
    neighbors, image = _rows(n, capacity, spare_neighbors, spare_image)
    counts = np.empty(n, dtype=np.int32)
    rl = list_cutoff
    rl2 = list_cutoff * list_cutoff
    lx, ly, lz = box[0], box[1], box[2]
    for i in prange(n):
        m = 0
        for j in range(n):
            if j == i:
                continue  # its own images are at least a box edge, twice the cutoff, away
            # half: pair (i, j), i < j, belongs to row i when i + j is even, else to row j
            if half and (j > i) != ((i + j) % 2 == 0):
                continue
            # wrapped displacement in (−L, L) per axis: the images within reach are among −1, 0, +1 boxes
            x0 = wrapped[i, 0] - wrapped[j, 0]
            y0 = wrapped[i, 1] - wrapped[j, 1]
            z0 = wrapped[i, 2] - wrapped[j, 2]
            for a in range(-1, 2):
                dx = x0 - a * lx
                if abs(dx) >= rl:
                    continue
                for b in range(-1, 2):
                    dy = y0 - b * ly
                    if abs(dy) >= rl:
                        continue
                    for c in range(-1, 2):
                        dz = z0 - c * lz
                        if dx * dx + dy * dy + dz * dz < rl2:
                            if m < capacity:
                                neighbors[i, m] = j
                                image[i, m] = _image_code(a, b, c)
                            m += 1
        counts[i] = m
        for k in range(m, capacity):
            neighbors[i, k] = -1
            image[i, k] = 0
    return neighbors, counts, image, wrap


# Each loop is compiled twice. From this many atoms the parallel compilation runs, on however many
# threads Numba has, one included: threads pay off only once there is enough work per step to share,
# and on one thread the parallel compilation is the faster code too (Numba outlines every prange body
# into a small function of its own, which LLVM optimises better than the one large serial function).
# Measured per step on one thread at 6,144 atoms: Morse 8 % less time, tabulated Morse 9 %, learned
# pairwise tabulated 22 %, learned many-body 23 % (33 % tabulated), learned pairwise closed form the same.
PARALLEL_MIN_ATOMS = 1000

# A small box's half list of at most this many atoms lists nothing: its force loop takes every pair
# (see the module notes). Every pair costs O(N²) per step (vectorised displacements of N²/2 pairs,
# then those within reach), a list O(N) per step plus a brute-force O(N²) build every 15–20 steps.
# Measured per step (learned pairwise water, tabulated, one thread, skin 1 Å): 192 atoms 53 µs every
# pair against 60 with a list, 384 atoms 149 against 139, 576 atoms 280 against 219; a long slab of
# thousands of atoms would take several times longer every pair.
ALL_PAIRS_MAX_ATOMS = 256

# the cell search of a half list keeps the candidates within the list cutoff eight at a time, by vector
# compression, where the CPU has it (see simulate.simd); a compile-time constant of the builds, which are
# cached on disk: Numba renews them when this file changes, not simd.py (see simulate.simd)
BUILD_COMPRESS = NATIVE_COMPRESS


def serial_and_parallel(function, cache=True, fastmath=False):
    """(serial, parallel) Numba compilations of one function written with ``prange`` (``fastmath``: Numba's option).

    The parallel one compiles a renamed twin: Numba's on-disk cache is keyed by the function's
    name and signature, not its options, so one name would let the two overwrite each other.
    """
    twin = types.FunctionType(
        function.__code__, function.__globals__, function.__name__ + "_parallel",
        function.__defaults__, function.__closure__,
    )
    twin.__qualname__ = function.__qualname__ + "_parallel"
    return (numba.njit(cache=cache, fastmath=fastmath)(function),
            numba.njit(parallel=True, cache=cache, fastmath=fastmath)(twin))


def use_parallel(n_atoms: int) -> bool:
    """Whether a system of ``n_atoms`` runs the parallel compilation of the loops (see PARALLEL_MIN_ATOMS)."""
    return n_atoms >= PARALLEL_MIN_ATOMS


_BUILD_CELLS = serial_and_parallel(_build_cells)
_BUILD_BRUTE = serial_and_parallel(_build_brute)


def _make_build(build_cells, build_brute):
    """The whole build of a list, compiled, so that a compiled MD loop can rebuild its list itself."""

    @numba.njit
    def build(positions, box, n_cells, list_cutoff, capacity, half, brute, spare_neighbors, spare_image):
        """(neighbors, counts, image, wrap, order, layer_start, longest row), ``capacity`` wide or wider.

        Rows that overflow ``capacity`` are searched again, :func:`widened_capacity` wide, so the
        list is complete and the same whatever width it was asked for (a compiled MD loop rebuilds
        its list here without stopping). The rows go into ``spare_neighbors`` and ``spare_image``
        where those have their shape (:data:`NO_SPARE_ROWS`: none to spare).
        """
        n = positions.shape[0]
        if brute:
            order = np.arange(n)
            layer_start = np.empty(2, dtype=np.int64)
            layer_start[0] = 0
            layer_start[1] = n
            cell_start = layer_start
            if half and n <= ALL_PAIRS_MAX_ATOMS:
                # a small box's half list lists nothing: its force loop takes every pair (see the module notes)
                return (np.empty((n, 0), dtype=np.int32), np.zeros(n, dtype=np.int32),
                        np.empty((n, 0), dtype=np.int8), np.zeros((n, 3)), order, layer_start, 0)
        else:
            cell_start, order, _ = _bin_atoms(positions, box, n_cells)
            layer_start = cell_start[:: n_cells[1] * n_cells[2]].copy()
        stencil = _HALF_STENCIL if half else _FULL_STENCIL
        while True:
            if brute:
                neighbors, counts, image, wrap = build_brute(positions, box, list_cutoff, capacity, half,
                                                             spare_neighbors, spare_image)
            else:
                neighbors, counts, image, wrap = build_cells(positions, box, n_cells, list_cutoff, capacity,
                                                             cell_start, order, stencil, half, spare_neighbors,
                                                             spare_image)
            needed = 0
            for i in range(n):
                needed = max(needed, counts[i])
            if not overflowed(needed, capacity):
                return neighbors, counts, image, wrap, order, layer_start, needed
            capacity = widened_capacity(needed)

    return build


BUILD = (_make_build(_BUILD_CELLS[0], _BUILD_BRUTE[0]), _make_build(_BUILD_CELLS[1], _BUILD_BRUTE[1]))


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


def _widened(rows: np.ndarray, width: int, pad) -> np.ndarray:
    """``rows`` copied into rows ``width`` wide, the new slots set to ``pad`` (as the build pads them)."""
    out = np.full((rows.shape[0], width), pad, dtype=rows.dtype)
    out[:, : rows.shape[1]] = rows
    return out


def _initial_capacity(n_atoms: int, box: np.ndarray, list_cutoff: float, half: bool) -> int:
    density = n_atoms / float(np.prod(box))
    expected = density * 4.0 / 3.0 * math.pi * list_cutoff**3
    # a half row holds half the sphere on average, but its own-cell share varies with the index
    expected *= 0.75 if half else 1.0
    return int(min(max(n_atoms - 1, 1), math.ceil(1.3 * expected) + 8))


def neighbor_list(
    positions: np.ndarray,
    box,
    cutoff_angstrom: float,
    skin_angstrom: float = 1.0,
    capacity: int | None = None,
    half: bool = False,
) -> NeighborList:
    """Build a Verlet list of every periodic image of a pair closer than ``cutoff + skin`` (Å).

    One entry per pair in boxes of three cells or more per side (its one image within reach); in
    smaller boxes one entry per image within reach, or none for a half list of at most
    ``ALL_PAIRS_MAX_ATOMS`` atoms (its force loop takes every pair, see the module notes).

    Without ``capacity`` the rows are made wide enough for their longest row to grow (see
    :func:`has_headroom`); with it, exactly that wide, or wider where rows overflow it.

    ``half=False``: every pair from both ends; ``half=True``: every pair once (see the module notes).
    """
    box = box_lengths(box)
    positions = np.ascontiguousarray(positions, dtype=float)
    if cutoff_angstrom > 0.5 * box.min() + 1e-12:
        raise BoxTooSmall(
            f"box edge {box.min():.4g} Å is shorter than twice the cutoff {cutoff_angstrom:.4g} Å; "
            "replicate the box (e.g. --replicate 2x2x2)"
        )
    list_cutoff = cutoff_angstrom + skin_angstrom
    n_cells = cells_per_side(box, list_cutoff)
    n = len(positions)
    fresh = capacity is None
    if fresh:
        capacity = _initial_capacity(n, box, list_cutoff, half)
    capacity = max(int(capacity), 1)  # (no slot at all marks a list of every pair)
    brute = n_cells == (1, 1, 1)
    cells = np.array(n_cells, dtype=np.int64)
    build = BUILD[use_parallel(n)]
    neighbors, counts, image, wrap, order, layer_start, longest = build(
        positions, box, cells, list_cutoff, capacity, bool(half), brute, *NO_SPARE_ROWS)
    if fresh and neighbors.shape[1] > 0 and not has_headroom(longest, neighbors.shape[1]):
        # a first list as wide as its rows would overflow at an early rebuild (see has_headroom): its
        # complete rows, copied into wider ones now, instead of a double search in the run
        width = widened_capacity.py_func(longest)
        neighbors = _widened(neighbors, width, -1)
        image = _widened(image, width, 0)
    return NeighborList(
        neighbors=neighbors,
        counts=counts,
        reference_positions=positions.copy(),
        cutoff_angstrom=float(cutoff_angstrom),
        skin_angstrom=float(skin_angstrom),
        box_angstrom=box,
        cells_per_side=n_cells,
        half=bool(half),
        order=order,
        layer_start=layer_start,
        image=image,
        wrap_angstrom=wrap,
    )


def lists_every_pair(neighbors: NeighborList) -> bool:
    """Whether ``neighbors`` is a small box's half list of few atoms, which lists nothing (rows of no
    slots): its force loop takes every pair."""
    return neighbors.half and neighbors.neighbors.shape[1] == 0


def needs_rebuild(neighbors: NeighborList, positions: np.ndarray) -> bool:
    """True once any atom has moved more than half the skin since the list was built (never for a list
    of every pair, which no move makes stale)."""
    if lists_every_pair(neighbors):
        return False
    return bool(max_displacement_angstrom(positions, neighbors.reference_positions) > 0.5 * neighbors.skin_angstrom)


def update(neighbors: NeighborList, positions: np.ndarray) -> NeighborList:
    """The same list while it is still exact for ``positions``, else a fresh one of the same kind (same width or wider)."""
    if not needs_rebuild(neighbors, positions):
        return neighbors
    return neighbor_list(
        positions,
        neighbors.box_angstrom,
        neighbors.cutoff_angstrom,
        neighbors.skin_angstrom,
        capacity=neighbors.neighbors.shape[1],
        half=neighbors.half,
    )
