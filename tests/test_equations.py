"""equations.md of a many-body model: every triplet law in text that parses back, the cutoff, H_A's terms."""

from __future__ import annotations

import re

import numpy as np
import sympy

from discover import symbolic, threebody
from discover.model import Model, parse_expression
from tests.export_support import (
    MANYBODY_CUTOFF_ANGSTROM,
    manybody_laws,
    manybody_water_model,
    morse_water_model,
)


def _law_texts(text: str) -> dict[str, str]:
    """{triplet type: plain-text law} read from the markdown, as a reader would."""
    found = re.findall(r"### w_(\w+)\(r1, r2, c\).*?\n\n- w\(r1, r2, c\) = `([^`]+)`", text, flags=re.DOTALL)
    return dict(found)


def test_every_triplet_law_is_written_and_parses_back_to_the_same_function():
    model = manybody_water_model()
    text = symbolic.equations_markdown(model)
    laws = _law_texts(text)
    assert sorted(laws) == sorted(manybody_laws()) == ["HOH", "OHO", "OOH"]
    rng = np.random.default_rng(1)
    r1, r2 = rng.uniform(0.8, MANYBODY_CUTOFF_ANGSTROM, (2, 200))
    c = rng.uniform(-1.0, 1.0, 200)
    variables = (threebody.R1, threebody.R2, threebody.C)
    for name, law in manybody_laws().items():
        parsed = parse_expression(laws[name], f"equations.md: w_{name}", variables=threebody.VARIABLES)
        assert {s.name for s in parsed.free_symbols} <= set(threebody.VARIABLES)
        # parse_expression makes its own r1, r2, c symbols: evaluate both on the same numbers
        back = sympy.lambdify([sympy.Symbol(v) for v in threebody.VARIABLES], parsed, "numpy")(r1, r2, c)
        expected = sympy.lambdify(variables, law, "numpy")(r1, r2, c)
        np.testing.assert_allclose(back, expected, rtol=1e-13, atol=1e-16)
        assert np.abs(expected).max() > 1e-4  # the check sees a non-trivial function
        # and the LaTeX form of the same law is there
        assert f"$$ w_{{\\mathrm{{{name}}}}}(r_1, r_2, c) = {sympy.latex(law)} $$" in text


def test_agent_losses_gain_the_triplet_sums_centred_on_their_species():
    text = symbolic.equations_markdown(manybody_water_model())
    h_o = next(line for line in text.splitlines() if line.startswith("- `H_O(k)"))
    h_h = next(line for line in text.splitlines() if line.startswith("- `H_H(k)"))
    assert "w_HOH(r_kj, r_kl, cos θ_jkl)" in h_o and "w_OOH(" in h_o and "w_OHO" not in h_o
    assert "w_OHO(r_kj, r_kl, cos θ_jkl)" in h_h and "w_HOH" not in h_h
    assert "r_3 = 3.2 Å" in text
    assert r"w_{\mathrm{HOH}}(r_{kj}, r_{kl}, \cos\theta_{jkl})" in text
    assert "Triplet types without a term: OOO, OHH, HHH." in text


def test_a_pairwise_model_has_no_threebody_section():
    text = symbolic.equations_markdown(morse_water_model())
    assert "Three-body" not in text and "w_" not in text and "r_3" not in text


def test_a_tabulated_threebody_term_is_described_as_a_table_not_a_closed_form():
    centres, width = threebody.default_basis(3.2, 3)
    coefficients = np.zeros((6, 3, 3, 3))
    table = threebody.ThreeBodyTable(("O", "H"), 3.2, centres, width, 2, coefficients)
    base = morse_water_model()
    model = Model.closed_form(base.expressions, base.species, base.cutoff_angstrom, base.r_min_angstrom,
                              masses_amu=base.masses_amu, threebody=table)
    text = symbolic.equations_markdown(model)
    # 6 types × 3 × 3 radial × 3 Legendre; free: 4 like-neighbour types × 6 radial pairs × 3 + 2 × 9 × 3
    assert "Gaussian × Legendre table of 162 coefficients (126 free)" in text
    assert "not a closed form" in text and "P_0..P_2" in text
    assert not _law_texts(text)
    # every triplet type counts in its centre's loss
    assert "w_OHO(" in text and "w_HOH(" in text and "w_HHH(" in text
