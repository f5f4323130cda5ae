"""model.json: safe parsing, round trips, and the pair energy the simulator will run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import sympy

from discover import symbolic
from discover.force_matching import TabulatedModel, clamped_knots, repulsive_core
from discover.model import Model, ModelError, load_model, parse_expression
from discover.symbolic import R

CUTOFF = 4.5
R_MIN = {"OO": 2.4, "OH": 0.85, "HH": 1.4}
LAWS = {
    "OO": "1500.0*exp(-r/0.26) - 8.0/r**6",
    "OH": "4.5*(1 - exp(-2.2*(r - 0.98)))**2 - 4.5",
    "HH": "60.0*exp(-r/0.3)",
}


def water_like_model() -> Model:
    return Model.closed_form({n: parse_expression(t) for n, t in LAWS.items()}, ("O", "H"), CUTOFF, R_MIN,
                             provenance={"source": "test"})


def smooth_tabulated() -> TabulatedModel:
    from scipy.interpolate import make_lsq_spline

    knots, coefficients = [], []
    for r0, force in ((2.4, lambda r: 0.4 * np.exp(-((r - 2.8) ** 2) / 0.1) - 0.05),
                      (0.85, lambda r: 5.0 * np.exp(-3.0 * (r - 0.95)) - 1.0),
                      (1.4, lambda r: 0.3 * np.sin(3.0 * r))):
        k = clamped_knots(r0, CUTOFF, 0.1)
        grid = np.linspace(r0, CUTOFF, 400)
        c = make_lsq_spline(grid, force(grid), k, 3).c
        c[-1] = 0.0  # f(r_c) = 0, as force matching fixes it
        knots.append(k)
        coefficients.append(c)
    return TabulatedModel(("O", "H"), ("OO", "OH", "HH"), CUTOFF, np.array([2.4, 0.85, 1.4]), knots, coefficients)


def write_model(tmp_path, mutate) -> str:
    data = water_like_model().to_dict()
    mutate(data)
    path = tmp_path / "model.json"
    path.write_text(json.dumps(data))
    return str(path)


# --- safe parsing ----------------------------------------------------------------------------


def test_expression_text_round_trips_exactly():
    expr = parse_expression("99275.1/r**12 - 64.2639/r**6 + 0.5*exp(-r/0.3)*tanh(r) + sqrt(r) - abs(log(r))")
    again = parse_expression(symbolic.to_text(expr))
    assert sympy.simplify(expr - again) == 0
    r = np.linspace(0.5, 5.0, 50)
    f, g = sympy.lambdify(R, expr), sympy.lambdify(R, again)
    np.testing.assert_array_equal(f(r), g(r))


def test_parser_accepts_pow_and_unary_minus_and_inv_r_when_allowed():
    expr = parse_expression("-pow(r, -2) + +inv_r", variables=("r", "inv_r"))
    assert symbolic.from_engine_variables(expr).equals(1 / R - 1 / R**2)


@pytest.mark.parametrize(
    "text, says",
    [
        ("__import__('os').system('touch HACKED')", "only plain calls"),
        ("__import__('os')", "unknown function '__import__'"),
        ("r.__class__", "Attribute is not allowed"),
        ("(lambda: 1)()", "only plain calls"),
        ("r[0]", "Subscript is not allowed"),
        ("open('x')", "unknown function 'open'"),
        ("exp(r, 2)", "exactly 1 positional"),
        ("exp(x=r)", "exactly 1 positional"),
        ("exp(*[r])", "exactly 1 positional"),
        ("x + 1", "unknown name 'x'"),
        ("'abc'", "not a real number"),
        ("True * r", "not a real number"),
        ("1j * r", "not a real number"),
        ("r if r else 1", "IfExp is not allowed"),
        ("r < 1", "Compare is not allowed"),
        ("r ** 10 ** 10", "out of range"),
        ("2 ** 99999", "out of range"),
        ("r; r", "not a valid expression"),
        ("exp(" * 70 + "r" + ")" * 70, "nested deeper"),
        ("+".join(["r"] * 1000), "more than 600 nodes"),
        ("+".join(["r"] * 3000), "longer than"),
        ("r / 0", "division by zero"),
        ("", "empty expression"),
    ],
)
def test_parser_refuses_code_and_malformed_text(tmp_path, monkeypatch, text, says):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelError, match="model.json: pair_types.OO.expression") as error:
        parse_expression(text, "model.json: pair_types.OO.expression")
    assert says in str(error.value)
    assert "\n" not in str(error.value)
    assert not (tmp_path / "HACKED").exists()


@pytest.mark.parametrize(
    "mutate, field",
    [
        (lambda d: d["pair_types"]["OH"].update(expression="__import__('os').system('touch HACKED')"),
         "pair_types.OH.expression"),
        (lambda d: d["pair_types"]["HH"].update(expression=["r"]), "pair_types.HH.expression"),
        (lambda d: d.update(schema="something.else"), "schema"),
        (lambda d: d.update(schema_version=99), "schema_version"),
        (lambda d: d.update(kind="neural"), "kind"),
        (lambda d: d.update(cutoff_angstrom=-1.0), "cutoff_angstrom"),
        (lambda d: d.update(cutoff_treatment="truncated"), "cutoff_treatment"),
        (lambda d: d.update(masses_amu=[16.0]), "masses_amu"),
        (lambda d: d["pair_types"].pop("HH"), "pair_types"),
        (lambda d: d["pair_types"]["OO"].update(r_min_angstrom=9.0), "pair_types.OO.r_min_angstrom"),
        (lambda d: d["pair_types"]["OO"]["core"].update(stiffness_ev_per_angstrom2="hard"),
         "pair_types.OO.core.stiffness_ev_per_angstrom2"),
        (lambda d: d["pair_types"]["OO"].update(expression="log(r - 3.0)"), "pair_types.OO.expression"),
        (lambda d: d.update(provenance="me"), "provenance"),
    ],
)
def test_loading_refuses_bad_model_files_naming_file_and_field(tmp_path, monkeypatch, mutate, field):
    monkeypatch.chdir(tmp_path)
    path = write_model(tmp_path, mutate)
    with pytest.raises(ModelError) as error:
        load_model(path)
    message = str(error.value)
    assert message.startswith(path) and field in message and "\n" not in message
    assert not (tmp_path / "HACKED").exists()


def test_loading_refuses_files_that_are_not_json(tmp_path):
    path = tmp_path / "model.json"
    path.write_text("{ not json")
    with pytest.raises(ModelError, match="not valid JSON"):
        load_model(path)
    with pytest.raises(ModelError, match="no such model file"):
        load_model(tmp_path / "missing.json")


# --- round trips ---------------------------------------------------------------------------------


def test_closed_form_model_round_trips_through_its_file(tmp_path):
    model = water_like_model()
    loaded = load_model(model.save(tmp_path / "model.json"))
    r = np.linspace(0.3, 5.0, 500)
    for t in range(3):
        np.testing.assert_array_equal(loaded.energy(t, r), model.energy(t, r))
        np.testing.assert_array_equal(loaded.force(t, r), model.force(t, r))
    assert loaded.provenance == {"source": "test"}


def test_tabulated_model_round_trips_and_equals_its_tables(tmp_path):
    tabulated = smooth_tabulated()
    loaded = load_model(Model.from_tabulated(tabulated).save(tmp_path / "model.json"))
    assert loaded.kind == "tabulated"
    r = np.linspace(0.3, 5.0, 500)
    for t in range(3):
        np.testing.assert_array_equal(loaded.energy(t, r), tabulated.energy(t, r))
        np.testing.assert_array_equal(loaded.force_over_r(t, r), tabulated.force_over_r(t, r))


# --- the pair energy ---------------------------------------------------------------------------------


def test_energy_and_force_vanish_at_the_cutoff():
    model = water_like_model()
    for t in range(3):
        u, f = model.energy_and_force(t, np.array([CUTOFF - 1e-7, CUTOFF, CUTOFF + 1.0]))
        assert np.all(np.abs(u) < 1e-9) and np.all(np.abs(f) < 1e-5)


def test_force_is_minus_the_energy_derivative_across_core_and_law():
    model = water_like_model()
    h = 1e-6
    for t, name in enumerate(model.pair_types):
        r = np.linspace(R_MIN[name] - 0.3, CUTOFF - 0.01, 301)
        numeric = -(model.energy(t, r + h) - model.energy(t, r - h)) / (2 * h)
        np.testing.assert_allclose(model.force(t, r), numeric, rtol=1e-6, atol=1e-6)


def test_energy_and_force_are_continuous_at_r_min_and_the_core_repels():
    model = water_like_model()
    for t, name in enumerate(model.pair_types):
        r0 = R_MIN[name]
        u, f = model.energy_and_force(t, np.array([r0 - 1e-9, r0]))
        assert abs(u[0] - u[1]) < 1e-6 and abs(f[0] - f[1]) < 1e-5
        below = np.linspace(r0 - 0.8, r0 - 0.1, 50)
        force_below = model.force(t, below)
        assert np.all(force_below > 0) and np.all(np.diff(force_below) < 0)


def test_core_equals_force_matching_repulsive_core():
    model = water_like_model()
    for t, name in enumerate(model.pair_types):
        u0, du0 = model.core_join(name)
        r = np.linspace(R_MIN[name] - 0.5, R_MIN[name] - 1e-3, 40)
        expected_u, _expected_du = repulsive_core(r, R_MIN[name], u0, du0)
        np.testing.assert_allclose(model.energy(t, r), expected_u, rtol=1e-12)
        symbolic_u = sympy.lambdify(R, model.core_expression(name))(r)
        np.testing.assert_allclose(symbolic_u, expected_u, rtol=1e-9)


def test_piecewise_pair_expressions_equal_the_numeric_model():
    model = water_like_model()
    r = np.linspace(0.5, 5.0, 200)
    for t, (name, piecewise) in enumerate(model.pair_expressions().items()):
        values = np.array([float(piecewise.subs(R, x)) for x in r[::10]])
        np.testing.assert_allclose(values, model.energy(t, r[::10]), rtol=1e-10, atol=1e-12)


def test_equations_name_each_species_loss_as_a_sum_over_neighbour_species():
    text = symbolic.equations_markdown(water_like_model())
    assert "H_O(k) = Σ_{j∈O, r_kj<r_c} u_OO(r_kj) + Σ_{j∈H, r_kj<r_c} u_OH(r_kj)" in text
    assert "H_H(k) = Σ_{j∈O, r_kj<r_c} u_OH(r_kj) + Σ_{j∈H, r_kj<r_c} u_HH(r_kj)" in text
    assert r"H_{\mathrm{O}}(k)" in text and "$$" in text and "eV" in text and "Å" in text
