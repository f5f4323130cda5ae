"""Post-run observables checked against systems whose answer is known exactly or statistically."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm

from simulate import observables as ob
from simulate.space import max_minimum_image_cutoff, minimum_image, wrap_positions
from simulate.units import (
    BOLTZMANN_EV_PER_K,
    EV_PER_ANGSTROM_PER_AMU_TO_ANGSTROM_PER_FS2,
    SPEED_OF_LIGHT_CM_PER_FS,
)

WATER_BOND_ANGSTROM = 0.9572
WATER_ANGLE_DEGREES = 104.52


def simple_cubic(n_per_side: int, spacing: float) -> np.ndarray:
    grid = np.arange(n_per_side) * spacing
    return np.stack(np.meshgrid(grid, grid, grid, indexing="ij"), axis=-1).reshape(-1, 3)


def random_rotations(rng, n: int) -> np.ndarray:
    q = rng.normal(size=(n, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    w, x, y, z = q.T
    return np.stack(
        [
            np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
            np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
            np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
        ],
        axis=1,
    )


def rigid_waters(rng, n_frames: int, box: float) -> tuple[np.ndarray, np.ndarray]:
    """27 ideal TIP3P-geometry waters on a 3×3×3 grid, randomly turned, wrapped atom by atom."""
    half = np.radians(WATER_ANGLE_DEGREES) / 2
    body = WATER_BOND_ANGSTROM * np.array(
        [[0, 0, 0], [np.sin(half), np.cos(half), 0], [-np.sin(half), np.cos(half), 0]]
    )
    centres = simple_cubic(3, box / 3)
    frames = []
    for _ in range(n_frames):
        turned = np.einsum("mij,aj->mai", random_rotations(rng, len(centres)), body)
        atoms = (centres[:, None, :] + turned + rng.uniform(0, box, 3)).reshape(-1, 3)
        frames.append(wrap_positions(atoms, np.eye(3) * box))
    return np.array(frames), np.array(["O", "H", "H"] * len(centres))


def random_walk(rng, n_frames, n_atoms, d_angstrom2_per_fs, dt_fs):
    steps = rng.normal(scale=np.sqrt(2 * d_angstrom2_per_fs * dt_fs), size=(n_frames, n_atoms, 3))
    steps[0] = rng.uniform(0, 10, size=(n_atoms, 3))
    return np.cumsum(steps, axis=0)


# --- radial distribution function ------------------------------------------------------
@pytest.mark.parametrize("pair", [("A", "A"), ("A", "B")])
def test_ideal_gas_rdf_is_one_for_like_and_unlike_pairs_in_changing_volumes(pair):
    rng = np.random.default_rng(1)
    n_frames, r_max, n_bins = 200, 4.5, 30
    sides = np.where(np.arange(n_frames) % 2 == 0, 9.0, 11.0)  # per-frame volume: ⟨1/V⟩ ≠ 1/⟨V⟩
    cells = sides[:, None, None] * np.eye(3)
    positions = rng.uniform(size=(n_frames, 100, 3)) * sides[:, None, None]
    types = np.array(["A"] * 60 + ["B"] * 40)
    r, g = ob.rdf(positions, cells, types, *pair, r_max, n_bins)

    n_pairs = 60 * 59 / 2 if pair[0] == pair[1] else 60 * 40
    edges = np.linspace(0, r_max, n_bins + 1)
    expected_counts = n_pairs * np.sum(1 / sides**3) * 4 / 3 * np.pi * np.diff(edges**3)
    # pair counts of independent uniform points are Poisson-like: compare with √n noise
    overall = np.sum(g * expected_counts) / expected_counts.sum()
    assert abs(overall - 1) < 4 / np.sqrt(expected_counts.sum())
    chi2_per_bin = np.sum((g - 1) ** 2 * expected_counts) / n_bins
    assert chi2_per_bin < 2.0
    assert np.allclose(r, 0.5 * (edges[1:] + edges[:-1]))


def test_simple_cubic_lattice_first_peak_at_lattice_constant_with_six_neighbours():
    rng = np.random.default_rng(2)
    spacing, n_side = 2.5, 4
    lattice = simple_cubic(n_side, spacing)
    positions = lattice + rng.normal(scale=0.05, size=(20, *lattice.shape))
    box = spacing * n_side
    r, g = ob.rdf(positions, np.eye(3) * box, np.zeros(len(lattice), int), 0, 0, 5.0, 250)
    shell = ob.rdf_first_shell(r, g)
    assert abs(shell.peak_angstrom - spacing) < 0.01
    assert spacing < shell.minimum_angstrom < spacing * np.sqrt(2)
    # coordination number ρ ∫ 4πr² g dr up to the first minimum counts the 6 nearest sites,
    # with ρ = (N − 1) / V the density of the *other* atoms seen from one
    density = (len(lattice) - 1) / box**3
    dr = r[1] - r[0]
    inside = r < shell.minimum_angstrom
    assert np.sum(4 * np.pi * r[inside] ** 2 * g[inside] * dr) * density == pytest.approx(6.0, rel=0.01)


def test_rdf_in_a_skewed_cell_equals_rdf_in_the_equivalent_cubic_cell():
    rng = np.random.default_rng(3)
    box = 10.0
    positions = rng.uniform(0, box, size=(5, 80, 3))
    skewed = np.array([[box, 0, 0], [box, box, 0], [0, 0, box]])  # same lattice, other basis
    wrapped = np.array([wrap_positions(p, skewed) for p in positions])
    assert not np.allclose(wrapped, positions)
    types = np.array([0, 1] * 40)
    r_max = box / (2 * np.sqrt(2))  # the skewed cell's minimum-image limit
    for pair in [(0, 0), (0, 1)]:
        _, g_cubic = ob.rdf(positions, np.eye(3) * box, types, *pair, r_max, 40)
        _, g_skewed = ob.rdf(wrapped, skewed, types, *pair, r_max, 40)
        np.testing.assert_allclose(g_skewed, g_cubic, rtol=1e-12)
    with pytest.raises(ob.ObservableError, match="minimum-image limit"):
        ob.rdf(wrapped, skewed, types, 0, 0, r_max * 1.01, 40)


def test_rdf_counts_the_pairs_that_space_minimum_image_finds():
    rng = np.random.default_rng(16)
    cell = np.array([[9.0, 0, 0], [3.0, 8.0, 0], [-2.0, 1.5, 10.0]])
    positions = rng.uniform(size=(4, 30, 3)) @ cell
    types = np.array(["O"] * 12 + ["H"] * 18)
    r_max, n_bins = 0.95 * max_minimum_image_cutoff(cell), 25
    edges = np.linspace(0, r_max, n_bins + 1)
    ideal = np.diff(edges**3) * 4 / 3 * np.pi * len(positions) / abs(np.linalg.det(cell))
    for a, b, first, second in [("O", "O", *np.triu_indices(12, 1)), ("H", "O", *np.indices((18, 12)))]:
        first, second = first.ravel(), second.ravel()
        pa, pb = positions[:, types == a], positions[:, types == b]
        d = minimum_image(pb[:, second] - pa[:, first], cell)
        counts, _ = np.histogram(np.linalg.norm(d, axis=-1), bins=edges)
        _, g = ob.rdf(positions, cell, types, a, b, r_max, n_bins)
        np.testing.assert_allclose(g, counts / (first.size * ideal), rtol=1e-12)


def test_first_shell_is_refined_between_grid_points():
    r = np.arange(0.025, 6, 0.05)
    centre, height = 2.86, 2.0  # the nearest grid point, 2.875, is 0.015 off
    g = 1 + (height - 1) * np.exp(-((r - centre) ** 2) / (2 * 0.2**2)) * (r > 2)
    shell = ob.rdf_first_shell(r, g)
    assert abs(shell.peak_angstrom - centre) < 0.003  # the grid alone is off by up to 0.025
    assert shell.peak_height == pytest.approx(height, abs=0.01)
    assert np.isnan(shell.minimum_angstrom)  # g never falls below 1 after the peak
    with pytest.raises(ob.ObservableError, match="no first peak"):
        ob.rdf_first_shell(r, np.full_like(r, 0.5))


def test_first_shell_ignores_a_lone_noisy_bin_before_the_peak():
    r = np.arange(0.0125, 4.9, 0.025)
    centre = 2.86
    g = 3.0 * np.exp(-((r - centre) ** 2) / (2 * 0.15**2)) * (r > 2.3)
    g[np.argmin(np.abs(r - 2.5))] = 1.1  # one bin of a short run's noise poking above g = 1
    assert abs(ob._parabolic_vertex(r, g, int(np.argmin(np.abs(r - 2.5)))).position - 2.5) < 0.03
    assert ob.rdf_first_shell(r, g).peak_angstrom == pytest.approx(centre, abs=0.003)


def test_fitted_peak_averages_histogram_noise_that_moves_the_three_point_vertex():
    r = np.arange(0.0125, 4.9, 0.025)
    centre, height = 2.88, 3.0
    smooth = (1 + (height - 1) * np.exp(-((r - centre) ** 2) / (2 * 0.2**2))) * (r > 2.4)
    rng = np.random.default_rng(4)
    fitted, three_point = [], []
    for _ in range(200):
        g = smooth + rng.normal(size=r.shape) * 0.05 * np.sqrt(smooth)  # counting noise
        fitted.append(ob.rdf_first_shell(r, g).peak_angstrom)
        three_point.append(ob._parabolic_vertex(r, g, int(np.argmax(g))).position)
    fitted, three_point = np.array(fitted), np.array(three_point)
    assert np.max(np.abs(fitted - centre)) < 0.06  # a window that does not settle keeps its start's answer
    assert abs(np.mean(fitted) - centre) < 0.003  # unbiased on a symmetric peak
    assert np.std(fitted) < 0.5 * np.std(three_point)
    assert np.std(fitted) < 0.02


def test_peak_in_range_with_a_fit_finds_a_low_broad_peak_under_noise():
    """g_OH's hydrogen-bond peak: a broad bump that barely passes g = 1, between the bond and the rest."""
    r = np.arange(0.0125, 4.9, 0.025)
    centre = 1.95
    smooth = 0.4 + 0.6 * np.exp(-((r - centre) ** 2) / (2 * 0.25**2)) + 8 * np.exp(-((r - 1.0) ** 2) / 0.002)
    rng = np.random.default_rng(5)
    found = [ob.peak_in_range(r, smooth + rng.normal(scale=0.03, size=r.shape), 1.5, 2.6,
                              fit_half_width=0.15, smooth_bins=5).position for _ in range(100)]
    assert abs(np.mean(found) - centre) < 0.01
    assert np.std(found) < 0.03
    # twice the noise: no draw may be thrown out of the range (a three-point vertex taken at a
    # maximum of the smoothed curve only once landed 1.3 Å away)
    noisy = [ob.peak_in_range(r, smooth + rng.normal(scale=0.06, size=r.shape), 1.5, 2.6,
                              fit_half_width=0.15, smooth_bins=5).position for _ in range(1000)]
    assert np.all((np.array(noisy) >= 1.5) & (np.array(noisy) <= 2.6))
    assert np.mean(np.abs(np.array(noisy) - centre)) < 0.05
    # a washed-out shell: a plateau with a ripple on it, rising into the next shell, is no peak
    # once the peak must stand out; the broad peak above still does
    plateau = np.where(r < 1.9, 0.8 * (r - 1.4).clip(0, 0.5) / 0.5, 0.8 + 0.6 * (r - 2.5).clip(0, None))
    plateau = plateau + 0.004 * np.sin(2 * np.pi * r / 0.3)
    assert np.isfinite(ob.peak_in_range(r, plateau, 1.5, 2.6, fit_half_width=0.15, smooth_bins=5).position)
    assert np.isnan(ob.peak_in_range(r, plateau, 1.5, 2.6, fit_half_width=0.15, smooth_bins=5,
                                     min_prominence=0.05).position)
    assert np.isfinite(ob.peak_in_range(r, smooth, 1.5, 2.6, fit_half_width=0.15, smooth_bins=5,
                                        min_prominence=0.05).position)
    assert np.isnan(ob.peak_in_range(r, smooth, 3.0, 4.0, fit_half_width=0.15, smooth_bins=5).position)


def test_cp2k_first_oo_peak_agrees_between_the_halves_of_the_run(shipped_dataset):
    """The first and second halves (0.6 ps each) of the shipped CP2K run locate g_OO's first
    peak within 0.03 Å of each other, on any of a few binnings (measured ≤ 0.018; the
    three-point vertex gave 0.08)."""
    d = shipped_dataset
    half = d.n_frames // 2
    for r_max, n_bins in ((4.93, 200), (4.85, 160)):
        peaks = []
        for frames in (slice(0, half), slice(half, None)):
            r, g = ob.rdf(d.positions[frames], d.cell[0], d.species, "O", "O", r_max, n_bins)
            peaks.append(ob.rdf_first_shell(r, g).peak_angstrom)
        assert 2.8 < peaks[0] < 3.0 and 2.8 < peaks[1] < 3.0
        assert abs(peaks[0] - peaks[1]) < 0.03


def test_rdf_difference_integrates_absolute_gap():
    r = np.linspace(0, np.pi, 2001)
    assert ob.rdf_difference(r, np.sin(r), np.zeros_like(r)) == pytest.approx(2.0, abs=1e-6)
    assert ob.rdf_difference(r, np.sin(r), -np.sin(r)) == pytest.approx(4.0, abs=1e-6)
    with pytest.raises(ob.ObservableError):
        ob.rdf_difference(r, np.sin(r), np.zeros(10))


# --- molecular geometry and distributions -----------------------------------------------
def test_rigid_water_bond_and_angle_are_exact_across_boundaries():
    box = 8.0
    positions, species = rigid_waters(np.random.default_rng(4), 3, box)
    geometry = ob.water_geometry(positions, np.eye(3) * box, species)
    assert geometry.bad_oxygens.tolist() == [0, 0, 0]
    np.testing.assert_allclose(geometry.bond_lengths_angstrom, WATER_BOND_ANGSTROM, rtol=0, atol=1e-12)
    assert geometry.angles_degrees.shape == (3 * 27,)
    np.testing.assert_allclose(geometry.angles_degrees, WATER_ANGLE_DEGREES, rtol=0, atol=1e-9)
    owners = geometry.owner[0].reshape(27, 2)
    assert np.array_equal(owners, np.repeat(np.arange(0, 81, 3), 2).reshape(27, 2))


def test_hydrogen_moved_to_another_oxygen_flags_both_oxygens():
    box = 8.0
    positions, species = rigid_waters(np.random.default_rng(5), 1, box)
    positions[0, 1] = positions[0, 3] + [0.0, 0.0, 0.97]  # water 0's H now sits on water 1's O
    geometry = ob.water_geometry(positions, np.eye(3) * box, species)
    assert geometry.bad_oxygens.tolist() == [2]
    assert geometry.owner[0, 0] == 3
    assert geometry.angles_degrees.size == 25


def test_histogram_overlap_of_shifted_normals_matches_analytic_value():
    rng = np.random.default_rng(6)
    edges = np.linspace(-6, 7, 131)
    a = ob.distribution(rng.normal(0, 1, 400_000), edges)
    b = ob.distribution(rng.normal(1, 1, 400_000), edges)
    assert a.mean == pytest.approx(0, abs=0.01) and a.std == pytest.approx(1, abs=0.01)
    assert np.sum(a.density * np.diff(edges)) == pytest.approx(1.0, abs=1e-4)
    assert ob.histogram_overlap(a, b) == pytest.approx(2 * norm.cdf(-0.5), abs=0.01)
    assert ob.histogram_overlap(a, a) == pytest.approx(1.0)
    c = ob.distribution(rng.normal(20, 1, 1000), np.linspace(14, 27, 131))
    with pytest.raises(ob.ObservableError, match="bin edges"):
        ob.histogram_overlap(a, c)


def test_temperature_distribution_of_maxwell_boltzmann_velocities():
    rng = np.random.default_rng(7)
    n_atoms, temperature = 400, 300.0
    masses = np.where(np.arange(n_atoms) % 3 == 0, 15.999, 1.008)
    sigma = np.sqrt(BOLTZMANN_EV_PER_K * temperature / masses * EV_PER_ANGSTROM_PER_AMU_TO_ANGSTROM_PER_FS2)
    velocities = rng.normal(size=(300, n_atoms, 3)) * sigma[:, None]
    d = ob.temperature_distribution(velocities, masses, np.linspace(200, 400, 81))
    expected_mean = temperature * 3 * n_atoms / (3 * n_atoms - 3)  # no centre-of-mass removal here
    assert d.mean == pytest.approx(expected_mean, rel=0.005)
    # K is a χ² sum of 3N squares: relative spread √(2 / 3N)
    assert d.std == pytest.approx(expected_mean * np.sqrt(2 / (3 * n_atoms)), rel=0.15)


# --- velocity autocorrelation and spectrum ----------------------------------------------
def test_fft_vacf_equals_direct_sum_over_time_origins():
    rng = np.random.default_rng(8)
    velocities = rng.normal(size=(50, 4, 3))
    masses = np.array([16.0, 1.0, 1.0, 2.0])
    lags, c = ob.velocity_autocorrelation(velocities, 0.5, masses, max_lag_fs=10.0)
    direct = np.array(
        [np.mean(np.einsum("i,tik,tik->t", masses, velocities[: 50 - k], velocities[k:])) for k in range(21)]
    )
    np.testing.assert_allclose(c, direct / direct[0], atol=1e-12)
    np.testing.assert_allclose(lags, 0.5 * np.arange(21))


def harmonic_velocities(rng, wavenumbers_cm, amplitudes, n_frames, dt_fs):
    """Velocities of independent 3D harmonic oscillators with random phases."""
    omega = 2 * np.pi * SPEED_OF_LIGHT_CM_PER_FS * np.asarray(wavenumbers_cm)  # rad/fs
    phase = rng.uniform(0, 2 * np.pi, size=(len(omega), 3))
    t = dt_fs * np.arange(n_frames)
    return np.asarray(amplitudes)[None, :, None] * np.sin(omega[None, :, None] * t[:, None, None] + phase)


def test_harmonic_oscillators_give_vdos_peaks_at_their_frequencies():
    rng = np.random.default_rng(9)
    bend, stretch = 1650.0, 3700.0
    velocities = harmonic_velocities(rng, [bend] * 8 + [stretch] * 16, np.ones(24), 4000, 0.5)
    masses = np.array([16.0] * 8 + [1.0] * 16)
    wavenumber, intensity = ob.vibrational_spectrum(velocities, 0.5)
    bin_width = wavenumber[1] - wavenumber[0]
    peaks = ob.spectrum_peaks(wavenumber, intensity)
    assert abs(peaks["bend"].position - bend) < bin_width
    assert abs(peaks["stretch"].position - stretch) < bin_width
    assert np.isnan(peaks["libration"].position)  # nothing moves there
    assert np.sum(intensity) * bin_width == pytest.approx(1.0, abs=0.01)

    def band_ratio(intensity):
        near = lambda centre: np.sum(intensity[np.abs(wavenumber - centre) < 500])
        return near(bend) / near(stretch)

    # equal velocity amplitudes: unweighted bands count atoms (8:16), mass-weighted count m v² (8·16:16)
    assert band_ratio(intensity) == pytest.approx(0.5, rel=0.02)
    _, weighted = ob.vibrational_spectrum(velocities, 0.5, masses=masses)
    assert band_ratio(weighted) == pytest.approx(8.0, rel=0.02)


def test_vdos_resolution_and_window_options():
    rng = np.random.default_rng(10)
    velocities = harmonic_velocities(rng, [2000.0] * 4, np.ones(4), 2000, 1.0)
    wn_short, short = ob.vibrational_spectrum(velocities, 1.0, max_lag_fs=200.0)
    wn_long, long = ob.vibrational_spectrum(velocities, 1.0, max_lag_fs=1000.0)
    width = lambda wn, i: np.ptp(wn[i > 0.5 * i.max()])
    assert width(wn_short, short) > 3 * width(wn_long, long)  # resolution ∝ 1 / max lag
    assert wn_long[-1] == pytest.approx(0.5 / 1.0 / SPEED_OF_LIGHT_CM_PER_FS)  # Nyquist
    _, raw = ob.vibrational_spectrum(velocities, 1.0, max_lag_fs=1000.0, window=None)
    assert width(wn_long, raw) < width(wn_long, long)  # the taper trades resolution for quiet tails
    with pytest.raises(ob.ObservableError, match="window"):
        ob.vibrational_spectrum(velocities, 1.0, window="kaiser")


# --- unwrapping, MSD and diffusion -----------------------------------------------------
@pytest.mark.parametrize(
    "cell",
    [np.eye(3) * 6.0, np.array([[6.0, 0, 0], [2.0, 6.0, 0], [1.0, -1.5, 7.0]])],
    ids=["cubic", "triclinic"],
)
def test_unwrapping_restores_paths_that_cross_boundaries(cell):
    path = random_walk(np.random.default_rng(11), 500, 10, 0.05, 1.0)
    wrapped = np.array([wrap_positions(p, cell) for p in path])
    assert np.abs(np.diff(wrapped, axis=0)).max() > 3.0  # atoms did jump across the cell
    unwrapped = ob.unwrap_positions(wrapped, cell)
    offset = unwrapped - path
    np.testing.assert_allclose(offset, np.broadcast_to(offset[0], offset.shape), atol=1e-9)
    lattice_coordinates = offset[0] @ np.linalg.inv(cell)
    np.testing.assert_allclose(lattice_coordinates, np.round(lattice_coordinates), atol=1e-9)
    np.testing.assert_allclose(ob.unwrap_positions(path, cell), path, atol=1e-9)  # CP2K-style input


def test_fft_msd_equals_direct_average_over_time_origins():
    positions = random_walk(np.random.default_rng(12), 60, 3, 0.1, 1.0)
    lags, msd = ob.mean_squared_displacement(positions, 2.0, max_lag_fs=50.0)
    direct = np.array(
        [np.mean(np.sum((positions[k:] - positions[: 60 - k]) ** 2, axis=-1), axis=0) for k in range(26)]
    ).T
    np.testing.assert_allclose(msd, direct, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(lags, 2.0 * np.arange(26))


def test_ballistic_motion_msd_grows_as_time_squared():
    rng = np.random.default_rng(13)
    box = 10.0
    velocity = rng.uniform(-0.05, 0.05, size=(20, 3))  # Å/fs: crosses the box several times
    t = np.arange(1000.0)
    path = rng.uniform(0, box, size=(20, 3)) + velocity * t[:, None, None]
    wrapped = np.array([wrap_positions(p, np.eye(3) * box) for p in path])
    lags, msd = ob.mean_squared_displacement(ob.unwrap_positions(wrapped, np.eye(3) * box), 1.0)
    expected = np.sum(velocity**2, axis=1)[:, None] * lags**2
    np.testing.assert_allclose(msd, expected, rtol=1e-8, atol=1e-8)


def test_random_walk_diffusion_recovered_with_an_honest_error_bar():
    d_true, box = 0.01, 10.0
    z_scores = []
    for seed in range(16):
        path = random_walk(np.random.default_rng(100 + seed), 6000, 100, d_true, 1.0)
        wrapped = np.array([wrap_positions(p, np.eye(3) * box) for p in path])
        d = ob.self_diffusion(wrapped, np.eye(3) * box, 1.0, 50.0, 400.0, min_fit_window_fs=300.0)
        assert d.error_method == "blocks (7)"
        assert d.d_1e9_m2_per_s == pytest.approx(d.d_angstrom2_per_fs * 1e4)
        assert d.trustworthy, d.warning
        z_scores.append((d.d_angstrom2_per_fs - d_true) / d.stderr_angstrom2_per_fs)
    z_scores = np.array(z_scores)
    assert np.all(np.abs(z_scores) < 5)
    # an honest error bar is the actual scatter: neither far too small nor far too large
    assert 0.5 < np.std(z_scores) < 2.0


def test_diffusion_of_a_short_run_falls_back_to_atoms_and_is_flagged():
    path = random_walk(np.random.default_rng(14), 1000, 100, 0.01, 1.0)
    d = ob.self_diffusion(path, np.eye(3) * 10.0, 1.0, 50.0, 400.0)
    assert d.error_method == "atoms (100)"
    assert abs(d.d_angstrom2_per_fs - 0.01) < 4 * d.stderr_angstrom2_per_fs
    assert not d.trustworthy and "fit window 350 fs" in d.warning
    slow = ob.self_diffusion(path * 0.1, np.eye(3) * 10.0, 1.0, 50.0, 400.0, min_fit_window_fs=100.0)
    assert not slow.trustworthy and "MSD reaches only" in slow.warning


def test_centre_of_mass_drift_is_removed_given_masses():
    rng = np.random.default_rng(15)
    path = random_walk(rng, 3000, 200, 0.01, 1.0) + 0.02 * np.arange(3000.0)[:, None, None]
    masses = rng.choice([1.008, 15.999], size=200)
    drifting = ob.self_diffusion(path, np.eye(3) * 10.0, 1.0, 50.0, 400.0)
    still = ob.self_diffusion(path, np.eye(3) * 10.0, 1.0, 50.0, 400.0, masses=masses)
    assert drifting.d_angstrom2_per_fs > 1.5 * 0.01
    assert abs(still.d_angstrom2_per_fs - 0.01) < 4 * still.stderr_angstrom2_per_fs
    oxygens = ob.self_diffusion(path, np.eye(3) * 10.0, 1.0, 50.0, 400.0, atoms=masses > 2, masses=masses)
    assert abs(oxygens.d_angstrom2_per_fs - 0.01) < 4 * oxygens.stderr_angstrom2_per_fs
    assert oxygens.stderr_angstrom2_per_fs > still.stderr_angstrom2_per_fs  # fewer atoms, more noise


def test_bad_inputs_raise_one_line_errors():
    positions = np.zeros((10, 4, 3))
    with pytest.raises(ob.ObservableError, match="shape"):
        ob.rdf(np.zeros((10, 4)), np.eye(3), np.zeros(4), 0, 0, 1.0, 10)
    with pytest.raises(ob.ObservableError, match="no atom of type 'X'"):
        ob.rdf(positions, np.eye(3) * 5, np.array(["O"] * 4), "O", "X", 1.0, 10)
    with pytest.raises(ob.ObservableError, match="cell"):
        ob.rdf(positions, np.zeros((3, 3, 3)), np.zeros(4), 0, 0, 1.0, 10)
    with pytest.raises(ob.ObservableError, match="fit window"):
        ob.self_diffusion(positions, np.eye(3) * 5, 1.0, 5.0, 50.0)
    with pytest.raises(ob.ObservableError, match="max lag"):
        ob.velocity_autocorrelation(positions + 1, 1.0, max_lag_fs=100.0)
    with pytest.raises(ob.ObservableError, match="all zero"):
        ob.velocity_autocorrelation(positions, 1.0)
