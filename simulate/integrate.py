"""Integrators: NVE velocity Verlet, Nosé–Hoover chains, and Langevin BAOAB, side by side.

Each integrator is a pair of functions, ``init(positions, velocities, masses) -> state`` and
``step(state) -> state``, plus ``conserved_energy_ev(state)``, the quantity the exact flow keeps
constant (its drift measures integration error). States are small named tuples of numpy arrays and
are never modified in place: ``step`` returns a new state, so the last good state survives a
failed step.

All three take a ``force_fn(positions, neighbors) -> (neighbors, ForceResult)`` (see
:func:`simulate.energy.make_force_fn`); the neighbour list travels inside the state.

Units: positions Å, velocities Å/fs, masses amu, forces eV/Å, time fs, energies eV.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import NamedTuple

import numba
import numpy as np
from numba import prange

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


_KICK = serial_and_parallel(_kick_loop)
_DRIFT = serial_and_parallel(_drift_loop)


def kick(velocities, forces, accel_per_force, dt):
    return _KICK[use_parallel(len(velocities))](velocities, forces, accel_per_force, dt)


def drift(positions, velocities, dt):
    return _DRIFT[use_parallel(len(positions))](positions, velocities, dt)


def _accel_per_force(masses: np.ndarray) -> np.ndarray:
    return EV_PER_ANGSTROM_PER_AMU_TO_ANGSTROM_PER_FS2 / np.asarray(masses, dtype=float)


def _twice_kinetic_ev(velocities: np.ndarray, masses: np.ndarray) -> float:
    return AMU_ANGSTROM2_PER_FS2_TO_EV * float(masses @ np.einsum("ij,ij->i", velocities, velocities))


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
        return 0.5 * _twice_kinetic_ev(state.velocities, state.masses) + state.force.energy_ev

    return Integrator(init, step, conserved_energy_ev)


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
            _twice_kinetic_ev(velocities, masses), chain.xi, chain.v_xi, chain.q_mass, kt, dof, dt_fs,
            chain_steps, weights,
        )
        return velocities * scale, ChainState(xi, v_xi, chain.q_mass)

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
        return (
            0.5 * _twice_kinetic_ev(state.velocities, state.masses)
            + state.force.energy_ev
            + 0.5 * float(np.sum(c.q_mass * c.v_xi**2))
            + dof * kt * float(c.xi[0])
            + kt * float(np.sum(c.xi[1:]))
        )

    return Integrator(init, step, conserved_energy_ev)


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
        k2_before = _twice_kinetic_ev(v, state.masses)
        rng = _copy_rng(state.rng)
        sigma = np.sqrt(kt / (state.masses * AMU_ANGSTROM2_PER_FS2_TO_EV))
        noise = rng.standard_normal(v.shape) * sigma[:, None]
        noise -= (state.masses @ noise) / state.masses.sum()
        v = c1 * v + c2 * noise
        heat = state.heat_ev + 0.5 * (_twice_kinetic_ev(v, state.masses) - k2_before)
        x = drift(x, v, 0.5 * dt_fs)
        neighbors, force = force_fn(x, state.neighbors)
        v = kick(v, force.forces_ev_per_angstrom, accel, 0.5 * dt_fs)
        return LangevinState(x, v, state.masses, force, neighbors, rng, heat)

    def conserved_energy_ev(state: LangevinState) -> float:
        return 0.5 * _twice_kinetic_ev(state.velocities, state.masses) + state.force.energy_ev - state.heat_ev

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
