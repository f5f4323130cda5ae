"""What every export reads: a pair model (kernel module or closed-form expressions) and a frame.

An export starts from one of two descriptions of the same pairwise law u_AB(r):

* a **kernel module** (the contract of :mod:`simulate.kernels`): compiled numbers only, enough to
  tabulate u(r) and −u'(r)/r for LAMMPS ``pair_style table``, OpenMM tabulated functions and the
  ASE calculator;
* **closed-form expressions** (:class:`PairExpressions`): one sympy expression of ``r`` per
  unordered species pair, the full u_AB(r) in eV with r in Å, core and cutoff shift included
  (possibly a ``sympy.Piecewise``). These carry the law itself, for LAMMPS ``pair_style lepton``,
  OpenMM custom expressions and C.

:class:`PairSource` puts both behind one interface that tabulates u and −u'/r on a grid of r.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import NamedTuple

import numpy as np
import sympy

from discover.dataset import Dataset
from discover.invariants import pair_type_index, pair_type_names, species_types
from discover.model import Model, load_model
from simulate.errors import MldError
from simulate.kernels import check_kernel_module, has_threebody, is_molecular, load_kernel_module

R = sympy.Symbol("r", positive=True)


class ExportError(MldError, ValueError):
    """An export that cannot be written from the given model or frame."""


# --- closed-form pair laws -----------------------------------------------------------
@dataclass(frozen=True)
class PairExpressions:
    """Closed-form pair energies u_AB(r) in eV of r in Å, keyed like ``pair_type_names(species)``.

    Every expression is rewritten in the module's symbol :data:`R`, whatever the assumptions of
    the ``r`` it was written with, so that printers and ``lambdify`` see one variable.
    """

    species: tuple[str, ...]
    masses_amu: tuple[float, ...]
    cutoff_angstrom: float
    expressions: dict[str, sympy.Expr]

    def __post_init__(self):
        object.__setattr__(self, "species", tuple(str(s) for s in self.species))
        object.__setattr__(self, "masses_amu", tuple(float(m) for m in self.masses_amu))
        if len(self.species) != len(self.masses_amu):
            raise ExportError("pair expressions: species and masses differ in length")
        if not self.cutoff_angstrom > 0:
            raise ExportError("pair expressions: cutoff must be positive")
        names = pair_type_names(self.species)
        keys = {_pair_key(k, self.species) for k in self.expressions}
        if keys != set(names):
            raise ExportError(f"pair expressions: need exactly the pairs {', '.join(names)}, got {sorted(keys)}")
        canonical = {}
        for key, expr in self.expressions.items():
            expr = sympy.sympify(expr)
            free = expr.free_symbols
            if {s.name for s in free} - {"r"}:
                raise ExportError(f"pair expression {key}: free symbols other than r: {sorted(map(str, free))}")
            canonical[_pair_key(key, self.species)] = expr.xreplace({s: R for s in free})
        object.__setattr__(self, "expressions", {name: canonical[name] for name in names})

    def expression(self, type_i: int, type_j: int) -> sympy.Expr:
        names = pair_type_names(self.species)
        return self.expressions[names[int(pair_type_index(type_i, type_j, len(self.species)))]]


def _pair_key(key, species) -> str:
    """Accept 'OH', 'HO', ('O','H') alike; return the canonical name of pair_type_names."""
    if isinstance(key, tuple):
        a, b = key
    else:
        key = str(key)
        split = [(key[:k], key[k:]) for k in range(1, len(key)) if key[:k] in species and key[k:] in species]
        if len(split) != 1:
            raise ExportError(f"pair expressions: cannot read pair name {key!r} with species {species}")
        a, b = split[0]
    ta, tb = species.index(a), species.index(b)
    return pair_type_names(species)[int(pair_type_index(ta, tb, len(species)))]


def force_over_r_expression(u: sympy.Expr) -> sympy.Expr:
    """−u'(r)/r in eV/Å², the kernel contract's second output."""
    return -sympy.diff(u, R) / R


# --- one interface over both inputs ------------------------------------------------------
class PairSource:
    """Species, masses, cutoff and tabulation of u, −u'/r; built by :func:`pair_source`.

    ``expressions`` is set for closed-form inputs (exact exports), ``kernel_module`` for kernel
    modules (the ASE calculator runs one), ``model`` when a ``discover.model.Model`` came in.
    """

    species: tuple[str, ...]
    masses_amu: tuple[float, ...]
    cutoff_angstrom: float
    label: str
    kernel_module: ModuleType | None = None
    expressions: PairExpressions | None = None
    model = None  # the discover.model.Model behind it, when there is one
    # r_3 of a many-body input (its three-body term is ``model.threebody`` or the kernel module's
    # ``triplet_energy_gradient``); None for a pairwise one
    threebody_cutoff_angstrom: float | None = None

    def energy_force_over_r(self, type_i: int, type_j: int, r_angstrom: np.ndarray):
        """(u in eV, −u'/r in eV/Å²) at each r; zero at and beyond the cutoff."""
        raise NotImplementedError

    @property
    def n_species(self) -> int:
        return len(self.species)

    def type_pairs(self) -> list[tuple[int, int]]:
        """Unordered (a, b), a ≤ b, in the order of ``pair_type_names``."""
        n = self.n_species
        return [(a, b) for a in range(n) for b in range(a, n)]

    def pair_names(self) -> list[str]:
        return pair_type_names(self.species)

    # --- molecular sources only (see MOLECULAR_TARGETS) ---
    bond_cutoff_angstrom: np.ndarray | None = None  # (S, S); None for an atomic model

    @property
    def is_molecular(self) -> bool:
        return self.bond_cutoff_angstrom is not None

    def intra_pairs(self) -> list[tuple[int, int, str]]:
        """(a, b, name) of every intramolecular law, a ≤ b."""
        return []

    def intra_energy_force_over_r(self, type_i: int, type_j: int, r_angstrom: np.ndarray):
        """(u in eV, −u'/r in eV/Å²) of the intramolecular law of (type_i, type_j), at any r."""
        raise NotImplementedError


class _KernelSource(PairSource):
    def __init__(self, module: ModuleType, label: str):
        check_kernel_module(module, label)
        if has_threebody(module):
            self.threebody_cutoff_angstrom = float(module.THREEBODY_CUTOFF_ANGSTROM)
        self.kernel_module = module
        self.species = tuple(module.SPECIES)
        self.masses_amu = tuple(float(m) for m in module.MASSES_AMU)
        self.cutoff_angstrom = float(module.CUTOFF_ANGSTROM)
        self.label = label
        if is_molecular(module):
            self.bond_cutoff_angstrom = np.asarray(module.BOND_CUTOFF_ANGSTROM, dtype=float)

    def _evaluate(self, kernel, type_i, type_j, r_angstrom):
        r_angstrom = np.asarray(r_angstrom, dtype=float)
        out = np.array([kernel(type_i, type_j, float(r)) for r in r_angstrom.ravel()])
        out = out.reshape(r_angstrom.shape + (2,))
        return out[..., 0], out[..., 1]

    def energy_force_over_r(self, type_i, type_j, r_angstrom):
        return self._evaluate(self.kernel_module.pair_energy_force, type_i, type_j, r_angstrom)

    def intra_pairs(self):
        if not self.is_molecular:
            return []
        has_law = np.asarray(self.kernel_module.INTRA_PAIR_TYPES, dtype=bool)
        return [(a, b, self.species[a] + self.species[b] + "_intra") for a, b in self.type_pairs() if has_law[a, b]]

    def intra_energy_force_over_r(self, type_i, type_j, r_angstrom):
        return self._evaluate(self.kernel_module.intra_pair_energy_force, type_i, type_j, r_angstrom)


class _ExpressionSource(PairSource):
    def __init__(self, expressions: PairExpressions, label: str):
        self.expressions = expressions
        self.species = expressions.species
        self.masses_amu = expressions.masses_amu
        self.cutoff_angstrom = float(expressions.cutoff_angstrom)
        self.label = label
        self._functions = {}
        for a, b in self.type_pairs():
            u = expressions.expression(a, b)
            self._functions[(a, b)] = sympy.lambdify(R, [u, force_over_r_expression(u)], modules="numpy")

    def energy_force_over_r(self, type_i, type_j, r_angstrom):
        r_angstrom = np.asarray(r_angstrom, dtype=float)
        key = (min(type_i, type_j), max(type_i, type_j))
        with np.errstate(all="ignore"):  # branches of a Piecewise outside their range may overflow
            u, f = self._functions[key](r_angstrom)
        inside = r_angstrom < self.cutoff_angstrom
        u = np.where(inside, np.broadcast_to(u, r_angstrom.shape), 0.0)
        f = np.where(inside, np.broadcast_to(f, r_angstrom.shape), 0.0)
        return u, f


class _TabulatedModelSource(PairSource):
    """A tabulated ``discover.model.Model``: numbers only, like a kernel module."""

    def __init__(self, model, label: str):
        self.model = model
        self.species = model.species
        self.masses_amu = model.masses_amu
        self.cutoff_angstrom = float(model.cutoff_angstrom)
        self.label = label

    def energy_force_over_r(self, type_i, type_j, r_angstrom):
        r_angstrom = np.asarray(r_angstrom, dtype=float)
        u, f = self.model.energy_and_force(int(pair_type_index(type_i, type_j, self.n_species)), r_angstrom)
        inside = r_angstrom < self.cutoff_angstrom
        return np.where(inside, u, 0.0), np.where(inside, f / r_angstrom, 0.0)


def model_expressions(model) -> PairExpressions:
    """The full pair energies (wall, shifted-force law, zero beyond r_c) of a closed-form model."""
    return PairExpressions(species=model.species, masses_amu=model.masses_amu,
                           cutoff_angstrom=model.cutoff_angstrom, expressions=model.pair_expressions())


# the exports that carry a three-body term; every other one refuses a many-body model outright,
# rather than export its pair part alone
THREEBODY_TARGETS = ("ase", "c")
# exports that carry a molecular model (intramolecular laws on molecules fixed at the start)
MOLECULAR_TARGETS = ("ase", "lammps")

_NO_THREEBODY_FORM = {
    "lammps": ("the LAMMPS export has no pair style for it (threebody/table looks forces up at the nearest "
               "grid point without interpolation, and sw takes only Stillinger–Weber laws)"),
    "openmm": "the OpenMM export has no force for it (CustomNonbondedForce is pairwise)",
}


def pair_source(model, target: str | None = None) -> PairSource:
    """A :class:`PairSource` from a kernel module or its path, :class:`PairExpressions`, or a
    ``discover.model.Model`` or its ``model.json``.

    ``target`` names the export asking (``"lammps"``, ``"openmm"``, ``"ase"``, ``"c"``). A many-body
    input is refused, in one line naming the exports that cover it, unless ``target`` is one of
    :data:`THREEBODY_TARGETS`: no export ever writes only the pair part of a many-body model.
    """
    label = str(model) if isinstance(model, (str, Path)) else getattr(model, "__file__", None) or "model"
    if isinstance(model, (str, Path)) and Path(model).suffix == ".json":
        model = _model_source(load_model(Path(model)), label)
    elif isinstance(model, (str, Path)):
        model = _KernelSource(load_kernel_module(model), label)
    molecular = (getattr(model, "is_molecular", False) if isinstance(model, (Model, PairSource))
                 else isinstance(model, ModuleType) and is_molecular(model))
    if molecular and target not in MOLECULAR_TARGETS:
        raise ExportError(f"{label}: has a molecular topology (intramolecular "
                          f"laws on fixed molecules), which the {target or 'pair'} export does not carry; export it "
                          f"with {' or '.join(MOLECULAR_TARGETS)}")
    source = _pair_source(model)
    if molecular:
        return source
    if source.threebody_cutoff_angstrom is not None and target not in THREEBODY_TARGETS:
        reason = _NO_THREEBODY_FORM.get(target, "pair exports carry pairwise terms only")
        raise ExportError(f"{source.label}: has a three-body term (r_3 = {source.threebody_cutoff_angstrom:g} Å) "
                          f"and {reason}; export it with {' or '.join(THREEBODY_TARGETS)}, which cover three-body "
                          "terms")
    return source


def _pair_source(model) -> PairSource:
    if isinstance(model, PairSource):
        return model
    if isinstance(model, PairExpressions):
        return _ExpressionSource(model, "pair expressions")
    if isinstance(model, (str, Path)) and Path(model).suffix == ".json":
        path = Path(model)
        return _model_source(load_model(path), str(path))
    if isinstance(model, Model):
        return _model_source(model, "model")
    if isinstance(model, ModuleType):
        return _KernelSource(model, getattr(model, "__file__", None) or model.__name__)
    if isinstance(model, (str, Path)):
        return _KernelSource(load_kernel_module(model), str(model))
    raise ExportError(f"cannot export {type(model).__name__}: give a kernel module, a model or pair expressions")


def _model_source(model, label: str) -> PairSource:
    if model.is_molecular:
        return _MolecularModelSource(model, label)
    if model.kind == "closed_form":
        source = _ExpressionSource(model_expressions(model), label)
    else:
        source = _TabulatedModelSource(model, label)
    source.model = model
    if model.threebody is not None:
        source.threebody_cutoff_angstrom = float(model.threebody.cutoff_angstrom)
    return source


class _MolecularModelSource(PairSource):
    """A molecular ``discover.model.Model``, closed-form or tabulated, evaluated numerically."""

    def __init__(self, model, label: str):
        self.model = model
        self.species, self.masses_amu = model.species, model.masses_amu
        self.cutoff_angstrom, self.label = model.cutoff_angstrom, label
        self.bond_cutoff_angstrom = model.bond_cutoff_matrix()

    def energy_force_over_r(self, type_i, type_j, r_angstrom):
        r_angstrom = np.asarray(r_angstrom, dtype=float)
        u, f = self.model.energy_and_force(int(pair_type_index(type_i, type_j, self.n_species)), r_angstrom)
        return u, f / r_angstrom

    def intra_pairs(self):
        return [(a, b, name + "_intra") for (a, b), name in zip(self.type_pairs(), self.pair_names())
                if name + "_intra" in self.model.pair_types]

    def intra_energy_force_over_r(self, type_i, type_j, r_angstrom):
        r_angstrom = np.asarray(r_angstrom, dtype=float)
        name = pair_type_names(self.species)[int(pair_type_index(type_i, type_j, self.n_species))] + "_intra"
        u, f = self.model.energy_and_force(self.model.pair_types.index(name), r_angstrom)
        return u, f / r_angstrom


def tabulation_grid(inner_angstrom: float, cutoff_angstrom: float, n_points: int, spacing: str) -> np.ndarray:
    """Grid of r from the inner radius to the cutoff, uniform in r ('r') or in r² ('rsq').

    The r² form reproduces LAMMPS's own grid for ``RSQ`` tables exactly
    (r_i = sqrt(r_lo² + i (r_hi² − r_lo²)/(N − 1))), so LAMMPS uses the values as written.
    """
    if not 0 < inner_angstrom < cutoff_angstrom:
        raise ExportError(f"table inner radius {inner_angstrom} Å must lie in (0, cutoff {cutoff_angstrom} Å)")
    if n_points < 2:
        raise ExportError("a table needs at least 2 points")
    i = np.arange(n_points)
    if spacing == "r":
        return inner_angstrom + i * (cutoff_angstrom - inner_angstrom) / (n_points - 1)
    if spacing == "rsq":
        lo2, hi2 = inner_angstrom**2, cutoff_angstrom**2
        return np.sqrt(lo2 + i * (hi2 - lo2) / (n_points - 1))
    raise ExportError(f"unknown table spacing {spacing!r} (use 'r' or 'rsq')")


# --- configurations -------------------------------------------------------------------
class Frame(NamedTuple):
    """One configuration: element symbols (N,), positions (N,3) Å, orthorhombic box (3,) Å, velocities Å/fs."""

    species: np.ndarray
    positions_angstrom: np.ndarray
    box_angstrom: np.ndarray
    velocities_angstrom_per_fs: np.ndarray | None = None

    @classmethod
    def from_dataset(cls, dataset, index: int = 0) -> Frame:
        """Frame ``index`` of a :class:`discover.dataset.Dataset` (or the path of one)."""
        if not isinstance(dataset, Dataset):
            dataset = Dataset.load(dataset)
        cell = dataset.cell[index]
        if not np.allclose(cell, np.diag(np.diag(cell))):
            raise ExportError("exports need an orthorhombic cell; this frame's cell is triclinic")
        return cls(
            species=np.asarray(dataset.species).astype(str),
            positions_angstrom=np.array(dataset.positions[index], dtype=float),
            box_angstrom=np.diag(cell).astype(float),
            velocities_angstrom_per_fs=np.array(dataset.velocities[index], dtype=float),
        )

    def types(self, species_names) -> np.ndarray:
        """Type index of each atom in the model's species order; unknown elements are an error."""
        unknown = sorted(set(map(str, self.species)) - set(species_names))
        if unknown:
            raise ExportError(f"frame has element(s) {', '.join(unknown)} the model does not know ({species_names})")
        return species_types(self.species, species_names)
