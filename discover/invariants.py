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
