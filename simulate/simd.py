"""Vector instructions that Numba's loops cannot express, as LLVM intrinsics.

The force passes of a small box measure every pair and keep those within reach (see
:mod:`simulate.energy`). Keeping them is a compaction: each kept pair goes to the next free slot, a
dependency from one pair to the next that LLVM's loop vectoriser does not turn into vector code. A
CPU with AVX-512 compresses eight lanes at once (``vcompresspd``), which LLVM reaches through its
``llvm.masked.compressstore`` intrinsic. :func:`compress_below` writes that step, eight pairs at a
time; the pairs come out in the same order, so the forces are the same bit for bit.

``NATIVE_COMPRESS`` says whether the code Numba compiles here has the instruction. Without it LLVM
would split the intrinsic into a branch per lane (mispredicted at random), so the passes then keep
their plain loop; so they do on AMD's Zen 4 and 5, which run the instruction's memory form as microcode
(llvm/llvm-project#133568).
"""

from __future__ import annotations

import llvmlite.binding
import numba
from llvmlite import ir
from numba import types
from numba.core import cgutils, codegen
from numba.extending import intrinsic

COMPRESS_LANES = 8  # doubles in one 512-bit vector


def targets_vector_compression() -> bool:
    """Whether Numba compiles for a CPU with AVX-512F whose compression into memory is not microcode: Numba's
    own CPU settings (``NUMBA_CPU_NAME``, ``NUMBA_CPU_FEATURES``), else this machine's as Numba sees them
    (``NUMBA_ENABLE_AVX=0`` turns AVX off)."""
    name, features = numba.config.CPU_NAME, numba.config.CPU_FEATURES
    if name in (None, "", "host"):
        name = llvmlite.binding.get_host_cpu_name()
        if features is None:
            features = codegen.get_host_cpu_features()
    if not features or "+avx512f" not in features.split(","):
        return False
    return not name.startswith("znver")


NATIVE_COMPRESS = targets_vector_compression()



@intrinsic
def compress_below(typingctx, keys, xs, ys, zs, start, threshold, out_keys, out_x, out_y, out_z, out_index, slot):
    """Of the eight entries ``start`` … ``start`` + 7 of the float arrays ``keys``, ``xs``, ``ys``, ``zs``,
    those with key < ``threshold`` (NaN is not), written in order from ``slot`` on into ``out_keys``,
    ``out_x``, ``out_y``, ``out_z``, with their indices into ``out_index`` (uint32); returns ``slot`` plus
    their number. The caller keeps every index in bounds: ``start`` + 8 ≤ len(keys), and eight free slots
    from ``slot`` in each output.
    """
    def contiguous(a, dtype):
        return isinstance(a, types.Array) and a.dtype == dtype and a.ndim == 1 and a.layout == "C"

    if not (all(contiguous(a, types.float64) for a in (keys, xs, ys, zs, out_keys, out_x, out_y, out_z))
            and contiguous(out_index, types.uint32)):
        return None
    signature = types.intp(keys, xs, ys, zs, types.intp, types.float64, out_keys, out_x, out_y, out_z, out_index,
                           types.intp)

    def codegen(context, builder, sig, args):
        f64, i32, intp = ir.DoubleType(), ir.IntType(32), context.get_value_type(types.intp)
        lanes = COMPRESS_LANES
        vector, indices, mask_type = ir.VectorType(f64, lanes), ir.VectorType(i32, lanes), ir.VectorType(ir.IntType(1), lanes)
        start_, threshold_, slot_ = args[4], args[5], args[11]

        def data(position):
            return context.make_array(sig.args[position])(context, builder, args[position]).data

        def load_lanes(position):
            address = builder.bitcast(cgutils.gep(builder, data(position), start_), vector.as_pointer())
            return builder.load(address, align=8)

        def splat(value, vector_type):
            out = ir.Constant(vector_type, ir.Undefined)
            for lane in range(lanes):
                out = builder.insert_element(out, value, ir.Constant(i32, lane))
            return out

        store_doubles = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [vector, f64.as_pointer(), mask_type]),
            f"llvm.masked.compressstore.v{lanes}f64")
        store_indices = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [indices, i32.as_pointer(), mask_type]),
            f"llvm.masked.compressstore.v{lanes}i32")
        count_bits = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.IntType(lanes), [ir.IntType(lanes)]), f"llvm.ctpop.i{lanes}")
        key_lanes = load_lanes(0)
        keep = builder.fcmp_ordered("<", key_lanes, splat(threshold_, vector))
        for source, target in ((0, 6), (1, 7), (2, 8), (3, 9)):
            lanes_ = key_lanes if source == 0 else load_lanes(source)
            builder.call(store_doubles, [lanes_, cgutils.gep(builder, data(target), slot_), keep])
        first = builder.trunc(start_, i32)
        index_lanes = builder.add(splat(first, indices), ir.Constant(indices, list(range(lanes))))
        builder.call(store_indices, [index_lanes, cgutils.gep(builder, data(10), slot_), keep])
        kept = builder.call(count_bits, [builder.bitcast(keep, ir.IntType(lanes))])
        return builder.add(slot_, builder.zext(kept, intp))

    return signature, codegen
