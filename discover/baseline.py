"""The quadratic agent loss of Gusev & Vanchurin, *Molecular Learning Dynamics* (arXiv 2504.10560).

What is taken from the paper (its abstract and introduction, plus third-party summaries of its
later sections; the full text was not available to us): each nucleus k of species A_k is an
agent whose learning dynamics reproduce the equation of motion

    q̈_k^μ = −(1/M_{A_k}) ∂H_{A_k}(φ^{A_k}(q))/∂q_k^μ,

with H_A a per-species loss of scalar invariants φ_a^{A_k} of the *other* particles, fitted to CP2K
water forces and taken quadratic (summaries: "a quadratic agent loss", and a stated limitation of
"assuming pairwise interactions"):

    H_A(k) = Σ_a w_a φ_a(k) + ½ Σ_ab W_ab φ_a(k) φ_b(k),        W symmetric.

The force is the gradient of atom k's *own* loss in its *own* coordinates only (not of a total
energy), so the quadratic terms make a many-body, in general non-conservative force. That force is
linear in (w, W), so the fit is linear least squares on per-atom forces.

What is our choice, because the paper's exact invariants (their radial functions, number and
cutoff) could not be recovered: φ_a(k) = Σ_{j ∈ B_a, r_kj < r_c} g_a(r_kj), for each neighbour
species B ``n_radial`` Gaussians g(r) = exp(−((r − μ)/σ)²) · f_c(r) with centres μ evenly spaced on
[r_inner, r_c], σ their spacing, and Behler's cosine cutoff f_c(r) = ½(1 + cos(π r / r_c))
(J. Chem. Phys. 134, 074106 (2011)) so every invariant and its gradient vanish smoothly at r_c.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from discover.force_matching import prepare_training
from discover.invariants import iter_pair_chunks, pair_table, species_types
from simulate.errors import MldError

DEFAULT_RADIAL = 12
DEFAULT_INNER_ANGSTROM = 0.8
DEFAULT_RIDGE = 1e-10


class BaselineError(MldError, ValueError):
    """Bad input to the quadratic baseline."""


@dataclass(frozen=True)
class QuadraticBaseline:
    """Fitted quadratic agent losses, one (w, W) per species; invariant a = neighbour_species·n_radial + n."""

    species: tuple[str, ...]
    cutoff_angstrom: float
    centres_angstrom: np.ndarray  # (n_radial,)
    width_angstrom: float
    linear: np.ndarray  # (S, n_inv)   w_a, eV
    quadratic: np.ndarray  # (S, n_inv, n_inv) W_ab, symmetric, eV
    train_rmse_ev_per_angstrom: float = float("nan")
    wall_time_s: float = float("nan")

    @property
    def n_invariants(self) -> int:
        return len(self.species) * len(self.centres_angstrom)

    @property
    def n_parameters(self) -> int:
        """Free parameters: per species n linear weights and n(n+1)/2 of the symmetric W."""
        n = self.n_invariants
        return len(self.species) * (n + n * (n + 1) // 2)

    def to_dict(self) -> dict:
        return {
            "kind": "quadratic_agent_loss",
            "species": list(self.species),
            "cutoff_angstrom": float(self.cutoff_angstrom),
            "centres_angstrom": self.centres_angstrom.tolist(),
            "width_angstrom": float(self.width_angstrom),
            "linear": self.linear.tolist(),
            "quadratic": self.quadratic.tolist(),
        }


def parameter_count(model: QuadraticBaseline) -> int:
    return model.n_parameters


def radial_basis(r: np.ndarray, centres: np.ndarray, width: float, cutoff: float) -> tuple[np.ndarray, np.ndarray]:
    """g(r) and dg/dr, each (P, n_radial), for distances r (P,) in Å below the cutoff."""
    r = np.asarray(r, dtype=float)[:, None]
    x = (r - centres[None, :]) / width
    gauss = np.exp(-(x**2))
    fc = 0.5 * (1.0 + np.cos(np.pi * r / cutoff))
    dfc = -0.5 * np.pi / cutoff * np.sin(np.pi * r / cutoff)
    return gauss * fc, gauss * (dfc - 2.0 * x / width * fc)


def _invariants_and_gradients(pairs, types, n_species, n_atoms_total, centres, width, cutoff):
    """φ (A, n_inv) and ∂φ/∂q_k of each atom's own invariants, (A, n_inv, 3), A = n_atoms_total.

    ``types`` has one entry per atom of the stacked frames.
    """
    n_radial = len(centres)
    g, dg = radial_basis(pairs.r, centres, width, cutoff)
    direction = pairs.displacement / pairs.r[:, None]  # unit vector from j to i
    phi = np.zeros((n_atoms_total, n_species * n_radial))
    grad = np.zeros((n_atoms_total, n_species * n_radial, 3))
    # pair (i, j) adds to φ of i in the slot of j's species, and to φ of j in the slot of i's species;
    # ∂r_ij/∂x_i = (x_i − x_j)/r and ∂r_ij/∂x_j is its opposite
    for centre, other, sign in ((pairs.i, pairs.j, 1.0), (pairs.j, pairs.i, -1.0)):
        columns = types[other][:, None] * n_radial + np.arange(n_radial)[None, :]
        flat = centre[:, None] * phi.shape[1] + columns
        phi += np.bincount(flat.ravel(), g.ravel(), minlength=phi.size).reshape(phi.shape)
        for axis in range(3):
            values = sign * dg * direction[:, axis : axis + 1]
            grad[:, :, axis] += np.bincount(flat.ravel(), values.ravel(), minlength=phi.size).reshape(phi.shape)
    return phi, grad


def _upper_pairs(n: int) -> tuple[np.ndarray, np.ndarray]:
    return np.triu_indices(n)


def _force_features(phi: np.ndarray, grad: np.ndarray) -> np.ndarray:
    """(A, 3, n_inv + n_inv(n_inv+1)/2): F_k = −features · θ with θ = (w, W_ab for a ≤ b).

    ∂/∂q_k of ½ Σ_ab W_ab φ_a φ_b = Σ_{a≤b} W_ab (φ_b ∂φ_a + φ_a ∂φ_b) (1 − ½ δ_ab).
    """
    a, b = _upper_pairs(phi.shape[1])
    half = np.where(a == b, 0.5, 1.0)
    quad = (phi[:, b, None] * grad[:, a, :] + phi[:, a, None] * grad[:, b, :]) * half[None, :, None]
    return -np.concatenate([grad, quad], axis=1).transpose(0, 2, 1)


def agent_losses(model: QuadraticBaseline, positions: np.ndarray, cell: np.ndarray, species) -> np.ndarray:
    """H_{A_k}(k) in eV for every atom of one frame (N,3)."""
    types = species_types(np.asarray(species).astype(str), model.species)
    pairs = pair_table(positions, np.asarray(cell), types, model.cutoff_angstrom, len(model.species))
    phi, _ = _invariants_and_gradients(pairs, types, len(model.species), len(types), model.centres_angstrom,
                                       model.width_angstrom, model.cutoff_angstrom)
    w = model.linear[types]
    big_w = model.quadratic[types]
    return np.einsum("ka,ka->k", w, phi) + 0.5 * np.einsum("ka,kab,kb->k", phi, big_w, phi)


def predict_forces(
    model: QuadraticBaseline, positions: np.ndarray, cells: np.ndarray, species, frames=None, chunk_frames: int = 32
) -> np.ndarray:
    """Forces −∂H_{A_k}(k)/∂q_k in eV/Å, (len(frames), N, 3)."""
    types = species_types(np.asarray(species).astype(str), model.species)
    frames = np.arange(positions.shape[0]) if frames is None else np.asarray(frames, dtype=np.int64)
    n_atoms = positions.shape[1]
    a, b = _upper_pairs(model.n_invariants)
    out = np.zeros((len(frames), n_atoms, 3))
    done = 0
    for chunk, pairs in iter_pair_chunks(positions, cells, types, model.cutoff_angstrom, len(model.species),
                                         frames, chunk_frames):
        stacked_types = np.tile(types, len(chunk))
        phi, grad = _invariants_and_gradients(pairs, stacked_types, len(model.species), len(stacked_types),
                                              model.centres_angstrom, model.width_angstrom, model.cutoff_angstrom)
        theta = np.concatenate([model.linear, model.quadratic[:, a, b]], axis=1)[stacked_types]
        forces = np.einsum("kxp,kp->kx", _force_features(phi, grad), theta)
        out[done : done + len(chunk)] = forces.reshape(len(chunk), n_atoms, 3)
        done += len(chunk)
    return out


def fit_quadratic_baseline(
    positions: np.ndarray,
    forces: np.ndarray,
    cells: np.ndarray,
    species,
    species_names=None,
    train_frames=None,
    cutoff_angstrom: float | None = None,
    n_radial: int = DEFAULT_RADIAL,
    inner_angstrom: float = DEFAULT_INNER_ANGSTROM,
    ridge: float = DEFAULT_RIDGE,
    chunk_frames: int = 32,
) -> QuadraticBaseline:
    """Least-squares fit of (w, W) per species to per-atom forces on ``train_frames``.

    ``train_frames=None`` means the training part of ``force_matching.split_frames``, never the validation block.

    Normal equations are summed chunk by chunk; columns are scaled to unit diagonal and a ridge of
    ``ridge`` (relative) is added, which leaves exactly determined problems exact to ~√ridge.
    """
    started = time.perf_counter()
    species, species_names, train_frames, cutoff_angstrom = prepare_training(
        positions, forces, cells, species, species_names, train_frames, cutoff_angstrom,
        fitter="the quadratic baseline", error=BaselineError)
    if n_radial < 1 or not 0.0 <= inner_angstrom < cutoff_angstrom:
        raise BaselineError(f"radial basis: need n_radial ≥ 1 and 0 ≤ inner < cutoff ({cutoff_angstrom:.3f} Å)")
    centres = np.linspace(inner_angstrom, cutoff_angstrom, n_radial)
    width = float(centres[1] - centres[0]) if n_radial > 1 else cutoff_angstrom - inner_angstrom
    types = species_types(species, species_names)
    n_species = len(species_names)
    n_inv = n_species * n_radial
    n_theta = n_inv + n_inv * (n_inv + 1) // 2
    grams = np.zeros((n_species, n_theta, n_theta))
    rhss = np.zeros((n_species, n_theta))
    sums_y2 = np.zeros(n_species)
    n_rows = 0
    for chunk, pairs in iter_pair_chunks(positions, cells, types, cutoff_angstrom, n_species, train_frames,
                                         chunk_frames):
        stacked_types = np.tile(types, len(chunk))
        phi, grad = _invariants_and_gradients(pairs, stacked_types, n_species, len(stacked_types), centres, width,
                                              cutoff_angstrom)
        features = _force_features(phi, grad)
        target = forces[chunk].reshape(-1, 3)
        for s in range(n_species):
            mine = stacked_types == s
            a = features[mine].reshape(-1, n_theta)
            y = target[mine].ravel()
            grams[s] += a.T @ a
            rhss[s] += a.T @ y
            sums_y2[s] += y @ y
        n_rows += target.size

    a_idx, b_idx = _upper_pairs(n_inv)
    linear = np.zeros((n_species, n_inv))
    quadratic = np.zeros((n_species, n_inv, n_inv))
    train_sq = 0.0
    for s in range(n_species):
        diag = np.sqrt(np.maximum(np.diag(grams[s]), 1e-300))
        scaled = grams[s] / np.outer(diag, diag)
        theta = np.linalg.solve(scaled + ridge * np.eye(n_theta), rhss[s] / diag) / diag
        train_sq += theta @ grams[s] @ theta - 2.0 * theta @ rhss[s] + sums_y2[s]
        linear[s] = theta[:n_inv]
        quadratic[s][a_idx, b_idx] = theta[n_inv:]
        quadratic[s][b_idx, a_idx] = theta[n_inv:]
    return QuadraticBaseline(
        species=species_names,
        cutoff_angstrom=float(cutoff_angstrom),
        centres_angstrom=centres,
        width_angstrom=width,
        linear=linear,
        quadratic=quadratic,
        train_rmse_ev_per_angstrom=float(np.sqrt(max(train_sq, 0.0) / max(n_rows, 1))),
        wall_time_s=time.perf_counter() - started,
    )
