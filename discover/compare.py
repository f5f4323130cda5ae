"""Compare a learned-model trajectory with the CP2K reference: structure, geometry, spectra, dynamics.

Pure functions of trajectories held as :class:`Trajectory` (numpy arrays, internal units).
The figures and report text are written by ``discover.report``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simulate import observables as obs
from simulate.space import max_minimum_image_cutoff
from simulate.units import masses_amu, temperature_k

RDF_PAIRS = (("O", "O"), ("O", "H"), ("H", "H"))
RDF_BINS = 200
HBOND_RANGE_ANGSTROM = (1.5, 2.6)
# the hydrogen-bond peak must stand 5 % of its height above g on both sides within ±0.45 Å; a
# washed-out shell (a shoulder, or a plateau rising into the second shell) has no peak
HBOND_MIN_PROMINENCE = 0.05
BOND_EDGES_ANGSTROM = np.linspace(0.8, 1.2, 81)
ANGLE_EDGES_DEGREES = np.linspace(70.0, 140.0, 71)


@dataclass(frozen=True)
class Trajectory:
    """Frames of one run: positions and velocities (F,N,3) in Å and Å/fs, one cell (3,3) in Å."""

    species: np.ndarray
    positions: np.ndarray
    velocities: np.ndarray
    cell: np.ndarray
    frame_interval_fs: float
    label: str

    @property
    def duration_fs(self) -> float:
        return (self.positions.shape[0] - 1) * self.frame_interval_fs

    @property
    def masses(self) -> np.ndarray:
        return masses_amu(self.species)


def rdf_curves(traj: Trajectory, r_max: float) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {
        a + b: obs.rdf(traj.positions, traj.cell, traj.species, a, b, r_max, RDF_BINS) for a, b in RDF_PAIRS
    }


def first_shell(pair: str, r: np.ndarray, g: np.ndarray) -> dict:
    """First-peak position and height and first minimum of one RDF.

    g_OH's first peak is the covalent bond; its hydrogen-bond peak (1.5–2.6 Å) is the
    intermolecular one that matters, and it barely rises above 1, so it is found by range.
    """
    if pair == "OH":
        peak = obs.peak_in_range(r, g, HBOND_RANGE_ANGSTROM[0], HBOND_RANGE_ANGSTROM[1],
                                 fit_half_width=obs.RDF_PEAK_FIT_HALF_WIDTH_ANGSTROM,
                                 smooth_bins=obs.RDF_PEAK_SMOOTH_BINS, min_prominence=HBOND_MIN_PROMINENCE)
        after = np.flatnonzero((r > peak.position) & (r < peak.position + 1.5)) if np.isfinite(peak.position) else []
        minimum = float(r[after[np.argmin(g[after])]]) if len(after) else float("nan")
        return {"first_peak_angstrom": peak.position, "first_peak_height": peak.height,
                "first_minimum_angstrom": minimum}
    shell = obs.rdf_first_shell(r, g)
    return {"first_peak_angstrom": shell.peak_angstrom, "first_peak_height": shell.peak_height,
            "first_minimum_angstrom": shell.minimum_angstrom}


def compare_rdfs(reference: Trajectory, learned: Trajectory) -> tuple[dict, dict]:
    """First-shell figures of g_OO, g_OH (hydrogen-bond peak) and g_HH, and ∫|Δg| dr."""
    r_max = min(max_minimum_image_cutoff(reference.cell), max_minimum_image_cutoff(learned.cell))
    ref_curves, new_curves = rdf_curves(reference, r_max), rdf_curves(learned, r_max)
    metrics = {}
    for pair in ref_curves:
        r, g_ref = ref_curves[pair]
        _, g_new = new_curves[pair]
        entry = {"integrated_abs_difference": obs.rdf_difference(r, g_ref, g_new)}
        # g_OH's first peak is the covalent bond; the hydrogen-bond shell starts past 1.3 Å.
        for label, g in (("reference", g_ref), ("learned", g_new)):
            entry[label] = first_shell(pair, r, g)
        entry["first_peak_shift_angstrom"] = entry["learned"]["first_peak_angstrom"] - entry["reference"][
            "first_peak_angstrom"
        ]
        entry["first_peak_height_ratio"] = entry["learned"]["first_peak_height"] / entry["reference"][
            "first_peak_height"
        ]
        metrics[pair] = entry
    curves = {pair: (ref_curves[pair][0], ref_curves[pair][1], new_curves[pair][1]) for pair in ref_curves}
    return metrics, curves


def compare_geometry(reference: Trajectory, learned: Trajectory) -> tuple[dict, dict]:
    """O–H bond length and H–O–H angle distributions, with each H assigned to its nearest O."""
    metrics, samples = {}, {}
    geometries = {
        "reference": obs.water_geometry(reference.positions, reference.cell, reference.species),
        "learned": obs.water_geometry(learned.positions, learned.cell, learned.species),
    }
    for quantity, edges, attr in (
        ("bond_length_angstrom", BOND_EDGES_ANGSTROM, "bond_lengths_angstrom"),
        ("angle_degrees", ANGLE_EDGES_DEGREES, "angles_degrees"),
    ):
        dists = {k: obs.distribution(getattr(g, attr), edges) for k, g in geometries.items()}
        metrics[quantity] = {
            **{f"{k}_mean": d.mean for k, d in dists.items()},
            **{f"{k}_std": d.std for k, d in dists.items()},
            "mean_difference": dists["learned"].mean - dists["reference"].mean,
            "overlap": obs.histogram_overlap(dists["reference"], dists["learned"]),
        }
        samples[quantity] = {k: np.ravel(getattr(g, attr)) for k, g in geometries.items()}
    metrics["fraction_frames_with_broken_molecules"] = {
        k: float(np.mean(g.bad_oxygens > 0)) for k, g in geometries.items()
    }
    n_oxygens = int(np.sum(np.asarray(reference.species) == "O"))
    metrics["fraction_oxygens_not_water"] = {k: float(np.mean(g.bad_oxygens)) / n_oxygens for k, g in geometries.items()}
    metrics["fraction_oxygens_not_water_last_frame"] = {
        k: float(g.bad_oxygens[-1]) / n_oxygens for k, g in geometries.items()}
    return metrics, samples


def compare_spectra(reference: Trajectory, learned: Trajectory, max_lag_fs: float = 500.0) -> tuple[dict, dict]:
    """Vibrational density of states from the mass-weighted velocity autocorrelation; band peaks in cm⁻¹."""
    metrics, curves = {}, {}
    for key, traj in (("reference", reference), ("learned", learned)):
        lag = min(max_lag_fs, 0.5 * traj.duration_fs)
        wn, intensity = obs.vibrational_spectrum(traj.velocities, traj.frame_interval_fs, traj.masses, lag)
        peaks = obs.spectrum_peaks(wn, intensity)
        metrics[key] = {f"{band}_peak_cm": p.position for band, p in peaks.items()}
        curves[key] = (wn, intensity)
    metrics["stretch_shift_cm"] = metrics["learned"]["stretch_peak_cm"] - metrics["reference"]["stretch_peak_cm"]
    metrics["bend_shift_cm"] = metrics["learned"]["bend_peak_cm"] - metrics["reference"]["bend_peak_cm"]
    return metrics, curves


def compare_temperature(reference: Trajectory, learned: Trajectory) -> tuple[dict, dict]:
    edges = np.linspace(150.0, 500.0, 71)
    metrics, samples = {}, {}
    for key, traj in (("reference", reference), ("learned", learned)):
        samples[key] = np.asarray(temperature_k(traj.velocities, traj.masses))
        dist = obs.distribution(samples[key], edges)
        metrics[f"{key}_mean_k"] = dist.mean
        metrics[f"{key}_std_k"] = dist.std
    return metrics, samples


def compare_diffusion(reference: Trajectory, learned: Trajectory) -> dict:
    """Self-diffusion of O, centre-of-mass drift removed, with its error bar and a trust flag per run."""
    metrics = {}
    for key, traj in (("reference", reference), ("learned", learned)):
        oxygens = np.flatnonzero(traj.species == "O")
        try:
            d = obs.self_diffusion(traj.positions, traj.cell, traj.frame_interval_fs, atoms=oxygens,
                                   masses=traj.masses)
        except obs.ObservableError as exc:
            metrics[key] = {"error": str(exc), "trustworthy": False}
            continue
        metrics[key] = {
            "d_1e9_m2_per_s": d.d_1e9_m2_per_s,
            "stderr_1e9_m2_per_s": d.stderr_1e9_m2_per_s,
            "error_method": d.error_method,
            "fit_window_fs": list(d.fit_window_fs),
            "msd_at_fit_end_angstrom2": d.msd_at_fit_end_angstrom2,
            "trustworthy": bool(d.trustworthy),
            "warning": d.warning,
            "duration_ps": traj.duration_fs / 1000.0,
        }
    return metrics
