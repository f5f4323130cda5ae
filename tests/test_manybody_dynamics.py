"""Dynamics with a generated many-body kernel: NVE conserves energy and momentum, Nosé–Hoover holds T.

The kernel is what ``discover.codegen`` writes for the closed-form many-body model of
``tests/export_support.py`` (morse_water pairs with walls plus the smooth H–O–H, O–H···O and O–O–H
triplet laws), so these runs go through the generated triplet kernel and the simulator's three-body
loop, not a hand-written module.

The start is the real CP2K water frame, but that frame is not an equilibrium state of this model:
its O–H Morse pairs are topology-free, so in NVE from the frame the molecules rearrange and the
released potential energy (≈ 0.6 eV/atom) heats the box to ~5000 K within 1 ps. The tests therefore
first anneal the frame with Langevin dynamics at 300 K for 6 ps (by then the potential energy has
levelled off and a following NVE run stays at ~300 K), and start every run from that state.
"""

from types import SimpleNamespace

import numpy as np
import pytest

from simulate import energy, integrate, quantity, setup
from simulate.md import atom_types
from simulate.units import BOLTZMANN_EV_PER_K
from tests.export_support import generated_kernels, manybody_water_model
from tests.kernel_examples.starting_frames import water32_frame

TARGET_K = 300.0
DT_FS = 0.5  # the O–H stretch period of the Morse bond is ≈ 9 fs
ANNEAL_STEPS = 12_000  # 6 ps of Langevin at TARGET_K
SAMPLE_EVERY = 10


@pytest.fixture(scope="module")
def annealed_water(tmp_path_factory):
    """(force_fn, positions, velocities, masses, kernel, types): the real water frame annealed under the model."""
    kernel = generated_kernels(manybody_water_model(), tmp_path_factory.mktemp("manybody"))
    species, positions, box, velocities = water32_frame()
    types = atom_types(kernel, species)
    masses = np.asarray(kernel.MASSES_AMU)[types]
    force_fn = energy.make_force_fn(kernel, types, box)
    langevin = integrate.nvt_langevin(force_fn, DT_FS, TARGET_K, friction_per_fs=0.05, seed=1)
    state = langevin.init(positions, setup.remove_com_momentum(velocities, masses), masses)
    for _ in range(ANNEAL_STEPS):
        state = langevin.step(state)
    return force_fn, state.positions, state.velocities, masses, kernel, types


def run(integrator, state, steps):
    """Final state and rows of (kinetic eV, conserved energy eV, max |total momentum| amu·Å/fs) every SAMPLE_EVERY steps.

    The steps between samples run as one compiled block (``Integrator.run``, bit for bit ``step``).
    """
    samples = []
    for _ in range(steps // SAMPLE_EVERY):
        state, done, _ = integrator.run(state, SAMPLE_EVERY, np.inf, 0.0)
        for _ in range(SAMPLE_EVERY - done):  # a block stops early only where a list must be widened
            state = integrator.step(state)
        samples.append((quantity.kinetic_energy_ev(state.velocities, state.masses),
                        integrator.conserved_energy_ev(state),
                        np.abs(quantity.total_momentum(state.velocities, state.masses)).max()))
    return state, np.array(samples)


def test_the_three_body_term_carries_a_real_share_of_the_forces(annealed_water):
    # the runs below test the three-body loop only if its forces are a sizeable part of the total
    force_fn, positions, _, _, kernel, types = annealed_water
    neighbors, total = force_fn(positions, None)
    pairs_only = SimpleNamespace(CUTOFF_ANGSTROM=kernel.CUTOFF_ANGSTROM, pair_energy_force=kernel.pair_energy_force)
    pairs = energy.compute_forces(pairs_only, positions, types, neighbors)
    triplet_forces = total.forces_ev_per_angstrom - pairs.forces_ev_per_angstrom
    # measured: three-body energy ≈ 0.18 eV/atom, its forces ≈ 0.44 of the total's rms
    assert (total.energy_ev - pairs.energy_ev) / len(positions) > 0.05
    assert np.sqrt(np.mean(triplet_forces**2)) > 0.2 * np.sqrt(np.mean(total.forces_ev_per_angstrom**2))


def test_nve_energy_drift_is_below_1e_4_ev_per_atom_over_5_ps(annealed_water):
    force_fn, positions, velocities, masses, _, _ = annealed_water
    nve = integrate.nve(force_fn, dt_fs=DT_FS)
    _, samples = run(nve, nve.init(positions, velocities, masses), 10_000)
    energy_per_atom = samples[:, 1] / len(masses)
    time_ps = np.arange(len(samples)) * SAMPLE_EVERY * DT_FS / 1000.0
    slope_ev_per_ps = np.polyfit(time_ps, energy_per_atom, 1)[0]
    # velocity Verlet: bounded O(dt²) fluctuation, no secular drift (measured: fitted drift 2e-5 eV/atom
    # over 5 ps, 4e-5 over 10 ps; peak to peak 1.2e-4 eV/atom against a kinetic energy of 0.038 eV/atom).
    # A triplet kernel whose dw/dcosθ is 10% off drifts past the first bound.
    assert abs(slope_ev_per_ps * time_ps[-1]) < 1e-4
    assert np.ptp(energy_per_atom) < 3e-4
    # the annealed state is stable: no rearrangement heats the box (from the raw frame it reaches ~5000 K)
    mean_k = 2.0 * samples[:, 0].mean() / (quantity.degrees_of_freedom(len(masses)) * BOLTZMANN_EV_PER_K)
    assert 250.0 < mean_k < 350.0
    assert samples[:, 2].max() < 1e-10  # total momentum stays zero


def test_nose_hoover_chain_holds_the_mean_temperature_within_2_percent(annealed_water):
    force_fn, positions, velocities, masses, _, _ = annealed_water
    nhc = integrate.nvt_nose_hoover(force_fn, dt_fs=DT_FS, temperature_k=TARGET_K, tau_fs=50.0)
    state, samples = run(nhc, nhc.init(positions, velocities, masses), 40_000)
    # 1 ps to settle the thermostat, then 19 ps: 96 atoms need a long run for 2%. Measured: 297.2 K;
    # over 4 ps alone the mean scatters by ±4 K with the start (292.8, 301.4, 303.4, 300.5 K after
    # annealing with seeds 1–4), and by as much with the last bit of the forces (chaos).
    kinetic = samples[200:, 0]
    n_dof = quantity.degrees_of_freedom(len(masses))
    mean_k = 2.0 * kinetic.mean() / (n_dof * BOLTZMANN_EV_PER_K)
    assert mean_k == pytest.approx(TARGET_K, rel=0.02)
    assert np.ptp(samples[:, 1]) / len(masses) < 3e-4  # the extended energy is conserved, as in NVE
    assert samples[:, 2].max() < 1e-10
    assert state.chain.xi[0] != 0.0
