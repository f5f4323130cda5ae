"""Neighbour lists: cell lists find exactly the pairs a brute-force minimum-image search finds."""

import types

import numba
import numpy as np
import pytest

from simulate import partition
from simulate.space import box_lengths, minimum_image


def reference_pairs(positions, box, list_cutoff):
    d = minimum_image(positions[:, None, :] - positions[None, :, :], np.diag(box))
    r = np.sqrt((d**2).sum(-1))
    np.fill_diagonal(r, np.inf)
    return {(int(i), int(j)) for i, j in zip(*np.nonzero(r < list_cutoff))}


def listed_pairs(nl):
    return {(i, int(j)) for i in range(len(nl.counts)) for j in nl.neighbors[i, : nl.counts[i]]}


def random_positions(n, box, seed):
    # unwrapped on purpose: atoms may sit several boxes away, as after a long run
    return np.random.default_rng(seed).uniform(-2, 3, (n, 3)) * box


@pytest.mark.parametrize(("box", "cutoff", "cells"), [
    ((16.0, 17.0, 18.5), 4.0, (3, 3, 3)),
    ((16.6, 24.0, 33.5), 4.5, (3, 4, 6)),  # three cells on one side, list cutoff a third of it
])
@pytest.mark.parametrize("half", [False, True])
def test_cell_list_finds_exactly_the_brute_force_pairs(box, cutoff, cells, half):
    box = np.array(box)
    positions = random_positions(600, box, 1)
    nl = partition.neighbor_list(positions, box, cutoff_angstrom=cutoff, skin_angstrom=1.0, half=half)
    assert nl.cells_per_side == cells
    listed = listed_pairs(nl)
    if half:  # rows in cell order, each pair once: back to atom indices, both ends
        listed = {(int(nl.order[p]), int(nl.order[q])) for p, q in listed}
        assert len(listed) == int(nl.counts.sum())
        listed |= {(j, i) for i, j in listed}
    assert listed == reference_pairs(positions, box, cutoff + 1.0)
    assert np.all(nl.counts <= nl.neighbors.shape[1])


@pytest.mark.parametrize("edge", [9.1, 12.0, 14.9])
def test_small_box_falls_back_to_an_exact_search(edge):
    # cutoff + skin = 5.5 Å: fewer than three cells per side, and even beyond half the box at 9.1 Å
    box = np.array([edge, 15.5, edge])
    positions = random_positions(150, box, 2)
    nl = partition.neighbor_list(positions, box, cutoff_angstrom=4.5, skin_angstrom=1.0)
    assert nl.cells_per_side == (1, 1, 1)
    assert listed_pairs(nl) == reference_pairs(positions, box, 5.5)


def test_list_is_rebuilt_exactly_when_an_atom_moved_half_the_skin():
    box = np.full(3, 16.0)
    positions = random_positions(300, box, 3)
    nl = partition.neighbor_list(positions, box, 4.0, skin_angstrom=1.0)
    moved = positions.copy()
    moved[17, 0] += 0.49
    assert partition.update(nl, moved) is nl
    moved[17, 0] += 0.02
    rebuilt = partition.update(nl, moved)
    assert rebuilt is not nl
    assert listed_pairs(rebuilt) == reference_pairs(moved, box, 5.0)


def test_overflowing_rows_are_widened_not_truncated():
    box = np.full(3, 16.0)
    positions = random_positions(400, box, 4)
    nl = partition.neighbor_list(positions, box, 4.0, 1.0, capacity=3)
    assert nl.neighbors.shape[1] >= nl.counts.max() > 3
    assert listed_pairs(nl) == reference_pairs(positions, box, 5.0)


@pytest.mark.parametrize("half", [False, True])
def test_a_list_exactly_as_wide_as_its_longest_row_loses_no_neighbour(half):
    """The build writes without a branch: once a row is full, later candidates overwrite its last
    slot. A list whose capacity equals the longest row must therefore be built again wider."""
    box = np.full(3, 16.0)
    positions = random_positions(400, box, 4)
    wide = partition.neighbor_list(positions, box, 4.0, 1.0, half=half)
    longest = int(wide.counts.max())
    nl = partition.neighbor_list(positions, box, 4.0, 1.0, half=half, capacity=longest)
    assert nl.neighbors.shape[1] > longest
    listed = listed_pairs(nl)
    if half:
        listed = {(int(nl.order[p]), int(nl.order[q])) for p, q in listed}
        listed |= {(j, i) for i, j in listed}
    assert listed == reference_pairs(positions, box, 5.0)


def test_a_fresh_list_leaves_its_longest_row_room_to_grow(shipped_dataset):
    """Rows grow as the liquid moves; a first list barely as wide as its longest row overflows at an
    early rebuild, which then searches every row twice. In water at cutoff 4.5 Å, skin 1 Å, the
    density estimate alone gives rows of 76 slots and the longest half row holds about 73."""
    from simulate.setup import replicate

    positions, _, box = replicate(shipped_dataset.positions[0], shipped_dataset.species,
                                  np.diag(shipped_dataset.cell[0]), (3, 3, 3))
    nl = partition.neighbor_list(positions, box, 4.5, 1.0, half=True)
    longest = int(nl.counts.max())
    assert longest + longest // 8 + 4 <= nl.neighbors.shape[1]
    # asked for a width, the list keeps it: the same rows, as narrow as asked
    narrow = partition.neighbor_list(positions, box, 4.5, 1.0, half=True, capacity=longest + 1)
    assert narrow.neighbors.shape[1] == longest + 1
    assert np.array_equal(narrow.neighbors[:, : longest + 1], nl.neighbors[:, : longest + 1])
    assert np.array_equal(narrow.image[:, : longest + 1], nl.image[:, : longest + 1])
    assert np.array_equal(narrow.counts, nl.counts)
    assert np.all(nl.neighbors[:, longest + 1:] == -1)  # the wider slots padded as the build pads them


def test_cutoff_beyond_half_the_box_is_refused():
    with pytest.raises(partition.BoxTooSmall, match="replicate"):
        partition.neighbor_list(np.zeros((2, 3)), np.full(3, 8.0), cutoff_angstrom=4.5)


def entries(nl, positions):
    """(row atom, entry atom, displacement Å) of every entry, the displacement by the entry's image code."""
    order = nl.order if nl.half else np.arange(len(positions))
    rows = np.repeat(np.arange(len(nl.counts)), nl.counts)
    slots = np.concatenate([np.arange(c) for c in nl.counts])
    q = nl.neighbors[rows, slots]
    wrapped = positions[order] - nl.wrap_angstrom
    d = wrapped[rows] - wrapped[q] - partition.IMAGE_SHIFTS[nl.image[rows, slots]] * nl.box_angstrom
    return order[rows], order[q], d


@pytest.mark.parametrize("half", [False, True])
def test_cell_list_entries_carry_the_minimum_image_of_their_pair(half):
    box = np.array([16.6, 24.0, 33.5])
    positions = random_positions(600, box, 5)  # unwrapped, several boxes away
    nl = partition.neighbor_list(positions, box, cutoff_angstrom=4.5, skin_angstrom=1.0, half=half)
    assert nl.cells_per_side == (3, 4, 6)
    i, j, d = entries(nl, positions)
    np.testing.assert_allclose(d, minimum_image(positions[i] - positions[j], np.diag(box)), atol=1e-9)
    assert np.all(np.sqrt((d**2).sum(1)) < 5.5)
    assert len(set(np.unique(nl.image[nl.neighbors >= 0]))) > 9  # entries across faces, edges and corners


@pytest.mark.parametrize("half", [False, True])
def test_small_box_lists_every_image_within_reach_once(half):
    # edge 9.1 Å < 2 × 5.5 Å: two images of one atom can both be within reach, and both are listed;
    # a half list of this few atoms would list every pair (see the next test), so the half one has more
    box = np.array([9.1, 15.5, 9.1])
    n = partition.ALL_PAIRS_MAX_ATOMS + 44 if half else 150
    positions = random_positions(n, box, 6)
    nl = partition.neighbor_list(positions, box, cutoff_angstrom=4.5, skin_angstrom=1.0, half=half)
    assert nl.cells_per_side == (1, 1, 1) and not partition.lists_every_pair(nl)
    i, j, d = entries(nl, positions)
    listed = [(a, b, *np.round(v, 6)) for a, b, v in zip(i, j, d)]
    if half:
        listed += [(b, a, *np.round(-v, 6)) for a, b, v in zip(i, j, d)]
    assert len(set(listed)) == len(listed)  # no image twice
    nearest = minimum_image(positions[:, None, :] - positions[None, :, :], np.diag(box))
    expected = set()
    for shift in partition.IMAGE_SHIFTS * box:
        r = np.sqrt(((nearest + shift) ** 2).sum(-1))
        np.fill_diagonal(r, np.inf)
        expected |= {(a, b, *np.round(nearest[a, b] + shift, 6)) for a, b in zip(*np.nonzero(r < 5.5))}
    assert set(listed) == expected
    pairs = [(a, b) for a, b, *_ in listed]
    assert len(set(pairs)) < len(pairs)  # some pairs really are listed through two images


def test_small_box_half_list_lists_nothing_and_is_never_rebuilt():
    """A small box's half list of few atoms is every pair (its force loop takes them all, by minimum
    image): it holds no entry, and no move makes it stale; a box of three cells per side gets a cell
    list, and a small box of many atoms a brute-force one."""
    box = np.array([9.1, 15.5, 9.1])
    positions = random_positions(150, box, 7)
    nl = partition.neighbor_list(positions, box, cutoff_angstrom=4.5, skin_angstrom=1.0, half=True)
    assert nl.cells_per_side == (1, 1, 1) and partition.lists_every_pair(nl)
    assert nl.neighbors.shape == (150, 0) and not nl.counts.any()
    np.testing.assert_array_equal(nl.order, np.arange(150))
    np.testing.assert_array_equal(nl.layer_start, [0, 150])
    assert not nl.wrap_angstrom.any()
    moved = positions + 3.0  # far beyond half the skin
    assert not partition.needs_rebuild(nl, moved)
    assert partition.update(nl, moved) is nl
    cells = partition.neighbor_list(positions, 3 * box, cutoff_angstrom=4.5, skin_angstrom=1.0, half=True)
    assert not partition.lists_every_pair(cells) and cells.neighbors.shape[1] > 0
    many = random_positions(partition.ALL_PAIRS_MAX_ATOMS + 1, box, 8)
    brute = partition.neighbor_list(many, box, cutoff_angstrom=4.5, skin_angstrom=1.0, half=True)
    assert brute.cells_per_side == (1, 1, 1) and not partition.lists_every_pair(brute)
    assert partition.needs_rebuild(brute, many + 3.0)


def _cell_build(compress: bool):
    """The cell search compiled anew with the vector compression of its half lists on or off."""
    assert "BUILD_COMPRESS" in vars(partition)  # the switch the build reads (else both builds would be alike)
    function = types.FunctionType(partition._build_cells.__code__, dict(vars(partition), BUILD_COMPRESS=compress),
                                  f"build_cells_{'compressed' if compress else 'plain'}")
    return numba.njit(function)


@pytest.mark.parametrize(("replicas", "list_cutoff", "capacity"), [
    ((3, 3, 3), 5.5, 120),
    ((3, 3, 3), 5.5, 40),  # rows overflow: searched on past their width, as the plain search goes on
    ((4, 3, 5), 3.0, 64),  # cells of a handful of atoms, most groups of eight cut at a cell's end
    ((3, 3, 3), 9.0, 400),  # cells of about a hundred atoms
])
def test_the_half_list_search_by_vector_compression_is_the_plain_search_entry_for_entry(
        shipped_dataset, replicas, list_cutoff, capacity):
    from simulate.setup import replicate

    positions, _, box = replicate(shipped_dataset.positions[0], shipped_dataset.species,
                                  np.diag(shipped_dataset.cell[0]), replicas)
    positions = positions + np.random.default_rng(7).normal(0.0, 0.4, positions.shape)  # some past the box's faces
    box = box_lengths(box)
    n_cells = np.array(partition.cells_per_side(box, list_cutoff), dtype=np.int64)
    assert n_cells.min() >= 3
    cell_start, cell_atoms, _ = partition._bin_atoms(positions, box, n_cells)
    built = [build(positions, box, n_cells, list_cutoff, capacity, cell_start, cell_atoms, partition._HALF_STENCIL,
                   True, *partition.NO_SPARE_ROWS) for build in (_cell_build(False), _cell_build(True))]
    for plain, compressed in zip(*built):
        assert np.array_equal(plain, compressed)
    counts = built[0][1]
    assert counts.max() > 8
    assert (counts.max() >= capacity) == (capacity == 40)


@numba.njit
def _opposite_codes(n):
    out = np.empty(n, dtype=np.int64)
    for c in range(n):
        out[c] = partition.opposite_image_code(c)
    return out


def test_the_opposite_image_code_names_minus_the_shift():
    # a pair filed from its other atom takes the opposite code (the three-body short rows over a list)
    codes = np.arange(len(partition.IMAGE_SHIFTS))
    opposite = _opposite_codes(len(codes))
    assert np.array_equal(partition.IMAGE_SHIFTS[opposite], -partition.IMAGE_SHIFTS[codes])
    assert np.array_equal(opposite[opposite], codes)
