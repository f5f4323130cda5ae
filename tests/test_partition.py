"""Neighbour lists: cell lists find exactly the pairs a brute-force minimum-image search finds."""

import numpy as np
import pytest

from simulate import partition
from simulate.space import minimum_image


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


def test_cutoff_beyond_half_the_box_is_refused():
    with pytest.raises(partition.BoxTooSmall, match="replicate"):
        partition.neighbor_list(np.zeros((2, 3)), np.full(3, 8.0), cutoff_angstrom=4.5)
