"""Integrators: NVE conserves energy, Nosé–Hoover and Langevin sample the canonical ensemble."""

from pathlib import Path

import numpy as np
import pytest

from simulate import energy, integrate, quantity, setup
from simulate.kernels import load_kernel_module
from simulate.units import BOLTZMANN_EV_PER_K
from tests.kernel_examples.starting_frames import argon_fcc

EXAMPLES = Path(__file__).parent / "kernel_examples"
TARGET_K = 100.0  # liquid argon at 5.72 Å fcc density


@pytest.fixture(scope="module")
def argon_system():
    kernel = load_kernel_module(EXAMPLES / "lj_argon.py")
    species, positions, box = argon_fcc(3)
    masses = np.full(len(species), kernel.MASSES_AMU[0])
    force_fn = energy.make_force_fn(kernel, np.zeros(len(species), dtype=np.int64), box)
    # start hot from a crystal: it melts, and the thermostats must bring it to TARGET_K
    velocities = setup.maxwell_boltzmann(masses, 2 * TARGET_K, seed=7)
    return force_fn, positions, velocities, masses


def run(integrator, state, steps, every=10):
    samples = []
    for step in range(steps):
        state = integrator.step(state)
        if step % every == 0:
            samples.append((quantity.kinetic_energy_ev(state.velocities, state.masses),
                            integrator.conserved_energy_ev(state),
                            np.abs(quantity.total_momentum(state.velocities, state.masses)).max()))
    return state, np.array(samples)


def test_maxwell_boltzmann_velocities_have_exact_temperature_and_no_momentum():
    masses = np.tile([15.999, 1.008, 1.008], 50)
    velocities = setup.maxwell_boltzmann(masses, 300.0, seed=3)
    assert quantity.temperature_k(velocities, masses) == pytest.approx(300.0, rel=1e-12)
    assert np.abs(quantity.total_momentum(velocities, masses)).max() < 1e-12
    # heavy atoms move slower: ⟨m v²⟩ is the same for both species
    mv2 = masses * (velocities**2).sum(1)
    assert mv2[0::3].mean() == pytest.approx(mv2[1::3].mean(), rel=0.3)


def test_nve_energy_drift_is_below_1e_4_ev_per_atom_over_10_ps(argon_system):
    force_fn, positions, velocities, masses = argon_system
    nve = integrate.nve(force_fn, dt_fs=0.5)
    _, samples = run(nve, nve.init(positions, velocities, masses), 20_000)
    energy_per_atom = samples[:, 1] / len(masses)
    assert np.ptp(energy_per_atom) < 1e-4
    assert np.ptp(samples[:, 0]) > 0.1  # the crystal really melted: kinetic energy moved a lot
    assert samples[:, 2].max() < 1e-10  # total momentum stays zero


def test_nose_hoover_chain_samples_the_canonical_kinetic_energy(argon_system):
    force_fn, positions, velocities, masses = argon_system
    nhc = integrate.nvt_nose_hoover(force_fn, dt_fs=2.0, temperature_k=TARGET_K, tau_fs=100.0)
    state, samples = run(nhc, nhc.init(positions, velocities, masses), 20_000)
    kinetic = samples[250:, 0]  # 5 ps to equilibrate
    n_dof = quantity.degrees_of_freedom(len(masses))
    kt = BOLTZMANN_EV_PER_K * TARGET_K
    assert kinetic.mean() == pytest.approx(0.5 * n_dof * kt, rel=0.02)
    # canonical: Var(K) = (N_f / 2) (k_B T)²; an NVE or rescaled run would give far less
    assert kinetic.var() == pytest.approx(0.5 * n_dof * kt**2, rel=0.25)
    assert np.ptp(samples[:, 1]) / len(masses) < 1e-5  # the extended energy is conserved
    assert samples[:, 2].max() < 1e-10
    assert state.chain.xi[0] != 0.0


def test_langevin_is_reproducible_and_canonical(argon_system):
    force_fn, positions, velocities, masses = argon_system
    make = lambda seed: integrate.nvt_langevin(force_fn, 2.0, TARGET_K, friction_per_fs=0.01, seed=seed)
    _, samples = run(make(5), make(5).init(positions, velocities, masses), 15_000)
    b, _ = run(make(5), make(5).init(positions, velocities, masses), 200)
    c, _ = run(make(5), make(5).init(positions, velocities, masses), 200)
    d, _ = run(make(6), make(6).init(positions, velocities, masses), 200)
    assert np.array_equal(b.positions, c.positions)
    assert not np.array_equal(b.positions, d.positions)
    kinetic = samples[250:, 0]
    n_dof = quantity.degrees_of_freedom(len(masses))
    kt = BOLTZMANN_EV_PER_K * TARGET_K
    assert kinetic.mean() == pytest.approx(0.5 * n_dof * kt, rel=0.02)
    assert kinetic.var() == pytest.approx(0.5 * n_dof * kt**2, rel=0.25)
    assert np.ptp(samples[:, 1]) / len(masses) < 1e-4  # effective energy: K + U − heat
    assert samples[:, 2].max() < 1e-10


def test_nose_hoover_chain_steps_are_time_reversible(argon_system):
    force_fn, positions, velocities, masses = argon_system
    nhc = integrate.nvt_nose_hoover(force_fn, dt_fs=2.0, temperature_k=TARGET_K, tau_fs=100.0)
    state = nhc.init(positions, velocities, masses)
    for _ in range(50):
        state = nhc.step(state)
    back = state._replace(velocities=-state.velocities, chain=state.chain._replace(v_xi=-state.chain.v_xi))
    for _ in range(50):
        back = nhc.step(back)
    np.testing.assert_allclose(back.positions, positions, atol=1e-8)
