"""Speed of the MD engine: steps/s and µs per atom-step from 96 to >100,000 atoms.

The 32-water CP2K box is replicated a×a×a times and run with the hand-written ``morse_water``
kernel (pair cutoff 4.5 Å, skin 1 Å), NVE velocity Verlet at 0.5 fs, all in one process. Each size
runs a few warm-up steps (compilation, first list) and then ``--steps`` timed steps. Reported per
size: atoms, threads, steps/s, µs per atom-step, share of time in forces, neighbour-list builds,
ns/day and the process's peak resident memory so far. Linear scaling shows as a flat µs/atom-step.

    .venv/bin/python benchmarks/bench_simulate.py                 # full table, writes results/
    .venv/bin/python benchmarks/bench_simulate.py --max-atoms 3000 --steps 20 --no-write

LAMMPS side by side: :func:`lammps_rows` is the hook. Once ``discover.export`` can write the
kernel as a LAMMPS ``pair_style table``, it should run the same replicated boxes there (same
cutoff, skin, timestep, NVE, same thread count) and return rows with the same keys; the table
then gets a ``lammps_us_per_atom_step`` column next to ours.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from pathlib import Path

import numba
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from simulate import energy, integrate, md, setup
from simulate.fileio import write_text_atomic
from simulate.kernels import load_kernel_module
from tests.kernel_examples.starting_frames import water32_frame

REPLICAS = (1, 2, 3, 5, 8, 11)  # 96 … 127,776 atoms
DT_FS = 0.5


def peak_rss_mib() -> float:
    # ru_maxrss is KiB on Linux; Numba's allocations bypass tracemalloc, so RSS is the honest figure
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def bench_one(kernel, replicas: int, steps: int, warmup: int = 3) -> dict:
    species, positions, box, velocities = water32_frame()
    repeats = (replicas,) * 3
    positions, species, box = setup.replicate(positions, species, box, repeats)
    velocities = setup.tile_per_atom(velocities, repeats)
    types = md.atom_types(kernel, species)
    masses = np.array(kernel.MASSES_AMU)[types]
    force_fn = energy.make_force_fn(kernel, types, box, skin_angstrom=1.0)
    force_seconds = [0.0]

    def timed_force_fn(x, neighbors):
        start = time.perf_counter()
        out = force_fn(x, neighbors)
        force_seconds[0] += time.perf_counter() - start
        return out

    nve = integrate.nve(timed_force_fn, DT_FS)
    state = nve.init(positions, velocities, masses)
    for _ in range(warmup):
        state = nve.step(state)
    force_seconds[0] = 0.0
    builds = 0
    start = time.perf_counter()
    for _ in range(steps):
        new = nve.step(state)
        builds += new.neighbors is not state.neighbors
        state = new
    seconds = time.perf_counter() - start
    n = len(species)
    return {
        "atoms": n,
        "threads": numba.get_num_threads(),
        "parallel": n >= md.partition.PARALLEL_MIN_ATOMS,
        "steps": steps,
        "steps_per_s": steps / seconds,
        "us_per_atom_step": seconds / (steps * n) * 1e6,
        "force_share": force_seconds[0] / seconds,
        "neighbor_builds": builds,
        "mean_neighbors": float(state.neighbors.counts.mean()),
        "ns_per_day": md.ns_per_day(steps, DT_FS, seconds),
        "peak_rss_mib": peak_rss_mib(),
    }


def lammps_rows(replicas: list[int], steps: int) -> list[dict]:
    """Hook for the LAMMPS side-by-side run (see the module docstring); empty until the table export exists."""
    return []


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [
        "# MD engine speed (`benchmarks/bench_simulate.py`)",
        "",
        (f"Machine: {meta['machine']}; Numba {meta['numba']}, {meta['threads']} threads. Kernel: "
         "`morse_water` (cutoff 4.5 Å, skin 1 Å), NVE velocity Verlet, dt 0.5 fs, replicated CP2K water box."),
        "",
        "| atoms | threads | steps/s | µs/atom-step | force share | list builds | neighbours/atom | ns/day | peak RSS MiB |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['atoms']} | {r['threads'] if r['parallel'] else 1} | {r['steps_per_s']:.1f} | "
            f"{r['us_per_atom_step']:.3f} | {r['force_share']:.0%} | {r['neighbor_builds']} | "
            f"{r['mean_neighbors']:.0f} | {r['ns_per_day']:.2f} | {r['peak_rss_mib']:.0f} |"
        )
    big = [r for r in rows if r["atoms"] >= 2000]
    if len(big) >= 2:
        ratio = big[-1]["us_per_atom_step"] / big[0]["us_per_atom_step"]
        lines += ["", (f"Linear scaling: µs/atom-step at {big[-1]['atoms']} atoms is {ratio:.2f}× that at "
                       f"{big[0]['atoms']} atoms (1.00 = perfectly linear).")]
    lines += ["", "LAMMPS side by side: not yet run (hook `lammps_rows`)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50, help="timed steps per size")
    parser.add_argument("--max-atoms", type=int, default=200_000)
    parser.add_argument("--no-write", action="store_true", help="print only; leave benchmarks/results alone")
    args = parser.parse_args()
    kernel = load_kernel_module(ROOT / "tests" / "kernel_examples" / "morse_water.py")
    rows = []
    for replicas in REPLICAS:
        if 96 * replicas**3 > args.max_atoms:
            break
        rows.append(bench_one(kernel, replicas, args.steps))
        print(json.dumps(rows[-1]), flush=True)
    meta = {"machine": f"{platform.processor() or platform.machine()}, {numba.config.NUMBA_NUM_THREADS} cores "
            "visible to Numba", "numba": numba.__version__, "threads": numba.get_num_threads()}
    text = markdown(rows, meta)
    print(text)
    if not args.no_write:
        out = ROOT / "benchmarks" / "results"
        write_text_atomic(out / "simulate.json", json.dumps({"meta": meta, "rows": rows,
                                                             "lammps": lammps_rows(list(REPLICAS), args.steps)},
                                                            indent=2))
        write_text_atomic(out / "simulate.md", text)


if __name__ == "__main__":
    main()
