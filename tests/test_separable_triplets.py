"""The separable form of triplet laws: w(r_kj, r_kl, cos θ) = R(r_kj) R(r_kl) P(cos θ) (simulate.kernels).

Generated kernels give it (``TRIPLET_COS_POLYNOMIAL``, ``triplet_radial``) when every closed-form
law of the model separates; the hand-written Stillinger–Weber example gives it by hand.
"""

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import sympy

from discover import symbolic, threebody
from discover.codegen import NotSeparableError, kernel_source, separate_triplet_law, write_kernels
from discover.model import Model
from simulate import tabulate
from simulate.kernels import load_kernel_module

HERE = Path(__file__).resolve().parent
MANYBODY = HERE / "fixtures" / "learned_models" / "manybody.json"
SW_TRIPLET = HERE / "kernel_examples" / "sw_triplet.py"
TOLERANCE = 1e-12  # relative to the size of the terms summed: rounding only
R1, R2, C = threebody.R1, threebody.R2, threebody.C
CUT = "(1 - 25*r1**2/256)**3*(1 - 25*r2**2/256)**3"  # vanishes with its gradient at r_3 = 3.2 Å


def _model_with_laws(laws: dict) -> Model:
    """The learned many-body model's pair laws with the given closed-form triplet laws {type: text}."""
    data = json.loads(MANYBODY.read_text())
    data["threebody"]["triplet_types"] = {name: {"expression": text} for name, text in laws.items()}
    return Model.from_dict(data, "test model")


@pytest.fixture(scope="module")
def modules(tmp_path_factory):
    work = tmp_path_factory.mktemp("separable")
    return {"learned many-body": load_kernel_module(write_kernels(Model.load(MANYBODY), work / "kernels.py")),
            "sw_triplet": load_kernel_module(SW_TRIPLET)}


def _separated(module, k, j, l, r1, r2, c):
    """(w, ∂w/∂r1, ∂w/∂r2, ∂w/∂c) from the separable form, and the size of the terms summed for each."""
    p = np.array(module.TRIPLET_COS_POLYNOMIAL[k][j][l])
    n = np.arange(len(p))
    a, da = module.triplet_radial(k, j, l, r1)
    b, db = module.triplet_radial(k, l, j, r2)
    poly, size = float(np.sum(p * c**n)), float(np.sum(np.abs(p * c**n)))
    dpoly, dsize = float(np.sum((n * p)[1:] * c ** (n[1:] - 1))), float(np.sum(np.abs((n * p)[1:] * c ** (n[1:] - 1))))
    return ((a * b * poly, da * b * poly, a * db * poly, a * b * dpoly),
            (abs(a * b) * size, abs(da * b) * size, abs(a * db) * size, abs(a * b) * dsize))


@pytest.mark.parametrize("name", ["learned many-body", "sw_triplet"])
def test_separable_form_reproduces_the_triplet_energy_and_its_gradient(modules, name):
    module = modules[name]
    r3 = module.THREEBODY_CUTOFF_ANGSTROM
    n_species = len(module.SPECIES)
    rng = np.random.default_rng(7)
    live = 0
    for k, j, l in itertools.product(range(n_species), repeat=3):
        r1s, r2s = rng.uniform(0.25 * r3, r3, 48), rng.uniform(0.25 * r3, r3, 48)
        cs = np.concatenate([[-1.0, 1.0], rng.uniform(-1.0, 1.0, 46)])
        for r1, r2, c in zip(r1s, r2s, cs):
            direct = module.triplet_energy_gradient(k, j, l, r1, r2, c)
            separated, sizes = _separated(module, k, j, l, r1, r2, c)
            for d, s, size, what in zip(direct, separated, sizes, ("w", "dw/dr_kj", "dw/dr_kl", "dw/dcos")):
                assert abs(d - s) <= TOLERANCE * max(size, abs(d)), (k, j, l, r1, r2, c, what, d, s)
            live += direct[0] != 0.0
    # not vacuous: the learned model has a law on every triplet type, the example on H–O–H only
    assert live == (n_species**3 if name == "learned many-body" else 1) * 48


@pytest.mark.parametrize("name", ["learned many-body", "sw_triplet"])
def test_radial_factor_is_exactly_zero_at_and_beyond_the_cutoff(modules, name):
    module = modules[name]
    r3 = module.THREEBODY_CUTOFF_ANGSTROM
    n_species = len(module.SPECIES)
    for k, j, other in itertools.product(range(n_species), repeat=3):
        for r in (r3, np.nextafter(r3, np.inf), r3 + 0.3, 3.0 * r3):
            assert module.triplet_radial(k, j, other, r) == (0.0, 0.0)
    assert module.triplet_radial(0, 1, 1, r3 - 0.3 * r3)[0] > 0.0


@pytest.mark.parametrize("name", ["learned many-body", "sw_triplet"])
def test_cos_polynomial_is_a_symmetric_table_of_degree_at_most_three(modules, name):
    module = modules[name]
    table = np.array(module.TRIPLET_COS_POLYNOMIAL, dtype=float)
    n_species = len(module.SPECIES)
    assert table.shape[:3] == (n_species,) * 3 and 1 <= table.shape[3] <= 4
    np.testing.assert_array_equal(table, table.transpose(0, 2, 1, 3))
    has_law = np.any(table != 0.0, axis=3)
    expected = np.ones((2, 2, 2), bool) if name == "learned many-body" else np.zeros((2, 2, 2), bool)
    expected[0, 1, 1] = True
    np.testing.assert_array_equal(has_law, expected)


def test_sw_example_polynomial_is_its_expanded_angular_factor(modules):
    module = modules["sw_triplet"]
    c = np.linspace(-1.0, 1.0, 9)
    p = np.array(module.TRIPLET_COS_POLYNOMIAL[0][1][1])
    expected = 2.0 * (c - np.cos(np.radians(104.5))) ** 2  # λ (c − cos θ0)², λ = 2 eV
    np.testing.assert_allclose(p @ c[None, :] ** np.arange(3)[:, None], expected, rtol=0, atol=1e-14)


@pytest.mark.parametrize("name", ["learned many-body", "sw_triplet"])
def test_radial_derivative_matches_a_central_difference(modules, name):
    module = modules[name]
    r3 = module.THREEBODY_CUTOFF_ANGSTROM
    n_species = len(module.SPECIES)
    h = 1e-5
    for k, j, other in itertools.product(range(n_species), repeat=3):
        rs = np.linspace(0.25 * r3, 0.97 * r3, 40)
        values = np.array([module.triplet_radial(k, j, other, r) for r in rs])
        central = np.array([(module.triplet_radial(k, j, other, r + h)[0]
                             - module.triplet_radial(k, j, other, r - h)[0]) / (2 * h) for r in rs])
        scale = np.max(np.abs(values[:, 1]))
        assert np.all(np.abs(central - values[:, 1]) <= 1e-7 * scale), (k, j, other)


def test_a_law_that_does_not_separate_gets_only_the_triplet_kernel(tmp_path):
    text = f"{CUT}*exp(-r1*r2)*c"  # e^{−r1 r2}: no product of one function of r1 and one of r2
    model = _model_with_laws({"HOH": text, "OOH": f"{CUT}*exp(-r1)*exp(-r2)*c**2"})
    source = kernel_source(model)
    assert "# no separable triplet form (TRIPLET_COS_POLYNOMIAL, triplet_radial): HOH: not a product" in source
    module = load_kernel_module(write_kernels(model, tmp_path / "kernels.py"))
    assert not hasattr(module, "triplet_radial") and not hasattr(module, "TRIPLET_COS_POLYNOMIAL")
    rng = np.random.default_rng(3)
    r1, r2, c = rng.uniform(0.8, 3.2, 20), rng.uniform(0.8, 3.2, 20), rng.uniform(-1, 1, 20)
    law = sympy.lambdify((R1, R2, C), sympy.sympify(text, locals={"r1": R1, "r2": R2, "c": C}))
    for x, y, z in zip(r1, r2, c):
        w = module.triplet_energy_gradient(0, 1, 1, x, y, z)[0]
        assert w == pytest.approx(law(x, y, z), rel=1e-12, abs=1e-300)
        assert module.triplet_energy_gradient(1, 1, 1, x, y, z) == (0.0, 0.0, 0.0, 0.0)


def test_like_neighbour_factors_differing_by_a_constant_become_one_radial_function(tmp_path):
    # sympy splits this into (1 − 25 r1²/256)³ e^{−r1} and (256 − 25 r2²)³ e^{−r2} = 256³ × the first
    text = "(1 - 25*r1**2/256)**3*(256 - 25*r2**2)**3*exp(-r1)*exp(-r2)*(c**2 - 0.5)"
    module = load_kernel_module(write_kernels(_model_with_laws({"HOH": text}), tmp_path / "kernels.py"))
    np.testing.assert_allclose(module.TRIPLET_COS_POLYNOMIAL[0][1][1], [-0.5 * 256.0**3, 0.0, 256.0**3], rtol=1e-14)
    for r1, r2, c in [(0.9, 1.1, -0.3), (1.7, 0.95, 0.8), (3.1, 2.0, -1.0)]:
        direct = module.triplet_energy_gradient(0, 1, 1, r1, r2, c)
        separated, sizes = _separated(module, 0, 1, 1, r1, r2, c)
        for d, s, size in zip(direct, separated, sizes):
            assert abs(d - s) <= TOLERANCE * max(size, abs(d)), (r1, r2, c, d, s)
    assert module.triplet_radial(0, 1, 1, 1.3) == module.radial_HOH_1(1.3)  # one function for both legs


@pytest.mark.parametrize("family", threebody.KNOWN_FAMILIES)
def test_every_known_family_separates_on_every_triplet_type(family):
    rng = np.random.default_rng(11)
    for t, name in enumerate(threebody.triplet_type_names(("O", "H"))):
        template, symbols, starts, bounds = threebody.family_template(family, name, 3.2)
        values = [np.clip(s + rng.uniform(-0.2, 0.2), max(lo, -1e9), min(hi, 1e9))
                  for s, (lo, hi) in zip(starts, bounds)]
        w = template.subs({s: sympy.Float(v) for s, v in zip(symbols, values)})
        law = separate_triplet_law(w, bool(threebody.same_neighbour_species(2)[t]), 3.2)
        assert law.degree == (3 if family == "gaussian_cubic" else 2)
        if name[0] == name[2]:
            assert law.radial1 == law.radial2
        r1, r2, c = 1.0, 2.1, -0.4
        product = (law.radial1.subs(symbolic.R, r1) * law.radial2.subs(symbolic.R, r2)
                   * sum(p * c**n for n, p in enumerate(law.cos_coefficients)))
        assert float(product) == pytest.approx(float(w.subs({R1: r1, R2: r2, C: c})), rel=1e-12)


@pytest.mark.parametrize("w, like, why", [
    (sympy.exp(-R1 * R2) * C, False, "not a product"),
    (sympy.exp(-R1) * sympy.exp(-R2) * sympy.exp(C), True, "not a polynomial"),
    (sympy.exp(-R1) * sympy.exp(-R2) * C**4, True, "degree 4"),
    (sympy.exp(-R1) * sympy.exp(-2 * R2) * C, True, "not one function"),
    # separatevars(force=True) takes sqrt(c²) for c: the numerical check catches it
    (sympy.sqrt(C**2 * R1**2 * R2**2), False, "differs from the law"),
])
def test_laws_that_are_not_separable_are_refused_with_the_reason(w, like, why):
    with pytest.raises(NotSeparableError, match=why):
        separate_triplet_law(w, like, 3.2)


def test_tabulated_module_keeps_the_separable_form(modules):
    sw = modules["sw_triplet"]
    tabulated = tabulate.tabulate_kernel_module(sw)
    assert tabulated.triplet_radial is not sw.triplet_radial  # its legs are tabulated (see test_tabulate)
    assert [t.name for t in tabulated.RADIAL_TABLES] == ["OH|H"]  # the one leg with a law
    assert tabulated.TRIPLET_COS_POLYNOMIAL == sw.TRIPLET_COS_POLYNOMIAL


def test_gaussian_legendre_table_gets_no_separable_form():
    data = json.loads(MANYBODY.read_text())
    names = threebody.triplet_type_names(("O", "H"))
    data["threebody"] = {"kind": "gaussian_legendre", "cutoff_angstrom": 3.2, "radial_centres_angstrom": [1.0, 2.0],
                         "radial_width_angstrom": 0.5, "legendre_degree": 2,
                         "coefficients_ev": {n: np.full((2, 2, 3), 0.01).tolist() for n in names}}
    source = kernel_source(Model.from_dict(data, "test model"))
    assert "def triplet_energy_gradient" in source
    assert "triplet_radial" not in source and "TRIPLET_COS_POLYNOMIAL" not in source


def test_equal_models_give_equal_kernel_sources():
    assert kernel_source(Model.load(MANYBODY)) == kernel_source(Model.load(MANYBODY))
