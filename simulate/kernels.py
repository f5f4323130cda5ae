"""The generated-kernel interface: the contract between ``discover.codegen`` and the simulator.

A kernel module is a standalone Python file that imports only ``numpy``, ``numba`` and
``math``. It defines, at module level:

``SPECIES``
    tuple of element symbols, e.g. ``("O", "H")``. An atom's *type* is the index of its
    species in this tuple.
``MASSES_AMU``
    tuple of masses in amu, one per species.
``CUTOFF_ANGSTROM``
    float, the pair cutoff r_c. Beyond it energy and force are exactly zero.
``pair_energy_force(type_i, type_j, r)``
    ``@numba.njit`` scalar kernel. ``r`` is a distance in Å with 0 < r. Returns a tuple
    ``(u_ev, force_over_r)`` where ``u_ev = u_{A_i A_j}(r)`` in eV and
    ``force_over_r = -u'(r) / r`` in eV/Å². The force on atom i from atom j is
    ``force_over_r * (x_i - x_j)``. Symmetric in (type_i, type_j), so Newton's third law holds.
``energy_forces(positions, types, box)``
    plain O(N²) minimum-image reference for small systems (orthorhombic ``box`` of three
    lengths in Å). Returns ``(energy_ev, forces_ev_per_angstrom (N,3), atom_loss_ev (N,))``
    where ``atom_loss_ev[k] = H_{A_k}(k) = Σ_j u(r_kj)`` is atom k's own loss and the total
    energy is ``E = ½ Σ_k H_{A_k}(k)`` for a pairwise model.

Optional, for speed:

``pair_energy_force_r2(type_i, type_j, r2)``
    ``@numba.njit`` scalar: the same law as ``pair_energy_force``, of the squared distance ``r2``
    (Å²). The pair passes of the simulator call it where it exists, and take no square root per pair.
    ``pair_energy_force(type_i, type_j, r)`` must equal it at ``r2 = r * r`` (checked at sample
    distances, to 10⁻¹² of the largest |u| and |force over r| over the samples), and so it returns
    exactly ``(0.0, 0.0)`` for ``r2 >= CUTOFF_ANGSTROM * CUTOFF_ANGSTROM``. Tabulated modules (``simulate.tabulate``) have it.
``FUSED_MULTIPLY_ADD``
    ``True`` lets the force loops fuse the inlined kernels' multiplies and adds (FMA, see
    ``simulate.energy.CONTRACT``): a promise that no product in the pair kernel feeds both its energy
    and its force (the three-body and bonded passes compute their energies in every pass, so their
    laws need no such promise). LLVM fuses a product only where it has a single use, so a product shared by the
    two would be fused in the forces-only pass (the energy gone) but not in the full one, and the
    two would give forces that differ in their last bits. Tabulated modules set it.

Optional, for many-body models:

``THREEBODY_CUTOFF_ANGSTROM``
    float, the cutoff r_3 of the three-body term (0 or absent: no three-body term).
``triplet_energy_gradient(type_k, type_j, type_l, r_kj, r_kl, cos_theta)``
    ``@numba.njit`` scalar kernel for the term w centred on atom k with neighbours j < l.
    Returns ``(w_ev, dw_dr_kj, dw_dr_kl, dw_dcos)``; zero when r_kj or r_kl ≥ r_3. Must be
    symmetric under swapping (j, r_kj) with (l, r_kl).

Optional, for a three-body law that is a product (every closed-form family mld fits is), both of:

``TRIPLET_COS_POLYNOMIAL``
    (S, S, S, D+1) nested tuple, D ≤ 3: ``[type_k][type_j][type_l][n]`` is the coefficient p_n of
    cos^n θ for a centre of type k with neighbours of types j and l; symmetric in (j, l).
``triplet_radial(type_k, type_j, type_other, r)``
    ``@numba.njit`` scalar: ``(R, dR_dr)``, the factor of the leg to a neighbour of type j at r Å
    when the triplet's other neighbour is of type ``type_other``; (0, 0) when r ≥ r_3.

``triplet_radial_two(type_k, type_j, type_other, r)``
    optional, ``@numba.njit`` scalar: ``(R_o, dR_o, R_o+1, dR_o+1)``, the legs to that neighbour for the
    other neighbour's types o and o + 1 at once ((0, 0) for o + 1 = S), the same numbers as two calls of
    ``triplet_radial``: the moment sums ask for every leg of a neighbour (a tabulated module finds
    the table cell once for both).

  such that ``triplet_energy_gradient(k, j, l, r1, r2, c)[0] = R(k, j, l, r1) · R(k, l, j, r2) ·
  Σ_n p_n[k][j][l] c^n``. The simulator then sums a centre's triplets by moments, in time linear in
  its neighbours (see :mod:`simulate.energy`); :func:`check_kernel_module` samples the identity and its
  three derivatives (to 10⁻⁹ of the terms summed, plus ``TRIPLET_RADIAL_ALLOWANCE``, in eV or eV/Å, 0 if
  absent: a tabulated module declares its tables' error there).

Optional, for molecular models (see :mod:`simulate.topology`):

``TOPOLOGY``
    ``"molecular"`` (absent or ``"atomic"``: no molecules).
``BOND_CUTOFF_ANGSTROM``
    (S, S) nested tuple: atoms of types a, b closer than ``[a][b]`` Å are bonded (0: never);
    molecules are the connected groups of bonded atoms of the starting frame, then fixed.
``INTRA_PAIR_TYPES``
    (S, S) nested tuple of bools: which type pairs have an intramolecular law.
``intra_pair_energy_force(type_i, type_j, r)``
    ``@numba.njit`` kernel like ``pair_energy_force``, for two atoms of one molecule, at any r.
    ``pair_energy_force`` then acts between molecules only.
``energy_forces(positions, types, box, molecules)``
    takes the molecule index of every atom as a fourth argument.

Per-atom loss and energy:
    pairwise: H_k = Σ_j u(r_kj);   E = ½ Σ_k Σ_j u(r_kj)
    three-body: w for centre k is added to H_k in full and to E once.

Kernel modules are code, produced by mld or written by hand, and are imported as such.
Model *files* (``model.json``) are data and are never executed; see ``discover.model``.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numba
import numpy as np

from simulate.errors import MldError
from simulate.topology import MoleculeError, bond_cutoff_matrix

REQUIRED_NAMES = ("SPECIES", "MASSES_AMU", "CUTOFF_ANGSTROM", "pair_energy_force", "energy_forces")


class KernelModuleError(MldError, ValueError):
    """A kernel module that does not follow the interface."""


def load_kernel_module(path: str | Path) -> ModuleType:
    """Import a kernel module from its file and check that it follows the interface."""
    path = Path(path)
    if path.is_dir():
        path = path / "kernels.py"
    if not path.is_file():
        raise KernelModuleError(f"{path}: no such kernel module")
    name = f"mld_kernels_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # numba caching needs the module importable by name
    spec.loader.exec_module(module)
    check_kernel_module(module, str(path))
    return module


def check_kernel_module(module: ModuleType, label: str = "kernel module") -> None:
    missing = [n for n in REQUIRED_NAMES if not hasattr(module, n)]
    if missing:
        raise KernelModuleError(f"{label}: missing {', '.join(missing)} (see simulate.kernels)")
    if len(module.SPECIES) != len(module.MASSES_AMU):
        raise KernelModuleError(f"{label}: SPECIES and MASSES_AMU differ in length")
    if not module.CUTOFF_ANGSTROM > 0:
        raise KernelModuleError(f"{label}: CUTOFF_ANGSTROM must be positive")
    topology = getattr(module, "TOPOLOGY", "atomic")
    if topology not in ("atomic", "molecular"):
        raise KernelModuleError(f"{label}: TOPOLOGY must be 'atomic' or 'molecular', not {topology!r}")
    if topology == "molecular":
        missing = [n for n in ("BOND_CUTOFF_ANGSTROM", "INTRA_PAIR_TYPES", "intra_pair_energy_force")
                   if not hasattr(module, n)]
        if missing:
            raise KernelModuleError(f"{label}: a molecular kernel module needs {', '.join(missing)}")
        n = len(module.SPECIES)
        try:
            bond_cutoff_matrix(module.BOND_CUTOFF_ANGSTROM, n)
        except (MoleculeError, ValueError, TypeError) as exc:
            raise KernelModuleError(f"{label}: BOND_CUTOFF_ANGSTROM: {exc}") from None
        if np.asarray(module.INTRA_PAIR_TYPES).shape != (n, n):
            raise KernelModuleError(f"{label}: INTRA_PAIR_TYPES must be a {n}×{n} table")
        if has_threebody(module):
            raise KernelModuleError(f"{label}: molecular kernels with three-body terms are not supported")
    check_squared_pair_law(module, label)
    check_separable_triplets(module, label)


SQUARED_SAMPLES = 64  # distances per species pair at which pair_energy_force_r2 is checked
SQUARED_RTOL = 1e-12


def check_squared_pair_law(module: ModuleType, label: str = "kernel module") -> None:
    """Refuse a ``pair_energy_force_r2`` that is not ``pair_energy_force`` at r² = r·r.

    Checked at distances from a tenth of the cutoff to past it, the cutoff itself among them: equal, or
    within 10⁻¹² of the largest finite |u| (|force over r|) of the law over those distances (a law
    written anew for r² rounds otherwise, and crosses zero).
    """
    if not hasattr(module, "pair_energy_force_r2"):
        return
    cutoff = float(module.CUTOFF_ANGSTROM)
    rng = np.random.default_rng(0)
    r_all = np.append(rng.uniform(0.1 * cutoff, 1.1 * cutoff, SQUARED_SAMPLES), cutoff)
    n = len(module.SPECIES)
    for a, b in np.ndindex(n, n):
        want = np.array([module.pair_energy_force(a, b, r) for r in r_all], dtype=float)
        got = np.array([module.pair_energy_force_r2(a, b, r * r) for r in r_all], dtype=float)
        with np.errstate(invalid="ignore"):
            size = np.max(np.where(np.isfinite(want), np.abs(want), 0.0), axis=0)
            close = (got == want) | (np.abs(got - want) <= SQUARED_RTOL * size) | (np.isnan(got) & np.isnan(want))
        if not close.all():
            k, q = np.argwhere(~close)[0]
            r = r_all[k]
            raise KernelModuleError(f"{label}: pair_energy_force_r2 gives {('u', 'force over r')[q]} = {got[k, q]:.12g} "
                                    f"at r² = {r * r:.6f} Å², pair_energy_force {want[k, q]:.12g} at r = {r:.6f} Å "
                                    f"(types {a} {b})")


def two_legs(triplet_radial, n_species: int):
    """A ``triplet_radial_two`` (see the module notes) from a ``triplet_radial``: its legs o and o + 1,
    the second (0, 0) where o + 1 = S; compiled into its callers (Numba's inlining)."""

    @numba.njit(inline="always")
    def both(type_k, type_j, type_other, r):
        a, da = triplet_radial(type_k, type_j, type_other, r)
        b, db = 0.0, 0.0
        if type_other + 1 < n_species:
            b, db = triplet_radial(type_k, type_j, type_other + 1, r)
        return a, da, b, db

    return both


def has_separable_triplets(module: ModuleType) -> bool:
    """Whether the three-body law comes as radial factors and cos-polynomials too (see the module notes)."""
    return has_threebody(module) and hasattr(module, "triplet_radial") and hasattr(module, "TRIPLET_COS_POLYNOMIAL")


SEPARABLE_SAMPLES = 64  # random triplets per species triple at which a separable law is checked
# ... with legs from this fraction of r_3 up to r_3: 0.48 Å for water's 3.2 Å, below any bond (O–H ≥ 0.88 Å
# in the data), so that the short legs the moment sums meet are checked too
SEPARABLE_CHECK_FROM_FRACTION = 0.15
SEPARABLE_RTOL = 1e-9
MAX_COS_DEGREE = 3  # the highest power of cos θ in TRIPLET_COS_POLYNOMIAL: the moments hold û^⊗n, n ≤ 3


def check_separable_triplets(module: ModuleType, label: str = "kernel module") -> None:
    """Refuse a separable form that is malformed or does not reproduce ``triplet_energy_gradient``."""
    if hasattr(module, "triplet_radial") != hasattr(module, "TRIPLET_COS_POLYNOMIAL"):
        raise KernelModuleError(f"{label}: triplet_radial and TRIPLET_COS_POLYNOMIAL come together")
    if not has_separable_triplets(module):
        return
    s = len(module.SPECIES)
    try:
        poly = np.asarray(module.TRIPLET_COS_POLYNOMIAL, dtype=float)
    except (TypeError, ValueError) as exc:
        raise KernelModuleError(f"{label}: TRIPLET_COS_POLYNOMIAL is not a table of numbers: {exc}") from None
    if poly.ndim != 4 or poly.shape[:3] != (s, s, s) or not 1 <= poly.shape[3] <= MAX_COS_DEGREE + 1:
        raise KernelModuleError(f"{label}: TRIPLET_COS_POLYNOMIAL must be {s}×{s}×{s}×(D+1) with D ≤ {MAX_COS_DEGREE}, "
                                f"not {'×'.join(map(str, poly.shape))}")
    if not np.all(np.isfinite(poly)) or not np.array_equal(poly, poly.transpose(0, 2, 1, 3)):
        raise KernelModuleError(f"{label}: TRIPLET_COS_POLYNOMIAL must be finite and symmetric in its 2nd and 3rd index")
    r3 = float(module.THREEBODY_CUTOFF_ANGSTROM)
    allowance = float(getattr(module, "TRIPLET_RADIAL_ALLOWANCE", 0.0))
    rng = np.random.default_rng(0)
    shortest = SEPARABLE_CHECK_FROM_FRACTION * r3
    for k, j, l in np.ndindex(s, s, s):
        p = poly[k, j, l]
        powers = np.arange(len(p))
        for r1, r2, c in zip(rng.uniform(shortest, r3, SEPARABLE_SAMPLES), rng.uniform(shortest, r3, SEPARABLE_SAMPLES),
                             rng.uniform(-1.0, 1.0, SEPARABLE_SAMPLES)):
            law = module.triplet_energy_gradient(k, j, l, r1, r2, c)
            a, da = module.triplet_radial(k, j, l, r1)
            b, db = module.triplet_radial(k, l, j, r2)
            cos_powers = c ** powers
            value, size = p @ cos_powers, np.abs(p) @ np.abs(cos_powers)
            slope = (p[1:] * powers[1:]) @ c ** (powers[1:] - 1)
            slope_size = np.abs(p[1:] * powers[1:]) @ np.abs(c) ** (powers[1:] - 1)
            # (w, ∂w/∂r_kj, ∂w/∂r_kl, ∂w/∂cos θ) from the factors, and the size of the terms each sums
            # (relative to those, not to w: w is small near a zero of P)
            product = (a * b * value, da * b * value, a * db * value, a * b * slope)
            sizes = (abs(a * b) * size, abs(da * b) * size, abs(a * db) * size, abs(a * b) * slope_size)
            for what, got, want, scale in zip(("w", "∂w/∂r_kj", "∂w/∂r_kl", "∂w/∂cos θ"), product, law, sizes):
                if not abs(got - want) <= SEPARABLE_RTOL * scale + allowance + 1e-300:
                    raise KernelModuleError(
                        f"{label}: triplet_radial × TRIPLET_COS_POLYNOMIAL gives {what} = {got:.6g}, "
                        f"triplet_energy_gradient {want:.6g} (types {k} {j} {l}, r {r1:.3f} {r2:.3f} Å, cos {c:.3f})")
    for k, j, l in np.ndindex(s, s, s):
        if tuple(module.triplet_radial(k, j, l, r3)) != (0.0, 0.0):
            raise KernelModuleError(f"{label}: triplet_radial must be exactly zero at the three-body cutoff")
    if hasattr(module, "triplet_radial_two"):
        for k, j, o in np.ndindex(s, s, s):
            for r in np.append(rng.uniform(0.5 * shortest, r3, SEPARABLE_SAMPLES), r3):
                want = tuple(module.triplet_radial(k, j, o, r)) + (
                    tuple(module.triplet_radial(k, j, o + 1, r)) if o + 1 < s else (0.0, 0.0))
                if not np.array_equal(module.triplet_radial_two(k, j, o, r), want, equal_nan=True):
                    raise KernelModuleError(f"{label}: triplet_radial_two({k}, {j}, {o}, {r:.6g}) is not "
                                            f"triplet_radial of the legs {o} and {o + 1}")


def is_molecular(module: ModuleType) -> bool:
    return getattr(module, "TOPOLOGY", "atomic") == "molecular"


def has_threebody(module: ModuleType) -> bool:
    return getattr(module, "THREEBODY_CUTOFF_ANGSTROM", 0.0) > 0 and hasattr(module, "triplet_energy_gradient")
