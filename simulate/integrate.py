"""Integrators: NVE velocity Verlet, Nosé–Hoover chains, and Langevin BAOAB, side by side.

Each integrator is a pair of functions, ``init(positions, velocities, masses) -> state`` and
``step(state) -> state``, plus ``conserved_energy_ev(state)``, the quantity the exact flow keeps
constant (its drift measures integration error). States are small named tuples of numpy arrays and
are never modified in place: ``step`` returns a new state, so the last good state survives a
failed step.

All three take a ``force_fn(positions, neighbors) -> (neighbors, ForceResult)`` (see
:func:`simulate.energy.make_force_fn`); the neighbour list travels inside the state.

Python's cost of a step (a dozen calls into compiled code, new named tuples) is some 12 µs
(measured at 96 atoms), a quarter of the pair forces of a hundred atoms. So NVE and the Nosé–Hoover
chain also offer
``run(state, n_steps, max_force_ev_per_angstrom, min_distance_angstrom, planned_steps=0, thermo=None) -> (state,
steps done, list builds)``: up to ``n_steps`` steps in one compiled loop that does the same arithmetic in the same
order (chain half-steps, list builds and force functions are the same compiled pieces; the first kick,
the drift and the list's displacement test run as one sweep over the atoms, and so do the second kick
and the checks of :mod:`simulate.md`), so it reaches the states of ``step`` bit for bit. Only its last
step, and the steps of the thermo log it is asked to record (``thermo``, a :class:`ThermoRecord`: the
numbers of each row, so that a block runs from one trajectory frame to the next), compute energy, per-atom
losses and virial (nobody reads them in between, as LAMMPS computes energies only on output steps); from 1,000 atoms, or in a run whose ``planned_steps`` make 2·10⁷
atom-steps, the others take the same forces, bit for bit, from the forces-only variant of the force loop
(:func:`simulate.energy._make_loops`).
It stops early, before committing it, at a step that ``step`` must
take instead: one whose three-body rows overflow (``step`` widens them) or whose state
fails the checks of :mod:`simulate.md` (``step`` then gives the state to report). ``run`` is
``None`` for a force function that is not :func:`simulate.energy.make_force_fn`'s, and for Langevin
(NumPy's random stream cannot be drawn inside a compiled loop).

Units: positions Å, velocities Å/fs, masses amu, forces eV/Å, time fs, energies eV.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from typing import NamedTuple

import numba
import numpy as np
from numba import prange

from simulate import energy, partition
from simulate.energy import ForceResult
from simulate.partition import NeighborList, serial_and_parallel, use_parallel
from simulate.quantity import degrees_of_freedom
from simulate.units import (
    AMU_ANGSTROM2_PER_FS2_TO_EV,
    BOLTZMANN_EV_PER_K,
    EV_PER_ANGSTROM_PER_AMU_TO_ANGSTROM_PER_FS2,
)


class Integrator(NamedTuple):
    init: Callable
    step: Callable
    conserved_energy_ev: Callable
    run: Callable | None = None  # many steps in one compiled loop (see the module notes)


class ThermoRecord(NamedTuple):
    """What a compiled block records for the thermo log (see ``run``): at every step k (counted from the run's
    start, ``first_step`` being the state the block starts from) with k % ``every`` == 0, one row of ``rows``,
    in order: 2K (eV, :func:`twice_kinetic_ev`), the potential energy (eV), the virial Σ r·F (eV) and
    ``conserved_energy_ev`` of that step's state, bit for bit. ``rows`` needs :func:`thermo_rows_between` rows."""

    every: int
    first_step: int
    rows: np.ndarray  # (rows, THERMO_RECORD_COLUMNS)


THERMO_RECORD_COLUMNS = 4
_NO_THERMO = ThermoRecord(0, 0, np.empty((0, THERMO_RECORD_COLUMNS)))


def thermo_rows_between(first_step: int, n_steps: int, every: int) -> int:
    """How many steps k of first_step < k ≤ first_step + n_steps are multiples of ``every`` (0 for every ≤ 0)."""
    return (first_step + n_steps) // every - first_step // every if every > 0 else 0


def thermo_record(every: int, first_step: int, n_steps: int) -> ThermoRecord:
    """A :class:`ThermoRecord` with room for the rows of a block of ``n_steps`` steps from ``first_step``."""
    return ThermoRecord(every, first_step,
                        np.empty((thermo_rows_between(first_step, n_steps, every), THERMO_RECORD_COLUMNS)))


class NVEState(NamedTuple):
    positions: np.ndarray  # (N, 3) Å, unwrapped
    velocities: np.ndarray  # (N, 3) Å/fs
    masses: np.ndarray  # (N,) amu
    force: ForceResult
    neighbors: NeighborList


class ChainState(NamedTuple):
    """A Nosé–Hoover chain of length M: coordinates ξ_j, velocities v_ξj (1/fs), masses Q_j (eV fs²)."""

    xi: np.ndarray
    v_xi: np.ndarray
    q_mass: np.ndarray


class NoseHooverChainState(NamedTuple):
    positions: np.ndarray
    velocities: np.ndarray
    masses: np.ndarray
    force: ForceResult
    neighbors: NeighborList
    chain: ChainState


class LangevinState(NamedTuple):
    positions: np.ndarray
    velocities: np.ndarray
    masses: np.ndarray
    force: ForceResult
    neighbors: NeighborList
    rng: np.random.Generator
    heat_ev: float  # kinetic energy put in by the bath so far; E − heat is conserved


# --- shared pieces ---------------------------------------------------------------------------------


def _kick_loop(velocities, forces, accel_per_force, dt):
    """v + dt F/m; ``accel_per_force`` (N,) converts eV/Å to Å/fs² for each atom's mass."""
    out = np.empty_like(velocities)
    for i in prange(velocities.shape[0]):
        c = dt * accel_per_force[i]
        for d in range(3):
            out[i, d] = velocities[i, d] + c * forces[i, d]
    return out


def _drift_loop(positions, velocities, dt):
    out = np.empty_like(positions)
    for i in prange(positions.shape[0]):
        for d in range(3):
            out[i, d] = positions[i, d] + dt * velocities[i, d]
    return out


def _kick_drift_loop(velocities, forces, accel_per_force, dt_kick, positions, dt_drift, reference, v_out, x_out):
    """A kick, the drift after it and the list's displacement test in one sweep over the atoms: v' = v +
    dt_kick F/m into ``v_out``, x + dt_drift v' into ``x_out``, and the largest squared distance (Å²) of
    the new positions from ``reference`` returned (see :func:`simulate.partition.max_displacement_angstrom`);
    the same numbers bit for bit as the three loops apart."""
    worst = 0.0
    for i in prange(velocities.shape[0]):
        c = dt_kick * accel_per_force[i]
        for d in range(3):
            v_out[i, d] = velocities[i, d] + c * forces[i, d]
            x_out[i, d] = positions[i, d] + dt_drift * v_out[i, d]
        dx = x_out[i, 0] - reference[i, 0]
        dy = x_out[i, 1] - reference[i, 1]
        dz = x_out[i, 2] - reference[i, 2]
        worst = max(worst, dx * dx + dy * dy + dz * dz)
    return worst


def _kick_checked_loop(velocities, forces, accel_per_force, dt, positions, max_force2, out):
    """v + dt F/m into ``out`` (as :func:`_kick_loop`) and, in the same sweep, how many atoms fail the
    checks of :mod:`simulate.md`: a force non-finite or of square beyond ``max_force2``, a position or
    new velocity non-finite."""
    failed = 0
    for i in prange(velocities.shape[0]):
        c = dt * accel_per_force[i]
        f2 = forces[i, 0] ** 2 + forces[i, 1] ** 2 + forces[i, 2] ** 2
        healthy = math.isfinite(f2) and f2 <= max_force2
        for d in range(3):
            out[i, d] = velocities[i, d] + c * forces[i, d]
            healthy = healthy and math.isfinite(positions[i, d]) and math.isfinite(out[i, d])
        if not healthy:
            failed += 1
    return failed


_KICK = serial_and_parallel(_kick_loop)
_DRIFT = serial_and_parallel(_drift_loop)
_KICK_DRIFT = serial_and_parallel(_kick_drift_loop)
_KICK_CHECKED = serial_and_parallel(_kick_checked_loop)

# The kicks and the drift (a few ns per atom) run on threads only from this many atoms. Each parallel
# loop wakes the threads, which sleep between loops (see simulate.partition): some 50 µs on the 2-core
# VMs here, more than the loop saves on fewer atoms. Measured per NVE step on 2 threads (learned pairwise
# tabulated water, fresh arrays every step): serial 15 % less time at 6,144 atoms. With the compiled
# block's fused sweeps into arrays of its own (tabulated Morse water): no difference at 6,144 and 20,736
# atoms, parallel 5 % less time at 49,152.
STREAM_PARALLEL_MIN_ATOMS = 40_000


def streams_parallel(n_atoms: int) -> bool:
    """Whether the per-atom kick and drift loops of ``n_atoms`` run on threads (see STREAM_PARALLEL_MIN_ATOMS)."""
    return use_parallel(n_atoms) and n_atoms >= STREAM_PARALLEL_MIN_ATOMS


def kick(velocities, forces, accel_per_force, dt):
    return _KICK[streams_parallel(len(velocities))](velocities, forces, accel_per_force, dt)


def drift(positions, velocities, dt):
    return _DRIFT[streams_parallel(len(positions))](positions, velocities, dt)


def _accel_per_force(masses: np.ndarray) -> np.ndarray:
    return EV_PER_ANGSTROM_PER_AMU_TO_ANGSTROM_PER_FS2 / np.asarray(masses, dtype=float)


@numba.njit(cache=True)
def _twice_kinetic(velocities, masses):
    total = 0.0
    for i in range(velocities.shape[0]):
        total += masses[i] * (velocities[i, 0] ** 2 + velocities[i, 1] ** 2 + velocities[i, 2] ** 2)
    return AMU_ANGSTROM2_PER_FS2_TO_EV * total


@numba.njit(cache=True)
def _scaled(velocities, scale):
    out = np.empty_like(velocities)
    for i in range(velocities.shape[0]):
        for d in range(3):
            out[i, d] = velocities[i, d] * scale
    return out


def twice_kinetic_ev(velocities: np.ndarray, masses: np.ndarray) -> float:
    """2K in eV, summed in atom order (the compiled loops of ``run`` sum it the same way)."""
    return float(_twice_kinetic(np.ascontiguousarray(velocities, dtype=float), np.asarray(masses, dtype=float)))


def _velocity_verlet(force_fn, state, accel_per_force, dt_fs):
    """One velocity-Verlet step (Swope, Andersen, Berens & Wilson 1982): kick ½, drift, forces, kick ½."""
    v_half = kick(state.velocities, state.force.forces_ev_per_angstrom, accel_per_force, 0.5 * dt_fs)
    positions = drift(state.positions, v_half, dt_fs)
    neighbors, force = force_fn(positions, state.neighbors)
    velocities = kick(v_half, force.forces_ev_per_angstrom, accel_per_force, 0.5 * dt_fs)
    return positions, velocities, force, neighbors


def _start(force_fn, positions, velocities, masses):
    positions = np.array(positions, dtype=float)
    velocities = np.array(velocities, dtype=float)
    masses = np.asarray(masses, dtype=float)
    neighbors, force = force_fn(positions, None)
    return positions, velocities, masses, force, neighbors


# --- NVE -------------------------------------------------------------------------------------------


def nve(force_fn, dt_fs: float) -> Integrator:
    """Microcanonical dynamics by velocity Verlet (Swope et al. 1982, J. Chem. Phys. 76, 637).

    Time-reversible and symplectic: the energy error stays bounded, O(dt²), with no secular drift
    for a smooth potential.
    """

    def init(positions, velocities, masses) -> NVEState:
        return NVEState(*_start(force_fn, positions, velocities, masses))

    def step(state: NVEState) -> NVEState:
        positions, velocities, force, neighbors = _velocity_verlet(
            force_fn, state, _accel_per_force(state.masses), dt_fs
        )
        return NVEState(positions, velocities, state.masses, force, neighbors)

    def conserved_energy_ev(state: NVEState) -> float:
        return 0.5 * twice_kinetic_ev(state.velocities, state.masses) + state.force.energy_ev

    def run(state: NVEState, n_steps: int, max_force_ev_per_angstrom: float, min_distance_angstrom: float,
            planned_steps: int = 0, thermo: ThermoRecord | None = None):
        return _run_block(force_fn, state, n_steps, dt_fs, max_force_ev_per_angstrom, min_distance_angstrom,
                          planned_steps=planned_steps, thermo=thermo)

    return Integrator(init, step, conserved_energy_ev, run if _compiled(force_fn) else None)


# --- Nosé–Hoover chains ----------------------------------------------------------------------------

# Suzuki–Yoshida weights of orders 1, 3 and 5 (Yoshida 1990; MTK 1996 Table 1).
_SUZUKI_YOSHIDA = {
    1: (1.0,),
    3: (1.0 / (2.0 - 2.0 ** (1.0 / 3.0)), 1.0 - 2.0 / (2.0 - 2.0 ** (1.0 / 3.0)), 1.0 / (2.0 - 2.0 ** (1.0 / 3.0))),
    5: (
        1.0 / (4.0 - 4.0 ** (1.0 / 3.0)),
        1.0 / (4.0 - 4.0 ** (1.0 / 3.0)),
        1.0 - 4.0 / (4.0 - 4.0 ** (1.0 / 3.0)),
        1.0 / (4.0 - 4.0 ** (1.0 / 3.0)),
        1.0 / (4.0 - 4.0 ** (1.0 / 3.0)),
    ),
}


@numba.njit(cache=True)
def _chain_half_step(twice_kinetic, xi, v_xi, q_mass, kt, n_dof, dt, n_chain_steps, sy_weights):
    """exp(iL_NHC dt/2) of Martyna, Tuckerman, Tobias & Klein 1996 (Mol. Phys. 87, 1117), eqs. 29–33.

    Returns (scale of the particle velocities, new ξ, new v_ξ). The chain is integrated in
    ``n_chain_steps`` substeps, each factorised with the Suzuki–Yoshida weights; G_j are the
    thermostat "forces" G_1 = (2K − N_f kT)/Q_1, G_j = (Q_{j−1} v_{ξ,j−1}² − kT)/Q_j.
    """
    xi = xi.copy()
    v_xi = v_xi.copy()
    m = xi.shape[0]
    scale = 1.0
    k2 = twice_kinetic
    for _ in range(n_chain_steps):
        for w in sy_weights:
            delta = w * dt / n_chain_steps
            # backward sweep: v_ξM, then down the chain
            g = (q_mass[m - 2] * v_xi[m - 2] ** 2 - kt) / q_mass[m - 1] if m > 1 else (k2 - n_dof * kt) / q_mass[0]
            v_xi[m - 1] += 0.25 * delta * g
            for j in range(m - 2, -1, -1):
                s = math.exp(-0.125 * delta * v_xi[j + 1])
                g = (k2 - n_dof * kt) / q_mass[0] if j == 0 else (q_mass[j - 1] * v_xi[j - 1] ** 2 - kt) / q_mass[j]
                v_xi[j] = s * (s * v_xi[j] + 0.25 * delta * g)
            # particle velocities scale; thermostat coordinates drift
            factor = math.exp(-0.5 * delta * v_xi[0])
            scale *= factor
            k2 *= factor * factor
            for j in range(m):
                xi[j] += 0.5 * delta * v_xi[j]
            # forward sweep
            for j in range(m - 1):
                s = math.exp(-0.125 * delta * v_xi[j + 1])
                g = (k2 - n_dof * kt) / q_mass[0] if j == 0 else (q_mass[j - 1] * v_xi[j - 1] ** 2 - kt) / q_mass[j]
                v_xi[j] = s * (s * v_xi[j] + 0.25 * delta * g)
            g = (q_mass[m - 2] * v_xi[m - 2] ** 2 - kt) / q_mass[m - 1] if m > 1 else (k2 - n_dof * kt) / q_mass[0]
            v_xi[m - 1] += 0.25 * delta * g
    return scale, xi, v_xi


@numba.njit(cache=True)
def _chain_energy_ev(xi, v_xi, q_mass, kt, n_dof):
    """The chain's part of the Nosé–Hoover conserved energy (eV): ½ Σ Q_j v_ξj², N_f kT ξ_1 and kT Σ_{j>1} ξ_j,
    as three terms, for the conserved energy to add in this order (the compiled blocks do the same)."""
    kinetic = 0.0
    for j in range(xi.shape[0]):
        kinetic += q_mass[j] * v_xi[j] * v_xi[j]
    rest = 0.0
    for j in range(1, xi.shape[0]):
        rest += xi[j]
    return 0.5 * kinetic, n_dof * kt * xi[0], kt * rest


def nvt_nose_hoover(
    force_fn,
    dt_fs: float,
    temperature_k: float,
    tau_fs: float = 100.0,
    chain_length: int = 3,
    chain_steps: int = 1,
    suzuki_yoshida_order: int = 3,
    n_dof: int | None = None,
) -> Integrator:
    """Canonical dynamics by a Nosé–Hoover chain (Martyna, Klein & Tuckerman 1992, J. Chem. Phys. 97, 2635).

    Each step is the symmetric Trotter factorisation of Martyna, Tuckerman, Tobias & Klein 1996:
    exp(iL_NHC dt/2) · velocity Verlet · exp(iL_NHC dt/2), the chain part by Suzuki–Yoshida
    (order ``suzuki_yoshida_order``, ``chain_steps`` substeps). The thermostat masses follow from the
    time constant τ: Q_1 = N_f k_B T τ², Q_j = k_B T τ² for j > 1 (MKT 1992 eq. 2.9 with ω = 1/τ).
    The conserved extended energy is

        H' = K + U + Σ_j Q_j v_ξj² / 2 + N_f k_B T ξ_1 + k_B T Σ_{j>1} ξ_j.

    N_f defaults to 3N − 3 (zero total momentum, which the velocity scaling keeps).
    """
    if chain_length < 1:
        raise ValueError("a Nosé–Hoover chain needs at least one thermostat")
    kt = BOLTZMANN_EV_PER_K * temperature_k
    weights = np.array(_SUZUKI_YOSHIDA[suzuki_yoshida_order])

    def init(positions, velocities, masses) -> NoseHooverChainState:
        positions, velocities, masses, force, neighbors = _start(force_fn, positions, velocities, masses)
        dof = degrees_of_freedom(len(masses)) if n_dof is None else n_dof
        q_mass = np.full(chain_length, kt * tau_fs**2)
        q_mass[0] *= dof
        chain = ChainState(np.zeros(chain_length), np.zeros(chain_length), q_mass)
        return NoseHooverChainState(positions, velocities, masses, force, neighbors, chain)

    def _thermostat(velocities, masses, chain):
        dof = degrees_of_freedom(len(masses)) if n_dof is None else n_dof
        scale, xi, v_xi = _chain_half_step(
            twice_kinetic_ev(velocities, masses), chain.xi, chain.v_xi, chain.q_mass, kt, dof, dt_fs,
            chain_steps, weights,
        )
        return _scaled(velocities, scale), ChainState(xi, v_xi, chain.q_mass)

    def step(state: NoseHooverChainState) -> NoseHooverChainState:
        velocities, chain = _thermostat(state.velocities, state.masses, state.chain)
        state = state._replace(velocities=velocities)
        positions, velocities, force, neighbors = _velocity_verlet(
            force_fn, state, _accel_per_force(state.masses), dt_fs
        )
        velocities, chain = _thermostat(velocities, state.masses, chain)
        return NoseHooverChainState(positions, velocities, state.masses, force, neighbors, chain)

    def conserved_energy_ev(state: NoseHooverChainState) -> float:
        dof = degrees_of_freedom(len(state.masses)) if n_dof is None else n_dof
        c = state.chain
        chain_kinetic, first, rest = _chain_energy_ev(c.xi, c.v_xi, c.q_mass, kt, float(dof))
        return 0.5 * twice_kinetic_ev(state.velocities, state.masses) + state.force.energy_ev + chain_kinetic + first + rest

    def run(state: NoseHooverChainState, n_steps: int, max_force_ev_per_angstrom: float,
            min_distance_angstrom: float, planned_steps: int = 0, thermo: ThermoRecord | None = None):
        dof = degrees_of_freedom(len(state.masses)) if n_dof is None else n_dof
        chain = (kt, float(dof), chain_steps, weights)
        return _run_block(force_fn, state, n_steps, dt_fs, max_force_ev_per_angstrom, min_distance_angstrom, chain,
                          planned_steps, thermo)

    return Integrator(init, step, conserved_energy_ev, run if _compiled(force_fn) else None)


# --- many steps in one compiled loop ----------------------------------------------------------------


def _compiled(force_fn) -> bool:
    """Whether ``force_fn`` is :func:`simulate.energy.make_force_fn`'s, whose pieces a compiled loop can call."""
    return hasattr(force_fn, "kernel_module")


_BLOCKS: dict = {}

# why a block stopped early
_STOP_TRIPLET_OVERFLOW, _STOP_UNHEALTHY = 2, 3


def _make_block(forces_of, forces_between, build, kick_drift_loop, kick_checked_loop, nose_hoover):
    """A compiled loop of velocity-Verlet steps (with the chain's half-steps around them if ``nose_hoover``).

    It does the arithmetic of the Python ``step`` in the same order: the chain's half-steps, list builds
    and force functions are the compiled functions ``step`` calls; the first kick, the drift and the
    list's displacement test are one sweep (``kick_drift_loop``), and so are the second kick and the checks
    of :mod:`simulate.md` (``kick_checked_loop``). The list is checked and rebuilt as
    :func:`simulate.partition.update` does, at the same width or wider, into the rows of a list nothing
    holds where there is one (``spare_rows``, see :func:`_spare_rows`). Steps other than the
    last and the thermo steps (``thermo_every``, counted from ``first_step``: see :class:`ThermoRecord`,
    whose rows go to ``thermo_rows``) take their forces from ``forces_between``: the forces-only variant of
    ``forces_of`` (the same forces bit for bit, without the energies, per-atom losses and virials nobody
    reads between outputs), or ``forces_of`` itself for a small system, where compiling the variant would
    cost more than it saves. The last step, and the last good one of a block that stops early, call
    ``forces_of``, so the state returned is complete. A non-finite energy with finite forces is
    therefore caught at a thermo step or the last step only (``step`` then takes it and reports it).
    """

    @numba.njit
    def block(n_steps, positions, velocities, masses, accel, dt, force_out, list_arrays, list_settings, types,
              box, cutoffs, work, chain_state, chain_settings, limits, spare_rows, thermo_every, first_step,
              thermo_rows):
        forces, loss, nearest, energy_ev, virial_ev = force_out
        neighbors, counts, image, wrap, order, layer_start, reference = list_arrays
        # rows a rebuild may fill (see _spare_rows), then those of the last list this block built itself
        spare_neighbors, spare_image = spare_rows
        own_list = False  # whether the list of the current state is one this block built
        n_cells, brute, half, list_cutoff, skin = list_settings
        xi, v_xi, q_mass = chain_state
        kt, n_dof, chain_steps, weights = chain_settings
        max_force2, min_distance = limits
        half_dt = 0.5 * dt
        # the steps write their positions and velocities into arrays of the block's own, two of each,
        # taken in turn: the state a step leaves stays intact through the next one, which a failed step
        # returns. Fresh arrays every step cost page faults (the allocator hands large ones back to the
        # system when they are freed): the kick-and-drift sweep of 96,000 atoms took 1.4 ms instead of 0.5
        # on one thread.
        n = positions.shape[0]
        v_half = np.empty((n, 3))
        x_even, x_odd = np.empty((n, 3)), np.empty((n, 3))
        v_even, v_odd = np.empty((n, 3)), np.empty((n, 3))
        done = 0
        builds = 0
        stop = 0
        recorded = 0
        complete = True  # whether loss, nearest, energy and virial are those of the current state
        for step in range(n_steps):
            v = velocities
            xi_new, v_xi_new = xi, v_xi
            if nose_hoover:
                scale, xi_new, v_xi_new = _chain_half_step(_twice_kinetic(v, masses), xi, v_xi, q_mass, kt, n_dof,
                                                           dt, chain_steps, weights)
                v = _scaled(v, scale)
            x = x_even if step % 2 == 0 else x_odd
            v_new = v_even if step % 2 == 0 else v_odd
            moved2 = kick_drift_loop(v, forces, accel, half_dt, positions, dt, reference, v_half, x)
            nb, cn, im, wr, od, ls, ref = neighbors, counts, image, wrap, order, layer_start, reference
            # a list of no slots lists every pair (partition.lists_every_pair): nothing to rebuild
            rebuilt = nb.shape[1] > 0 and math.sqrt(moved2) > 0.5 * skin
            if rebuilt:
                # as wide as before, or wider where rows overflow it (the build searches them again)
                nb, cn, im, wr, od, ls, _ = build(x, box, n_cells, list_cutoff, nb.shape[1], half, brute,
                                                  spare_neighbors, spare_image)
                ref = x.copy()
                # the list this step replaces is free once it is taken (a step that fails ends the block)
                # if this block built it; one it was given belongs to the caller's state
                spare_neighbors = neighbors if own_list else np.empty((0, 0), dtype=np.int32)
                spare_image = image if own_list else np.empty((0, 0), dtype=np.int8)
            last = step == n_steps - 1
            # a step of the thermo log (see ThermoRecord) computes its energy and virial, as the last does
            record = thermo_every > 0 and (first_step + step + 1) % thermo_every == 0
            if last or record:
                out = forces_of(x, types, box, nb, cn, od, ls, im, wr, cutoffs[0], cutoffs[1], work)
            else:
                out = forces_between(x, types, box, nb, cn, od, ls, im, wr, cutoffs[0], cutoffs[1], work)
            f_new, needed3, closest = out[0], out[6], out[7]
            if needed3 > work[6].shape[1]:
                stop = _STOP_TRIPLET_OVERFLOW
                break
            # the checks of simulate.md: any doubt, and step() takes this step instead
            failed = kick_checked_loop(v_half, f_new, accel, half_dt, x, max_force2, v_new)
            healthy = failed == 0 and closest >= min_distance and (not (last or record) or math.isfinite(out[4]))
            if nose_hoover:
                scale, xi_new, v_xi_new = _chain_half_step(_twice_kinetic(v_new, masses), xi_new, v_xi_new, q_mass,
                                                           kt, n_dof, dt, chain_steps, weights)
                v_new = _scaled(v_new, scale)
                # the velocities are checked after the scaling too, as simulate.md checks them
                for i in range(n):
                    for d in range(3):
                        healthy = healthy and math.isfinite(v_new[i, d])
            if not healthy:
                stop = _STOP_UNHEALTHY
                break
            positions, velocities, forces = x, v_new, f_new
            if last or record:
                loss, nearest, energy_ev, virial_ev = out[1], out[3], out[4], out[5]
            complete = last or record
            neighbors, counts, image, wrap, order, layer_start, reference = nb, cn, im, wr, od, ls, ref
            own_list = own_list or rebuilt
            xi, v_xi = xi_new, v_xi_new
            done += 1
            builds += rebuilt
            if record:
                # the numbers of the Python conserved_energy_ev on this state, in its order
                twice_kinetic = _twice_kinetic(velocities, masses)
                conserved = 0.5 * twice_kinetic + out[4]
                if nose_hoover:
                    chain_kinetic, first, rest = _chain_energy_ev(xi, v_xi, q_mass, kt, n_dof)
                    conserved = conserved + chain_kinetic + first + rest
                thermo_rows[recorded, 0] = twice_kinetic
                thermo_rows[recorded, 1] = out[4]
                thermo_rows[recorded, 2] = out[5]
                thermo_rows[recorded, 3] = conserved
                recorded += 1
        if not complete:
            # stopped early after a forces-only step: the full pass on that state (its forces again, bit for bit)
            out = forces_of(positions, types, box, neighbors, counts, order, layer_start, image, wrap, cutoffs[0],
                            cutoffs[1], work)
            forces, loss, nearest, energy_ev, virial_ev = out[0], out[1], out[3], out[4], out[5]
        return (done, builds, stop, positions, velocities, (forces, loss, nearest, energy_ev, virial_ev),
                (neighbors, counts, image, wrap, order, layer_start, reference), (xi, v_xi))

    return block


# The blocks take their forces between outputs from the forces-only variant of the force loop from this
# many atoms, or for a run planned long enough to pay back its compilation (1.5–3 s per kernel module,
# against 10–25 % of a force pass of 0.3–3 µs per atom: some 10⁷ atom-steps). A short run of a small box
# computes energies on every step instead.
FORCES_ONLY_MIN_ATOMS = 1000
FORCES_ONLY_MIN_ATOM_STEPS = 20_000_000


def uses_forces_only(n_atoms: int, planned_steps: int = 0) -> bool:
    """Whether a compiled block of an ``n_atoms`` run of ``planned_steps`` steps in all uses the forces-only pass."""
    return n_atoms >= FORCES_ONLY_MIN_ATOMS or n_atoms * planned_steps >= FORCES_ONLY_MIN_ATOM_STEPS


def _block(force_fn, parallel: bool, nose_hoover: bool, n_atoms: int, planned_steps: int = 0):
    loops = energy.force_loops(force_fn.kernel_module)
    forces_only = uses_forces_only(n_atoms, planned_steps)
    streams = streams_parallel(n_atoms)
    key = (id(loops), parallel, nose_hoover, forces_only, streams)
    cached = _BLOCKS.get(key)
    if cached is None or cached[0] is not loops:
        between = loops.half_forces_only[parallel] if forces_only else loops.half[parallel]
        cached = (loops, _make_block(loops.half[parallel], between, partition.BUILD[parallel],
                                     _KICK_DRIFT[streams], _KICK_CHECKED[streams], nose_hoover))
        _BLOCKS[key] = cached
    return cached[1]


# Rows of neighbour lists that compiled blocks replaced, for a later rebuild to write into instead of fresh
# memory (see partition._rows; a build of 96,000 atoms took 50 ms into reused rows, 60 into fresh ones, on
# one thread): the last one, lent to a block only while nothing else (a state the caller kept) holds it.
_RETIRED_ROWS: list = []
_RETIRED_KEPT = 1


def _references(rows: tuple) -> tuple:
    return sys.getrefcount(rows[0]), sys.getrefcount(rows[1])


def _spare_rows(n_atoms: int, capacity: int) -> tuple:
    """(neighbors, image) of a retired list ``n_atoms`` rows by ``capacity`` that nothing else holds, taken
    out of the pool, or :data:`simulate.partition.NO_SPARE_ROWS`."""
    if not _RETIRED_ROWS or capacity == 0:
        return partition.NO_SPARE_ROWS
    unheld = _references((np.empty(1), np.empty(1)))  # the count for arrays nothing holds but their tuple
    for k, rows in enumerate(_RETIRED_ROWS):
        if rows[0].shape == rows[1].shape == (n_atoms, capacity) and _references(rows) == unheld:
            return _RETIRED_ROWS.pop(k)
    return partition.NO_SPARE_ROWS


def _retire_rows(rows: tuple) -> None:
    """Keep the rows of a replaced list for :func:`_spare_rows`: arrays that own their memory only (a view's
    own views would hold its base, not the view, and escape the count of references)."""
    if rows[0].size and not any(isinstance(a.base, np.ndarray) for a in rows):
        _RETIRED_ROWS.append(rows)
        del _RETIRED_ROWS[:-_RETIRED_KEPT]


# the chain settings and state an NVE block is given, and leaves alone
_NO_CHAIN = ((0.0, 0.0, 1, np.ones(1)), (np.zeros(1), np.zeros(1), np.ones(1)))


def _run_block(force_fn, state, n_steps: int, dt_fs: float, max_force: float, min_distance: float, chain=None,
               planned_steps: int = 0, thermo: ThermoRecord | None = None):
    """(state, steps done, list builds) after up to ``n_steps`` steps of the compiled loop, the thermo rows of
    the steps done in ``thermo.rows``."""
    thermo = _NO_THERMO if thermo is None else thermo
    rows = thermo.rows
    needed = thermo_rows_between(thermo.first_step, n_steps, thermo.every)
    if (rows.dtype != np.float64 or rows.ndim != 2 or rows.shape[1] != THERMO_RECORD_COLUMNS
            or not rows.flags.c_contiguous or not rows.flags.writeable or rows.shape[0] < needed):
        raise ValueError(f"thermo rows: need a writeable C-contiguous float array ({needed}, {THERMO_RECORD_COLUMNS}) "
                         f"for the steps {thermo.first_step + 1} to {thermo.first_step + n_steps}, every "
                         f"{thermo.every}, not {rows.dtype} {rows.shape}")
    nl = state.neighbors
    if n_steps <= 0 or not nl.half or nl.skin_angstrom != force_fn.skin_angstrom:
        return state, 0, 0  # step() first puts the list right
    n = len(state.positions)
    parallel = use_parallel(n)
    loops = energy.force_loops(force_fn.kernel_module)
    force = state.force
    nose_hoover = chain is not None
    if nose_hoover:
        kt, n_dof, chain_steps, weights = chain
        chain_state = (state.chain.xi, state.chain.v_xi, state.chain.q_mass)
    else:
        (kt, n_dof, chain_steps, weights), chain_state = _NO_CHAIN
    spare = _spare_rows(n, nl.neighbors.shape[1])
    done, builds, _, positions, velocities, force_out, list_arrays, (xi, v_xi) = _block(
        force_fn, parallel, nose_hoover, n, planned_steps)(
        int(n_steps), np.ascontiguousarray(state.positions, dtype=float),
        np.ascontiguousarray(state.velocities, dtype=float), np.asarray(state.masses, dtype=float),
        _accel_per_force(state.masses), float(dt_fs),
        (force.forces_ev_per_angstrom, force.atom_loss_ev, force.nearest_angstrom, float(force.energy_ev),
         float(force.virial_ev)),
        (nl.neighbors, nl.counts, nl.image, nl.wrap_angstrom, nl.order, nl.layer_start, nl.reference_positions),
        (np.array(nl.cells_per_side, dtype=np.int64), nl.cells_per_side == (1, 1, 1), nl.half,
         float(nl.cutoff_angstrom + nl.skin_angstrom), float(nl.skin_angstrom)),
        force_fn.types, nl.box_angstrom, (loops.cutoff_angstrom, loops.threebody_cutoff_angstrom),
        energy.workspace(loops, n, nl.box_angstrom, bonded_pairs=force_fn.bonded_pairs), chain_state, (float(kt), float(n_dof), int(chain_steps), weights),
        (float(max_force) ** 2, float(min_distance)), spare, int(thermo.every), int(thermo.first_step), rows,
    )
    forces, loss, nearest, energy_ev, virial_ev = force_out
    neighbors, counts, image, wrap, order, layer_start, reference = list_arrays
    if spare[0].size and spare[0].ctypes.data != neighbors.ctypes.data:
        _retire_rows(spare)  # not the list the block returns: free still (its rows may hold a discarded build)
    del spare
    if done == 0:
        return state, 0, 0
    if builds:
        _retire_rows((nl.neighbors, nl.image))  # the caller's state may hold it still: see _spare_rows
        nl = nl._replace(neighbors=neighbors, counts=counts, reference_positions=reference, order=order,
                         layer_start=layer_start, image=image, wrap_angstrom=wrap)
    result = ForceResult(float(energy_ev), forces, loss, float(virial_ev), nearest)
    state = state._replace(positions=positions, velocities=velocities, force=result, neighbors=nl)
    if nose_hoover:
        state = state._replace(chain=ChainState(xi, v_xi, state.chain.q_mass))
    return state, done, builds


# --- Langevin --------------------------------------------------------------------------------------


def nvt_langevin(force_fn, dt_fs: float, temperature_k: float, friction_per_fs: float = 0.01, seed: int = 0) -> Integrator:
    """Langevin dynamics by the BAOAB splitting (Leimkuhler & Matthews 2013, Appl. Math. Res. Express 2013, 34).

    B: v += a dt/2;  A: x += v dt/2;  O: v ← c₁ v + c₂ √(kT/m) R, c₁ = e^{−γ dt}, c₂ = √(1 − c₁²);
    A; forces; B. The noise has its centre-of-mass part removed so the total momentum stays zero
    and 3N − 3 degrees of freedom are thermalised. The random stream is a seeded PCG64 generator
    carried in the state (so a checkpoint resumes it exactly). The conserved quantity is the
    "effective energy" K + U minus the heat put in by the O steps (Bussi & Parrinello 2007,
    Phys. Rev. E 75, 056707).
    """
    kt = BOLTZMANN_EV_PER_K * temperature_k
    c1 = math.exp(-friction_per_fs * dt_fs)
    c2 = math.sqrt(1.0 - c1 * c1)

    def init(positions, velocities, masses) -> LangevinState:
        positions, velocities, masses, force, neighbors = _start(force_fn, positions, velocities, masses)
        rng = np.random.Generator(np.random.PCG64(seed))
        return LangevinState(positions, velocities, masses, force, neighbors, rng, 0.0)

    def step(state: LangevinState) -> LangevinState:
        accel = _accel_per_force(state.masses)
        v = kick(state.velocities, state.force.forces_ev_per_angstrom, accel, 0.5 * dt_fs)
        x = drift(state.positions, v, 0.5 * dt_fs)
        k2_before = twice_kinetic_ev(v, state.masses)
        rng = _copy_rng(state.rng)
        sigma = np.sqrt(kt / (state.masses * AMU_ANGSTROM2_PER_FS2_TO_EV))
        noise = rng.standard_normal(v.shape) * sigma[:, None]
        noise -= (state.masses @ noise) / state.masses.sum()
        v = c1 * v + c2 * noise
        heat = state.heat_ev + 0.5 * (twice_kinetic_ev(v, state.masses) - k2_before)
        x = drift(x, v, 0.5 * dt_fs)
        neighbors, force = force_fn(x, state.neighbors)
        v = kick(v, force.forces_ev_per_angstrom, accel, 0.5 * dt_fs)
        return LangevinState(x, v, state.masses, force, neighbors, rng, heat)

    def conserved_energy_ev(state: LangevinState) -> float:
        return 0.5 * twice_kinetic_ev(state.velocities, state.masses) + state.force.energy_ev - state.heat_ev

    return Integrator(init, step, conserved_energy_ev)


def _copy_rng(rng: np.random.Generator) -> np.random.Generator:
    """An independent generator in the same state: states are values, the old one must not advance."""
    bit_generator = type(rng.bit_generator)()
    bit_generator.state = rng.bit_generator.state
    return np.random.Generator(bit_generator)


def rng_state_json(rng: np.random.Generator) -> str:
    """The generator's full state as JSON text, for checkpoints."""
    return json.dumps(rng.bit_generator.state)


def rng_from_json(text: str) -> np.random.Generator:
    state = json.loads(text)
    bit_generator = getattr(np.random, state["bit_generator"])()
    bit_generator.state = state
    return np.random.Generator(bit_generator)
