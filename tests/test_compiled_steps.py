"""The compiled multi-step loop and the parallel three-body passes give the same numbers as the plain path.

``md.simulate`` runs NVE and Nosé–Hoover steps in compiled blocks between outputs
(``Integrator.run``); ``integrate.*.step`` is the plain one-step path. The three-body passes of
``simulate.energy`` run on short per-atom rows filled during the pair pass, in parallel; their sums
must not depend on the number of threads, or a resumed run would not repeat an unbroken one.
"""

from pathlib import Path

import numba
import numpy as np
import pytest

from discover import codegen
from simulate import energy, integrate, md, partition, setup, tabulate, topology
from simulate.errors import MldError
from simulate.kernels import is_molecular, load_kernel_module
from tests.export_support import generated_kernels, manybody_water_model
from tests.kernel_examples.starting_frames import argon_fcc, water32_frame
from tests.test_topology import _closed_form_truth

EXAMPLES = Path(__file__).parent / "kernel_examples"


@pytest.fixture(scope="module")
def manybody(tmp_path_factory):
    """The kernel module discover.codegen writes for a closed-form many-body water model."""
    return generated_kernels(manybody_water_model(), tmp_path_factory.mktemp("manybody"))


def stepwise(kernel, species, positions, box, velocities, thermostat, steps, dt_fs, skin, thermo_every=0, rows=None):
    """The final state and list-build count of ``steps`` plain ``step`` calls, from md.simulate's start; with
    ``thermo_every``, the thermo log's rows md writes from those states appended to ``rows``."""
    types = md.atom_types(kernel, species)
    masses = np.asarray(kernel.MASSES_AMU)[types]
    molecules = None
    if is_molecular(kernel):
        cutoffs = topology.bond_cutoff_matrix(kernel.BOND_CUTOFF_ANGSTROM, len(kernel.SPECIES))
        molecules = topology.assign_molecules(positions, box, types, cutoffs)
    force_fn = energy.make_force_fn(kernel, types, box, skin, molecules)
    integrator = md.make_integrator(force_fn, thermostat, dt_fs, 300.0, 100.0, 0.01, 0)
    state = integrator.init(positions, setup.remove_com_momentum(velocities, masses), masses)
    if thermo_every:
        rows.append(md._thermo_row(0, dt_fs, state, integrator, box))
    builds = 0
    for k in range(1, steps + 1):
        new = integrator.step(state)
        builds += new.neighbors is not state.neighbors
        state = new
        if thermo_every and k % thermo_every == 0:
            rows.append(md._thermo_row(k, dt_fs, state, integrator, box))
    return state, builds


def assert_same_log(out_dir, rows):
    """The thermo log of a run in ``out_dir`` is, byte for byte, ``rows`` under its header."""
    assert (out_dir / "thermo.csv").read_text().splitlines(keepends=True)[1:] == rows


def assert_same_state(a, b):
    assert np.array_equal(a.positions, b.positions)
    assert np.array_equal(a.velocities, b.velocities)
    assert np.array_equal(a.force.forces_ev_per_angstrom, b.force.forces_ev_per_angstrom)
    assert np.array_equal(a.force.atom_loss_ev, b.force.atom_loss_ev)
    assert a.force.energy_ev == b.force.energy_ev
    assert a.force.virial_ev == b.force.virial_ev
    assert np.array_equal(a.neighbors.reference_positions, b.neighbors.reference_positions)


@pytest.mark.parametrize("thermostat", ["nve", "nose-hoover"])
@pytest.mark.parametrize("cells", [3, 5])  # 108 atoms: all-pairs list; 500 atoms: cell list
def test_compiled_run_is_bit_for_bit_the_stepwise_integrator(tmp_path, cells, thermostat):
    kernel = load_kernel_module(EXAMPLES / "lj_argon.py")
    species, positions, box = argon_fcc(cells)
    masses = np.full(len(species), kernel.MASSES_AMU[0])
    velocities = setup.maxwell_boltzmann(masses, 300.0, seed=5)
    # a thin skin and a hot start: the list is rebuilt many times inside the compiled blocks
    skin, dt, steps = 0.2, 2.0, 150
    result = md.simulate(kernel, species, positions, box, velocities, steps=steps, dt_fs=dt, thermostat=thermostat,
                         temperature_k=300.0, out_dir=tmp_path, skin_angstrom=skin, thermo_every=7,
                         trajectory_every=1000, checkpoint_every=1000)
    state, builds = stepwise(kernel, species, positions, box, velocities, thermostat, steps, dt, skin)
    if cells == 3:  # every pair: no list to rebuild
        assert builds == result.neighbor_builds == 0
        assert result.state.neighbors.cells_per_side == (1, 1, 1)
    else:
        assert 5 < builds == result.neighbor_builds < steps // 2
        assert result.state.neighbors.cells_per_side == (3, 3, 3)
    assert_same_state(result.state, state)
    if thermostat == "nose-hoover":
        assert np.array_equal(result.state.chain.xi, state.chain.xi)
        assert np.array_equal(result.state.chain.v_xi, state.chain.v_xi)


@pytest.mark.parametrize("thermostat", ["nve", "nose-hoover"])
@pytest.mark.parametrize("block_s", [0.0, 10.0])
def test_thermo_rows_recorded_inside_blocks_are_those_of_the_stepwise_states(tmp_path, monkeypatch, thermostat,
                                                                             block_s):
    # blocks run up to the next frame (every 25 steps) and record the thermo rows on the way (integrate.
    # ThermoRecord): with md.BLOCK_S 0, blocks of thermo_every (7) steps, so rows fall inside blocks and at
    # their ends; with 10 s, blocks from frame to frame. The steps between rows take the forces-only pass
    # (the run is planned long enough), the rows' steps the full one. The log must be, byte for byte, the
    # rows md writes from the stepwise states.
    monkeypatch.setattr(md, "BLOCK_S", block_s)
    monkeypatch.setattr(integrate, "FORCES_ONLY_MIN_ATOM_STEPS", 108 * 150)
    kernel = load_kernel_module(EXAMPLES / "lj_argon.py")
    species, positions, box = argon_fcc(3)
    masses = np.full(len(species), kernel.MASSES_AMU[0])
    velocities = setup.maxwell_boltzmann(masses, 300.0, seed=5)
    skin, dt, steps, every = 0.2, 2.0, 150, 7
    lengths = []
    run = integrate._run_block

    def recording(force_fn, state, n_steps, *args, **kwargs):
        lengths.append(n_steps)
        return run(force_fn, state, n_steps, *args, **kwargs)

    monkeypatch.setattr(integrate, "_run_block", recording)
    md.simulate(kernel, species, positions, box, velocities, steps=steps, dt_fs=dt, thermostat=thermostat,
                temperature_k=300.0, out_dir=tmp_path, skin_angstrom=skin, thermo_every=every,
                trajectory_every=25, checkpoint_every=1000)
    assert max(lengths) == (every if block_s == 0.0 else 25)
    assert energy.force_loops(kernel).half_forces_only[0].signatures  # the forces-only variant ran
    rows = []
    stepwise(kernel, species, positions, box, velocities, thermostat, steps, dt, skin, every, rows)
    assert len(rows) == steps // every + 1
    assert_same_log(tmp_path, rows)


@pytest.mark.parametrize("cells", [5, 6])  # 500 and 864 atoms: cell lists (a small box's list lists nothing)
def test_a_list_that_overflows_inside_a_block_is_rebuilt_wider_without_stopping(cells):
    kernel = load_kernel_module(EXAMPLES / "lj_argon.py")
    species, positions, box = argon_fcc(cells)
    types = md.atom_types(kernel, species)
    masses = np.full(len(species), kernel.MASSES_AMU[0])
    velocities = setup.maxwell_boltzmann(masses, 600.0, seed=7)
    skin, dt, steps = 0.2, 2.0, 120
    nve = integrate.nve(energy.make_force_fn(kernel, types, box, skin), dt)
    start = nve.init(positions, velocities, masses)
    # a list just wide enough for the start: the hot crystal's rows soon outgrow it
    nl = start.neighbors
    narrow = partition.neighbor_list(positions, box, nl.cutoff_angstrom, skin, capacity=int(nl.counts.max()) + 1,
                                     half=True)
    start = start._replace(neighbors=narrow)
    blocked, done, builds = nve.run(start, steps, np.inf, 0.0)
    assert done == steps and builds > 5  # no stop: every rebuild, the overflowing ones too, inside the block
    assert blocked.neighbors.neighbors.shape[1] > narrow.neighbors.shape[1]  # it did outgrow the start's width
    stepped = start
    for _ in range(steps):
        stepped = nve.step(stepped)
    assert_same_state(blocked, stepped)
    assert blocked.neighbors.neighbors.shape[1] == stepped.neighbors.neighbors.shape[1]


@pytest.fixture(scope="module")
def molecular(tmp_path_factory):
    """Generated kernels of a closed-form molecular water model: bonded laws inside molecules."""
    return load_kernel_module(codegen.write_kernels(_closed_form_truth(), tmp_path_factory.mktemp("m") / "kernels.py"))


@pytest.mark.parametrize("model", ["morse", "manybody", "molecular"])
def test_blocks_with_forces_only_steps_are_bit_for_bit_the_stepwise_integrator(tmp_path, monkeypatch, request, model):
    # the 96-atom box takes the path of big boxes because its run is planned long enough (md.simulate
    # passes its length to the blocks)
    monkeypatch.setattr(integrate, "FORCES_ONLY_MIN_ATOM_STEPS", 96 * 60)
    kernel = request.getfixturevalue(model)
    species, positions, box, velocities = water32_frame()
    result = md.simulate(kernel, species, positions, box, velocities, steps=60, dt_fs=0.5, thermostat="nve",
                         out_dir=tmp_path, thermo_every=13, trajectory_every=1000, checkpoint_every=1000)
    rows = []
    state, builds = stepwise(kernel, species, positions, box, velocities, "nve", 60, 0.5, 1.0, 13, rows)
    assert builds == result.neighbor_builds == 0  # a small box: every pair, no list (rebuilds: the three-body test)
    assert_same_state(result.state, state)
    assert_same_log(tmp_path, rows)
    assert energy.force_loops(kernel).half_forces_only[0].signatures  # the forces-only variant ran


def test_compiled_run_on_a_small_box_of_many_atoms_rebuilds_its_brute_force_list_bit_for_bit(tmp_path, morse):
    # 288 atoms in a slab one 9.9 Å list cell thick: too many for every pair, so a brute-force half list,
    # rebuilt inside the blocks (a thin skin)
    species, positions, box, velocities = water32_frame()
    positions, species, box = setup.replicate(positions, species, box, (3, 1, 1))
    velocities = np.tile(velocities, (3, 1))
    result = md.simulate(morse, species, positions, box, velocities, steps=60, dt_fs=0.5, thermostat="nve",
                         out_dir=tmp_path, thermo_every=13, trajectory_every=1000, checkpoint_every=1000,
                         skin_angstrom=0.3)
    state, builds = stepwise(morse, species, positions, box, velocities, "nve", 60, 0.5, 0.3)
    assert result.state.neighbors.cells_per_side == (1, 1, 1)
    assert not partition.lists_every_pair(result.state.neighbors)
    assert builds == result.neighbor_builds > 2
    assert_same_state(result.state, state)


def test_the_forces_only_pass_is_used_for_big_boxes_and_long_runs():
    assert integrate.uses_forces_only(integrate.FORCES_ONLY_MIN_ATOMS)
    assert not integrate.uses_forces_only(96)
    assert not integrate.uses_forces_only(96, 1000)  # a short run does not pay back its compilation
    assert integrate.uses_forces_only(96, -(-integrate.FORCES_ONLY_MIN_ATOM_STEPS // 96))


@pytest.mark.parametrize("forces_only", [False, True])
def test_compiled_run_of_a_three_body_model_is_bit_for_bit_the_stepwise_integrator(tmp_path, monkeypatch, manybody,
                                                                                   forces_only):
    # 768 atoms, a cell list rebuilt inside the blocks; with ``forces_only`` the run is planned long
    # enough for the forces-only steps
    if forces_only:
        monkeypatch.setattr(integrate, "FORCES_ONLY_MIN_ATOM_STEPS", 768 * 120)
    species, positions, box, velocities = water32_frame()
    positions, species, box = setup.replicate(positions, species, box, (2, 2, 2))
    velocities = np.tile(velocities, (8, 1))
    result = md.simulate(manybody, species, positions, box, velocities, steps=120, dt_fs=0.5, thermostat="nve",
                         out_dir=tmp_path, thermo_every=9, trajectory_every=1000, checkpoint_every=1000)
    rows = []
    state, builds = stepwise(manybody, species, positions, box, velocities, "nve", 120, 0.5, 1.0, 9, rows)
    assert result.state.neighbors.cells_per_side == (3, 3, 3)
    assert builds == result.neighbor_builds > 0
    assert_same_state(result.state, state)
    assert_same_log(tmp_path, rows)


def each_thread_count():
    """Numba set to one thread, then to two where there are two, restored after."""
    threads = numba.get_num_threads()
    try:
        for count in sorted({1, min(2, numba.config.NUMBA_NUM_THREADS)}):
            numba.set_num_threads(count)
            yield count
    finally:
        numba.set_num_threads(threads)


def replicated_water(kernel, repeats):
    species, positions, box, _ = water32_frame()
    positions, species, box = setup.replicate(positions, species, box, repeats)
    return md.atom_types(kernel, species), positions, box


# the learned law is separable: both three-body passes. 1536 atoms with a skin of 1.5 Å make 6 x-layers of
# cells: the centres put their gradients into the forces in three phases of two layers three apart, the
# closest layers of one phase can be (energy.centre_phases); 1152 atoms, 5 layers: two halves of the rows,
# each into a force array of its own (energy.centre_tasks)
@pytest.mark.parametrize(("moments", "repeats", "skin", "layers"),
                         [(True, (4, 2, 2), 1.5, 6), (False, (4, 2, 2), 1.5, 6), (True, (3, 2, 2), 1.0, 5)])
def test_three_body_sums_are_the_same_bit_for_bit_for_serial_parallel_and_any_thread_count(manybody, moments,
                                                                                          repeats, skin, layers):
    types, positions, box = replicated_water(manybody, repeats)
    loops = energy.force_loops(manybody, triplet_moments=moments)
    nl = partition.neighbor_list(positions, box, energy.interaction_cutoff_angstrom(manybody), skin, half=True)
    assert nl.cells_per_side[0] == layers
    work = energy.workspace(loops, len(positions), box)
    args = (positions, types, box, nl.neighbors, nl.counts, nl.order, nl.layer_start, nl.image, nl.wrap_angstrom,
            loops.cutoff_angstrom, loops.threebody_cutoff_angstrom, work)
    serial = loops.half[0](*args)
    for _ in each_thread_count():
        parallel = loops.half[1](*args)
        for a, b in zip(serial[:4], parallel[:4]):
            assert np.array_equal(a, b)
        assert serial[4:] == parallel[4:]
    assert serial[6] > 10  # the short rows were really filled: a dozen or more atoms within r_3


# 1152 atoms in 5 x-layers of cells: the three-body centres run in two halves of the rows, each adding to a
# force array of its own; 1536 atoms in 7 layers: a layer a task, phase by phase (energy.centre_tasks)
@pytest.mark.parametrize("repeats", [(3, 2, 2), (4, 2, 2)])
def test_three_body_forces_on_a_cell_list_equal_the_kernels_brute_force_reference(manybody, repeats):
    types, positions, box = replicated_water(manybody, repeats)
    force_fn = energy.make_force_fn(manybody, types, box)
    neighbors, result = force_fn(positions, None)
    assert neighbors.half and neighbors.cells_per_side != (1, 1, 1)
    assert (neighbors.cells_per_side[0] >= energy.PHASED_MIN_LAYERS) == (repeats[0] == 4)
    e_ref, f_ref, loss_ref = manybody.energy_forces(positions, types, box)
    assert result.energy_ev == pytest.approx(e_ref, rel=1e-12)
    np.testing.assert_allclose(result.forces_ev_per_angstrom, f_ref, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(result.atom_loss_ev, loss_ref, rtol=1e-10, atol=1e-10)
    # and a full list gives the same numbers through the other pair loop
    full = partition.neighbor_list(positions, box, energy.interaction_cutoff_angstrom(manybody), 1.0, half=False)
    other = energy.compute_forces(manybody, positions, types, full)
    np.testing.assert_allclose(other.forces_ev_per_angstrom, f_ref, rtol=1e-10, atol=1e-10)
    assert other.virial_ev == pytest.approx(result.virial_ev, rel=1e-12)


# 96 atoms: rows of unit vectors, filed from every pair; 768: rows of atoms and image codes, from a cell list
@pytest.mark.parametrize("repeats", [(1, 1, 1), (2, 2, 2)])
def test_short_three_body_rows_that_overflow_are_widened_not_truncated(manybody, monkeypatch, repeats):
    types, positions, box = replicated_water(manybody, repeats)
    loops = energy.force_loops(manybody)
    loops.workspaces.clear()
    monkeypatch.setattr(energy, "triplet_capacity", lambda n_atoms, box, cutoff3: 2)
    _, result = energy.make_force_fn(manybody, types, box)(positions, None)
    assert loops.workspaces[len(positions)][6].shape[1] > 10  # widened from 2
    e_ref, f_ref, _ = manybody.energy_forces(positions, types, box)
    assert result.energy_ev == pytest.approx(e_ref, rel=1e-12)
    np.testing.assert_allclose(result.forces_ev_per_angstrom, f_ref, rtol=1e-10, atol=1e-10)


def test_a_three_body_model_refuses_more_atoms_than_a_short_row_entry_can_name(manybody):
    # an entry of a short row holds the atom and its image code in one 32-bit word
    loops = energy.force_loops(manybody)
    box = np.full(3, 1000.0)
    with pytest.raises(MldError, match="a three-body model runs up to"):
        energy.workspace(loops, energy.MAX_CODED_ATOMS, box)
    largest_code = len(partition.IMAGE_SHIFTS) - 1
    assert (energy.MAX_CODED_ATOMS - 1) << energy.CODE_BITS | largest_code < 2**31  # the largest entry fits


@pytest.fixture(scope="module")
def morse():
    return load_kernel_module(EXAMPLES / "morse_water.py")


@pytest.fixture(scope="module")
def morse_tabulated(morse):
    return tabulate.tabulate_kernel_module(morse)  # pair laws in r²: the passes call pair_energy_force_r2


# 1152 atoms: a cell list of 5 x-layers; 1536 atoms, 7 layers. The many-body centres run a layer a task in
# phases (energy.centre_tasks); in 5 layers, two halves of the rows, each adding to a force array of its own
@pytest.mark.parametrize(("model", "repeats"), [("morse", (3, 2, 2)), ("morse_tabulated", (3, 2, 2)),
                                                ("manybody", (3, 2, 2)), ("manybody", (4, 2, 2))])
def test_forces_without_energy_are_the_forces_with_energy_bit_for_bit(request, model, repeats):
    kernel = request.getfixturevalue(model)
    types, positions, box = replicated_water(kernel, repeats)
    loops = energy.force_loops(kernel)
    nl = partition.neighbor_list(positions, box, energy.interaction_cutoff_angstrom(kernel), 1.0, half=True)
    work = energy.workspace(loops, len(positions), box)
    args = (positions, types, box, nl.neighbors, nl.counts, nl.order, nl.layer_start, nl.image, nl.wrap_angstrom,
            loops.cutoff_angstrom, loops.threebody_cutoff_angstrom, work)
    forces, loss, _, nearest, energy_ev, virial_ev, needed3, closest = loops.half[0](*args)
    assert closest == nearest.min() < 1.1  # an O–H bond
    assert loss.shape == nearest.shape == (len(positions),) and np.isfinite(energy_ev) and np.isfinite(virial_ev)
    for forces_only in loops.half_forces_only:  # serial, parallel
        only = forces_only(*args)
        assert np.array_equal(only[0], forces)
        assert only[1].size == only[2].size == only[3].size == 0  # no losses, virials, nearest distances
        assert np.isnan(only[4]) and np.isnan(only[5])  # nor energy and virial
        assert only[6:] == (needed3, closest)


def test_kicks_and_drift_on_threads_or_not_give_the_same_steps_bit_for_bit(morse, monkeypatch):
    """The per-atom kick and drift loops run on threads only from STREAM_PARALLEL_MIN_ATOMS atoms (thread
    wake-ups cost more than they save below); either way the compiled blocks take the same steps."""
    types, positions, box = replicated_water(morse, (3, 2, 2))  # 1152 atoms: the parallel force pass
    masses = np.asarray(morse.MASSES_AMU)[types]
    velocities = setup.maxwell_boltzmann(masses, 300.0, seed=3)
    states = []
    for threshold in (0, 10**9):
        monkeypatch.setattr(integrate, "STREAM_PARALLEL_MIN_ATOMS", threshold)
        assert integrate.streams_parallel(len(positions)) == (threshold == 0)
        nve = integrate.nve(energy.make_force_fn(morse, types, box), 0.5)
        state, done, _ = nve.run(nve.init(positions, velocities, masses), 30, np.inf, 0.0)
        assert done == 30
        states.append(state)
    # a block of its own for each: the cache tells them apart
    loops = energy.force_loops(morse)
    assert {key[4] for key in integrate._BLOCKS if key[0] == id(loops) and not key[2]} >= {True, False}
    assert_same_state(*states)
    monkeypatch.setattr(integrate, "STREAM_PARALLEL_MIN_ATOMS", 0)
    assert not integrate.streams_parallel(96)  # a box too small for the parallel compilation stays serial


def test_four_blocks_of_thirteen_layers_give_the_same_forces_bit_for_bit_on_any_thread_count(morse):
    """13 x-layers: the pair pass runs four blocks of equal rows (see energy.row_blocks), not whole layers."""
    types, positions, box = replicated_water(morse, (7, 2, 2))  # 2,688 atoms
    nl = partition.neighbor_list(positions, box, morse.CUTOFF_ANGSTROM, 0.8, half=True)
    assert nl.cells_per_side[0] == 13
    blocks = energy.row_blocks(nl.layer_start)
    assert len(blocks) - 1 == 4 and len(set(np.diff(blocks).tolist())) == 1
    for kernel in (morse, tabulate.tabulate_kernel_module(morse)):
        loops = energy.force_loops(kernel)
        work = energy.workspace(loops, len(positions), box)
        args = (positions, types, box, nl.neighbors, nl.counts, nl.order, nl.layer_start, nl.image,
                nl.wrap_angstrom, loops.cutoff_angstrom, 0.0, work)
        serial = loops.half[0](*args)
        for _ in each_thread_count():
            for parallel in (loops.half[1](*args), loops.half_forces_only[1](*args)):
                assert np.array_equal(serial[0], parallel[0])


def test_a_big_box_copied_in_and_out_of_cell_order_on_threads_gives_the_same_forces_bit_for_bit(morse):
    """From energy.SWEEP_PARALLEL_MIN_ATOMS atoms the pass copies positions into cell order and forces back on
    threads: the same numbers as the serial pass, on one thread or two."""
    types, positions, box = replicated_water(morse, (8, 8, 7))  # 43,008 atoms: sweeps on threads too
    assert len(positions) >= energy.SWEEP_PARALLEL_MIN_ATOMS
    nl = partition.neighbor_list(positions, box, morse.CUTOFF_ANGSTROM, 1.0, half=True)
    loops = energy.force_loops(morse)
    work = energy.workspace(loops, len(positions), box)
    args = (positions, types, box, nl.neighbors, nl.counts, nl.order, nl.layer_start, nl.image, nl.wrap_angstrom,
            loops.cutoff_angstrom, 0.0, work)
    serial = loops.half[0](*args)
    for _ in each_thread_count():
        full, forces_only = loops.half[1](*args), loops.half_forces_only[1](*args)
        for name in (0, 1, 3, 4):  # forces, losses, nearest distances, energy
            assert np.array_equal(serial[name], full[name])
        assert np.array_equal(serial[0], forces_only[0]) and serial[7] == forces_only[7] == full[7]


def test_a_block_that_stops_early_returns_the_complete_state_of_its_last_good_step(morse, monkeypatch):
    """A block stops before a step that fails a check; the state it returns came from a forces-only step."""
    monkeypatch.setattr(integrate, "FORCES_ONLY_MIN_ATOMS", 0)
    species, positions, box, velocities = water32_frame()
    types = md.atom_types(morse, species)
    masses = np.asarray(morse.MASSES_AMU)[types]
    integrator = md.make_integrator(energy.make_force_fn(morse, types, box), "nve", 0.5, 300.0, 100.0, 0.01, 0)
    start = integrator.init(positions, setup.remove_com_momentum(velocities, masses), masses)
    states, closest = [start], []
    for _ in range(40):
        states.append(integrator.step(states[-1]))
        closest.append(states[-1].force.nearest_angstrom.min())
    # the first step after the 5th that brings two atoms closer than any step before it
    fail = next(k for k in range(5, 40) if closest[k] < min(closest[:k]))
    floor = 0.5 * (closest[fail] + min(closest[:fail]))
    state, done, _ = integrator.run(start, 40, np.inf, floor)
    assert done == fail  # steps 1 … fail, then step fail + 1 is refused
    assert_same_state(state, states[fail])
    assert np.array_equal(state.force.nearest_angstrom, states[fail].force.nearest_angstrom)


def test_blocks_reuse_the_rows_of_lists_nothing_holds_and_never_those_of_a_kept_state(morse):
    """A rebuild in a compiled block writes into the rows of a list an earlier block replaced, but only
    when no state (nor view) still holds them: kept states keep their lists, and the steps are the same."""
    types, positions, box = replicated_water(morse, (3, 2, 2))
    masses = np.asarray(morse.MASSES_AMU)[types]
    velocities = setup.maxwell_boltzmann(masses, 600.0, seed=5)
    nve = integrate.nve(energy.make_force_fn(morse, types, box), 0.5)
    start = nve.init(positions, velocities, masses)
    integrate._RETIRED_ROWS.clear()
    # every state kept: each rebuild needs fresh rows, and every kept list stays as it was built
    kept, snapshots = [start], [start.neighbors.neighbors.copy()]
    for _ in range(6):
        state, done, _ = nve.run(kept[-1], 10, np.inf, 0.0)
        assert done == 10
        kept.append(state)
        snapshots.append(state.neighbors.neighbors.copy())
    assert len({s.neighbors.neighbors.ctypes.data for s in kept}) > 3  # the blocks rebuilt their lists
    assert len({id(s.neighbors.neighbors) for s in kept}) == len({s.neighbors.neighbors.ctypes.data for s in kept})
    for state, rows in zip(kept, snapshots):
        assert np.array_equal(state.neighbors.neighbors, rows)
    # the same 60 steps in blocks of 5, each state dropped as md.simulate drops it: a rebuild then fills
    # the rows the block before it retired
    state, reused = nve.init(positions, velocities, masses), []
    for _ in range(12):
        before = integrate._RETIRED_ROWS[0][0].ctypes.data if integrate._RETIRED_ROWS else None
        state, done, builds = nve.run(state, 5, np.inf, 0.0)
        assert done == 5
        reused.append(builds > 0 and state.neighbors.neighbors.ctypes.data == before)
    assert sum(reused) >= 2
    assert_same_state(state, kept[-1])
    assert np.array_equal(state.neighbors.neighbors, kept[-1].neighbors.neighbors)


def test_retired_rows_are_lent_only_when_nothing_holds_them():
    """The pool of replaced lists' rows lends none that an array, a view of one or a list still holds."""
    integrate._RETIRED_ROWS.clear()
    try:
        neighbors, image = np.zeros((6, 4), dtype=np.int32), np.zeros((6, 4), dtype=np.int8)
        integrate._retire_rows((neighbors, image))
        assert integrate._spare_rows(6, 4) is partition.NO_SPARE_ROWS  # both arrays held here
        del neighbors
        view = image[1:3]
        del image
        assert integrate._spare_rows(6, 4) is partition.NO_SPARE_ROWS  # a view holds the image rows
        assert integrate._spare_rows(6, 5) is partition.NO_SPARE_ROWS  # nor rows of another width
        del view
        rows = integrate._spare_rows(6, 4)
        assert rows is not partition.NO_SPARE_ROWS and rows[0].shape == (6, 4) and not integrate._RETIRED_ROWS
        integrate._retire_rows((rows[0][:, :2], rows[1][:, :2]))  # views of rows: never pooled
        assert not integrate._RETIRED_ROWS
    finally:
        integrate._RETIRED_ROWS.clear()
