"""Molecular topology of a dataset: molecules assigned on the first frame and checked on every frame.

``--topology molecular`` splits pairs into intramolecular (bonded) and intermolecular laws. The
molecules are the connected groups of bonded atoms (``simulate.topology``); by default two atoms are
bonded when closer than ``BOND_TOLERANCE`` times the sum of their covalent radii (Cordero et al.,
Dalton Trans. 2008, 2832, as tabulated by ASE): 1.26 Å for O–H, where the shipped water data have
every covalent O–H below 1.05 Å and every hydrogen bond above 1.5 Å. A frame whose molecules differ
from the first frame's (a proton moved to another water, a molecule broke) is a dissociation, and
a molecular model cannot describe it: it is reported as an error naming the frame and the atoms.
"""

from __future__ import annotations

import numpy as np

from discover.invariants import PairTyping, molecular_typing, pair_type_names, species_of_pair, species_types
from discover.model import bond_matrix
from simulate import topology
from simulate.errors import MldError

BOND_TOLERANCE = 1.3


class TopologyError(MldError, ValueError):
    """A dataset whose molecules cannot be assigned, or dissociate."""


def default_bond_cutoffs(species_names) -> dict[str, float]:
    """``{species pair: bond cutoff in Å}``: ``BOND_TOLERANCE`` × the sum of the covalent radii."""
    from ase.data import atomic_numbers, covalent_radii

    out = {}
    for name in pair_type_names(species_names):
        a, b = species_of_pair(name, species_names)
        if a not in atomic_numbers or b not in atomic_numbers:
            raise TopologyError(f"no covalent radius for {a} or {b}: give the bond cutoffs explicitly")
        out[name] = round(BOND_TOLERANCE * float(covalent_radii[atomic_numbers[a]] + covalent_radii[atomic_numbers[b]]),
                          4)
    return out


def dataset_molecules(positions: np.ndarray, cells: np.ndarray, species, species_names, bond_cutoffs: dict,
                      label: str = "dataset", frames=None) -> np.ndarray:
    """Molecule index (N,) of every atom, from the first of ``frames`` (default: all), checked on each of them."""
    species = np.asarray(species).astype(str)
    types = species_types(species, species_names)
    matrix = bond_matrix(bond_cutoffs, species_names)
    frames = np.arange(len(positions)) if frames is None else np.asarray(frames, dtype=np.int64)
    try:
        molecules = topology.assign_molecules(positions[frames[0]], cells[frames[0]], types, matrix)
        for f in frames:
            what = topology.dissociation(positions[f], cells[f], types, molecules, matrix, species_names)
            if what:
                raise TopologyError(f"{label}: frame {int(f)}: {what}; a molecular model needs molecules that "
                                    "stay intact (use --topology atomic)")
    except topology.MoleculeError as exc:
        raise TopologyError(f"{label}: {exc}") from None
    return molecules


def dataset_typing(positions, cells, species, species_names, bond_cutoffs: dict, label: str = "dataset",
                   frames=None, pair_types=None) -> PairTyping:
    """The molecular ``PairTyping`` of a dataset (molecules checked on every frame used)."""
    molecules = dataset_molecules(positions, cells, species, species_names, bond_cutoffs, label, frames)
    types = species_types(np.asarray(species).astype(str), species_names)
    try:
        typing = molecular_typing(species_names, types, molecules, pair_types)
        i, j = topology.intramolecular_pairs(molecules)
        typing.index(types[i], types[j], i, j, len(species_names))  # every intramolecular pair has a law
    except ValueError as exc:
        raise TopologyError(f"{label}: {exc}") from None
    return typing


def model_typing(model, positions, cells, species, label: str = "dataset", frames=None) -> PairTyping | None:
    """The pair typing a model needs on these frames: None for an atomic model."""
    if not model.is_molecular:
        return None
    return dataset_typing(positions, cells, species, model.species, model.bond_cutoff_angstrom, label, frames,
                          model.pair_types)
