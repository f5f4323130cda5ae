"""C export: a header and a source file with the closed-form pair law, printed by sympy's C99 printer.

u(r) and −u'(r)/r of each species pair share common subexpressions (sympy ``cse``), so an
exponential is evaluated once for both. ``mld_energy_forces`` is the O(N²) minimum-image loop of
the kernel contract (:mod:`simulate.kernels`), in the same arithmetic order, so C and the Python
kernels agree to rounding. Build with e.g. ``cc -O2 -shared -fPIC mld_pairs.c -o libmld_pairs.so -lm``.
"""

from __future__ import annotations

from pathlib import Path

import sympy
from sympy.printing.c import C99CodePrinter

from discover.export.pairs import ExportError, PairSource, force_over_r_expression, pair_source
from simulate.fileio import write_text_atomic

HEADER_FILE = "mld_pairs.h"
SOURCE_FILE = "mld_pairs.c"


class _Printer(C99CodePrinter):
    """C99 with every Float written as the exact double it stands for."""

    def _print_Float(self, expr):
        return repr(float(expr))


def pair_function(source: PairSource, type_i: int, type_j: int, c_name: str) -> str:
    """A static C function ``c_name(r, &u, &force_over_r)`` for one species pair."""
    u = source.expressions.expression(type_i, type_j)
    subexpressions, (u_reduced, f_reduced) = sympy.cse(
        [u, force_over_r_expression(u)], symbols=sympy.numbered_symbols("t")
    )
    printer = _Printer()

    def c(expr) -> str:  # one line: the printer spreads ternaries over several
        return " ".join(printer.doprint(expr).split())

    body = []
    for symbol, value in subexpressions:
        c_type = "int" if isinstance(value, sympy.logic.boolalg.Boolean) else "double"
        body.append(f"    const {c_type} {symbol} = {c(value)};")
    body.append(f"    *u_ev = {c(u_reduced)};")
    body.append(f"    *force_over_r = {c(f_reduced)};")
    law = str(u).replace("*/", "* /")
    return "\n".join([
        f"/* u(r) = {law} */",
        f"static void {c_name}(double r, double *u_ev, double *force_over_r)",
        "{",
        *body,
        "}",
    ])


def header_text(source: PairSource) -> str:
    n = source.n_species
    return f"""/* mld pair model, written by discover.export.c from {source.label}.
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

/* Total energy (eV) of n_atoms atoms in an orthorhombic periodic box (3 lengths, Angstrom),
 * O(N^2) minimum image. positions and forces are (n_atoms, 3) row-major; forces in eV/Angstrom;
 * atom_loss[k] = sum_j u(r_kj), atom k's agent loss in eV. */
double mld_energy_forces(int n_atoms, const double *positions, const int *types, const double *box,
                         double *forces, double *atom_loss);

#ifdef __cplusplus
}}
#endif

#endif
"""


def source_text(source: PairSource) -> str:
    if source.expressions is None:
        raise ExportError(f"{source.label}: the C export prints closed-form pair expressions; "
                          "a kernel module holds compiled numbers only")
    n = source.n_species
    functions, cases = [], []
    for index, ((a, b), name) in enumerate(zip(source.type_pairs(), source.pair_names())):
        c_name = f"pair_{index}_{name}"
        functions.append(pair_function(source, a, b, c_name))
        cases.append(f"    case {index}: {c_name}(r, u_ev, force_over_r); return;")
    species = ", ".join(f'"{s}"' for s in source.species)
    masses = ", ".join(repr(float(m)) for m in source.masses_amu)
    return f"""/* mld pair model, written by discover.export.c from {source.label}. */
#include <math.h>

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
    return energy;
}}
"""


def export_c(model, out_dir) -> list[Path]:
    """Write ``mld_pairs.h`` and ``mld_pairs.c`` into ``out_dir``; return their paths."""
    source = pair_source(model)
    text = source_text(source)  # first: it refuses a kernel module before anything is written
    out_dir = Path(out_dir)
    return [
        write_text_atomic(out_dir / HEADER_FILE, header_text(source)),
        write_text_atomic(out_dir / SOURCE_FILE, text),
    ]
