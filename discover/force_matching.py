"""Force matching: tabulated pair forces f_AB(r) = −du_AB/dr fitted to ab-initio forces.

The pairwise agent loss of species A is H_A(k) = Σ_{j≠k, r_kj<r_c} u_{A B_j}(r_kj), with u_AB = u_BA
per unordered pair type. For a pair model the agent's own-loss gradient equals the gradient of the
energy E = ½ Σ_k H_k, so m_k q̈_k = −∂H_{A_k}/∂q_k = Σ_j f_{A_k B_j}(r_kj) (q_k − q_j)/r_kj.

Forces are linear in f, so each f_AB is written on a cubic B-spline basis and all pair types are
fitted at once by linear least squares on the per-atom force components of the training frames:
the force-matching method of Ercolessi & Adams, Europhys. Lett. 26, 583 (1994), in the linear
spline form of Izvekov & Voth, J. Chem. Phys. 123, 134105 (2005). Normal equations are summed
chunk by chunk, so memory does not grow with the trajectory. A second-difference penalty on the
spline coefficients (P-splines, Eilers & Marx, Stat. Sci. 11, 89 (1996)) regularises sparsely
sampled distances; its weight is chosen by blocked cross-validation inside the training frames.

Below the smallest sampled distance r_min of each pair type the data say nothing, and a free
extrapolation can turn attractive and collapse the liquid; there the model continues with the
C¹ repulsive wall of ``repulsive_core``.

A molecular model (``typing``, see ``invariants.PairTyping``) adds intramolecular laws such as
``OH_intra``. They are bonded: fitted on the sampled range [r_min, r_max] only, with no cutoff, and
continued beyond r_max by ``outer_wall``, the mirror image of the core, which pulls the pair back.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
from scipy import sparse
from scipy.interpolate import BSpline

from discover.invariants import (
    PairTyping,
    is_intramolecular,
    iter_pair_chunks,
    pair_type_names,
    species_pair_of,
    species_types,
)
from simulate.errors import MldError
from simulate.space import max_minimum_image_cutoff

SPLINE_DEGREE = 3
# The repulsive wall: its force grows like exp(s / CORE_LENGTH) with s = r_min − r, at an initial rate
# of at least CORE_STIFFNESS. 0.1 Å is shorter than any Born–Mayer length of water (≈ 0.25 Å), so the
# wall is at least as hard as the true core; 10 eV/Å² keeps it gentle enough for a 0.5 fs step.
CORE_LENGTH_ANGSTROM = 0.1
CORE_STIFFNESS_EV_PER_ANGSTROM2 = 10.0
DEFAULT_CUTOFF_MARGIN_ANGSTROM = 0.05
HISTOGRAM_BIN_ANGSTROM = 0.02
SMOOTHING_GRID = (1e-9, 1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


class ForceMatchingError(MldError, ValueError):
    """Bad input to force matching or a malformed tabulated model."""


# --- frames and cutoff -------------------------------------------------------------


def split_frames(n_frames: int, validation_fraction: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """Time split: the first frames train, the last ``validation_fraction`` validate.

    Consecutive MD frames are strongly correlated, so a random split would leak the validation
    set into training; one contiguous final block does not.
    """
    if not 0.0 < validation_fraction < 1.0:
        raise ForceMatchingError(f"validation fraction must lie in (0, 1), got {validation_fraction}")
    n_validation = round(n_frames * validation_fraction)
    if n_frames < 2 or n_validation < 1 or n_validation >= n_frames:
        raise ForceMatchingError(
            f"cannot split {n_frames} frame(s) with validation fraction {validation_fraction}: "
            "need at least one training and one validation frame"
        )
    n_train = n_frames - n_validation
    return np.arange(n_train), np.arange(n_train, n_frames)


def default_cutoff(cell: np.ndarray, margin_angstrom: float = DEFAULT_CUTOFF_MARGIN_ANGSTROM) -> float:
    """Largest cutoff (Å) the cell(s) allow under the minimum image, less a margin.

    ``cell`` is one (3,3) cell or a trajectory of cells (F,3,3); the smallest limit wins.
    """
    cells = np.asarray(cell, dtype=float).reshape(-1, 3, 3)
    # a constant cell (the usual NVT/NVE data) needs one check, not one per frame
    if np.all(cells == cells[0]):
        cells = cells[:1]
    limit = min(max_minimum_image_cutoff(c) for c in cells)
    if limit - margin_angstrom <= 0.0:
        raise ForceMatchingError(f"cell too small: minimum-image limit {limit:.3f} Å is within the margin")
    return limit - margin_angstrom


def check_arrays(positions, forces, cells, species, species_names) -> None:
    """Refuse trajectories whose arrays disagree in shape or whose atoms have unknown species."""
    n_frames, n_atoms = positions.shape[:2]
    if positions.shape != (n_frames, n_atoms, 3) or forces.shape != positions.shape:
        raise ForceMatchingError(f"positions {positions.shape} and forces {forces.shape} must both be (F, N, 3)")
    if cells.shape != (n_frames, 3, 3) or len(species) != n_atoms:
        raise ForceMatchingError(f"need cells (F, 3, 3) and N species for {n_frames} frames of {n_atoms} atoms")
    unknown = sorted(set(np.asarray(species).astype(str).tolist()) - set(species_names))
    if unknown:
        raise ForceMatchingError(f"species {', '.join(unknown)} not among {', '.join(species_names)}")


def check_cutoff(cutoff_angstrom: float, cells: np.ndarray) -> None:
    """Refuse a cutoff that is not positive or that the minimum image of ``cells`` cannot honour."""
    limit = default_cutoff(cells, margin_angstrom=0.0)
    if not 0.0 < cutoff_angstrom <= limit:
        raise ForceMatchingError(
            f"cutoff {cutoff_angstrom:.3f} Å must be positive and at most the minimum-image limit {limit:.3f} Å"
        )


def prepare_training(positions, forces, cells, species, species_names, train_frames, cutoff_angstrom,
                     *, fitter: str = "force matching", error: type[MldError] = ForceMatchingError):
    """The checked inputs every force fit starts from: ``(species, species_names, train_frames, cutoff_angstrom)``.

    ``species_names=None`` takes the species in order of first appearance; ``train_frames=None`` the
    training part of ``split_frames``, never the validation block; ``cutoff_angstrom=None`` the largest
    the training cells allow. An empty training set raises ``error`` naming ``fitter``.
    """
    species = np.asarray(species).astype(str)
    species_names = tuple(species_names) if species_names is not None else tuple(dict.fromkeys(species.tolist()))
    check_arrays(positions, forces, cells, species, species_names)
    train_frames = split_frames(positions.shape[0])[0] if train_frames is None else np.asarray(train_frames, np.int64)
    if len(train_frames) == 0:
        raise error(f"{fitter} needs at least one training frame")
    if cutoff_angstrom is None:
        cutoff_angstrom = default_cutoff(cells[train_frames])
    check_cutoff(cutoff_angstrom, cells[train_frames])
    return species, species_names, train_frames, cutoff_angstrom


# --- the repulsive core ----------------------------------------------------------------


def repulsive_core(
    r,
    r0,
    u0,
    du0,
    stiffness=CORE_STIFFNESS_EV_PER_ANGSTROM2,
    length=CORE_LENGTH_ANGSTROM,
):
    """Pair energy and its derivative below the sampled range: a C¹ exponential wall.

    With s = r0 − r ≥ 0 (Å), f0 = −du0 the force at r0 (eV/Å, positive = repulsive) and ℓ = ``length``:

        f(r) = −du/dr = f0 + a ℓ (exp(s/ℓ) − 1),       a = k + max(−f0, 0)/ℓ,   k = ``stiffness``
        u(r)          = u0 + f0 s + a ℓ (ℓ (exp(s/ℓ) − 1) − s)

    Properties (for k > 0, ℓ > 0): u and du/dr equal ``u0`` and ``du0`` at r0 (C¹ join); the force
    grows monotonically as r decreases (df/ds = a exp(s/ℓ) > 0); and it is strictly repulsive for
    every s ≥ ℓ whatever the sign of f0 (f(ℓ) ≥ −f0 (e − 2) + k ℓ (e − 1) > 0), and for every s > 0
    when f0 ≥ 0. So an attractive tabulated force at r0 turns repulsive within one blend length ℓ.

    Returns ``(u_ev, du_dr_ev_per_angstrom)``. Valid for r ≤ r0 only; callers switch to the table
    at r0. Written with numpy ufuncs only, so it works on arrays and inside ``numba.njit`` on scalars;
    ``discover.symbolic`` reruns this very code with sympy bound to ``np``, so the body may use no numpy
    function but ``np.maximum`` and ``np.expm1``.
    """
    s = r0 - r
    f0 = -du0
    a = stiffness + np.maximum(-f0, 0.0) / length
    growth = np.expm1(s / length)
    force = f0 + a * length * growth
    u = u0 + f0 * s + a * length * (length * growth - s)
    return u, -force


def outer_wall(r, r1, u1, du1, stiffness=CORE_STIFFNESS_EV_PER_ANGSTROM2, length=CORE_LENGTH_ANGSTROM):
    """Energy and derivative of a bonded pair beyond its sampled range r ≥ r1: ``repulsive_core`` mirrored.

    u(r) = core(2 r1 − r) with the core joined to (u1, −du1): C¹ at r1, and the energy rises ever
    faster as the pair stretches, so a bond the data never saw broken cannot break in a simulation.
    """
    u, du = repulsive_core(2.0 * r1 - r, r1, u1, -du1, stiffness, length)
    return u, -du


# --- pair histograms --------------------------------------------------------------------


@dataclass(frozen=True)
class PairHistogram:
    """Pair counts per pair type in distance bins, over the frames that were scanned."""

    pair_types: tuple[str, ...]
    edges_angstrom: np.ndarray  # (B+1,)
    counts: np.ndarray  # (T, B) int
    r_min_angstrom: np.ndarray  # (T,) smallest sampled distance per pair type
    n_frames: int
    r_max_angstrom: np.ndarray | None = None  # (T,) largest sampled distance per pair type

    @property
    def centres_angstrom(self) -> np.ndarray:
        return 0.5 * (self.edges_angstrom[1:] + self.edges_angstrom[:-1])


def pair_histogram(
    positions: np.ndarray,
    cells: np.ndarray,
    species: np.ndarray,
    species_names,
    cutoff: float,
    frames=None,
    bin_angstrom: float = HISTOGRAM_BIN_ANGSTROM,
    chunk_frames: int = 64,
    typing: PairTyping | None = None,
) -> PairHistogram:
    """Histogram of pair distances r < cutoff per pair type, and the smallest and largest distance of each.

    Intramolecular pairs of a molecular ``typing`` beyond the cutoff count in the last bin.
    """
    names = pair_type_names(species_names) if typing is None else list(typing.pair_types)
    types = species_types(species, species_names)
    n_bins = max(1, math.ceil(cutoff / bin_angstrom))
    edges = np.linspace(0.0, n_bins * bin_angstrom, n_bins + 1)
    counts = np.zeros((len(names), n_bins), dtype=np.int64)
    r_min = np.full(len(names), np.inf)
    r_max = np.full(len(names), -np.inf)
    n_frames = 0
    for chunk, pairs in iter_pair_chunks(positions, cells, types, cutoff, len(species_names), frames, chunk_frames,
                                         typing):
        n_frames += len(chunk)
        bins = np.minimum((pairs.r / bin_angstrom).astype(np.int64), n_bins - 1)
        counts += np.bincount(pairs.pair_type * n_bins + bins, minlength=len(names) * n_bins).reshape(len(names), -1)
        for t in range(len(names)):
            r_t = pairs.r[pairs.pair_type == t]
            if r_t.size:
                r_min[t] = min(r_min[t], float(r_t.min()))
                r_max[t] = max(r_max[t], float(r_t.max()))
    return PairHistogram(tuple(names), edges, counts, r_min, n_frames, r_max)


# --- the tabulated model ------------------------------------------------------------------


class PairForceViews:
    """``energy``, ``force`` and ``force_over_r`` of a pair model, from its ``energy_and_force(pair_type, r)``."""

    def energy(self, pair_type, r) -> np.ndarray:
        return self.energy_and_force(pair_type, r)[0]

    def force(self, pair_type, r) -> np.ndarray:
        return self.energy_and_force(pair_type, r)[1]

    def force_over_r(self, pair_type, r) -> np.ndarray:
        """f(r)/r in eV/Å², the factor that multiplies x_i − x_j (``invariants.scatter_pair_forces``)."""
        return self.force(pair_type, r) / np.asarray(r, dtype=float)


@dataclass
class TabulatedModel(PairForceViews):
    """Pair forces f_AB(r) as cubic B-splines on [r_min, r_c], a repulsive core below, zero beyond.

    f(r_c) = 0 exactly (the last spline coefficient is fixed at zero), and u(r) = ∫_r^{r_c} f, so
    both energy and force vanish continuously at the cutoff. Plain arrays throughout; ``to_dict``
    and ``from_dict`` give a JSON-ready form.

    An intramolecular type (``OH_intra``) is bonded: its spline spans [r_min, r_max], the sampled
    range (its last knot), u(r) = ∫_r^{r_max} f, and ``outer_wall`` continues it beyond r_max.
    """

    species: tuple[str, ...]
    pair_types: tuple[str, ...]
    cutoff_angstrom: float
    r_min_angstrom: np.ndarray  # (T,)
    knots: list  # T arrays of spline knots, Å
    force_coefficients: list  # T arrays of B-spline coefficients of f, eV/Å
    core_stiffness: float = CORE_STIFFNESS_EV_PER_ANGSTROM2
    core_length_angstrom: float = CORE_LENGTH_ANGSTROM
    _force_splines: list = field(init=False, repr=False, compare=False)
    _antiderivatives: list = field(init=False, repr=False, compare=False)
    _core_join: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        self.species = tuple(str(s) for s in self.species)
        self.pair_types = tuple(str(p) for p in self.pair_types)
        self.r_min_angstrom = np.asarray(self.r_min_angstrom, dtype=float)
        self.knots = [np.asarray(k, dtype=float) for k in self.knots]
        self.force_coefficients = [np.asarray(c, dtype=float) for c in self.force_coefficients]
        n_types = len(self.pair_types)
        self.bonded = np.array([is_intramolecular(n) for n in self.pair_types], dtype=bool)
        if not (len(self.knots) == len(self.force_coefficients) == len(self.r_min_angstrom) == n_types):
            raise ForceMatchingError("tabulated model: one knot vector, coefficient vector and r_min per pair type")
        self._force_splines = [
            BSpline(k, c, SPLINE_DEGREE, extrapolate=False) for k, c in zip(self.knots, self.force_coefficients)
        ]
        self._antiderivatives = [spline.antiderivative() for spline in self._force_splines]
        # u and du/dr at r_min, where the repulsive core takes over
        self._core_join = np.array(
            [(self._table_energy(t, r0), -float(self._force_splines[t](r0))) for t, r0 in enumerate(self.r_min_angstrom)]
        ).reshape(n_types, 2)

    @property
    def n_parameters(self) -> int:
        """Free coefficients (the last of each non-bonded type is fixed at zero by f(r_c) = 0)."""
        return int(sum(len(c) - (0 if b else 1) for c, b in zip(self.force_coefficients, self.bonded)))

    def r_end(self, t: int) -> float:
        """Where the table of type t ends: the cutoff, or r_max of a bonded type."""
        return float(self.knots[t][-1]) if self.bonded[t] else self.cutoff_angstrom

    def pair_type_of(self, species_a: str, species_b: str) -> int:
        for name in (species_a + species_b, species_b + species_a):
            if name in self.pair_types:
                return self.pair_types.index(name)
        raise ForceMatchingError(f"no pair type {species_a}{species_b} in this model ({', '.join(self.pair_types)})")

    def core_join(self, t: int) -> tuple[float, float, float]:
        """``(r0, u0, du0)`` of pair type t: where the repulsive core starts, and u, du/dr there.

        With ``core_stiffness`` and ``core_length_angstrom`` these are the arguments of
        ``repulsive_core`` that reproduce this model below r_min (for generated kernels).
        """
        u0, du0 = self._core_join[t]
        return float(self.r_min_angstrom[t]), float(u0), float(du0)

    def _table_energy(self, t: int, r):
        anti = self._antiderivatives[t]
        return anti(self.r_end(t)) - anti(r)

    def outer_join(self, t: int) -> tuple[float, float, float]:
        """``(r_max, u, du/dr)`` of bonded type t at r_max, where ``outer_wall`` takes over."""
        r1 = self.r_end(t)
        return r1, float(self._table_energy(t, r1)), -float(self._force_splines[t](r1))

    def energy_and_force(self, pair_type, r) -> tuple[np.ndarray, np.ndarray]:
        """u(r) in eV and f(r) = −du/dr in eV/Å, vectorised over broadcastable ``pair_type`` and ``r``."""
        pair_type, r = np.broadcast_arrays(np.asarray(pair_type, dtype=np.int64), np.asarray(r, dtype=float))
        u = np.zeros(r.shape)
        f = np.zeros(r.shape)
        for t in range(len(self.pair_types)):
            of_type = pair_type == t
            table = of_type & (r >= self.r_min_angstrom[t]) & (r < self.r_end(t))
            core = of_type & (r < self.r_min_angstrom[t])
            if self.bonded[t]:
                outer = of_type & (r >= self.r_end(t))
                if outer.any():
                    r1, u1, du1 = self.outer_join(t)
                    u[outer], du_outer = outer_wall(r[outer], r1, u1, du1, self.core_stiffness,
                                                    self.core_length_angstrom)
                    f[outer] = -du_outer
            if table.any():
                u[table] = self._table_energy(t, r[table])
                f[table] = self._force_splines[t](r[table])
            if core.any():
                r0, u0, du0 = self.core_join(t)
                u_core, du_core = repulsive_core(r[core], r0, u0, du0, self.core_stiffness, self.core_length_angstrom)
                u[core] = u_core
                f[core] = -du_core
        return u, f

    def table(self, r_grid) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """``{pair type: (u_ev, f_ev_per_angstrom)}`` on ``r_grid`` (Å), for tabulated kernels and LAMMPS tables."""
        r_grid = np.asarray(r_grid, dtype=float)
        return {name: self.energy_and_force(t, r_grid) for t, name in enumerate(self.pair_types)}

    def to_dict(self) -> dict:
        return {
            "kind": "tabulated_pair_forces",
            "species": list(self.species),
            "cutoff_angstrom": float(self.cutoff_angstrom),
            "spline_degree": SPLINE_DEGREE,
            "pair_types": list(self.pair_types),
            "core": {"stiffness_ev_per_angstrom2": float(self.core_stiffness),
                     "length_angstrom": float(self.core_length_angstrom)},
            "pairs": {
                name: {
                    "r_min_angstrom": float(self.r_min_angstrom[t]),
                    "knots_angstrom": self.knots[t].tolist(),
                    "force_coefficients_ev_per_angstrom": self.force_coefficients[t].tolist(),
                }
                for t, name in enumerate(self.pair_types)
            },
        }

    @classmethod
    def from_dict(cls, data: dict, label: str = "tabulated model") -> TabulatedModel:
        try:
            if data.get("kind") != "tabulated_pair_forces":
                raise ForceMatchingError(f"{label}: kind is {data.get('kind')!r}, expected 'tabulated_pair_forces'")
            if int(data.get("spline_degree", SPLINE_DEGREE)) != SPLINE_DEGREE:
                raise ForceMatchingError(f"{label}: only cubic splines are supported")
            species = tuple(data["species"])
            names = checked_pair_types(data.get("pair_types"), species, label)
            pairs = data["pairs"]
            missing = [n for n in names if n not in pairs]
            if missing:
                raise ForceMatchingError(f"{label}: missing pair type(s) {', '.join(missing)}")
            knots = [np.asarray(pairs[n]["knots_angstrom"], dtype=float) for n in names]
            coefficients = [np.asarray(pairs[n]["force_coefficients_ev_per_angstrom"], dtype=float) for n in names]
            for n, k, c in zip(names, knots, coefficients):
                if k.ndim != 1 or c.ndim != 1 or len(k) != len(c) + SPLINE_DEGREE + 1:
                    raise ForceMatchingError(f"{label}: pair {n}: need len(knots) = len(coefficients) + 4")
                if not (np.all(np.isfinite(k)) and np.all(np.isfinite(c)) and np.all(np.diff(k) >= 0)):
                    raise ForceMatchingError(f"{label}: pair {n}: knots must be finite and non-decreasing")
            core = data.get("core", {})
            return cls(
                species=species,
                pair_types=tuple(names),
                cutoff_angstrom=float(data["cutoff_angstrom"]),
                r_min_angstrom=np.array([float(pairs[n]["r_min_angstrom"]) for n in names]),
                knots=knots,
                force_coefficients=coefficients,
                core_stiffness=float(core.get("stiffness_ev_per_angstrom2", CORE_STIFFNESS_EV_PER_ANGSTROM2)),
                core_length_angstrom=float(core.get("length_angstrom", CORE_LENGTH_ANGSTROM)),
            )
        except ForceMatchingError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ForceMatchingError(f"{label}: malformed ({type(exc).__name__}: {exc})") from None


def checked_pair_types(names, species, label: str) -> list[str]:
    """The pair types of a model file: absent, every species pair; else those plus intramolecular ones."""
    base = pair_type_names(species)
    if names is None:
        return base
    intra = names[len(base):] if isinstance(names, list) else []
    if (not isinstance(names, list) or names[: len(base)] != base
            or any(not isinstance(n, str) or not is_intramolecular(n) or species_pair_of(n) not in base for n in intra)
            or len(set(names)) != len(names)
            or [base.index(species_pair_of(n)) for n in intra] != sorted(base.index(species_pair_of(n)) for n in intra)):
        raise ForceMatchingError(f"{label}: pair_types: expected {', '.join(base)} then intramolecular types "
                                 "in the same order, such as OH_intra")
    return list(names)


# --- the fit ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ForceMatchResult:
    model: TabulatedModel
    histogram: PairHistogram  # training frames only
    smoothing: float  # chosen penalty weight, relative to the mean diagonal of AᵀA
    cross_validation_rmse: dict  # {smoothing: blocked-CV force RMSE in eV/Å}
    train_rmse_ev_per_angstrom: float
    train_frames: np.ndarray
    wall_time_s: float


def clamped_knots(r_lo: float, r_hi: float, spacing: float) -> np.ndarray:
    """Knots of a clamped cubic B-spline on [r_lo, r_hi] (Å), at least four intervals of at most ``spacing``."""
    n_intervals = max(4, math.ceil((r_hi - r_lo) / spacing))
    breaks = np.linspace(r_lo, r_hi, n_intervals + 1)
    return np.concatenate([[r_lo] * SPLINE_DEGREE, breaks, [r_hi] * SPLINE_DEGREE])


def pair_spline_knots(histogram: PairHistogram, cutoff_angstrom: float, knot_spacing_angstrom: float,
                      error: type[MldError] = ForceMatchingError) -> tuple[list, list]:
    """``(knots, n_free)`` per pair type: splines on [r_min, r_c], the last coefficient fixed by f(r_c) = 0;
    for a bonded (intramolecular) type on [r_min, r_max], every coefficient free.

    A pair type never sampled below the cutoff has no r_min to start from, and raises ``error``.
    """
    unsampled = [n for n, r in zip(histogram.pair_types, histogram.r_min_angstrom) if not np.isfinite(r)]
    if unsampled:
        raise error(f"no {', '.join(unsampled)} pairs within {cutoff_angstrom:.3f} Å in the training frames")
    knots, n_free = [], []
    for t, (name, r0) in enumerate(zip(histogram.pair_types, histogram.r_min_angstrom)):
        bonded = is_intramolecular(name)
        knots.append(clamped_knots(r0, histogram.r_max_angstrom[t] if bonded else cutoff_angstrom,
                                   knot_spacing_angstrom))
        n_free.append(len(knots[-1]) - SPLINE_DEGREE - (1 if bonded else 2))  # non-bonded: f(r_c) = 0 fixed
    return knots, n_free


def design_blocks(pairs, n_atoms_total: int, knots: list, n_free: list) -> list[np.ndarray]:
    """Per axis, the (n_atoms_total, Σ n_free) matrix mapping free coefficients to atom forces."""
    offsets = np.concatenate([[0], np.cumsum(n_free)])
    blocks = [np.zeros((n_atoms_total, offsets[-1])) for _ in range(3)]
    for t, k in enumerate(knots):
        sel = np.flatnonzero(pairs.pair_type == t)
        if sel.size == 0:
            continue
        r = np.clip(pairs.r[sel], k[0], k[-1])
        basis = BSpline.design_matrix(r, k, SPLINE_DEGREE).tocsr()[:, : n_free[t]]
        # +1 on atom i, −1 on atom j: f/r·(x_i − x_j) acts on i and its opposite on j
        incidence = sparse.csr_matrix(
            (np.concatenate([np.ones(sel.size), -np.ones(sel.size)]),
             (np.concatenate([pairs.i[sel], pairs.j[sel]]), np.tile(np.arange(sel.size), 2))),
            shape=(n_atoms_total, sel.size),
        )
        for axis in range(3):
            scaled = sparse.diags(pairs.displacement[sel, axis] / pairs.r[sel]) @ basis
            blocks[axis][:, offsets[t] : offsets[t + 1]] = (incidence @ scaled).toarray()
    return blocks


def second_difference_penalty(n_free: list, fixed_zero=None) -> np.ndarray:
    """Block-diagonal DᵀD of second differences of each pair type's coefficients (the fixed zero included).

    ``fixed_zero[t]`` (default: all true) says whether type t has a last coefficient fixed at zero.
    """
    total = int(sum(n_free))
    penalty = np.zeros((total, total))
    start = 0
    fixed_zero = [True] * len(n_free) if fixed_zero is None else fixed_zero
    for n, fixed in zip(n_free, fixed_zero):
        d = np.diff(np.eye(n + int(fixed)), n=2, axis=0)[:, :n]  # a fixed last column (0) dropped
        penalty[start : start + n, start : start + n] = d.T @ d
        start += n
    return penalty


def pair_model_from_coefficients(species_names, cutoff_angstrom: float, r_min_angstrom: np.ndarray, knots: list,
                                 n_free: list, coefficients: np.ndarray, pair_types=None) -> TabulatedModel:
    """The ``TabulatedModel`` whose free coefficients lead ``coefficients``, each non-bonded type's fixed zero
    appended. ``pair_types`` defaults to every species pair."""
    names = pair_type_names(species_names) if pair_types is None else list(pair_types)
    offsets = np.concatenate([[0], np.cumsum(n_free)])
    tail = [np.zeros(0) if is_intramolecular(n) else np.zeros(1) for n in names]
    return TabulatedModel(
        species=species_names,
        pair_types=tuple(names),
        cutoff_angstrom=float(cutoff_angstrom),
        r_min_angstrom=np.array(r_min_angstrom, dtype=float),
        knots=knots,
        force_coefficients=[np.append(coefficients[offsets[t] : offsets[t + 1]], tail[t]) for t in range(len(names))],
    )


# --- normal equations per fold, and blocked cross-validation ---------------------------------------


@dataclass(frozen=True)
class FoldNormalEquations:
    """AᵀA, Aᵀy, yᵀy and the number of rows of each contiguous fold of the training frames."""

    grams: np.ndarray  # (K, P, P)
    rhss: np.ndarray  # (K, P)
    sums_y2: np.ndarray  # (K,)
    counts: np.ndarray  # (K,)

    @property
    def n_folds(self) -> int:
        return len(self.counts)

    @property
    def gram(self) -> np.ndarray:
        return self.grams.sum(axis=0)

    @property
    def rhs(self) -> np.ndarray:
        return self.rhss.sum(axis=0)


def fold_normal_equations(designs, forces: np.ndarray, n_train_frames: int, n_folds: int,
                          n_columns: int) -> FoldNormalEquations:
    """Normal equations of a linear force fit, summed chunk by chunk and per contiguous fold of the training frames.

    ``designs`` yields ``(chunk, blocks)`` for consecutive chunks of the training frames in order, as
    ``iter_pair_chunks`` does: ``chunk`` the frame indices into ``forces`` (F,N,3) and ``blocks[axis]``
    the (len(chunk)·N, ``n_columns``) design matrix of that force component. ``n_folds`` is clipped to
    [1, ``n_train_frames``].
    """
    n_atoms = forces.shape[1]
    n_folds = max(1, min(n_folds, n_train_frames))
    fold_of_position = np.arange(n_train_frames) * n_folds // n_train_frames
    grams = np.zeros((n_folds, n_columns, n_columns))
    rhss = np.zeros((n_folds, n_columns))
    sums_y2 = np.zeros(n_folds)
    counts = np.zeros(n_folds)
    position = 0
    for chunk, blocks in designs:
        folds = fold_of_position[position : position + len(chunk)]
        position += len(chunk)
        target = forces[chunk]
        # folds are contiguous in time, so each fold's frames are one slice of the chunk
        for fold in np.unique(folds):
            frames_in_fold = np.flatnonzero(folds == fold)
            rows = slice(frames_in_fold[0] * n_atoms, (frames_in_fold[-1] + 1) * n_atoms)
            a = np.concatenate([block[rows] for block in blocks])
            y = np.concatenate([target[frames_in_fold, :, axis].ravel() for axis in range(3)])
            grams[fold] += a.T @ a
            rhss[fold] += a.T @ y
            sums_y2[fold] += y @ y
            counts[fold] += y.size
    return FoldNormalEquations(grams, rhss, sums_y2, counts)


class BlockedFit(NamedTuple):
    coefficients: np.ndarray
    smoothing: float
    cross_validation_rmse: dict  # {smoothing: blocked-CV force RMSE in eV/Å}; empty when smoothing was given
    train_rmse_ev_per_angstrom: float


def solve_blocked(equations: FoldNormalEquations, solve, grid, smoothing: float | None = None,
                  error: type[MldError] = ForceMatchingError) -> BlockedFit:
    """Coefficients from ``solve(gram, rhs, smoothing)`` on all folds, the smoothing chosen by blocked CV.

    ``smoothing=None`` takes the value of ``grid`` whose fits on all folds but one best predict the
    held-out fold (squared errors summed over folds); that needs two folds, or ``error`` is raised.
    """
    gram, rhs = equations.gram, equations.rhs
    cv_rmse = {}
    if smoothing is None:
        if equations.n_folds < 2:
            raise error("choosing the smoothing by cross-validation needs at least two training frames")
        for candidate in grid:
            sq = 0.0
            for fold in range(equations.n_folds):
                c = solve(gram - equations.grams[fold], rhs - equations.rhss[fold], candidate)
                sq += c @ equations.grams[fold] @ c - 2.0 * c @ equations.rhss[fold] + equations.sums_y2[fold]
            cv_rmse[float(candidate)] = float(np.sqrt(max(sq, 0.0) / equations.counts.sum()))
        smoothing = min(cv_rmse, key=cv_rmse.get)
    coefficients = solve(gram, rhs, smoothing)
    train_sq = coefficients @ gram @ coefficients - 2.0 * coefficients @ rhs + equations.sums_y2.sum()
    return BlockedFit(coefficients, float(smoothing), cv_rmse,
                      float(np.sqrt(max(train_sq, 0.0) / equations.counts.sum())))


def _solve(gram: np.ndarray, rhs: np.ndarray, penalty: np.ndarray, smoothing: float) -> np.ndarray:
    scale = np.trace(gram) / max(np.trace(penalty), 1e-300)
    # a tiny ridge keeps never-sampled coefficients (empty knot intervals) determined
    ridge = 1e-12 * np.trace(gram) / len(gram)
    return np.linalg.solve(gram + smoothing * scale * penalty + ridge * np.eye(len(gram)), rhs)


def fit_tabulated(
    positions: np.ndarray,
    forces: np.ndarray,
    cells: np.ndarray,
    species: np.ndarray,
    species_names=None,
    train_frames=None,
    cutoff_angstrom: float | None = None,
    knot_spacing_angstrom: float = 0.1,
    smoothing: float | None = None,
    n_folds: int = 4,
    chunk_frames: int = 64,
    typing: PairTyping | None = None,
) -> ForceMatchResult:
    """Fit tabulated pair forces to per-atom forces on ``train_frames``.

    With a molecular ``typing`` the pair types are its intermolecular and intramolecular laws.

    ``train_frames=None`` means the training part of ``split_frames``, never the validation block.
    ``positions``, ``forces`` (F,N,3) in Å and eV/Å, ``cells`` (F,3,3), ``species`` (N,).
    ``smoothing=None`` picks the penalty weight from ``SMOOTHING_GRID`` by blocked cross-validation
    over ``n_folds`` contiguous blocks of the training frames; validation frames are never touched.
    """
    started = time.perf_counter()
    species, species_names, train_frames, cutoff_angstrom = prepare_training(
        positions, forces, cells, species, species_names, train_frames, cutoff_angstrom)
    types = species_types(species, species_names)
    n_atoms = positions.shape[1]

    histogram = pair_histogram(positions, cells, species, species_names, cutoff_angstrom, train_frames,
                               chunk_frames=chunk_frames, typing=typing)
    knots, n_free = pair_spline_knots(histogram, cutoff_angstrom, knot_spacing_angstrom)

    # normal equations per contiguous block of training frames, for blocked cross-validation
    designs = ((chunk, design_blocks(pairs, len(chunk) * n_atoms, knots, n_free))
               for chunk, pairs in iter_pair_chunks(positions, cells, types, cutoff_angstrom, len(species_names),
                                                    train_frames, chunk_frames, typing))
    equations = fold_normal_equations(designs, forces, len(train_frames), n_folds, int(sum(n_free)))
    penalty = second_difference_penalty(n_free, [not is_intramolecular(n) for n in histogram.pair_types])
    fit = solve_blocked(equations, lambda gram, rhs, weight: _solve(gram, rhs, penalty, weight), SMOOTHING_GRID,
                        smoothing)
    return ForceMatchResult(
        model=pair_model_from_coefficients(species_names, cutoff_angstrom, histogram.r_min_angstrom, knots, n_free,
                                           fit.coefficients, histogram.pair_types),
        histogram=histogram,
        smoothing=fit.smoothing,
        cross_validation_rmse=fit.cross_validation_rmse,
        train_rmse_ev_per_angstrom=fit.train_rmse_ev_per_angstrom,
        train_frames=train_frames,
        wall_time_s=time.perf_counter() - started,
    )
