"""The model file ``model.json``: a learned pair model as data, never as code.

Schema (version 1)::

    {
      "schema": "mld.model", "schema_version": 1,
      "kind": "closed_form" | "tabulated",
      "species": ["O", "H"], "masses_amu": [15.999, 1.008],
      "cutoff_angstrom": 4.88, "cutoff_treatment": "shifted_force",
      "pair_types": {                      # one entry per unordered pair, in invariants.pair_type_names order
        "OO": {"expression": "4.0/r**12 - 4.0/r**6",          # closed_form only: u(r) in eV, r in Å
               "r_min_angstrom": 2.3,                           # smallest sampled distance: the core starts below
               "core": {"stiffness_ev_per_angstrom2": 10.0, "length_angstrom": 0.1}},
        ...
      },
      "tabulated": {...},                  # tabulated only: force_matching.TabulatedModel.to_dict()
      "threebody": {                       # optional: a many-body model (see discover.threebody)
        "kind": "closed_form", "cutoff_angstrom": 3.2,
        "triplet_types": {"HOH": {"expression": "1.2*exp(0.5/(r1 - 3.2))*exp(0.5/(r2 - 3.2))*(c + 0.25)**2"}}
      } | {"kind": "gaussian_legendre", ...}, # or the tabulated term: threebody.ThreeBodyTable.to_dict()
      "topology": {                        # optional: a molecular model (see simulate.topology)
        "kind": "molecular", "bond_cutoff_angstrom": {"OH": 1.26}
      },
      "provenance": {...}                  # free-form JSON: dataset, engine, seed, version, figures
    }

A closed-form pair energy is u(r) − u(r_c) − (r − r_c) u'(r_c) for r_min ≤ r < r_c (shifted force),
zero beyond r_c, and the C¹ wall of ``force_matching.repulsive_core`` below r_min.

A molecular model has, after the species pairs (its intermolecular laws), intramolecular laws such as
``OH_intra`` with an ``r_max_angstrom``: bonded laws, u(r) − u(r_max) on [r_min, r_max] (no cutoff), the wall below r_min and ``force_matching.outer_wall`` beyond r_max. Atoms closer than the
bond cutoff of their species pair are bonded, and a molecule is a connected group of bonded atoms.

A many-body model adds a three-body term w(r1, r2, c) per triplet type ``BAC`` (centre A, neighbours
B ≤ C): a law of ``r1``, ``r2`` and ``c`` = cos θ in the same safe grammar, which must vanish smoothly at
the three-body cutoff and be symmetric in r1, r2 when B = C; or tabulated Gaussian × Legendre
coefficients. Triplet types without an entry have no term.

Loading never executes anything from the file. Expressions are parsed with :mod:`ast` and
rebuilt node by node from a whitelist: numbers, the variable ``r``, + − × ÷ **, unary ±, and calls
of the functions in ``symbolic.FUNCTIONS``. Everything else (names, attributes, subscripts,
lambdas, keywords, strings, over-long or over-deep text) is refused with one line naming the file
and the field.
"""

from __future__ import annotations

import ast
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import sympy

from discover import symbolic, threebody
from discover.force_matching import (
    CORE_LENGTH_ANGSTROM,
    CORE_STIFFNESS_EV_PER_ANGSTROM2,
    ForceMatchingError,
    PairForceViews,
    TabulatedModel,
    checked_pair_types,
    outer_wall,
    repulsive_core,
)
from discover.invariants import is_intramolecular, pair_type_names, species_of_pair, species_pair_of
from simulate.errors import MldError
from simulate.fileio import write_text_atomic

SCHEMA = "mld.model"
SCHEMA_VERSION = 1
KINDS = ("closed_form", "tabulated")
CUTOFF_TREATMENT = "shifted_force"

MAX_FILE_BYTES = 20_000_000
MAX_EXPRESSION_CHARS = 4000
MAX_EXPRESSION_NODES = 600
MAX_EXPRESSION_DEPTH = 60
MAX_CONSTANT_EXPONENT = 100  # |n| in x**n with a numeric n
MAX_INTEGER_LITERAL = 10**15


class ModelError(MldError, ValueError):
    """A model file or model that cannot be used; the message names the file and the field."""


# --- safe expression parsing ------------------------------------------------------------------

_BINARY = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
    ast.Pow: None,  # checked separately
}


def _depth(node: ast.AST) -> int:
    deepest, stack = 0, [(node, 1)]
    while stack:
        current, level = stack.pop()
        deepest = max(deepest, level)
        stack.extend((child, level + 1) for child in ast.iter_child_nodes(current))
    return deepest


def _real(value: sympy.Expr, where: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise ModelError(f"{where}: constant {value} is not a real number") from None
    if not math.isfinite(number):
        raise ModelError(f"{where}: constant {value} is not finite")
    return number


def _checked_power(base: sympy.Expr, exponent: sympy.Expr, where: str) -> sympy.Expr:
    if exponent.is_number and abs(_real(exponent, where)) > MAX_CONSTANT_EXPONENT:
        raise ModelError(f"{where}: exponent {float(exponent):g} is out of range (|n| ≤ {MAX_CONSTANT_EXPONENT})")
    if base.is_number and exponent.is_number:
        # a numeric power is a number: evaluate it in floating point, never as a huge exact integer
        b, e = _real(base, where), _real(exponent, where)
        if b < 0 and e != int(e):
            raise ModelError(f"{where}: {b:g}**{e:g} is not a real number")
        try:
            return sympy.Float(b**e)
        except (OverflowError, ZeroDivisionError):
            raise ModelError(f"{where}: {b:g}**{e:g} is out of range") from None
    return sympy.Pow(base, exponent)


def parse_expression(text, where: str = "expression", variables=("r",)) -> sympy.Expr:
    """Build a sympy expression of ``symbolic.R`` from ``text`` without executing anything.

    ``where`` (e.g. ``"model.json: pair_types.OO.expression"``) starts every error message.
    """
    if not isinstance(text, str):
        raise ModelError(f"{where}: expected an expression string, got {type(text).__name__}")
    if len(text) > MAX_EXPRESSION_CHARS:
        raise ModelError(f"{where}: expression longer than {MAX_EXPRESSION_CHARS} characters")
    if not text.strip():
        raise ModelError(f"{where}: empty expression")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        raise ModelError(f"{where}: not a valid expression ({type(exc).__name__})") from None
    nodes = list(ast.walk(tree))
    if len(nodes) > MAX_EXPRESSION_NODES:
        raise ModelError(f"{where}: expression has more than {MAX_EXPRESSION_NODES} nodes")
    if _depth(tree) > MAX_EXPRESSION_DEPTH:
        raise ModelError(f"{where}: expression nested deeper than {MAX_EXPRESSION_DEPTH}")
    symbols = {name: (symbolic.R if name == "r" else symbolic.INV_R if name == "inv_r" else sympy.Symbol(name))
               for name in variables}

    def build(node: ast.AST) -> sympy.Expr:
        if isinstance(node, ast.Expression):
            return build(node.body)
        if isinstance(node, ast.Constant):
            value = node.value
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ModelError(f"{where}: constant {value!r} is not a real number")
            if isinstance(value, int):
                if abs(value) > MAX_INTEGER_LITERAL:
                    raise ModelError(f"{where}: integer {value} is too large")
                return sympy.Integer(value)
            if not math.isfinite(value):
                raise ModelError(f"{where}: constant {value!r} is not finite")
            return sympy.Float(value)
        if isinstance(node, ast.Name):
            if node.id not in symbols:
                raise ModelError(f"{where}: unknown name {node.id!r} (allowed: {', '.join(symbols)})")
            return symbols[node.id]
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            operand = build(node.operand)
            return -operand if isinstance(node.op, ast.USub) else operand
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            left, right = build(node.left), build(node.right)
            if isinstance(node.op, ast.Pow):
                return _checked_power(left, right, where)
            if isinstance(node.op, ast.Div) and right.is_zero:
                raise ModelError(f"{where}: division by zero")
            return _BINARY[type(node.op)](left, right)
        if isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name):
                raise ModelError(f"{where}: only plain calls of {', '.join(symbolic.FUNCTIONS)} are allowed")
            name = node.func.id
            if name not in symbolic.FUNCTIONS:
                raise ModelError(f"{where}: call to unknown function {name!r}")
            function, arity = symbolic.FUNCTIONS[name]
            if node.keywords or len(node.args) != arity or any(isinstance(a, ast.Starred) for a in node.args):
                raise ModelError(f"{where}: {name}() takes exactly {arity} positional argument(s)")
            args = [build(a) for a in node.args]
            if name == "pow":
                return _checked_power(args[0], args[1], where)
            return function(*args)
        raise ModelError(f"{where}: {type(node).__name__} is not allowed in an expression")

    expr = build(tree)
    if expr.has(sympy.zoo, sympy.oo, -sympy.oo, sympy.nan):
        raise ModelError(f"{where}: expression is not finite")
    return expr


# --- one closed-form pair law with its cutoff and core ------------------------------------------


@dataclass
class PairLaw:
    """u(r) used as the simulator uses it: wall below r_min, shifted-force law up to r_c, zero beyond.

    A bonded law (``r_max_angstrom`` set) is u(r) itself on [r_min, r_max], with the outer wall beyond.
    """

    expression: sympy.Expr  # the raw law u(r), eV
    r_min_angstrom: float
    cutoff_angstrom: float
    stiffness_ev_per_angstrom2: float = CORE_STIFFNESS_EV_PER_ANGSTROM2
    core_length_angstrom: float = CORE_LENGTH_ANGSTROM
    r_max_angstrom: float | None = None  # bonded laws only
    _numeric: tuple | None = field(init=False, repr=False, compare=False, default=None)

    @property
    def bonded(self) -> bool:
        return self.r_max_angstrom is not None

    @property
    def r_end(self) -> float:
        """Where the body ends: the cutoff, or r_max of a bonded law."""
        return self.r_max_angstrom if self.bonded else self.cutoff_angstrom

    def body(self) -> sympy.Expr:
        """u(r) for r_min ≤ r < r_end: the shifted-force law, or the bonded law shifted to zero at r_max
        (a bonded law's constant is arbitrary; the tables' is the same)."""
        if self.bonded:
            return self.expression - sympy.Float(symbolic.value_at(self.expression, self.r_max_angstrom))
        return symbolic.shifted_force(self.expression, self.cutoff_angstrom)

    def _value_and_slope(self, r0: float) -> tuple[float, float]:
        body = self.body()
        return symbolic.value_at(body, r0), symbolic.value_at(sympy.diff(body, symbolic.R), r0)

    def join(self) -> tuple[float, float]:
        """(u, du/dr) of the body at r_min, where the wall takes over."""
        return self._value_and_slope(self.r_min_angstrom)

    def outer_join(self) -> tuple[float, float]:
        """(u, du/dr) of a bonded law at r_max, where the outer wall takes over."""
        return self._value_and_slope(self.r_max_angstrom)

    def core(self) -> sympy.Expr:
        u0, du0 = self.join()
        return symbolic.core_expression(self.r_min_angstrom, u0, du0, self.stiffness_ev_per_angstrom2,
                                        self.core_length_angstrom)

    def outer(self) -> sympy.Expr:
        """u(r) of a bonded law beyond r_max (``force_matching.outer_wall``) as a sympy expression."""
        u1, du1 = self.outer_join()
        return symbolic.outer_wall_expression(self.r_max_angstrom, u1, du1, self.stiffness_ev_per_angstrom2,
                                              self.core_length_angstrom)

    def energy_and_force(self, r) -> tuple[np.ndarray, np.ndarray]:
        """u(r) in eV and f(r) = −du/dr in eV/Å on an array of distances."""
        if self._numeric is None:
            u_sf = self.body()
            function = sympy.lambdify(symbolic.R, [u_sf, sympy.diff(u_sf, symbolic.R)], modules="numpy")
            self._numeric = (function, self.join(), self.outer_join() if self.bonded else None)
        function, (u0, du0), outer_join = self._numeric
        r = np.asarray(r, dtype=float)
        u = np.zeros(r.shape)
        f = np.zeros(r.shape)
        body = (r >= self.r_min_angstrom) & (r < self.r_end)
        core = r < self.r_min_angstrom
        if self.bonded:
            outer = r >= self.r_end
            if outer.any():
                u[outer], du_outer = outer_wall(r[outer], self.r_max_angstrom, *outer_join,
                                                self.stiffness_ev_per_angstrom2, self.core_length_angstrom)
                f[outer] = -du_outer
        if body.any():
            with np.errstate(all="ignore"):
                u_body, du_body = function(r[body])
            u[body] = u_body
            f[body] = -np.asarray(du_body, dtype=float)
        if core.any():
            u_core, du_core = repulsive_core(r[core], self.r_min_angstrom, u0, du0, self.stiffness_ev_per_angstrom2,
                                             self.core_length_angstrom)
            u[core] = u_core
            f[core] = -du_core
        return u, f


# --- the model ---------------------------------------------------------------------------------


@dataclass
class Model(PairForceViews):
    """A model of per-species agent losses: pairs, closed-form or tabulated, and optionally triplets.

    ``expressions[name]`` is the raw law u(r) (before the cutoff shift) of each pair type;
    ``tabulated`` holds the force-matched tables instead for ``kind == "tabulated"``. A many-body
    model also has ``threebody``: ``threebody.ThreeBodyLaws`` or ``threebody.ThreeBodyTable``.
    """

    kind: str
    species: tuple[str, ...]
    masses_amu: tuple[float, ...]
    cutoff_angstrom: float
    r_min_angstrom: dict  # {pair name: Å}
    core: dict  # {pair name: {"stiffness_ev_per_angstrom2", "length_angstrom"}}
    expressions: dict | None = None  # {pair name: sympy expression of symbolic.R}
    tabulated: TabulatedModel | None = None
    provenance: dict = field(default_factory=dict)
    threebody: threebody.ThreeBodyLaws | threebody.ThreeBodyTable | None = None  # many-body models only
    r_max_angstrom: dict = field(default_factory=dict)  # {intramolecular pair name: Å}: molecular models only
    bond_cutoff_angstrom: dict | None = None  # {species pair name: Å}: set for a molecular model
    _numeric: dict = field(init=False, repr=False, compare=False, default_factory=dict)

    def __post_init__(self):
        self.species = tuple(str(s) for s in self.species)
        self.masses_amu = tuple(float(m) for m in self.masses_amu)
        self.cutoff_angstrom = float(self.cutoff_angstrom)
        if self.kind not in KINDS:
            raise ModelError(f"model kind {self.kind!r} is not one of {', '.join(KINDS)}")
        if len(self.masses_amu) != len(self.species):
            raise ModelError("model: one mass per species is needed")
        missing = [n for n in self.pair_types if n not in self.r_min_angstrom]
        if missing:
            raise ModelError(f"model: no r_min for pair type(s) {', '.join(missing)}")
        if self.kind == "closed_form":
            if self.expressions is None or any(n not in self.expressions for n in self.pair_types):
                raise ModelError("closed-form model: one expression per pair type is needed")
            self.expressions = {n: self.expressions[n] for n in self.pair_types}
        elif self.tabulated is None:
            raise ModelError("tabulated model: the tables are missing")
        if self.threebody is not None and tuple(self.threebody.species) != self.species:
            raise ModelError("model: the three-body term's species differ from the model's")
        if self.r_max_angstrom and not self.is_molecular:
            raise ModelError("model: intramolecular laws need a molecular topology (bond cutoffs)")
        if self.is_molecular:
            if self.threebody is not None:
                raise ModelError("model: a molecular model is pairwise; it cannot carry a three-body term")
            base = pair_type_names(self.species)
            unknown = [n for n in self.bond_cutoff_angstrom if n not in base]
            if unknown:
                raise ModelError(f"model: bond cutoff for unknown species pair(s) {', '.join(unknown)}")
        self.core = {n: {"stiffness_ev_per_angstrom2": float(self.core.get(n, {}).get(
                            "stiffness_ev_per_angstrom2", CORE_STIFFNESS_EV_PER_ANGSTROM2)),
                         "length_angstrom": float(self.core.get(n, {}).get("length_angstrom", CORE_LENGTH_ANGSTROM))}
                     for n in self.pair_types}

    # --- construction ---------------------------------------------------------------------
    @classmethod
    def closed_form(cls, expressions: dict, species, cutoff_angstrom: float, r_min_angstrom: dict,
                    masses_amu=None, core: dict | None = None, provenance: dict | None = None,
                    threebody=None, r_max_angstrom: dict | None = None,
                    bond_cutoff_angstrom: dict | None = None) -> Model:
        from simulate.units import masses_amu as standard_masses

        masses = tuple(standard_masses(species)) if masses_amu is None else tuple(masses_amu)
        return cls(kind="closed_form", species=tuple(species), masses_amu=masses, cutoff_angstrom=cutoff_angstrom,
                   r_min_angstrom=dict(r_min_angstrom), core=dict(core or {}), expressions=dict(expressions),
                   provenance=dict(provenance or {}), threebody=threebody, r_max_angstrom=dict(r_max_angstrom or {}),
                   bond_cutoff_angstrom=bond_cutoff_angstrom)

    @classmethod
    def from_tabulated(cls, tabulated: TabulatedModel, masses_amu=None, provenance: dict | None = None,
                       threebody=None, bond_cutoff_angstrom: dict | None = None) -> Model:
        from simulate.units import masses_amu as standard_masses

        masses = tuple(standard_masses(tabulated.species)) if masses_amu is None else tuple(masses_amu)
        core = {n: {"stiffness_ev_per_angstrom2": tabulated.core_stiffness,
                    "length_angstrom": tabulated.core_length_angstrom} for n in tabulated.pair_types}
        return cls(kind="tabulated", species=tabulated.species, masses_amu=masses,
                   cutoff_angstrom=tabulated.cutoff_angstrom,
                   r_min_angstrom={n: float(r) for n, r in zip(tabulated.pair_types, tabulated.r_min_angstrom)},
                   core=core, tabulated=tabulated, provenance=dict(provenance or {}), threebody=threebody,
                   r_max_angstrom={n: tabulated.r_end(t) for t, n in enumerate(tabulated.pair_types)
                                   if tabulated.bonded[t]},
                   bond_cutoff_angstrom=bond_cutoff_angstrom)

    @property
    def is_many_body(self) -> bool:
        return self.threebody is not None

    @property
    def is_molecular(self) -> bool:
        return self.bond_cutoff_angstrom is not None

    # --- names -----------------------------------------------------------------------------
    @property
    def pair_types(self) -> tuple[str, ...]:
        """The species pairs (the intermolecular laws of a molecular model), then its intramolecular laws."""
        base = pair_type_names(self.species)
        intra = sorted(self.r_max_angstrom, key=lambda n: base.index(species_pair_of(n)))
        return tuple(base + intra)

    # --- molecules (molecular models) ----------------------------------------------------------
    def bond_cutoff_matrix(self) -> np.ndarray:
        """(S, S) bond cutoffs in Å between species (0: never bonded)."""
        return bond_matrix(self.bond_cutoff_angstrom or {}, self.species)

    def pair_name(self, species_a: str, species_b: str) -> str:
        for name in (species_a + species_b, species_b + species_a):
            if name in self.pair_types:
                return name
        raise ModelError(f"no pair type {species_a}{species_b} in this model")

    # --- symbolic pieces (closed form) -------------------------------------------------------
    def law(self, name: str) -> PairLaw:
        """The closed-form law of one pair type with its cutoff and core."""
        self._require_closed_form()
        if name not in self._numeric:
            core = self.core[name]
            self._numeric[name] = PairLaw(self.expressions[name], self.r_min_angstrom[name], self.cutoff_angstrom,
                                          core["stiffness_ev_per_angstrom2"], core["length_angstrom"],
                                          self.r_max_angstrom.get(name))
        return self._numeric[name]

    def body_expression(self, name: str) -> sympy.Expr:
        """u(r) for r_min ≤ r < r_c (shifted force), or r_min ≤ r < r_max for a bonded law."""
        return self.law(name).body()

    def core_join(self, name: str) -> tuple[float, float]:
        """(u, du/dr) of the shifted law (or the table) at r_min, where the wall takes over."""
        if self.kind == "tabulated":
            r0 = self.r_min_angstrom[name]
            u, f = self.tabulated.energy_and_force(self.pair_types.index(name), np.array([r0]))
            return float(u[0]), float(-f[0])
        return self.law(name).join()

    def core_expression(self, name: str) -> sympy.Expr:
        """u(r) for r < r_min as a sympy expression (the wall, joined C¹ to the law at r_min)."""
        u0, du0 = self.core_join(name)
        core = self.core[name]
        return symbolic.core_expression(self.r_min_angstrom[name], u0, du0,
                                        core["stiffness_ev_per_angstrom2"], core["length_angstrom"])

    def outer_expression(self, name: str) -> sympy.Expr:
        """u(r) of a bonded law beyond r_max as a sympy expression (the outer wall, joined C¹ at r_max)."""
        if self.kind == "tabulated":
            t = self.pair_types.index(name)
            r1, u1, du1 = self.tabulated.outer_join(t)
            core = self.core[name]
            return symbolic.outer_wall_expression(r1, u1, du1, core["stiffness_ev_per_angstrom2"],
                                                  core["length_angstrom"])
        return self.law(name).outer()

    def pair_expressions(self) -> dict[str, sympy.Expr]:
        """``{pair name: Piecewise u(r)}``: wall, shifted law, zero beyond r_c; the full pair energy in eV."""
        self._require_closed_form()
        r = symbolic.R
        return {
            name: sympy.Piecewise(
                (self.core_expression(name), r < self.r_min_angstrom[name]),
                (self.body_expression(name), r < self.law(name).r_end),
                (self.outer_expression(name) if name in self.r_max_angstrom else sympy.Integer(0), True),
            )
            for name in self.pair_types
        }

    def _require_closed_form(self):
        if self.kind != "closed_form":
            raise ModelError("a tabulated model has no closed-form expressions")

    # --- numbers ----------------------------------------------------------------------------
    def energy_and_force(self, pair_type, r) -> tuple[np.ndarray, np.ndarray]:
        """u(r) in eV and f(r) = −du/dr in eV/Å, vectorised over broadcastable ``pair_type`` and ``r``."""
        if self.kind == "tabulated":
            return self.tabulated.energy_and_force(pair_type, r)
        pair_type, r = np.broadcast_arrays(np.asarray(pair_type, dtype=np.int64), np.asarray(r, dtype=float))
        u = np.zeros(r.shape)
        f = np.zeros(r.shape)
        for t, name in enumerate(self.pair_types):
            of_type = pair_type == t
            if of_type.any():
                u[of_type], f[of_type] = self.law(name).energy_and_force(r[of_type])
        return u, f

    # --- files --------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        data = {
            "schema": SCHEMA,
            "schema_version": SCHEMA_VERSION,
            "kind": self.kind,
            "species": list(self.species),
            "masses_amu": list(self.masses_amu),
            "cutoff_angstrom": self.cutoff_angstrom,
            "cutoff_treatment": CUTOFF_TREATMENT,
            "pair_types": {},
            "provenance": self.provenance,
        }
        for name in self.pair_types:
            entry = {"r_min_angstrom": float(self.r_min_angstrom[name]), "core": dict(self.core[name])}
            if name in self.r_max_angstrom:
                entry["r_max_angstrom"] = float(self.r_max_angstrom[name])
            if self.kind == "closed_form":
                entry = {"expression": symbolic.to_text(self.expressions[name]), **entry}
            data["pair_types"][name] = entry
        if self.kind == "tabulated":
            data["tabulated"] = self.tabulated.to_dict()
        if self.threebody is not None:
            data["threebody"] = self.threebody.to_dict()
        if self.is_molecular:
            data["topology"] = {"kind": "molecular",
                                "bond_cutoff_angstrom": {n: float(c) for n, c in self.bond_cutoff_angstrom.items()}}
        return data

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``model.json`` atomically."""
        return write_text_atomic(path, json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n")

    @classmethod
    def from_dict(cls, data, label: str = "model") -> Model:
        return _model_from_dict(data, label)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Model:
        return load_model(path)


def _number(value, where: str, positive: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ModelError(f"{where}: expected a finite number, got {value!r}")
    if positive and value <= 0:
        raise ModelError(f"{where}: must be positive, got {value!r}")
    return float(value)


def _model_from_dict(data, label: str) -> Model:
    if not isinstance(data, dict):
        raise ModelError(f"{label}: the top level must be a JSON object")
    if data.get("schema") != SCHEMA:
        raise ModelError(f"{label}: schema: expected {SCHEMA!r}, got {data.get('schema')!r}")
    if data.get("schema_version") != SCHEMA_VERSION:
        raise ModelError(f"{label}: schema_version: this mld reads version {SCHEMA_VERSION}, "
                         f"the file has {data.get('schema_version')!r}")
    kind = data.get("kind")
    if kind not in KINDS:
        raise ModelError(f"{label}: kind: expected one of {', '.join(KINDS)}, got {kind!r}")
    species = data.get("species")
    if (not isinstance(species, list) or not species
            or not all(isinstance(s, str) and s.isalpha() and len(s) <= 3 for s in species)
            or len(set(species)) != len(species)):
        raise ModelError(f"{label}: species: expected a list of distinct element symbols")
    masses = data.get("masses_amu")
    if not isinstance(masses, list) or len(masses) != len(species):
        raise ModelError(f"{label}: masses_amu: expected one mass per species")
    masses = [_number(m, f"{label}: masses_amu") for m in masses]
    cutoff = _number(data.get("cutoff_angstrom"), f"{label}: cutoff_angstrom")
    if data.get("cutoff_treatment") != CUTOFF_TREATMENT:
        raise ModelError(f"{label}: cutoff_treatment: only {CUTOFF_TREATMENT!r} is supported")
    pairs = data.get("pair_types")
    bond_cutoffs = _topology_from_dict(data.get("topology"), f"{label}: topology", species)
    names = pair_type_names(species)
    if bond_cutoffs is not None and isinstance(pairs, dict):
        try:
            names = checked_pair_types(list(pairs), species, f"{label}")
        except ForceMatchingError as exc:
            raise ModelError(str(exc)) from None
    if not isinstance(pairs, dict) or sorted(pairs) != sorted(names):
        raise ModelError(f"{label}: pair_types: expected exactly {', '.join(names)}")
    provenance = data.get("provenance", {})
    if not isinstance(provenance, dict):
        raise ModelError(f"{label}: provenance: expected a JSON object")

    r_min, r_max, core, expressions = {}, {}, {}, {}
    for name in names:
        entry = pairs[name]
        where = f"{label}: pair_types.{name}"
        if not isinstance(entry, dict):
            raise ModelError(f"{where}: expected a JSON object")
        r_min[name] = _number(entry.get("r_min_angstrom"), f"{where}.r_min_angstrom")
        if is_intramolecular(name):
            r_max[name] = _number(entry.get("r_max_angstrom"), f"{where}.r_max_angstrom")
            if r_min[name] >= r_max[name]:
                raise ModelError(f"{where}.r_max_angstrom: {r_max[name]} is not above r_min {r_min[name]}")
        elif r_min[name] >= cutoff:
            raise ModelError(f"{where}.r_min_angstrom: {r_min[name]} is not below the cutoff {cutoff}")
        entry_core = entry.get("core", {})
        if not isinstance(entry_core, dict):
            raise ModelError(f"{where}.core: expected a JSON object")
        core[name] = {
            "stiffness_ev_per_angstrom2": _number(entry_core.get("stiffness_ev_per_angstrom2",
                                                                 CORE_STIFFNESS_EV_PER_ANGSTROM2),
                                                  f"{where}.core.stiffness_ev_per_angstrom2"),
            "length_angstrom": _number(entry_core.get("length_angstrom", CORE_LENGTH_ANGSTROM),
                                       f"{where}.core.length_angstrom"),
        }
        if kind == "closed_form":
            expressions[name] = parse_expression(entry.get("expression"), f"{where}.expression")

    term = _threebody_from_dict(data["threebody"], f"{label}: threebody", tuple(species)) if "threebody" in data else None
    if kind == "closed_form":
        model = Model(kind=kind, species=tuple(species), masses_amu=tuple(masses), cutoff_angstrom=cutoff,
                      r_min_angstrom=r_min, core=core, expressions=expressions, provenance=provenance,
                      threebody=term, r_max_angstrom=r_max, bond_cutoff_angstrom=bond_cutoffs)
        for name in names:  # the law must be finite where it is used
            _check_finite_join(model, name, label)
        return model

    table = data.get("tabulated")
    if not isinstance(table, dict):
        raise ModelError(f"{label}: tabulated: expected the tables as a JSON object")
    try:
        tabulated = TabulatedModel.from_dict(table, label=f"{label}: tabulated")
    except ForceMatchingError as exc:
        raise ModelError(str(exc)) from None
    if (list(tabulated.species) != species or abs(tabulated.cutoff_angstrom - cutoff) > 1e-12
            or list(tabulated.pair_types) != list(names)):
        raise ModelError(f"{label}: tabulated: species, pair types or cutoff differ from the model's")
    for t, name in enumerate(names):
        if abs(tabulated.r_min_angstrom[t] - r_min[name]) > 1e-9 or (
                name in r_max and abs(tabulated.r_end(t) - r_max[name]) > 1e-9):
            raise ModelError(f"{label}: pair_types.{name}: r_min_angstrom or r_max_angstrom differ from the table's")
    return Model(kind=kind, species=tuple(species), masses_amu=tuple(masses), cutoff_angstrom=cutoff,
                 r_min_angstrom=r_min, core=core, tabulated=tabulated, provenance=provenance, threebody=term,
                 r_max_angstrom=r_max, bond_cutoff_angstrom=bond_cutoffs)


def bond_matrix(bond_cutoffs: dict, species) -> np.ndarray:
    """(S, S) matrix of bond cutoffs in Å from ``{species pair: Å}`` (absent pairs: 0, never bonded)."""
    species = tuple(species)
    matrix = np.zeros((len(species), len(species)))
    for name, cutoff in bond_cutoffs.items():
        a, b = (species.index(x) for x in species_of_pair(name, species))
        matrix[a, b] = matrix[b, a] = float(cutoff)
    return matrix


def _topology_from_dict(data, where: str, species: list) -> dict | None:
    """The bond cutoffs of a molecular model ({species pair: Å}), or None for the atomic topology."""
    if data is None:
        return None
    if not isinstance(data, dict) or data.get("kind") != "molecular":
        raise ModelError(f"{where}.kind: expected 'molecular'")
    cutoffs = data.get("bond_cutoff_angstrom")
    if not isinstance(cutoffs, dict) or not cutoffs:
        raise ModelError(f"{where}.bond_cutoff_angstrom: expected a JSON object of species pair: length in Å")
    base = pair_type_names(species)
    for name in cutoffs:
        if name not in base:
            raise ModelError(f"{where}.bond_cutoff_angstrom: {name!r} is not one of {', '.join(base)}")
    out = {n: _number(c, f"{where}.bond_cutoff_angstrom.{n}", positive=False) for n, c in cutoffs.items()}
    negative = [n for n, c in out.items() if c < 0]
    if negative:
        raise ModelError(f"{where}.bond_cutoff_angstrom.{negative[0]}: must be ≥ 0 Å (0: never bonded)")
    return out


def _threebody_from_dict(data, where: str, species: tuple):
    """The optional three-body section: closed-form laws (parsed safely) or Gaussian × Legendre tables."""
    if not isinstance(data, dict):
        raise ModelError(f"{where}: expected a JSON object")
    cutoff = _number(data.get("cutoff_angstrom"), f"{where}.cutoff_angstrom")
    names = threebody.triplet_type_names(species)
    try:
        if data.get("kind") == "closed_form":
            entries = data.get("triplet_types")
            if not isinstance(entries, dict) or not entries:
                raise ModelError(f"{where}.triplet_types: expected a JSON object with at least one law")
            unknown = sorted(set(entries) - set(names))
            if unknown:
                raise ModelError(f"{where}.triplet_types: unknown triplet type(s) {', '.join(unknown)} "
                                 f"(known: {', '.join(names)})")
            expressions = {}
            for name, entry in entries.items():
                text = entry.get("expression") if isinstance(entry, dict) else None
                expressions[name] = parse_expression(text, f"{where}.triplet_types.{name}.expression",
                                                     variables=threebody.VARIABLES)
            term = threebody.ThreeBodyLaws(species, cutoff, expressions)
            problem = term.check()
            if problem:
                raise ModelError(f"{where}.triplet_types.{problem}")
            return term
        if data.get("kind") == "gaussian_legendre":
            table = data.get("coefficients_ev")
            if not isinstance(table, dict) or sorted(table) != sorted(names):
                raise ModelError(f"{where}.coefficients_ev: expected exactly {', '.join(names)}")
            centres = data.get("radial_centres_angstrom")
            if not isinstance(centres, list) or not centres:
                raise ModelError(f"{where}.radial_centres_angstrom: expected a list of distances")
            degree = data.get("legendre_degree")
            if isinstance(degree, bool) or not isinstance(degree, int) or not 0 <= degree <= 12:
                raise ModelError(f"{where}.legendre_degree: expected an integer from 0 to 12")
            return threebody.ThreeBodyTable(
                species, cutoff, [_number(c, f"{where}.radial_centres_angstrom", positive=False) for c in centres],
                _number(data.get("radial_width_angstrom"), f"{where}.radial_width_angstrom"), degree,
                np.array([table[n] for n in names], dtype=float))
    except threebody.ThreeBodyError as exc:
        raise ModelError(f"{where}: {exc}") from None
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ModelError):
            raise
        raise ModelError(f"{where}: malformed ({type(exc).__name__})") from None
    raise ModelError(f"{where}.kind: expected 'closed_form' or 'gaussian_legendre', got {data.get('kind')!r}")


def _check_finite_join(model: Model, name: str, label: str) -> None:
    try:
        u0, du0 = model.core_join(name)
        finite = math.isfinite(u0) and math.isfinite(du0)
    except (ValueError, TypeError, ZeroDivisionError, OverflowError):
        finite = False
    if not finite:
        raise ModelError(f"{label}: pair_types.{name}.expression: not finite at r_min or at the cutoff")


def load_model(path: str | os.PathLike) -> Model:
    """Read and validate ``model.json``; raises ``ModelError`` naming the file and field on bad input."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.json"
    if not path.is_file():
        raise ModelError(f"{path}: no such model file")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise ModelError(f"{path}: larger than {MAX_FILE_BYTES // 1_000_000} MB, not a model file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ModelError(f"{path}: not valid JSON ({type(exc).__name__})") from None
    return _model_from_dict(data, str(path))
