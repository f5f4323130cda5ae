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


if __name__ == "__main__":  # pragma: no cover
    app()
