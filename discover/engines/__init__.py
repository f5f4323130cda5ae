"""Symbolic search engines behind one interface.

``search(engine, r, u, weights, ...)`` returns the Pareto front of closed forms u(r) for one pair
type as a DataFrame with columns ``FRONT_COLUMNS``: ``expression`` is text in mld's safe grammar
(the variable ``r`` in Å, energy in eV; see ``discover.model``), ``complexity`` the size of its
tree, ``loss`` the engine's weighted mean squared error on its own target.

Engines (one module each):

* ``operon`` — pyoperon (Burlacu, Kronberger & Kommenda, GECCO 2020), searching u(r) from the
  inputs r and 1/r;
* ``pysr`` — PySR (Cranmer, arXiv 2305.01582), which needs a Julia installation; it fits the force
  −du/dr directly through a template expression with a derivative;
* ``library`` — classic pair-law families (Born–Mayer, inverse power, Yukawa, Lennard-Jones,
  Buckingham, Morse-like, sums with a 1/r tail or a Gaussian) fitted to the force; by default its
  candidates join every other engine's front (``search_tabulated(library=True)``), labelled
  ``library`` with their family named;
* ``auto`` — PySR where Julia is found, else Operon.

Searches see the sampled range only, weighted by the pair counts at each r: a law is asked to be
right where the data are, and the refit and the smoothness check (``discover.refit``) judge it
everywhere else.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from simulate.errors import MldError

ENGINE_NAMES = ("auto", "operon", "pysr", "library")
FRONT_COLUMNS = ["pair_type", "engine", "family", "complexity", "loss", "expression"]
DEFAULT_SAMPLES = 400
DEFAULT_GRID_POINTS = 800


class EngineError(MldError, RuntimeError):
    """A search engine that cannot run here, or bad search input."""


def choose_engine(name: str = "auto") -> tuple[str, str]:
    """(engine that will run, why). ``auto`` takes PySR only where Julia is already installed."""
    from discover.engines import pysr as pysr_engine

    if name not in ENGINE_NAMES:
        raise EngineError(f"unknown engine {name!r}: choose one of {', '.join(ENGINE_NAMES)}")
    if name != "auto":
        return name, f"{name} requested"
    julia = pysr_engine.find_julia()
    if julia is not None and pysr_engine.pysr_installed():
        return "pysr", f"auto: Julia found at {julia} and pysr installed"
    why = "no Julia installation found" if julia is None else "pysr package not installed"
    return "operon", f"auto: {why}, using Operon"


def weighted_sample(r: np.ndarray, weights: np.ndarray, n_samples: int = DEFAULT_SAMPLES) -> np.ndarray:
    """``n_samples`` distances spread like ``weights`` over the grid ``r``: evenly spaced quantiles.

    Deterministic (no random draw), and a region of zero weight (an unsampled gap) gets no point.
    """
    r = np.asarray(r, dtype=float)
    weights = np.clip(np.asarray(weights, dtype=float), 0.0, None)
    if r.ndim != 1 or r.shape != weights.shape or r.size < 2 or np.any(np.diff(r) <= 0):
        raise EngineError("search input: r must be an increasing 1-D grid with one weight per point")
    if not np.all(np.isfinite(weights)) or weights.sum() <= 0:
        raise EngineError("search input: weights must be finite, non-negative and not all zero")
    # the weight of each grid interval is the mean of its ends; sample its CDF at mid-quantiles
    interval = 0.5 * (weights[1:] + weights[:-1]) * np.diff(r)
    cdf = np.concatenate([[0.0], np.cumsum(interval)])
    cdf /= cdf[-1]
    quantiles = (np.arange(n_samples) + 0.5) / n_samples
    keep = np.concatenate([[True], np.diff(cdf) > 0])  # np.interp needs increasing x
    return np.interp(quantiles, cdf[keep], r[keep])


def search(
    engine: str,
    r: np.ndarray,
    u: np.ndarray,
    weights: np.ndarray,
    *,
    force: np.ndarray | None = None,
    pair_type: str = "",
    seed: int = 0,
    budget_s: float = 60.0,
    **options,
) -> pd.DataFrame:
    """Pareto front of closed forms for one pair type (see the module docstring).

    ``r`` (Å) is an increasing grid over the sampled range, ``u`` (eV) and ``force`` (eV/Å, optional:
    −du/dr by finite differences if absent) the target on it, ``weights`` the pair counts there.
    ``engine`` is ``operon``, ``pysr`` or ``library`` (use ``choose_engine`` to resolve ``auto``).
    """
    r = np.asarray(r, dtype=float)
    u = np.asarray(u, dtype=float)
    if u.shape != r.shape or not np.all(np.isfinite(u)):
        raise EngineError("search input: u must be finite with one value per grid point")
    force = -np.gradient(u, r) if force is None else np.asarray(force, dtype=float)
    samples = weighted_sample(r, weights, options.pop("n_samples", DEFAULT_SAMPLES))
    u_samples = np.interp(samples, r, u)
    f_samples = np.interp(samples, r, force)
    if engine == "operon":
        from discover.engines import operon

        front = operon.search(samples, u_samples, seed=seed, budget_s=budget_s, **options)
    elif engine == "pysr":
        from discover.engines import pysr as pysr_engine

        front = pysr_engine.search(samples, u_samples, f_samples, seed=seed, budget_s=budget_s, **options)
    elif engine == "library":
        from discover.engines import library

        front = library.search(samples, f_samples, **options)
    else:
        raise EngineError(f"unknown engine {engine!r}: choose operon, pysr or library (or resolve auto with "
                          "choose_engine)")
    front.insert(0, "pair_type", pair_type)
    if "family" not in front:
        front["family"] = ""
    return front[FRONT_COLUMNS].reset_index(drop=True)


def search_tabulated(
    tabulated,
    histogram,
    engine: str = "auto",
    *,
    seed: int = 0,
    budget_s: float = 60.0,
    grid_points: int = DEFAULT_GRID_POINTS,
    library: bool = True,
    log=None,
    **options,
) -> tuple[pd.DataFrame, str, str]:
    """Search every pair type of a ``force_matching.TabulatedModel`` on its sampled range.

    ``histogram`` is the ``force_matching.PairHistogram`` of the training frames (its counts weight
    the search). With ``library`` the library families join the engine's front (``options`` go to
    the engine only). Returns ``(front of all pair types, engine that ran, why)``.
    """
    engine_used, reason = choose_engine(engine)
    if log is not None:
        log(f"search engine: {engine_used} ({reason})")
    fronts = []
    for t, name in enumerate(tabulated.pair_types):
        r_min = float(tabulated.r_min_angstrom[t])
        grid = np.linspace(r_min, tabulated.r_end(t), grid_points, endpoint=False)
        u, f = tabulated.energy_and_force(t, grid)
        bins = np.clip(np.searchsorted(histogram.edges_angstrom, grid, side="right") - 1, 0,
                       histogram.counts.shape[1] - 1)
        weights = histogram.counts[histogram.pair_types.index(name), bins].astype(float)
        found = [search(engine_used, grid, u, weights, force=f, pair_type=name, seed=seed, budget_s=budget_s,
                        **options)]
        if library and engine_used != "library":
            found.append(search("library", grid, u, weights, force=f, pair_type=name))
        fronts += found
        if log is not None:
            log(f"  {name}: " + ", ".join(f"{len(front)} {front['engine'].iloc[0]}" for front in found if len(front))
                + " candidates")
    return pd.concat(fronts, ignore_index=True), engine_used, reason
