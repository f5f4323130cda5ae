"""The ``mld`` command line: wires the pipeline stages together and holds no science.

Each command is a thin function decorated with ``@cli_errors``: a user mistake (an
``MldError``, or an OS error such as a missing folder) prints ``error: <one line>`` on
stderr and exits with status 1, without a traceback; warnings print as ``warning: <line>``.
Command groups: ``data`` (import and inspect datasets) and ``cp2k`` (build boxes, write
inputs, run CP2K).
"""

from __future__ import annotations

import functools
import sys
import warnings
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from simulate.errors import MldError
from simulate.units import ATOMIC_MASSES_AMU

app = typer.Typer(
    name="mld",
    help="Molecular Learning Dynamics: learn closed-form agent losses of water from CP2K forces, and run them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
data_app = typer.Typer(help="Import CP2K runs or extended XYZ files into datasets, and inspect datasets.",
                       no_args_is_help=True)
cp2k_app = typer.Typer(help="Build water boxes, write CP2K inputs, and run CP2K.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(cp2k_app, name="cp2k")

console = Console()
status_console = Console(stderr=True)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def cli_errors(command):
    """Decorator for CLI commands: user errors become one 'error: ...' line on stderr and exit code 1."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        def show_warning(message, category, filename, lineno, file=None, line=None):
            print(f"warning: {_one_line(message)}", file=sys.stderr)

        with warnings.catch_warnings():
            warnings.simplefilter("default")
            warnings.showwarning = show_warning
            try:
                return command(*args, **kwargs)
            except (MldError, OSError) as exc:
                print(f"error: {_one_line(exc) or type(exc).__name__}", file=sys.stderr)
                raise typer.Exit(1) from None
            except KeyboardInterrupt:
                print("error: interrupted", file=sys.stderr)
                raise typer.Exit(130) from None

    return wrapper


def parse_species(text: str) -> tuple[str, ...]:
    """'O,H' -> ('O', 'H'); every element must have a known mass."""
    species = tuple(s.strip() for s in text.split(",") if s.strip())
    if not species:
        raise MldError(f"--species {text!r}: give element symbols separated by commas, e.g. O,H")
    unknown = [s for s in species if s not in ATOMIC_MASSES_AMU]
    if unknown:
        raise MldError(f"--species: no mass known for element {unknown[0]!r} (known: {', '.join(ATOMIC_MASSES_AMU)})")
    return species


# ---------------------------------------------------------------------------------------
# mld data
# ---------------------------------------------------------------------------------------


def import_source(source: Path, allow_truncated: bool, species: tuple[str, ...], timestep_fs: float | None,
                  project: str | None = None):
    """A CP2K run folder or an extended XYZ file, read into a Dataset with a status line on stderr."""
    from discover.cp2k import import_cp2k_run
    from discover.extxyz import import_extxyz

    with status_console.status(f"importing {source}") as status:
        if source.is_dir():
            return import_cp2k_run(source, allow_truncated=allow_truncated, species=species, project=project,
                                   progress=lambda message: status.update(f"importing {source}: {message}"))
        if source.suffix.lower() in (".xyz", ".extxyz"):
            return import_extxyz(source, species=species, timestep_fs=timestep_fs)
        if not source.exists():
            raise MldError(f"{source}: no such CP2K run folder or XYZ file")
        raise MldError(f"{source}: neither a CP2K run folder nor an .xyz/.extxyz file")


def _summary(dataset) -> str:
    counts = ", ".join(f"{n} {s}" for s, n in sorted(dataset.species_counts().items(), key=lambda kv: kv[0] != "O"))
    return (f"{dataset.n_frames} frames, {dataset.n_atoms} atoms ({counts}),"
            f" {dataset.time[0]:g}–{dataset.time[-1]:g} fs")


@data_app.command("import")
@cli_errors
def data_import(
    source: Annotated[Path, typer.Argument(help="CP2K run folder (PROJECT-pos/frc/vel-1.xyz, ener, .inp), "
                                                 "or an extended XYZ file with forces (.xyz/.extxyz).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Dataset file to write, e.g. data/NAME.npz.")],
    allow_truncated: Annotated[bool, typer.Option(
        "--allow-truncated", help="Drop a truncated last frame (killed run) with a warning instead of refusing.")] = False,
    species: Annotated[str, typer.Option(help="Allowed elements, comma-separated.")] = "O,H",
    timestep: Annotated[float | None, typer.Option(
        help="fs between frames, for XYZ files whose frames carry no time=.")] = None,
    project: Annotated[str | None, typer.Option(help="CP2K project name, when the folder holds several.")] = None,
):
    """Import a CP2K MD run (or an extended XYZ trajectory) into an mld dataset (.npz)."""
    dataset = import_source(source, allow_truncated, parse_species(species), timestep, project)
    dataset.save(out)
    print(f"wrote {out}: {_summary(dataset)}")


@data_app.command("info")
@cli_errors
def data_info(dataset_path: Annotated[Path, typer.Argument(metavar="DATASET", help="An mld dataset (.npz).")]):
    """Show a dataset: frames, atoms per species, cell, time span, temperature and provenance."""
    from discover.dataset import Dataset
    from simulate.space import is_orthorhombic

    dataset = Dataset.load(dataset_path)
    meta = dataset.metadata
    temperature = dataset.temperature_k()
    cell = dataset.cell[0]
    if is_orthorhombic(cell):
        cell_text = " × ".join(f"{x:.6g}" for x in np.diag(cell)) + " Å"
    else:
        cell_text = "rows " + "; ".join(" ".join(f"{x:.4g}" for x in row) for row in cell) + " Å"
    if not np.allclose(dataset.cell, cell):
        cell_text += " (first frame; varies)"
    steps = np.diff(dataset.time)
    table = Table(title=str(dataset_path), show_header=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("frames", str(dataset.n_frames))
    counts = dataset.species_counts()
    table.add_row("atoms", f"{dataset.n_atoms} (" + ", ".join(f"{counts[s]} {s}" for s in sorted(
        counts, key=lambda s: s != "O")) + ")")
    table.add_row("cell", cell_text)
    table.add_row("time", f"{dataset.time[0]:g} to {dataset.time[-1]:g} fs"
                  + (f", step {np.median(steps):g} fs" if steps.size else ""))
    table.add_row("temperature", f"{temperature.mean():.1f} ± {temperature.std():.1f} K (velocities, 3N−3 dof)")
    table.add_row("potential energy", f"{dataset.energy.mean():.4f} ± {dataset.energy.std():.4f} eV")
    source = " ".join(str(meta.get(k)) for k in ("program", "version", "method") if meta.get(k))
    if source:
        table.add_row("source", source)
    if meta.get("thermostat"):
        target = f" at {meta['temperature_k']:g} K" if meta.get("temperature_k") else ""
        table.add_row("thermostat", f"{meta.get('ensemble') or ''} {meta['thermostat']}{target}".strip())
    if meta.get("cp2k_seconds_per_step"):
        cost = meta["cp2k_seconds_per_step"]
        table.add_row("CP2K cost", f"{cost['median']:.3g} s/step median, {cost['mean']:.3g} mean")
    if meta.get("sources"):
        table.add_row("files", ", ".join(s["file"] for s in meta["sources"]))
    if meta.get("importer_version"):
        table.add_row("imported by", f"mld {meta['importer_version']}")
    console.print(table)


# ---------------------------------------------------------------------------------------
# mld cp2k
# ---------------------------------------------------------------------------------------

Method = Annotated[str, typer.Option(help="xtb (GFN1-xTB) or pbe-d3 (PBE-D3, DZVP-MOLOPT-SR-GTH).")]
Thermostat = Annotated[str, typer.Option(help="csvr, nose, or none (NVE).")]
Temperature = Annotated[float, typer.Option(help="Target (and initial) temperature, K.")]
Timestep = Annotated[float, typer.Option(help="MD timestep, fs.")]
Steps = Annotated[int, typer.Option(help="Number of MD steps.")]
Seed = Annotated[int, typer.Option(help="Random seed (CP2K's initial velocities).")]


@cp2k_app.command("water-box")
@cli_errors
def cp2k_water_box(
    out: Annotated[Path, typer.Option("--out", "-o", help="Extended XYZ file to write (cell in Lattice=).")],
    molecules: Annotated[int, typer.Option(help="Number of H2O molecules.")] = 32,
    density: Annotated[float, typer.Option(help="Density, g/cm³.")] = 0.997,
    seed: Annotated[int, typer.Option(help="Random seed for positions and orientations.")] = 0,
):
    """Build a periodic cubic box of randomly placed and oriented rigid water molecules."""
    from discover.cp2k import write_water_box

    _, _, cell = write_water_box(out, molecules, density, seed)
    print(f"wrote {out}: {molecules} H2O in a {cell[0, 0]:.4f} Å cubic box")


def _write_input(box: Path, out: Path, method: str, thermostat: str, temperature: float, timestep: float,
                 steps: int, seed: int) -> Path:
    from discover.cp2k import read_xyz_frame, write_cp2k_input

    species, positions, cell = read_xyz_frame(box)
    return write_cp2k_input(out, species, positions, cell, method=method, thermostat=thermostat,
                            temperature_k=temperature, timestep_fs=timestep, steps=steps, seed=seed,
                            project=out.stem)


@cp2k_app.command("input")
@cli_errors
def cp2k_input(
    box: Annotated[Path, typer.Argument(help="Structure as extended XYZ with Lattice= (e.g. from water-box).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="CP2K input file to write; its stem is the project.")],
    method: Method = "xtb",
    thermostat: Thermostat = "csvr",
    temperature: Temperature = 300.0,
    timestep: Timestep = 0.5,
    steps: Steps = 1000,
    seed: Seed = 1,
):
    """Write a CP2K MD input for a structure, printing positions, forces and velocities every step."""
    _write_input(box, out, method, thermostat, temperature, timestep, steps, seed)
    print(f"wrote {out}: {method} {'NVE' if thermostat == 'none' else 'NVT ' + thermostat}, {steps} steps of"
          f" {timestep:g} fs at {temperature:g} K")


@cp2k_app.command("run")
@cli_errors
def cp2k_run(
    source: Annotated[Path, typer.Argument(help="A CP2K input (.inp), or a structure (.xyz) to write one for.")],
    workdir: Annotated[Path, typer.Option(help="Folder for the CP2K run (must not hold an earlier run).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Dataset file to write, e.g. data/NAME.npz.")],
    method: Method = "xtb",
    thermostat: Thermostat = "csvr",
    temperature: Temperature = 300.0,
    timestep: Timestep = 0.5,
    steps: Steps = 1000,
    seed: Seed = 1,
    threads: Annotated[int | None, typer.Option(help="OpenMP threads for CP2K (default: all cores).")] = None,
    species: Annotated[str, typer.Option(help="Allowed elements, comma-separated.")] = "O,H",
):
    """Run CP2K (cp2k.psmp or cp2k on PATH), then import the run as a dataset."""
    from discover.cp2k import find_cp2k_binary, input_project, run_cp2k

    allowed = parse_species(species)
    find_cp2k_binary()
    if source.suffix.lower() == ".inp":
        input_path = source
    elif source.suffix.lower() in (".xyz", ".extxyz"):
        if (workdir / "md.inp").exists():
            raise MldError(f"{workdir / 'md.inp'}: already exists; use an empty --workdir")
        input_path = _write_input(source, workdir / "md.inp", method, thermostat, temperature, timestep, steps, seed)
    else:
        raise MldError(f"{source}: give a CP2K input (.inp) or a structure (.xyz)")
    with status_console.status(f"running CP2K in {workdir}") as status:
        run_cp2k(input_path, workdir, threads=threads,
                 progress=lambda message: status.update(f"running CP2K in {workdir}: {message}"))
    dataset = import_source(workdir, False, allowed, None, project=input_project(input_path))
    dataset.save(out)
    print(f"wrote {out}: {_summary(dataset)}")


# ---------------------------------------------------------------------------------------
# mld discover / evaluate
# ---------------------------------------------------------------------------------------

DEFAULT_DATASET = Path("data/water32_300K.npz")
Engine = Annotated[str, typer.Option(help="Symbolic-regression engine: auto (PySR where Julia is found, else "
                                          "Operon), operon, pysr, or library (classic families only); a library "
                                          "of classic families always runs beside the engine.")]
Cutoff = Annotated[float | None, typer.Option("--cutoff", help="Pair cutoff rc in Å (default: the largest the cell "
                                                                "allows, less a margin).")]
ThreebodyCutoff = Annotated[float, typer.Option(help="Three-body cutoff r_3 in Å; 0 chooses it by validation "
                                                    "among 2.8, 3.2 and 3.6 Å.")]
Budget = Annotated[str, typer.Option(help="full, or quick (fewer frames in the nonlinear fits: a smoke test).")]
Manybody = Annotated[bool, typer.Option(help="Also learn many-body (three-body) agent losses.")]
SearchBudget = Annotated[float, typer.Option(help="Seconds of symbolic search per pair type.")]
Topology = Annotated[str, typer.Option(help="atomic (one law per species pair: molecules emerge), or molecular "
                                            "(intra- and intermolecular laws on molecules assigned on the first "
                                            "frame; a dissociation is an error; pairwise only).")]


def _molecular(topology: str) -> bool:
    if topology not in ("atomic", "molecular"):
        raise MldError(f"--topology {topology!r}: choose atomic or molecular")
    return topology == "molecular"


def stage_progress():
    """A rich progress display with one line per pipeline stage; returns (progress, enter(stage), log(line))."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                        console=status_console, transient=False)
    tasks = {}

    def enter(name: str):
        for task in tasks.values():
            progress.update(task, completed=1, total=1)
        tasks[name] = progress.add_task(name, total=None)

    def log(line: str):
        progress.console.print(f"  {line}", highlight=False)

    return progress, enter, log


@app.command("discover")
@cli_errors
def discover_command(
    dataset: Annotated[Path, typer.Argument(help="An mld dataset (.npz).")] = DEFAULT_DATASET,
    out: Annotated[Path, typer.Option("--out", "-o", help="Model folder to write.")] = Path("models/default"),
    engine: Engine = "auto",
    cutoff: Cutoff = None,
    seed: Annotated[int, typer.Option(help="Seed of the symbolic search (repeatable on one machine).")] = 0,
    search_budget: SearchBudget = 60.0,
    validation_fraction: Annotated[float, typer.Option(help="Last fraction of frames held out for validation.")] = 0.2,
    manybody: Manybody = True,
    threebody_cutoff: ThreebodyCutoff = 3.2,
    budget: Budget = "full",
    topology: Topology = "atomic",
):
    """Learn H_O and H_H from a dataset's forces: tables, closed forms, equations, Numba kernels, metrics."""
    from discover.pipeline import discover_model

    molecular = _molecular(topology)
    progress, enter, log = stage_progress()
    with progress:
        result = discover_model(dataset, out, engine=engine, cutoff_angstrom=cutoff, seed=seed,
                                search_budget_s=search_budget, validation_fraction=validation_fraction,
                                manybody=manybody, threebody_cutoff_angstrom=threebody_cutoff or None, budget=budget,
                                molecular=molecular, log=log, stage=enter)
        enter("done")
    _print_model_table(result)
    print(f"wrote {out}/: model.json, kernels.py, equations.md, pareto.csv, metrics.json"
          f" ({result['wall_time_s']['total']:.0f} s, engine {result['engine']})")


def _print_model_table(result: dict) -> None:
    table = Table(title="validation force error (eV/Å; relative = RMSE / std)")
    for column in ("model", "RMSE O", "RMSE H", "RMSE all", "relative all", "parameters"):
        table.add_column(column)
    for name, row in result["models"].items():
        table.add_row(name, *(f"{row[g]['rmse']:.4f}" for g in ("O", "H", "all")),
                      f"{row['all']['relative']:.4f}", str(row["n_parameters"]))
    console.print(table)


@app.command("evaluate")
@cli_errors
def evaluate_command(
    model: Annotated[Path, typer.Argument(help="A model.json (or a model folder holding one).")],
    dataset: Annotated[Path, typer.Argument(help="An mld dataset (.npz), any size or temperature.")],
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the figures to this JSON file.")] = None,
):
    """Force errors of a saved model on every frame of a dataset."""
    import json

    from discover.pipeline import evaluate_model
    from simulate.fileio import write_text_atomic

    if model.is_dir():
        model = model / "model.json"
    result = evaluate_model(model, dataset)
    for group, figures in result["force_errors"].items():
        print(f"{group:>3}: RMSE {figures['rmse']:.4f} eV/Å, MAE {figures['mae']:.4f} eV/Å,"
              f" relative {figures['relative']:.4f}")
    if json_out is not None:
        write_text_atomic(json_out, json.dumps(result, indent=2) + "\n")
        print(f"wrote {json_out}")


# ---------------------------------------------------------------------------------------
# mld simulate
# ---------------------------------------------------------------------------------------


def md_progress(total_steps: int, dt_fs: float, label: str = "MD"):
    """A rich progress bar that shows ns/day; returns (progress, callback(step, steps, elapsed_s))."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    progress = Progress(TextColumn(label), BarColumn(), TextColumn("{task.completed}/{task.total} steps"),
                        TextColumn("{task.fields[rate]}"), TimeRemainingColumn(), console=status_console)
    task = progress.add_task(label, total=total_steps, rate="")

    def callback(step: int, steps: int, elapsed_s: float):
        from simulate.md import ns_per_day

        rate = f"{ns_per_day(step, dt_fs, elapsed_s):.1f} ns/day" if elapsed_s > 0 else ""
        progress.update(task, completed=step, total=steps, rate=rate)

    return progress, callback


Thermostats = Annotated[str, typer.Option(help="nose-hoover (NVT, chain of 3), langevin (NVT) or nve.")]


@app.command("simulate")
@cli_errors
def simulate_command(
    model: Annotated[Path, typer.Argument(help="A model folder, model.json or kernels.py.")],
    init: Annotated[str, typer.Option(help="Starting frame: DATASET.npz[:FRAME] or FILE.xyz with Lattice=.")] = str(
        DEFAULT_DATASET),
    steps: Annotated[int, typer.Option(help="Number of MD steps.")] = 10000,
    dt: Annotated[float, typer.Option(help="Timestep, fs.")] = 0.5,
    temperature: Annotated[float, typer.Option(help="Target temperature, K (and of new velocities).")] = 300.0,
    thermostat: Thermostats = "nose-hoover",
    replicate: Annotated[str, typer.Option(help="Supercell of the starting frame, e.g. 2x2x2.")] = "1x1x1",
    seed: Annotated[int, typer.Option(help="Seed of the initial velocities and the Langevin noise.")] = 0,
    new_velocities: Annotated[bool, typer.Option(help="Draw Maxwell–Boltzmann velocities instead of the frame's.")] = False,
    thermo_every: Annotated[int, typer.Option(help="Steps between thermo rows.")] = 10,
    trajectory_every: Annotated[int, typer.Option(help="Steps between trajectory frames.")] = 100,
    resume: Annotated[bool, typer.Option(help="Continue from the checkpoint in --out.")] = False,
    tabulate: Annotated[bool | None, typer.Option(
        help="Run the pair laws (and three-body radial factors) from exactly conservative quintic tables "
             "(each law's pair or triplet force within 1e-8 eV/Å of its closed form; 2.3–3.2× faster for the "
             "learned pair laws, see benchmarks/results/simulate.md). The default, falling back to the "
             "closed form, with a note, for a model whose laws cannot be tabulated, and with --resume as the "
             "checkpoint's run did; --no-tabulate runs the closed form itself.")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder.")] = Path("runs/default"),
):
    """Run MD of a learned model: thermo.csv, trajectory.xyz (extended XYZ), checkpoint.npz."""
    from discover.pipeline import initial_frame, kernel_module_for
    from simulate import md, setup

    kernels = kernel_module_for(model, out)
    if tabulate is None and resume and md.checkpoint_written_by(out, kernels):
        tabulate = False  # a run of the closed form (the default before tables) resumes as one
        status_console.print("closed form, as the checkpoint's run", markup=False)
    if tabulate is not False:
        from simulate import tabulate as tables
        from simulate.kernels import KernelModuleError

        try:
            kernels = tables.tabulate_kernel_module(kernels, label=str(model))
            status_console.print(tables.describe(kernels), markup=False)
        except (tables.TabulationError, KernelModuleError) as exc:
            if tabulate:  # asked for by name
                raise
            status_console.print(f"closed form (the laws cannot be tabulated: {exc})", markup=False)
    species, positions, box, velocities = initial_frame(init)
    if new_velocities:
        velocities = None
    repeats = setup.parse_repeats(replicate)
    if repeats != (1, 1, 1):
        positions_new, species, box = setup.replicate(positions, species, box, repeats)
        velocities = None if velocities is None else setup.tile_per_atom(velocities, repeats)
        positions = positions_new
    progress, callback = md_progress(steps, dt)
    with progress:
        result = md.simulate(kernels, species, positions, box, velocities, steps=steps, dt_fs=dt,
                             temperature_k=temperature, thermostat=thermostat, out_dir=out, seed=seed,
                             thermo_every=thermo_every, trajectory_every=trajectory_every, resume=resume,
                             progress=callback)
    print(f"wrote {out}/: {len(species)} atoms, {result.steps} steps, {result.ns_per_day:.1f} ns/day,"
          f" {result.wall_s:.1f} s")


# ---------------------------------------------------------------------------------------
# mld export
# ---------------------------------------------------------------------------------------


@app.command("export")
@cli_errors
def export_command(
    model: Annotated[Path, typer.Argument(help="A model folder, model.json or kernels.py.")],
    to: Annotated[str, typer.Option("--to", help="lammps, openmm, ase or c.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write.")],
    init: Annotated[str, typer.Option(help="Frame for input decks: DATASET.npz[:FRAME].")] = str(DEFAULT_DATASET),
):
    """Hand a learned model to LAMMPS (table and lepton), OpenMM, ASE or C."""
    from discover.export import Frame, export_model

    if model.is_dir():
        model = model / "model.json" if (model / "model.json").is_file() else model / "kernels.py"
    path, _, index = init.partition(":")
    frame = Frame.from_dataset(path, int(index) if index else 0)
    written = export_model(to, model, out, frame=frame)
    print(f"wrote {len(written)} files to {out}/: " + ", ".join(p.name for p in written))


# ---------------------------------------------------------------------------------------
# mld compare / run
# ---------------------------------------------------------------------------------------


def _md_progress_factory(name: str, steps: int, dt_fs: float):
    progress, callback = md_progress(steps, dt_fs, label=f"MD {name}")
    return callback, progress


def _print_compare_summary(metrics: dict, out: Path) -> None:
    from discover.report import LABELS, times, verdicts

    for name, run in metrics["models"].items():
        console.print(f"{LABELS.get(name, name)}:", highlight=False)
        for line in verdicts(run):
            console.print(f"  {line}", highlight=False)
        speed = run["speed"]
        if speed["speedup"]:
            engine = speed["engine_seconds_per_step"]
            cpu = f", {times(speed['speedup_cpu'])} in CPU time" if speed["speedup_cpu"] else ""
            console.print(
                f"  speed at {speed['n_atoms']} atoms: the engine alone, {speed['engine_form'].replace('_', ' ')} on one "
                f"thread, {engine[speed['engine_form']] * 1e6:.0f} µs a step: CP2K's time {times(speed['speedup'])} "
                f"wall to wall{cpu}; this run, with its output and compilation, {times(speed['production_speedup'])}",
                highlight=False)
    print(f"wrote {out}/report.md, metrics.json and figures/")


LengthFactor = Annotated[float, typer.Option(help="Learned NVT run length as a multiple of the CP2K run's.")]
MdSteps = Annotated[int | None, typer.Option("--steps", help="NVT steps of the learned run (overrides "
                                                             "--length-factor).")]
NveSteps = Annotated[int, typer.Option(help="Steps of the NVE segment that measures energy drift.")]


@app.command("compare")
@cli_errors
def compare_command(
    model: Annotated[Path, typer.Argument(help="A model folder (from mld discover).")],
    dataset: Annotated[Path, typer.Argument(help="The CP2K dataset (.npz) to compare with.")] = DEFAULT_DATASET,
    out: Annotated[Path, typer.Option("--out", "-o", help="Report folder.")] = Path("reports/default"),
    length_factor: LengthFactor = 10.0,
    steps: MdSteps = None,
    nve_steps: NveSteps = 2000,
    seed: Annotated[int, typer.Option(help="Seed of the MD run.")] = 0,
):
    """Run the learned model from a CP2K frame and compare it with CP2K: report.md, metrics.json, figures."""
    from discover.report import compare_model

    metrics = compare_model(model, dataset, out, length_factor=length_factor, steps=steps, nve_steps=nve_steps,
                            seed=seed, progress_factory=_md_progress_factory,
                            log=lambda line: status_console.print(f"  {line}", highlight=False))
    _print_compare_summary(metrics, out)


@app.command("run")
@cli_errors
def run_command(
    dataset: Annotated[Path, typer.Option(help="The CP2K dataset (.npz).")] = DEFAULT_DATASET,
    models: Annotated[Path, typer.Option(help="Model folder to write.")] = Path("models/default"),
    out: Annotated[Path, typer.Option("--out", "-o", help="Report folder.")] = Path("reports/default"),
    engine: Engine = "auto",
    cutoff: Cutoff = None,
    seed: Annotated[int, typer.Option(help="Seed of the search and the MD run.")] = 0,
    search_budget: SearchBudget = 60.0,
    manybody: Manybody = True,
    threebody_cutoff: ThreebodyCutoff = 3.2,
    budget: Budget = "full",
    topology: Topology = "atomic",
    length_factor: LengthFactor = 10.0,
    steps: MdSteps = None,
    nve_steps: NveSteps = 2000,
):
    """The main job: discover → simulate → compare on the shipped dataset (or --dataset)."""
    import time

    from discover.pipeline import discover_model
    from discover.report import compare_model

    started = time.perf_counter()
    molecular = _molecular(topology)
    progress, enter, log = stage_progress()
    with progress:
        result = discover_model(dataset, models, engine=engine, cutoff_angstrom=cutoff, seed=seed,
                                search_budget_s=search_budget, manybody=manybody,
                                threebody_cutoff_angstrom=threebody_cutoff or None, budget=budget,
                                molecular=molecular, log=log, stage=enter)
        enter("done")
    _print_model_table(result)
    metrics = compare_model(models, dataset, out, length_factor=length_factor, steps=steps, nve_steps=nve_steps,
                            seed=seed, progress_factory=_md_progress_factory,
                            log=lambda line: status_console.print(f"  {line}", highlight=False))
    _print_compare_summary(metrics, out)
    print(f"mld run finished in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":  # pragma: no cover
    app()
