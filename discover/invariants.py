"""Rotation- and translation-invariant scalars of a configuration.

The pairwise invariants are the distances r_kj within the cutoff, labelled by the
unordered species pair of (k, j). Everything here is a pure function of numpy arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simulate.space import max_minimum_image_cutoff, minimum_image


def pair_type_names(species_names) -> list[str]:
    """Unordered species-pair labels in a fixed order: ('O','H') -> ['OO', 'OH', 'HH']."""
    names = list(species_names)
    return [names[a] + names[b] for a in range(len(names)) for b in range(a, len(names))]


def pair_type_index(type_i: np.ndarray, type_j: np.ndarray, n_species: int) -> np.ndarray:
    """Index into ``pair_type_names`` of the unordered pair (type_i, type_j)."""
    a = np.minimum(type_i, type_j)
    b = np.maximum(type_i, type_j)
    # rows a contribute n_species - a entries each before them
    return a * n_species - a * (a - 1) // 2 + (b - a)


@dataclass(frozen=True)
class PairTable:
    """Every pair i < j closer than the cutoff in one frame."""

    i: np.ndarray  # (P,) int
    j: np.ndarray  # (P,) int
    r: np.ndarray  # (P,) Å
    displacement: np.ndarray  # (P,3) Å, x_i - x_j under the minimum image
    pair_type: np.ndarray  # (P,) int, index into pair_type_names


def pair_table(positions: np.ndarray, cell: np.ndarray, types: np.ndarray, cutoff: float, n_species: int) -> PairTable:
    """All pairs i < j with r_ij < cutoff (Å), by the O(N²) minimum image.

    Meant for the small cells of ab-initio data (hundreds of atoms); the simulator has
    its own O(N) cell lists. Raises if the cutoff exceeds what the cell allows.
    """
    limit = max_minimum_image_cutoff(cell)
    if cutoff > limit + 1e-12:
        raise ValueError(f"cutoff {cutoff:.3f} Å exceeds the minimum-image limit {limit:.3f} Å of this cell")
    n_atoms = positions.shape[0]
    i, j = np.triu_indices(n_atoms, k=1)
    displacement = minimum_image(positions[i] - positions[j], cell)
    r = np.sqrt(np.einsum("ij,ij->i", displacement, displacement))
    keep = r < cutoff
    i, j = i[keep], j[keep]
    return PairTable(
        i=i, j=j, r=r[keep], displacement=displacement[keep],
        pair_type=pair_type_index(types[i], types[j], n_species),
    )


def species_types(species: np.ndarray, species_names) -> np.ndarray:
    """Integer type of each atom: the index of its element in ``species_names``."""
    lookup = {name: k for k, name in enumerate(species_names)}
    return np.array([lookup[str(s)] for s in species], dtype=np.int64)


def stack_pair_tables(
    positions: np.ndarray, cells: np.ndarray, types: np.ndarray, cutoff: float, n_species: int
) -> PairTable:
    """Pairs of many frames (F,N,3) in one table; atom indices are global, ``frame * N + atom``.

    Per-atom quantities of all frames then live in one flat (F·N,) axis, so forces of every
    frame come from one ``scatter_pair_forces`` call.
    """
    n_atoms = positions.shape[1]
    tables = [pair_table(positions[f], cells[f], types, cutoff, n_species) for f in range(positions.shape[0])]
    offsets = np.arange(len(tables)) * n_atoms
    return PairTable(
        i=np.concatenate([t.i + o for t, o in zip(tables, offsets)]),
        j=np.concatenate([t.j + o for t, o in zip(tables, offsets)]),
        r=np.concatenate([t.r for t in tables]),
        displacement=np.concatenate([t.displacement for t in tables]),
        pair_type=np.concatenate([t.pair_type for t in tables]),
    )


def scatter_pair_forces(pairs: PairTable, force_over_r: np.ndarray, n_atoms_total: int) -> np.ndarray:
    """Per-atom forces (n_atoms_total, 3) from pair values f(r)/r, with f = −du/dr in eV/Å.

    Atom i gets ``f/r · (x_i − x_j)`` and atom j the opposite, so Newton's third law holds by construction.
    """
    pair_forces = force_over_r[:, None] * pairs.displacement
    forces = np.zeros((n_atoms_total, 3))
    for axis in range(3):
        forces[:, axis] = np.bincount(pairs.i, pair_forces[:, axis], minlength=n_atoms_total) - np.bincount(
            pairs.j, pair_forces[:, axis], minlength=n_atoms_total
        )
    return forces


def iter_pair_chunks(
    positions: np.ndarray,
    cells: np.ndarray,
    types: np.ndarray,
    cutoff: float,
    n_species: int,
    frames=None,
    chunk_frames: int = 64,
):
    """Yield ``(frame_indices, PairTable)`` over ``frames`` (default: all), ``chunk_frames`` at a time.

    Atom indices in each table are local to the chunk (``position_in_chunk * N + atom``), so
    memory stays bounded however long the trajectory is.
    """
    frames = np.arange(positions.shape[0]) if frames is None else np.asarray(frames, dtype=np.int64)
    step = max(1, int(chunk_frames))
    for start in range(0, len(frames), step):
        chunk = frames[start : start + step]
        yield chunk, stack_pair_tables(positions[chunk], cells[chunk], types, cutoff, n_species)
