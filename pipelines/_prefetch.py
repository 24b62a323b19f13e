"""A software prefetch for numba kernels (LLVM's ``llvm.prefetch``).

Why: the detectors are limited by memory latency, not arithmetic, when series arrive in an order
that jumps around the state arrays. Asking for the state row of a point a few positions ahead lets
the load overlap with the work on the current point. A prefetch is only a hint: it never faults and
never changes a result, so kernels stay bitwise identical with or without it.
"""
from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic


@intrinsic
def prefetch_row(typingctx, arr, row):  # type: ignore[no-untyped-def]
    """Prefetch (for writing, high locality) the first element of ``arr[row, 0, ...]``."""
    if not isinstance(arr, types.Array):
        return None
    sig = types.void(arr, row)

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        idx_ty = signature.args[1]
        zero = context.get_constant(types.intp, 0)
        row_val = context.cast(builder, args[1], idx_ty, types.intp)
        indices = [row_val] + [zero] * (aryty.ndim - 1)
        ptr = cgutils.get_item_pointer2(
            context, builder, data=ary.data, shape=cgutils.unpack_tuple(builder, ary.shape),
            strides=cgutils.unpack_tuple(builder, ary.strides), layout=aryty.layout, inds=indices,
            wraparound=False,
        )
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
        builder.call(fn, [builder.bitcast(ptr, i8p), i32(1), i32(3), i32(1)])
        return context.get_dummy_value()

    return sig, codegen
