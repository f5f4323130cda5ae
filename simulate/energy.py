"""Energy and forces of a kernel module, summed over a neighbour list.

A kernel module (see :mod:`simulate.kernels`) supplies the scalar law ``pair_energy_force(ti, tj, r)``
(or, faster, ``pair_energy_force_r2(ti, tj, r²)``: no square root per pair) and, optionally,
``triplet_energy_gradient``. Here one generic loop maps it over the neighbours of
every atom. The loop is made by a factory that closes over the kernel, so Numba compiles the kernel
into the loop (inlined by Numba itself, see :func:`_inlined`) instead of calling through Python; the
compiled loops are cached per kernel module for the life of the process.

The pair pass runs on a *half* neighbour list (see :mod:`simulate.partition`): each pair's kernel is
called once and its force applied to both atoms (Newton's third law), half the work of a full list.
Each entry of the list names the periodic image it means, so a pair's displacement is one
subtraction of that image's shift, no minimum image per pair. A small box's list of no slots
(:func:`simulate.partition.lists_every_pair`) means every pair i < j instead, each by minimum image,
all rows in one block. A forces-only variant of the pass serves the steps whose energy nobody reads
(see :func:`_make_loops`).
It goes through blocks of rows in cell order (x-layers of cells, or equal shares of rows where those
keep the rule, see :func:`row_blocks`): even blocks in parallel, then odd ones; a layer's pairs
reach only itself and the next layer, so no two threads write one atom and every atom's sums run in
one fixed order, the same bit for bit for any number of threads.

Three-body terms (Stillinger & Weber 1985, Phys. Rev. B 31, 5262: w centred on k for every pair of
its neighbours j, l within r_3) run in more passes that are race-free and thread-count independent in
the same way:

1. the pair pass also files every pair inside r_3 in a short *full* list of both atoms (a pair is
   visited once, so it writes both rows, like its forces). Over a list each entry is the other atom
   and the pair's image code from the row's end, one 4-byte word, and each centre measures its
   neighbours again from the positions: at 96,000 atoms of the learned water, filing the unit vectors
   and distances in both rows, far apart in memory, took 30 % of the pass, and this ~23 % less time for
   the whole pass (one thread; 25 % on two). A small box of every pair files the unit vectors,
   distances and their inverses, which its centres read (measuring again took them longer there);
2. each centre k sums its triplets: its own force and loss, and minus the gradient on each of its
   neighbours, added to that neighbour's force. A neighbour within r_3 sits in k's x-layer of cells or
   in one beside it, so the centres run layer by layer in phases of layers three or more apart, the
   layers of a phase in parallel (:func:`centre_phases`). A law that is a product of radial factors
   and a polynomial in cos θ (every closed form mld fits) is summed by moments of the neighbours, in
   time linear in their number M rather than M²/2 triplet calls (see ``centre_rows``: 1.4× less
   time for the whole force pass of the learned many-body water).

In a box of two to five layers, whose phases would hold a layer each (one thread), the rows go in two
halves instead, each adding to a force array of its own, summed after (:func:`centre_tasks`). Adding
the gradients straight to the forces takes 5–6 % less time for the tabulated many-body force pass at
6,144 atoms and 15 % at 49,152 (one thread) than storing them in each centre's short row for every atom
to gather in a third pass, as the full-list pass still does.

The short list holds ~14 atoms per row for water at r_3 = 3.2 Å, against ~85 in a full list at the
pair cutoff plus skin; it is rebuilt every step (its pairs are the pair pass's), so no skin.

Each atom k gets its own loss ``H_k = Σ_j u(r_kj)`` — the agent's view of the model: m_k q̈_k =
−∂H_{A_k}/∂q_k summed over the pair terms it shares — plus, with three-body terms, every ``w``
centred on k. The total energy counts each pair once and each triplet once.

The virial ``W = Σ_pairs r_ij · F_ij`` (eV) gives the pressure, see :mod:`simulate.quantity`.

Every pass adds into the same per-atom forces, loss and virial and returns its energy. The last
pass, for a molecular model (see :mod:`simulate.topology`), puts each intramolecular pair's bonded
law in place of the pair law the neighbour pass counted; the compiled multi-step block of
:mod:`simulate.integrate` runs it too.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from types import ModuleType
from typing import NamedTuple

import numba
import numpy as np
from numba import prange

from simulate import partition, topology
from simulate.errors import MldError
from simulate.kernels import (
    MAX_COS_DEGREE,
    check_separable_triplets,
    has_separable_triplets,
    has_threebody,
    is_molecular,
    two_legs,
)
from simulate.prefetch import prefetch
from simulate.simd import (
    COMPRESS_LANES,
    LANES,
    NATIVE_COMPRESS,
    compress_below,
    lane_sum,
    lane_sums,
    lanes_add,
    lanes_div,
    lanes_load,
    lanes_mul,
    lanes_muladd,
    lanes_splat,
    lanes_sqrt,
    lanes_store,
    lanes_sub,
)
from simulate.space import box_lengths


class ForceResult(NamedTuple):
    energy_ev: float
    forces_ev_per_angstrom: np.ndarray  # (N, 3)
    atom_loss_ev: np.ndarray  # (N,) H_k
    virial_ev: float  # Σ_pairs r_ij·F_ij (+ three-body Σ r·F)
    nearest_angstrom: np.ndarray  # (N,) distance to the nearest atom within the cutoff (inf if none)


# The force loops of a kernel module that sets FUSED_MULTIPLY_ADD (see simulate.kernels; the tabulated
# modules do) let LLVM fuse a multiply and an add into one FMA (the ``contract`` flag alone of fastmath:
# no reassociation, no assumption of finite values). The passes are bound by floating-point arithmetic
# per pair (Horner steps, force sums); fused, the pair pass of the learned water takes 5–8 % less time
# (tabulated; 96 and 6,144 atoms) and the tabulated many-body pass 12 % less. Every pass, serial or
# parallel, full or forces-only, is compiled with the same flag; LLVM fuses only a product of a single
# use, so the full and forces-only passes agree bit for bit as long as no product of the inlined pair
# kernel feeds both its energy and its force (the promise the flag makes; triplet by triplet, the energies
# are summed in the forces-only pass too, see centre_rows, so a fused triplet law fuses alike in both;
# by moments, the energy is a sum apart from the forces). Other modules run unfused, but for the moment
# sums in lanes and a coded row's distances (see centre_rows), whose multiply-adds are LLVM's fmuladd,
# fused wherever the CPU has FMA: they are the same code in every pass.
CONTRACT = {"contract"}
ROWS_AHEAD = 4  # how far ahead the pair pass prefetches its list rows
TRIPLET_CHUNK = 32  # centres per parallel task of the full-list three-body pass
# a half-list pass of this many x-layers or more (or of one) runs its three-body centres layer by layer
# in phases (see centre_tasks). With two to five layers the phases would hold one layer each and run the
# centres on one thread (a step of 2,592 atoms on two threads took 35–45 % more time): two halves of the
# rows instead, each adding its forces to an array of its own.
PHASED_MIN_LAYERS = 6
# The half-list pass copies the positions into cell order and its forces back on threads from this many
# atoms (plain loops below it: a parallel loop wakes the sleeping threads, see simulate.partition). The two
# sweeps took some 1.2 ms of a 10 ms forces-only pass of 96,000 atoms on two threads.
SWEEP_PARALLEL_MIN_ATOMS = 40_000
# whether a small box's pair pass keeps its pairs by vector compression (see simulate.simd); loops made
# later read it, which a test uses to compare both ways
COMPRESS_ALL_PAIRS = NATIVE_COMPRESS
# a short row's entry in the half-list pass over a list: (atom << CODE_BITS) | the image code of the pair from
# the row's atom (see partition.NeighborList; 27 codes, so 5 bits): one 4-byte store per end of a pair
CODE_BITS = (len(partition.IMAGE_SHIFTS) - 1).bit_length()
CODE_MASK = (1 << CODE_BITS) - 1
MAX_CODED_ATOMS = 1 << (31 - CODE_BITS)


@numba.njit(cache=True)
def _no_triplets(type_k, type_j, type_l, r_kj, r_kl, cos_theta):
    return 0.0, 0.0, 0.0, 0.0


@numba.njit(cache=True)
def _no_pair(type_i, type_j, r):
    return 0.0, 0.0


@numba.njit(cache=True)
def _no_radial(type_k, type_j, type_other, r):
    return 0.0, 0.0


# The distinct components of û^⊗n, n ≤ 3, in the order the moment pass stores them, each with the number
# of entries of the full (symmetric) tensor it stands for: 1; x, y, z; xx, yy, zz, xy, xz, yz; xxx, yyy,
# zzz, xxy, xxz, xyy, yyz, xzz, yzz, xyz. 20 sums for a cubic instead of 40 (1 + 3 + 9 + 27).
_SYMMETRIC_POWERS = (0, 1, 1, 1, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3)
_SYMMETRIC_WEIGHTS = (1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 1, 1, 1, 3, 3, 3, 3, 3, 3, 6)
assert MAX_COS_DEGREE == max(_SYMMETRIC_POWERS)  # the moment pass writes out the components up to cubes
MOMENT_WIDTH = len(_SYMMETRIC_POWERS)  # the components of a moment as the pass stores them, in groups of LANES
assert MOMENT_WIDTH % LANES == 0


def _moment_layout(cos_polynomial) -> tuple:
    """What the moment pass closes over, from ``TRIPLET_COS_POLYNOMIAL`` (S, S, S, D+1).

    (the coefficient of each stored moment component q, p_n with n the power of q (S³, MOMENT_WIDTH):
    row (k·S + b)·S + c, half the multinomial weight of each component (1, MOMENT_WIDTH), both zero past
    the Q components, the coefficients' sums over n for two neighbours of one species (S, S), S, Q, D),
    with Q = 1, 4, 10 or 20 the distinct components of û^⊗n for n ≤ D (``_SYMMETRIC_POWERS``), in rows
    the moment pass reads four at a time. The table's shape, degree and symmetry are
    :func:`simulate.kernels.check_separable_triplets`'s to check.
    """
    poly = np.ascontiguousarray(cos_polynomial, dtype=np.float64)
    degree = poly.shape[3] - 1
    n_species = poly.shape[0]
    n_components = sum(1 for power in _SYMMETRIC_POWERS if power <= degree)
    power = np.array(_SYMMETRIC_POWERS[:n_components], dtype=np.int64)
    coefficient = np.zeros((n_species**3, MOMENT_WIDTH))
    coefficient[:, :n_components] = poly[:, :, :, power].reshape(n_species**3, n_components)
    half_weight = np.zeros((1, MOMENT_WIDTH))
    half_weight[0, :n_components] = 0.5 * np.array(_SYMMETRIC_WEIGHTS[:n_components], dtype=np.float64)
    poly_same = np.ascontiguousarray(np.einsum("kbbn->kb", poly))
    return coefficient, half_weight, poly_same, n_species, n_components, degree


@numba.njit(cache=True)
def _equal_blocks(layer_start, n_blocks):
    """(where each of ``n_blocks`` blocks of equal rows starts, whether they keep the rule of row_blocks)."""
    n_layers = layer_start.shape[0] - 1
    n_rows = layer_start[n_layers]
    even = np.empty(n_blocks + 1, dtype=np.int64)
    for b in range(n_blocks + 1):
        even[b] = b * n_rows // n_blocks
    for k in range(n_blocks):
        if even[k + 1] <= even[k]:
            return even, False
        last_layer = np.searchsorted(layer_start, even[k + 1] - 1, side="right") - 1
        later = (k + 2) % n_blocks
        first_layer = np.searchsorted(layer_start, even[later], side="right") - 1 + (n_layers if k + 2 >= n_blocks else 0)
        if first_layer < last_layer + 2:
            return even, False
    return even, True


@numba.njit(cache=True)
def _two_thread_rows(starts):
    """The rows the busier of two threads does over both phases of blocks ``starts``: each phase's
    blocks split into two runs of consecutive blocks, as a static parallel loop splits them."""
    n_blocks = starts.shape[0] - 1
    total = 0
    for phase in range(min(n_blocks, 2)):
        count = (n_blocks - phase + 1) // 2
        half = (count + 1) // 2
        first = 0
        second = 0
        for q in range(count):
            block = 2 * q + phase
            rows = starts[block + 1] - starts[block]
            if q < half:
                first += rows
            else:
                second += rows
        total += max(first, second)
    return total


@numba.njit(cache=True)
def row_blocks(layer_start):
    """Where each block of the half-list pair pass starts, in rows (cell order), and where the last ends.

    A row of x-layer A writes to atoms of layers A and A + 1 only (the forward half stencil, see
    :mod:`simulate.partition`). Blocks k and k + 2 (cyclically) run in the same phase, so block k + 2
    must start at least two layers past the layer of block k's last row: then the block between holds
    a whole layer, and no two blocks of a phase write the same atom. There are 2K ≤ n_layers blocks,
    K a power of two (at most 64), or K of them (below). They hold equal numbers of rows where that
    keeps the rule: with 7 layers, four blocks of 1¾ layers, so that both phases split evenly between
    two threads, where blocks of whole layers (1, 2, 2, 2) would leave one thread a layer to do alone.
    Elsewhere they are whole layers, as even as whole layers go, unless those leave one of two threads
    more than 10 % above half the rows while K ≥ 4 equal blocks (about two layers each, or more) keep
    the rule: with 13 layers, eight blocks of whole layers (1, 2, 1, 2, 2, 1, 2, 2) give two threads 2
    and 4 layers in the first phase (a 2-thread pass then ran 1.62× faster than one thread at 49,152
    atoms, where 10 and 16 layers ran 1.8×), so four blocks of 3¼ layers are taken there. The layout
    is made for two threads, the machines mld is measured on; it depends on the layers alone, never on
    the threads, so the sums run in the same order, bit for bit, for any number of them.
    """
    n_layers = layer_start.shape[0] - 1
    n_blocks = 1
    if n_layers >= 2:
        n_blocks = 2
        while 2 * n_blocks <= n_layers and n_blocks < 128:
            n_blocks *= 2
    if n_blocks >= 4:
        even, valid = _equal_blocks(layer_start, n_blocks)
        if valid:
            return even
    whole = np.empty(n_blocks + 1, dtype=np.int64)
    for b in range(n_blocks + 1):
        whole[b] = layer_start[b * n_layers // n_blocks]
    if n_blocks >= 8:
        even, valid = _equal_blocks(layer_start, n_blocks // 2)
        if valid and 10 * _two_thread_rows(whole) > 11 * _two_thread_rows(even):
            return even
    return whole


def _inlined(kernel):
    """The kernel compiled into every loop that calls it (Numba's own inlining), not called as a function.

    LLVM leaves a kernel of a few exponentials or a table lookup as a call, whose tuple result goes
    through memory; inlined, it is 12–20 % less time per pair (measured on the Morse, learned and
    tabulated water kernels), with the same numbers bit for bit. Inlined code compiles under the
    loop's options (FMA contraction where allowed, see CONTRACT), so a hand-written kernel's own ``fastmath`` or
    ``error_model`` does not apply (generated kernels set none).
    """
    py_func = getattr(kernel, "py_func", None)
    return numba.njit(inline="always")(py_func) if py_func is not None else kernel


def _pair_of_r2(pair_energy_force, pair_energy_force_r2=None):
    """The pair law as the passes call it, of r² (inlined, see :func:`_inlined`): the kernel module's
    ``pair_energy_force_r2`` where it has one, else ``pair_energy_force`` at √r² (computed as the pass
    would, so a closed form gives the same numbers bit for bit)."""
    if pair_energy_force_r2 is not None:
        return _inlined(pair_energy_force_r2)
    pair_energy_force = _inlined(pair_energy_force)

    @numba.njit(inline="always")
    def of_r2(type_i, type_j, r2):
        return pair_energy_force(type_i, type_j, math.sqrt(r2))

    return of_r2


@numba.njit(cache=True)
def centre_phases(n_layers):
    """(phase_start, layers): the x-layers of cells in phases, ``layers[phase_start[k]:phase_start[k + 1]]``
    in phase k, for the three-body centres of the half-list pass.

    A centre puts the gradient of its terms on each neighbour within r_3 into that neighbour's force,
    and a neighbour within r_3 sits in the centre's layer or one of the two beside it (a layer is at
    least the list's cutoff thick). So the centres of two layers may run at once when the layers are
    three or more apart, cyclically: layer a goes to phase a mod C, for the number of phases C (3 to
    8) that keeps that rule (n_layers mod C is 0 or at least 3) and takes least time on two threads
    (Σ over phases of ⌈layers/2⌉, then fewer phases). Every atom then takes its three-body forces
    phase by phase, each phase's from one layer, in row order: the same sums, bit for bit, for any
    number of threads. Fewer than three layers (a small box's single layer) run one after another.
    """
    best = n_layers
    best_time = n_layers
    for c in range(3, min(n_layers, 8) + 1):
        r = n_layers % c
        if r != 0 and r < 3:
            continue
        time = 0
        for k in range(c):
            size = n_layers // c + (1 if k < r else 0)
            time += (size + 1) // 2
        if time < best_time or (time == best_time and c < best):
            best, best_time = c, time
    phase_start = np.zeros(best + 1, dtype=np.int64)
    layers = np.empty(n_layers, dtype=np.int64)
    filled = 0
    for k in range(best):
        for a in range(k, n_layers, best):
            layers[filled] = a
            filled += 1
        phase_start[k + 1] = filled
    return phase_start, layers


@numba.njit(cache=True)
def centre_tasks(layer_start):
    """(phase_start, first, last, out): the parallel tasks of the three-body centres of a half-list pass,
    task t the rows ``first[t]`` to ``last[t]`` − 1, the tasks ``phase_start[k]`` to ``phase_start[k + 1]`` − 1
    in phase k, and ``out[t]`` where task t adds its forces: −1, the pass's forces, or h ≥ 0, a force
    array of its own.

    From PHASED_MIN_LAYERS x-layers (and for a single layer) a task per layer, into the forces, in the
    phases of :func:`centre_phases`. With two to five layers those phases would hold a layer each, one
    thread's work: there the rows go in two halves, each into a force array of its own.
    """
    n_layers = layer_start.shape[0] - 1
    if n_layers == 1 or n_layers >= PHASED_MIN_LAYERS:
        phase_start, layers = centre_phases(n_layers)
        first = np.empty(n_layers, dtype=np.int64)
        last = np.empty(n_layers, dtype=np.int64)
        for t in range(n_layers):
            first[t] = layer_start[layers[t]]
            last[t] = layer_start[layers[t] + 1]
        return phase_start, first, last, np.full(n_layers, -1, dtype=np.int64)
    n = layer_start[n_layers]
    phase_start = np.zeros(2, dtype=np.int64)
    phase_start[1] = 2
    first = np.zeros(2, dtype=np.int64)
    last = np.zeros(2, dtype=np.int64)
    first[1] = last[0] = n // 2
    last[1] = n
    return phase_start, first, last, np.arange(2)


@numba.njit(inline="always")
def _cubic_row(a_xx, a_yy, a_zz, a_xy, a_xz, a_yz, xx, yy, zz, xy2, xz2, yz2):
    """One component of G³:û⊗û in lanes, from six distinct components of G³ and û's products (the
    mixed ones doubled)."""
    out = lanes_mul(lanes_splat(a_xx), xx)
    out = lanes_muladd(lanes_splat(a_yy), yy, out)
    out = lanes_muladd(lanes_splat(a_zz), zz, out)
    out = lanes_muladd(lanes_splat(a_xy), xy2, out)
    out = lanes_muladd(lanes_splat(a_xz), xz2, out)
    return lanes_muladd(lanes_splat(a_yz), yz2, out)


@numba.njit(inline="always")
def _tangential(de_dr, u, h, hu, inv_r):
    """One component of a neighbour's gradient in lanes: ∂E/∂r û + (h − (h·û) û) / r."""
    return lanes_muladd(de_dr, u, lanes_mul(lanes_sub(h, lanes_mul(hu, u)), inv_r))


def _radial_two(triplet_radial, triplet_radial_two, n_species):
    """The legs (k, j, o) and (k, j, o + 1) of a neighbour at once, as the moment pass reads them (inlined, see
    :func:`_inlined`): the kernel module's ``triplet_radial_two`` where it has one (a tabulated module's finds
    the table cell once for both), else ``triplet_radial`` twice (:func:`simulate.kernels.two_legs`)."""
    if triplet_radial_two is not None:
        return _inlined(triplet_radial_two)
    return two_legs(_inlined(triplet_radial), n_species)


def _make_loops(pair_energy_force, triplet_energy_gradient=None, intra_pair_energy_force=None, triplet_radial=None,
                cos_polynomial=None, pair_energy_force_r2=None, fused=False, triplet_radial_two=None):
    """(half-list forces, its forces-only variant, full-list forces), each a (serial, parallel) pair.

    All return ``(forces (N,3), loss (N,), virial (N,), nearest (N,), energy, virial_total, needed3,
    closest)``, ``closest`` the distance of the closest pair within the cutoff (inf if none). The
    forces-only variant serves the steps whose energy nobody reads (LAMMPS's ``eflag``): the same
    forces bit for bit and ``closest``, with empty arrays for loss, virial and nearest and NaN for
    energy and virial. It skips the scatter of losses and nearest distances to the other atom of
    every pair and the sums of energies, so the compiler drops the kernel's energy arithmetic: 8–25 %
    less time than the full pass (Morse, tabulated and learned water kernels, 6,144 atoms). It is a
    compiled variant of its own, not a runtime flag, for that: a flag keeps the energy arithmetic.
    ``needed3`` is the longest short-list row (0 without three-body terms): when it exceeds
    ``capacity3`` the three-body passes were skipped and the call must be repeated with a wider list.
    With ``intra_pair_energy_force`` (a molecular model) a last pass puts the bonded law in place of
    the pair law on the intramolecular pairs ``work[11], work[12]`` (see :func:`workspace`).
    With ``triplet_radial`` and ``cos_polynomial`` (a separable three-body law, see
    :mod:`simulate.kernels`) each centre's triplets are summed by moments (:func:`_moment_layout`)
    instead of pair by pair. Every pass calls the pair law of r² (:func:`_pair_of_r2`): with a
    ``pair_energy_force_r2`` it takes no square root per pair. With ``fused`` the loops compile with FMA
    contraction (see CONTRACT).
    """
    with_triplets = triplet_energy_gradient is not None  # a compile-time constant of the loops
    with_moments = with_triplets and triplet_radial is not None
    pair_energy_force = _pair_of_r2(pair_energy_force, pair_energy_force_r2)
    triplet = _inlined(triplet_energy_gradient) if with_triplets else _no_triplets
    coefficient, half_weight, poly_same, n_species, n_components, degree = _moment_layout(
        cos_polynomial if with_moments else np.zeros((1, 1, 1, 1)))
    radial_two = _radial_two(triplet_radial if with_moments else _no_radial, triplet_radial_two, n_species)
    # the rows of a centre's lanes (see centre_rows): û, r, 1/r; R_c; dR_c/dr; the gradient and r ∂E/∂r
    RAD = 5
    DRAD = RAD + n_species
    GX = DRAD + n_species
    lane_rows = GX + 4
    moment_groups = -(-n_components // LANES)  # the groups of LANES components a moment is stored in: 1, 1, 3, 5
    with_bonds = intra_pair_energy_force is not None
    compress = COMPRESS_ALL_PAIRS  # a compile-time constant of the loops (see simulate.simd)
    bonded = topology.make_bonded_loop(intra_pair_energy_force if with_bonds else _no_pair, pair_energy_force)

    @numba.njit(inline="always")
    def centre_rows(first, last, types, nb3, d3, cnt3, grad3, at, shifts, coded, forces, loss, virial, energy3,
                    with_energy, scatter):
        """The centres ``first`` to ``last`` − 1 of the three-body pass, with their scratch rows; each centre
        k writes its own force, loss, virial and energy (``energy3[k]``) and, with ``scatter``, minus the
        gradient on each neighbour to that neighbour's row of ``forces`` (the half-list pass runs the
        centres so that no two threads add to one row of one array at once, see :func:`centre_tasks`);
        without ``scatter``, the gradients go to k's short row ``grad3[k]``, for each atom to gather (the
        full-list pass).

        By moments (a separable law, ``with_moments``): for w = R(r_kj) R(r_kl) Σ_n p_n (û_j·û_l)^n,
        with (û_j·û_l)^n = ⟨û_j^⊗n, û_l^⊗n⟩, the sum over pairs of neighbours of species b and c is
        Σ_n p_n ⟨T_b|c^n, T_c|b^n⟩, where T_b|c^n = Σ_{j of species b} R_b|c(r_kj) û_j^⊗n is a moment
        of the neighbours (R_b|c: the leg to a b neighbour when the other is a c); for b = c, half of
        it less the j = l terms, Σ_j R_j². So a centre costs O(M) in its M neighbours, not O(M²): the
        moment (linear-scaling) expansion of Shapeev's moment tensor potentials (2016, Multiscale
        Model. Simul. 14, 1153) and Drautz's ACE (2019, Phys. Rev. B 99, 014104), exact here because
        the law is a product. The gradient on neighbour j is (∂E/∂r_j) û_j + (I − û_j û_jᵀ) ∂E/∂û_j / r_j,
        with ∂E/∂T_b|c = p T_c|b (``adjoint``); the centre takes minus the sum, and Σ r·F is
        −Σ_j r_j ∂E/∂r_j. The neighbours are put in order of species first, and each tensor is kept by
        its distinct components (10 numbers, not 13, for a quadratic in cos θ; see ``_SYMMETRIC_POWERS``).
        With the radial tables' slopes read from quartics of their own (see simulate.tabulate; a
        neighbour's legs two at a time, see :func:`_radial_two`) and the energy left out where nobody
        reads it (``with_energy``: it is a sum apart from the forces, so they stay the same bit for
        bit), the tabulated many-body step of 96 atoms took 19 % less time than with one moment array
        updated per neighbour (73.5 → 59.5 µs, one thread).

        The moment sums and the gradients run four neighbours at a time in vector lanes
        (:mod:`simulate.simd`): the short row is copied into rows of lanes, one per coordinate, leg and
        slope, each species' run padded with zeros to a multiple of four (a pad adds zero to every
        moment and has a zero gradient), each moment summed in four partial sums added in a fixed order,
        so the numbers do not depend on the thread count or the pass. A ``coded`` row (atoms and image
        codes) goes into the lanes as vectors to the neighbours, whose lengths and directions are then
        taken four at a time (a pad measured as (1, 0, 0): finite, with zero legs). The copy into lanes,
        with each neighbour's legs looked up (its two legs and their slopes in lanes, see :mod:`simulate.tabulate`),
        and the scatter of the gradients to the neighbours' forces stay one neighbour at a time. With the
        neighbours put in order by one branch-free compaction per species (a counting sort's counters in
        memory made every neighbour wait for the last), the forces-only pass of the 96-atom tabulated
        many-body water took ~15 % less time (58 → 49 µs, one thread).

        Otherwise triplet by triplet: with unit vectors û_j = d_kj/r_kj, ∂cosθ/∂x_j = (û_l − cosθ û_j)/r_kj,
        so the gradient of w on j is (∂w/∂r_kj − ∂w/∂cosθ cosθ/r_kj) û_j + ∂w/∂cosθ/r_kj û_l, alike for
        l; it is summed in grad3[k, slot of j] (then, with ``scatter``, taken from j's force), and the
        centre takes minus the sum (translation invariance).
        Its share of Σ r·F is −(r_kj ∂w/∂r_kj + r_kl ∂w/∂r_kl): the cos θ terms cancel. The neighbours
        are visited in order of species (``perm``, a stable sort of the slots), so the kernel's branches
        on the species go the same way many times running.

        Triplet by triplet, the energy ``e`` of every centre is summed in the forces-only pass too: a
        closed-form triplet law inlined with FMA contraction (see CONTRACT) then fuses the same
        products in both passes, whose forces agree bit for bit. Keep it so.

        A centre's work is written out here, not in a function of its own: an inlined function with
        array arguments costs reference-count updates (atomic instructions) on every call, which
        Numba's pruning leaves in place around loops and calls; per centre that was 8–10 % of the
        tabulated many-body pass (768 atoms).
        """
        rows = nb3.shape[1]
        # the scratch rows of the kind of sum this law takes (the other kind's are empty). By moments, the
        # short row goes into rows of lanes (see simulate.simd): by species, each species' run padded with
        # zeros to a multiple of LANES; a row each for û (3), r, 1/r, the legs R_c and their slopes dR_c/dr
        # for each other species c, then the gradient (3) and r ∂E/∂r that the lanes compute
        padded = rows + n_species * (LANES - 1) if with_moments else 0
        by_lane = np.empty((lane_rows if with_moments else 0, padded))
        source = np.empty(padded, dtype=np.int64)  # the slot each came from
        start = np.empty(n_species + 1, dtype=np.int64)  # species b's lanes: start[b] to start[b + 1]
        fill = np.empty(n_species, dtype=np.int64)  # ... of which start[b] to fill[b] are neighbours
        moments = np.empty((n_species * n_species, MOMENT_WIDTH))  # [b·S + c, q]: T_b|c
        adjoint = np.empty((n_species * n_species, MOMENT_WIDTH))  # [b·S + c, q], as the moments
        diag = np.empty(n_species)
        perm = np.empty(0 if with_moments else rows, dtype=np.int64)
        # ``coded`` (the half-list pass over a list): a short row holds atoms and image codes only, and each
        # centre measures its neighbours again (see the pass), in the moments' lanes or in ``here``; else
        # the row holds their unit vectors, distances and inverse distances, ``d3[k]``
        here = np.empty((1, rows if coded and not with_moments else 0, 5))
        row_d = here if coded else d3
        code_bits = CODE_BITS if coded else 0  # a coded entry is (atom << CODE_BITS) | image code
        zero = lanes_splat(0.0)
        one = lanes_splat(1.0)
        two = lanes_splat(2.0)
        three = lanes_splat(3.0)
        for k in range(first, last):
            m = cnt3[k]
            tk = types[k]
            kk = 0 if coded else k  # k's row of row_d
            # the vector from k to neighbour j of image code c: x_j − x_k + shift(c), exactly minus the pair
            # pass's displacement of the pair, whichever atom's row it is in
            xk, yk, zk = at[k, 0], at[k, 1], at[k, 2]
            if coded and not with_moments:
                for a in range(m):
                    j = nb3[k, a] >> CODE_BITS
                    c = nb3[k, a] & CODE_MASK
                    vx = at[j, 0] - xk + shifts[c, 0]
                    vy = at[j, 1] - yk + shifts[c, 1]
                    vz = at[j, 2] - zk + shifts[c, 2]
                    r = math.sqrt(vx * vx + vy * vy + vz * vz)
                    inv_r = 1.0 / r
                    here[0, a, 0] = vx * inv_r
                    here[0, a, 1] = vy * inv_r
                    here[0, a, 2] = vz * inv_r
                    here[0, a, 3] = r
                    here[0, a, 4] = inv_r
            if with_moments:
                # the neighbours by species, in order: a compaction per species writes every neighbour's slot
                # and moves past those of its species (no branch, and no counter in memory whose every
                # update waits for the last: a counting sort's; the slot after a species' last one, its pad
                # or the next species' first, is written over later), then their directions, distances and
                # legs' radial factors into the lanes, each species' run padded with zeros
                start[0] = 0
                for b in range(n_species):
                    s = start[b]
                    for a in range(m):
                        source[s] = a
                        s += types[nb3[k, a] >> code_bits] == b
                    fill[b] = s
                    start[b + 1] = start[b] + (s - start[b] + LANES - 1) // LANES * LANES
                for b in range(n_species):
                    for s in range(start[b], fill[b]):
                        a = source[s]
                        if coded:
                            j = nb3[k, a] >> CODE_BITS
                            c = nb3[k, a] & CODE_MASK
                            by_lane[0, s] = at[j, 0] - xk + shifts[c, 0]
                            by_lane[1, s] = at[j, 1] - yk + shifts[c, 1]
                            by_lane[2, s] = at[j, 2] - zk + shifts[c, 2]
                        else:
                            for i in range(5):
                                by_lane[i, s] = row_d[kk, a, i]
                    for s in range(fill[b], start[b + 1]):
                        for i in range(GX):
                            by_lane[i, s] = 0.0  # a pad: no leg, no direction, no gradient
                        by_lane[0, s] = 1.0 if coded else 0.0  # (measured as (1, 0, 0): r = 1, finite)
                    if coded:
                        # their distances and unit vectors, four at a time
                        for s in range(start[b], start[b + 1], LANES):
                            vx = lanes_load(by_lane, 0, s)
                            vy = lanes_load(by_lane, 1, s)
                            vz = lanes_load(by_lane, 2, s)
                            r = lanes_sqrt(lanes_muladd(vz, vz, lanes_muladd(vy, vy, lanes_mul(vx, vx))))
                            inv_r = lanes_div(one, r)
                            lanes_store(by_lane, 0, s, lanes_mul(vx, inv_r))
                            lanes_store(by_lane, 1, s, lanes_mul(vy, inv_r))
                            lanes_store(by_lane, 2, s, lanes_mul(vz, inv_r))
                            lanes_store(by_lane, 3, s, r)
                            lanes_store(by_lane, 4, s, inv_r)
                    for s in range(start[b], fill[b]):
                        r = by_lane[3, s]
                        for c in range(0, n_species, 2):
                            by_lane[RAD + c, s], by_lane[DRAD + c, s], other, d_other = radial_two(tk, b, c, r)
                            if c + 1 < n_species:
                                by_lane[RAD + c + 1, s] = other
                                by_lane[DRAD + c + 1, s] = d_other
                # the moments T_b|c of each species b, four neighbours at a time in lanes: R û^⊗n, n ≤
                # degree, in the distinct components (see _SYMMETRIC_POWERS)
                for b in range(n_species):
                    if with_energy:
                        d = 0.0
                        for s in range(start[b], fill[b]):
                            d += by_lane[RAD + b, s] * by_lane[RAD + b, s]
                        diag[b] = d
                    for c in range(n_species):
                        m0 = m1 = m2 = m3 = m4 = m5 = m6 = m7 = m8 = m9 = zero
                        m10 = m11 = m12 = m13 = m14 = m15 = m16 = m17 = m18 = m19 = zero
                        for s in range(start[b], start[b + 1], LANES):
                            rr = lanes_load(by_lane, RAD + c, s)
                            m0 = lanes_add(m0, rr)
                            if degree >= 1:
                                ux = lanes_load(by_lane, 0, s)
                                uy = lanes_load(by_lane, 1, s)
                                uz = lanes_load(by_lane, 2, s)
                                rx = lanes_mul(rr, ux)
                                ry = lanes_mul(rr, uy)
                                rz = lanes_mul(rr, uz)
                                m1 = lanes_add(m1, rx)
                                m2 = lanes_add(m2, ry)
                                m3 = lanes_add(m3, rz)
                            if degree >= 2:
                                rxx = lanes_mul(rx, ux)
                                ryy = lanes_mul(ry, uy)
                                rzz = lanes_mul(rz, uz)
                                rxy = lanes_mul(rx, uy)
                                m4 = lanes_add(m4, rxx)
                                m5 = lanes_add(m5, ryy)
                                m6 = lanes_add(m6, rzz)
                                m7 = lanes_add(m7, rxy)
                                m8 = lanes_muladd(rx, uz, m8)
                                m9 = lanes_muladd(ry, uz, m9)
                            if degree >= 3:
                                m10 = lanes_muladd(rxx, ux, m10)
                                m11 = lanes_muladd(ryy, uy, m11)
                                m12 = lanes_muladd(rzz, uz, m12)
                                m13 = lanes_muladd(rxx, uy, m13)
                                m14 = lanes_muladd(rxx, uz, m14)
                                m15 = lanes_muladd(ryy, ux, m15)
                                m16 = lanes_muladd(ryy, uz, m16)
                                m17 = lanes_muladd(rzz, ux, m17)
                                m18 = lanes_muladd(rzz, uy, m18)
                                m19 = lanes_muladd(rxy, uz, m19)
                        row = b * n_species + c
                        lanes_store(moments, row, 0, lane_sums(m0, m1, m2, m3))
                        if moment_groups > 1:
                            lanes_store(moments, row, 4, lane_sums(m4, m5, m6, m7))
                            lanes_store(moments, row, 8, lane_sums(m8, m9, m10, m11))
                        if moment_groups > 3:
                            lanes_store(moments, row, 12, lane_sums(m12, m13, m14, m15))
                            lanes_store(moments, row, 16, lane_sums(m16, m17, m18, m19))
                # the adjoint ∂E/∂T_b|c = p T_c|b, four components at a time, and the energy where it is read
                # (see the pass's with_energy); past Q, the coefficients and weights are zero
                e = 0.0
                for b in range(n_species):
                    for c in range(n_species):
                        row = b * n_species + c
                        p_row = (tk * n_species + b) * n_species + c
                        e_lanes = zero
                        for q in range(0, moment_groups * LANES, LANES):
                            g = lanes_mul(lanes_load(coefficient, p_row, q), lanes_load(moments, c * n_species + b, q))
                            lanes_store(adjoint, row, q, g)
                            if with_energy:
                                weighted = lanes_mul(lanes_load(half_weight, 0, q), g)
                                e_lanes = lanes_muladd(weighted, lanes_load(moments, row, q), e_lanes)
                        e += lane_sum(e_lanes)
                    if with_energy:
                        e -= 0.5 * poly_same[tk, b] * diag[b]
                fx = 0.0
                fy = 0.0
                fz = 0.0
                wv = 0.0
                for b in range(n_species):
                    same = lanes_splat(poly_same[tk, b])
                    # four neighbours at a time in lanes (a pad's gradient is zero), into the gradient's rows
                    for s in range(start[b], start[b + 1], LANES):
                        ux = lanes_load(by_lane, 0, s)
                        uy = lanes_load(by_lane, 1, s)
                        uz = lanes_load(by_lane, 2, s)
                        inv_r = lanes_load(by_lane, 4, s)
                        if degree >= 3:
                            xx = lanes_mul(ux, ux)
                            yy = lanes_mul(uy, uy)
                            zz = lanes_mul(uz, uz)
                            xy2 = lanes_mul(lanes_mul(two, ux), uy)
                            xz2 = lanes_mul(lanes_mul(two, ux), uz)
                            yz2 = lanes_mul(lanes_mul(two, uy), uz)
                        de_dr = zero
                        hx = zero
                        hy = zero
                        hz = zero
                        for c in range(n_species):
                            row = b * n_species + c
                            big_r = lanes_load(by_lane, RAD + c, s)
                            # ⟨G^n, û^⊗n⟩ and its û-gradient n G^n·û^⊗(n−1) (G^n symmetric), from the
                            # distinct components: with t = G²·û and q = G³:û⊗û, sv = G⁰ + (G¹ + t + q)·û
                            # and h = R (G¹ + 2t + 3q)
                            sv = lanes_splat(adjoint[row, 0])
                            h0 = zero
                            h1 = zero
                            h2 = zero
                            if degree >= 1:
                                g0 = lanes_splat(adjoint[row, 1])
                                g1 = lanes_splat(adjoint[row, 2])
                                g2 = lanes_splat(adjoint[row, 3])
                                h0 = g0
                                h1 = g1
                                h2 = g2
                            if degree >= 2:
                                a4 = lanes_splat(adjoint[row, 4])
                                a5 = lanes_splat(adjoint[row, 5])
                                a6 = lanes_splat(adjoint[row, 6])
                                a7 = lanes_splat(adjoint[row, 7])
                                a8 = lanes_splat(adjoint[row, 8])
                                a9 = lanes_splat(adjoint[row, 9])
                                t0 = lanes_muladd(a8, uz, lanes_muladd(a7, uy, lanes_mul(a4, ux)))
                                t1 = lanes_muladd(a9, uz, lanes_muladd(a5, uy, lanes_mul(a7, ux)))
                                t2 = lanes_muladd(a6, uz, lanes_muladd(a9, uy, lanes_mul(a8, ux)))
                                g0 = lanes_add(g0, t0)
                                g1 = lanes_add(g1, t1)
                                g2 = lanes_add(g2, t2)
                                h0 = lanes_muladd(two, t0, h0)
                                h1 = lanes_muladd(two, t1, h1)
                                h2 = lanes_muladd(two, t2, h2)
                            if degree >= 3:
                                q0 = _cubic_row(adjoint[row, 10], adjoint[row, 15], adjoint[row, 17],
                                                adjoint[row, 13], adjoint[row, 14], adjoint[row, 19],
                                                xx, yy, zz, xy2, xz2, yz2)
                                q1 = _cubic_row(adjoint[row, 13], adjoint[row, 11], adjoint[row, 18],
                                                adjoint[row, 15], adjoint[row, 19], adjoint[row, 16],
                                                xx, yy, zz, xy2, xz2, yz2)
                                q2 = _cubic_row(adjoint[row, 14], adjoint[row, 16], adjoint[row, 12],
                                                adjoint[row, 19], adjoint[row, 17], adjoint[row, 18],
                                                xx, yy, zz, xy2, xz2, yz2)
                                g0 = lanes_add(g0, q0)
                                g1 = lanes_add(g1, q1)
                                g2 = lanes_add(g2, q2)
                                h0 = lanes_muladd(three, q0, h0)
                                h1 = lanes_muladd(three, q1, h1)
                                h2 = lanes_muladd(three, q2, h2)
                            if degree >= 1:
                                sv = lanes_muladd(g2, uz, lanes_muladd(g1, uy, lanes_muladd(g0, ux, sv)))
                            if c == b:
                                sv = lanes_sub(sv, lanes_mul(same, big_r))
                            de_dr = lanes_muladd(sv, lanes_load(by_lane, DRAD + c, s), de_dr)
                            hx = lanes_muladd(big_r, h0, hx)
                            hy = lanes_muladd(big_r, h1, hy)
                            hz = lanes_muladd(big_r, h2, hz)
                        hu = lanes_muladd(hz, uz, lanes_muladd(hy, uy, lanes_mul(hx, ux)))
                        lanes_store(by_lane, GX, s, _tangential(de_dr, ux, hx, hu, inv_r))
                        lanes_store(by_lane, GX + 1, s, _tangential(de_dr, uy, hy, hu, inv_r))
                        lanes_store(by_lane, GX + 2, s, _tangential(de_dr, uz, hz, hu, inv_r))
                        lanes_store(by_lane, GX + 3, s, lanes_mul(lanes_load(by_lane, 3, s), de_dr))
                    for s in range(start[b], fill[b]):
                        gx = by_lane[GX, s]
                        gy = by_lane[GX + 1, s]
                        gz = by_lane[GX + 2, s]
                        if scatter:
                            q = nb3[k, source[s]] >> code_bits
                            forces[q, 0] -= gx
                            forces[q, 1] -= gy
                            forces[q, 2] -= gz
                        else:
                            a = source[s]
                            grad3[k, a, 0] = gx
                            grad3[k, a, 1] = gy
                            grad3[k, a, 2] = gz
                        fx += gx
                        fy += gy
                        fz += gz
                        wv -= by_lane[GX + 3, s]
            else:
                for a in range(m):
                    grad3[k, a, 0] = 0.0
                    grad3[k, a, 1] = 0.0
                    grad3[k, a, 2] = 0.0
                    # insertion sort by species: m is a dozen or so
                    t = types[nb3[k, a] >> code_bits]
                    b = a
                    while b > 0 and types[nb3[k, perm[b - 1]] >> code_bits] > t:
                        perm[b] = perm[b - 1]
                        b -= 1
                    perm[b] = a
                e = 0.0
                wv = 0.0
                for a in range(m):
                    sa = perm[a]
                    tj = types[nb3[k, sa] >> code_bits]
                    ax, ay, az = row_d[kk, sa, 0], row_d[kk, sa, 1], row_d[kk, sa, 2]
                    r1, ir1 = row_d[kk, sa, 3], row_d[kk, sa, 4]
                    gjx = 0.0
                    gjy = 0.0
                    gjz = 0.0
                    for b in range(a + 1, m):
                        sb = perm[b]
                        bx, by, bz = row_d[kk, sb, 0], row_d[kk, sb, 1], row_d[kk, sb, 2]
                        r2, ir2 = row_d[kk, sb, 3], row_d[kk, sb, 4]
                        cos = ax * bx + ay * by + az * bz
                        w, g1, g2, gc = triplet(tk, tj, types[nb3[k, sb] >> code_bits], r1, r2, cos)
                        e += w
                        hj = gc * ir1
                        hl = gc * ir2
                        cj = g1 - hj * cos
                        cl = g2 - hl * cos
                        ux = cj * ax + hj * bx
                        uy = cj * ay + hj * by
                        uz = cj * az + hj * bz
                        vx = cl * bx + hl * ax
                        vy = cl * by + hl * ay
                        vz = cl * bz + hl * az
                        gjx += ux
                        gjy += uy
                        gjz += uz
                        grad3[k, sb, 0] += vx
                        grad3[k, sb, 1] += vy
                        grad3[k, sb, 2] += vz
                        wv -= r1 * g1 + r2 * g2
                    grad3[k, sa, 0] += gjx
                    grad3[k, sa, 1] += gjy
                    grad3[k, sa, 2] += gjz
                fx = 0.0
                fy = 0.0
                fz = 0.0
                for a in range(m):
                    fx += grad3[k, a, 0]
                    fy += grad3[k, a, 1]
                    fz += grad3[k, a, 2]
                    if scatter:
                        q = nb3[k, a] >> code_bits
                        forces[q, 0] -= grad3[k, a, 0]
                        forces[q, 1] -= grad3[k, a, 1]
                        forces[q, 2] -= grad3[k, a, 2]
            forces[k, 0] += fx
            forces[k, 1] += fy
            forces[k, 2] += fz
            # (by moments without with_energy, e is 0: a forces-only pass reads neither loss nor energy3)
            loss[k] += e
            virial[k] += wv
            energy3[k] = e

    @numba.njit(inline="always")
    def gather(p, nb3, rev3, cnt3, grad3, forces):
        """Minus the three-body gradients on p that its neighbours' centres stored for it."""
        gx = 0.0
        gy = 0.0
        gz = 0.0
        for b in range(cnt3[p]):
            q = nb3[p, b]
            s = rev3[p, b]
            gx += grad3[q, s, 0]
            gy += grad3[q, s, 1]
            gz += grad3[q, s, 2]
        forces[p, 0] -= gx
        forces[p, 1] -= gy
        forces[p, 2] -= gz

    def half_loop(with_energy):
        """The half-list force function; without ``with_energy``, its forces-only variant (see above)."""

        def half_list_forces(positions, types, box, neighbors, counts, order, layer_start, image, wrap, cutoff, cutoff3,
                             work):
            # Plain loops throughout but the pranges: in a parallel function an array expression is a
            # parallel region of its own, and every region wakes the threads (a whole time slice on a
            # busy machine). The list is in cell order (see partition.NeighborList), and so are the
            # copies the loop works on, wrapped as at the build: neighbours then sit close together in
            # memory, and a pair's displacement is one subtraction of its image's shift. The scratch
            # arrays come from the caller (see Workspace): fresh ones would cost a page fault per 4 KiB
            # every call.
            n = positions.shape[0]
            cell_positions, cell_types, forces, loss, virial, r2min = work[0], work[1], work[2], work[3], work[4], work[5]
            nb3, d3, grad3, cnt3 = work[6], work[8], work[9], work[10]
            capacity3 = nb3.shape[1]
            # a list of no slots is a small box's: every pair, by minimum image (see partition), from
            # the positions by coordinate (xs, ys, zs) into the displacements of one row (bx, by, bz, br)
            all_pairs = neighbors.shape[1] == 0
            by_coordinate = np.empty((7, n if all_pairs else 0))
            xs, ys, zs = by_coordinate[0], by_coordinate[1], by_coordinate[2]
            bx, by, bz, br = by_coordinate[3], by_coordinate[4], by_coordinate[5], by_coordinate[6]
            width = n if all_pairs else neighbors.shape[1]
            # the copies in cell order: on threads in a big box (see SWEEP_PARALLEL_MIN_ATOMS), plain in a small
            # one, which alone may list every pair (the by-coordinate copies of partition.ALL_PAIRS_MAX_ATOMS
            # atoms or fewer)
            if n >= SWEEP_PARALLEL_MIN_ATOMS:
                for p in prange(n):
                    i = order[p]
                    for d in range(3):
                        cell_positions[p, d] = positions[i, d] - wrap[p, d]
                        forces[p, d] = 0.0
                    cell_types[p] = types[i]
                    if with_energy:
                        loss[p] = 0.0
                        r2min[p] = np.inf
                    cnt3[p] = 0
            else:
                for p in range(n):
                    i = order[p]
                    for d in range(3):
                        cell_positions[p, d] = positions[i, d] - wrap[p, d]
                        forces[p, d] = 0.0
                    if all_pairs:
                        xs[p] = cell_positions[p, 0]
                        ys[p] = cell_positions[p, 1]
                        zs[p] = cell_positions[p, 2]
                    cell_types[p] = types[i]
                    if with_energy:
                        loss[p] = 0.0
                        r2min[p] = np.inf
                    cnt3[p] = 0
            shifts = partition.image_shifts_angstrom(box)
            lx, ly, lz = box[0], box[1], box[2]
            inverse_lx, inverse_ly, inverse_lz = 1.0 / lx, 1.0 / ly, 1.0 / lz
            rc2 = cutoff * cutoff
            r32 = cutoff3 * cutoff3 if with_triplets else 0.0
            reach2 = max(rc2, r32)
            # the rows in 2K consecutive blocks (see row_blocks); the even blocks run in parallel, then
            # the odd ones, so blocks of one phase never write the same atom. The blocks depend on the
            # layers alone, never on the threads, so the sums run in the same order for any thread count.
            block_start = row_blocks(layer_start)
            n_blocks = block_start.shape[0] - 1
            per_phase = max(n_blocks // 2, 1)  # (a conditional expression in prange stops Numba parallelising it)
            for phase in range(min(n_blocks, 2)):
                for b in prange(per_phase):
                    block = 2 * b + phase
                    near_j = np.empty(width, dtype=np.uint32)  # scratch rows, one per block
                    # the kept pairs' image codes, for the short three-body rows over a list
                    near_c = np.empty(width if with_triplets and not all_pairs else 0, dtype=np.uint8)
                    near_d = np.empty((4, width))  # the kept pairs' dx, dy, dz, r², a row each
                    near_x, near_y, near_z, near_r = near_d[0], near_d[1], near_d[2], near_d[3]
                    first = block_start[block]
                    last = block_start[block + 1]
                    # every pair of row p: writes to p and to its row's atoms only. Two passes: the first
                    # only measures distances and keeps the pairs inside the cutoff, without branching
                    # (a pair's cutoff test goes either way at random: a mispredicted branch on every
                    # other entry); the second calls the kernel on them. Each pair's displacement
                    # subtracts the shift of its image code (see partition.NeighborList). Without
                    # ``with_energy`` only the forces are scattered to the row's atoms, the energies are
                    # not summed (so the compiler drops the kernel's energy arithmetic), and the row
                    # keeps its closest pair in ``r2min[p]`` (each pair is in exactly one row), enough
                    # for the checks of a step whose energy nobody reads; the forces are summed in the
                    # same order either way, so they are the same bit for bit. The row is written out
                    # here, not as an inlined function: its array arguments cost reference-count updates
                    # (atomic instructions) on every row, 12–30 % of the pair pass (see centre_rows).
                    for p in range(first, last):
                        xi, yi, zi = cell_positions[p, 0], cell_positions[p, 1], cell_positions[p, 2]
                        ti = cell_types[p]
                        m = 0
                        if all_pairs:
                            # the displacements to every later atom, in a loop the compiler vectorises
                            # (unsigned indices: no wrap-around of negative ones, see below), then the
                            # atoms within reach with their displacements: eight at a time by vector
                            # compression where the CPU has it (see simulate.simd; the pair pass of the
                            # 96-atom learned pairwise water took ~1.5 µs less), the rest one by one
                            for q in range(n - p - 1):
                                j = np.uint32(p + 1 + q)
                                dx = xi - xs[j]
                                dy = yi - ys[j]
                                dz = zi - zs[j]
                                dx -= lx * np.rint(dx * inverse_lx)
                                dy -= ly * np.rint(dy * inverse_ly)
                                dz -= lz * np.rint(dz * inverse_lz)
                                bx[j] = dx
                                by[j] = dy
                                bz[j] = dz
                                br[j] = dx * dx + dy * dy + dz * dz
                            rest = p + 1
                            if compress:
                                while rest + COMPRESS_LANES <= n:
                                    m = compress_below(br, bx, by, bz, rest, reach2, near_r, near_x, near_y,
                                                       near_z, near_j, m)
                                    rest += COMPRESS_LANES
                            tail = m
                            for q in range(n - rest):
                                j = np.uint32(rest + q)
                                near_j[m] = j
                                m += br[j] < reach2
                            for slot in range(tail, m):
                                j = near_j[slot]
                                near_x[slot] = bx[j]
                                near_y[slot] = by[j]
                                near_z[slot] = bz[j]
                                near_r[slot] = br[j]
                        else:
                            # the row a few ahead on its way into the cache (see simulate.prefetch): the
                            # lines of its first 33–48 entries (rows are not aligned to lines; a row holds
                            # 35–45 on average in water) and of its first image codes
                            ahead = p + ROWS_AHEAD
                            if ahead < last:
                                prefetch(neighbors, ahead * width)
                                prefetch(neighbors, ahead * width + 16)
                                prefetch(neighbors, ahead * width + 32)
                                prefetch(image, ahead * width)
                            for a in range(counts[p]):
                                # unsigned indices: Numba then skips the wrap-around of negative indices on every access
                                j = np.uint32(neighbors[p, a])
                                c = np.uint8(image[p, a])
                                dx = xi - cell_positions[j, 0] - shifts[c, 0]
                                dy = yi - cell_positions[j, 1] - shifts[c, 1]
                                dz = zi - cell_positions[j, 2] - shifts[c, 2]
                                r2 = dx * dx + dy * dy + dz * dz
                                near_j[m] = j
                                if with_triplets:
                                    near_c[m] = c
                                near_x[m] = dx
                                near_y[m] = dy
                                near_z[m] = dz
                                near_r[m] = r2
                                m += r2 < reach2
                        fx = 0.0
                        fy = 0.0
                        fz = 0.0
                        e = 0.0
                        w = 0.0
                        near = r2min[p] if with_energy else np.inf
                        for slot in range(m):
                            j = near_j[slot]
                            dx, dy, dz, r2 = near_x[slot], near_y[slot], near_z[slot], near_r[slot]
                            if with_triplets:
                                if r2 < r32:
                                    # the pair into both short rows: the other atom, and in a list its image
                                    # code from each end (see partition.opposite_image_code), for
                                    # each centre to measure again (see centre_rows); in a small box of
                                    # every pair, by minimum image, the unit vector from each end, r and 1/r
                                    ta = cnt3[p]
                                    tb = cnt3[j]
                                    if ta < capacity3 and tb < capacity3:
                                        if all_pairs:
                                            nb3[p, ta] = j
                                            nb3[j, tb] = p
                                            r = math.sqrt(r2)
                                            inv_r = 1.0 / r
                                            ux = dx * inv_r
                                            uy = dy * inv_r
                                            uz = dz * inv_r
                                            d3[p, ta, 0] = -ux
                                            d3[p, ta, 1] = -uy
                                            d3[p, ta, 2] = -uz
                                            d3[p, ta, 3] = r
                                            d3[p, ta, 4] = inv_r
                                            d3[j, tb, 0] = ux
                                            d3[j, tb, 1] = uy
                                            d3[j, tb, 2] = uz
                                            d3[j, tb, 3] = r
                                            d3[j, tb, 4] = inv_r
                                        else:
                                            c = np.int32(near_c[slot])
                                            nb3[p, ta] = (np.int32(j) << CODE_BITS) | c
                                            back = partition.opposite_image_code(c)
                                            nb3[j, tb] = (np.int32(p) << CODE_BITS) | back
                                    cnt3[p] = ta + 1
                                    cnt3[j] = tb + 1
                                if r2 >= rc2:
                                    continue
                            u, f = pair_energy_force(ti, cell_types[j], r2)
                            fx += f * dx
                            fy += f * dy
                            fz += f * dz
                            forces[j, 0] -= f * dx
                            forces[j, 1] -= f * dy
                            forces[j, 2] -= f * dz
                            near = min(near, r2)
                            if with_energy:
                                e += u
                                loss[j] += u
                                w += f * r2
                                r2min[j] = min(r2min[j], r2)
                        forces[p, 0] += fx
                        forces[p, 1] += fy
                        forces[p, 2] += fz
                        r2min[p] = near
                        if with_energy:
                            loss[p] += e
                            virial[p] = w
            energy = 0.0
            if with_energy:
                for p in range(n):
                    energy += loss[p]
                energy *= 0.5  # every pair's energy is in both its atoms' losses
            needed3 = 0
            if with_triplets:
                for p in range(n):
                    needed3 = max(needed3, cnt3[p])
                if needed3 <= capacity3:
                    # the centres in parallel tasks (see centre_tasks), each with its scratch rows (a prange
                    # inside an inlined function would not be parallelised), each centre adding its gradients
                    # straight to its neighbours' forces: a layer's centres, in phases of layers three or more
                    # apart, so that no two tasks of a phase meet on an atom; or, in a box of two to five
                    # layers, two halves of the rows, each into a force array of its own, added after
                    energy3 = np.empty(n)
                    phase_start, task_first, task_last, task_out = centre_tasks(layer_start)
                    n_own = 0
                    for t in range(task_out.shape[0]):
                        n_own = max(n_own, task_out[t] + 1)
                    own_forces = np.empty((n_own, n, 3))
                    for h in range(n_own):
                        for p in range(n):
                            for d in range(3):
                                own_forces[h, p, d] = 0.0
                    for phase in range(phase_start.shape[0] - 1):
                        before = phase_start[phase]
                        for t in prange(phase_start[phase + 1] - before):
                            h = task_out[before + t]
                            out = forces if h < 0 else own_forces[h]
                            centre_rows(task_first[before + t], task_last[before + t], cell_types, nb3, d3,
                                        cnt3, grad3, cell_positions, shifts, not all_pairs, out, loss, virial, energy3,
                                        with_energy, True)
                    for h in range(n_own):
                        for p in range(n):
                            for d in range(3):
                                forces[p, d] += own_forces[h, p, d]
                    for k in range(n):
                        energy += energy3[k]
            # back to atom order: the same sweep on threads in a big box, plain in a small one
            atom_forces = np.empty((n, 3))
            closest2 = np.inf
            if n >= SWEEP_PARALLEL_MIN_ATOMS:
                for p in prange(n):
                    i = order[p]
                    for d in range(3):
                        atom_forces[i, d] = forces[p, d]
                    closest2 = min(closest2, r2min[p])
            else:
                for p in range(n):
                    i = order[p]
                    for d in range(3):
                        atom_forces[i, d] = forces[p, d]
                    closest2 = min(closest2, r2min[p])
            if not with_energy:
                if with_bonds:
                    # the bonded pass's losses and virials go to scratch arrays nobody reads
                    bonded(positions, types, box, work[11], work[12], atom_forces, loss, virial)
                nothing = np.empty(0)
                return atom_forces, nothing, nothing, nothing, np.nan, np.nan, needed3, math.sqrt(closest2)
            atom_loss = np.empty(n)
            atom_virial = np.empty(n)
            nearest = np.empty(n)
            virial_total = 0.0
            for p in range(n):
                i = order[p]
                atom_loss[i] = loss[p]
                atom_virial[i] = virial[p]
                nearest[i] = math.sqrt(r2min[p])
                virial_total += virial[p]
            if with_bonds:
                energy += bonded(positions, types, box, work[11], work[12], atom_forces, atom_loss, atom_virial)
                virial_total = 0.0
                for i in range(n):
                    virial_total += atom_virial[i]
            return atom_forces, atom_loss, atom_virial, nearest, energy, virial_total, needed3, math.sqrt(closest2)

        return half_list_forces

    def full_list_forces(positions, types, box, neighbors, counts, image, wrap, cutoff, cutoff3, work):
        # each atom sums its own row, so the pair loop is race-free; the short rows are filled from
        # the full rows, each pair from both ends (x_i − x_j is exactly −(x_j − x_i), so both ends
        # agree on whether it is inside r_3), and the slot of i in j's row is looked up
        n = positions.shape[0]
        forces = np.empty((n, 3))
        loss = np.empty(n)
        virial = np.empty(n)
        nearest = np.empty(n)
        nb3, rev3, d3, grad3, cnt3 = work[6], work[7], work[8], work[9], work[10]
        rows = nb3.shape[1]
        capacity3 = rows
        shifts = partition.image_shifts_angstrom(box)
        rc2 = cutoff * cutoff
        r32 = cutoff3 * cutoff3 if with_triplets else 0.0
        for i in prange(n):
            xi = positions[i, 0] - wrap[i, 0]
            yi = positions[i, 1] - wrap[i, 1]
            zi = positions[i, 2] - wrap[i, 2]
            ti = types[i]
            fx = 0.0
            fy = 0.0
            fz = 0.0
            e = 0.0
            w = 0.0
            r2min = np.inf
            m = 0
            for a in range(counts[i]):
                j = neighbors[i, a]
                c = image[i, a]
                dx = xi - (positions[j, 0] - wrap[j, 0]) - shifts[c, 0]
                dy = yi - (positions[j, 1] - wrap[j, 1]) - shifts[c, 1]
                dz = zi - (positions[j, 2] - wrap[j, 2]) - shifts[c, 2]
                r2 = dx * dx + dy * dy + dz * dz
                if with_triplets and r2 < r32:
                    if m < rows:
                        r = math.sqrt(r2)
                        inv_r = 1.0 / r
                        nb3[i, m] = j
                        d3[i, m, 0] = -dx * inv_r
                        d3[i, m, 1] = -dy * inv_r
                        d3[i, m, 2] = -dz * inv_r
                        d3[i, m, 3] = r
                        d3[i, m, 4] = inv_r
                    m += 1
                if r2 < rc2:
                    u, f = pair_energy_force(ti, types[j], r2)
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
            cnt3[i] = m
        energy = 0.0
        for i in range(n):
            energy += loss[i]
        energy *= 0.5
        needed3 = 0
        if with_triplets:
            for i in range(n):
                needed3 = max(needed3, cnt3[i])
            if needed3 <= capacity3:
                for i in prange(n):
                    for a in range(cnt3[i]):
                        j = nb3[i, a]
                        for b in range(cnt3[j]):
                            if nb3[j, b] == i:
                                rev3[i, a] = b
                # centres in parallel chunks, each with its scratch row (a prange inside an inlined
                # function would not be parallelised)
                energy3 = np.empty(n)
                for c in prange((n + TRIPLET_CHUNK - 1) // TRIPLET_CHUNK):
                    first = c * TRIPLET_CHUNK
                    centre_rows(first, min(n, first + TRIPLET_CHUNK), types, nb3, d3, cnt3, grad3, positions,
                                shifts, False, forces, loss, virial, energy3, True, False)
                for k in range(n):
                    energy += energy3[k]
                for p in prange(n):
                    gather(p, nb3, rev3, cnt3, grad3, forces)
        if with_bonds:
            energy += bonded(positions, types, box, work[11], work[12], forces, loss, virial)
        virial_total = 0.0
        closest = np.inf
        for i in range(n):
            virial_total += virial[i]
            closest = min(closest, nearest[i])
        return forces, loss, virial, nearest, energy, virial_total, needed3, closest

    fastmath = CONTRACT if fused else False
    return (partition.serial_and_parallel(half_loop(True), cache=False, fastmath=fastmath),
            partition.serial_and_parallel(half_loop(False), cache=False, fastmath=fastmath),
            partition.serial_and_parallel(full_list_forces, cache=False, fastmath=fastmath))


class ForceLoops(NamedTuple):
    """The compiled force functions of one kernel module (see :func:`_make_loops`)."""

    kernel_module: ModuleType
    half: tuple  # (serial, parallel)
    half_forces_only: tuple  # (serial, parallel): ``half`` without energies (see _make_loops)
    full: tuple  # (serial, parallel)
    cutoff_angstrom: float  # pair cutoff
    threebody_cutoff_angstrom: float  # 0 without three-body terms
    workspaces: dict  # atom count -> the scratch arrays of the last call of that size


_LOOPS: dict = {}


def force_loops(kernel_module: ModuleType, triplet_moments: bool = True) -> ForceLoops:
    """The compiled loops of one kernel module, made once per process.

    A separable three-body law (:func:`simulate.kernels.has_separable_triplets`) is summed by moments
    unless ``triplet_moments`` is False (then triplet by triplet, as any other three-body law).
    """
    key = (id(kernel_module), triplet_moments)  # (the checks of the module itself cost microseconds a call)
    cached = _LOOPS.get(key)
    if cached is None or cached.kernel_module is not kernel_module:
        moments = triplet_moments and has_separable_triplets(kernel_module)
        if moments:
            # the moment pass indexes the table without bounds checks and trusts the identity R·R·P = w
            # (a module object built in memory need not have passed load_kernel_module's checks)
            check_separable_triplets(kernel_module)
        threebody = has_threebody(kernel_module)
        half, half_forces_only, full = _make_loops(
            kernel_module.pair_energy_force,
            kernel_module.triplet_energy_gradient if threebody else None,
            kernel_module.intra_pair_energy_force if is_molecular(kernel_module) else None,
            kernel_module.triplet_radial if moments else None,
            kernel_module.TRIPLET_COS_POLYNOMIAL if moments else None,
            getattr(kernel_module, "pair_energy_force_r2", None),
            getattr(kernel_module, "FUSED_MULTIPLY_ADD", False) is True,
            getattr(kernel_module, "triplet_radial_two", None) if moments else None)
        cutoff3 = float(kernel_module.THREEBODY_CUTOFF_ANGSTROM) if threebody else 0.0
        cached = ForceLoops(kernel_module, half, half_forces_only, full, float(kernel_module.CUTOFF_ANGSTROM), cutoff3, {})
        _LOOPS[key] = cached
    return cached


def triplet_capacity(n_atoms: int, box: np.ndarray, cutoff3_angstrom: float) -> int:
    """A first width for the short three-body rows: 1.25× the atoms expected within r_3, plus 8.

    Only the memory depends on it (a row that overflows is widened and the forces are computed
    again): 76 bytes per slot are set aside, of which the half-list pass over a list writes 4 (see
    CODE_BITS), and pages never written take no memory.
    """
    if cutoff3_angstrom <= 0:
        return 1
    expected = n_atoms / float(np.prod(box)) * 4.0 / 3.0 * math.pi * cutoff3_angstrom**3
    return int(min(max(n_atoms - 1, 1), math.ceil(1.25 * expected) + 8))


_NO_BONDS = (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))


def workspace(loops: ForceLoops, n_atoms: int, box: np.ndarray, capacity3: int = 0, bonded_pairs=None) -> tuple:
    """Scratch arrays for the force functions of ``loops``, kept and reused per atom count.

    (cell-ordered positions, types, forces, loss, virial, nearest², then the short three-body rows:
    atoms (in the half-list pass over a list, with their image codes, see CODE_BITS), slot in the other
    row (filed by the full-list pass only), (unit vector, r, 1/r) (not filed by the half-list pass over a
    list), gradients, counts, then the intramolecular pairs (i, j) of a molecular model:
    ``bonded_pairs``, empty by default). ``capacity3`` asks for rows at least that wide.
    """
    rows = 1
    if loops.threebody_cutoff_angstrom > 0:
        if n_atoms >= MAX_CODED_ATOMS:
            raise MldError(f"{n_atoms} atoms: a three-body model runs up to {MAX_CODED_ATOMS - 1} atoms "
                           f"(a short row's entry holds the atom and its image code in 32 bits)")
        rows = max(capacity3, triplet_capacity(n_atoms, box, loops.threebody_cutoff_angstrom))
    work = loops.workspaces.get(n_atoms)
    if work is None or work[6].shape[1] < rows:
        n = n_atoms
        work = (np.empty((n, 3)), np.empty(n, dtype=np.int64), np.empty((n, 3)), np.empty(n), np.empty(n),
                np.empty(n), np.empty((n, rows), dtype=np.int32), np.empty((n, rows), dtype=np.int64),
                np.empty((n, rows, 5)), np.empty((n, rows, 3)), np.empty(n, dtype=np.int64))
        loops.workspaces.clear()  # one size at a time: a run keeps its atom count
        loops.workspaces[n_atoms] = work
    return work + (tuple(bonded_pairs) if bonded_pairs is not None else _NO_BONDS)


def interaction_cutoff_angstrom(kernel_module: ModuleType) -> float:
    """The range the neighbour list must cover: the pair cutoff or the three-body cutoff, if longer."""
    cutoff = float(kernel_module.CUTOFF_ANGSTROM)
    if has_threebody(kernel_module):
        cutoff = max(cutoff, float(kernel_module.THREEBODY_CUTOFF_ANGSTROM))
    return cutoff


def compute_forces(
    kernel_module: ModuleType, positions: np.ndarray, types: np.ndarray, neighbors: partition.NeighborList,
    bonded_pairs=None,
) -> ForceResult:
    """Energy, forces, per-atom loss and virial of ``positions`` (Å) using an up-to-date list, half or full.

    A molecular kernel module needs ``bonded_pairs``, its intramolecular pairs ``(i, j)``
    (:func:`simulate.topology.checked_intramolecular_pairs`).
    """
    if is_molecular(kernel_module) and bonded_pairs is None:
        raise topology.MoleculeError("a molecular kernel module needs its intramolecular pairs")
    loops = force_loops(kernel_module)
    box = neighbors.box_angstrom
    parallel = partition.use_parallel(len(positions))
    positions = np.ascontiguousarray(positions, dtype=float)
    types = np.ascontiguousarray(types, dtype=np.int64)
    capacity3 = 0
    while True:
        work = workspace(loops, len(positions), box, capacity3, bonded_pairs)
        if neighbors.half:
            out = loops.half[parallel](positions, types, box, neighbors.neighbors, neighbors.counts,
                                       neighbors.order, neighbors.layer_start, neighbors.image,
                                       neighbors.wrap_angstrom, loops.cutoff_angstrom,
                                       loops.threebody_cutoff_angstrom, work)
        else:
            out = loops.full[parallel](positions, types, box, neighbors.neighbors, neighbors.counts,
                                       neighbors.image, neighbors.wrap_angstrom, loops.cutoff_angstrom,
                                       loops.threebody_cutoff_angstrom, work)
        needed3 = out[6]
        if needed3 <= work[6].shape[1]:
            return force_result(out)
        capacity3 = needed3 + 4 + needed3 // 8  # short rows overflowed: widen and go again


def force_result(out) -> ForceResult:
    """The ForceResult of a force function's output tuple."""
    forces, loss, _, nearest, energy, virial_total = out[:6]
    return ForceResult(float(energy), forces, loss, float(virial_total), nearest)


ForceFn = Callable[[np.ndarray, "partition.NeighborList | None"], "tuple[partition.NeighborList, ForceResult]"]


def make_force_fn(kernel_module: ModuleType, types: np.ndarray, box, skin_angstrom: float = 1.0,
                  molecules: np.ndarray | None = None) -> ForceFn:
    """``force_fn(positions, neighbors) -> (neighbors, ForceResult)`` for the integrators.

    A molecular kernel module needs ``molecules``, the molecule of every atom (see
    :func:`simulate.topology.assign_molecules`); its intramolecular pairs then interact by the
    bonded laws, at any distance.

    Pass ``neighbors=None`` to build the list; afterwards the list is rebuilt only when an atom has
    moved more than half the skin. The list is a half list, three-body kernels included; a full list
    (say, from an older checkpoint) is built again as a half one from its own reference positions,
    so the run goes on with the same list (three-body sums may differ from an older version's by rounding).

    The function carries what a compiled multi-step loop needs (see :mod:`simulate.integrate`):
    ``force_fn.kernel_module``, ``force_fn.types``, ``force_fn.box_angstrom``,
    ``force_fn.cutoff_angstrom`` (the list's) and ``force_fn.skin_angstrom``.
    """
    types = np.ascontiguousarray(types, dtype=np.int64)
    box = box_lengths(box)
    cutoff = interaction_cutoff_angstrom(kernel_module)
    bonded_pairs = None
    if is_molecular(kernel_module):
        if molecules is None:
            raise topology.MoleculeError("a molecular kernel module needs the molecule of every atom")
        bonded_pairs = topology.checked_intramolecular_pairs(np.asarray(molecules, dtype=np.int64), types,
                                                             kernel_module)

    def force_fn(positions, neighbors=None):
        positions = np.ascontiguousarray(positions, dtype=float)
        if neighbors is None:
            neighbors = partition.neighbor_list(positions, box, cutoff, skin_angstrom, half=True)
        else:
            if not neighbors.half:
                neighbors = partition.neighbor_list(neighbors.reference_positions, box, cutoff, skin_angstrom,
                                                    half=True)
            neighbors = partition.update(neighbors, positions)
        return neighbors, compute_forces(kernel_module, positions, types, neighbors, bonded_pairs)

    force_fn.bonded_pairs = bonded_pairs
    force_fn.kernel_module = kernel_module
    force_fn.types = types
    force_fn.box_angstrom = box
    force_fn.cutoff_angstrom = cutoff
    force_fn.skin_angstrom = float(skin_angstrom)
    return force_fn
