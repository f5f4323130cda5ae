"""Molecular topology: which atoms form one molecule, and the pairs inside each molecule.

A *molecular* model splits pairs in two: atoms of one molecule interact through intramolecular
(bonded) laws, all other pairs through the intermolecular laws of the pair cutoff. Molecules are
the connected groups of the bond graph of one frame: atoms i and j are bonded when
``r_ij < bond_cutoff[t_i, t_j]`` (Å; 0 means never bonded). The assignment is made once, from a
starting frame, and then kept: a later frame whose bond graph differs (a bond broken, or a bond
between two molecules, as in proton transfer) is a dissociation, reported by ``dissociation``.

The simulator keeps the list of intramolecular pairs fixed and adds, for each of them, the bonded
law minus the intermolecular law that the neighbour loop already counted (see ``bonded_loop``),
so the neighbour loop itself does not change.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from simulate.errors import MldError
from simulate.space import box_lengths, minimum_image


class MoleculeError(MldError, ValueError):
    """A configuration whose molecules differ from the assignment (a dissociation) or cannot be assigned."""


def bond_cutoff_matrix(bond_cutoffs, n_species: int) -> np.ndarray:
    """The (S, S) symmetric matrix of bond cutoffs in Å from a nested sequence, checked."""
    matrix = np.asarray(bond_cutoffs, dtype=float)
    if matrix.shape != (n_species, n_species) or not np.allclose(matrix, matrix.T) or np.any(matrix < 0):
        raise MoleculeError(f"bond cutoffs must be a symmetric {n_species}×{n_species} matrix of lengths ≥ 0 Å")
    return matrix


def bonds(positions: np.ndarray, box, types: np.ndarray, bond_cutoffs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bonded pairs ``(i, j)``, i < j, of one frame: r_ij < bond_cutoffs[t_i, t_j] under the minimum image.

    ``box`` is orthorhombic (three lengths or a diagonal cell), in Å; O(N) through a periodic k-d tree.
    """
    box = box_lengths(box)
    reach = float(np.max(bond_cutoffs))
    if reach <= 0.0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    if reach >= 0.5 * box.min():
        raise MoleculeError(f"bond cutoff {reach:.3f} Å is not below half the box ({box.min():.3f} Å)")
    wrapped = np.mod(positions, box)
    wrapped[wrapped >= box] = 0.0  # mod of a tiny negative number can round up to the box length
    pairs = cKDTree(wrapped, boxsize=box).query_pairs(reach, output_type="ndarray")
    if len(pairs) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    i, j = np.minimum(pairs[:, 0], pairs[:, 1]), np.maximum(pairs[:, 0], pairs[:, 1])
    d = positions[i] - positions[j]
    d -= box * np.round(d / box)
    r = np.sqrt(np.einsum("ij,ij->i", d, d))
    keep = r < bond_cutoffs[types[i], types[j]]
    order = np.lexsort((j[keep], i[keep]))
    return i[keep][order].astype(np.int64), j[keep][order].astype(np.int64)


def molecule_ids(n_atoms: int, bond_i: np.ndarray, bond_j: np.ndarray) -> np.ndarray:
    """Molecule index (N,) of every atom: the connected groups of the bond graph, numbered by first atom."""
    graph = coo_matrix((np.ones(len(bond_i)), (bond_i, bond_j)), shape=(n_atoms, n_atoms))
    _, labels = connected_components(graph, directed=False)
    # renumber in order of each molecule's first atom, so the numbering does not depend on scipy
    _, first = np.unique(labels, return_index=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first)] = np.arange(len(first))
    return rank[labels]


def assign_molecules(positions: np.ndarray, box, types: np.ndarray, bond_cutoffs: np.ndarray) -> np.ndarray:
    """Molecule index (N,) of every atom in this frame."""
    i, j = bonds(positions, box, types, bond_cutoffs)
    return molecule_ids(len(positions), i, j)


def intramolecular_pairs(molecules: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every pair ``(i, j)``, i < j, of atoms in one molecule, sorted by i then j."""
    molecules = np.asarray(molecules, dtype=np.int64)
    order = np.argsort(molecules, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(molecules[order]) != 0])
    ends = np.r_[starts[1:], len(order)]
    pi, pj = [], []
    for s, e in zip(starts, ends):
        members = np.sort(order[s:e])
        a, b = np.triu_indices(len(members), k=1)
        pi.append(members[a])
        pj.append(members[b])
    if not pi:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    i, j = np.concatenate(pi), np.concatenate(pj)
    order = np.lexsort((j, i))
    return i[order].astype(np.int64), j[order].astype(np.int64)


def checked_intramolecular_pairs(molecules: np.ndarray, types: np.ndarray, kernel_module) -> tuple:
    """``intramolecular_pairs`` of ``molecules``, each of a type pair the kernel module has a bonded law for."""
    i, j = intramolecular_pairs(molecules)
    has_law = np.asarray(kernel_module.INTRA_PAIR_TYPES, dtype=bool)
    missing = np.flatnonzero(~has_law[types[i], types[j]])
    if missing.size:
        a, b = i[missing[0]], j[missing[0]]
        species = kernel_module.SPECIES
        raise MoleculeError(f"atoms {a} and {b} of molecule {molecules[a]} form a {species[types[a]]}–"
                            f"{species[types[b]]} pair, and the model has no intramolecular law for it")
    return i, j


def dissociation(positions: np.ndarray, box, types: np.ndarray, molecules: np.ndarray,
                 bond_cutoffs: np.ndarray, species=None) -> str | None:
    """None if this frame's molecules are those of ``molecules``; else what changed, in words.

    A bond between two molecules (say a proton moving to another water) or a molecule whose bond
    graph has fallen apart are both dissociations of the assignment.
    """
    i, j = bonds(positions, box, types, bond_cutoffs)
    names = (lambda k: f"{species[types[k]]}{k}") if species is not None else (lambda k: f"atom {k}")
    across = np.flatnonzero(molecules[i] != molecules[j])
    if across.size:
        a, b = i[across[0]], j[across[0]]
        return (f"{names(a)} of molecule {molecules[a]} bonded to {names(b)} of molecule {molecules[b]} "
                f"(r = {_distance(positions, box, a, b):.3f} Å)")
    now = molecule_ids(len(positions), i, j)
    # no bond crosses two molecules, so each current group lies inside one molecule: the partition is the
    # same exactly when there are as many groups as molecules; otherwise find the molecule that split
    if now.max() == molecules.max():
        return None
    for m in np.unique(molecules):
        members = np.flatnonzero(molecules == m)
        if len(np.unique(now[members])) > 1:
            groups = [members[now[members] == g] for g in np.unique(now[members])]
            a, b = groups[0][0], groups[1][0]
            return (f"molecule {m} broke apart ({names(a)} and {names(b)} no longer bonded, "
                    f"r = {_distance(positions, box, a, b):.3f} Å)")
    return None


def _distance(positions, box, a, b) -> float:
    return float(np.linalg.norm(minimum_image(positions[a] - positions[b], np.diag(box_lengths(box)))))


def make_bonded_loop(intra_pair_energy_force, pair_energy_force_r2):
    """The intramolecular correction over a fixed list of pairs, compiled with the two kernels.

    For each intramolecular pair it adds the bonded law and subtracts the intermolecular law that
    the neighbour loop counted for the same pair (zero beyond the pair cutoff, where the neighbour
    loop counted nothing), to forces, per-atom losses and per-atom virials in place. The
    intermolecular law is called as the neighbour loop calls it, as a function of r² (see
    :func:`simulate.energy._pair_of_r2`). Returns the energy added. Serial: the list has a handful of
    pairs per molecule.
    """

    @numba.njit
    def bonded_loop(positions, types, box, pair_i, pair_j, forces, loss, virial):
        energy = 0.0
        for p in range(pair_i.shape[0]):
            i = pair_i[p]
            j = pair_j[p]
            dx = positions[i, 0] - positions[j, 0]
            dy = positions[i, 1] - positions[j, 1]
            dz = positions[i, 2] - positions[j, 2]
            dx -= box[0] * np.rint(dx / box[0])
            dy -= box[1] * np.rint(dy / box[1])
            dz -= box[2] * np.rint(dz / box[2])
            r2 = dx * dx + dy * dy + dz * dz
            r = math.sqrt(r2)
            u_bond, f_bond = intra_pair_energy_force(types[i], types[j], r)
            u_pair, f_pair = pair_energy_force_r2(types[i], types[j], r2)
            u = u_bond - u_pair
            f = f_bond - f_pair
            energy += u
            loss[i] += u
            loss[j] += u
            forces[i, 0] += f * dx
            forces[i, 1] += f * dy
            forces[i, 2] += f * dz
            forces[j, 0] -= f * dx
            forces[j, 1] -= f * dy
            forces[j, 2] -= f * dz
            virial[i] += 0.5 * f * r2
            virial[j] += 0.5 * f * r2
        return energy

    return bonded_loop
