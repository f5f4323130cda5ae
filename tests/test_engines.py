"""Search engines: engine choice, weighted sampling, Operon's front read faithfully, PySR never downloading."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import sympy

from discover import engines, symbolic
from discover.engines import EngineError, choose_engine, weighted_sample
from discover.model import parse_expression


@pytest.fixture
def no_julia(monkeypatch, tmp_path):
    """An environment with no Julia anywhere: empty PATH entry, no juliapkg variables."""
    monkeypatch.setenv("PATH", str(tmp_path))
    for variable in ("PYTHON_JULIAPKG_EXE", "PYTHON_JULIACALL_EXE"):
        monkeypatch.delenv(variable, raising=False)


def lj_curve():
    r = np.linspace(0.95, 2.5, 300)
    return r, 4.0 * (r**-12 - r**-6), np.ones_like(r)


def test_pysr_without_julia_fails_fast_with_one_line_and_imports_nothing(no_julia):
    r, u, w = lj_curve()
    started = time.perf_counter()
    with pytest.raises(EngineError) as error:
        engines.search("pysr", r, u, w)
    assert time.perf_counter() - started < 2.0
    message = str(error.value)
    assert "\n" not in message and "Julia" in message and "never downloads" in message
    assert "juliacall" not in sys.modules and "pysr" not in sys.modules and "juliapkg" not in sys.modules


def test_pysr_refusal_in_a_fresh_process_touches_no_network_client():
    script = textwrap.dedent("""
        import os, sys
        os.environ['PATH'] = '/nonexistent'
        os.environ.pop('PYTHON_JULIAPKG_EXE', None)
        import numpy as np
        from discover import engines
        try:
            engines.search('pysr', np.linspace(1, 2, 10), np.linspace(1, 2, 10), np.ones(10))
        except engines.EngineError as exc:
            print('refused:', exc)
        print(sorted(m for m in ('juliacall', 'juliapkg', 'pysr') if m in sys.modules))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert "refused: engine pysr: no Julia installation found" in done.stdout
    assert done.stdout.strip().endswith("[]")


def test_auto_chooses_operon_where_no_julia_is_found(no_julia):
    engine, reason = choose_engine("auto")
    assert engine == "operon" and "no Julia" in reason
    assert choose_engine("operon") == ("operon", "operon requested")
    with pytest.raises(EngineError, match="unknown engine 'gplearn'"):
        choose_engine("gplearn")


def test_weighted_sample_follows_weights_and_leaves_unsampled_gaps_empty():
    r = np.linspace(0.8, 4.0, 1601)
    weights = np.where((r > 1.2) & (r < 1.5), 0.0, 1.0) * np.where(r < 1.2, 3.0, 1.0)
    samples = weighted_sample(r, weights, 1000)
    assert not np.any((samples > 1.2 + 0.003) & (samples < 1.5 - 0.003))
    # three times the weight per Å below 1.2 Å as above 1.5 Å
    density_low = np.sum(samples < 1.2) / 0.4
    density_high = np.sum(samples > 1.5) / 2.5
    assert density_low / density_high == pytest.approx(3.0, rel=0.02)
    np.testing.assert_array_equal(samples, weighted_sample(r, weights, 1000))
    with pytest.raises(EngineError, match="not all zero"):
        weighted_sample(r, np.zeros_like(r))


def test_operon_front_is_read_node_by_node_exactly():
    from pyoperon.sklearn import SymbolicRegressor

    from discover.engines.operon import tree_to_sympy

    r = np.linspace(0.9, 2.5, 200)
    x = np.column_stack([r, 1.0 / r])
    y = np.exp(-r) * (2.0 - r) / (1.0 + r**2) + r**0.3
    regressor = SymbolicRegressor(allowed_symbols="add,sub,mul,div,pow,exp,square,constant,variable",
                                  objectives=["r2", "length"], population_size=100, generations=10, max_length=25,
                                  optimizer_iterations=3, random_state=3)
    regressor.fit(x, y)
    hashes = sorted(regressor.variables_, key=lambda h: int(regressor.variables_[h].lstrip("X")))
    variables = dict(zip(hashes, (symbolic.R, symbolic.INV_R)))
    for solution in regressor.pareto_front_:
        expr = symbolic.from_engine_variables(tree_to_sympy(solution["tree"], variables))
        ours = np.broadcast_to(sympy.lambdify(symbolic.R, expr, "numpy")(r), r.shape)
        theirs = regressor.evaluate_model(solution["tree"], x)
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)


def test_operon_search_returns_parseable_front_and_repeats_with_its_seed():
    r, u, w = lj_curve()
    settings = {"seed": 5, "population_size": 100, "generations": 15, "n_threads": 1}
    first = engines.search("operon", r, u, w, pair_type="ArAr", **settings)
    second = engines.search("operon", r, u, w, pair_type="ArAr", **settings)
    assert list(first.columns) == engines.FRONT_COLUMNS and len(first) >= 3
    assert first.equals(second)
    assert set(first["engine"]) == {"operon"} and set(first["pair_type"]) == {"ArAr"}
    for text in first["expression"]:
        assert parse_expression(text).free_symbols == {symbolic.R}


def test_library_recovers_buckingham_and_gaussian_laws_from_their_forces():
    r = np.linspace(1.3, 4.8, 4000)  # fine enough that interpolating onto the samples costs < 1e-4 of the force
    for family, expected in (("Buckingham exp-6", "900.0*exp(-3.2*r) - 2.5/r**6"),
                             ("exponential + Gaussian", "1.4*exp(-0.9*r) + 0.06*exp(-80.0*(r - 1.65)**2)")):
        law = parse_expression(expected)
        u = sympy.lambdify(symbolic.R, law)(r)
        force = -sympy.lambdify(symbolic.R, sympy.diff(law, symbolic.R))(r)
        front = engines.search("library", r, u, np.ones_like(r), force=force, pair_type="XY")
        assert list(front.columns) == engines.FRONT_COLUMNS and set(front["engine"]) == {"library"}
        row = front[front["family"] == family].iloc[0]
        found = parse_expression(row["expression"])
        # the force, not the energy offset, is what the family is fitted to: compare −du/dr
        difference = sympy.lambdify(symbolic.R, sympy.diff(found - law, symbolic.R))(r)
        assert np.max(np.abs(difference)) < 3e-4 * np.max(np.abs(force)), row["expression"]
        # the simpler families cannot carry the bump or the r^-6 tail as well
        assert row["loss"] < 1e-3 * front[front["family"] == "Born-Mayer exponential"]["loss"].iloc[0]


def test_library_front_is_deterministic_and_parseable():
    r, u, w = lj_curve()
    force = 4.0 * (12.0 * r**-13 - 6.0 * r**-7)
    first = engines.search("library", r, u, w, force=force, pair_type="ArAr")
    second = engines.search("library", r, u, w, force=force, pair_type="ArAr")
    assert first.equals(second) and len(first) >= 8
    for text in first["expression"]:
        assert parse_expression(text).free_symbols == {symbolic.R}
    lj = first[first["family"] == "Lennard-Jones 12-6"].iloc[0]
    assert lj["loss"] < 1e-6 * np.mean(force**2)  # exact but for interpolation onto the samples
