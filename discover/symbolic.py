"""Symbolic pair laws: tidying, rounding, the shifted-force cutoff, the repulsive core, equations.

A pair law is a sympy expression u(r) of the one symbol ``R`` (the distance in Å; energy in eV).
Search engines may also use ``INV_R`` = 1/r as an input; ``from_engine_variables`` replaces it.

Everything that turns a raw law into what the simulator runs lives here, once:

* the shifted-force cutoff (Allen & Tildesley, *Computer Simulation of Liquids*, 2nd ed., §2.8):
  u_sf(r) = u(r) − u(r_c) − (r − r_c) u'(r_c), so energy and force both reach 0 at r_c. A constant or
  a term linear in r therefore has no effect at all, and ``drop_shift_invariant_terms`` removes them;
* the repulsive core below the smallest sampled distance r_min: the one formula of
  ``discover.force_matching.repulsive_core``, evaluated here on sympy objects (``core_expression``);
* the text form of a law in mld's safe grammar (``to_text``), which ``discover.model`` parses back
  without executing anything.
"""

from __future__ import annotations

import math
import types

import sympy
from sympy.printing.str import StrPrinter

from discover import force_matching

R = sympy.Symbol("r", positive=True)
INV_R = sympy.Symbol("inv_r", positive=True)

# name in the safe grammar -> (sympy constructor, arity); the only functions a model may call
FUNCTIONS = {
    "exp": (sympy.exp, 1),
    "log": (sympy.log, 1),
    "sqrt": (sympy.sqrt, 1),
    "tanh": (sympy.tanh, 1),
    "sinh": (sympy.sinh, 1),
    "cosh": (sympy.cosh, 1),
    "sin": (sympy.sin, 1),
    "cos": (sympy.cos, 1),
    "abs": (sympy.Abs, 1),
    "pow": (sympy.Pow, 2),
}
# exponents closer than this to an integer are taken to be that integer (search and refit noise)
INTEGER_EXPONENT_TOLERANCE = 1e-3


# --- text form ------------------------------------------------------------------------------


class _SafePrinter(StrPrinter):
    """sympy's str printer restricted to mld's grammar: full-precision floats, ``abs``, no named constants."""

    def _print_Float(self, expr):
        return repr(float(expr))

    def _print_Abs(self, expr):
        return f"abs({self._print(expr.args[0])})"

    def _print_Exp1(self, expr):
        return "exp(1)"

    def _print_Pi(self, expr):
        return repr(math.pi)

    def _print_Rational(self, expr):
        return f"({expr.p}/{expr.q})"


def to_text(expr: sympy.Expr) -> str:
    """The law as text in mld's safe grammar (``discover.model.parse_expression`` reads it back)."""
    return _SafePrinter().doprint(expr)


# --- tidying and rounding ---------------------------------------------------------------------


def from_engine_variables(expr: sympy.Expr) -> sympy.Expr:
    """Replace the engine input ``inv_r`` by 1/r."""
    return expr.xreplace({INV_R: 1 / R})


def round_integer_exponents(expr: sympy.Expr, tolerance: float = INTEGER_EXPONENT_TOLERANCE) -> sympy.Expr:
    """Float exponents within ``tolerance`` of an integer become that integer: r**(-11.9996) -> r**(-12)."""
    replacements = {}
    for power in expr.atoms(sympy.Pow):
        exponent = power.exp
        if isinstance(exponent, sympy.Float) and abs(float(exponent) - round(float(exponent))) < tolerance:
            replacements[power] = sympy.Pow(power.base, sympy.Integer(round(float(exponent))))
    return expr.xreplace(replacements) if replacements else expr


def round_constants(expr: sympy.Expr, digits: int = 6) -> sympy.Expr:
    """Every float constant rounded to ``digits`` significant digits (integers are left alone)."""
    def rounded(value: float) -> sympy.Float:
        return sympy.Float(float(f"{value:.{digits - 1}e}"))

    return expr.xreplace({f: rounded(float(f)) for f in expr.atoms(sympy.Float)})


def drop_shift_invariant_terms(expr: sympy.Expr, bonded: bool = False) -> sympy.Expr:
    """Remove additive terms a + b·r: under the shifted-force cutoff they change neither energy nor force.

    A bonded law has no shift: only a constant term is removed (it changes no force).
    """
    expr = sympy.expand(expr, deep=False, mul=True, multinomial=False, power_exp=False, power_base=False, log=False)
    order = 1 if bonded else 2
    kept = [term for term in sympy.Add.make_args(expr) if sympy.diff(term, R, order) != 0]
    return sympy.Add(*kept)


def tidy(expr: sympy.Expr) -> sympy.Expr:
    """A cheap canonical form: numeric factors pulled out of powers, powers of one base merged.

    (a/r)**12 -> a**12 * r**(-12). Full ``sympy.simplify`` is avoided: it is slow on floats and
    does not make these laws shorter.
    """
    expr = round_integer_exponents(expr)
    expr = sympy.powsimp(sympy.expand_power_base(expr, force=True))
    expanded = expand_terms(expr)
    return expanded if complexity(expanded) <= complexity(expr) else expr


def expand_terms(expr: sympy.Expr) -> sympy.Expr:
    """Products of sums multiplied out into additive terms, and nothing more.

    exp(a + b) is not split and (r − r₀)² is not multiplied out, so a Gaussian exp(−d (r − r₀)²)
    keeps its centre and width rather than turning into 1e−114·exp(r (310 − 92 r)): the same
    function, unreadable and ill-conditioned once its constants are rounded.
    """
    return sympy.expand(expr, power_exp=False, multinomial=False, log=False)


def complexity(expr: sympy.Expr) -> int:
    """Nodes in the expression tree: the engine-independent size of a law."""
    return sum(1 for _ in sympy.preorder_traversal(expr))


def parameterize(expr: sympy.Expr, prefix: str = "c") -> tuple[sympy.Expr, list[sympy.Symbol], list[float]]:
    """Each float constant replaced by a symbol: (template, symbols, values). Integers stay fixed."""
    floats = sorted(expr.atoms(sympy.Float), key=lambda f: sympy.default_sort_key(f))
    symbols = [sympy.Symbol(f"{prefix}{k}", real=True) for k in range(len(floats))]
    template = expr.xreplace(dict(zip(floats, symbols)))
    return template, symbols, [float(f) for f in floats]


# --- the cutoff and the core ------------------------------------------------------------------


def value_at(expr: sympy.Expr, r: float) -> float:
    """u(r) as a float, evaluated with extra working precision."""
    return float(sympy.N(expr.subs(R, sympy.Float(r, 30)), 30))


def shifted_force(u: sympy.Expr, cutoff_angstrom: float) -> sympy.Expr:
    """u(r) − u(r_c) − (r − r_c) u'(r_c): energy and force continuous and zero at r_c."""
    u_rc = value_at(u, cutoff_angstrom)
    du_rc = value_at(sympy.diff(u, R), cutoff_angstrom)
    return u - sympy.Float(u_rc) - (R - sympy.Float(cutoff_angstrom)) * sympy.Float(du_rc)


class _SympyAsNumpy:
    """The two numpy functions ``repulsive_core`` uses, on sympy objects."""

    @staticmethod
    def maximum(a, b):
        return sympy.Max(a, b)

    @staticmethod
    def expm1(x):
        return sympy.exp(x) - 1


def _core_on_sympy():
    # The same code object as force_matching.repulsive_core, run with sympy in place of numpy:
    # one formula for the wall whether it is evaluated on arrays, printed as code, or exported.
    core = force_matching.repulsive_core
    namespace = dict(core.__globals__)
    namespace["np"] = _SympyAsNumpy
    return types.FunctionType(core.__code__, namespace, "repulsive_core_sympy", core.__defaults__)


_REPULSIVE_CORE_SYMPY = _core_on_sympy()


def core_expression(r0: float, u0: float, du0: float, stiffness: float, length: float) -> sympy.Expr:
    """The repulsive wall u(r) for r < r0 as a sympy expression (see ``force_matching.repulsive_core``)."""
    u, _ = _REPULSIVE_CORE_SYMPY(R, sympy.Float(r0), sympy.Float(u0), sympy.Float(du0),
                                 sympy.Float(stiffness), sympy.Float(length))
    return sympy.expand(u)


def outer_wall_expression(r1: float, u1: float, du1: float, stiffness: float, length: float) -> sympy.Expr:
    """A bonded law beyond r1 as a sympy expression (see ``force_matching.outer_wall``): the core, mirrored."""
    core = core_expression(r1, u1, -du1, stiffness, length)
    return sympy.expand(core.xreplace({R: 2 * sympy.Float(r1) - R}))


# --- equations ------------------------------------------------------------------------------------


def agent_loss_text(species: str, species_names, pair_name_of, triplet_names=(), intra_names=()) -> tuple[str, str]:
    """H_A(k) as a sum over neighbour species, in plain text and LaTeX.

    ``triplet_names``: the three-body types ``BAC`` centred on this species that have a term; each
    adds Σ_{j<l} w_BAC(r_kj, r_kl, cos θ_jkl) over neighbour pairs j ∈ B, l ∈ C inside r_3.
    ``intra_names``: the bonded laws of a molecular model (``OH_intra``); the species-pair laws then
    act between molecules only, and each bonded law between atoms of k's own molecule.
    """
    plain, latex = [], []
    molecular = bool(intra_names)
    where, where_tex = (", j∉mol(k)", r",\, j \notin \mathrm{mol}(k)") if molecular else ("", "")
    for other in species_names:
        name = pair_name_of(species, other)
        plain.append(f"Σ_{{j∈{other}{where}, r_kj<r_c}} u_{name}(r_kj)")
        latex.append(rf"\sum_{{j \in \mathrm{{{other}}}{where_tex},\, r_{{kj}}<r_c}} u_{{\mathrm{{{name}}}}}(r_{{kj}})")
    for other in species_names:
        name = pair_name_of(species, other) + "_intra"
        if name in intra_names:
            plain.append(f"Σ_{{j∈{other}, j∈mol(k)}} u_{name}(r_kj)")
            tex_name = name.replace("_", r"\_")
            latex.append(rf"\sum_{{j \in \mathrm{{{other}}},\, j \in \mathrm{{mol}}(k)}} "
                         rf"u_{{\mathrm{{{tex_name}}}}}(r_{{kj}})")
    for name in triplet_names:
        first, second = name[0], name[2]
        plain.append(f"Σ_{{j<l; j∈{first}, l∈{second}; r_kj,r_kl<r_3}} w_{name}(r_kj, r_kl, cos θ_jkl)")
        latex.append(rf"\sum_{{j<l;\, j \in \mathrm{{{first}}},\, l \in \mathrm{{{second}}};\, r_{{kj}},r_{{kl}}<r_3}} "
                     rf"w_{{\mathrm{{{name}}}}}(r_{{kj}}, r_{{kl}}, \cos\theta_{{jkl}})")
    return f"H_{species}(k) = " + " + ".join(plain), rf"H_{{\mathrm{{{species}}}}}(k) = " + " + ".join(latex)


def threebody_terms(model) -> dict[str, list[str]]:
    """``{species: [triplet type names centred on it that have a term]}``; empty lists for a pair model."""
    term = getattr(model, "threebody", None)
    centred = {s: [] for s in model.species}
    if term is None:
        return centred
    names = term.triplet_types
    present = names if not hasattr(term, "expressions") else [n for n in names if n in term.expressions]
    for name in present:
        centred[name[1]].append(name)
    return centred


def threebody_markdown(term) -> list[str]:
    """The three-body section of ``equations.md``: cutoff, variables, and each law or the table's shape."""
    from discover import threebody  # threebody imports this module

    r3 = term.cutoff_angstrom
    lines = [
        "## Three-body terms",
        "",
        f"Three-body cutoff r_3 = {r3:.4g} Å. A triplet type BAC is a centre k of species A with two neighbours",
        "j of species B and l of species C, both closer than r_3; r1 = r_kj, r2 = r_kl and c = cos θ_jkl, the",
        "cosine of the angle at the centre. When B = C the law is symmetric in r1 and r2. Each triplet counts",
        "in full in its centre's loss and once in the energy: E = Σ_pairs u + Σ_k Σ_{j<l} w.",
        "",
    ]
    if isinstance(term, threebody.ThreeBodyTable):
        k = len(term.centres_angstrom)
        centres = ", ".join(f"{c:.4g}" for c in term.centres_angstrom)
        lines += [
            (f"Every triplet type ({', '.join(term.triplet_types)}) has a tabulated term, not a closed form: a "
             f"Gaussian × Legendre table of {term.coefficients.size} coefficients ({term.n_parameters} free),"),
            "",
            "- w(r1, r2, c) = Σ_{a,b,n} C_abn φ_a(r1) φ_b(r2) P_n(c), φ_a(r) = exp(−((r − μ_a)/σ)²) (1 − (r/r_3)²)³,",
            (f"  with {k} Gaussians at μ = {centres} Å, width σ = {term.width_angstrom:.4g} Å, and Legendre "
             f"polynomials P_0..P_{term.degree} of c."),
            "",
            (r"$$ w_{\mathrm{BAC}}(r_1, r_2, c) = \sum_{a,b,n} C_{abn}\, \phi_a(r_1)\, \phi_b(r_2)\, P_n(c),"
             r" \quad \phi_a(r) = e^{-((r-\mu_a)/\sigma)^2} \left(1 - (r/r_3)^2\right)^3 $$"),
            "",
        ]
        return lines
    for name in term.triplet_types:
        if name not in term.expressions:
            continue
        w = term.expressions[name]
        lines += [
            f"### w_{name}(r1, r2, c)   (centre {name[1]}, r1 to {name[0]}, r2 to {name[2]})",
            "",
            f"- w(r1, r2, c) = `{to_text(w)}`",
            "",
            f"$$ w_{{\\mathrm{{{name}}}}}(r_1, r_2, c) = {sympy.latex(w)} $$",
            "",
        ]
    missing = [n for n in term.triplet_types if n not in term.expressions]
    if missing:
        lines += [f"Triplet types without a term: {', '.join(missing)}.", ""]
    return lines


def equations_markdown(model) -> str:
    """``equations.md``: each species' agent loss and each pair law, and any three-body term, in plain
    text and LaTeX (eV, Å)."""
    rc = model.cutoff_angstrom
    lines = [
        "# Learned agent losses",
        "",
        f"Units: energies in eV, distances in Å. Cutoff r_c = {rc:.4g} Å. Model kind: {model.kind}"
        + (" with a three-body term." if getattr(model, "threebody", None) is not None else "."),
        "Each atom k of species A follows m_k q̈_k = −∂H_A/∂q_k with",
        "",
    ]
    centred = threebody_terms(model)
    for species in model.species:
        plain, latex = agent_loss_text(species, model.species, model.pair_name, centred[species],
                                       tuple(getattr(model, "r_max_angstrom", {})))
        lines += [f"- `{plain}`", "", f"$$ {latex} $$", ""]
    lines += [
        "Every pair law below is used with the shifted-force cutoff",
        "u_sf(r) = u(r) − u(r_c) − (r − r_c) u′(r_c) for r_min ≤ r < r_c, zero beyond r_c, and below the",
        "smallest sampled distance r_min with the repulsive wall of `discover.force_matching.repulsive_core`.",
        "",
    ]
    if getattr(model, "is_molecular", False):
        bonds = ", ".join(f"{n} {c:.3g} Å" for n, c in model.bond_cutoff_angstrom.items())
        lines += [
            "Molecular topology: atoms closer than the bond cutoff of their species pair are bonded",
            f"({bonds}), and a molecule is a connected group of bonded atoms, assigned on the starting frame.",
            "The species-pair laws act between molecules; a `_intra` law acts between atoms of one molecule,",
            "at any distance: u(r) − u(r_max) on its sampled range [r_min, r_max], with the repulsive wall",
            "below r_min and the outer wall `discover.force_matching.outer_wall` (the wall mirrored) beyond r_max.",
            "",
        ]
    for name in model.pair_types:
        r_min = model.r_min_angstrom[name]
        r_max = getattr(model, "r_max_angstrom", {}).get(name)
        sampled = f"r_min = {r_min:.4g} Å" + (f" to r_max = {r_max:.4g} Å" if r_max is not None else "")
        lines.append(f"## u_{name}(r)   (sampled from {sampled})")
        lines.append("")
        if model.kind == "closed_form":
            u = model.expressions[name]
            force = round_constants(tidy(-sympy.diff(u, R)), 6)
            tex_name = name.replace("_", r"\_")
            lines += [
                f"- u(r) = `{to_text(u)}`",
                f"- f(r) = −du/dr = `{to_text(force)}`",
                "",
                f"$$ u_{{\\mathrm{{{tex_name}}}}}(r) = {sympy.latex(u)} $$",
                "",
                f"$$ f_{{\\mathrm{{{tex_name}}}}}(r) = -\\frac{{du}}{{dr}} = {sympy.latex(force)} $$",
                "",
            ]
        else:
            lines += ["- tabulated (cubic B-spline force, exact antiderivative energy); no closed form.", ""]
    if getattr(model, "threebody", None) is not None:
        lines += threebody_markdown(model.threebody)
    return "\n".join(lines)
