"""A numba intrinsic for the kernels: the float64 view of an int64 state buffer.

``as_float64`` does what ``ndarray.view(np.float64)`` does for a 1-D int64 array, without numba
compiling its general ``view`` implementation (two functions, about half a second at start-up) for
one use.
"""
from __future__ import annotations

from numba import types
from numba.core import cgutils
from numba.core.imputils import impl_ret_borrowed
from numba.extending import intrinsic


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


@intrinsic
def as_int64_flat(typingctx, arr):  # type: ignore[no-untyped-def]
    """The bits of a C-contiguous float64 array as a flat 1-D int64 array (same memory).

    Why: _score_kernel compares its parameter table with the copy it keeps in an int64 array bit
    for bit (a NaN equals the same NaN, 0.0 differs from -0.0), in a single integer comparison.
    """
    if not (isinstance(arr, types.Array) and arr.layout == "C" and arr.dtype == types.float64):
        return None
    retty = types.Array(types.int64, 1, "C")
    sig = retty(arr)

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        src = context.make_array(signature.args[0])(context, builder, args[0])
        dst = context.make_array(signature.return_type)(context, builder)
        n = context.get_constant(types.intp, 1)
        for extent in cgutils.unpack_tuple(builder, src.shape):
            n = builder.mul(n, extent)
        context.populate_array(dst, data=builder.bitcast(src.data, dst.data.type),
                               shape=cgutils.pack_array(builder, [n]),
                               strides=cgutils.pack_array(builder, [src.itemsize]), itemsize=src.itemsize,
                               meminfo=src.meminfo, parent=src.parent)
        return impl_ret_borrowed(context, builder, signature.return_type, dst._getvalue())

    return sig, codegen
