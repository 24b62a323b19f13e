"""Two small numba intrinsics for the kernels: a software prefetch and a float64 view.

Why an intrinsic and not numba's own: ``prefetch_row`` exposes LLVM's ``llvm.prefetch``, which numba
has no spelling for. (The detector kernel no longer uses it: with its state rows in L2 a prefetch
gained nothing there and cost instructions; it stays for state that outgrows the caches.)
``as_float64`` does what ``ndarray.view(np.float64)`` does for a 1-D int64 array, without numba
compiling its general ``view`` implementation (two functions, about half a second at start-up) for
one use.
"""
from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.imputils import impl_ret_borrowed
from numba.extending import intrinsic


@intrinsic
def prefetch_row(typingctx, arr, row):  # type: ignore[no-untyped-def]
    """Prefetch (for writing, high locality) the first element of ``arr[row, 0, ...]``.

    Why: when series arrive in an order that jumps around the state arrays, asking for the state
    row of a reading a few positions ahead lets the load overlap with the work on the current one.
    A prefetch is only a hint: it never faults and never changes a result.
    """
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


@intrinsic
def as_float64(typingctx, arr):  # type: ignore[no-untyped-def]
    """The float64 view of a 1-D C-contiguous int64 array (same memory, same length).

    Why: the detector state is one buffer of rows holding float and int fields; the kernel reads
    it through both views, and as both come from one data pointer LLVM keeps a single base
    register for them.
    """
    if not (isinstance(arr, types.Array) and arr.ndim == 1 and arr.layout == "C" and arr.dtype == types.int64):
        return None
    retty = arr.copy(dtype=types.float64)
    sig = retty(arr)

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        src = context.make_array(signature.args[0])(context, builder, args[0])
        dst = context.make_array(signature.return_type)(context, builder)
        context.populate_array(dst, data=builder.bitcast(src.data, dst.data.type), shape=src.shape,
                               strides=src.strides, itemsize=src.itemsize, meminfo=src.meminfo,
                               parent=src.parent)
        return impl_ret_borrowed(context, builder, signature.return_type, dst._getvalue())

    return sig, codegen
