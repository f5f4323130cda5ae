"""Force metrics: how far predicted forces are from the reference, per species and overall.

The headline number is the *relative* force error rmse / σ, with σ the standard deviation of the
reference force components of the same atoms: 0 is perfect, 1 is no better than predicting the mean.
"""

from __future__ import annotations

import numpy as np

from discover.invariants import iter_pair_chunks, scatter_pair_forces, species_types
from simulate.errors import MldError


class MetricsError(MldError, ValueError):
    """Inconsistent arrays given to a metric."""


def force_errors(predicted: np.ndarray, reference: np.ndarray, species) -> dict[str, dict[str, float]]:
    """``{species or 'all': {'rmse', 'mae', 'relative', 'n_components'}}`` over force components.

    ``predicted`` and ``reference`` are (N,3) or (F,N,3) in eV/Å; ``species`` is (N,).
    rmse and mae are in eV/Å; relative = rmse / std of the reference components.
    """
    predicted = np.asarray(predicted, dtype=float)
    reference = np.asarray(reference, dtype=float)
    species = np.asarray(species).astype(str)
    if predicted.shape != reference.shape:
        raise MetricsError(f"predicted forces have shape {predicted.shape}, reference {reference.shape}")
    if predicted.ndim not in (2, 3) or predicted.shape[-1] != 3 or predicted.shape[-2] != species.shape[0]:
        raise MetricsError(f"forces of shape {predicted.shape} do not match {species.shape[0]} atoms")
    groups = {str(s): species == s for s in dict.fromkeys(species.tolist())}
    groups["all"] = np.ones(species.shape[0], dtype=bool)
    result = {}
    for name, atoms in groups.items():
        ref = reference[..., atoms, :].ravel()
        error = predicted[..., atoms, :].ravel() - ref
        rmse = float(np.sqrt(np.mean(error**2)))
        spread = float(np.std(ref))
        result[name] = {
            "rmse": rmse,
            "mae": float(np.mean(np.abs(error))),
            "relative": rmse / spread if spread > 0 else float("inf"),
            "n_components": int(ref.size),
        }
    return result


def pair_model_forces(
    positions: np.ndarray,
    cells: np.ndarray,
    species,
    species_names,
    cutoff_angstrom: float,
    force_over_r,
    frames=None,
    chunk_frames: int = 64,
    typing=None,
) -> np.ndarray:
    """Forces (len(frames), N, 3) in eV/Å of a pair model on dataset frames.

    ``force_over_r(pair_type, r)`` is any vectorised function returning f(r)/r in eV/Å² for integer
    pair types indexing ``invariants.pair_type_names(species_names)`` (or the pair types of a molecular
    ``typing``, ``invariants.PairTyping``) and distances r < cutoff.
    """
    species = np.asarray(species).astype(str)
    species_names = tuple(species_names)
    types = species_types(species, species_names)
    n_species = len(species_names)
    frames = np.arange(positions.shape[0]) if frames is None else np.asarray(frames, dtype=np.int64)
    n_atoms = positions.shape[1]
    out = np.zeros((len(frames), n_atoms, 3))
    done = 0
    for chunk, pairs in iter_pair_chunks(positions, cells, types, cutoff_angstrom, n_species, frames, chunk_frames,
                                         typing):
        values = np.asarray(force_over_r(pairs.pair_type, pairs.r), dtype=float)
        out[done : done + len(chunk)] = scatter_pair_forces(pairs, values, len(chunk) * n_atoms).reshape(-1, n_atoms, 3)
        done += len(chunk)
    return out
