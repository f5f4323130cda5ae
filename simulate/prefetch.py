"""Software prefetch: a hint that the CPU should start loading a cache line it will soon read.

The half list keeps each atom's row padded to a fixed width, and a force pass reads only the
``counts[p]`` entries in front of each row: a stride the hardware prefetchers do not follow from row
to row, so at 10⁵ atoms, where the list no longer fits in the L2 cache, each row's first lines
arrived late. Asking for the rows a few ahead took 5–8 % off the forces-only pair pass of 96,000
atoms (Morse tabulated, one thread; 17.8–18.5 → 16.5–17.5 ms), 3–4 % off its whole step and 3–5 % off
the many-body step of 49,152 atoms. Prefetching the three-body short rows too gave nothing
measurable. The hint never faults, on any address, and changes no result.
"""

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

_I8_POINTER = ir.IntType(8).as_pointer()
_I32 = ir.IntType(32)


@intrinsic
def prefetch(typingctx, array, flat_index):
    """Prefetch for reading, into every cache level, the line holding ``array.ravel()[flat_index]``
    (LLVM's ``llvm.prefetch``). Only C-contiguous arrays, whose flat index is an offset from their data."""
    if not (isinstance(array, types.Array) and array.layout == "C" and isinstance(flat_index, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        address = builder.bitcast(builder.gep(data, [args[1]]), _I8_POINTER)
        hint = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [_I8_POINTER, _I32, _I32, _I32]), "llvm.prefetch.p0i8")
        # read (0), highest temporal locality (3), data cache (1)
        builder.call(hint, [address, ir.Constant(_I32, 0), ir.Constant(_I32, 3), ir.Constant(_I32, 1)])
        return context.get_dummy_value()

    return types.void(array, flat_index), codegen
