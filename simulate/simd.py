"""Vector instructions that Numba's loops cannot express, as LLVM intrinsics.

The force passes of a small box measure every pair and keep those within reach (see
:mod:`simulate.energy`). Keeping them is a compaction: each kept pair goes to the next free slot, a
dependency from one pair to the next that LLVM's loop vectoriser does not turn into vector code. A
CPU with AVX-512 compresses eight lanes at once (``vcompresspd``), which LLVM reaches through its
``llvm.masked.compressstore`` intrinsic. :func:`compress_below` writes that step, eight pairs at a
time; the pairs come out in the same order, so the forces are the same bit for bit.

The cell search of a neighbour list keeps, of a cell's candidates, those within the list cutoff: the same
compaction, eight candidates at a time in :func:`compress_within` (see :mod:`simulate.partition`). It packs
the kept indices in a register and stores all eight lanes; the caller writes over those past the kept ones
later (the next group, or the row's padding), and the memory form would only add a masked store. The
builds that call it are cached on disk (Numba's ``cache=True``), and Numba compiles a cached function
anew when its own file changes only: after a change here, delete ``simulate/__pycache__/partition.*.nb[ic]``.

``NATIVE_COMPRESS`` says whether the code Numba compiles here has the instruction. Without it LLVM
would split the intrinsic into a branch per lane (mispredicted at random), so the passes then keep
their plain loop; so they do on AMD's Zen 4 and 5, which run the instruction's memory form as microcode
(llvm/llvm-project#133568).

``Lanes`` is four float64 lanes as a Numba value (LLVM's ``<4 x double>``), with loads and stores of four
consecutive entries of an array's row, arithmetic lane by lane and sums of the lanes in a fixed order: the
three-body moment pass computes four neighbours at a time with it (see :mod:`simulate.energy`), and a
tabulated leg lookup two legs' values and slopes at once (see :mod:`simulate.tabulate`).
"""

from __future__ import annotations

import llvmlite.binding
import numba
from llvmlite import ir
from numba import types
from numba.core import cgutils, codegen
from numba.extending import intrinsic, models, register_model

COMPRESS_LANES = 8  # doubles in one 512-bit vector


def targets_vector_compression() -> bool:
    """Whether Numba compiles for a CPU with AVX-512F and AVX-512VL (the compression of eight 32-bit lanes,
    a 256-bit vector, is VL's) whose compression into memory is not microcode: Numba's own CPU settings
    (``NUMBA_CPU_NAME``, ``NUMBA_CPU_FEATURES``), else this machine's as Numba sees them (``NUMBA_ENABLE_AVX=0``
    turns AVX off)."""
    name, features = numba.config.CPU_NAME, numba.config.CPU_FEATURES
    if name in (None, "", "host"):
        name = llvmlite.binding.get_host_cpu_name()
        if features is None:
            features = codegen.get_host_cpu_features()
    if not features or not {"+avx512f", "+avx512vl"} <= set(features.split(",")):
        return False
    return not name.startswith("znver")


NATIVE_COMPRESS = targets_vector_compression()


def _c_array(a, dtype, ndim: int) -> bool:
    """Whether Numba type ``a`` is a C-contiguous array of ``dtype`` and ``ndim`` dimensions."""
    return isinstance(a, types.Array) and a.dtype == dtype and a.ndim == ndim and a.layout == "C"


def _indices(*indices) -> bool:
    """Whether every Numba type in ``indices`` is an integer."""
    return all(isinstance(index, types.Integer) for index in indices)


def _splat(builder, value, vector_type):
    """A vector of ``vector_type`` with ``value`` in every lane."""
    out = ir.Constant(vector_type, ir.Undefined)
    for lane in range(vector_type.count):
        out = builder.insert_element(out, value, ir.Constant(ir.IntType(32), lane))
    return out


def _array_data(context, builder, sig, args, position):
    """The data pointer of the array that is argument ``position`` of an intrinsic."""
    return context.make_array(sig.args[position])(context, builder, args[position]).data


def _lane_numbers(builder, first, lanes: int):
    """The int32 vector first, first + 1, …, first + lanes − 1 (``first`` an integer, truncated to 32 bits)."""
    vector_type = ir.VectorType(ir.IntType(32), lanes)
    return builder.add(_splat(builder, builder.trunc(first, ir.IntType(32)), vector_type),
                       ir.Constant(vector_type, list(range(lanes))))


def _slot_after(builder, slot, keep, intp):
    """``slot`` plus the number of lanes set in the mask ``keep`` (a popcount)."""
    lanes = keep.type.count
    count_bits = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(ir.IntType(lanes), [ir.IntType(lanes)]), f"llvm.ctpop.i{lanes}")
    kept = builder.call(count_bits, [builder.bitcast(keep, ir.IntType(lanes))])
    return builder.add(slot, builder.zext(kept, intp))


@intrinsic
def compress_below(typingctx, keys, xs, ys, zs, start, threshold, out_keys, out_x, out_y, out_z, out_index, slot):
    """Of the eight entries ``start`` … ``start`` + 7 of the float arrays ``keys``, ``xs``, ``ys``, ``zs``,
    those with key < ``threshold`` (NaN is not), written in order from ``slot`` on into ``out_keys``,
    ``out_x``, ``out_y``, ``out_z``, with their indices into ``out_index`` (uint32); returns ``slot`` plus
    their number. The caller keeps every index in bounds: ``start`` + 8 ≤ len(keys), and eight free slots
    from ``slot`` in each output.
    """
    if not (all(_c_array(a, types.float64, 1) for a in (keys, xs, ys, zs, out_keys, out_x, out_y, out_z))
            and _c_array(out_index, types.uint32, 1)):
        return None
    signature = types.intp(keys, xs, ys, zs, types.intp, types.float64, out_keys, out_x, out_y, out_z, out_index,
                           types.intp)

    def codegen(context, builder, sig, args):
        f64, i32, intp = ir.DoubleType(), ir.IntType(32), context.get_value_type(types.intp)
        lanes = COMPRESS_LANES
        vector, indices, mask_type = ir.VectorType(f64, lanes), ir.VectorType(i32, lanes), ir.VectorType(ir.IntType(1), lanes)
        start_, threshold_, slot_ = args[4], args[5], args[11]

        def data(position):
            return _array_data(context, builder, sig, args, position)

        def load_lanes(position):
            address = builder.bitcast(cgutils.gep(builder, data(position), start_), vector.as_pointer())
            return builder.load(address, align=8)

        store_doubles = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [vector, f64.as_pointer(), mask_type]),
            f"llvm.masked.compressstore.v{lanes}f64")
        store_indices = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [indices, i32.as_pointer(), mask_type]),
            f"llvm.masked.compressstore.v{lanes}i32")
        key_lanes = load_lanes(0)
        keep = builder.fcmp_ordered("<", key_lanes, _splat(builder, threshold_, vector))
        for source, target in ((0, 6), (1, 7), (2, 8), (3, 9)):
            lanes_ = key_lanes if source == 0 else load_lanes(source)
            builder.call(store_doubles, [lanes_, cgutils.gep(builder, data(target), slot_), keep])
        index_lanes = _lane_numbers(builder, start_, lanes)
        builder.call(store_indices, [index_lanes, cgutils.gep(builder, data(10), slot_), keep])
        return _slot_after(builder, slot_, keep, intp)

    return signature, codegen


@intrinsic
def compress_within(typingctx, xs, ys, zs, start, end, x, y, z, threshold2, out_index, out_code, slot, code):
    """Of the atoms ``start`` … ``start`` + 7 before ``end`` of the coordinates ``xs``, ``ys``, ``zs``
    (float64), those whose squared distance from (``x``, ``y``, ``z``) is below ``threshold2``, their
    indices written in order from ``slot`` on into ``out_index`` (int32) and ``code`` (an integer, stored
    as int8) beside each in ``out_code``; returns ``slot`` plus their number. The squared distance is
    dx·dx + dy·dy + dz·dz in this order, unfused, as a plain loop computes it. The caller keeps every
    index in bounds (``start`` + 8 ≤ len(xs), whatever ``end``; eight free slots from ``slot`` in each
    output) and may find those slots overwritten past the kept entries.
    """
    if not (all(_c_array(a, types.float64, 1) for a in (xs, ys, zs)) and _c_array(out_index, types.int32, 1)
            and _c_array(out_code, types.int8, 1) and _indices(start, end, slot, code)
            and all(isinstance(v, types.Float) for v in (x, y, z, threshold2))):
        return None
    signature = types.intp(xs, ys, zs, start, end, x, y, z, threshold2, out_index, out_code, slot, code)

    def codegen(context, builder, sig, args):
        f64, i32, i8 = ir.DoubleType(), ir.IntType(32), ir.IntType(8)
        lanes = COMPRESS_LANES
        vector, indices, codes = ir.VectorType(f64, lanes), ir.VectorType(i32, lanes), ir.VectorType(i8, lanes)
        mask_type = ir.VectorType(ir.IntType(1), lanes)
        intp = context.get_value_type(types.intp)
        start_ = context.cast(builder, args[3], sig.args[3], types.intp)
        end_ = context.cast(builder, args[4], sig.args[4], types.intp)
        slot_ = context.cast(builder, args[11], sig.args[11], types.intp)

        def data(position):
            return _array_data(context, builder, sig, args, position)

        def scalar(position):
            return context.cast(builder, args[position], sig.args[position], types.float64)

        squared = None
        for axis, centre in ((0, 5), (1, 6), (2, 7)):
            coordinate = builder.load(builder.bitcast(cgutils.gep(builder, data(axis), start_), vector.as_pointer()),
                                      align=8)
            delta = builder.fsub(_splat(builder, scalar(centre), vector), coordinate)
            term = builder.fmul(delta, delta)
            squared = term if squared is None else builder.fadd(squared, term)
        index_lanes = _lane_numbers(builder, start_, lanes)
        keep = builder.and_(builder.fcmp_ordered("<", squared, _splat(builder, scalar(8), vector)),
                            builder.icmp_signed("<", index_lanes, _splat(builder, builder.trunc(end_, i32), indices)))
        index_target = cgutils.gep(builder, data(9), slot_)
        if targets_vector_compression():
            pack = cgutils.get_or_insert_function(builder.module, ir.FunctionType(indices, [indices, indices, mask_type]),
                                                  f"llvm.x86.avx512.mask.compress.v{lanes}i32")
            packed = builder.call(pack, [index_lanes, ir.Constant(indices, ir.Undefined), keep])
            builder.store(packed, builder.bitcast(index_target, indices.as_pointer()), align=4)
        else:
            store = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(ir.VoidType(), [indices, i32.as_pointer(), mask_type]),
                f"llvm.masked.compressstore.v{lanes}i32")
            builder.call(store, [index_lanes, index_target, keep])
        code_ = builder.trunc(context.cast(builder, args[12], sig.args[12], types.intp), i8)
        builder.store(_splat(builder, code_, codes),
                      builder.bitcast(cgutils.gep(builder, data(10), slot_), codes.as_pointer()), align=1)
        return _slot_after(builder, slot_, keep, intp)

    return signature, codegen


# --- four lanes of doubles ---------------------------------------------------------------------------
# Numba has no vector type, and its loops reach vector instructions only through LLVM's loop vectoriser,
# which leaves short sums alone: it may not reorder a floating-point sum (no fast-math), and a centre's
# dozen neighbours make too short a loop anyway. ``Lanes`` is an LLVM <4 x double> as a Numba value
# (in a register, across loops), with its loads, stores and arithmetic as the instructions they name:
# code that keeps four partial sums, one per lane, and adds them in a fixed order (:func:`lane_sum`)
# gives the same numbers wherever it runs with the same instruction set.

LANES = 4  # doubles in one 256-bit vector (AVX; LLVM splits it in two on a CPU with 128-bit vectors only)
_VECTOR = ir.VectorType(ir.DoubleType(), LANES)


class Lanes(types.Type):
    """Four float64 lanes (LLVM ``<4 x double>``)."""

    def __init__(self):
        super().__init__(name="Lanes4xf64")


lanes = Lanes()


@register_model(Lanes)
class _LanesModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _VECTOR)


def _rows(a) -> bool:
    return _c_array(a, types.float64, 2)


def _lane_pointer(context, builder, array_type, array, row, column):
    """The address of ``array[row, column]`` (C order, no wrap-around, no bounds check) as a vector pointer."""
    data = context.make_array(array_type)(context, builder, array)
    item = cgutils.get_item_pointer2(context, builder, data.data, cgutils.unpack_tuple(builder, data.shape),
                                     cgutils.unpack_tuple(builder, data.strides), "C", [row, column],
                                     wraparound=False, boundscheck=False)
    return builder.bitcast(item, _VECTOR.as_pointer())


@intrinsic
def lanes_load(typingctx, rows, row, column):
    """``rows[row, column : column + 4]`` of a C-contiguous 2-D float64 array; the caller keeps it in bounds."""
    if not (_rows(rows) and _indices(row, column)):
        return None

    def codegen(context, builder, sig, args):
        return builder.load(_lane_pointer(context, builder, sig.args[0], args[0], args[1], args[2]), align=8)

    return lanes(rows, types.intp, types.intp), codegen


@intrinsic
def lanes_store(typingctx, rows, row, column, value):
    """``rows[row, column : column + 4] = value`` (a writable array); the caller keeps it in bounds."""
    if not (_rows(rows) and rows.mutable and _indices(row, column) and value == lanes):
        return None

    def codegen(context, builder, sig, args):
        builder.store(args[3], _lane_pointer(context, builder, sig.args[0], args[0], args[1], args[2]), align=8)
        return context.get_dummy_value()

    return types.none(rows, types.intp, types.intp, lanes), codegen


@intrinsic
def lanes_splat(typingctx, value):
    """Four lanes of ``value``."""
    if not isinstance(value, types.Float):
        return None

    def codegen(context, builder, sig, args):
        return _splat(builder, context.cast(builder, args[0], sig.args[0], types.float64), _VECTOR)

    return lanes(value), codegen


def _lanes_binary(operation: str, doc: str):
    @intrinsic
    def binary(typingctx, x, y):
        if not (x == lanes and y == lanes):
            return None

        def codegen(context, builder, sig, args):
            return getattr(builder, operation)(args[0], args[1])

        return lanes(lanes, lanes), codegen

    binary.__doc__ = doc
    return binary


lanes_add = _lanes_binary("fadd", "x + y, lane by lane.")
lanes_sub = _lanes_binary("fsub", "x − y, lane by lane.")
lanes_mul = _lanes_binary("fmul", "x · y, lane by lane.")
lanes_div = _lanes_binary("fdiv", "x / y, lane by lane (correctly rounded, as the scalar division).")


@intrinsic
def lanes_sqrt(typingctx, x):
    """√x, lane by lane (``llvm.sqrt``: correctly rounded, as ``math.sqrt``)."""
    if x != lanes:
        return None

    def codegen(context, builder, sig, args):
        sqrt = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_VECTOR, [_VECTOR]),
                                              f"llvm.sqrt.v{LANES}f64")
        return builder.call(sqrt, args)

    return lanes(lanes), codegen


@intrinsic
def lanes_muladd(typingctx, x, y, z):
    """x · y + z, lane by lane: one fused multiply-add where the CPU has it (``llvm.fmuladd``), else a multiply
    and an add; the same on every call of one compiled program."""
    if not (x == lanes and y == lanes and z == lanes):
        return None

    def codegen(context, builder, sig, args):
        muladd = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_VECTOR, [_VECTOR] * 3),
                                                f"llvm.fmuladd.v{LANES}f64")
        return builder.call(muladd, args)

    return lanes(lanes, lanes, lanes), codegen


@intrinsic
def lane_sum(typingctx, x):
    """(x₀ + x₁) + (x₂ + x₃): the lanes' sum, always in this order."""
    if x != lanes:
        return None

    def codegen(context, builder, sig, args):
        part = [builder.extract_element(args[0], ir.Constant(ir.IntType(32), lane)) for lane in range(LANES)]
        return builder.fadd(builder.fadd(part[0], part[1]), builder.fadd(part[2], part[3]))

    return types.float64(lanes), codegen


@intrinsic
def lane(typingctx, x, index):
    """Lane ``index`` of ``x``: a constant, 0 to 3."""
    if not (x == lanes and isinstance(index, types.IntegerLiteral) and 0 <= index.literal_value < LANES):
        return None

    def codegen(context, builder, sig, args):
        return builder.extract_element(args[0], ir.Constant(ir.IntType(32), sig.args[1].literal_value))

    return types.float64(lanes, index), codegen


@intrinsic
def lane_sums(typingctx, a, b, c, d):
    """(Σa, Σb, Σc, Σd) in lanes, each sum in :func:`lane_sum`'s order: four sums in three adds and six shuffles."""
    if not all(x == lanes for x in (a, b, c, d)):
        return None

    def codegen(context, builder, sig, args):
        def pick(x, y, order):
            return builder.shuffle_vector(x, y, ir.Constant(ir.VectorType(ir.IntType(32), LANES), order))

        a_, b_, c_, d_ = args
        ab = builder.fadd(pick(a_, b_, [0, 4, 2, 6]), pick(a_, b_, [1, 5, 3, 7]))  # a0+a1, b0+b1, a2+a3, b2+b3
        cd = builder.fadd(pick(c_, d_, [0, 4, 2, 6]), pick(c_, d_, [1, 5, 3, 7]))
        return builder.fadd(pick(ab, cd, [0, 1, 4, 5]), pick(ab, cd, [2, 3, 6, 7]))

    return lanes(lanes, lanes, lanes, lanes), codegen
