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
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pandas as pd

from discover import compare, metrics, plots
from discover.cp2k import run_cores
from discover.dataset import Dataset
from discover.force_matching import split_frames
from discover.model import Model
from simulate import md
from simulate import observables as obs
from simulate.errors import MldError
from simulate.fileio import write_text_atomic
from simulate.space import box_lengths
from simulate.trajectory import read_trajectory

# A difference below these reads as agreement in the report's plain-word verdicts.
PEAK_POSITION_TOLERANCE_ANGSTROM = 0.05
PEAK_HEIGHT_TOLERANCE = 0.10
ANGLE_TOLERANCE_DEGREES = 1.0
FRAME_EVERY_STEPS = 4  # 2 fs at 0.5 fs steps: Nyquist 8,300 cm⁻¹, above every water band
ENGINE_STEPS = 2000  # timed steps of the engine alone (a fraction of a second at 96 atoms)


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
        callback, context = (None, nullcontext()) if progress_factory is None else progress_factory(name, n_steps,
                                                                                                     dt_fs)
        started = time.perf_counter()
        with context:
            result = md.simulate(kernels, dataset.species, start[0], box, start[1], steps=n_steps, dt_fs=dt_fs,
                                 temperature_k=temperature_k, thermostat=thermostat, out_dir=run_dir, seed=seed,
                                 trajectory_every=FRAME_EVERY_STEPS, progress=callback)
        wall = time.perf_counter() - started
        traj = read_trajectory(result.trajectory_path)
        runs[name] = {"result": result, "trajectory": traj, "thermo": pd.read_csv(result.thermo_path),
                      "seconds_per_step": result.wall_s / max(n_steps, 1), "wall_s": wall}
        start = (traj["positions"][-1], traj["velocities"][-1])
    return runs


def engine_speed(kernels, dataset: Dataset, dt_fs: float, temperature_k: float) -> dict:
    """Seconds per step of the engine alone, one thread, from the first CP2K frame, as a long run takes its
    steps (see :func:`simulate.md.engine_seconds_per_step`): the closed form (the laws this report's runs take),
    and tabulated, as ``mld simulate`` runs a model by default (None, with the reason, where the laws cannot be
    tabulated). A frame without velocities (an extended XYZ without momenta) starts from Maxwell–Boltzmann
    ones at ``temperature_k``: from rest, the atoms would barely move and the lists seldom be rebuilt."""
    from simulate import tabulate
    from simulate.kernels import KernelModuleError

    velocities = dataset.velocities[0] if np.any(dataset.velocities[0]) else None
    frame = (dataset.species, dataset.positions[0], box_lengths(dataset.cell[0]), velocities)
    options = {"steps": ENGINE_STEPS, "dt_fs": dt_fs, "threads": 1, "temperature_k": temperature_k}
    out = {"threads": 1, "closed_form": md.engine_seconds_per_step(kernels, *frame, **options)}
    try:
        tabulated = tabulate.tabulate_kernel_module(kernels)
    except (tabulate.TabulationError, KernelModuleError) as exc:
        out["tabulated"], out["tabulated_note"] = None, str(exc)
    else:
        out["tabulated"] = md.engine_seconds_per_step(tabulated, *frame, **options)
    return out


def _ratio(a, b):
    return a / b if a and b else None


def speed_figures(n_atoms: int, cp2k_s: float | None, cp2k_cores: int | None, engine: dict, production_s: float,
                  ns_per_day: float) -> dict:
    """CP2K's time per step (the mean step's wall time; its CPU time is that times its cores, where known)
    against mld's: the engine alone as a long ``mld simulate`` run steps the model (``engine``, see
    :func:`engine_speed`), and this report's production run."""
    engine_s = engine["tabulated"] or engine["closed_form"]
    cp2k_cpu_s = cp2k_s * cp2k_cores if cp2k_s and cp2k_cores else None
    return {"n_atoms": n_atoms, "cp2k_seconds_per_step": cp2k_s, "cp2k_cores": cp2k_cores,
            "cp2k_cpu_seconds_per_step": cp2k_cpu_s, "engine_seconds_per_step": engine,
            "engine_form": "tabulated" if engine["tabulated"] else "closed_form",
            "speedup": _ratio(cp2k_s, engine_s), "speedup_cpu": _ratio(cp2k_cpu_s, engine_s),
            "production_seconds_per_step": production_s, "production_speedup": _ratio(cp2k_s, production_s),
            "mld_ns_per_day": ns_per_day,
            "note": "speedup: CP2K's mean wall time per step over the engine alone on one thread, as a long run "
                    "takes its steps (speedup_cpu: CP2K's CPU time, wall × cores); production: this report's NVT "
                    f"run, with its output every {FRAME_EVERY_STEPS} steps, the compilation of its loops and, at "
                    "its length, the pass that also sums the energies"}


def nve_drift(thermo: pd.DataFrame, n_atoms: int) -> dict:
    """Drift (slope of a line through the conserved energy) and spread, per atom."""
    t_ps = thermo["time_fs"].to_numpy() / 1000.0
    e = thermo["conserved_ev"].to_numpy() / n_atoms
    slope = float(np.polyfit(t_ps - t_ps[0], e, 1)[0]) if len(e) > 2 else float("nan")
    return {"drift_ev_per_atom_per_ps": slope, "spread_ev_per_atom": float(e.max() - e.min()),
            "duration_ps": float(t_ps[-1] - t_ps[0])}


PARITY_FOLDERS = ("manybody", "manybody_tabulated", "pairwise", "tabulated")
LABELS = {"manybody": "many-body closed form", "manybody_tabulated": "many-body tabulated",
          "pairwise": "pairwise closed form", "tabulated": "pairwise tabulated",
          "quadratic_baseline": "quadratic baseline (paper)", "model": "model"}


def model_variants(model_dir: Path) -> tuple[dict, str]:
    """Closed-form models to run in MD, default first: ``({name: folder}, default name)``."""
    metrics_path = model_dir / "metrics.json"
    if metrics_path.is_file():
        default = json.loads(metrics_path.read_text()).get("default_model")
        names = [default] + [n for n in ("manybody", "pairwise") if n != default]
        found = {n: model_dir / n for n in names if n and (model_dir / n / "model.json").is_file()}
        if found:
            return found, next(iter(found))
    return {"model": model_dir}, "model"


def force_parity(model_dir: Path, dataset: Dataset, valid: np.ndarray) -> tuple[dict, dict]:
    """Validation forces of every saved model variant and the quadratic baseline."""
    from discover import pipeline

    folders = {n: model_dir / n for n in PARITY_FOLDERS if (model_dir / n / "model.json").is_file()}
    if not folders:
        folders = {"model": model_dir}
    predicted = {name: pipeline.validation_forces(dataset, valid, Model.load(f / "model.json"))
                 for name, f in folders.items()}
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


def _peak_cell(entry: dict) -> str:
    position = entry["learned"]["first_peak_angstrom"]
    if not np.isfinite(position):
        return "none"
    shift = entry["first_peak_shift_angstrom"]
    return f"{_fmt(position)} ({shift:+.3f})" if np.isfinite(shift) else _fmt(position)


def verdicts(run: dict) -> list[str]:
    """Plain-word statements of where one learned model agrees with CP2K and where it misses."""
    lines = []
    for pair, entry in run["rdf"].items():
        ref, new = entry["reference"], entry["learned"]
        shift = entry["first_peak_shift_angstrom"]
        ratio = entry["first_peak_height_ratio"]
        if not np.isfinite(shift):
            what = " (the hydrogen bond)" if pair == "OH" else ""
            if np.isfinite(ref["first_peak_angstrom"]) and not np.isfinite(new["first_peak_angstrom"]):
                lines.append(f"g_{pair}: no first peak{what} where CP2K has one at "
                             f"{_fmt(ref['first_peak_angstrom'], 2)} Å: the shell is washed out.")
            elif np.isfinite(new["first_peak_angstrom"]):
                lines.append(f"g_{pair}: a first peak{what} at {_fmt(new['first_peak_angstrom'], 2)} Å "
                             "where CP2K has none.")
            else:
                lines.append(f"g_{pair}: no first peak{what}, in CP2K or in the learned model.")
            continue
        where = "too far out" if shift > 0 else "too close in"
        position = (f"at the CP2K position (within {PEAK_POSITION_TOLERANCE_ANGSTROM} Å)"
                    if abs(shift) <= PEAK_POSITION_TOLERANCE_ANGSTROM else f"{abs(shift):.2f} Å {where}")
        structure = ("about as structured as CP2K" if abs(ratio - 1) <= PEAK_HEIGHT_TOLERANCE else
                     ("over-structured" if ratio > 1 else "under-structured") + f" (height ×{ratio:.2f})")
        lines.append(f"g_{pair}: first peak {position} — {_fmt(new['first_peak_angstrom'], 2)} Å vs CP2K "
                     f"{_fmt(ref['first_peak_angstrom'], 2)} Å — and {structure}.")
    angle = run["geometry"]["angle_degrees"]
    diff = angle["mean_difference"]
    lines.append(f"H–O–H angle: mean {_fmt(angle['learned_mean'], 1)}° vs CP2K {_fmt(angle['reference_mean'], 1)}°"
                 + (" — within 1°." if abs(diff) <= ANGLE_TOLERANCE_DEGREES else f" — off by {diff:+.1f}°."))
    bond = run["geometry"]["bond_length_angstrom"]
    lines.append(f"O–H bond: mean {_fmt(bond['learned_mean'])} Å vs CP2K {_fmt(bond['reference_mean'])} Å.")
    broken = run["geometry"]["fraction_frames_with_broken_molecules"]["learned"]
    if broken > 0:
        lines.append(
            f"Molecules are not intact: in {100 * broken:.0f}% of frames some O holds other than two H (its nearest "
            f"H); on average {100 * run['geometry']['fraction_oxygens_not_water']['learned']:.0f}% of the O are not "
            f"water, {100 * run['geometry']['fraction_oxygens_not_water_last_frame']['learned']:.0f}% in the last "
            "frame. CP2K keeps every molecule intact. Angles are taken over intact molecules only.")
    spectra = run["vdos"]
    lines.append(f"VDOS: stretch {_fmt(spectra['learned']['stretch_peak_cm'], 0)} vs "
                 f"{_fmt(spectra['reference']['stretch_peak_cm'], 0)} cm⁻¹, bend "
                 f"{_fmt(spectra['learned']['bend_peak_cm'], 0)} vs {_fmt(spectra['reference']['bend_peak_cm'], 0)}"
                 " cm⁻¹ (learned vs CP2K).")
    for key, d in run["diffusion"].items():
        if not d.get("trustworthy", False):
            lines.append(f"Diffusion ({'CP2K' if key == 'reference' else 'learned'}) is not to be trusted: "
                         f"{d.get('warning') or d.get('error')}.")
    return lines


def analyse_run(reference: compare.Trajectory, learned: compare.Trajectory) -> tuple[dict, dict]:
    """Every comparison of one learned run with CP2K: (metrics, curves and samples for figures)."""
    run, curves = {}, {}
    run["rdf"], curves["rdf"] = compare.compare_rdfs(reference, learned)
    run["geometry"], curves["geometry"] = compare.compare_geometry(reference, learned)
    run["vdos"], curves["vdos"] = compare.compare_spectra(reference, learned)
    run["temperature"], curves["temperature"] = compare.compare_temperature(reference, learned)
    run["diffusion"] = compare.compare_diffusion(reference, learned)
    return run, curves


def compare_model(model_dir: str | Path, dataset_path: str | Path, out_dir: str | Path, *, length_factor: float = 10.0,
                  steps: int | None = None, nve_steps: int = 2000, seed: int = 0, progress_factory=None,
                  log: Callable[[str], None] | None = None) -> dict:
    """Run the learned model(s) and compare with the CP2K dataset; write report.md, metrics.json, figures."""
    from discover.pipeline import json_default, kernel_module_for

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
    variants, default = model_variants(model_dir)

    m: dict = {"schema": "mld.compare.metrics", "schema_version": 3, "default_model": default, "models": {}}
    curves = {}
    cp2k_s = (dataset.metadata.get("cp2k_seconds_per_step") or {}).get("mean")  # the benchmark's, too
    cp2k_cores = run_cores(dataset.metadata)
    for name, folder in variants.items():
        say(f"{LABELS.get(name, name)}: {steps} NVT steps + {nve_steps} NVE steps of {dt_fs} fs at {temperature:g} K")
        kernels = kernel_module_for(folder, out_dir / "run" / name)
        runs = run_learned(kernels, dataset, out_dir / "run" / name, steps=steps, nve_steps=nve_steps, dt_fs=dt_fs,
                           temperature_k=temperature, seed=seed, progress_factory=progress_factory)
        nvt = runs["nvt"]["trajectory"]
        keep = slice(len(nvt["positions"]) // 10, None)  # the first 10% is equilibration from the CP2K frame
        learned = compare.Trajectory(nvt["species"], nvt["positions"][keep], nvt["velocities"][keep],
                                     dataset.cell[0], FRAME_EVERY_STEPS * dt_fs, LABELS.get(name, name))
        run, curves[name] = analyse_run(reference, learned)
        run["nve"] = nve_drift(runs["nve"]["thermo"], dataset.n_atoms)
        run["speed"] = speed_figures(dataset.n_atoms, cp2k_s, cp2k_cores,
                                     engine_speed(kernels, dataset, dt_fs, temperature),
                                     runs["nvt"]["seconds_per_step"], runs["nvt"]["result"].ns_per_day)
        run["learned_analysed_ps"] = learned.duration_fs / 1000
        m["models"][name] = run

    half = dataset.n_frames // 2
    noise, _ = compare.compare_rdfs(reference_trajectory(dataset, slice(0, half)),
                                    reference_trajectory(dataset, slice(half, None)))
    m["rdf_noise_floor"] = {pair: {"first_peak_shift_angstrom": e["first_peak_shift_angstrom"],
                                   "first_peak_height_ratio": e["first_peak_height_ratio"],
                                   "integrated_abs_difference": e["integrated_abs_difference"]}
                            for pair, e in noise.items()}

    say("force parity on validation frames")
    _, valid = split_frames(dataset.n_frames)
    errors, predicted = force_parity(model_dir, dataset, valid)
    m["force_errors"] = {name: {g: {k: float(v) for k, v in f.items()} for g, f in e.items()}
                         for name, e in errors.items()}
    m["lengths"] = {"cp2k_ps": reference.duration_fs / 1000, "cp2k_frames": dataset.n_frames,
                    "learned_nvt_ps": steps * dt_fs / 1000, "learned_nve_ps": nve_steps * dt_fs / 1000,
                    "timestep_fs": dt_fs, "learned_frame_interval_fs": FRAME_EVERY_STEPS * dt_fs}
    m["source"] = {"dataset": str(dataset_path), "program": dataset.metadata.get("program"),
                   "version": dataset.metadata.get("version"), "method": dataset.metadata.get("method"),
                   "model": str(model_dir)}

    say("figures")
    _figures(figures, curves, predicted, dataset, valid, model_dir)
    write_text_atomic(out_dir / "metrics.json", json.dumps(m, indent=2, default=json_default) + "\n")
    write_text_atomic(out_dir / "report.md", report_markdown(m, model_dir))
    return m


def times(ratio: float) -> str:
    """×23,600: a ratio to three significant digits."""
    return f"×{float(f'{ratio:.3g}'):,.0f}" if ratio >= 100 else f"×{ratio:.3g}"


def _time_cell(seconds: float | None, cp2k_s: float | None) -> str:
    """``381 µs (×3,150)``: a time per step, and CP2K's time over it (wall time against wall time)."""
    if not seconds:
        return "n/a"
    return f"{seconds * 1e6:.0f} µs" + (f" ({times(cp2k_s / seconds)})" if cp2k_s else "")


def _engine_cell(run: dict) -> str:
    speed = run["speed"]
    cell = _time_cell(speed["engine_seconds_per_step"][speed["engine_form"]], speed["cp2k_seconds_per_step"])
    if speed["speedup_cpu"]:
        cell += f", {times(speed['speedup_cpu'])} in CPU time"
    return cell + ("" if speed["engine_form"] == "tabulated" else " (closed form: the laws cannot be tabulated)")


def _cp2k_time_cell(speed: dict) -> str:
    if not speed["cp2k_seconds_per_step"]:
        return "n/a"
    cell = f"{speed['cp2k_seconds_per_step']:.3g} s"
    if speed["cp2k_cores"]:
        cell += f" on {speed['cp2k_cores']} core(s), {speed['cp2k_cpu_seconds_per_step']:.3g} CPU s"
    return cell


def _figures(figures: Path, curves: dict, predicted: dict, dataset: Dataset, valid, model_dir: Path) -> None:
    names = list(curves)
    first = curves[names[0]]
    rdf_panels = {}
    for pair, (r, g_ref, _) in first["rdf"].items():
        rdf_panels[f"g_{pair}"] = (r, {"CP2K": g_ref, **{LABELS.get(n, n): curves[n]["rdf"][pair][2] for n in names}})
    plots.overlay_curves(rdf_panels, figures / "rdf.png", "r (Å)", "g(r)")
    parity_panels = {}
    for name, f in predicted.items():
        for element in ("O", "H"):
            mask = dataset.species == element
            parity_panels[f"{LABELS.get(name, name)} {element}"] = (dataset.forces[valid][:, mask], f[:, mask])
    plots.parity(parity_panels, figures / "parity.png")
    geometry = {}
    for title, key, unit in (("O–H bond", "bond_length_angstrom", "r (Å)"), ("H–O–H angle", "angle_degrees", "angle (°)")):
        geometry[title] = (unit, {"CP2K": first["geometry"][key]["reference"],
                                  **{LABELS.get(n, n): curves[n]["geometry"][key]["learned"] for n in names}})
    geometry["temperature"] = ("T (K)", {"CP2K": first["temperature"]["reference"],
                                         **{LABELS.get(n, n): curves[n]["temperature"]["learned"] for n in names}})
    plots.histograms(geometry, figures / "geometry_temperature.png")
    wn_ref, i_ref = first["vdos"]["reference"]
    inside = wn_ref <= 4500
    series = {"CP2K": i_ref[inside]}
    for n in names:
        wn, intensity = curves[n]["vdos"]["learned"]
        series[LABELS.get(n, n)] = np.interp(wn_ref, wn, intensity)[inside]
    plots.overlay_curves({"VDOS": (wn_ref[inside], series)}, figures / "vdos.png", "wavenumber (cm⁻¹)",
                         "intensity (per cm⁻¹)")
    for name in ("pair_laws.png", "pareto.png"):
        if (model_dir / "figures" / name).is_file():
            shutil.copyfile(model_dir / "figures" / name, figures / name)


def _force_table(errors: dict) -> list[str]:
    lines = ["| model | RMSE O (eV/Å) | RMSE H | RMSE all | relative O | relative H | relative all |",
             "|---|---|---|---|---|---|---|"]
    for name, e in errors.items():
        lines.append(f"| {LABELS.get(name, name)} | {_fmt(e['O']['rmse'], 4)} | {_fmt(e['H']['rmse'], 4)} | "
                     f"{_fmt(e['all']['rmse'], 4)} | {_fmt(e['O']['relative'], 4)} | {_fmt(e['H']['relative'], 4)} | "
                     f"{_fmt(e['all']['relative'], 4)} |")
    return lines


def _model_columns(m: dict, cell) -> str:
    return " | ".join(cell(run) for run in m["models"].values())


def report_markdown(m: dict, model_dir: Path) -> str:
    def fig(name):
        return f"figures/{name}"

    equations = (model_dir / "equations.md").read_text() if (model_dir / "equations.md").is_file() else ""
    equations = equations.replace("# Learned agent losses", "## Learned agent losses (the default model)", 1)
    src, lengths = m["source"], m["lengths"]
    names = [LABELS.get(n, n) for n in m["models"]]
    header = "| quantity | CP2K | " + " | ".join(names) + " |"
    rule = "|---|---|" + "---|" * len(names)
    first = next(iter(m["models"].values()))
    lines = [
        "# mld validation report: learned water against CP2K",
        "",
        f"**Data.** {src['program']} {src['version']}, **{src['method']}**, from `{src['dataset']}`. "
        "GFN1-xTB is a semi-empirical tight-binding method: it is neither experiment nor DFT, and every "
        "comparison below is with GFN1-xTB water, not real water.",
        "",
        f"**Lengths.** CP2K: {lengths['cp2k_ps']:.2f} ps ({lengths['cp2k_frames']} frames) — too short for a "
        f"trustworthy diffusion coefficient. Each learned model: {lengths['learned_nvt_ps']:.1f} ps NVT "
        f"(Nosé–Hoover chain) from the first CP2K frame with its velocities, the first 10 % dropped, then "
        f"{lengths['learned_nve_ps']:.1f} ps NVE; timestep {lengths['timestep_fs']} fs.",
        "",
        f"**Models run.** {', '.join(names)}; the default is **{LABELS.get(m['default_model'], m['default_model'])}**.",
        "",
        equations.strip(),
        "",
    ]
    for name, run in m["models"].items():
        lines += [f"## {LABELS.get(name, name)}: where it agrees with CP2K and where it misses", "",
                  *[f"- {line}" for line in verdicts(run)], ""]
    lines += [
        "## Force errors on the validation frames (last 20 % of the CP2K run, never fitted)",
        "",
        *_force_table(m["force_errors"]),
        "",
        f"![force parity]({fig('parity.png')})",
        "",
        "## Pair laws",
        "",
        "Closed forms against the force-matched table; the sampled range is shaded. Below it every law "
        "continues with a repulsive wall.",
        "",
        f"![pair laws]({fig('pair_laws.png')})",
        "",
        f"![Pareto fronts]({fig('pareto.png')})",
        "",
        "## Radial distribution functions: first peak (Å) and height",
        "",
        header,
        rule,
    ]
    for pair in first["rdf"]:
        ref = first["rdf"][pair]["reference"]
        lines.append(f"| g_{pair} peak (Å) | {_fmt(ref['first_peak_angstrom'])} | " + _model_columns(
            m, lambda run, pair=pair: _peak_cell(run["rdf"][pair])) + " |")
        lines.append(f"| g_{pair} height | {_fmt(ref['first_peak_height'], 2)} | " + _model_columns(
            m, lambda run, pair=pair: _fmt(run["rdf"][pair]['learned']['first_peak_height'], 2)) + " |")
        lines.append(f"| g_{pair} ∫\\|Δg\\| dr (Å) | 0 | " + _model_columns(
            m, lambda run, pair=pair: _fmt(run["rdf"][pair]['integrated_abs_difference'])) + " |")
    noise = ", ".join(f"g_{p} {e['first_peak_shift_angstrom']:+.3f} Å" for p, e in m["rdf_noise_floor"].items())
    geo = lambda run, key, stat: run["geometry"][key][stat]
    lines += [
        "",
        f"g_OH's peak is the hydrogen bond (1.5–2.6 Å). A peak is the vertex of the least-squares parabola over "
        f"±{obs.RDF_PEAK_FIT_HALF_WIDTH_ANGSTROM:g} Å around the maximum of g smoothed over "
        f"{obs.RDF_PEAK_SMOOTH_BINS} bins (the three-point vertex of the raw histogram follows the noise of "
        f"three bins). CP2K's own noise: its first and second halves differ in "
        f"first-peak position by {noise}; a smaller shift than that is within CP2K's statistics.",
        "",
        f"![RDFs]({fig('rdf.png')})",
        "",
        "## Molecular geometry, temperature and spectra",
        "",
        header,
        rule,
        f"| O–H bond (Å) | {_fmt(geo(first, 'bond_length_angstrom', 'reference_mean'), 4)} ± "
        f"{_fmt(geo(first, 'bond_length_angstrom', 'reference_std'), 4)} | " + _model_columns(
            m, lambda run: f"{_fmt(geo(run, 'bond_length_angstrom', 'learned_mean'), 4)} ± "
                           f"{_fmt(geo(run, 'bond_length_angstrom', 'learned_std'), 4)}") + " |",
        f"| H–O–H angle (°) | {_fmt(geo(first, 'angle_degrees', 'reference_mean'), 2)} ± "
        f"{_fmt(geo(first, 'angle_degrees', 'reference_std'), 2)} | " + _model_columns(
            m, lambda run: f"{_fmt(geo(run, 'angle_degrees', 'learned_mean'), 2)} ± "
                           f"{_fmt(geo(run, 'angle_degrees', 'learned_std'), 2)} "
                           f"(overlap {_fmt(geo(run, 'angle_degrees', 'overlap'), 2)})") + " |",
        f"| temperature (K) | {_fmt(first['temperature']['reference_mean_k'], 1)} ± "
        f"{_fmt(first['temperature']['reference_std_k'], 1)} | " + _model_columns(
            m, lambda run: f"{_fmt(run['temperature']['learned_mean_k'], 1)} ± "
                           f"{_fmt(run['temperature']['learned_std_k'], 1)}") + " |",
        f"| VDOS bend (cm⁻¹) | {_fmt(first['vdos']['reference']['bend_peak_cm'], 0)} | " + _model_columns(
            m, lambda run: _fmt(run['vdos']['learned']['bend_peak_cm'], 0)) + " |",
        f"| VDOS stretch (cm⁻¹) | {_fmt(first['vdos']['reference']['stretch_peak_cm'], 0)} | " + _model_columns(
            m, lambda run: _fmt(run['vdos']['learned']['stretch_peak_cm'], 0)) + " |",
        "| D_O (10⁻⁹ m²/s) | " + _diffusion_cell(first["diffusion"]["reference"]) + " | " + _model_columns(
            m, lambda run: _diffusion_cell(run["diffusion"]["learned"])) + " |",
        "| NVE drift (eV/atom/ps) | | " + _model_columns(
            m, lambda run: f"{run['nve']['drift_ev_per_atom_per_ps']:.1e}") + " |",
        f"| time per step at {first['speed']['n_atoms']} atoms, engine alone, as a long `mld simulate` run takes "
        "it (one thread) | " + _cp2k_time_cell(first["speed"]) + " | " + _model_columns(m, _engine_cell) + " |",
        "| … closed form (one thread) | | " + _model_columns(
            m, lambda run: _time_cell(run["speed"]["engine_seconds_per_step"]["closed_form"],
                                      run["speed"]["cp2k_seconds_per_step"])) + " |",
        "| … this run (output, compilation, energies) | | " + _model_columns(
            m, lambda run: _time_cell(run["speed"]["production_seconds_per_step"],
                                      run["speed"]["cp2k_seconds_per_step"])) + " |",
        "",
        "D: an asterisk marks a value the run is too short to trust (see the verdicts above). Speed: CP2K's own "
        "timings of the run behind the dataset (the mean step's wall time; its CPU time is that times the cores "
        "its output states) against mld's engine alone: NVE steps from the first CP2K frame on one thread, "
        f"{ENGINE_STEPS} timed after untimed ones that compile, as a long run takes them between its outputs (the "
        "forces-only pass), tabulated where the laws allow (`mld simulate`'s default); × is CP2K's time over "
        "mld's, wall time against wall time, and in CPU time where CP2K's cores are known. The runs above write a "
        f"frame every {FRAME_EVERY_STEPS} steps and, at their length, sum the energies every step; with the "
        "compilation of their loops, that is most of their time at this size. "
        "`benchmarks/results/` has the engine side by side with LAMMPS.",
        "",
        f"![geometry and temperature]({fig('geometry_temperature.png')})",
        "",
        f"![VDOS]({fig('vdos.png')})",
        "",
    ]
    return "\n".join(lines)


def _diffusion_cell(d: dict) -> str:
    if "d_1e9_m2_per_s" not in d:
        return "n/a"
    return f"{d['d_1e9_m2_per_s']:.2f} ± {d['stderr_1e9_m2_per_s']:.2f}{'' if d['trustworthy'] else '*'}"
