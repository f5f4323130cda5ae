"""Time of one forces-only force pass of the 96-atom water box, one thread, timed inside compiled code.

The pass the MD blocks call between outputs (``energy.force_loops(...).half_forces_only[0]``: serial,
no energies; at 96 atoms in a run planned long enough to compile it, see
``simulate.integrate.uses_forces_only``), on the tabulated kernels ``mld simulate`` runs: the Morse test
water and, where they exist, the learned pairwise and default (many-body) models (see
``bench_simulate.py``). For work on the pass itself, where ``bench_simulate.py`` times whole MD steps of
many sizes:

* The passes are called from a compiled loop, so a call costs no Python dispatch (~4 µs a call from
  Python at 96 atoms, as much as a fifth of the pass).
* Each call takes the next of ``--frames`` frames of ``data/water32_300K.npz``, so the pass meets new
  distances every call, as in a run. On one frame called again and again (``--frames 1``) the CPU's
  branch predictors learn the pass's branches: the tabulated many-body pass then took 3–4 µs less.

A 96-atom box lists every pair (see ``simulate.partition.lists_every_pair``), so one list serves every
frame. Prints the best and the median of ``--repeats`` timings of ``--calls`` passes each, in µs per pass.
Machines are noisy: compare two versions of the code by alternating runs of this script.

    .venv/bin/python benchmarks/bench_force_pass.py
    .venv/bin/python benchmarks/bench_force_pass.py --frames 1 --repeats 9
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numba
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_simulate import LEARNED, LEARNED_PAIRWISE, MORSE_WATER, SKIN_ANGSTROM  # the same models and skin

from simulate import energy, md, partition, tabulate
from simulate.kernels import load_kernel_module
from tests.kernel_examples.starting_frames import DATASET

MODELS = {
    "morse_water_tabulated": MORSE_WATER,
    "learned_pairwise_tabulated": LEARNED_PAIRWISE,
    "learned_manybody_tabulated": LEARNED,
}


def _compiled_repeat(pass_fn):
    @numba.njit
    def repeat(calls, frames, types, box, neighbors, counts, order, layer_start, image, wrap, cutoff, cutoff3, work):
        """The longest short three-body row met (beyond the workspace's width, a pass skips its three-body terms)."""
        needed3 = 0
        for q in range(calls):
            out = pass_fn(frames[q % frames.shape[0]], types, box, neighbors, counts, order, layer_start, image, wrap,
                          cutoff, cutoff3, work)
            needed3 = max(needed3, out[6])
        return needed3

    return repeat


def prepare_pass(kernel_path: Path, n_frames: int) -> tuple:
    """(``repeat``, its arguments but the call count): the compiled loop of forces-only passes of the tabulated
    ``kernel_path`` over the first ``n_frames`` frames, compiled and warmed on every frame."""
    kernel = tabulate.tabulate_kernel_module(load_kernel_module(kernel_path))
    data = np.load(DATASET)
    if not 1 <= n_frames <= data["positions"].shape[0]:
        raise SystemExit(f"--frames: {n_frames}, but {DATASET} holds 1 to {data['positions'].shape[0]} frames")
    frames = np.ascontiguousarray(data["positions"][:n_frames], dtype=np.float64)
    box = np.ascontiguousarray(np.diag(data["cell"][0]), dtype=np.float64)
    types = md.atom_types(kernel, [str(s) for s in data["species"]])
    loops = energy.force_loops(kernel)
    nl = partition.neighbor_list(frames[0], box, energy.interaction_cutoff_angstrom(kernel), SKIN_ANGSTROM, half=True)
    if nl.neighbors.shape[1] != 0:
        raise SystemExit(f"{DATASET}: the box does not list every pair; its frames would need lists of their own")
    repeat = _compiled_repeat(loops.half_forces_only[0])
    work = energy.workspace(loops, frames.shape[1], box)
    arguments = (frames, types, box, nl.neighbors, nl.counts, nl.order, nl.layer_start, nl.image, nl.wrap_angstrom,
                 loops.cutoff_angstrom, loops.threebody_cutoff_angstrom, work)
    needed3 = repeat(frames.shape[0], *arguments)  # compile, and warm every frame
    if needed3 > work[6].shape[1]:
        # short rows wide enough for every frame, as a run widens them, so that every pass does its three-body part
        work = energy.workspace(loops, frames.shape[1], box, capacity3=needed3)
        arguments = arguments[:-1] + (work,)
        repeat(frames.shape[0], *arguments)
    return repeat, arguments


def time_pass(kernel_path: Path, n_frames: int, calls: int, repeats: int) -> list[float]:
    """µs per forces-only pass of each of ``repeats`` timings of ``calls`` passes."""
    repeat, arguments = prepare_pass(kernel_path, n_frames)
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        repeat(calls, *arguments)
        timings.append((time.perf_counter() - start) / calls * 1e6)
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=200, help="frames the calls go through in turn")
    parser.add_argument("--calls", type=int, default=2000, help="passes per timing")
    parser.add_argument("--repeats", type=int, default=5, help="timings per model")
    parser.add_argument("--only", default="", help=f"comma-separated models, of {', '.join(MODELS)}")
    args = parser.parse_args()
    numba.set_num_threads(1)
    names = [name for name in args.only.split(",") if name] or list(MODELS)
    for name in names:
        if name not in MODELS:
            raise SystemExit(f"--only: no model {name!r}; the models are {', '.join(MODELS)}")
        if not MODELS[name].is_file():
            print(f"{name}: skipped, {MODELS[name].relative_to(ROOT)} not found (mld run writes it)")
            continue
        timings = time_pass(MODELS[name], args.frames, args.calls, args.repeats)
        print(f"{name}: forces-only pass, 96 atoms, 1 thread, {args.frames} frame(s): best {min(timings):.2f} µs, "
              f"median {float(np.median(timings)):.2f} µs")


if __name__ == "__main__":
    main()
