"""ASE export: :class:`MldCalculator`, an ``ase.calculators.calculator.Calculator`` over a kernel module.

ASE's units are ours (Å, eV, amu), so energies and forces pass through unchanged. Results:

``energy``, ``free_energy``  total potential energy E (eV)
``forces``                   (N,3) eV/Å
``energies``                 per-atom energies summing to E: ½ H_k for a pairwise model (not offered
                             for a many-body one, whose triplets count in full in their centre's loss)
``agent_loss``               per-atom agent loss H_{A_k}(k) = Σ_j u(r_kj) (+ Σ_{j<l} w for a many-body
                             model) in eV, the quantity mld learns

A many-body model runs through its kernels' ``energy_forces``, three-body terms included; the export
copies a many-body kernel module as it is, or generates the kernels of a many-body model.

A molecular model's molecules are assigned on the first structure calculated (again when the atoms'
numbers change) and kept; a later structure whose molecules differ (a proton moved to another
molecule, a molecule broken) raises, as mld's own simulator stops.

The cell must be periodic and orthorhombic in all three directions (the kernel's minimum image),
or not periodic at all.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from types import ModuleType
from typing import ClassVar

import numpy as np
from ase.calculators.calculator import Calculator, all_changes

from discover.codegen import write_kernels
from discover.export.pairs import ExportError, Frame, pair_source
from simulate.fileio import atomic_path, write_text_atomic
from simulate.kernels import has_threebody, is_molecular, load_kernel_module
from simulate.space import is_orthorhombic, max_minimum_image_cutoff
from simulate.topology import assign_molecules, bond_cutoff_matrix, dissociation


class MldCalculator(Calculator):
    """Energy, forces and per-atom agent losses from an mld kernel module (module or path)."""

    implemented_properties: ClassVar[list[str]] = ["energy", "free_energy", "forces", "energies", "agent_loss"]

    def __init__(self, kernels: ModuleType | str | Path, **kwargs):
        super().__init__(**kwargs)
        self.kernels = kernels if isinstance(kernels, ModuleType) else load_kernel_module(kernels)
        if has_threebody(self.kernels):
            # per-atom energies cannot be split from the loss when three-body terms count in full
            self.implemented_properties = ["energy", "free_energy", "forces", "agent_loss"]
        self._type_of = {name: k for k, name in enumerate(self.kernels.SPECIES)}
        # a molecular model's molecules: assigned on the first structure calculated, then kept
        self.molecules = None

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        symbols = atoms.get_chemical_symbols()
        unknown = sorted(set(symbols) - set(self._type_of))
        if unknown:
            raise ExportError(f"MldCalculator: element(s) {', '.join(unknown)} not in the model's "
                              f"species {self.kernels.SPECIES}")
        types = np.array([self._type_of[s] for s in symbols], dtype=np.int64)
        positions = np.ascontiguousarray(atoms.get_positions(), dtype=float)
        box = self._box(atoms, positions)
        if is_molecular(self.kernels):
            bonds = bond_cutoff_matrix(self.kernels.BOND_CUTOFF_ANGSTROM, len(self.kernels.SPECIES))
            if self.molecules is None or len(self.molecules) != len(types) or "numbers" in system_changes:
                self.molecules = assign_molecules(positions, box, types, bonds)
            else:
                what = dissociation(positions, box, types, self.molecules, bonds, self.kernels.SPECIES)
                if what:
                    raise ExportError(f"MldCalculator: {what}; the molecular model's molecules (assigned on the "
                                      "first structure) no longer hold: use a new calculator for a new system")
            energy, forces, loss = self.kernels.energy_forces(positions, types, box, self.molecules)
        else:
            energy, forces, loss = self.kernels.energy_forces(positions, types, box)
        self.results = {
            "energy": float(energy),
            "free_energy": float(energy),
            "forces": np.asarray(forces),
            "agent_loss": np.asarray(loss),
        }
        if "energies" in self.implemented_properties:
            self.results["energies"] = 0.5 * np.asarray(loss)

    def _box(self, atoms, positions) -> np.ndarray:
        pbc = atoms.get_pbc()
        cutoff = float(self.kernels.CUTOFF_ANGSTROM)
        if pbc.all():
            cell = atoms.get_cell().array
            if not is_orthorhombic(cell):
                raise ExportError("MldCalculator: the cell must be orthorhombic")
            if cutoff > max_minimum_image_cutoff(cell) + 1e-12:
                raise ExportError(f"MldCalculator: cutoff {cutoff} Å exceeds half the cell "
                                  f"({max_minimum_image_cutoff(cell):.3f} Å)")
            return np.ascontiguousarray(np.diag(cell), dtype=float)
        if not pbc.any():
            # a box so large that the minimum image never folds a displacement
            extent = np.ptp(positions, axis=0) if len(positions) else np.zeros(3)
            return 4.0 * (extent + cutoff) + 1.0
        raise ExportError("MldCalculator: periodic in some directions only; use pbc=True or pbc=False")


def frame_atoms(frame: Frame, masses_amu=None):
    """An ``ase.Atoms`` of the frame: periodic box, positions, velocities when the frame has them,
    and per-atom ``masses_amu`` when given (else ASE's standard masses)."""
    import ase
    from ase import units

    atoms = ase.Atoms(symbols=[str(s) for s in frame.species], positions=frame.positions_angstrom,
                      cell=np.diag(frame.box_angstrom), pbc=True)
    if masses_amu is not None:
        atoms.set_masses(np.asarray(masses_amu, dtype=float))
    if frame.velocities_angstrom_per_fs is not None:
        # ASE velocities are Å per ASE time unit; 1 fs is units.fs of them
        atoms.set_velocities(np.asarray(frame.velocities_angstrom_per_fs) / units.fs)
    return atoms


RUN_SCRIPT = '''"""Run the exported mld model with ASE (written by discover.export.ase_calculator).

Usage: python run_ase.py [steps]   (velocity Verlet, {timestep_fs} fs; needs mld installed)
"""

import sys

from ase import units
from ase.io import read
from ase.md.verlet import VelocityVerlet

from discover.export.ase_calculator import MldCalculator

steps = int(sys.argv[1]) if len(sys.argv) > 1 else {steps}
atoms = read("{start_file}")
atoms.calc = MldCalculator("{kernel_file}")
dynamics = VelocityVerlet(atoms, timestep={timestep_fs} * units.fs)
print("step potential_energy_ev total_energy_ev")
for done in range(0, steps + 1, {report_every}):
    if done:
        dynamics.run({report_every})
    print(done, atoms.get_potential_energy(), atoms.get_total_energy())
'''


def export_ase(model, out_dir, frame: Frame | None = None, *, timestep_fs: float = 0.5, steps: int = 100,
               report_every: int = 10) -> list[Path]:
    """Copy the kernel module (or generate it from a model) to ``out_dir/kernels.py``; with a frame, also ``start.traj`` and
    ``run_ase.py`` (velocity-Verlet MD with :class:`MldCalculator`). Returns the paths written."""
    from ase.io import write

    source = pair_source(model, "ase")
    out_dir = Path(out_dir)
    if source.kernel_module is not None:
        with atomic_path(out_dir / "kernels.py") as tmp:
            shutil.copyfile(source.kernel_module.__file__, tmp)
    elif source.model is not None:
        write_kernels(source.model, out_dir / "kernels.py")
    else:
        raise ExportError("the ASE export runs a kernel module: give a kernel module or a model, "
                          "not bare pair expressions")
    written = [out_dir / "kernels.py"]
    if frame is not None:
        with atomic_path(out_dir / "start.traj") as tmp:
            masses = np.asarray(source.masses_amu)[frame.types(source.species)]  # the model's, not ASE's
            write(tmp, frame_atoms(frame, masses), format="traj")  # full doubles; extxyz keeps 8 decimals
        written.append(out_dir / "start.traj")
        script = RUN_SCRIPT.format(timestep_fs=float(timestep_fs), steps=int(steps), report_every=int(report_every),
                                   start_file="start.traj", kernel_file="kernels.py")
        written.append(write_text_atomic(out_dir / "run_ase.py", script))
    return written
