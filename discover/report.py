"""``mld compare``: run a learned model from a CP2K frame, compare it with CP2K, write a report.

Writes into the report folder:

``report.md``      readable as it stands: the learned equations first, then every comparison with figures
``metrics.json``   every number in the report, under stable keys
``figures/*.png``  RDF overlays, force parity, pair laws, Pareto fronts, geometry, VDOS, temperature
``run/``           the learned model's NVT and NVE runs (thermo logs, trajectories)
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from discover import compare, metrics, plots
from discover.dataset import Dataset
from discover.force_matching import split_frames
from discover.model import Model
from simulate import md
from simulate.errors import MldError
from simulate.fileio import write_text_atomic
from simulate.space import box_lengths
from simulate.trajectory import read_trajectory

# A difference below these reads as agreement in the report's plain-word verdicts.
PEAK_POSITION_TOLERANCE_ANGSTROM = 0.05
PEAK_HEIGHT_TOLERANCE = 0.10
ANGLE_TOLERANCE_DEGREES = 1.0
FRAME_EVERY_STEPS = 4  # 2 fs at 0.5 fs steps: Nyquist 8,300 cm⁻¹, above every water band


def reference_trajectory(dataset: Dataset, frames=slice(None)) -> compare.Trajectory:
    dt = float(np.median(np.diff(dataset.time))) if dataset.n_frames > 1 else 0.5
    return compare.Trajectory(dataset.species, dataset.positions[frames], dataset.velocities[frames],
                              dataset.cell[0], dt, "CP2K")


def run_learned(kernels, dataset: Dataset, out_dir: Path, *, steps: int, nve_steps: int, dt_fs: float,
                temperature_k: float, seed: int, progress_factory=None) -> dict:
    """NVT (Nosé–Hoover chain) from the first CP2K frame with its velocities, then an NVE segment."""
    box = box_lengths(dataset.cell[0])
    runs = {}
    start = (dataset.positions[0], dataset.velocities[0])
    for name, n_steps, thermostat in (("nvt", steps, "nose-hoover"), ("nve", nve_steps, "nve")):
        run_dir = out_dir / name
        if run_dir.exists():
            shutil.rmtree(run_dir)
        callback, context = (None, None) if progress_factory is None else progress_factory(name, n_steps, dt_fs)
        started = time.perf_counter()
        if context is not None:
            with context:
                result = md.simulate(kernels, dataset.species, start[0], box, start[1], steps=n_steps, dt_fs=dt_fs,
                                     temperature_k=temperature_k, thermostat=thermostat, out_dir=run_dir,
                                     seed=seed, trajectory_every=FRAME_EVERY_STEPS, progress=callback)
        else:
            result = md.simulate(kernels, dataset.species, start[0], box, start[1], steps=n_steps, dt_fs=dt_fs,
                                 temperature_k=temperature_k, thermostat=thermostat, out_dir=run_dir, seed=seed,
                                 trajectory_every=FRAME_EVERY_STEPS)
        wall = time.perf_counter() - started
        traj = read_trajectory(result.trajectory_path)
        runs[name] = {"result": result, "trajectory": traj, "thermo": pd.read_csv(result.thermo_path),
                      "seconds_per_step": result.wall_s / max(n_steps, 1), "wall_s": wall}
        start = (traj["positions"][-1], traj["velocities"][-1])
    return runs


def nve_drift(thermo: pd.DataFrame, n_atoms: int) -> dict:
    """Drift (slope of a line through the conserved energy) and spread, per atom."""
    t_ps = thermo["time_fs"].to_numpy() / 1000.0
    e = thermo["conserved_ev"].to_numpy() / n_atoms
    slope = float(np.polyfit(t_ps - t_ps[0], e, 1)[0]) if len(e) > 2 else float("nan")
    return {"drift_ev_per_atom_per_ps": slope, "spread_ev_per_atom": float(e.max() - e.min()),
            "duration_ps": float(t_ps[-1] - t_ps[0])}


def force_parity(model_dir: Path, dataset: Dataset, valid: np.ndarray) -> tuple[dict, dict]:
    """Validation forces of the closed-form, tabulated and (if saved) quadratic-baseline models."""
    from discover import pipeline

    models = {"closed_form": Model.load(model_dir / "model.json")}
    if (model_dir / "tabulated" / "model.json").is_file():
        models["tabulated"] = Model.load(model_dir / "tabulated" / "model.json")
    predicted = {name: pipeline.validation_forces(dataset, valid, m) for name, m in models.items()}
    if (model_dir / "baseline.npz").is_file():
        from discover import baseline

        quadratic = pipeline.load_baseline(model_dir / "baseline.npz")
        predicted["quadratic_baseline"] = baseline.predict_forces(quadratic, dataset.positions, dataset.cell,
                                                                  dataset.species, frames=valid)
    reference = dataset.forces[valid]
    errors = {name: metrics.force_errors(f, reference, dataset.species) for name, f in predicted.items()}
    return errors, predicted


def _fmt(x, digits=3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not np.isfinite(x)) else f"{x:.{digits}f}"


def verdicts(m: dict) -> list[str]:
    """Plain-word statements of where the learned model agrees with CP2K and where it misses."""
    lines = []
    for pair, entry in m["rdf"].items():
        ref, new = entry["reference"], entry["learned"]
        shift = entry["first_peak_shift_angstrom"]
        ratio = entry["first_peak_height_ratio"]
        where = "too far out" if shift > 0 else "too close in"
        position = (f"at the CP2K position (within {PEAK_POSITION_TOLERANCE_ANGSTROM} Å)"
                    if abs(shift) <= PEAK_POSITION_TOLERANCE_ANGSTROM else f"{abs(shift):.2f} Å {where}")
        structure = ("about as structured as CP2K" if abs(ratio - 1) <= PEAK_HEIGHT_TOLERANCE else
                     ("over-structured" if ratio > 1 else "under-structured") + f" (height ×{ratio:.2f})")
        lines.append(f"g_{pair}: first peak {position} — learned {_fmt(new['first_peak_angstrom'], 2)} Å vs CP2K "
                     f"{_fmt(ref['first_peak_angstrom'], 2)} Å — and {structure}.")
    angle = m["geometry"]["angle_degrees"]
    diff = angle["mean_difference"]
    lines.append(f"H–O–H angle: mean {_fmt(angle['learned_mean'], 1)}° vs CP2K {_fmt(angle['reference_mean'], 1)}°"
                 + (" — within 1°." if abs(diff) <= ANGLE_TOLERANCE_DEGREES else f" — off by {diff:+.1f}°."))
    bond = m["geometry"]["bond_length_angstrom"]
    lines.append(f"O–H bond: mean {_fmt(bond['learned_mean'])} Å vs CP2K {_fmt(bond['reference_mean'])} Å.")
    broken = m["geometry"]["fraction_frames_with_broken_molecules"]["learned"]
    if broken > 0:
        lines.append(f"Molecules are not intact: {100 * broken:.2g}% of learned frames have an O without exactly two H.")
    spectra = m["vdos"]
    lines.append(f"VDOS: stretch {_fmt(spectra['learned']['stretch_peak_cm'], 0)} vs "
                 f"{_fmt(spectra['reference']['stretch_peak_cm'], 0)} cm⁻¹, bend "
                 f"{_fmt(spectra['learned']['bend_peak_cm'], 0)} vs {_fmt(spectra['reference']['bend_peak_cm'], 0)}"
                 " cm⁻¹ (learned vs CP2K).")
    for key, d in m["diffusion"].items():
        if not d.get("trustworthy", False):
            lines.append(f"Diffusion ({key}) is not to be trusted: {d.get('warning') or d.get('error')}.")
    return lines


def compare_model(model_dir: str | Path, dataset_path: str | Path, out_dir: str | Path, *, length_factor: float = 10.0,
                  steps: int | None = None, nve_steps: int = 2000, seed: int = 0, progress_factory=None,
                  log: Callable[[str], None] | None = None) -> dict:
    """Run the learned model and compare it with the CP2K dataset; write report.md, metrics.json, figures."""
    from discover.pipeline import kernel_module_for

    say = log or (lambda message: None)
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if model_dir.is_file():
        model_dir = model_dir.parent
    if not (model_dir / "model.json").is_file():
        raise MldError(f"{model_dir}: no model.json (run `mld discover` first)")
    dataset = Dataset.load(dataset_path)
    dt_fs = float(dataset.metadata.get("timestep_fs") or np.median(np.diff(dataset.time)))
    temperature = float(dataset.metadata.get("temperature_k") or dataset.temperature_k().mean())
    reference = reference_trajectory(dataset)
    if steps is None:
        steps = int(round(length_factor * reference.duration_fs / dt_fs))
    figures = out_dir / "figures"
    kernels = kernel_module_for(model_dir, out_dir / "run")

    say(f"learned model: {steps} NVT steps + {nve_steps} NVE steps of {dt_fs} fs at {temperature:g} K")
    runs = run_learned(kernels, dataset, out_dir / "run", steps=steps, nve_steps=nve_steps, dt_fs=dt_fs,
                       temperature_k=temperature, seed=seed, progress_factory=progress_factory)
    nvt = runs["nvt"]["trajectory"]
    # the first 10% of the NVT run is equilibration from the CP2K frame
    keep = slice(len(nvt["positions"]) // 10, None)
    learned = compare.Trajectory(nvt["species"], nvt["positions"][keep], nvt["velocities"][keep], dataset.cell[0],
                                 FRAME_EVERY_STEPS * dt_fs, "mld")

    say("comparing structure, geometry, spectra, temperature, diffusion")
    m: dict = {"schema": "mld.compare.metrics", "schema_version": 1}
    m["rdf"], rdf_curves = compare.compare_rdfs(reference, learned)
    half = dataset.n_frames // 2
    noise, _ = compare.compare_rdfs(reference_trajectory(dataset, slice(0, half)),
                                    reference_trajectory(dataset, slice(half, None)))
    m["rdf_noise_floor"] = {pair: {"first_peak_shift_angstrom": e["first_peak_shift_angstrom"],
                                   "first_peak_height_ratio": e["first_peak_height_ratio"],
                                   "integrated_abs_difference": e["integrated_abs_difference"]}
                            for pair, e in noise.items()}
    m["geometry"], geometry_samples = compare.compare_geometry(reference, learned)
    m["vdos"], vdos_curves = compare.compare_spectra(reference, learned)
    m["temperature"], temperature_samples = compare.compare_temperature(reference, learned)
    m["diffusion"] = compare.compare_diffusion(reference, learned)
    m["nve"] = nve_drift(runs["nve"]["thermo"], dataset.n_atoms)

    say("force parity on validation frames")
    _, valid = split_frames(dataset.n_frames)
    errors, predicted = force_parity(model_dir, dataset, valid)
    m["force_errors"] = {name: {g: {k: float(v) for k, v in f.items()} for g, f in e.items()}
                         for name, e in errors.items()}

    cp2k_s = dataset.metadata.get("cp2k_seconds_per_step", {}).get("median")
    mld_s = runs["nvt"]["seconds_per_step"]
    m["speed"] = {"n_atoms": dataset.n_atoms, "cp2k_seconds_per_step": cp2k_s, "mld_seconds_per_step": mld_s,
                  "speedup": (cp2k_s / mld_s) if cp2k_s else None,
                  "mld_ns_per_day": runs["nvt"]["result"].ns_per_day}
    m["lengths"] = {"cp2k_ps": reference.duration_fs / 1000, "cp2k_frames": dataset.n_frames,
                    "learned_nvt_ps": steps * dt_fs / 1000, "learned_analysed_ps": learned.duration_fs / 1000,
                    "learned_nve_ps": nve_steps * dt_fs / 1000, "timestep_fs": dt_fs,
                    "learned_frame_interval_fs": learned.frame_interval_fs}
    m["source"] = {"dataset": str(dataset_path), "program": dataset.metadata.get("program"),
                   "version": dataset.metadata.get("version"), "method": dataset.metadata.get("method"),
                   "model": str(model_dir)}

    say("figures")
    plots.overlay_curves({f"g_{p}": (r, {"CP2K": g_ref, "mld": g_new}) for p, (r, g_ref, g_new) in rdf_curves.items()},
                         figures / "rdf.png", "r (Å)", "g(r)")
    species = dataset.species
    parity_panels = {}
    for name, f in predicted.items():
        for element in ("O", "H"):
            mask = species == element
            parity_panels[f"{name} {element}"] = (dataset.forces[valid][:, mask], f[:, mask])
    plots.parity(parity_panels, figures / "parity.png")
    plots.histograms({"O–H bond": ("r (Å)", {"CP2K": geometry_samples["bond_length_angstrom"]["reference"],
                                             "mld": geometry_samples["bond_length_angstrom"]["learned"]}),
                      "H–O–H angle": ("angle (°)", {"CP2K": geometry_samples["angle_degrees"]["reference"],
                                                    "mld": geometry_samples["angle_degrees"]["learned"]}),
                      "temperature": ("T (K)", {"CP2K": temperature_samples["reference"],
                                                "mld": temperature_samples["learned"]})},
                     figures / "geometry_temperature.png")
    wn_ref, i_ref = vdos_curves["reference"]
    wn_new, i_new = vdos_curves["learned"]
    i_new_on_ref = np.interp(wn_ref, wn_new, i_new)
    inside = wn_ref <= 4500
    plots.overlay_curves({"VDOS": (wn_ref[inside], {"CP2K": i_ref[inside], "mld": i_new_on_ref[inside]})},
                         figures / "vdos.png", "wavenumber (cm⁻¹)", "intensity (per cm⁻¹)")
    for name in ("pair_laws.png", "pareto.png"):
        if (model_dir / "figures" / name).is_file():
            shutil.copyfile(model_dir / "figures" / name, figures / name)

    write_text_atomic(out_dir / "metrics.json", json.dumps(m, indent=2, default=_json_default) + "\n")
    write_text_atomic(out_dir / "report.md", report_markdown(m, model_dir, figures))
    return m


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _force_table(errors: dict) -> list[str]:
    lines = ["| model | RMSE O (eV/Å) | RMSE H | RMSE all | relative all | MAE all |", "|---|---|---|---|---|---|"]
    for name, e in errors.items():
        lines.append(f"| {name} | {_fmt(e['O']['rmse'], 4)} | {_fmt(e['H']['rmse'], 4)} | {_fmt(e['all']['rmse'], 4)}"
                     f" | {_fmt(e['all']['relative'], 4)} | {_fmt(e['all']['mae'], 4)} |")
    return lines


def report_markdown(m: dict, model_dir: Path, figures: Path) -> str:
    rel = lambda name: f"figures/{name}"  # noqa: E731
    equations = (model_dir / "equations.md").read_text() if (model_dir / "equations.md").is_file() else ""
    equations = equations.replace("# Learned agent losses", "## Learned agent losses", 1)
    src, lengths, speed = m["source"], m["lengths"], m["speed"]
    lines = [
        "# mld validation report: learned water against CP2K",
        "",
        f"**Data.** {src['program']} {src['version']}, **{src['method']}**, from `{src['dataset']}`. "
        "GFN1-xTB is a semi-empirical tight-binding method: it is neither experiment nor DFT, and every "
        "comparison below is with GFN1-xTB water, not real water.",
        "",
        f"**Lengths.** CP2K: {lengths['cp2k_ps']:.2f} ps ({lengths['cp2k_frames']} frames). "
        f"Learned model: {lengths['learned_nvt_ps']:.1f} ps NVT (Nosé–Hoover chain), of which the last "
        f"{lengths['learned_analysed_ps']:.1f} ps are analysed, then {lengths['learned_nve_ps']:.1f} ps NVE; "
        f"timestep {lengths['timestep_fs']} fs.",
        "",
        equations.strip(),
        "",
        "## Where the learned model agrees and where it misses",
        "",
        *[f"- {line}" for line in verdicts(m)],
        "",
        "## Force errors on the validation frames (last 20 % of the CP2K run, never fitted)",
        "",
        *_force_table(m["force_errors"]),
        "",
        f"![force parity]({rel('parity.png')})",
        "",
        "## Pair laws",
        "",
        "Closed form against the force-matched table; the sampled range is shaded. Below it every law "
        "continues with a repulsive wall.",
        "",
        f"![pair laws]({rel('pair_laws.png')})",
        "",
        f"![Pareto fronts]({rel('pareto.png')})",
        "",
        "## Radial distribution functions",
        "",
        "| pair | peak CP2K (Å) | peak mld (Å) | shift (Å) | CP2K half-vs-half shift (Å) | height CP2K | height mld "
        "| ∫\\|Δg\\| dr (Å) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for pair, e in m["rdf"].items():
        lines.append(
            f"| {pair} | {_fmt(e['reference']['first_peak_angstrom'])} | {_fmt(e['learned']['first_peak_angstrom'])} | "
            f"{e['first_peak_shift_angstrom']:+.3f} | {m['rdf_noise_floor'][pair]['first_peak_shift_angstrom']:+.3f} | "
            f"{_fmt(e['reference']['first_peak_height'], 2)} | {_fmt(e['learned']['first_peak_height'], 2)} | "
            f"{_fmt(e['integrated_abs_difference'])} |")
    geo = m["geometry"]
    lines += [
        "",
        "g_OH's peak is the hydrogen bond (1.5–2.6 Å). The half-vs-half column compares the first and second "
        "halves of the CP2K run with each other: a shift smaller than it is within CP2K's own statistical noise.",
        "",
        f"![RDFs]({rel('rdf.png')})",
        "",
        "## Molecular geometry and temperature",
        "",
        "| quantity | CP2K mean ± std | mld mean ± std | overlap |",
        "|---|---|---|---|",
        f"| O–H bond (Å) | {_fmt(geo['bond_length_angstrom']['reference_mean'], 4)} ± "
        f"{_fmt(geo['bond_length_angstrom']['reference_std'], 4)} | {_fmt(geo['bond_length_angstrom']['learned_mean'], 4)}"
        f" ± {_fmt(geo['bond_length_angstrom']['learned_std'], 4)} | {_fmt(geo['bond_length_angstrom']['overlap'], 2)} |",
        f"| H–O–H angle (°) | {_fmt(geo['angle_degrees']['reference_mean'], 2)} ± "
        f"{_fmt(geo['angle_degrees']['reference_std'], 2)} | {_fmt(geo['angle_degrees']['learned_mean'], 2)} ± "
        f"{_fmt(geo['angle_degrees']['learned_std'], 2)} | {_fmt(geo['angle_degrees']['overlap'], 2)} |",
        f"| temperature (K) | {_fmt(m['temperature']['reference_mean_k'], 1)} ± "
        f"{_fmt(m['temperature']['reference_std_k'], 1)} | {_fmt(m['temperature']['learned_mean_k'], 1)} ± "
        f"{_fmt(m['temperature']['learned_std_k'], 1)} | |",
        "",
        f"![geometry and temperature]({rel('geometry_temperature.png')})",
        "",
        "## Vibrational density of states",
        "",
        f"Peaks (cm⁻¹), CP2K → mld: bend {_fmt(m['vdos']['reference']['bend_peak_cm'], 0)} → "
        f"{_fmt(m['vdos']['learned']['bend_peak_cm'], 0)}, stretch {_fmt(m['vdos']['reference']['stretch_peak_cm'], 0)}"
        f" → {_fmt(m['vdos']['learned']['stretch_peak_cm'], 0)}.",
        "",
        f"![VDOS]({rel('vdos.png')})",
        "",
        "## Diffusion (oxygen, centre-of-mass drift removed)",
        "",
        "| run | D (10⁻⁹ m²/s) | error method | trustworthy | note |",
        "|---|---|---|---|---|",
    ]
    for key, d in m["diffusion"].items():
        if "d_1e9_m2_per_s" in d:
            lines.append(f"| {key} | {d['d_1e9_m2_per_s']:.2f} ± {d['stderr_1e9_m2_per_s']:.2f} | {d['error_method']} | "
                         f"{'yes' if d['trustworthy'] else 'no'} | {d['warning']} |")
        else:
            lines.append(f"| {key} | n/a | | no | {d['error']} |")
    nve = m["nve"]
    lines += [
        "",
        "## Energy conservation and speed",
        "",
        f"NVE segment of {nve['duration_ps']:.2f} ps: drift {nve['drift_ev_per_atom_per_ps']:.2e} eV/atom/ps, "
        f"spread {nve['spread_ev_per_atom']:.2e} eV/atom.",
        "",
        f"Speed at {speed['n_atoms']} atoms: CP2K {_fmt(speed['cp2k_seconds_per_step'], 3)} s/step (its own timings), "
        f"mld {speed['mld_seconds_per_step']:.2e} s/step ({speed['mld_ns_per_day']:.0f} ns/day): "
        f"**{_fmt(speed['speedup'], 0)}× faster**.",
        "",
    ]
    return "\n".join(lines)
