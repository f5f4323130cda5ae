"""Post-run observables of a trajectory: structure, molecular geometry, spectra and transport.

Everything here is a pure function on numpy arrays in internal units: positions (F, N, 3)
in Å, velocities (F, N, 3) in Å/fs, cells (3, 3) or one per frame (F, 3, 3) with the cell
vectors as rows, times in fs. A single frame (N, 3) is accepted wherever a trajectory is.
``types`` is any per-atom label array (element symbols, or integer kernel types), and a
species is selected by comparing with one label.

What is here, and where it comes from:

* radial distribution functions g_ab(r) with their first shell (Allen & Tildesley,
  *Computer Simulation of Liquids*, 2nd ed. 2017, §8.2);
* topology-free water geometry: each H belongs to its nearest O; O–H bond lengths,
  H–O–H angles, and histograms that can be compared by their overlap coefficient;
* the velocity autocorrelation function by FFT (Wiener–Khinchin) and the vibrational
  density of states as its windowed cosine transform, in cm⁻¹;
* the mean squared displacement over all time origins by FFT (Calandrini et al., "nMoldyn:
  interfacing spectroscopic experiments, MD simulations and models for time correlation
  functions", JDN 12, 201 (2011), §4.2) and the self-diffusion coefficient from the Einstein
  relation MSD = 6 D t with a block-averaged error bar;
* the distribution of the instantaneous kinetic temperature.
"""

from __future__ import annotations

from typing import NamedTuple

import numba
import numpy as np

from simulate.errors import MldError
from simulate.space import max_minimum_image_cutoff, minimum_image
from simulate.units import ANGSTROM2_PER_FS_TO_1E9_M2_PER_S, SPEED_OF_LIGHT_CM_PER_FS, temperature_k

# Below these, a diffusion coefficient is not to be trusted: the Einstein relation holds
# only once a molecule has left its first-neighbour cage (MSD of a few Å², ~(2 Å)²), and
# a fit over less than about a picosecond mostly sees the cage rattling of liquid water.
MIN_FIT_WINDOW_FS = 1000.0
MIN_FIT_MSD_ANGSTROM2 = 4.0
MAX_RELATIVE_ERROR = 0.3

# Vibrational bands of liquid water (cm⁻¹) in which to look for VDOS peaks.
WATER_BANDS_CM = {"libration": (300.0, 1000.0), "bend": (1300.0, 2000.0), "stretch": (2600.0, 4200.0)}

# Pair distances are computed in chunks of at most this many pairs to bound memory.
_PAIRS_PER_CHUNK = 4_000_000


class ObservableError(MldError, ValueError):
    """An observable asked of a trajectory that cannot give it (bad shapes, range or window)."""


# --- shapes ----------------------------------------------------------------------------
def _as_trajectory(positions: np.ndarray, name: str = "positions") -> np.ndarray:
    positions = np.asarray(positions, dtype=float)
    if positions.ndim == 2:
        positions = positions[None]
    if positions.ndim != 3 or positions.shape[-1] != 3:
        raise ObservableError(f"{name} must have shape (frames, atoms, 3), got {positions.shape}")
    return positions


def _frame_cells(cell: np.ndarray, n_frames: int) -> np.ndarray:
    cell = np.asarray(cell, dtype=float)
    if cell.shape == (3, 3):
        return np.broadcast_to(cell, (n_frames, 3, 3))
    if cell.shape != (n_frames, 3, 3):
        raise ObservableError(f"cell must have shape (3, 3) or ({n_frames}, 3, 3), got {cell.shape}")
    return cell


def _minimum_image_frames(displacements: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """Minimum image of displacements (C, ..., 3) where frame c lives in cells[c]."""
    if np.all(cells == cells[0]):
        return minimum_image(displacements, cells[0])
    return np.stack([minimum_image(d, c) for d, c in zip(displacements, cells)])


def _select(types: np.ndarray, label, n_atoms: int) -> np.ndarray:
    types = np.asarray(types)
    if types.shape != (n_atoms,):
        raise ObservableError(f"types must have one label per atom ({n_atoms}), got shape {types.shape}")
    index = np.flatnonzero(types == label)
    if index.size == 0:
        raise ObservableError(f"no atom of type {label!r} in the trajectory")
    return index


def _frame_chunks(n_frames: int, items_per_frame: int):
    step = max(1, _PAIRS_PER_CHUNK // max(1, items_per_frame))
    for start in range(0, n_frames, step):
        yield slice(start, min(start + step, n_frames))


def _trapezoid(y: np.ndarray, x: np.ndarray) -> float:
    return float(np.sum(0.5 * (y[1:] + y[:-1]) * np.diff(x)))


# --- peaks on a uniform grid -----------------------------------------------------------
class Peak(NamedTuple):
    position: float  # same unit as the grid; NaN when there is none
    height: float


def _parabolic_vertex(x: np.ndarray, y: np.ndarray, i: int) -> Peak:
    """Vertex of the parabola through (x, y) at i-1, i, i+1 on a uniform grid.

    Three-point quadratic interpolation: the extremum of a sampled smooth curve lies within
    half a bin of the sampled one, and this places it to a small fraction of a bin.
    """
    if i <= 0 or i >= len(y) - 1:
        return Peak(float(x[i]), float(y[i]))
    y0, y1, y2 = y[i - 1], y[i], y[i + 1]
    curvature = y0 - 2.0 * y1 + y2
    if curvature == 0.0:
        return Peak(float(x[i]), float(y1))
    shift = 0.5 * (y0 - y2) / curvature  # in bins, within [-½, ½] at an extremum
    return Peak(float(x[i] + shift * (x[i + 1] - x[i])), float(y1 - 0.25 * (y0 - y2) * shift))


def _fitted_vertex(x: np.ndarray, y: np.ndarray, i: int, half_width: float, maximum: bool = True) -> Peak:
    """Maximum (or minimum) of the least-squares parabola through the points within ``half_width`` of x[i].

    On a noisy histogram (an RDF from a ps of 32 waters) the three-point vertex follows the
    noise of three bins: the first O–O peak of CP2K's own run moved by 0.12 Å between quarters
    of it. Fitting the whole top of the peak averages that noise; the window is re-centred on
    the vertex until it stays put, so the start bin matters little. When the fit bends the wrong
    way, its vertex leaves the window, the window does not settle or it wanders more than
    ``half_width`` from the start, the answer is the start itself: refined by the three-point vertex
    where the start is an extremum of y, else the grid point (``i`` may be an extremum of a smoothed
    curve only, where the three-point vertex could land anywhere).
    """
    spacing = float(x[1] - x[0]) if len(x) > 1 else 0.0
    half_width = max(half_width, 1.01 * spacing)  # at least one point each side
    start = i
    for _ in range(5):
        window = np.abs(x - x[i]) <= half_width
        if i <= 0 or i >= len(y) - 1 or np.count_nonzero(window) < 3:
            break
        c2, c1, c0 = np.polyfit(x[window] - x[i], y[window], 2)
        if (c2 < 0.0) != maximum or c2 == 0.0:
            break
        shift = -c1 / (2.0 * c2)
        if abs(shift) > half_width:
            break
        position = x[i] + shift
        nearest = int(np.argmin(np.abs(x - position)))
        if nearest == i:
            if abs(position - x[start]) <= half_width:
                return Peak(float(position), float(c0 + c1 * shift + c2 * shift * shift))
            break
        i = nearest
    return _grid_extremum(x, y, start, maximum)


def _grid_extremum(x: np.ndarray, y: np.ndarray, i: int, maximum: bool) -> Peak:
    """The three-point vertex at i where y has an extremum of the asked kind there, else the grid point."""
    if 0 < i < len(y) - 1:
        sign = 1.0 if maximum else -1.0
        if sign * y[i] >= sign * y[i - 1] and sign * y[i] >= sign * y[i + 1]:
            return _parabolic_vertex(x, y, i)
    return Peak(float(x[i]), float(y[i]))


def _smoothed(y: np.ndarray, bins: int) -> np.ndarray:
    """Moving average over ``bins`` points (odd), edges averaged over what exists."""
    if bins <= 1:
        return y
    kernel = np.ones(bins)
    return np.convolve(y, kernel, "same") / np.convolve(np.ones_like(y), kernel, "same")


def _refine(x: np.ndarray, y: np.ndarray, i: int, fit_half_width: float | None) -> Peak:
    return _parabolic_vertex(x, y, i) if fit_half_width is None else _fitted_vertex(x, y, i, fit_half_width)


def peak_in_range(
    x: np.ndarray, y: np.ndarray, x_low: float, x_high: float, min_relative_height: float = 1e-3,
    fit_half_width: float | None = None, smooth_bins: int = 1, min_prominence: float = 0.0,
) -> Peak:
    """The highest local maximum of y(x) with x_low ≤ x ≤ x_high, refined by a parabola.

    A maximum that is only the edge of the range (y still rising out of it) is not a peak,
    nor is a ripple lower than ``min_relative_height`` times the highest y anywhere (window
    side lobes, round-off): then the result is (NaN, NaN). For noisy curves, the maximum is
    looked for on a ``smooth_bins`` moving average, and refined by a least-squares parabola
    over ``fit_half_width`` either side (:func:`_fitted_vertex`) on y itself. With
    ``min_prominence``, the smoothed maximum must also stand that fraction of its height above
    the lowest smoothed y on *each* side within three fit half-widths: a shoulder or a plateau
    with a ripple on it (an RDF whose shell is washed out) is then no peak.
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    ys = _smoothed(y, smooth_bins)
    interior = np.arange(1, len(y) - 1)
    local_max = (ys[interior] >= ys[interior - 1]) & (ys[interior] >= ys[interior + 1])
    local_max &= ys[interior] > max(0.0, min_relative_height * float(np.max(ys)))
    candidates = interior[local_max & (x[interior] >= x_low) & (x[interior] <= x_high)]
    if candidates.size == 0:
        return Peak(float("nan"), float("nan"))
    best = int(candidates[np.argmax(ys[candidates])])
    if min_prominence > 0.0:
        reach = 3.0 * (fit_half_width or float(x[1] - x[0]))
        left = ys[(x >= x[best] - reach) & (x <= x[best])].min()
        right = ys[(x >= x[best]) & (x <= x[best] + reach)].min()
        if ys[best] - max(left, right) < min_prominence * ys[best]:
            return Peak(float("nan"), float("nan"))
    peak = _refine(x, y, best, fit_half_width)
    if not x_low <= peak.position <= x_high:  # refined across the edge: keep the grid's answer
        return Peak(float(x[best]), float(y[best]))
    return peak


# --- radial distribution function ------------------------------------------------------
@numba.njit(cache=True)
def _pair_distance_histogram(positions_a, positions_b, like, cells, inverse_cells, r_max, counts):
    """Add to ``counts`` the minimum-image a–b distances below r_max, frame by frame.

    The hot loop of :func:`rdf`, in numba because numpy spends ~50 ns per distance on
    temporaries and this ~3. The minimum image is that of :func:`simulate.space.minimum_image`
    (round the fractional displacement), written out per pair; like pairs count i < j once.
    """
    n_bins = counts.size
    inverse_bin_width = n_bins / r_max
    r_max2 = r_max * r_max
    for f in range(positions_a.shape[0]):
        h = cells[f]
        g = inverse_cells[f]
        for i in range(positions_a.shape[1]):
            start = i + 1 if like else 0
            for j in range(start, positions_b.shape[1]):
                dx = positions_b[f, j, 0] - positions_a[f, i, 0]
                dy = positions_b[f, j, 1] - positions_a[f, i, 1]
                dz = positions_b[f, j, 2] - positions_a[f, i, 2]
                sx = dx * g[0, 0] + dy * g[1, 0] + dz * g[2, 0]
                sy = dx * g[0, 1] + dy * g[1, 1] + dz * g[2, 1]
                sz = dx * g[0, 2] + dy * g[1, 2] + dz * g[2, 2]
                sx -= np.rint(sx)
                sy -= np.rint(sy)
                sz -= np.rint(sz)
                dx = sx * h[0, 0] + sy * h[1, 0] + sz * h[2, 0]
                dy = sx * h[0, 1] + sy * h[1, 1] + sz * h[2, 1]
                dz = sx * h[0, 2] + sy * h[1, 2] + sz * h[2, 2]
                r2 = dx * dx + dy * dy + dz * dz
                if r2 < r_max2:
                    k = int(np.sqrt(r2) * inverse_bin_width)
                    if k < n_bins:
                        counts[k] += 1


def rdf(
    positions: np.ndarray,
    cell: np.ndarray,
    types: np.ndarray,
    type_a,
    type_b,
    r_max_angstrom: float,
    n_bins: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Radial distribution function g_ab(r), averaged over the frames.

    g_ab(r) = ⟨n_ab(r)⟩ / (N_pairs ⟨1/V⟩ 4π r² dr), with N_pairs = N_a(N_a−1)/2 for like
    pairs and N_a N_b for unlike ones, so that g → 1 in an ideal gas in both cases. Each
    frame is normalised by its own volume. ``r_max_angstrom`` may not exceed the
    minimum-image limit (half the smallest perpendicular width of any frame's cell).

    Returns (r_centres in Å, g), both of length n_bins.
    """
    positions = _as_trajectory(positions)
    n_frames, n_atoms = positions.shape[:2]
    cells = _frame_cells(cell, n_frames)
    limit = min(max_minimum_image_cutoff(c) for c in np.unique(cells, axis=0))
    if not 0 < r_max_angstrom <= limit + 1e-12:
        raise ObservableError(
            f"rdf r_max {r_max_angstrom} Å must be positive and at most the minimum-image limit {limit:.4f} Å"
        )
    if n_bins < 1:
        raise ObservableError(f"rdf needs at least one bin, got {n_bins}")
    index_a = _select(types, type_a, n_atoms)
    index_b = _select(types, type_b, n_atoms)
    like = type_a == type_b
    if like and index_a.size < 2:
        raise ObservableError(f"rdf of {type_a!r} with itself needs at least two such atoms")
    n_pairs = index_a.size * (index_a.size - 1) // 2 if like else index_a.size * index_b.size

    counts = np.zeros(n_bins, dtype=np.int64)
    _pair_distance_histogram(
        np.ascontiguousarray(positions[:, index_a]),
        np.ascontiguousarray(positions[:, index_b]),
        like,
        np.ascontiguousarray(cells),
        np.linalg.inv(cells),
        float(r_max_angstrom),
        counts,
    )

    edges = np.linspace(0.0, r_max_angstrom, n_bins + 1)
    shell_volumes = 4.0 / 3.0 * np.pi * (edges[1:] ** 3 - edges[:-1] ** 3)
    inverse_volume_sum = float(np.sum(1.0 / np.abs(np.linalg.det(cells))))
    ideal_counts = n_pairs * inverse_volume_sum * shell_volumes
    return 0.5 * (edges[1:] + edges[:-1]), counts / ideal_counts


class RdfShell(NamedTuple):
    peak_angstrom: float
    peak_height: float
    minimum_angstrom: float  # NaN when g does not fall below the threshold after the peak
    minimum_height: float


# RDF peaks: the maximum is looked for on a 5-bin moving average and refined over ±0.15 Å
# (13 bins of the usual 0.025 Å); see _fitted_vertex. On CP2K's 1.2 ps run of 32 waters the
# first O–O peak of the halves then differs by at most 0.02 Å for any binning tried
# (three-point vertex: 0.08 Å), and its quarters scatter by 0.02 Å instead of 0.12 Å.
# Over ±0.1 Å the halves were 0.013–0.027 Å apart, depending on the binning.
RDF_PEAK_FIT_HALF_WIDTH_ANGSTROM = 0.15
RDF_PEAK_SMOOTH_BINS = 5


def rdf_first_shell(
    r_angstrom: np.ndarray, g: np.ndarray, threshold: float = 1.0,
    fit_half_width_angstrom: float = RDF_PEAK_FIT_HALF_WIDTH_ANGSTROM, smooth_bins: int = RDF_PEAK_SMOOTH_BINS,
) -> RdfShell:
    """First peak and first minimum of g(r), both refined by a least-squares parabola.

    The first peak is the maximum of the first run of bins where g, smoothed over
    ``smooth_bins``, exceeds ``threshold`` (g = 1 is the ideal-gas level, so small-r noise
    cannot pass for a peak, nor can one noisy bin); the first minimum is the lowest point
    before the smoothed g rises above the threshold again.
    """
    r = np.asarray(r_angstrom, dtype=float)
    g = np.asarray(g, dtype=float)
    gs = _smoothed(g, smooth_bins)
    above = gs > threshold
    if not above.any():
        raise ObservableError(f"g(r) never exceeds {threshold}: no first peak")
    start = int(np.argmax(above))
    end = start + int(np.argmin(above[start:])) if not above[start:].all() else len(g)
    peak = _fitted_vertex(r, g, start + int(np.argmax(gs[start:end])), fit_half_width_angstrom)
    if end == len(g):
        return RdfShell(peak.position, peak.height, float("nan"), float("nan"))
    rest = above[end:]
    stop = end + int(np.argmax(rest)) if rest.any() else len(g)
    segment = gs[end:stop]
    if segment.min() >= threshold:
        return RdfShell(peak.position, peak.height, float("nan"), float("nan"))
    lowest = np.flatnonzero(segment == segment.min())
    if lowest.size > 1:  # a flat floor (g = 0 between lattice shells): take its middle
        middle = end + 0.5 * (lowest[0] + lowest[-1])
        return RdfShell(
            peak.position, peak.height, float(np.interp(middle, np.arange(len(r)), r)), float(segment.min())
        )
    minimum = _fitted_vertex(r, g, end + int(lowest[0]), fit_half_width_angstrom, maximum=False)
    return RdfShell(peak.position, peak.height, minimum.position, minimum.height)


def rdf_difference(r_angstrom: np.ndarray, g_a: np.ndarray, g_b: np.ndarray) -> float:
    """∫ |g_a(r) − g_b(r)| dr in Å, for two RDFs on the same grid (trapezoid rule)."""
    r = np.asarray(r_angstrom, dtype=float)
    g_a = np.asarray(g_a, dtype=float)
    g_b = np.asarray(g_b, dtype=float)
    if not (g_a.shape == g_b.shape == r.shape):
        raise ObservableError(
            f"RDFs to compare must share one grid, got shapes {g_a.shape}, {g_b.shape}, {r.shape}"
        )
    return float(_trapezoid(np.abs(g_a - g_b), r))


# --- distributions ---------------------------------------------------------------------
class Distribution(NamedTuple):
    mean: float
    std: float
    bin_edges: np.ndarray
    density: np.ndarray  # counts / (all values × bin width): values outside the edges lower its area
    n_values: int


def distribution(values: np.ndarray, bin_edges: np.ndarray) -> Distribution:
    """Mean, standard deviation and normalised histogram of a sample."""
    values = np.asarray(values, dtype=float).ravel()
    bin_edges = np.asarray(bin_edges, dtype=float)
    if values.size == 0:
        raise ObservableError("cannot summarise an empty sample")
    counts, _ = np.histogram(values, bins=bin_edges)
    density = counts / (values.size * np.diff(bin_edges))
    return Distribution(float(values.mean()), float(values.std()), bin_edges, density, int(values.size))


def histogram_overlap(a: Distribution, b: Distribution) -> float:
    """Overlap coefficient ∫ min(p_a, p_b): 1 for identical histograms, 0 for disjoint ones."""
    if a.bin_edges.shape != b.bin_edges.shape or not np.allclose(a.bin_edges, b.bin_edges):
        raise ObservableError("distributions to compare must share their bin edges")
    return float(np.sum(np.minimum(a.density, b.density) * np.diff(a.bin_edges)))


def temperature_distribution(
    velocities: np.ndarray, masses: np.ndarray, bin_edges: np.ndarray, degrees_of_freedom: int | None = None
) -> Distribution:
    """Distribution of the instantaneous kinetic temperature (K) over the frames."""
    velocities = _as_trajectory(velocities, "velocities")
    return distribution(
        temperature_k(velocities, np.asarray(masses, dtype=float), degrees_of_freedom), bin_edges
    )


# --- water geometry --------------------------------------------------------------------
class WaterGeometry(NamedTuple):
    owner: np.ndarray  # (F, N_H) index (into the trajectory's atoms) of each H's nearest O
    bond_lengths_angstrom: np.ndarray  # (F, N_H) distance of each H to its O
    angles_degrees: np.ndarray  # flat: H–O–H angle of every O that holds exactly two H, all frames
    bad_oxygens: np.ndarray  # (F,) number of O that hold other than two H


def water_geometry(
    positions: np.ndarray, cell: np.ndarray, types: np.ndarray, oxygen="O", hydrogen="H"
) -> WaterGeometry:
    """Topology-free water molecules: every H joins its nearest O (minimum image).

    No bond list is assumed, so proton transfer or a broken molecule shows up as an O with
    one or three H (counted in ``bad_oxygens``) rather than as a wrong bond length.
    """
    positions = _as_trajectory(positions)
    n_frames, n_atoms = positions.shape[:2]
    cells = _frame_cells(cell, n_frames)
    index_o = _select(types, oxygen, n_atoms)
    index_h = _select(types, hydrogen, n_atoms)
    owner = np.empty((n_frames, index_h.size), dtype=np.int64)
    bonds = np.empty((n_frames, index_h.size))
    angles = []
    bad = np.empty(n_frames, dtype=np.int64)
    for chunk in _frame_chunks(n_frames, index_o.size * index_h.size):
        d = _minimum_image_frames(
            positions[chunk][:, index_h, None, :] - positions[chunk][:, None, index_o, :], cells[chunk]
        )  # (C, N_H, N_O, 3), O → H
        r = np.sqrt(np.einsum("...k,...k->...", d, d))
        nearest = np.argmin(r, axis=2)  # (C, N_H) into index_o
        owner[chunk] = index_o[nearest]
        bonds[chunk] = np.take_along_axis(r, nearest[..., None], axis=2)[..., 0]
        oh = np.take_along_axis(d, nearest[..., None, None], axis=2)[:, :, 0, :]  # (C, N_H, 3)
        for c in range(nearest.shape[0]):
            n_held = np.bincount(nearest[c], minlength=index_o.size)
            bad[chunk.start + c] = int(np.count_nonzero(n_held != 2))
            order = np.argsort(nearest[c], kind="stable")
            held = nearest[c][order]
            # after sorting by owner, a water's two H are neighbours in the list
            pair_start = np.flatnonzero((held[:-1] == held[1:]) & (n_held[held[:-1]] == 2))
            u = oh[c][order[pair_start]]
            v = oh[c][order[pair_start + 1]]
            cross = np.linalg.norm(np.cross(u, v), axis=-1)
            angles.append(np.degrees(np.arctan2(cross, np.einsum("ik,ik->i", u, v))))
    return WaterGeometry(owner, bonds, np.concatenate(angles), bad)


# --- velocity autocorrelation and vibrational spectrum ---------------------------------
def _autocorrelation_fft(x: np.ndarray, n_lags: int) -> np.ndarray:
    """Σ_t x(t) x(t+τ) / (F − τ) along the last axis for τ < n_lags (all time origins)."""
    n_frames = x.shape[-1]
    n_fft = 1 << int(np.ceil(np.log2(2 * n_frames)))  # zero padding ≥ F avoids circular wrap-around
    spectrum = np.fft.rfft(x, n=n_fft, axis=-1)
    correlation = np.fft.irfft(spectrum * spectrum.conj(), n=n_fft, axis=-1)[..., :n_lags]
    return correlation / (n_frames - np.arange(n_lags))


def _lag_count(n_frames: int, dt_fs: float, max_lag_fs: float | None, default_fraction: float) -> int:
    if dt_fs <= 0:
        raise ObservableError(f"time step must be positive, got {dt_fs} fs")
    if n_frames < 2:
        raise ObservableError(f"need at least two frames for a time correlation, got {n_frames}")
    if max_lag_fs is None:
        return max(2, int(n_frames * default_fraction))
    n_lags = int(np.floor(max_lag_fs / dt_fs + 1e-9)) + 1
    if not 2 <= n_lags <= n_frames:
        raise ObservableError(
            f"max lag {max_lag_fs} fs must lie between one step ({dt_fs} fs) and the run ({(n_frames - 1) * dt_fs} fs)"
        )
    return n_lags


def velocity_autocorrelation(
    velocities: np.ndarray, dt_fs: float, masses: np.ndarray | None = None, max_lag_fs: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Normalised velocity autocorrelation C(τ) = Σ_i w_i ⟨v_i(0)·v_i(τ)⟩ / Σ_i w_i ⟨v_i²⟩.

    Averaged over every time origin, computed by FFT. Weights w_i are the masses when
    given (then C is the kinetic-energy-weighted VACF whose spectrum is the density of
    states), otherwise 1. By default the lags run to half the trajectory, so every point
    averages at least half the frames. Returns (lag times in fs, C) with C(0) = 1.
    """
    velocities = _as_trajectory(velocities, "velocities")
    n_frames, n_atoms = velocities.shape[:2]
    n_lags = _lag_count(n_frames, dt_fs, max_lag_fs, 0.5)
    weights = np.ones(n_atoms) if masses is None else np.asarray(masses, dtype=float)
    if weights.shape != (n_atoms,):
        raise ObservableError(f"masses must have one value per atom ({n_atoms}), got shape {weights.shape}")
    correlation = np.zeros(n_lags)
    atoms_per_chunk = max(1, _PAIRS_PER_CHUNK // (6 * n_frames))
    for start in range(0, n_atoms, atoms_per_chunk):
        block = velocities[:, start : start + atoms_per_chunk].transpose(1, 2, 0)  # (atoms, 3, F)
        c = _autocorrelation_fft(block, n_lags).sum(axis=1)  # (atoms, lags)
        correlation += weights[start : start + atoms_per_chunk] @ c
    if correlation[0] <= 0:
        raise ObservableError("velocities are all zero: no autocorrelation")
    return dt_fs * np.arange(n_lags), correlation / correlation[0]


def vibrational_spectrum(
    velocities: np.ndarray,
    dt_fs: float,
    masses: np.ndarray | None = None,
    max_lag_fs: float | None = None,
    window: str | None = "hann",
    padding: int = 4,
) -> tuple[np.ndarray, np.ndarray]:
    """Vibrational density of states from the VACF (Wiener–Khinchin theorem).

    I(ν̃) ∝ ∫ C(t) w(t) cos(2π c ν̃ t) dt over −t_max…t_max, with ν̃ = f / c in cm⁻¹. The
    window w (``"hann"``: a half Hann taper cos²(πt / 2t_max); ``None``: none) damps the
    noisy long-lag tail at the cost of resolution; ``padding`` interpolates the grid
    only. Pass masses for the true density of states. Returns (wavenumbers in cm⁻¹,
    intensity normalised to unit area per cm⁻¹), from 0 to the Nyquist wavenumber.
    """
    _, correlation = velocity_autocorrelation(velocities, dt_fs, masses, max_lag_fs)
    n_lags = correlation.size
    if window == "hann":
        taper = np.cos(0.5 * np.pi * np.arange(n_lags) / n_lags) ** 2
    elif window is None or window == "none":
        taper = np.ones(n_lags)
    else:
        raise ObservableError(f"unknown spectrum window {window!r} (use 'hann' or None)")
    damped = correlation * taper
    # C(t) is even: lag −τ sits at index n_fft − τ, and the zero padding (|t| > t_max) between
    n_fft = max(1, padding) * (1 << int(np.ceil(np.log2(2 * n_lags))))
    padded = np.zeros(n_fft)
    padded[:n_lags] = damped
    padded[n_fft - n_lags + 1 :] = damped[:0:-1]
    intensity = np.fft.rfft(padded).real * dt_fs
    frequency_per_fs = np.fft.rfftfreq(n_fft, d=dt_fs)
    wavenumber_cm = frequency_per_fs / SPEED_OF_LIGHT_CM_PER_FS
    area = _trapezoid(intensity, wavenumber_cm)
    return wavenumber_cm, intensity / area


def spectrum_peaks(
    wavenumber_cm: np.ndarray, intensity: np.ndarray, bands: dict[str, tuple[float, float]] = WATER_BANDS_CM
) -> dict[str, Peak]:
    """The strongest peak in each named band, e.g. water's bend (~1600) and stretch (~3400 cm⁻¹)."""
    return {name: peak_in_range(wavenumber_cm, intensity, low, high) for name, (low, high) in bands.items()}


# --- mean squared displacement and self-diffusion ---------------------------------------
def unwrap_positions(positions: np.ndarray, cell: np.ndarray) -> np.ndarray:
    """Continuous trajectories from wrapped (or already unwrapped) positions.

    Each step is replaced by its minimum image, so an atom that leaves the cell keeps
    going instead of jumping back; positions that were never wrapped (as CP2K writes
    them) come back unchanged. Valid while no atom moves half a cell width in one frame.
    """
    positions = _as_trajectory(positions)
    cells = _frame_cells(cell, positions.shape[0])
    steps = _minimum_image_frames(np.diff(positions, axis=0), cells[1:])
    return np.concatenate([positions[:1], positions[:1] + np.cumsum(steps, axis=0)])


def mean_squared_displacement(
    unwrapped_positions: np.ndarray, dt_fs: float, max_lag_fs: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per-atom MSD over every time origin, ⟨|r_i(t0+τ) − r_i(t0)|²⟩_t0, by FFT.

    MSD(τ) = S1(τ) − 2 S2(τ), with S2 the position autocorrelation and S1 a running sum of
    |r|² (Calandrini et al. 2011, eqs. 44–46): O(F log F) instead of O(F²). Positions must be
    unwrapped (see :func:`unwrap_positions`). The lags run to half the run by default.
    Returns (lag times in fs, MSD per atom (N, lags) in Å²); average over axis 0 for the MSD.
    """
    positions = _as_trajectory(unwrapped_positions)
    n_frames, n_atoms = positions.shape[:2]
    n_lags = _lag_count(n_frames, dt_fs, max_lag_fs, 0.5)
    msd = np.empty((n_atoms, n_lags))
    atoms_per_chunk = max(1, _PAIRS_PER_CHUNK // (6 * n_frames))
    lags = np.arange(n_lags)
    for start in range(0, n_atoms, atoms_per_chunk):
        r = positions[:, start : start + atoms_per_chunk].transpose(1, 2, 0)  # (atoms, 3, F)
        r = r - r[..., :1]  # the MSD is translation-invariant; small numbers keep S1 − 2 S2 exact
        squared = np.sum(r * r, axis=1)  # (atoms, F)
        s2 = _autocorrelation_fft(r, n_lags).sum(axis=1)
        # S1(τ) = Σ_{t=0}^{F−1−τ} (|r(t)|² + |r(t+τ)|²) / (F − τ)
        total = squared.sum(axis=1, keepdims=True)
        head = np.concatenate([np.zeros((r.shape[0], 1)), np.cumsum(squared, axis=1)], axis=1)
        tail = np.concatenate([np.zeros((r.shape[0], 1)), np.cumsum(squared[:, ::-1], axis=1)], axis=1)
        s1 = (2.0 * total - head[:, lags] - tail[:, lags]) / (n_frames - lags)
        msd[start : start + r.shape[0]] = np.maximum(s1 - 2.0 * s2, 0.0)
    return dt_fs * lags, msd


class Diffusion(NamedTuple):
    d_angstrom2_per_fs: float
    stderr_angstrom2_per_fs: float
    d_1e9_m2_per_s: float
    stderr_1e9_m2_per_s: float
    error_method: str  # "blocks (n)" or "atoms (n)": what the standard error is over
    fit_window_fs: tuple[float, float]
    msd_at_fit_end_angstrom2: float
    trustworthy: bool
    warning: str  # empty when trustworthy, else why not


def _einstein_slopes(lag_fs: np.ndarray, msd: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """D = slope / 6 of a least-squares line through MSD(τ) in the window, for each row of msd."""
    inside = (lag_fs >= window[0]) & (lag_fs <= window[1])
    if np.count_nonzero(inside) < 2:
        raise ObservableError(f"diffusion fit window {window} fs holds fewer than two lags")
    t = lag_fs[inside] - lag_fs[inside].mean()
    y = np.atleast_2d(msd)[:, inside]
    return (y - y.mean(axis=1, keepdims=True)) @ t / (t @ t) / 6.0


def self_diffusion(
    positions: np.ndarray,
    cell: np.ndarray,
    dt_fs: float,
    fit_start_fs: float | None = None,
    fit_end_fs: float | None = None,
    atoms: np.ndarray | None = None,
    masses: np.ndarray | None = None,
    max_blocks: int = 10,
    min_fit_window_fs: float = MIN_FIT_WINDOW_FS,
    min_fit_msd_angstrom2: float = MIN_FIT_MSD_ANGSTROM2,
) -> Diffusion:
    """Self-diffusion coefficient from the Einstein relation MSD(τ) = 6 D τ.

    ``positions`` may be wrapped or unwrapped; ``atoms`` (indices or a boolean mask)
    chooses whose MSD is fitted (e.g. the oxygens, for water), over the lag window
    [fit_start_fs, fit_end_fs] (default: a tenth to a half of the run). With ``masses``
    (of all atoms), the drift of the centre of mass is removed first.

    D comes from the whole run. Its error bar is honest about correlation in time: MSD
    values at neighbouring lags are far from independent, so a regression error would be
    much too small. Instead the run is cut into independent blocks, each at least twice
    the fit window's end long, D is fitted in each, and the error is their standard
    error; with fewer than three such blocks it is the standard error over the atoms'
    individual slopes. The result is flagged untrustworthy when the fit window is short,
    the MSD has not left the first-neighbour cage, or the relative error is large.
    """
    unwrapped = unwrap_positions(positions, cell)
    n_frames, n_atoms = unwrapped.shape[:2]
    if masses is not None:
        masses = np.asarray(masses, dtype=float)
        if masses.shape != (n_atoms,):
            raise ObservableError(
                f"masses must have one value per atom ({n_atoms}), got shape {masses.shape}"
            )
        centre = np.einsum("i,fik->fk", masses, unwrapped) / masses.sum()
        unwrapped = unwrapped - (centre - centre[0])[:, None, :]
    if atoms is not None:
        unwrapped = unwrapped[:, np.asarray(atoms)]
    run_fs = (n_frames - 1) * dt_fs
    start = 0.1 * run_fs if fit_start_fs is None else float(fit_start_fs)
    end = 0.5 * run_fs if fit_end_fs is None else float(fit_end_fs)
    if not 0 <= start < end <= run_fs:
        raise ObservableError(
            f"diffusion fit window [{start}, {end}] fs must lie inside the run (0…{run_fs} fs)"
        )

    lag_fs, msd_per_atom = mean_squared_displacement(unwrapped, dt_fs, max_lag_fs=end)
    msd = msd_per_atom.mean(axis=0)
    d = float(_einstein_slopes(lag_fs, msd, (start, end))[0])

    block_frames = int(np.ceil(2.0 * end / dt_fs)) + 1
    n_blocks = min(max_blocks, n_frames // block_frames)
    if n_blocks >= 3:
        block_d = [
            _einstein_slopes(lag, per_atom.mean(axis=0), (start, end))[0]
            for lag, per_atom in (
                mean_squared_displacement(unwrapped[b * block_frames : (b + 1) * block_frames], dt_fs, end)
                for b in range(n_blocks)
            )
        ]
        stderr = float(np.std(block_d, ddof=1) / np.sqrt(n_blocks))
        method = f"blocks ({n_blocks})"
    else:
        atom_d = _einstein_slopes(lag_fs, msd_per_atom, (start, end))
        if atom_d.size < 2:
            raise ObservableError("diffusion error bar needs a run long enough for three blocks or two atoms")
        stderr = float(np.std(atom_d, ddof=1) / np.sqrt(atom_d.size))
        method = f"atoms ({atom_d.size})"

    msd_end = float(np.interp(end, lag_fs, msd))
    problems = []
    if end - start < min_fit_window_fs:
        problems.append(f"fit window {end - start:.0f} fs is shorter than {min_fit_window_fs:.0f} fs")
    if msd_end < min_fit_msd_angstrom2:
        problems.append(f"MSD reaches only {msd_end:.2f} Å² (< {min_fit_msd_angstrom2} Å²)")
    if not abs(stderr) <= MAX_RELATIVE_ERROR * abs(d):
        problems.append(
            f"relative error {abs(stderr / d) if d else float('inf'):.0%} exceeds {MAX_RELATIVE_ERROR:.0%}"
        )
    return Diffusion(
        d,
        stderr,
        d * ANGSTROM2_PER_FS_TO_1E9_M2_PER_S,
        stderr * ANGSTROM2_PER_FS_TO_1E9_M2_PER_S,
        method,
        (start, end),
        msd_end,
        not problems,
        "; ".join(problems),
    )
