"""C export: a header and a source file with the closed-form laws, printed by sympy's C99 printer.

u(r) and −u'(r)/r of each species pair share common subexpressions (sympy ``cse``), so an
exponential is evaluated once for both; a many-body model's triplet laws w(r1, r2, c) are printed
the same way, w with its three partial derivatives. ``mld_energy_forces`` is the minimum-image
reference of the kernel contract (:mod:`simulate.kernels`): O(N²) pairs, then for a many-body model
every centre's pairs of neighbours inside r_3, in the same arithmetic order as the kernels that
``discover.codegen`` writes, so C and the Python kernels agree to rounding. Build with e.g.
``cc -O2 -shared -fPIC mld_pairs.c -o libmld_pairs.so -lm``.
"""

from __future__ import annotations

from pathlib import Path

import sympy
from sympy.printing.c import C99CodePrinter

from discover import threebody
from discover.export.pairs import ExportError, PairSource, force_over_r_expression, pair_source
from simulate.fileio import write_text_atomic

HEADER_FILE = "mld_pairs.h"
SOURCE_FILE = "mld_pairs.c"


class _Printer(C99CodePrinter):
    """C99 with every Float written as the exact double it stands for."""

    def _print_Float(self, expr):
        return repr(float(expr))


def _cse_function(signature: str, comment: str, outputs: dict[str, sympy.Expr]) -> str:
    """A static C function computing ``*name = expression`` for each output, sharing subexpressions."""
    subexpressions, reduced = sympy.cse(list(outputs.values()), symbols=sympy.numbered_symbols("t"))
    printer = _Printer()

    def c(expr) -> str:  # one line: the printer spreads ternaries over several
        return " ".join(printer.doprint(expr).split())

    body = []
    for symbol, value in subexpressions:
        c_type = "int" if isinstance(value, sympy.logic.boolalg.Boolean) else "double"
        body.append(f"    const {c_type} {symbol} = {c(value)};")
    body += [f"    *{name} = {c(value)};" for name, value in zip(outputs, reduced)]
    return "\n".join([f"/* {comment.replace('*/', '* /')} */", signature, "{", *body, "}"])


def pair_function(source: PairSource, type_i: int, type_j: int, c_name: str) -> str:
    """A static C function ``c_name(r, &u, &force_over_r)`` for one species pair."""
    u = source.expressions.expression(type_i, type_j)
    return _cse_function(f"static void {c_name}(double r, double *u_ev, double *force_over_r)", f"u(r) = {u}",
                         {"u_ev": u, "force_over_r": force_over_r_expression(u)})


def triplet_function(name: str, w: sympy.Expr, c_name: str) -> str:
    """A static C function ``c_name(r1, r2, c, &w, &dw_dr1, &dw_dr2, &dw_dc)`` for one triplet type."""
    return _cse_function(
        f"static void {c_name}(double r1, double r2, double c, double *w, double *dw_dr1, double *dw_dr2, "
        "double *dw_dc)",
        f"w_{name}(r1, r2, c) = {w}",
        {"w": w, "dw_dr1": sympy.diff(w, threebody.R1), "dw_dr2": sympy.diff(w, threebody.R2),
         "dw_dc": sympy.diff(w, threebody.C)})


def _threebody_laws(source: PairSource):
    """The closed-form three-body laws of a many-body source, None for a pairwise one."""
    if source.threebody_cutoff_angstrom is None:
        return None
    term = source.model.threebody
    if not isinstance(term, threebody.ThreeBodyLaws):
        raise ExportError(f"{source.label}: the C export prints closed-form three-body laws; this model's "
                          "three-body term is a Gaussian × Legendre table (use the ase export)")
    return term


def header_text(source: PairSource) -> str:
    n = source.n_species
    laws = _threebody_laws(source)
    threebody_lines = "" if laws is None else f"""
#define MLD_THREEBODY_CUTOFF_ANGSTROM {float(laws.cutoff_angstrom)!r}

/* The three-body term w of the triplet j-k-l centred on atom k, of the distances r_kj, r_kl and the
 * cosine of the angle at k, with its partial derivatives (eV, eV/Angstrom, eV/Angstrom, eV); all 0
 * when r_kj or r_kl >= MLD_THREEBODY_CUTOFF_ANGSTROM. Symmetric under swapping (j, r_kj) with (l, r_kl). */
void mld_triplet_energy_gradient(int type_k, int type_j, int type_l, double r_kj, double r_kl, double cos_theta,
                                 double *w_ev, double *dw_dr_kj, double *dw_dr_kl, double *dw_dcos);
"""
    what = "pair" if laws is None else "many-body"
    loss = ("atom_loss[k] = sum_j u(r_kj), atom k's agent loss in eV." if laws is None else
            "atom_loss[k] = sum_j u(r_kj) + the w of every triplet\n * centred on k, atom k's agent loss in eV; "
            "each triplet counts once in the energy.")
    loops = "O(N^2) minimum image" if laws is None else "O(N^2) pairs and every triplet, minimum image"
    return f"""/* mld {what} model, written by discover.export.c from {source.label}.
 * Units: Angstrom, eV, amu. Species k is atom type k. */
#ifndef MLD_PAIRS_H
#define MLD_PAIRS_H

#ifdef __cplusplus
extern "C" {{
#endif

#define MLD_N_SPECIES {n}
#define MLD_CUTOFF_ANGSTROM {float(source.cutoff_angstrom)!r}

extern const char *const mld_species[MLD_N_SPECIES];
extern const double mld_masses_amu[MLD_N_SPECIES];

/* u(r) in eV and -u'(r)/r in eV/Angstrom^2 of the pair (type_i, type_j); both 0 for r >= cutoff.
 * The force on i from j is force_over_r * (x_i - x_j). */
void mld_pair_energy_force(int type_i, int type_j, double r, double *u_ev, double *force_over_r);
{threebody_lines}
/* Total energy (eV) of n_atoms atoms in an orthorhombic periodic box (3 lengths, Angstrom),
 * {loops}. positions and forces are (n_atoms, 3) row-major; forces in eV/Angstrom;
 * {loss} */
double mld_energy_forces(int n_atoms, const double *positions, const int *types, const double *box,
                         double *forces, double *atom_loss);

#ifdef __cplusplus
}}
#endif

#endif
"""


def _triplet_source(laws, n: int) -> str:
    """The triplet functions, their dispatcher and ``mld_triplet_energies_forces`` (the O(N·m²) loop)."""
    functions, cases = [], []
    for t, name in enumerate(laws.triplet_types):
        if name in laws.expressions:
            c_name = f"triplet_{t}_{name}"
            functions.append(triplet_function(name, laws.expressions[name], c_name))
            cases.append(f"    case {t}: {c_name}(r1, r2, cos_theta, w_ev, &g1, &g2, dw_dcos); break;")
    n_pairs = n * (n + 1) // 2
    return f"""
{chr(10).join(functions)}

void mld_triplet_energy_gradient(int type_k, int type_j, int type_l, double r_kj, double r_kl, double cos_theta,
                                 double *w_ev, double *dw_dr_kj, double *dw_dr_kl, double *dw_dcos)
{{
    *w_ev = 0.0;
    *dw_dr_kj = 0.0;
    *dw_dr_kl = 0.0;
    *dw_dcos = 0.0;
    if (r_kj >= MLD_THREEBODY_CUTOFF_ANGSTROM || r_kl >= MLD_THREEBODY_CUTOFF_ANGSTROM) return;
    /* canonical order: r1 goes to the neighbour of the lower species */
    const int swap = type_j > type_l;
    const int a = swap ? type_l : type_j;
    const int b = swap ? type_j : type_l;
    const double r1 = swap ? r_kl : r_kj;
    const double r2 = swap ? r_kj : r_kl;
    double g1 = 0.0, g2 = 0.0;
    /* index of the triplet type (centre, unordered neighbours) in the order OOO, OOH, HOH, OHO, ... */
    switch (type_k * {n_pairs} + a * {n} - a * (a - 1) / 2 + (b - a)) {{
{chr(10).join(cases)}
    default: break;
    }}
    *dw_dr_kj = swap ? g2 : g1;
    *dw_dr_kl = swap ? g1 : g2;
}}

/* Adds every triplet's w and -grad w to energy, forces and atom_loss; returns the energy, NAN when out of memory. */
static double mld_triplet_energies_forces(int n_atoms, const double *positions, const int *types, const double *box,
                                          double *forces, double *atom_loss, double energy)
{{
    int *near = malloc((size_t)(n_atoms > 0 ? n_atoms : 1) * sizeof *near);
    double *rnear = malloc((size_t)(n_atoms > 0 ? n_atoms : 1) * sizeof *rnear);
    double *dvec = malloc((size_t)(n_atoms > 0 ? n_atoms : 1) * 3 * sizeof *dvec);
    if (near == NULL || rnear == NULL || dvec == NULL) {{
        free(near);
        free(rnear);
        free(dvec);
        return NAN;
    }}
    for (int k = 0; k < n_atoms; k++) {{
        int m = 0;
        for (int j = 0; j < n_atoms; j++) {{
            if (j == k) continue;
            double d[3];
            for (int c = 0; c < 3; c++) {{
                d[c] = positions[3 * j + c] - positions[3 * k + c];
                d[c] -= box[c] * nearbyint(d[c] / box[c]);
            }}
            const double r = sqrt(d[0] * d[0] + d[1] * d[1] + d[2] * d[2]);
            if (r < MLD_THREEBODY_CUTOFF_ANGSTROM) {{
                near[m] = j;
                rnear[m] = r;
                for (int c = 0; c < 3; c++) dvec[3 * m + c] = d[c];
                m++;
            }}
        }}
        for (int a = 0; a < m; a++) {{
            for (int b = a + 1; b < m; b++) {{
                const int j = near[a], l = near[b];
                const double r1 = rnear[a], r2 = rnear[b];
                const double *d1 = dvec + 3 * a, *d2 = dvec + 3 * b;
                const double inv12 = 1.0 / (r1 * r2);
                const double cos_theta = (d1[0] * d2[0] + d1[1] * d2[1] + d1[2] * d2[2]) * inv12;
                double w, g1, g2, gc;
                mld_triplet_energy_gradient(types[k], types[j], types[l], r1, r2, cos_theta, &w, &g1, &g2, &gc);
                energy += w;
                atom_loss[k] += w;
                for (int c = 0; c < 3; c++) {{
                    /* d cos/d x_j = (u2 - cos u1)/r1, and alike for l; the centre takes minus both */
                    const double grad_j = g1 * d1[c] / r1 + gc * (d2[c] * inv12 - cos_theta * d1[c] / (r1 * r1));
                    const double grad_l = g2 * d2[c] / r2 + gc * (d1[c] * inv12 - cos_theta * d2[c] / (r2 * r2));
                    forces[3 * j + c] -= grad_j;
                    forces[3 * l + c] -= grad_l;
                    forces[3 * k + c] += grad_j + grad_l;
                }}
            }}
        }}
    }}
    free(near);
    free(rnear);
    free(dvec);
    return energy;
}}
"""


def source_text(source: PairSource) -> str:
    if source.expressions is None:
        raise ExportError(f"{source.label}: the C export prints closed-form pair expressions; "
                          "a kernel module holds compiled numbers only")
    laws = _threebody_laws(source)
    n = source.n_species
    functions, cases = [], []
    for index, ((a, b), name) in enumerate(zip(source.type_pairs(), source.pair_names())):
        c_name = f"pair_{index}_{name}"
        functions.append(pair_function(source, a, b, c_name))
        cases.append(f"    case {index}: {c_name}(r, u_ev, force_over_r); return;")
    species = ", ".join(f'"{s}"' for s in source.species)
    masses = ", ".join(repr(float(m)) for m in source.masses_amu)
    what = "pair" if laws is None else "many-body"
    includes = "#include <math.h>\n" if laws is None else "#include <math.h>\n#include <stdlib.h>\n"
    triplets = "" if laws is None else _triplet_source(laws, n)
    finish = ("    return energy;" if laws is None else
              "    return mld_triplet_energies_forces(n_atoms, positions, types, box, forces, atom_loss, energy);")
    return f"""/* mld {what} model, written by discover.export.c from {source.label}. */
{includes}
#include "{HEADER_FILE}"

const char *const mld_species[MLD_N_SPECIES] = {{{species}}};
const double mld_masses_amu[MLD_N_SPECIES] = {{{masses}}};

{chr(10).join(functions)}

void mld_pair_energy_force(int type_i, int type_j, double r, double *u_ev, double *force_over_r)
{{
    *u_ev = 0.0;
    *force_over_r = 0.0;
    if (r >= MLD_CUTOFF_ANGSTROM) return;
    const int a = type_i < type_j ? type_i : type_j;
    const int b = type_i < type_j ? type_j : type_i;
    /* index of the unordered pair (a, b) in the order OO, OH, HH, ... */
    switch (a * {n} - a * (a - 1) / 2 + (b - a)) {{
{chr(10).join(cases)}
    }}
}}
{triplets}
double mld_energy_forces(int n_atoms, const double *positions, const int *types, const double *box,
                         double *forces, double *atom_loss)
{{
    double energy = 0.0;
    for (int k = 0; k < 3 * n_atoms; k++) forces[k] = 0.0;
    for (int k = 0; k < n_atoms; k++) atom_loss[k] = 0.0;
    for (int i = 0; i < n_atoms; i++) {{
        for (int j = i + 1; j < n_atoms; j++) {{
            double d[3];
            for (int c = 0; c < 3; c++) {{
                d[c] = positions[3 * i + c] - positions[3 * j + c];
                /* nearbyint rounds half to even, as the Python kernels' round() does */
                d[c] -= box[c] * nearbyint(d[c] / box[c]);
            }}
            const double r = sqrt(d[0] * d[0] + d[1] * d[1] + d[2] * d[2]);
            if (r < MLD_CUTOFF_ANGSTROM) {{
                double u, f;
                mld_pair_energy_force(types[i], types[j], r, &u, &f);
                energy += u;
                atom_loss[i] += u;
                atom_loss[j] += u;
                for (int c = 0; c < 3; c++) {{
                    forces[3 * i + c] += f * d[c];
                    forces[3 * j + c] -= f * d[c];
                }}
            }}
        }}
    }}
{finish}
}}
"""


def export_c(model, out_dir) -> list[Path]:
    """Write ``mld_pairs.h`` and ``mld_pairs.c`` into ``out_dir``; return their paths.

    A many-body ``discover.model.Model`` with closed-form three-body laws gets its triplet terms too.
    """
    source = pair_source(model, "c")
    text = source_text(source)  # first: it refuses a kernel module before anything is written
    out_dir = Path(out_dir)
    return [
        write_text_atomic(out_dir / HEADER_FILE, header_text(source)),
        write_text_atomic(out_dir / SOURCE_FILE, text),
    ]
