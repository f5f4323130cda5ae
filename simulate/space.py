"""Periodic space: displacements and wrapping under the minimum-image convention.

Cells are (3,3) arrays whose rows are the cell vectors, in Å. Orthorhombic cells are the
common case; the general (triclinic) form works through fractional coordinates and is
exact whenever the cutoff is at most half the smallest perpendicular width of the cell.
"""

from __future__ import annotations

import numpy as np

from simulate.errors import MldError


def perpendicular_widths(cell: np.ndarray) -> np.ndarray:
    """Distances between opposite faces of the cell (Å): volume / |a_j × a_k|."""
    cell = np.asarray(cell, dtype=float)
    volume = abs(np.linalg.det(cell))
    crosses = np.cross(cell[[1, 2, 0]], cell[[2, 0, 1]])
    return volume / np.linalg.norm(crosses, axis=1)


def max_minimum_image_cutoff(cell: np.ndarray) -> float:
    """Largest cutoff (Å) for which the minimum image finds every neighbour exactly once."""
    return 0.5 * float(perpendicular_widths(cell).min())


def is_orthorhombic(cell: np.ndarray, tol: float = 1e-9) -> bool:
    cell = np.asarray(cell, dtype=float)
    return bool(np.all(np.abs(cell - np.diag(np.diag(cell))) < tol))


def minimum_image(displacements: np.ndarray, cell: np.ndarray) -> np.ndarray:
    """Map displacement vectors (..., 3) in Å to their minimum image in ``cell``."""
    cell = np.asarray(cell, dtype=float)
    if is_orthorhombic(cell):
        lengths = np.diag(cell)
        return displacements - lengths * np.round(displacements / lengths)
    fractional = displacements @ np.linalg.inv(cell)
    fractional -= np.round(fractional)
    return fractional @ cell


def wrap_positions(positions: np.ndarray, cell: np.ndarray) -> np.ndarray:
    """Positions (N,3) in Å folded into the cell [0, 1) in fractional coordinates."""
    cell = np.asarray(cell, dtype=float)
    fractional = positions @ np.linalg.inv(cell)
    fractional -= np.floor(fractional)
    return fractional @ cell


def box_lengths(box) -> np.ndarray:
    """The three edge lengths (Å) of an orthorhombic box given as lengths (3,) or a cell (3,3).

    The MD engine works in orthorhombic boxes only; a triclinic cell is refused here, at the edge.
    """
    box = np.asarray(box, dtype=float)
    if box.shape == (3, 3):
        if not is_orthorhombic(box):
            raise MldError("the MD engine needs an orthorhombic box; this cell is triclinic")
        box = np.diag(box).copy()
    if box.shape != (3,) or not np.all(np.isfinite(box)) or np.any(box <= 0):
        raise MldError(f"box must be three positive lengths in Å, got {box.tolist()}")
    return box

