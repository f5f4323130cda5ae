"""OpenMM export: an ``openmm.System`` whose pair law is one ``CustomNonbondedForce`` per species pair.

OpenMM works in nm, kJ/mol, ps and amu. Each force covers one unordered species pair through an
interaction group (atoms of species A with atoms of species B; OpenMM counts a pair inside one
set once), so no per-particle parameters or type switches are needed. Its energy is either

* the closed-form law, printed in Lepton with the variable in Å and the energy in eV and wrapped as
  ``kj_per_mol_per_ev*(u); u=…r_angstrom…; r_angstrom=10*r`` (OpenMM differentiates it itself), or
* a ``Continuous1DFunction`` table of u(r) for a kernel module: a natural cubic spline of the
  energy on a uniform grid in r, so the forces are the spline's derivative.

``Continuous1DFunction`` is zero below its first point: the table starts at ``inner_angstrom``,
far inside the repulsive core of any physical frame.

A many-body model is refused in one line (``pairs.pair_source``): these forces are pairwise, and the
ase and c exports carry three-body terms.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from discover.export.lepton import lepton_expression
from discover.export.pairs import ExportError, Frame, PairSource, R, pair_source, tabulation_grid
from simulate.fileio import write_text_atomic
from simulate.units import AVOGADRO, EV_TO_JOULE

KJ_PER_MOL_PER_EV = EV_TO_JOULE * AVOGADRO / 1000.0
NM_PER_ANGSTROM = 0.1

DEFAULT_TABLE_POINTS = 20000
DEFAULT_INNER_ANGSTROM = 0.5

SYSTEM_FILE = "system.xml"
STATE_FILE = "state.xml"
SCRIPT_FILE = "run_openmm.py"


def _openmm():
    try:
        import openmm
    except ImportError:
        raise ExportError("the OpenMM export needs the openmm package (pip install openmm)") from None
    return openmm


def energy_expression(source: PairSource, type_i: int, type_j: int) -> str:
    """The OpenMM energy (kJ/mol) of r (nm) for one species pair, from the closed-form law."""
    import sympy

    u = source.expressions.expression(type_i, type_j).xreplace({R: sympy.Symbol("r_angstrom")})
    return f"{KJ_PER_MOL_PER_EV!r}*(u); u={lepton_expression(u)}; r_angstrom=r/{NM_PER_ANGSTROM!r}"


def build_system(
    model,
    frame: Frame,
    *,
    tabulate: bool | None = None,
    n_points: int = DEFAULT_TABLE_POINTS,
    inner_angstrom: float = DEFAULT_INNER_ANGSTROM,
):
    """An ``openmm.System`` for ``frame``'s atoms under the model (periodic orthorhombic box).

    ``tabulate``: None uses the closed form when the model has one, else tables.
    """
    openmm = _openmm()
    source = pair_source(model, "openmm")
    if tabulate is None:
        tabulate = source.expressions is None
    if not tabulate and source.expressions is None:
        raise ExportError(f"{source.label}: a closed-form OpenMM force needs pair expressions, not a kernel module")
    types = frame.types(source.species)
    box_nm = np.asarray(frame.box_angstrom, dtype=float) * NM_PER_ANGSTROM
    if box_nm.shape != (3,):
        raise ExportError(f"OpenMM export needs an orthorhombic box of three lengths, got shape {box_nm.shape}")
    if source.cutoff_angstrom * NM_PER_ANGSTROM > 0.5 * box_nm.min():
        raise ExportError(f"cutoff {source.cutoff_angstrom} Å exceeds half the box ({0.5 * box_nm.min() * 10} Å)")

    system = openmm.System()
    for t in types:
        system.addParticle(source.masses_amu[t])
    system.setDefaultPeriodicBoxVectors(
        openmm.Vec3(box_nm[0], 0, 0), openmm.Vec3(0, box_nm[1], 0), openmm.Vec3(0, 0, box_nm[2])
    )
    r_angstrom = tabulation_grid(inner_angstrom, source.cutoff_angstrom, n_points, "r") if tabulate else None
    for (a, b), name in zip(source.type_pairs(), source.pair_names()):
        group_a = [int(k) for k in np.flatnonzero(types == a)]
        group_b = [int(k) for k in np.flatnonzero(types == b)]
        if not group_a or not group_b:
            continue
        if tabulate:
            function = f"u_{name}"
            force = openmm.CustomNonbondedForce(f"{function}(r)")
            u_ev, _ = source.energy_force_over_r(a, b, r_angstrom)
            force.addTabulatedFunction(function, openmm.Continuous1DFunction(
                list(u_ev * KJ_PER_MOL_PER_EV), r_angstrom[0] * NM_PER_ANGSTROM, r_angstrom[-1] * NM_PER_ANGSTROM))
        else:
            force = openmm.CustomNonbondedForce(energy_expression(source, a, b))
        force.setName(f"mld pair {name}")
        force.setNonbondedMethod(openmm.CustomNonbondedForce.CutoffPeriodic)
        force.setCutoffDistance(source.cutoff_angstrom * NM_PER_ANGSTROM)
        force.setUseSwitchingFunction(False)
        force.setUseLongRangeCorrection(False)
        for _ in types:
            force.addParticle([])
        force.addInteractionGroup(group_a, group_b)
        system.addForce(force)
    return system


def frame_state(system, frame: Frame, temperature_k: float = 300.0, seed: int = 4928459):
    """An ``openmm.State`` with the frame's positions, and its velocities (else Maxwell–Boltzmann)."""
    openmm = _openmm()
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(np.asarray(frame.positions_angstrom, dtype=float) * NM_PER_ANGSTROM)
    if frame.velocities_angstrom_per_fs is not None:
        # Å/fs → nm/ps is ×0.1 × 1000
        context.setVelocities(np.asarray(frame.velocities_angstrom_per_fs, dtype=float) * NM_PER_ANGSTROM * 1000.0)
    else:
        context.setVelocitiesToTemperature(temperature_k, seed)
    return context.getState(getPositions=True, getVelocities=True)


def energy_forces(system, positions_angstrom, platform: str = "Reference"):
    """(energy eV, forces eV/Å) of ``system`` at the given positions, on the named OpenMM platform."""
    openmm = _openmm()
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName(platform))
    context.setPositions(np.asarray(positions_angstrom, dtype=float) * NM_PER_ANGSTROM)
    state = context.getState(getEnergy=True, getForces=True)
    energy = state.getPotentialEnergy().value_in_unit(openmm.unit.kilojoule_per_mole) / KJ_PER_MOL_PER_EV
    forces = state.getForces(asNumpy=True).value_in_unit(openmm.unit.kilojoule_per_mole / openmm.unit.nanometer)
    return energy, np.asarray(forces) / KJ_PER_MOL_PER_EV * NM_PER_ANGSTROM


RUN_SCRIPT = '''"""Run the exported mld model in OpenMM (written by discover.export.openmm).

Usage: python run_openmm.py [steps]   (Langevin middle integrator, {temperature_k} K, {timestep_fs} fs)
"""

import sys

import openmm
from openmm import unit

steps = int(sys.argv[1]) if len(sys.argv) > 1 else {steps}
with open("{system_file}") as handle:
    system = openmm.XmlSerializer.deserialize(handle.read())
with open("{state_file}") as handle:
    state = openmm.XmlSerializer.deserialize(handle.read())
integrator = openmm.LangevinMiddleIntegrator(
    {temperature_k} * unit.kelvin, 1.0 / unit.picosecond, {timestep_fs} * unit.femtoseconds
)
context = openmm.Context(system, integrator)
context.setState(state)
print("step potential_energy_ev temperature_k")
n_dof = 3 * system.getNumParticles() - 3
for done in range(0, steps + 1, {report_every}):
    if done:
        integrator.step({report_every})
    now = context.getState(getEnergy=True)
    pe_ev = now.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole) / {kj_per_mol_per_ev!r}
    ke = now.getKineticEnergy()
    t_k = (2 * ke / (n_dof * unit.MOLAR_GAS_CONSTANT_R)).value_in_unit(unit.kelvin)
    print(done, pe_ev, t_k)
'''


def export_openmm(
    model,
    out_dir,
    frame: Frame | None = None,
    *,
    temperature_k: float = 300.0,
    timestep_fs: float = 0.5,
    steps: int = 1000,
    report_every: int = 100,
    **system_options,
) -> list[Path]:
    """Write ``system.xml``, ``state.xml`` and ``run_openmm.py`` into ``out_dir``; return their paths."""
    openmm = _openmm()
    if frame is None:
        raise ExportError("the OpenMM export needs a frame (positions, species and box) to build its System")
    system = build_system(model, frame, **system_options)
    state = frame_state(system, frame, temperature_k)
    out_dir = Path(out_dir)
    script = RUN_SCRIPT.format(
        temperature_k=float(temperature_k), timestep_fs=float(timestep_fs), steps=int(steps),
        report_every=int(report_every), system_file=SYSTEM_FILE, state_file=STATE_FILE,
        kj_per_mol_per_ev=KJ_PER_MOL_PER_EV,
    )
    return [
        write_text_atomic(out_dir / SYSTEM_FILE, openmm.XmlSerializer.serialize(system)),
        write_text_atomic(out_dir / STATE_FILE, openmm.XmlSerializer.serialize(state)),
        write_text_atomic(out_dir / SCRIPT_FILE, script),
    ]
