"""Rotation- and translation-invariant scalars of a configuration.

The pairwise invariants are the distances r_kj within the cutoff, labelled by the
unordered species pair of (k, j). Everything here is a pure function of numpy arrays.

A molecular model (see :mod:`simulate.topology`) labels pairs also by whether both atoms are in
one molecule: ``OH`` is then the intermolecular O–H law and ``OH_intra`` the bonded one. Such
labels come from a ``PairTyping``; without one, pairs are labelled by species alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simulate.space import max_minimum_image_cutoff, minimum_image
from simulate.topology import intramolecular_pairs


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


INTRA_SUFFIX = "_intra"


def is_intramolecular(name: str) -> bool:
    """Whether a pair-type name is that of an intramolecular (bonded) law, like ``OH_intra``."""
    return name.endswith(INTRA_SUFFIX)


def species_pair_of(name: str) -> str:
    """The species pair of a pair-type name: ``OH_intra`` → ``OH``."""
    return name[: -len(INTRA_SUFFIX)] if is_intramolecular(name) else name


def species_of_pair(name: str, species_names) -> tuple[str, str]:
    """The two species of a species-pair name: ``OH`` → (``O``, ``H``); ValueError if it is none."""
    for a in species_names:
        if name.startswith(a) and name[len(a):] in species_names:
            return a, name[len(a):]
    raise ValueError(f"{name!r} is not a pair of the species {', '.join(species_names)}")


@dataclass(frozen=True)
class PairTyping:
    """Pair labels of a molecular model: species pair, and intra- or intermolecular.

    ``pair_types`` lists the intermolecular laws (every species pair, named as in
    ``pair_type_names``) then the intramolecular ones that occur (``OH_intra``, ...);
    ``molecules[k]`` is atom k's molecule. ``lookup[s + n·same]`` is the index in ``pair_types``
    of a pair of species pair s (``pair_type_index``), n the number of species pairs, and −1 for
    an intramolecular species pair that has no law.
    """

    pair_types: tuple
    molecules: np.ndarray  # (N,) int
    lookup: np.ndarray  # (2·n_species_pairs,) int

    def index(self, types_i, types_j, atoms_i, atoms_j, n_species: int) -> np.ndarray:
        base = pair_type_index(types_i, types_j, n_species)
        same = self.molecules[atoms_i] == self.molecules[atoms_j]
        index = self.lookup[base + (len(self.lookup) // 2) * same]
        if np.any(index < 0):
            bad = int(np.flatnonzero(index < 0)[0])
            name = self.pair_types[int(base[bad])]
            raise ValueError(f"atoms {int(atoms_i[bad])} and {int(atoms_j[bad])} form an intramolecular {name} "
                             "pair, and the model has no law for it")
        return index


def molecular_typing(species_names, types: np.ndarray, molecules: np.ndarray, pair_types=None) -> PairTyping:
    """The ``PairTyping`` of these molecules: every intermolecular species pair, and the intramolecular
    species pairs that occur in them (or exactly the names ``pair_types`` of a model, when given)."""
    base = pair_type_names(species_names)
    molecules = np.asarray(molecules, dtype=np.int64)
    if pair_types is None:
        i, j = intramolecular_pairs(molecules)
        seen = set(pair_type_index(types[i], types[j], len(species_names)).tolist())
        pair_types = tuple(base) + tuple(base[s] + INTRA_SUFFIX for s in sorted(seen))
    pair_types = tuple(pair_types)
    if list(pair_types[: len(base)]) != base:
        raise ValueError(f"a molecular model lists the intermolecular pair types first: {', '.join(base)}")
    lookup = np.full(2 * len(base), -1, dtype=np.int64)
    lookup[: len(base)] = np.arange(len(base))
    for t, name in enumerate(pair_types[len(base):], start=len(base)):
        if not is_intramolecular(name) or species_pair_of(name) not in base:
            raise ValueError(f"pair type {name!r} is neither a species pair nor one of them with {INTRA_SUFFIX!r}")
        lookup[len(base) + base.index(species_pair_of(name))] = t
    return PairTyping(pair_types, molecules, lookup)


@dataclass(frozen=True)
class PairTable:
    """Every pair i < j closer than the cutoff in one frame."""

    i: np.ndarray  # (P,) int
    j: np.ndarray  # (P,) int
    r: np.ndarray  # (P,) Å
    displacement: np.ndarray  # (P,3) Å, x_i - x_j under the minimum image
    pair_type: np.ndarray  # (P,) int, index into pair_type_names


def pair_table(positions: np.ndarray, cell: np.ndarray, types: np.ndarray, cutoff: float, n_species: int,
               typing: PairTyping | None = None) -> PairTable:
    """All pairs i < j with r_ij < cutoff (Å), by the O(N²) minimum image.

    Meant for the small cells of ab-initio data (hundreds of atoms); the simulator has
    its own O(N) cell lists. Raises if the cutoff exceeds what the cell allows. With a molecular
    ``typing``, pairs are labelled by it, and intramolecular pairs are kept at any distance (a
    bonded law has no cutoff).
    """
    limit = max_minimum_image_cutoff(cell)
    if cutoff > limit + 1e-12:
        raise ValueError(f"cutoff {cutoff:.3f} Å exceeds the minimum-image limit {limit:.3f} Å of this cell")
    n_atoms = positions.shape[0]
    i, j = np.triu_indices(n_atoms, k=1)
    displacement = minimum_image(positions[i] - positions[j], cell)
    r = np.sqrt(np.einsum("ij,ij->i", displacement, displacement))
    keep = r < cutoff
    if typing is not None:
        keep |= typing.molecules[i] == typing.molecules[j]
    i, j = i[keep], j[keep]
    pair_type = (pair_type_index(types[i], types[j], n_species) if typing is None
                 else typing.index(types[i], types[j], i, j, n_species))
    return PairTable(i=i, j=j, r=r[keep], displacement=displacement[keep], pair_type=pair_type)


def species_types(species: np.ndarray, species_names) -> np.ndarray:
    """Integer type of each atom: the index of its element in ``species_names``."""
    lookup = {name: k for k, name in enumerate(species_names)}
    return np.array([lookup[str(s)] for s in species], dtype=np.int64)


def stack_pair_tables(
    positions: np.ndarray, cells: np.ndarray, types: np.ndarray, cutoff: float, n_species: int,
    typing: PairTyping | None = None,
) -> PairTable:
    """Pairs of many frames (F,N,3) in one table; atom indices are global, ``frame * N + atom``.

    Per-atom quantities of all frames then live in one flat (F·N,) axis, so forces of every
    frame come from one ``scatter_pair_forces`` call.
    """
    n_atoms = positions.shape[1]
    tables = [pair_table(positions[f], cells[f], types, cutoff, n_species, typing) for f in range(positions.shape[0])]
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
    typing: PairTyping | None = None,
):
    """Yield ``(frame_indices, PairTable)`` over ``frames`` (default: all), ``chunk_frames`` at a time.

    Atom indices in each table are local to the chunk (``position_in_chunk * N + atom``), so
    memory stays bounded however long the trajectory is.
    """
    frames = np.arange(positions.shape[0]) if frames is None else np.asarray(frames, dtype=np.int64)
    step = max(1, int(chunk_frames))
    for start in range(0, len(frames), step):
        chunk = frames[start : start + step]
        yield chunk, stack_pair_tables(positions[chunk], cells[chunk], types, cutoff, n_species, typing)
