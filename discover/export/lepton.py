"""sympy → Lepton expression strings, the formula language of LAMMPS ``pair_style lepton`` and OpenMM.

Lepton (P. Eastman, the expression library inside OpenMM and the LAMMPS LEPTON package) knows
``+ - * / ^``, the usual elementary functions, ``step(x)`` (1 for x ≥ 0, else 0), ``delta``,
``min``, ``max`` and ``select(x, y, z)`` (y if x ≠ 0, else z). It has no comparison operators, so a
``Piecewise`` becomes nested ``select`` calls whose conditions are written with ``step``. Lepton
differentiates expressions itself (``select`` piecewise), so only the energy is printed.
"""

from __future__ import annotations

import sympy
from sympy.printing.precedence import PRECEDENCE
from sympy.printing.str import StrPrinter

from discover.export.pairs import ExportError


class LeptonPrinter(StrPrinter):
    """Prints numbers as exact doubles (17 significant digits) and powers with ``^``."""

    def _print_Float(self, expr):
        return repr(float(expr))

    def _print_Rational(self, expr):
        return f"{expr.p}/{expr.q}"

    def _print_Integer(self, expr):
        return str(int(expr))

    def _print_Exp1(self, expr):
        return repr(float(sympy.E))

    def _print_Pi(self, expr):
        return repr(float(sympy.pi))

    def _print_Pow(self, expr, rational=False):
        base, exponent = expr.as_base_exp()
        if base is sympy.E:
            return f"exp({self._print(exponent)})"
        if exponent == sympy.Rational(1, 2):
            return f"sqrt({self._print(base)})"
        if exponent == -1:
            return f"(1/{self.parenthesize(base, PRECEDENCE['Pow'])})"
        return f"{self.parenthesize(base, PRECEDENCE['Pow'])}^{self.parenthesize(exponent, PRECEDENCE['Pow'])}"

    def _print_Piecewise(self, expr):
        *pieces, (last_value, last_condition) = expr.args
        if last_condition is not sympy.true:
            # sympy gives nan where no condition holds; Lepton has no nan, 0 is the only sane fill
            pieces.append((last_value, last_condition))
            last_value = sympy.Integer(0)
        text = self._print(last_value)
        for value, condition in reversed(pieces):
            text = f"select({self._print_condition(condition)}, {self._print(value)}, {text})"
        return text

    def _print_condition(self, cond) -> str:
        if cond is sympy.true:
            return "1"
        if cond is sympy.false:
            return "0"
        if isinstance(cond, sympy.And):
            return "*".join(f"({self._print_condition(a)})" for a in cond.args)
        if isinstance(cond, sympy.Or):
            return "+".join(f"({self._print_condition(a)})" for a in cond.args)
        if isinstance(cond, sympy.Not):
            return f"(1-{self._print_condition(cond.args[0])})"
        difference = self._print(cond.lhs - cond.rhs)
        if isinstance(cond, sympy.GreaterThan):  # lhs >= rhs
            return f"step({difference})"
        if isinstance(cond, sympy.StrictLessThan):  # lhs < rhs  ==  not (lhs >= rhs)
            return f"(1-step({difference}))"
        negated = self._print(cond.rhs - cond.lhs)
        if isinstance(cond, sympy.LessThan):  # lhs <= rhs  ==  rhs - lhs >= 0
            return f"step({negated})"
        if isinstance(cond, sympy.StrictGreaterThan):
            return f"(1-step({negated}))"
        raise ExportError(f"cannot write the condition {cond} in Lepton")

    def _print_Heaviside(self, expr):
        return f"step({self._print(expr.args[0])})"

    def _print_Abs(self, expr):
        return f"abs({self._print(expr.args[0])})"

    def _print_Min(self, expr):
        return self._nest("min", expr.args)

    def _print_Max(self, expr):
        return self._nest("max", expr.args)

    def _nest(self, name, args):
        text = self._print(args[-1])
        for a in reversed(args[:-1]):
            text = f"{name}({self._print(a)}, {text})"
        return text

    def _print_Function(self, expr):
        name = expr.func.__name__
        if name not in LEPTON_FUNCTIONS:
            raise ExportError(f"the function {name} has no Lepton equivalent")
        return f"{name}({', '.join(self._print(a) for a in expr.args)})"

    def emptyPrinter(self, expr):
        raise ExportError(f"cannot write {type(expr).__name__} ({expr}) in Lepton")


LEPTON_FUNCTIONS = frozenset(
    ["sqrt", "exp", "log", "sin", "cos", "sec", "csc", "tan", "cot", "asin", "acos", "atan", "sinh", "cosh", "tanh", "erf", "erfc"]
)


def lepton_expression(expr: sympy.Expr) -> str:
    """One Lepton string for a sympy expression; raises :class:`ExportError` on what Lepton lacks."""
    expr = sympy.sympify(expr)
    if expr.has(sympy.nan, sympy.zoo, sympy.oo, -sympy.oo):
        raise ExportError(f"expression is not finite: {expr}")
    return LeptonPrinter().doprint(expr)
