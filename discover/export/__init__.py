"""Interop exports of a learned pair model: LAMMPS, OpenMM, ASE and C.

Each export reads either a kernel module (see :mod:`simulate.kernels`; tabulated exports) or
closed-form :class:`~discover.export.pairs.PairExpressions` (exact exports), see
:mod:`discover.export.pairs`. :func:`export_model` is the one entry point the CLI calls.

A many-body model (three-body terms, :mod:`discover.threebody`) is carried by ``ase`` (its kernels)
and ``c`` (its closed-form triplet laws); ``lammps`` and ``openmm`` refuse it in one line rather
than export its pair part alone.

A molecular model (``--topology molecular``) is carried by ``ase`` (its kernels) and ``lammps``
(``atom_style molecular``, a bond of its own law for every intramolecular pair, bonded pairs excluded
from the pair style); ``openmm`` and ``c`` refuse it in one line.
"""

from __future__ import annotations

from pathlib import Path

from discover.export.pairs import ExportError, Frame, PairExpressions

KINDS = ("lammps", "openmm", "ase", "c")

__all__ = ["KINDS", "ExportError", "Frame", "PairExpressions", "export_model"]


def export_model(kind: str, kernel_module_or_model, out_dir, frame: Frame | None = None, **options) -> list[Path]:
    """Write the ``kind`` export of a model into ``out_dir`` and return the paths written.

    ``kernel_module_or_model``: a kernel module, the path of one, or :class:`PairExpressions`.
    ``frame``: the configuration for ready-to-run inputs (LAMMPS data and deck, OpenMM state, ASE
    start structure); the OpenMM export needs one, C needs none. ``options`` go to the exporter.
    """
    if kind == "lammps":
        from discover.export.lammps import export_lammps

        return export_lammps(kernel_module_or_model, out_dir, frame, **options)
    if kind == "openmm":
        from discover.export.openmm import export_openmm

        return export_openmm(kernel_module_or_model, out_dir, frame, **options)
    if kind == "ase":
        from discover.export.ase_calculator import export_ase

        return export_ase(kernel_module_or_model, out_dir, frame, **options)
    if kind == "c":
        from discover.export.c import export_c

        return export_c(kernel_module_or_model, out_dir, **options)
    raise ExportError(f"unknown export {kind!r}; choose one of {', '.join(KINDS)}")

