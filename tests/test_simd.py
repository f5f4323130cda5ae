"""Vector compression (simulate.simd) keeps the pairs a plain loop keeps, in the same order, bit for bit."""

from fractions import Fraction
from pathlib import Path

import numba
import numpy as np
import pytest

from simulate import energy, md, partition, simd, tabulate
from simulate.kernels import load_kernel_module
from tests.export_support import generated_kernels, manybody_water_model
from tests.kernel_examples.starting_frames import water32_frame

EXAMPLES = Path(__file__).parent / "kernel_examples"


@numba.njit
def _compress_all(keys, xs, ys, zs, first, threshold):
    """Every whole group of eight from ``first`` on through compress_below, as the pair pass calls it."""
    n = keys.shape[0]
    out = np.full((4, n), -1.0)
    index = np.full(n, 0xFFFFFFFF, dtype=np.uint32)
    m = 0
    start = first
    while start + simd.COMPRESS_LANES <= n:
        m = simd.compress_below(keys, xs, ys, zs, start, threshold, out[0], out[1], out[2], out[3], index, m)
        start += simd.COMPRESS_LANES
    return m, start, out, index


@pytest.mark.parametrize("kept", ["some", "none", "all", "nan"])
def test_compression_keeps_the_entries_below_the_threshold_in_order(kept):
    rng = np.random.default_rng(3)
    n = 3 + 8 * 7 + 5  # a row from entry 3 on (as the pair pass starts at p + 1): whole groups, then a rest
    keys = rng.uniform(0.0, 2.0, n)
    if kept == "none":
        keys += 2.0
    elif kept == "all":
        keys -= 2.0
    elif kept == "nan":
        keys[::3] = np.nan  # never below anything
    xs, ys, zs = rng.normal(size=(3, n))
    m, start, out, index = _compress_all(keys, xs, ys, zs, 3, 1.0)
    assert start == n - 5
    expected = 3 + np.flatnonzero(keys[3:start] < 1.0)
    assert m == len(expected) == {"none": 0, "all": start - 3}.get(kept, m)
    assert np.array_equal(index[:m], expected)
    for row, source in zip(out, (keys, xs, ys, zs)):
        assert np.array_equal(row[:m], source[expected])
    assert np.all(out[:, m:] == -1.0) and np.all(index[m:] == 0xFFFFFFFF)  # nothing past the kept ones


@pytest.mark.parametrize(("name", "features", "native"), [
    ("sapphirerapids", "+avx2,+avx512f,+avx512vl", True),
    ("sapphirerapids", "+avx2,-avx512f,+avx512vl", False),
    ("knl", "+avx2,+avx512f,-avx512vl", False),  # no 256-bit compression (the indices' eight 32-bit lanes)
    ("znver4", "+avx2,+avx512f,+avx512vl", False),  # compression into memory is microcode there
    ("generic", "", False),
])
def test_compression_is_used_only_where_numba_compiles_for_a_cpu_that_has_it(monkeypatch, name, features, native):
    monkeypatch.setattr(numba.config, "CPU_NAME", name)
    monkeypatch.setattr(numba.config, "CPU_FEATURES", features)
    assert simd.targets_vector_compression() is native


def _forces_both_ways(kernel, monkeypatch):
    """The force pass's outputs on the 96-atom water box with and without vector compression."""
    species, positions, box, _ = water32_frame()
    types = md.atom_types(kernel, species)
    nl = partition.neighbor_list(positions, box, energy.interaction_cutoff_angstrom(kernel), 1.0, half=True)
    assert partition.lists_every_pair(nl)  # the small box's path, the one that compresses
    outputs = []
    for compress in (False, True):
        monkeypatch.setattr(energy, "COMPRESS_ALL_PAIRS", compress)
        monkeypatch.setattr(energy, "_LOOPS", {})  # loops made anew, with the setting
        outputs.append(energy.compute_forces(kernel, positions, types, nl))
    return outputs


@pytest.mark.parametrize("model", ["morse_tabulated", "manybody"])
def test_the_pair_pass_with_compression_is_bit_for_bit_the_plain_one(model, monkeypatch, tmp_path):
    if model == "manybody":
        kernel = generated_kernels(manybody_water_model(), tmp_path)
    else:
        kernel = tabulate.tabulate_kernel_module(load_kernel_module(EXAMPLES / "morse_water.py"))
    plain, compressed = _forces_both_ways(kernel, monkeypatch)
    assert np.array_equal(plain.forces_ev_per_angstrom, compressed.forces_ev_per_angstrom)
    assert np.array_equal(plain.atom_loss_ev, compressed.atom_loss_ev)
    assert np.array_equal(plain.nearest_angstrom, compressed.nearest_angstrom)
    assert plain.energy_ev == compressed.energy_ev and plain.virial_ev == compressed.virial_ev
    assert np.abs(plain.forces_ev_per_angstrom).max() > 0.1  # real forces, not zeros on both sides


@numba.njit
def _lanes_program(rows, out):
    """Every lane operation once: rows 0–2 of ``rows`` in, ``out`` rows 0–7 and the sums back."""
    x = simd.lanes_load(rows, 0, 2)  # from a column that is not a multiple of four
    y = simd.lanes_load(rows, 1, 2)
    z = simd.lanes_load(rows, 2, 2)
    simd.lanes_store(out, 0, 0, simd.lanes_add(x, y))
    simd.lanes_store(out, 1, 0, simd.lanes_sub(x, y))
    simd.lanes_store(out, 2, 0, simd.lanes_mul(x, y))
    simd.lanes_store(out, 3, 0, simd.lanes_muladd(x, y, z))
    simd.lanes_store(out, 4, 1, simd.lanes_splat(rows[0, 0]))
    simd.lanes_store(out, 5, 0, simd.lane_sums(x, y, z, simd.lanes_mul(x, z)))
    simd.lanes_store(out, 6, 0, simd.lanes_div(x, y))
    simd.lanes_store(out, 7, 0, simd.lanes_sqrt(simd.lanes_add(simd.lanes_mul(x, x), simd.lanes_mul(z, z))))
    parts = (simd.lane(x, 0), simd.lane(x, 1), simd.lane(x, 2), simd.lane(x, 3))
    return simd.lane_sum(x), parts


def test_lane_operations_are_the_numbers_of_their_scalar_counterparts():
    rng = np.random.default_rng(5)
    rows = rng.normal(size=(3, 7)) * np.array([[1.0], [1e8], [1e-8]])
    out = np.full((8, 5), 7.0)
    total, parts = _lanes_program(rows, out)
    x, y, z = rows[0, 2:6], rows[1, 2:6], rows[2, 2:6]
    assert np.array_equal(out[0, :4], x + y)
    assert np.array_equal(out[1, :4], x - y)
    assert np.array_equal(out[2, :4], x * y)
    # a multiply-add is fused or not, as the CPU has it: either rounding, never worse
    assert all(got in (a * b + c, _fused(a, b, c)) for got, a, b, c in zip(out[3, :4], x, y, z))
    assert np.array_equal(out[4, 1:5], np.full(4, rows[0, 0]))
    assert np.array_equal(out[:4, 4], np.full(4, 7.0)) and out[4, 0] == 7.0  # nothing written outside
    assert parts == tuple(x)
    assert total == (x[0] + x[1]) + (x[2] + x[3])  # the lanes' sum in its fixed order

    def fixed_order(v):
        return (v[0] + v[1]) + (v[2] + v[3])

    assert np.array_equal(out[5, :4], [fixed_order(x), fixed_order(y), fixed_order(z), fixed_order(x * z)])
    # division and square root round correctly, as the scalar ones do
    assert np.array_equal(out[6, :4], x / y)
    assert np.array_equal(out[7, :4], np.sqrt(x * x + z * z))


def _fused(a: float, b: float, c: float) -> float:
    """a·b + c rounded once (the exact product by fractions)."""
    return float(Fraction(a) * Fraction(b) + Fraction(c))


def test_lanes_refuse_what_they_cannot_read_or_write_as_rows():
    def load(a):
        return simd.lane_sum(simd.lanes_load(a, 0, 0))

    for bad in (np.zeros((4, 4))[:, ::2], np.zeros((4, 4), dtype=np.float32), np.zeros(4)):
        with pytest.raises(numba.TypingError):
            numba.njit(load)(bad)
    with pytest.raises(numba.TypingError):
        numba.njit(lambda a: simd.lane_sum(simd.lanes_load(a, 0, 0.0)))(np.zeros((4, 4)))  # a float index
    frozen = np.zeros((1, 4))
    frozen.flags.writeable = False
    with pytest.raises(numba.TypingError):
        numba.njit(lambda a: simd.lanes_store(a, 0, 0, simd.lanes_splat(1.0)))(frozen)
    with pytest.raises(numba.TypingError):
        numba.njit(lambda a, i: simd.lane(simd.lanes_load(a, 0, 0), i))(np.zeros((1, 4)), 1)  # not a constant
    with pytest.raises(numba.TypingError):
        numba.njit(lambda a: simd.lane(simd.lanes_load(a, 0, 0), 4))(np.zeros((1, 4)))


# the portable compressing store everywhere; the AVX-512 register form where this machine has it
_FORMS = ["portable"] + (["register"] if simd.targets_vector_compression() else [])


def _search_compiled():
    """A fresh compilation of: compress_within over a row of candidates from ``first`` to ``end``, eight at a
    time, as the cell search calls it."""

    @numba.njit
    def search(xs, ys, zs, first, end, centre, threshold2, code):
        out = np.full(xs.shape[0] + simd.COMPRESS_LANES, -1, dtype=np.int32)
        codes = np.full(xs.shape[0] + simd.COMPRESS_LANES, -1, dtype=np.int8)
        m = 0
        start = first
        while start < end:
            m = simd.compress_within(xs, ys, zs, start, end, centre[0], centre[1], centre[2], threshold2, out, codes,
                                     m, code)
            start += simd.COMPRESS_LANES
        return m, out, codes

    return search


@pytest.mark.parametrize("form", _FORMS)
@pytest.mark.parametrize(("first", "end"), [(0, 64), (3, 61), (5, 6), (60, 64), (41, 50)])
def test_the_cell_search_compression_keeps_the_atoms_within_reach_before_the_end_in_order(first, end, form,
                                                                                          monkeypatch):
    monkeypatch.setattr(simd, "targets_vector_compression", lambda: form == "register")
    rng = np.random.default_rng(11)
    n = 64 + simd.COMPRESS_LANES  # readable entries past the last atom, as the cell search keeps them
    xs, ys, zs = rng.uniform(-3.0, 3.0, (3, n))
    xs[::5] = np.nan  # never within reach
    centre = np.array([0.2, -0.1, 0.4])
    # the atoms from the end on sit on the centre: a search that read past the end would keep them
    xs[end:end + simd.COMPRESS_LANES], ys[end:end + simd.COMPRESS_LANES], zs[end:end + simd.COMPRESS_LANES] = centre[:, None]
    m, out, codes = _search_compiled()(xs, ys, zs, first, end, centre, 4.0, 13)
    r2 = (centre[0] - xs) ** 2 + (centre[1] - ys) ** 2 + (centre[2] - zs) ** 2
    expected = first + np.flatnonzero(r2[first:end] < 4.0)
    assert m == len(expected) and (end - first < 8 or 0 < m < end - first)
    assert np.array_equal(out[:m], expected) and np.all(codes[:m] == 13)
    past = m if form == "portable" else m + simd.COMPRESS_LANES
    assert np.all(out[past:] == -1)  # nothing past the last group's eight slots
