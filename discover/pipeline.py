"""The discovery pipeline, stage by stage: dataset → force matching → search → refit → sympy → kernels.

Each stage lives in its own module; this one only runs them in order, times them and writes
their outputs into one model folder:

``model.json``            the default model (safe, schema-versioned): the many-body closed form when it
                          beats the pairwise one on validation forces, else the pairwise closed form
``kernels.py``            its Numba kernels (the interface of ``simulate.kernels``)
``equations.md``          its H_O and H_H in plain text and LaTeX
``pairwise/``             the pairwise closed form (model.json, kernels.py, equations.md)
``tabulated/``            the force-matched pairwise B-spline model, the bound of any pairwise closed form
``manybody/``             pair laws plus closed-form three-body terms
``manybody_tabulated/``   pair splines plus the Gaussian × Legendre three-body table
``pareto.csv``            every pairwise candidate with its search and validation figures
``metrics.json``          validation force errors of tabulated, closed form and quadratic baseline
``figures/*.png``         pair laws against the tables, and the Pareto fronts
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from discover import (
    __version__,
    baseline,
    codegen,
    engines,
    force_matching,
    metrics,
    plots,
    refit,
    symbolic,
    topology,
)
from discover.dataset import Dataset
from discover.model import Model
from simulate.errors import MldError
from simulate.fileio import write_text_atomic

# The paper baseline is fitted on every BASELINE_STRIDE-th training frame: its normal equations
# cost ~O(params²) per frame, and every 4th frame gives the same validation error (measured).
BASELINE_STRIDE = 4

# Frame budgets of the nonlinear stages. "quick" is for smoke tests and first looks: the same
# pipeline on fewer frames, with figures that are noisier but of the same kind.
BUDGETS = {
    "full": {"refit_frames": 16, "refit_validation_frames": 48, "manybody_fit_frames": 200, "manybody_refit_frames": 8,
             "manybody_screen_steps": 4000},
    "quick": {"refit_frames": 4, "refit_validation_frames": 16, "manybody_fit_frames": 40, "manybody_refit_frames": 2,
              "manybody_screen_steps": 400},
}


@dataclass
class StageClock:
    """Wall time per stage, in seconds."""

    seconds: dict

    def run(self, name: str, function, *args, **kwargs):
        started = time.perf_counter()
        result = function(*args, **kwargs)
        self.seconds[name] = round(time.perf_counter() - started, 3)
        return result


def validation_forces(dataset: Dataset, frames: np.ndarray, model, label: str = "dataset") -> np.ndarray:
    """Forces of any model (pairwise or many-body, tabulated or closed form, atomic or molecular) on dataset
    frames. A molecular model's molecules are assigned on the first of ``frames`` and checked on all."""
    from discover.threebody import model_forces

    return model_forces(model, dataset.positions, dataset.cell, dataset.species, frames=frames, label=label)


def model_row(errors: dict, n_parameters: int, complexity=None) -> dict:
    row = {group: {k: float(v) for k, v in figures.items()} for group, figures in errors.items()}
    row["n_parameters"] = int(n_parameters)
    if complexity is not None:
        row["complexity"] = complexity
    return row


def discover_model(
    dataset_path: str | Path,
    out_dir: str | Path,
    *,
    engine: str = "auto",
    cutoff_angstrom: float | None = None,
    seed: int = 0,
    search_budget_s: float = 60.0,
    validation_fraction: float = 0.2,
    tolerance: float = refit.DEFAULT_TOLERANCE,
    manybody: bool = True,
    threebody_cutoff_angstrom: float | None = 3.2,
    budget: str = "full",
    molecular: bool = False,
    log: Callable[[str], None] | None = None,
    stage: Callable[[str], None] | None = None,
) -> dict:
    """Run every discovery stage on a dataset and write the model folder; returns the metrics dict.

    ``threebody_cutoff_angstrom=None`` chooses r_3 by validation among 2.8, 3.2 and 3.6 Å (three more
    many-body fits). On the shipped dataset that gave 0.085, 0.078 and 0.073 (tabulated, relative),
    and 3.2 Å, the smallest within 10 % of the best, is the default.

    ``molecular`` fits intra- and intermolecular pair laws on molecules assigned on the first frame
    (``discover.topology``; a dissociation in any frame is an error); it is pairwise only, so
    ``manybody`` is then off.
    """
    say = log or (lambda message: None)
    enter = stage or (lambda name: None)
    if budget not in BUDGETS:
        raise MldError(f"budget {budget!r}: choose one of {', '.join(BUDGETS)}")
    frames = BUDGETS[budget]
    out_dir = Path(out_dir)
    clock = StageClock({})
    started = time.perf_counter()

    enter("load")
    dataset = clock.run("load", Dataset.load, dataset_path)
    train, valid = force_matching.split_frames(dataset.n_frames, validation_fraction)
    if len(train) < 2 or len(valid) < 1:
        raise MldError(f"{dataset_path}: {dataset.n_frames} frames are too few to split into training and validation")
    say(f"{dataset.n_frames} frames: {len(train)} training, {len(valid)} validation (the last {validation_fraction:.0%})")
    cutoff = cutoff_angstrom or force_matching.default_cutoff(dataset.cell)
    arrays = (dataset.positions, dataset.forces, dataset.cell, dataset.species)
    typing, bond_cutoffs = None, None
    if molecular:
        species_names = tuple(dict.fromkeys(dataset.species.tolist()))
        bond_cutoffs = topology.default_bond_cutoffs(species_names)
        typing = clock.run("topology", topology.dataset_typing, dataset.positions, dataset.cell, dataset.species,
                           species_names, bond_cutoffs, str(dataset_path))
        say(f"molecular topology: {int(typing.molecules.max()) + 1} molecules, intact in all {dataset.n_frames} "
            f"frames; bond cutoffs " + ", ".join(f"{n} {c:.2f} Å" for n, c in bond_cutoffs.items()))
        if manybody:
            say("many-body terms are fitted for the atomic topology only: the molecular model is pairwise")
            manybody = False

    enter("force matching")
    matched = clock.run("force_matching", force_matching.fit_tabulated, *arrays, train_frames=train,
                        cutoff_angstrom=cutoff, typing=typing)
    tabulated = matched.model
    say(f"force matching: rc {cutoff:.3f} Å, sampled r_min "
        + ", ".join(f"{n} {r:.3f} Å" for n, r in zip(tabulated.pair_types, tabulated.r_min_angstrom)))

    enter("quadratic baseline")
    quadratic = clock.run("quadratic_baseline", baseline.fit_quadratic_baseline, *arrays,
                          train_frames=train[::BASELINE_STRIDE], cutoff_angstrom=cutoff)

    enter("symbolic search")
    front, engine_used, engine_reason = clock.run(
        "symbolic_search", engines.search_tabulated, tabulated, matched.histogram, engine, seed=seed,
        budget_s=search_budget_s, log=say)

    enter("refit and select")
    provenance = {
        "dataset": str(dataset_path), "dataset_metadata": dataset.metadata, "engine": engine_used,
        "engine_reason": engine_reason, "seed": seed, "mld_version": __version__,
        "train_frames": [int(train[0]), int(train[-1])], "validation_frames": [int(valid[0]), int(valid[-1])],
    }
    # trial constants of the nonlinear refit may overflow; such candidates are rejected, not reported
    with np.errstate(all="ignore"):
        fit = clock.run("refit_select", refit.fit_closed_form, front, tabulated, *arrays, train, valid,
                        tolerance=tolerance, provenance=provenance, n_refit_frames=frames["refit_frames"],
                        n_validation_frames=frames["refit_validation_frames"],
                        log=lambda line: None if line.startswith("  ") else say(line), typing=typing,
                        bond_cutoff_angstrom=bond_cutoffs)
    closed = fit.model

    models = {"pairwise": closed, "tabulated": Model.from_tabulated(tabulated, provenance=provenance,
                                                                    bond_cutoff_angstrom=bond_cutoffs)}
    rows = {}
    if manybody:
        from discover import threebody

        enter("many-body")
        # trial constants of the nonlinear refit may overflow; such candidates are rejected, not reported
        with np.errstate(all="ignore"):
            tab_mb, closed_mb, rows_mb = clock.run("manybody", threebody.discover_manybody, dataset, train, valid,
                                                   closed, r3=threebody_cutoff_angstrom,
                                                   fit_frames=frames["manybody_fit_frames"],
                                                   refit_frames=frames["manybody_refit_frames"],
                                                   screen_steps=frames["manybody_screen_steps"], log=say)
        models.update(manybody=closed_mb, manybody_tabulated=tab_mb)
        rows.update(rows_mb)

    enter("evaluate")
    reference = dataset.forces[valid]
    rows["tabulated"] = model_row(metrics.force_errors(validation_forces(dataset, valid, models["tabulated"]),
                                                       reference, dataset.species), tabulated.n_parameters)
    rows["closed_form"] = model_row(
        metrics.force_errors(validation_forces(dataset, valid, closed), reference, dataset.species),
        sum(len(symbolic.parameterize(closed.law(n).expression)[2]) for n in closed.pair_types),
        {n: symbolic.complexity(closed.law(n).expression) for n in closed.pair_types})
    rows["quadratic_baseline"] = model_row(
        metrics.force_errors(baseline.predict_forces(quadratic, dataset.positions, dataset.cell, dataset.species,
                                                     frames=valid), reference, dataset.species),
        baseline.parameter_count(quadratic))
    # The many-body closed form becomes the default once it beats the pairwise one on validation forces.
    default = ("manybody" if manybody and rows["manybody_closed_form"]["all"]["relative"]
               < rows["closed_form"]["all"]["relative"] else "pairwise")
    say(f"default model: {default}")
    clock.seconds["evaluate"] = round(time.perf_counter() - started - sum(clock.seconds.values()), 3)

    enter("write")
    _write_outputs(out_dir, models, default, fit, matched)
    save_baseline(quadratic, out_dir / "baseline.npz")
    result = {
        "schema": "mld.discover.metrics", "schema_version": 1,
        "dataset": str(dataset_path), "engine": engine_used, "engine_reason": engine_reason, "seed": seed,
        "cutoff_angstrom": cutoff, "validation_fraction": validation_fraction,
        "n_train_frames": len(train), "n_validation_frames": len(valid),
        "sampled_r_min_angstrom": dict(zip(tabulated.pair_types, map(float, tabulated.r_min_angstrom))),
        "default_model": default,
        "budget": budget,
        "topology": "molecular" if molecular else "atomic",
        **({"bond_cutoff_angstrom": bond_cutoffs} if molecular else {}),
        "model_folders": {name: name for name in models},
        "models": rows,
        "closed_form_expressions": {n: symbolic.to_text(closed.law(n).expression) for n in closed.pair_types},
        "wall_time_s": {**clock.seconds, "total": round(time.perf_counter() - started, 3)},
    }
    if manybody:
        result["threebody_cutoff_angstrom"] = models["manybody"].threebody.cutoff_angstrom
    write_text_atomic(out_dir / "metrics.json", json.dumps(result, indent=2, default=json_default) + "\n")
    return result


def json_default(value):
    """``json.dumps`` fallback for numpy scalars and arrays and paths; anything else is an error."""
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _write_model(model: Model, folder: Path) -> None:
    model.save(folder / "model.json")
    codegen.write_kernels(model, folder / "kernels.py")
    write_text_atomic(folder / "equations.md", symbolic.equations_markdown(model))


def _write_outputs(out_dir: Path, models: dict, default: str, fit, matched) -> None:
    """Each model in its own folder; the default one also at the top of ``out_dir``."""
    for name, model in models.items():
        _write_model(model, out_dir / name)
    _write_model(models[default], out_dir)
    write_text_atomic(out_dir / "pareto.csv", fit.candidates.to_csv(index=False))
    closed, tab_model = models["pairwise"], models["tabulated"]
    figures = out_dir / "figures"
    panels = {}
    for t, name in enumerate(closed.pair_types):
        r_min = float(matched.model.r_min_angstrom[t])
        r_end = matched.model.r_end(t)  # the cutoff, or r_max of a bonded law (a little of its outer wall shown)
        bonded = matched.model.bonded[t]
        r = np.linspace(max(0.6, r_min - 0.4), r_end + 0.15 if bonded else r_end, 600)
        series = {"tabulated": tab_model.energy(t, r), "closed form": closed.energy(t, r)}
        if "manybody" in models:
            series["many-body closed form (pair part)"] = models["manybody"].energy(t, r)
        if bonded:  # a bonded law's energy is defined up to a constant: all zero at r_max
            series = {k: u - float(np.interp(r_end, r, u)) for k, u in series.items()}
        panels[name] = (r, series, (r_min, r_end))
    plots.pair_laws(panels, figures / "pair_laws.png")
    fronts = {}
    table = fit.candidates
    for name in closed.pair_types:
        rows = table[(table["pair_type"] == name) & (table["status"] == "ok")]
        fronts[name] = rows.assign(error=rows["validation_relative_all"])
    plots.pareto_fronts(fronts, figures / "pareto.png")


def evaluate_model(model_path: str | Path, dataset_path: str | Path, frames=None) -> dict:
    """Force errors of a saved model (model.json) on every frame of any dataset."""
    model = Model.load(model_path)
    dataset = Dataset.load(dataset_path)
    missing = sorted(set(dataset.species) - set(model.species))
    if missing:
        raise MldError(f"{dataset_path}: species {', '.join(missing)} are not in the model {model_path}")
    try:
        force_matching.check_cutoff(model.cutoff_angstrom, dataset.cell)
    except force_matching.ForceMatchingError as exc:
        raise MldError(f"{dataset_path}: the model's {exc}") from None
    frames = np.arange(dataset.n_frames) if frames is None else np.asarray(frames)
    predicted = validation_forces(dataset, frames, model, str(dataset_path))
    errors = metrics.force_errors(predicted, dataset.forces[frames], dataset.species)
    return {"model": str(model_path), "dataset": str(dataset_path), "n_frames": len(frames),
            "force_errors": {g: {k: float(v) for k, v in f.items()} for g, f in errors.items()}}


def save_baseline(model: baseline.QuadraticBaseline, path: Path) -> Path:
    """The quadratic baseline as plain arrays (loaded without pickle)."""
    from simulate.fileio import atomic_path

    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, species=np.array(model.species), cutoff_angstrom=model.cutoff_angstrom,
                 centres_angstrom=model.centres_angstrom, width_angstrom=model.width_angstrom,
                 linear=model.linear, quadratic=model.quadratic)
    return path


def load_baseline(path: Path) -> baseline.QuadraticBaseline:
    try:
        with np.load(path, allow_pickle=False) as data:
            return baseline.QuadraticBaseline(
                species=tuple(str(s) for s in data["species"]), cutoff_angstrom=float(data["cutoff_angstrom"]),
                centres_angstrom=data["centres_angstrom"], width_angstrom=float(data["width_angstrom"]),
                linear=data["linear"], quadratic=data["quadratic"])
    except (OSError, KeyError, ValueError) as exc:
        raise MldError(f"{path}: not a saved quadratic baseline ({exc})") from None


# --- running a model ------------------------------------------------------------------------------


def kernel_module_for(model_path: str | Path, work_dir: str | Path):
    """The kernel module of a model: a folder's ``kernels.py``, a ``kernels.py`` itself, or one generated
    from a ``model.json`` into ``work_dir`` (the model file is parsed safely, never executed)."""
    from simulate.kernels import load_kernel_module

    model_path = Path(model_path)
    if model_path.is_dir():
        if (model_path / "kernels.py").is_file():
            return load_kernel_module(model_path / "kernels.py")
        model_path = model_path / "model.json"
    if model_path.suffix == ".py":
        return load_kernel_module(model_path)
    if not model_path.is_file():
        raise MldError(f"{model_path}: no such model (give a model folder, model.json or kernels.py)")
    return load_kernel_module(codegen.write_kernels(Model.load(model_path), Path(work_dir) / "kernels.py"))


def initial_frame(spec: str):
    """``DATASET.npz[:FRAME]`` or an XYZ file → (species, positions Å, box lengths Å, velocities Å/fs or None)."""
    from simulate.space import box_lengths
    from simulate.trajectory import read_xyz_frame

    path, _, index = spec.partition(":") if spec.count(":") == 1 and not Path(spec).exists() else (spec, "", "")
    if path.endswith(".npz"):
        dataset = Dataset.load(path)
        try:
            frame = int(index) if index else 0
            positions = dataset.positions[frame]
        except (ValueError, IndexError):
            raise MldError(f"{spec}: frame {index!r} is not one of the {dataset.n_frames} frames") from None
        return dataset.species, positions, box_lengths(dataset.cell[frame]), dataset.velocities[frame]
    species, positions, box, velocities = read_xyz_frame(path)
    if box is None:
        raise MldError(f"{path}: the structure has no periodic cell (Lattice=)")
    return species, positions, box, velocities
