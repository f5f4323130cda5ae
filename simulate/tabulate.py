"""Tabulated pair laws and triplet legs: a kernel module whose kernels read tables instead of the closed form.

A learned pair law costs what its formula costs: ``r**-5.55``, Gaussians, shifted-force terms. A
table costs the same for every law. :func:`tabulate_kernel_module` takes any kernel module (the
contract of :mod:`simulate.kernels`) and returns one whose ``pair_energy_force`` and
``pair_energy_force_r2`` (and, for a molecular model, ``intra_pair_energy_force``) look the law up;
every other name passes through, so the result runs wherever a generated module runs (the compiled loops of :mod:`simulate.energy`,
the blocks of :mod:`simulate.integrate`, :func:`simulate.md.simulate`).

**Exactly conservative.** On a uniform grid in x (r for a bonded law or a triplet leg, r² for a
pair law), each cell holds the quintic Hermite polynomial p(s), s = (x − x_k)/h ∈ [0, 1), that
matches u, du/dx and d²u/dx² at both knots (u and u' the kernel's own values, u'' a fourth-order
finite difference of u'). The force is −p'(s)/h · dx/dr, the exact derivative of the energy that is
returned, so F = −∇E holds to rounding and NVE conserves energy as the closed form does (LAMMPS's
``pair_style table linear`` interpolates energy and force separately, so its force is not the
derivative of its energy). Neighbouring cells share u, u' and u'' at their knot, so the tabulated
law is C². Its force error falls as h⁵, so a few hundred to a few thousand knots per law reach 10⁻⁸
eV/Å (on table look-up of pair potentials see Allen & Tildesley, *Computer Simulation of Liquids*,
ch. 5).

**Pair laws in r².** A pair pass has r² of every pair at hand; a table in r² gives u and the force
over r, −u'(r)/r = −2 du/d(r²), with no square root and no division (``pair_energy_force_r2`` of the
kernel contract, which :mod:`simulate.energy` calls where a module has it). With the law's range read
by species pair (see :func:`_make_kernel_r2`), the forces-only pair pass takes 9 % less time for the
learned pairwise water and 6 % less for the Morse test water (6,144 atoms, one thread; 9 % and 7 %
at 49,152 atoms on two). Cells uniform in r² are coarser in r at short range, so such a table needs
more cells than one in r: the learned pairwise water 2,082 against 825 (130 KiB), the Morse test
water, whose walls reach down to 0.5 Å, 11,278 against 1,551 (705 KiB, within a core's L2 cache).

**Where the table lives.** The learned laws are joined C¹ to a repulsive core (an exponential wall
below the smallest sampled distance) and, for a bonded law, to an outer wall: there u'' jumps, and
a polynomial cell straddling the joint would be wrong by ~ u''-jump × h. So each law is scanned for
such joints (an isolated spike in the second difference of u', located to rounding by bisection
and confirmed by the one-sided slopes of u'), and its table covers one smooth piece: for a pair law
the piece that ends at the cutoff, for a bonded law the piece that holds its minimum; it also stops
where |u'| exceeds ``max_force_ev_per_angstrom`` (a steep core no real configuration reaches).
Outside the table the kernel calls the closed form, so the core stays exact. At and beyond the
cutoff the closed form returns exactly zero; the table's last knot is the cutoff, with the law's
limit from below (zero, for a shifted-force law).

**Triplet legs.** A separable three-body law (``triplet_radial`` and ``TRIPLET_COS_POLYNOMIAL``,
see :mod:`simulate.kernels`) has its radial factors R_{k;j|o}(r), one per leg (centre k, neighbour
j, other neighbour o), tabulated the same way on [inner, r_3): u := R, u' := dR/dr, and the slope's
tolerance set so that one triplet's force moves by at most the pair laws' force tolerance (see
:func:`_radial_tables`). The moment sums of :mod:`simulate.energy` want all S legs of a neighbour;
an exponential and a polynomial behind a branch on the species become one lookup. The legs (k, j, ·)
of one centre and neighbour type share one grid, with each cell's coefficients by power, leg and lane,
so ``triplet_radial_two`` finds the cell once for two legs (the forces-only pass of the tabulated
many-body water took 2–3 % less time at 96 and 6,144 atoms, one thread). It evaluates them in four
vector lanes (:mod:`simulate.simd`): the two quintics and their slopes' quartics, each coefficient of
the four one load (the quartics' sixth coefficient zero), five multiply-adds by Horner's rule for all
four (the 96-atom forces came out the same bit for bit as with the fused scalar lookups before).
At and beyond r_3 the tabulated leg is exactly zero, and its last knot takes R, R' from below: the
learned legs carry (1 − r²/r_3²)³ and Stillinger–Weber's exp(γ/(r − r_3)) vanishes with all its
derivatives, so both go to zero continuously. A leg without a law (a zero polynomial row) reads
zeros in its group's cells, and, below them, its closed form (whose R multiplies nothing then); a
group of such legs alone reads one zero cell, (0, 0) at every r. ``triplet_energy_gradient`` stays
the closed form (the exports and the O(N³) reference use it), so the tabulated module meets the
separable identity R·R·P = w to the tables' accuracy, not to rounding.

**Cheap lookup.** One subtraction and multiply, a truncation, two Horner polynomials (the energy's
quintic and, for a pair law in r² or a triplet leg, the force's or slope's quartic from a table of its
own; the forces-only pass drops the energy's), each on one row of coefficients padded to 64 bytes (the
errors recorded for a table are its quintic's, whose derivative the quartic equals to rounding); the species pair selects
the law's offset into one coefficient array. The arrays are closed over by ``numba.njit`` functions, so Numba freezes them
into the compiled code as constants and the hot path holds no Python objects.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from types import ModuleType
from typing import NamedTuple

import numba
import numpy as np

from simulate.errors import MldError
from simulate.kernels import (
    check_kernel_module,
    has_separable_triplets,
    has_threebody,
    is_molecular,
    two_legs,
)
from simulate.reference import compile_reference
from simulate.simd import LANES, lane, lanes_load, lanes_muladd, lanes_splat

DEFAULT_FORCE_TOLERANCE_EV_PER_ANGSTROM = 1e-8  # largest |F_table − F_closed| of one pair, anywhere in a table
DEFAULT_MAX_FORCE_EV_PER_ANGSTROM = 100.0  # tables stop where a pair's |u'| exceeds this (a steep core)
DEFAULT_MIN_INNER_ANGSTROM = 0.5  # no table below this distance
MAX_CELLS = 1 << 16  # per law; a law that needs more is not smooth enough to tabulate
COEFFICIENTS_PER_CELL = 8  # the six of the quintic, padded so that a cell is one 64-byte cache line

_SCAN_STEP_ANGSTROM = 5e-4  # spacing of the scan for joints
_TEST_POINTS = np.array([0.1, 0.5 - 0.5 / math.sqrt(5.0), 0.5, 0.5 + 0.5 / math.sqrt(5.0), 0.9])  # per cell;
# the quintic Hermite error's derivative peaks at s = ½ ± 1/(2√5)


class TabulationError(MldError, ValueError):
    """A kernel module whose pair laws cannot be tabulated to the asked accuracy."""


def _grid(inner_angstrom: float, outer_angstrom: float, squared: bool) -> tuple[float, float]:
    """A table's first and last knot in its variable: r (Å), or r² (Å²) if ``squared``.

    r² is r·r, as the passes square a distance (``x**2`` goes through ``pow`` and can differ by an ulp):
    then r < outer exactly when r·r < outer·outer, and a law cut at outer is exactly zero at r = outer.
    """
    if squared:
        return inner_angstrom * inner_angstrom, outer_angstrom * outer_angstrom
    return inner_angstrom, outer_angstrom


class LawTable(NamedTuple):
    """One pair law's (or triplet leg's) table: quintic Hermite cells on [inner, outer), uniform in r,
    or, ``squared``, uniform in r² on [inner², outer²)."""

    name: str  # e.g. "OH", "OH_intra", or "OH|O" for the leg from an O centre to an H whose partner is an O
    inner_angstrom: float  # first knot; below it the kernel calls the closed form
    outer_angstrom: float  # last knot: the cutoff, or the joint of a bonded law's outer wall
    cells: int
    coefficients: np.ndarray  # (cells + 1, COEFFICIENTS_PER_CELL): p(s) = Σ c_m s^m; the extra cell
    # continues the last knot's Taylor polynomial, for an r that rounds onto the outer knot
    force_error_ev_per_angstrom: float  # largest |Δu'| found at the test points of every cell (a leg: |ΔR'|)
    energy_error_ev: float  # largest |Δu| there (a leg: |ΔR|)
    squared: bool = False  # cells uniform in r² (Å²), the variable of the lookup, not in r

    @property
    def grid(self) -> tuple[float, float]:
        """(first, last) knot in the table's variable: r in Å, or r² in Å² for a ``squared`` table."""
        return _grid(self.inner_angstrom, self.outer_angstrom, self.squared)

    @property
    def step(self) -> float:
        """Width of a cell in the table's variable (Å, or Å² for a ``squared`` table)."""
        first, last = self.grid
        return (last - first) / self.cells

    @property
    def inverse_step(self) -> float:
        """Cells per unit of the table's variable, as the lookup scales r − inner (or r² − inner²)."""
        first, last = self.grid
        return self.cells / (last - first)

    @property
    def knots_angstrom(self) -> np.ndarray:
        """The distances of the ``cells + 1`` knots, Å."""
        first, last = self.grid
        knots = first + (last - first) * np.arange(self.cells + 1) / self.cells
        return np.sqrt(knots) if self.squared else knots


# --- the interpolant -------------------------------------------------------------------------------


def quintic_hermite_coefficients(u: np.ndarray, du_dr: np.ndarray, d2u_dr2: np.ndarray, step: float) -> np.ndarray:
    """(n − 1, 6) power-basis coefficients, in s ∈ [0, 1] of cells of width ``step``, of the quintics
    that take the values, first and second derivatives given at the n knots at both ends."""
    u0, u1 = u[:-1], u[1:]
    d0, d1 = du_dr[:-1] * step, du_dr[1:] * step
    c0, c1 = d2u_dr2[:-1] * step**2, d2u_dr2[1:] * step**2
    a0, a1, a2 = u0, d0, 0.5 * c0
    # p(1) = u1, p'(1) = d1, p''(1) = c1 for p = a0 + a1 s + a2 s² + a3 s³ + a4 s⁴ + a5 s⁵
    rest_value = u1 - a0 - a1 - a2
    rest_slope = d1 - a1 - 2.0 * a2
    rest_curvature = c1 - 2.0 * a2
    a3 = 10.0 * rest_value - 4.0 * rest_slope + 0.5 * rest_curvature
    a4 = -15.0 * rest_value + 7.0 * rest_slope - rest_curvature
    a5 = 6.0 * rest_value - 3.0 * rest_slope + 0.5 * rest_curvature
    return np.stack([a0, a1, a2, a3, a4, a5], axis=1)


@numba.njit(inline="always")
def _locate(first_cell, inverse_step, inner, x):
    """(row, s): the cell of a table from row ``first_cell`` that x ≥ inner falls in, and s ∈ [0, 1) within it.

    The row is unsigned: Numba then reads the coefficients without the wrap-around of a negative index
    (a test and a conditional move per lookup; the forces-only pair pass of the learned pairwise water,
    96 atoms, took 3–4 % less time, the same numbers bit for bit)."""
    t = (x - inner) * inverse_step
    k = np.uint64(t)
    return np.uint64(first_cell) + k, t - np.float64(k)


@numba.njit(inline="always")
def _quintic(coefficients, row, s):
    """(p(s), dp/ds) of the quintic in row ``row`` of a table, at s ∈ [0, 1)."""
    c0 = coefficients[row, 0]
    c1 = coefficients[row, 1]
    c2 = coefficients[row, 2]
    c3 = coefficients[row, 3]
    c4 = coefficients[row, 4]
    c5 = coefficients[row, 5]
    u = c0 + s * (c1 + s * (c2 + s * (c3 + s * (c4 + s * c5))))
    du_ds = c1 + s * (2.0 * c2 + s * (3.0 * c3 + s * (4.0 * c4 + s * (5.0 * c5))))
    return u, du_ds


@numba.njit(inline="always")
def _cell(coefficients, first_cell, inverse_step, inner, r):
    """(u, du/dx) of the table at x = r ≥ inner (or x = r² ≥ inner² for a table in r²): the quintic of the
    cell x falls in, and its exact derivative."""
    row, s = _locate(first_cell, inverse_step, inner, r)
    u, du_ds = _quintic(coefficients, row, s)
    return u, du_ds * inverse_step


@numba.njit(cache=True)
def _evaluate_table(coefficients, inner, inverse_step, r):
    """(u, du/dx) of one law's table at every x (r, or r² for a table in r², inside its range): the lookup
    the kernels inline."""
    u = np.empty(r.shape[0])
    du = np.empty(r.shape[0])
    for k in range(r.shape[0]):
        u[k], du[k] = _cell(coefficients, 0, inverse_step, inner, r[k])
    return u, du


def evaluate_table(table: LawTable, r_angstrom: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(u eV, du/dr eV/Å) of ``table`` at each r in [inner, outer] Å, by the kernels' own cell lookup (the
    quintic and its exact derivative; the kernels' quartics of the derivative equal it to rounding)."""
    r = np.ascontiguousarray(r_angstrom, dtype=float)
    if r.size and (r.min() < table.inner_angstrom or r.max() > table.outer_angstrom):
        raise ValueError(f"table {table.name} covers [{table.inner_angstrom}, {table.outer_angstrom}] Å only")
    if not table.squared:
        return _evaluate_table(table.coefficients, table.inner_angstrom, table.inverse_step, r)
    u, du_ds = _evaluate_table(table.coefficients, table.grid[0], table.inverse_step, r * r)
    return u, 2.0 * r * du_ds


# --- a law as the kernel gives it ------------------------------------------------------------------


@numba.njit
def _sample(kernel, type_i, type_j, r):
    """u(r) and u'(r) of ``kernel`` at every r (u' = −(force/r)·r)."""
    u = np.empty(r.shape[0])
    du = np.empty(r.shape[0])
    for k in range(r.shape[0]):
        e, f = kernel(type_i, type_j, r[k])
        u[k] = e
        du[k] = -f * r[k]
    return u, du


class _Law(NamedTuple):
    name: str
    kernel: object  # a numba dispatcher of the kernel contract
    type_i: int
    type_j: int
    bonded: bool  # an intramolecular law: no cutoff, its table is the piece that holds its minimum

    def __call__(self, r) -> tuple[np.ndarray, np.ndarray]:
        return _sample(self.kernel, self.type_i, self.type_j, np.atleast_1d(np.asarray(r, dtype=float)))

    def slope(self, r: float) -> float:
        return float(self(r)[1][0])


@numba.njit
def _sample_leg(kernel, type_k, type_j, type_other, r):
    """R(r) and dR/dr of one leg of a separable three-body ``kernel`` (``triplet_radial``) at every r."""
    u = np.empty(r.shape[0])
    du = np.empty(r.shape[0])
    for k in range(r.shape[0]):
        u[k], du[k] = kernel(type_k, type_j, type_other, r[k])
    return u, du


class _Leg(NamedTuple):
    """One leg of a separable three-body law, as a law of r: the factor R of the leg from a centre of
    type k to a neighbour of type j when the triplet's other neighbour is of type ``type_other``."""

    name: str  # e.g. "OH|O": centre O, leg to an H, the other neighbour an O
    kernel: object  # the source's ``triplet_radial``
    type_k: int
    type_j: int
    type_other: int
    bonded: bool = False  # as a pair law: its table is the piece that ends at the cutoff r_3

    def __call__(self, r) -> tuple[np.ndarray, np.ndarray]:
        r = np.atleast_1d(np.asarray(r, dtype=float))
        return _sample_leg(self.kernel, self.type_k, self.type_j, self.type_other, r)

    def slope(self, r: float) -> float:
        return float(self(r)[1][0])


class _SquaredLaw(NamedTuple):
    """A law of r as a law of s = r²: (u, du/ds = u'/(2r)) at each s, for a table uniform in r².

    The table's last knot lies just below outer², and √ of it can round to outer itself, where a
    law cut at outer answers zero: r stays below outer, so that knot takes the law's limit from below.
    """

    law: object  # a _Law
    below_outer_angstrom: float  # the largest r the law is asked at: the float below the table's outer end

    @property
    def name(self) -> str:
        return self.law.name

    @property
    def bonded(self) -> bool:
        return self.law.bonded

    def __call__(self, s) -> tuple[np.ndarray, np.ndarray]:
        r = np.minimum(np.sqrt(np.atleast_1d(np.asarray(s, dtype=float))), self.below_outer_angstrom)
        u, du = self.law(r)
        return u, du / (2.0 * r)

    def force_per_slope(self, s: np.ndarray) -> np.ndarray:
        """|du/dr| per |du/ds|: 2r."""
        return 2.0 * np.sqrt(s)


def second_derivative(law, r: np.ndarray, lower: float, upper: float, eta: float) -> np.ndarray:
    """u''(r) by fourth-order finite differences of u', never sampling outside [lower, upper].

    Central where the stencil fits (error η⁴u⁽⁶⁾/30), one-sided at the ends (η⁴u⁽⁶⁾/5).
    """
    r = np.asarray(r, dtype=float)
    out = np.empty_like(r)
    central = (r - 2 * eta >= lower) & (r + 2 * eta <= upper)
    forward = ~central & (r - 2 * eta < lower)
    backward = ~central & ~forward
    if central.any():
        x = r[central]
        g = [law(x + m * eta)[1] for m in (-2, -1, 1, 2)]
        out[central] = (g[0] - 8 * g[1] + 8 * g[2] - g[3]) / (12 * eta)
    for mask, sign in ((forward, 1.0), (backward, -1.0)):
        if mask.any():
            x = r[mask]
            g = [law(x + sign * m * eta)[1] for m in range(5)]
            out[mask] = sign * (-25 * g[0] + 48 * g[1] - 36 * g[2] + 16 * g[3] - 3 * g[4]) / (12 * eta)
    return out


# --- joints: where u'' jumps -----------------------------------------------------------------------


def _joint_candidates(r: np.ndarray, du: np.ndarray) -> list[tuple[float, float]]:
    """Brackets [a, b] of the scan where the second difference of u' spikes above its neighbours.

    A jump J in u'' between two scan points puts ~J·δ into the second difference of the two centres
    next to it, where a smooth law gives ~δ²u'''. The centres two and three points away on either
    side are untouched: each side predicts the centre by linear extrapolation, and the centre is a
    spike when both predictions miss it by far more than either side's own variation (a jump in
    u''' alone, with u'' continuous, is met by one side's prediction).
    """
    d2 = du[:-2] - 2.0 * du[1:-1] + du[2:]  # centred on r[1:-1]
    if d2.size < 7:
        return []
    centre = d2[3:-3]
    near_left, far_left = d2[1:-5], d2[:-6]
    near_right, far_right = d2[5:-1], d2[6:]
    miss_left = np.abs(centre - (3.0 * near_left - 2.0 * far_left))
    miss_right = np.abs(centre - (3.0 * near_right - 2.0 * far_right))
    variation = np.maximum(3.0 * np.abs(near_left - far_left) + 0.01 * np.abs(near_left),
                           3.0 * np.abs(near_right - far_right) + 0.01 * np.abs(near_right))
    noise = 64.0 * np.finfo(float).eps * np.maximum(np.abs(du[3:-5]), np.abs(du[5:-3])) + 1e-300
    flagged = np.flatnonzero(np.minimum(miss_left, miss_right) > 100.0 * (variation + noise)) + 4  # r index
    brackets = []
    start = None
    for k, centre in enumerate(flagged):
        if start is None:
            start = centre
        if k + 1 == len(flagged) or flagged[k + 1] > centre + 2:
            brackets.append((float(r[max(start - 2, 0)]), float(r[min(centre + 2, len(r) - 1)])))
            start = None
    return brackets


def _locate_joint(law, a: float, b: float) -> tuple[float, float] | None:
    """Shrink [a, b] around the point where u' has a kink; None if it holds no kink (a smooth spike).

    Bisection that asks which piece the midpoint m lies on: u'(m) is met by the quadratic through
    u' at a − 2d, a − d, a extrapolated to m = a + d if m is on a's piece, by the one from b's side
    if on b's. A wrong answer needs the kink within ~u⁗d³/J of m, so the bracket ends within
    rounding of the kink.
    """
    resolution = 4.0 * np.finfo(float).eps * max(1.0, abs(b))
    while b - a > resolution:
        d = 0.5 * (b - a)
        m = a + d
        if not a < m < b:
            break
        g = law(np.array([a - 2 * d, a - d, a, m, b, b + d, b + 2 * d]))[1]
        from_left = 3.0 * g[2] - 3.0 * g[1] + g[0]
        from_right = 3.0 * g[4] - 3.0 * g[5] + g[6]
        if abs(g[3] - from_left) <= abs(g[3] - from_right):
            a = m
        else:
            b = m
    # a kink, not a smooth bump: u'' seen from the two sides differs (one-sided, second order)
    eta = 1e-4
    above = law(b + np.array([0.0, eta, 2 * eta]))[1]
    below = law(a - np.array([0.0, eta, 2 * eta]))[1]
    curvature_above = (-3 * above[0] + 4 * above[1] - above[2]) / (2 * eta)
    curvature_below = (3 * below[0] - 4 * below[1] + below[2]) / (2 * eta)
    jump = curvature_above - curvature_below
    if abs(jump) <= 1e-4 * (abs(curvature_above) + abs(curvature_below)) + 1e-8:
        return None
    return a, b


def table_range(law, lowest_angstrom: float, highest_angstrom: float, max_force_ev_per_angstrom: float
                ) -> tuple[float, float]:
    """[inner, outer] of one law's table: one smooth piece of [lowest, highest], |u'| bounded.

    For a pair law the piece that ends at ``highest`` (the cutoff); for a bonded law the piece that
    holds the lowest u. Pieces end at the law's joints (see the module docstring).
    """
    n = math.ceil((highest_angstrom - lowest_angstrom) / _SCAN_STEP_ANGSTROM) + 1
    r = np.linspace(lowest_angstrom, highest_angstrom, n)
    with np.errstate(all="ignore"):
        u, du = law(r)
    usable = np.isfinite(u) & np.isfinite(du) & (np.abs(du) <= max_force_ev_per_angstrom)
    if law.bonded:
        anchor = int(np.argmin(np.where(usable, u, np.inf)))
    else:
        anchor = n - 1
    if not usable[anchor]:
        raise TabulationError(f"law {law.name}: |u'| above {max_force_ev_per_angstrom} eV/Å or not finite at "
                              f"{r[anchor]:.4f} Å, where its table would start")
    first = anchor
    while first > 0 and usable[first - 1]:
        first -= 1
    last = anchor
    while last < n - 1 and usable[last + 1]:
        last += 1
    inner, outer = float(r[first]), float(r[last])
    for a, b in _joint_candidates(r[first:last + 1], du[first:last + 1]):
        joint = _locate_joint(law, a, b)
        if joint is None:
            continue
        if joint[1] <= r[anchor]:
            inner = max(inner, joint[1])  # start just above the joint: the closed form keeps [a, b]
        else:
            outer = min(outer, joint[0])
    if not outer - inner > 16 * _SCAN_STEP_ANGSTROM:
        raise TabulationError(f"law {law.name}: no smooth piece to tabulate around {r[anchor]:.4f} Å "
                              f"(only [{inner:.6f}, {outer:.6f}] Å)")
    return inner, outer


# --- building one law's table ----------------------------------------------------------------------


def _build(law, inner: float, outer: float, cells: int) -> tuple[np.ndarray, float, float]:
    """(coefficients with the extra cell, max |Δu'|, max |Δu|) of a table of ``cells`` cells on
    [inner, outer] in the law's variable (r, or r² for a :class:`_SquaredLaw`); Δu' in eV/Å either way."""
    knots = inner + (outer - inner) * np.arange(cells + 1) / cells
    # the outer knot takes the law's limit from below: at the cutoff itself the kernel already
    # answers zero, which for a law that is not shifted to zero there is not its limit
    knots[-1] = np.nextafter(outer, -np.inf)
    step = (outer - inner) / cells
    u, du = law(knots)
    d2u = second_derivative(law, knots, inner, outer, min(1e-3, step / 8))
    coefficients = np.zeros((cells + 1, COEFFICIENTS_PER_CELL))
    coefficients[:cells, :6] = quintic_hermite_coefficients(u, du, d2u, step)
    coefficients[cells, :3] = u[-1], du[-1] * step, 0.5 * d2u[-1] * step**2
    test = (inner + (np.arange(cells)[:, None] + _TEST_POINTS[None, :]) * step).ravel()
    u_table, du_table = _evaluate_table(coefficients, inner, cells / (outer - inner), test)
    u_law, du_law = law(test)
    force_error = np.abs(du_table - du_law)
    if isinstance(law, _SquaredLaw):
        force_error *= law.force_per_slope(test)
    return coefficients, float(np.max(force_error)), float(np.max(np.abs(u_table - u_law)))


def tabulate_law(law, inner: float, outer: float, force_tolerance_ev_per_angstrom: float, squared: bool = False,
                 min_cells: int = 4) -> LawTable:
    """The coarsest uniform table on [inner, outer] Å whose force error at the test points is within tolerance.

    The quintic's force error falls as h⁵ (energy as h⁶): start at 4 cells per Å (also for a
    ``squared`` table, uniform in r² on [inner², outer²]), or at ``min_cells`` if more, then scale the
    cell count by the error ratio to the power 1/5, with a margin, until it holds.
    """
    name = law.name
    cells = max(4, min_cells, math.ceil(4 * (outer - inner)))
    inner_angstrom, outer_angstrom = inner, outer
    if squared:
        law = _SquaredLaw(law, float(np.nextafter(outer, -np.inf)))
    inner, outer = _grid(inner, outer, squared)  # in the table's variable
    unit = "Å²" if squared else "Å"
    # per pair, eV: the force tolerance times 0.1 Å. A quintic cell's energy error is ~h/20 of its
    # force error, so this binds only on coarse grids.
    tolerance_energy = force_tolerance_ev_per_angstrom * 0.1
    while True:
        coefficients, force_error, energy_error = _build(law, inner, outer, cells)
        if not (np.isfinite(force_error) and np.isfinite(energy_error)):
            raise TabulationError(f"law {name}: not finite on [{inner:.4f}, {outer:.4f}] {unit}")
        if force_error <= force_tolerance_ev_per_angstrom and energy_error <= tolerance_energy:
            return LawTable(name, inner_angstrom, outer_angstrom, cells, coefficients, force_error, energy_error,
                            squared)
        ratio = max(force_error / force_tolerance_ev_per_angstrom, energy_error / tolerance_energy)
        grown = math.ceil(cells * min(max(ratio**0.2 * 1.15, 1.25), 16.0))
        if grown > MAX_CELLS and cells < MAX_CELLS:
            grown = MAX_CELLS  # the largest table is tried once before giving up
        if grown > MAX_CELLS:
            raise TabulationError(
                f"law {name}: {cells} cells on [{inner:.4f}, {outer:.4f}] {unit} still miss "
                f"the force by {force_error:.2e} eV/Å (tolerance {force_tolerance_ev_per_angstrom:.1e}); a joint the scan "
                "did not find, or a law too steep to tabulate")
        cells = grown


# --- the compiled kernels of a tabulated module ----------------------------------------------------


class _Rows(NamedTuple):
    """Every table of one kernel, concatenated: what its compiled lookup closes over."""

    row_of_types: np.ndarray  # int64, (S, S): the row of a pair law's types
    inner: np.ndarray  # (rows,) first knot, Å (Å² for squared tables); inf for types without a table (the
    # closed form answers)
    outer: np.ndarray  # (rows,) last knot, Å or Å²
    inverse_step: np.ndarray  # (rows,) 1/Å or 1/Å²
    first_cell: np.ndarray  # (rows,) int64: offset of the row's cells in ``coefficients``
    coefficients: np.ndarray  # (Σ cells + 1, COEFFICIENTS_PER_CELL)
    squared: bool | None  # the tables are in r² (True) or in r (False); None: no table


def _rows(tables: dict[tuple[int, ...], LawTable], shape: tuple[int, ...]) -> _Rows:
    """Rows of ``tables``, each reached from its types (and, for a pair, the swapped types), and a last
    row, empty, for the types without a table."""
    row_of_types = np.full(shape, len(tables), dtype=np.int64)
    kinds = {table.squared for table in tables.values() if table is not _NO_LAW}
    if len(kinds) > 1:
        raise ValueError("tables in r and in r² cannot share rows")
    inner, outer, inverse_step, first_cell, blocks = [], [], [], [], []
    offset = 0
    for row, (types, table) in enumerate(tables.items()):
        row_of_types[types] = row
        if len(types) == 2:
            row_of_types[types[::-1]] = row
        inner.append(table.grid[0])
        outer.append(table.grid[1])
        inverse_step.append(table.inverse_step)
        first_cell.append(offset)
        blocks.append(table.coefficients)
        offset += table.coefficients.shape[0]
    inner.append(math.inf)
    outer.append(math.inf)
    inverse_step.append(0.0)
    first_cell.append(offset)
    blocks.append(np.zeros((1, COEFFICIENTS_PER_CELL)))
    return _Rows(row_of_types, np.array(inner), np.array(outer), np.array(inverse_step),
                 np.array(first_cell, dtype=np.int64), np.ascontiguousarray(np.concatenate(blocks)), kinds.pop() if kinds else None)


def _quartics(coefficients: np.ndarray, scale) -> np.ndarray:
    """(rows, 5): d_q = scale (q + 1) c_{q+1}, q = 0…4, of each row of quintic ``coefficients`` (``scale`` one
    number, or one per row): with scale = 1/h, the quintic's derivative in x as a quartic in σ."""
    return coefficients[:, 1:6] * np.arange(1.0, 6.0) * np.reshape(scale, (-1, 1))


def _derivative_coefficients(rows: _Rows, scale: float) -> np.ndarray:
    """(Σ cells + 1, COEFFICIENTS_PER_CELL): row k holds d_q = scale (q + 1) c_{q+1} / h, q = 0…4, of cell k
    (h the step of its law), so that ``scale`` times the derivative of cell k's quintic in x is the quartic
    Σ d_q σ^q: no multiplication by the orders or the step per lookup."""
    rows_per_table = np.diff(np.append(rows.first_cell, rows.coefficients.shape[0]))
    out = np.zeros_like(rows.coefficients)
    out[:, :5] = _quartics(rows.coefficients, np.repeat(scale * rows.inverse_step, rows_per_table))
    return out


def _force_coefficients(rows: _Rows) -> np.ndarray:
    """The quartics of −2 du/ds of an r² table (s = r²): the force over r, −u'(r)/r, per cell."""
    return _derivative_coefficients(rows, -2.0)


@numba.njit(inline="always")
def _value_and_quartic(coefficients, derivative_coefficients, first_cell, inverse_step, inner, x):
    """(u, Σ_q d_q σ^q) at x ≥ inner: the quintic's value, and the quartic of its cell in a table of
    :func:`_derivative_coefficients` (the quintic's derivative, unused, is compiled away)."""
    row, s = _locate(first_cell, inverse_step, inner, x)
    u, _ = _quintic(coefficients, row, s)
    d0 = derivative_coefficients[row, 0]
    d1 = derivative_coefficients[row, 1]
    d2 = derivative_coefficients[row, 2]
    d3 = derivative_coefficients[row, 3]
    d4 = derivative_coefficients[row, 4]
    return u, d0 + s * (d1 + s * (d2 + s * (d3 + s * d4)))


def _by_types(rows: _Rows) -> tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(S, inner, outer, inverse step, first cell), each indexed by the pair's types themselves, flattened
    (i·S + j), not through their row: one dependent load less before the coefficients."""
    row = rows.row_of_types.ravel()
    return (rows.row_of_types.shape[0], np.ascontiguousarray(rows.inner[row]), np.ascontiguousarray(rows.outer[row]),
            np.ascontiguousarray(rows.inverse_step[row]), np.ascontiguousarray(rows.first_cell[row]))


def _make_kernel_r2(closed_form, rows: _Rows):
    """A ``pair_energy_force_r2`` of the contract, from tables uniform in r²: the table inside each law's
    range, ``closed_form`` outside it. No square root, no division: with s = r², u = p(σ) and the
    force over r, −u'(r)/r = −2 du/ds, is −2 p'(σ)/h, the derivative of the energy returned (to the
    rounding of its coefficients).

    The range and offset of each law are read by the species pair itself (i·S + j), not through its
    row: one dependent load less before the coefficients, 6–7 % less time for the pair pass. The force
    reads its own quartic (:func:`_force_coefficients`), one 64-byte row: a forces-only pass then
    does four multiplications less per pair than with the energy's row, and it is bound by
    floating-point arithmetic (13 % less time for a pair pass of the learned water in a test loop).
    """
    if rows.squared is False:
        raise ValueError("the r² kernel reads tables in r²")
    n_species, inner, outer, inverse_step, first_cell = _by_types(rows)
    coefficients = rows.coefficients
    force_coefficients = _force_coefficients(rows)

    @numba.njit
    def tabulated_energy_force_r2(type_i, type_j, r2):
        pair = type_i * n_species + type_j
        lo = inner[pair]
        if r2 < lo or r2 >= outer[pair]:
            # the core, the cutoff and beyond: the closed form, exactly (√(r·r) is r in IEEE arithmetic)
            return closed_form(type_i, type_j, math.sqrt(r2))
        # the energy's quintic (a forces-only pass's energy is compiled away) and the force's quartic
        return _value_and_quartic(coefficients, force_coefficients, first_cell[pair], inverse_step[pair], lo, r2)

    return tabulated_energy_force_r2


def _of_r(kernel_r2):
    """``pair_energy_force(type_i, type_j, r)`` of a ``pair_energy_force_r2``: the same law at r² = r·r."""

    @numba.njit
    def tabulated_energy_force(type_i, type_j, r):
        return kernel_r2(type_i, type_j, r * r)

    return tabulated_energy_force


def _make_kernel(closed_form, rows: _Rows):
    """A kernel of the contract from tables uniform in r: the table inside each law's range,
    ``closed_form`` outside it."""
    if rows.squared:
        raise ValueError("this kernel reads tables in r")
    row_of_types = rows.row_of_types
    inner = rows.inner
    outer = rows.outer
    inverse_step = rows.inverse_step
    first_cell = rows.first_cell
    coefficients = rows.coefficients

    @numba.njit
    def tabulated_energy_force(type_i, type_j, r):
        row = row_of_types[type_i, type_j]
        lo = inner[row]
        if r < lo or r >= outer[row]:
            # the core, a bonded law's outer wall, the cutoff and beyond: the closed form, exactly
            return closed_form(type_i, type_j, r)
        u, du = _cell(coefficients, first_cell[row], inverse_step[row], lo, r)
        return u, -du / r

    return tabulated_energy_force


class _LegGrids(NamedTuple):
    """The legs' tables as the radial lookups close over them: the legs (k, j, ·) of one centre and
    neighbour type on one grid, group g = k·S + j, each cell's coefficients by power, leg and lane."""

    inner: np.ndarray  # (S²,) first knot of group g, Å (below it the closed form answers)
    inverse_step: np.ndarray  # (S²,) cells per Å (0 for a group of zero legs: its one cell of zeros)
    first_cell: np.ndarray  # (S²,) int64: the group's first row of ``cells``
    cells: np.ndarray  # (Σ cells + 1, 6 · S · LANES): row, then (q, o, lane): the power q of σ of the legs
    # (k, j, o) and (k, j, o + 1) (o + 1 = S: a zero leg) in four lanes, (c_q^o, c_q^o+1, d_q^o, d_q^o+1): the
    # quintics' coefficients and their slopes' quartics (d_5 = 0; see _derivative_coefficients)


def _leg_grids(tables: dict[tuple[int, int, int], LawTable], n_species: int) -> _LegGrids:
    """:class:`_LegGrids` of ``tables``, whose legs of one (k, j) share their grid (see
    :func:`_radial_tables`). A leg without a table (:data:`_NO_LAW`, or zero on the whole scan) reads
    zeros; a group of such legs alone, one cell of zeros at every r."""
    n_legs = n_species + 1  # and a zero leg
    inner = np.zeros(n_species**2)
    inverse_step = np.zeros(n_species**2)
    first_cell = np.zeros(n_species**2, dtype=np.int64)
    blocks = []
    offset = 0
    for k, j in np.ndindex(n_species, n_species):
        legs = [tables.get((k, j, o), _NO_LAW) for o in range(n_species)]
        shaped = [leg for leg in legs if leg is not _NO_LAW]
        if not shaped:
            continue  # reads the zero cell at the end
        grid = {(leg.inner_angstrom, leg.outer_angstrom, leg.cells) for leg in shaped}
        if len(grid) != 1:
            raise ValueError(f"legs {[leg.name for leg in shaped]} do not share one grid")
        ((lo, hi, n_cells),) = grid
        block = np.zeros((n_cells + 1, 11, n_legs))
        for o, leg in enumerate(legs):
            if leg is not _NO_LAW:
                block[:, :6, o] = leg.coefficients[:, :6]
                block[:, 6:, o] = _quartics(leg.coefficients, leg.inverse_step)
        g = k * n_species + j
        inner[g], inverse_step[g], first_cell[g] = lo, n_cells / (hi - lo), offset
        blocks.append(block)
        offset += n_cells + 1
    blocks.append(np.zeros((1, 11, n_legs)))
    first_cell[inverse_step == 0.0] = offset
    by_leg = np.concatenate(blocks)  # [row, q, o]: c_q (q < 6), then d_{q−6}, of leg o
    cells = np.zeros((by_leg.shape[0], 6, n_species, LANES))
    cells[..., 0] = by_leg[:, :6, :-1]  # leg o
    cells[..., 1] = by_leg[:, :6, 1:]  # leg o + 1
    cells[:, :5, :, 2] = by_leg[:, 6:, :-1]
    cells[:, :5, :, 3] = by_leg[:, 6:, 1:]
    return _LegGrids(inner, inverse_step, first_cell, np.ascontiguousarray(cells.reshape(by_leg.shape[0], -1)))


@numba.njit(inline="always")
def _leg_lanes(cells, row, other, s, n_species):
    """(R_o, R_o+1, dR_o/dr, dR_o+1/dr) in lanes, o = ``other``: the legs o and o + 1 from row ``row`` of
    :class:`_LegGrids` cells, at s ∈ [0, 1), each by Horner's rule (the slopes' leading coefficient is zero)."""
    at = lanes_splat(s)
    out = lanes_load(cells, row, (5 * n_species + other) * LANES)
    for q in range(4, -1, -1):
        out = lanes_muladd(at, out, lanes_load(cells, row, (q * n_species + other) * LANES))
    return out


def _make_radial_kernels(closed_form, grids: _LegGrids, n_species: int, cutoff3: float):
    """(``triplet_radial``, ``triplet_radial_two``) of the contract: each leg's table on [inner, r_3), the
    closed form below inner, exactly zero at and beyond r_3.

    The legs (k, j, o) of a centre k and neighbour j share one grid and each cell holds their
    coefficients side by side, so ``triplet_radial_two`` finds the cell once for legs o and o + 1 and
    reads both, values and slopes, in four lanes (the moment pass asks for every leg of a neighbour at once).
    """
    inner, inverse_step, first_cell, cells = grids
    closed_two = two_legs(closed_form, n_species)

    @numba.njit
    def tabulated_triplet_radial(type_k, type_j, type_other, r):
        if r >= cutoff3:
            return 0.0, 0.0
        group = type_k * n_species + type_j
        lo = inner[group]
        if r < lo:
            return closed_form(type_k, type_j, type_other, r)
        row, s = _locate(first_cell[group], inverse_step[group], lo, r)
        legs = _leg_lanes(cells, row, type_other, s, n_species)
        return lane(legs, 0), lane(legs, 2)

    @numba.njit
    def tabulated_triplet_radial_two(type_k, type_j, type_other, r):
        if r >= cutoff3:
            return 0.0, 0.0, 0.0, 0.0
        group = type_k * n_species + type_j
        lo = inner[group]
        if r < lo:
            return closed_two(type_k, type_j, type_other, r)
        row, s = _locate(first_cell[group], inverse_step[group], lo, r)
        legs = _leg_lanes(cells, row, type_other, s, n_species)
        return lane(legs, 0), lane(legs, 2), lane(legs, 1), lane(legs, 3)

    return tabulated_triplet_radial, tabulated_triplet_radial_two


# --- the module ------------------------------------------------------------------------------------


def _laws(kernel_module: ModuleType) -> list[_Law]:
    species = tuple(kernel_module.SPECIES)
    n = len(species)
    pairs = [(a, b) for a in range(n) for b in range(a, n)]
    laws = [_Law(species[a] + species[b], kernel_module.pair_energy_force, a, b, False) for a, b in pairs]
    if is_molecular(kernel_module):
        has_law = np.asarray(kernel_module.INTRA_PAIR_TYPES, dtype=bool)
        laws += [_Law(species[a] + species[b] + "_intra", kernel_module.intra_pair_energy_force, a, b, True)
                 for a, b in pairs if has_law[a, b]]
    return laws


# a leg whose polynomial row is zero has no law (its R multiplies nothing): it reads zeros in its group's
# cells (see _leg_grids), a lookup, not the closed form's call
_NO_LAW = LawTable("no law", 0.0, math.inf, 1, np.zeros((2, COEFFICIENTS_PER_CELL)), 0.0, 0.0)


def _legs(kernel_module: ModuleType) -> list[_Leg]:
    """Every leg (k, j, other) of a separable three-body law whose polynomial row is not zero."""
    species = tuple(kernel_module.SPECIES)
    poly = np.asarray(kernel_module.TRIPLET_COS_POLYNOMIAL, dtype=float)
    return [_Leg(f"{species[k]}{species[j]}|{species[o]}", kernel_module.triplet_radial, k, j, o)
            for k, j, o in np.ndindex(poly.shape[:3]) if np.any(poly[k, j, o] != 0.0)]


def _radial_tables(kernel_module: ModuleType, force_tolerance_ev_per_angstrom: float, max_slope: float,
                   min_inner_angstrom: float) -> dict[tuple[int, int, int], LawTable]:
    """The table of every leg that carries a law, each to the slope tolerance its triplets' forces need,
    the legs (k, j, ·) of one centre and neighbour type on one grid (see :func:`_make_radial_kernels`).

    A triplet's force on the neighbour of leg (k, j, o) is dR_{k;j|o}/dr · R_{k;o|j} · P_kjo(cos θ)
    plus angular terms in R_{k;j|o} itself (whose table error is ~h/20 of the slope's), so a slope
    error δ moves it by at most δ · max|R_{k;o|j}| · Σ_n |p_n|: the leg's tolerance on |ΔR'| is the
    force tolerance over that weight, and a triplet's force is as close to the closed form as a
    pair's (on the learned water model's 2,401 CP2K frames, the largest |ΔF| of an atom from all its
    triplets is then 2.0·10⁻⁸ eV/Å, from all its pairs 1.3·10⁻⁸); a leg whose partner is zero on the
    whole scan gets the force tolerance itself. A leg with a zero polynomial row has no law and gets
    :data:`_NO_LAW`; one that is zero on the whole scan gets no table: both read zeros. The legs of one
    (k, j) start at the highest first knot among them (below it every one of them answers by its
    closed form) and have as many cells as the most demanding of them needs.
    """
    r3 = float(kernel_module.THREEBODY_CUTOFF_ANGSTROM)
    if not min_inner_angstrom < r3:
        raise TabulationError(f"the table's lowest distance {min_inner_angstrom} Å is not below the three-body "
                              f"cutoff {r3} Å")
    poly = np.asarray(kernel_module.TRIPLET_COS_POLYNOMIAL, dtype=float)
    scan = np.linspace(min_inner_angstrom, r3, math.ceil((r3 - min_inner_angstrom) / _SCAN_STEP_ANGSTROM) + 1)
    ranges, largest = {}, {}
    for leg in _legs(kernel_module):
        types = (leg.type_k, leg.type_j, leg.type_other)
        with np.errstate(all="ignore"):
            u, du = leg(scan)
        if np.all(u == 0.0) and np.all(du == 0.0):
            continue
        inner, outer = table_range(leg, min_inner_angstrom, r3, max_slope)
        # the lookup reads a leg's table up to r_3 and never checks the upper end (see _make_radial_kernels)
        if outer != r3:
            raise TabulationError(f"triplet leg {leg.name}: its table would end at {outer:.6g} Å, not at the "
                                  f"three-body cutoff {r3:.6g} Å (its slope exceeds the table's limit there)")
        ranges[types] = leg, inner, outer
        # over the whole scan: below its table a partner leg answers by its closed form
        largest[types] = float(np.max(np.abs(u[np.isfinite(u)]), initial=0.0))
    tables = {(k, j, o): _NO_LAW for k, j, o in np.ndindex(poly.shape[:3]) if not np.any(poly[k, j, o] != 0.0)}
    tolerance = {}
    for (k, j, o), (leg, inner, outer) in ranges.items():
        weight = largest.get((k, o, j), 0.0) * float(np.sum(np.abs(poly[k, j, o])))
        tolerance[(k, j, o)] = force_tolerance_ev_per_angstrom / (weight if weight > 0.0 else 1.0)
    # the legs (k, j, ·) on one grid (see _make_radial_kernels), each table within its own tolerance still
    for k, j in np.ndindex(poly.shape[:2]):
        legs = [(k, j, o) for o in range(poly.shape[2]) if (k, j, o) in tolerance]
        inner = max((ranges[types][1] for types in legs), default=0.0)
        cells = 0
        while legs:
            built = {types: tabulate_law(ranges[types][0], inner, r3, tolerance[types], min_cells=cells)
                     for types in legs}
            if len({table.cells for table in built.values()}) == 1:
                tables.update(built)
                break
            cells = max(table.cells for table in built.values())
    return tables


def _module_name(kernel_module: ModuleType, settings: tuple) -> str:
    """A name that changes with the source's code and the table settings: ``simulate.md`` fingerprints
    checkpoints of a module without a file by its name."""
    path = getattr(kernel_module, "__file__", None)
    if path and Path(path).is_file():
        source = hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
    else:
        source = getattr(kernel_module, "__name__", "kernels")
    return f"mld_tabulated_{source}_{hashlib.sha256(repr(settings).encode()).hexdigest()[:12]}"


def tabulate_kernel_module(
    kernel_module: ModuleType,
    force_tolerance_ev_per_angstrom: float = DEFAULT_FORCE_TOLERANCE_EV_PER_ANGSTROM,
    *,
    max_force_ev_per_angstrom: float = DEFAULT_MAX_FORCE_EV_PER_ANGSTROM,
    min_inner_angstrom: float = DEFAULT_MIN_INNER_ANGSTROM,
    label: str | None = None,
) -> ModuleType:
    """A kernel module that runs ``kernel_module``'s pair laws and triplet legs from tables (see the
    module docstring).

    ``pair_energy_force_r2`` (tables uniform in r², see the module notes) and ``pair_energy_force`` (the
    same at r² = r·r), ``intra_pair_energy_force`` (tables in r) and, for a separable three-body law,
    ``triplet_radial`` and ``triplet_radial_two`` read the tables; ``energy_forces`` sums the pair
    tables and the source's ``triplet_energy_gradient``, which, with every public constant of the
    source (``TRIPLET_COS_POLYNOMIAL`` among them), is passed through. ``PAIR_TABLES`` and ``RADIAL_TABLES``
    hold the :class:`LawTable` of every pair law and leg (range, cells, errors found; a leg's "force"
    and "energy" errors are those of R' and R) and ``SOURCE_KERNEL_MODULE`` the closed form. A leg's
    table stops, as a pair law's, where |R'| exceeds ``max_force_ev_per_angstrom`` (in R's units per Å).
    """
    label = label or getattr(kernel_module, "__file__", None) or getattr(kernel_module, "__name__", "kernel module")
    check_kernel_module(kernel_module, label)
    if not force_tolerance_ev_per_angstrom > 0:
        raise TabulationError(f"{label}: force tolerance must be positive, not {force_tolerance_ev_per_angstrom}")
    cutoff = float(kernel_module.CUTOFF_ANGSTROM)
    if not min_inner_angstrom < cutoff:
        raise TabulationError(f"{label}: the table's lowest distance {min_inner_angstrom} Å is not below the cutoff")
    tables: dict[str, dict[tuple[int, int], LawTable]] = {"pair": {}, "intra": {}}
    for law in _laws(kernel_module):
        try:
            inner, outer = table_range(law, min_inner_angstrom, cutoff, max_force_ev_per_angstrom)
            # a pair law's table is uniform in r², so the pair passes need no square root (a bonded law
            # is called once per intramolecular pair, with its r at hand)
            table = tabulate_law(law, inner, outer, force_tolerance_ev_per_angstrom, squared=not law.bonded)
        except TabulationError as exc:
            raise TabulationError(f"{label}: {exc}") from None
        tables["intra" if law.bonded else "pair"][(law.type_i, law.type_j)] = table
    radial: dict[tuple[int, int, int], LawTable] = {}
    if has_separable_triplets(kernel_module):
        try:
            radial = _radial_tables(kernel_module, force_tolerance_ev_per_angstrom, max_force_ev_per_angstrom,
                                    min_inner_angstrom)
        except TabulationError as exc:
            raise TabulationError(f"{label}: {exc}") from None
    n_species = len(kernel_module.SPECIES)

    # "pair tables in r²" and "force quartics": not the name of an older tabulated module (tables in r, or
    # the force from the energy's quintic), whose checkpoints would not resume bit for bit
    settings = (float(force_tolerance_ev_per_angstrom), float(max_force_ev_per_angstrom), float(min_inner_angstrom),
                "pair tables in r²", "force quartics")
    if radial:
        # not the name of an older tabulated module, which ran them closed form (or took their slopes from
        # the quintic's derivative)
        settings += ("triplet legs", "slope quartics", "legs of a neighbour on one grid")
    module = ModuleType(_module_name(kernel_module, settings),
                        f"Pair laws{' and triplet legs' if radial else ''} of {label} from quintic Hermite tables "
                        "(simulate.tabulate).")
    for name in dir(kernel_module):
        if name.isupper() and not name.startswith("_"):
            setattr(module, name, getattr(kernel_module, name))
    module.pair_energy_force_r2 = _make_kernel_r2(kernel_module.pair_energy_force,
                                                  _rows(tables["pair"], (n_species,) * 2))
    module.pair_energy_force = _of_r(module.pair_energy_force_r2)
    kernels = {"pair_energy_force": module.pair_energy_force, "CUTOFF_ANGSTROM": cutoff}
    if is_molecular(kernel_module):
        module.intra_pair_energy_force = _make_kernel(kernel_module.intra_pair_energy_force,
                                                      _rows(tables["intra"], (n_species,) * 2))
        kernels["intra_pair_energy_force"] = module.intra_pair_energy_force
    threebody = has_threebody(kernel_module)
    if threebody:
        # the exports and the O(N³) reference keep the closed form of the whole triplet law
        module.triplet_energy_gradient = kernel_module.triplet_energy_gradient
    if has_separable_triplets(kernel_module):
        module.triplet_radial, module.triplet_radial_two = _make_radial_kernels(
            kernel_module.triplet_radial, _leg_grids(radial, n_species), n_species,
            float(kernel_module.THREEBODY_CUTOFF_ANGSTROM))
        # R·R·P = w holds to the tables' error, absolute (~h⁶ R⁽⁶⁾, nothing relative where R → 0 at r_3):
        # each leg's table keeps a triplet's force within the force tolerance (see _radial_tables)
        module.TRIPLET_RADIAL_ALLOWANCE = 4.0 * float(force_tolerance_ev_per_angstrom)
    if threebody:
        kernels.update(triplet_energy_gradient=kernel_module.triplet_energy_gradient,
                       THREEBODY_CUTOFF_ANGSTROM=float(kernel_module.THREEBODY_CUTOFF_ANGSTROM))
    module.energy_forces = compile_reference(kernels, molecular=is_molecular(kernel_module), threebody=threebody)
    module.PAIR_TABLES = tuple(tables["pair"].values()) + tuple(tables["intra"].values())
    module.RADIAL_TABLES = tuple(t for t in radial.values() if t is not _NO_LAW)
    module.SOURCE_KERNEL_MODULE = kernel_module
    # the pair lookups share no product between energy and force (the energy's quintic, the force's
    # quartic); the closed pair law, called outside the tables, is compiled on its own, unfused. (A
    # closed-form triplet law passed through is inlined and fused, but the three-body passes sum its
    # energy in the forces-only pass too, see simulate.energy.CONTRACT.)
    module.FUSED_MULTIPLY_ADD = True
    module.FORCE_TOLERANCE_EV_PER_ANGSTROM = float(force_tolerance_ev_per_angstrom)
    check_kernel_module(module, f"tabulated {label}")
    return module


def describe(tabulated_module: ModuleType) -> str:
    """One line per pair law and per triplet leg: its table's range, cells, and the largest errors
    found at the test points (of u' and u for a pair law, of R' and R for a leg)."""
    lines = []
    for tables, slope, value in ((tabulated_module.PAIR_TABLES, "|ΔF| {:.1e} eV/Å", "|Δu| {:.1e} eV"),
                                 (getattr(tabulated_module, "RADIAL_TABLES", ()), "|ΔR'| {:.1e}", "|ΔR| {:.1e}")):
        for t in tables:
            lines.append(f"{t.name:>9}: [{t.inner_angstrom:.6f}, {t.outer_angstrom:.6f}] Å, {t.cells} cells of "
                         f"{f'{t.step:.4g} Å² in r²' if t.squared else f'{t.step * 1e3:.2f} mÅ'}, max {slope.format(t.force_error_ev_per_angstrom)}, "
                         f"max {value.format(t.energy_error_ev)}")
    return "\n".join(lines)
