"""Forces from the neighbour loop: equal to the kernels' brute-force reference, and −∇E."""

import types as types_module
from pathlib import Path

import numba
import numpy as np
import pytest

from simulate import energy, partition, setup
from simulate.kernels import KernelModuleError, check_kernel_module, load_kernel_module
from simulate.md import atom_types
from tests.kernel_examples.starting_frames import water32_frame

EXAMPLES = Path(__file__).parent / "kernel_examples"


@pytest.fixture(scope="module")
def morse():
    return load_kernel_module(EXAMPLES / "morse_water.py")


@pytest.fixture(scope="module")
def triplet():
    return load_kernel_module(EXAMPLES / "sw_triplet.py")


@pytest.fixture(scope="module")
def argon():
    return load_kernel_module(EXAMPLES / "lj_argon.py")


def forces_of(kernel, species, positions, box, skin=1.0):
    force_fn = energy.make_force_fn(kernel, atom_types(kernel, species), box, skin)
    return force_fn(positions, None)[1]


def assert_matches_reference(kernel, species, positions, box):
    result = forces_of(kernel, species, positions, box)
    e_ref, f_ref, loss_ref = kernel.energy_forces(positions, atom_types(kernel, species), box)
    assert result.energy_ev == pytest.approx(e_ref, rel=1e-12, abs=1e-10)
    np.testing.assert_allclose(result.forces_ev_per_angstrom, f_ref, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(result.atom_loss_ev, loss_ref, rtol=1e-10, atol=1e-10)
    return result


def test_forces_on_the_real_water_frame_equal_brute_force(morse):
    species, positions, box, _ = water32_frame()
    result = assert_matches_reference(morse, species, positions, box)
    assert np.abs(result.forces_ev_per_angstrom).max() > 1.0  # a real, non-trivial configuration


def test_cell_list_forces_on_a_replicated_box_equal_brute_force(morse):
    species, positions, box, _ = water32_frame()
    positions, species, box = setup.replicate(positions, species, box, (3, 2, 2))  # 1152 atoms, cell lists
    assert_matches_reference(morse, species, positions, box)


@pytest.mark.parametrize("edge", [17.01, 20.0, 26.0])
def test_forces_of_random_liquids_equal_brute_force_down_to_twice_the_cutoff(argon, edge):
    # LJ cutoff 8.5 Å: at 17.01 Å the cutoff is just inside half the box
    rng = np.random.default_rng(int(edge))
    n = 150
    grid = np.stack(np.meshgrid(*[np.arange(6)] * 3, indexing="ij"), -1).reshape(-1, 3)
    # one atom per grid cell, jittered: random but never overlapping
    positions = (grid[rng.choice(len(grid), n, replace=False)] + rng.uniform(0.35, 0.65, (n, 3))) * edge / 6
    positions += rng.integers(-2, 3, (n, 3)) * edge  # unwrapped, as after a long run
    assert_matches_reference(argon, ["Ar"] * n, positions, np.full(3, edge))


@pytest.mark.parametrize("name", ["sw_triplet.py", "separable_triplet.py"])
def test_three_body_forces_equal_brute_force(name):
    kernel = load_kernel_module(EXAMPLES / name)
    species, positions, box, _ = water32_frame()
    result = assert_matches_reference(kernel, species, positions, box)
    pair_only = forces_of(load_kernel_module(EXAMPLES / "morse_water.py"), species, positions, box)
    assert abs(result.energy_ev - pair_only.energy_ev) > 1e-3  # the triplet term is really there


def test_three_body_forces_from_a_cell_list_equal_brute_force_across_the_box_faces():
    # a box with a cell list: each short row holds atoms and image codes, and each centre measures its
    # neighbours again (by moments here; triplet by triplet, against these moments, in the test below);
    # atoms unwrapped by random box multiples, so that a pair's image code, from either end, is what
    # gives its distance
    kernel = load_kernel_module(EXAMPLES / "separable_triplet.py")
    species, positions, box, _ = water32_frame()
    positions, species, box = setup.replicate(positions, species, box, (2, 2, 2))
    rng = np.random.default_rng(11)
    positions = positions + rng.integers(-2, 3, positions.shape) * box
    neighbors = partition.neighbor_list(positions, box, energy.interaction_cutoff_angstrom(kernel), 1.0, half=True)
    assert neighbors.cells_per_side != (1, 1, 1) and neighbors.neighbors.shape[1] > 0  # a list, not every pair
    result = assert_matches_reference(kernel, species, positions, box)
    pair_only = forces_of(load_kernel_module(EXAMPLES / "morse_water.py"), species, positions, box)
    assert abs(result.energy_ev - pair_only.energy_ev) > 1e-2  # the triplet term is really there


@pytest.mark.parametrize("name", ["morse_water.py", "sw_triplet.py", "separable_triplet.py"])
def test_forces_are_minus_the_energy_gradient(name):
    kernel = load_kernel_module(EXAMPLES / name)
    species, positions, box, _ = water32_frame()
    result = forces_of(kernel, species, positions, box)
    h = 1e-5
    for atom in (0, 1, 2, 40, 95):
        for axis in range(3):
            plus, minus = positions.copy(), positions.copy()
            plus[atom, axis] += h
            minus[atom, axis] -= h
            derivative = (forces_of(kernel, species, plus, box).energy_ev
                          - forces_of(kernel, species, minus, box).energy_ev) / (2 * h)
            assert result.forces_ev_per_angstrom[atom, axis] == pytest.approx(-derivative, abs=2e-5)


@pytest.mark.parametrize("name", ["morse_water.py", "sw_triplet.py", "separable_triplet.py"])
def test_virial_is_minus_the_energy_derivative_under_uniform_scaling(name):
    # W = Σ r·F = −dU(λq, λL)/dλ at λ = 1 (Allen & Tildesley 2.61)
    kernel = load_kernel_module(EXAMPLES / name)
    species, positions, box, _ = water32_frame()
    h = 1e-6
    up = forces_of(kernel, species, positions * (1 + h), box * (1 + h)).energy_ev
    down = forces_of(kernel, species, positions * (1 - h), box * (1 - h)).energy_ev
    virial = forces_of(kernel, species, positions, box).virial_ev
    assert virial == pytest.approx(-(up - down) / (2 * h), rel=1e-5, abs=1e-5)


def test_replicated_supercell_has_exactly_the_replicated_energy_per_atom(morse):
    species, positions, box, _ = water32_frame()
    one = forces_of(morse, species, positions, box)
    big_positions, big_species, big_box = setup.replicate(positions, species, box, (2, 3, 2))
    many = forces_of(morse, big_species, big_positions, big_box)
    assert many.energy_ev / len(big_species) == pytest.approx(one.energy_ev / len(species), rel=1e-12)
    np.testing.assert_allclose(many.forces_ev_per_angstrom[: len(species)], one.forces_ev_per_angstrom,
                               atol=1e-10)


def test_atom_losses_sum_to_twice_the_pair_energy(morse):
    species, positions, box, _ = water32_frame()
    result = forces_of(morse, species, positions, box)
    assert result.atom_loss_ev.sum() == pytest.approx(2 * result.energy_ev, rel=1e-12)


def moved_by_less_than_half_the_skin(positions, seed, skin=1.0):
    rng = np.random.default_rng(seed)
    step = rng.normal(size=positions.shape)
    step *= 0.49 * skin / np.linalg.norm(step, axis=1, keepdims=True) * rng.uniform(0, 1, (len(positions), 1))
    return positions + step


def assert_stale_list_matches_reference(kernel, species, positions, box, moved):
    types = atom_types(kernel, species)
    force_fn = energy.make_force_fn(kernel, types, box)
    neighbors, _ = force_fn(positions, None)
    kept, result = force_fn(moved, neighbors)
    assert kept is neighbors  # the list of the old positions, with its images, serves the new ones
    e_ref, f_ref, loss_ref = kernel.energy_forces(moved, types, box)
    assert result.energy_ev == pytest.approx(e_ref, rel=1e-12, abs=1e-10)
    np.testing.assert_allclose(result.forces_ev_per_angstrom, f_ref, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(result.atom_loss_ev, loss_ref, rtol=1e-10, atol=1e-10)
    return result


def test_a_pair_whose_nearest_image_changes_between_builds_keeps_its_exact_force(argon):
    # box 17.01 Å, LJ cutoff 8.5 Å, list reach 9.5 Å: the pair 8.3 Å apart is listed through both images
    # (8.3 and 8.71 Å); moved 8.78 Å apart, it interacts through the other image, 8.23 Å away
    box = np.full(3, 17.01)
    positions = np.array([[1.0, 5.0, 5.0], [9.3, 5.0, 5.0]])
    moved = positions + [[-0.24, 0.0, 0.0], [0.24, 0.0, 0.0]]
    result = assert_stale_list_matches_reference(argon, ["Ar", "Ar"], positions, box, moved)
    assert result.forces_ev_per_angstrom[0, 0] != 0.0
    assert result.nearest_angstrom[0] == pytest.approx(17.01 - 8.78)


# 96 atoms: every pair, no list; 288 in a slab of one 9.9 Å cell: a brute-force list; 1152: a cell list
@pytest.mark.parametrize("repeats", [(1, 1, 1), (3, 1, 1), (3, 2, 2)])
def test_forces_from_a_list_built_before_the_atoms_moved_equal_brute_force(morse, repeats):
    species, positions, box, _ = water32_frame()
    positions, species, box = setup.replicate(positions, species, box, repeats)
    kinds = {(1, 1, 1): "every pair", (3, 1, 1): "brute force", (3, 2, 2): "cells"}
    nl = partition.neighbor_list(positions, box, morse.CUTOFF_ANGSTROM, 1.0, half=True)
    kind = "every pair" if partition.lists_every_pair(nl) else "brute force" if nl.cells_per_side == (1, 1, 1) else "cells"
    assert kind == kinds[repeats]
    assert_stale_list_matches_reference(morse, species, positions, box, moved_by_less_than_half_the_skin(positions, 3))


# --- separable three-body laws: moments ------------------------------------------------------------


# 192 atoms: a half pass over every pair (short rows of unit vectors); 768: over a cell list (short rows
# of atoms and image codes, measured again by each centre, its padded lanes included)
@pytest.mark.parametrize(("half", "parallel", "repeats"),
                         [(True, True, (2, 1, 1)), (True, False, (2, 2, 2)), (False, False, (2, 1, 1))])
def test_separable_triplets_summed_by_moments_equal_the_triplet_by_triplet_sums(half, parallel, repeats):
    # the moment pass (O(M) per centre) against the triplet loop (O(M²)) on the same list: a cubic in
    # cos θ, radial factors that depend on the other neighbour's species, every species triple
    kernel = load_kernel_module(EXAMPLES / "separable_triplet.py")
    species, positions, box, _ = water32_frame()
    positions, species, box = setup.replicate(positions, species, box, repeats)
    positions = positions + np.random.default_rng(3).normal(0.0, 0.05, positions.shape)
    types = atom_types(kernel, species)
    cutoff = energy.interaction_cutoff_angstrom(kernel)
    neighbors = partition.neighbor_list(positions, box, cutoff, 1.0, half=half)
    assert (neighbors.neighbors.shape[1] == 0) == (half and len(positions) <= partition.ALL_PAIRS_MAX_ATOMS)
    outputs = []
    for moments in (True, False):
        loops = energy.force_loops(kernel, triplet_moments=moments)
        work = energy.workspace(loops, len(positions), neighbors.box_angstrom, capacity3=48)
        if half:
            out = loops.half[parallel](positions, types, box, neighbors.neighbors, neighbors.counts, neighbors.order,
                                       neighbors.layer_start, neighbors.image, neighbors.wrap_angstrom,
                                       loops.cutoff_angstrom, loops.threebody_cutoff_angstrom, work)
        else:
            out = loops.full[parallel](positions, types, box, neighbors.neighbors, neighbors.counts, neighbors.image,
                                       neighbors.wrap_angstrom, loops.cutoff_angstrom,
                                       loops.threebody_cutoff_angstrom, work)
        assert out[6] <= 48  # the short rows held every pair within r_3, so the three-body passes ran
        outputs.append(tuple(np.copy(v) for v in out[:6]))
    (f_m, loss_m, _, _, e_m, w_m), (f_t, loss_t, _, _, e_t, w_t) = outputs
    pair_only = forces_of(load_kernel_module(EXAMPLES / "morse_water.py"), species, positions, box)
    assert abs(e_t - pair_only.energy_ev) > 1.0  # the triplets carry real energy
    assert e_m == pytest.approx(e_t, rel=1e-13)
    assert w_m == pytest.approx(w_t, rel=1e-12)
    np.testing.assert_allclose(f_m, f_t, rtol=0, atol=1e-12 * np.abs(f_t).max())
    np.testing.assert_allclose(loss_m, loss_t, rtol=0, atol=1e-12 * np.abs(loss_t).max())


SYNTHETIC_R3 = 3.0  # Å, the three-body cutoff of the synthetic laws below


def _synthetic_separable_module(n_species, degree, seed):
    """A separable law of ``n_species`` species and a polynomial of ``degree`` in cos θ with random
    coefficients (symmetric in the two neighbours): R = a_kjo (1 − r²/r_3²)³, no pair law."""
    rng = np.random.default_rng(seed)
    scale = rng.uniform(0.5, 1.5, (n_species,) * 3)
    poly = rng.normal(size=(n_species,) * 3 + (degree + 1,))
    poly = poly + poly.transpose(0, 2, 1, 3)
    r3 = SYNTHETIC_R3

    @numba.njit
    def radial(k, j, o, r):
        if r >= r3:
            return 0.0, 0.0
        x = 1.0 - r * r / (r3 * r3)
        return scale[k, j, o] * x * x * x, scale[k, j, o] * 3.0 * x * x * (-2.0 * r / (r3 * r3))

    @numba.njit
    def triplet(k, j, l, r1, r2, c):
        a, da = radial(k, j, l, r1)
        b, db = radial(k, l, j, r2)
        p = 0.0
        dp = 0.0
        for n in range(degree + 1):
            p += poly[k, j, l, n] * c**n
            if n >= 1:
                dp += n * poly[k, j, l, n] * c ** (n - 1)
        return a * b * p, da * b * p, a * db * p, a * b * dp

    @numba.njit
    def pair(ti, tj, r):
        return 0.0, 0.0

    module = types_module.ModuleType(f"synthetic_separable_{n_species}_{degree}")
    module.SPECIES = tuple("ABC"[:n_species])
    module.MASSES_AMU = (1.0,) * n_species
    module.CUTOFF_ANGSTROM = 3.5
    module.THREEBODY_CUTOFF_ANGSTROM = r3
    module.pair_energy_force = pair
    module.triplet_energy_gradient = triplet
    module.triplet_radial = radial
    module.TRIPLET_COS_POLYNOMIAL = poly
    return module


@pytest.mark.parametrize(("n_species", "degree"), [(1, 0), (3, 1), (2, 2), (3, 3)])
def test_moments_by_distinct_components_equal_the_triplet_sums_for_every_degree_and_species_count(n_species,
                                                                                                  degree):
    # the moment pass keeps each tensor by its distinct components, written out per degree: every degree
    # and one, two and three species (one of them absent) against the triplet loop
    kernel = _synthetic_separable_module(n_species, degree, seed=10 * n_species + degree)
    rng = np.random.default_rng(5)
    n = 60
    box = np.array([8.0, 8.0, 8.0])
    grid = np.stack(np.meshgrid(*[np.arange(4)] * 3, indexing="ij"), -1).reshape(-1, 3)[:n] * 2.0
    positions = np.mod(grid + rng.normal(0.0, 0.35, (n, 3)), box)
    positions[0] = [7.0, 7.0, 7.0]
    types = (np.arange(n) % n_species).astype(np.int64)
    if n_species == 3:
        types[types == 1] = 2  # no atom of the middle species
    # the moment pass runs four neighbours at a time, each species' run padded to a multiple of four:
    # runs of every length mod 4 occur here (and empty ones, with three species)
    d = positions[:, None, :] - positions[None, :, :]
    d -= box * np.rint(d / box)
    within = (np.einsum("ijk,ijk->ij", d, d) < SYNTHETIC_R3**2) & ~np.eye(n, dtype=bool)
    runs = np.stack([within[:, types == b].sum(axis=1) for b in range(n_species)], axis=1)
    assert set(np.unique(runs % 4)) == {0, 1, 2, 3} and np.any(runs >= 5)
    assert n_species < 3 or np.all(runs[:, 1] == 0)  # three species: every run of the absent one empty
    nl = partition.neighbor_list(positions, box, kernel.CUTOFF_ANGSTROM, 0.5, half=True)
    out = {}
    for moments in (True, False):
        loops = energy.force_loops(kernel, triplet_moments=moments)
        work = energy.workspace(loops, n, box, capacity3=40)
        args = (positions, types, box, nl.neighbors, nl.counts, nl.order, nl.layer_start, nl.image,
                nl.wrap_angstrom, loops.cutoff_angstrom, loops.threebody_cutoff_angstrom, work)
        full = tuple(np.copy(v) for v in loops.half[0](*args))
        forces_only = loops.half_forces_only[0](*args)
        assert np.array_equal(full[0], forces_only[0])  # the forces-only pass leaves out energies, not bits
        assert 0 < full[6] <= 40
        out[moments] = full
    (f_m, loss_m, _, _, e_m, w_m), (f_t, loss_t, _, _, e_t, w_t) = out[True][:6], out[False][:6]
    assert abs(e_t) > 1e-3  # the triplets carry energy
    assert e_m == pytest.approx(e_t, rel=1e-12)
    assert w_m == pytest.approx(w_t, rel=1e-11)
    np.testing.assert_allclose(f_m, f_t, rtol=0, atol=1e-12 * np.abs(f_t).max())
    np.testing.assert_allclose(loss_m, loss_t, rtol=0, atol=1e-12 * np.abs(loss_t).max())


def _separable_module(**changes):
    """The separable example module with some of its names replaced (a module object, not a file)."""
    source = load_kernel_module(EXAMPLES / "separable_triplet.py")
    module = types_module.ModuleType("changed_separable_triplet")
    for name in dir(source):
        if not name.startswith("__"):
            setattr(module, name, getattr(source, name))
    for name, value in changes.items():
        setattr(module, name, value)
    return module


def test_a_separable_form_that_does_not_reproduce_the_triplet_law_is_refused():
    p = np.array(load_kernel_module(EXAMPLES / "separable_triplet.py").TRIPLET_COS_POLYNOMIAL)
    wrong = p.copy()
    wrong[1, 0, 1, 2] += 0.01  # and its mirror, so only the values are wrong
    wrong[1, 1, 0, 2] += 0.01
    with pytest.raises(KernelModuleError, match="triplet_radial × TRIPLET_COS_POLYNOMIAL gives"):
        check_kernel_module(_separable_module(TRIPLET_COS_POLYNOMIAL=wrong), "bad.py")
    lopsided = p.copy()
    lopsided[0, 0, 1, 0] += 0.01
    with pytest.raises(KernelModuleError, match="symmetric"):
        check_kernel_module(_separable_module(TRIPLET_COS_POLYNOMIAL=lopsided), "bad.py")
    with pytest.raises(KernelModuleError, match="D ≤ 3"):
        check_kernel_module(_separable_module(TRIPLET_COS_POLYNOMIAL=np.zeros((2, 2, 2, 5))), "bad.py")
    half = _separable_module()
    del half.triplet_radial
    with pytest.raises(KernelModuleError, match="come together"):
        check_kernel_module(half, "bad.py")
    check_kernel_module(_separable_module(), "good.py")  # the unchanged module passes



def test_a_radial_factor_wrong_only_at_bond_lengths_is_refused():
    # the moment sums call triplet_radial, not triplet_energy_gradient: the check must reach the short
    # legs (an O–H bond is 0.9–1.05 Å) where a wrong factor would go unseen in the forces' own tests
    closed = load_kernel_module(EXAMPLES / "separable_triplet.py").triplet_radial

    @numba.njit
    def doubled_below_a_bond(type_k, type_j, type_other, r):
        value, slope = closed(type_k, type_j, type_other, r)
        return (2.0 * value, 2.0 * slope) if r < 0.9 else (value, slope)

    with pytest.raises(KernelModuleError, match="triplet_radial × TRIPLET_COS_POLYNOMIAL gives"):
        check_kernel_module(_separable_module(triplet_radial=doubled_below_a_bond), "bad.py")

def test_a_two_leg_radial_that_differs_from_the_one_leg_radial_is_refused():
    # the moment sums read every leg through triplet_radial_two where a module has one: it must be
    # triplet_radial of the legs o and o + 1, and (0, 0) for the leg past the last species
    closed = load_kernel_module(EXAMPLES / "separable_triplet.py").triplet_radial

    @numba.njit
    def two(type_k, type_j, type_other, r):
        a, da = closed(type_k, type_j, type_other, r)
        b, db = closed(type_k, type_j, type_other + 1, r) if type_other + 1 < 2 else (0.0, 0.0)
        return a, da, b, db

    @numba.njit
    def swapped(type_k, type_j, type_other, r):
        a, da, b, db = two(type_k, type_j, type_other, r)
        return b, db, a, da

    @numba.njit
    def past_the_last(type_k, type_j, type_other, r):
        a, da, b, db = two(type_k, type_j, type_other, r)
        return a, da, b, db + (1e-300 if type_other == 1 else 0.0)

    check_kernel_module(_separable_module(triplet_radial_two=two), "good.py")
    for bad in (swapped, past_the_last):
        with pytest.raises(KernelModuleError, match="is not triplet_radial of the legs"):
            check_kernel_module(_separable_module(triplet_radial_two=bad), "bad.py")


# --- the blocks of the parallel half-list pass -----------------------------------------------------------


def _layers_written(layer_start, first_row, last_row):
    """The x-layers the rows [first_row, last_row) write to: their own and the next (the forward half stencil)."""
    n_layers = len(layer_start) - 1
    own = np.searchsorted(layer_start, np.arange(first_row, last_row), side="right") - 1
    return set(own.tolist()) | set(((own + 1) % n_layers).tolist())


@pytest.mark.parametrize("n_layers", range(1, 41))
def test_blocks_of_one_phase_never_write_the_same_layer(n_layers):
    rng = np.random.default_rng(n_layers)
    for trial in range(25):
        sizes = rng.integers(0 if trial % 5 == 4 else 20, 60, n_layers)  # some with empty layers
        layer_start = np.concatenate([[0], np.cumsum(sizes)])
        starts = energy.row_blocks(layer_start)
        n_blocks = len(starts) - 1
        assert starts[0] == 0 and starts[-1] == layer_start[-1] and np.all(np.diff(starts) >= 0)
        assert n_blocks == 1 or n_blocks % 2 == 0
        written = [_layers_written(layer_start, starts[b], starts[b + 1]) for b in range(n_blocks)]
        for a in range(n_blocks):
            for b in range(a + 2, n_blocks, 2):  # the same phase
                assert not written[a] & written[b], (sizes.tolist(), starts.tolist(), a, b)


def test_seven_even_layers_make_four_even_blocks():
    # whole layers would be blocks of 1, 2, 2, 2 layers: one thread would do a layer alone in phase 0
    starts = energy.row_blocks(np.arange(8) * 100)
    assert starts.tolist() == [0, 175, 350, 525, 700]
    assert energy.row_blocks(np.arange(6) * 100).tolist() == [0, 100, 200, 300, 500]  # 1¼ layers would break the rule


def test_thirteen_even_layers_make_four_even_blocks_not_eight_uneven_ones():
    # eight blocks of 1⅝ layers break the rule; eight of whole layers (1, 2, 1, 2, 2, 1, 2, 2) would give two
    # threads 2 and 4 layers in the first phase
    assert energy.row_blocks(np.arange(14) * 100).tolist() == [0, 325, 650, 975, 1300]
    assert energy.row_blocks(np.arange(17) * 100).tolist() == list(range(0, 1700, 100))  # sixteen blocks of one layer
    # ten layers: eight blocks of whole layers already split both phases evenly between two threads, and keep
    # four blocks a phase for more threads
    assert energy.row_blocks(np.arange(11) * 100).tolist() == [0, 100, 200, 300, 500, 600, 700, 800, 1000]


@pytest.mark.parametrize("n_layers", range(1, 61))
def test_three_body_centres_of_one_phase_never_reach_the_same_atom(n_layers):
    # a centre writes to its own layer and the two beside it (cyclically): layers of one phase must be three
    # or more apart, so that no two threads add to one atom's force, and every layer must run once
    phase_start, layers = energy.centre_phases(n_layers)
    assert phase_start[0] == 0 and phase_start[-1] == n_layers and np.all(np.diff(phase_start) > 0)
    assert sorted(layers.tolist()) == list(range(n_layers))
    reached = [{(a + d) % n_layers for d in (-1, 0, 1)} for a in range(n_layers)]
    for k in range(len(phase_start) - 1):
        phase = layers[phase_start[k]:phase_start[k + 1]].tolist()
        for i, a in enumerate(phase):
            for b in phase[i + 1:]:
                assert not reached[a] & reached[b], (n_layers, phase)


@pytest.mark.parametrize("n_layers", [1, 2, 3, 5, 6, 7, 13])
def test_three_body_tasks_take_every_row_once_into_the_forces_or_arrays_of_their_own(n_layers):
    layer_start = np.concatenate([[0], np.cumsum(np.random.default_rng(n_layers).integers(20, 60, n_layers))])
    phase_start, first, last, out = energy.centre_tasks(layer_start)
    rows = np.concatenate([np.arange(a, b) for a, b in zip(first, last)])
    assert sorted(rows.tolist()) == list(range(layer_start[-1]))
    if 1 < n_layers < energy.PHASED_MIN_LAYERS:
        # phases of one layer each would leave a thread idle: two halves of the rows, each into its own array
        assert phase_start.tolist() == [0, 2] and out.tolist() == [0, 1]
        assert abs((last[0] - first[0]) - (last[1] - first[1])) <= 1
    else:
        assert np.all(out == -1)  # into the forces, a layer a task, in the phases of centre_phases
        phases, layers = energy.centre_phases(n_layers)
        assert phase_start.tolist() == phases.tolist()
        assert first.tolist() == layer_start[layers].tolist() and last.tolist() == layer_start[layers + 1].tolist()


def test_centre_phases_split_evenly_between_two_threads_where_the_layers_allow():
    for n_layers, sizes in [(6, [2, 2, 2]), (16, [4, 4, 4, 4]), (10, [2, 2, 2, 2, 2]), (13, [2, 2, 2, 2, 2, 2, 1])]:
        phase_start, _ = energy.centre_phases(n_layers)
        assert np.diff(phase_start).tolist() == sizes
    assert np.diff(energy.centre_phases(1)[0]).tolist() == [1]  # a small box's one layer: its centres in order


# --- fused multiply-adds -----------------------------------------------------------------------------


@numba.njit
def _shared_product_law(type_i, type_j, r):
    """A Morse-like law whose energy and force share the product x·x: fused into an FMA only where
    the energy is gone, it would give the forces-only pass other bits than the full one."""
    if r >= 6.0:
        return 0.0, 0.0
    x = np.exp(-(r - 3.8))
    return 0.01 * (x * x - 2.0 * x), 0.02 * (x * x - x) / r


@pytest.mark.parametrize("cells", [3, 5])  # 108 atoms: every pair; 500: a cell list
def test_forces_only_pass_gives_the_full_pass_forces_bit_for_bit_unless_fusion_is_promised_safe(cells):
    from simulate import tabulate
    from tests.kernel_examples.starting_frames import argon_fcc

    module = types_module.ModuleType("shared_product")
    module.SPECIES, module.MASSES_AMU, module.CUTOFF_ANGSTROM = ("Ar",), (39.948,), 6.0
    module.pair_energy_force = _shared_product_law
    _, positions, box = argon_fcc(cells)
    positions = positions + np.random.default_rng(1).normal(0.0, 0.1, positions.shape)
    types = np.zeros(len(positions), dtype=np.int64)
    neighbors = partition.neighbor_list(positions, box, 6.0, 1.0, half=True)
    assert partition.lists_every_pair(neighbors) == (cells == 3)
    tabulated = tabulate.tabulate_kernel_module(_with_reference(module))
    assert tabulated.FUSED_MULTIPLY_ADD is True and not hasattr(module, "FUSED_MULTIPLY_ADD")
    # the tables' loops fuse (FMA), the closed form's do not
    assert energy.force_loops(tabulated).half[0].targetoptions.get("fastmath")
    assert not energy.force_loops(module).half[0].targetoptions.get("fastmath")
    for kernel in (module, tabulated):
        loops = energy.force_loops(kernel)
        work = energy.workspace(loops, len(positions), neighbors.box_angstrom)
        args = (positions, types, box, neighbors.neighbors, neighbors.counts, neighbors.order, neighbors.layer_start,
                neighbors.image, neighbors.wrap_angstrom, 6.0, 0.0, work)
        for parallel in (False, True):
            full = loops.half[parallel](*args)[0].copy()
            forces_only = loops.half_forces_only[parallel](*args)[0].copy()
            assert np.array_equal(full, forces_only)
            assert np.abs(full).max() > 0.01


def _with_reference(module):
    """``module`` with the O(N²) reference the kernel contract asks for."""
    from simulate.reference import compile_reference

    module.energy_forces = compile_reference({"pair_energy_force": module.pair_energy_force,
                                              "CUTOFF_ANGSTROM": module.CUTOFF_ANGSTROM}, molecular=False,
                                             threebody=False)
    return module
