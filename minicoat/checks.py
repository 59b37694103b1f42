"""Input validation shared by every op: clear errors that say what was expected.

Every public op calls these before doing any work, so that a wrong shape or dtype fails at
the call that caused it with a message naming the expected layout, instead of failing deep
inside a matrix product (or, worse, broadcasting into a silently wrong answer).
"""

import numbers

import numpy as onp
from autograd.tracer import getval


def check_float(name, a):
    """Raise ``TypeError`` unless ``a`` is a floating-point array (float32 or float64)."""
    dtype = onp.asarray(getval(a)).dtype
    if dtype not in (onp.float32, onp.float64):
        raise TypeError(
            f"{name} must be a float32 or float64 array, got dtype {dtype}; "
            f"convert with {name}.astype(np.float32) (training) or np.float64 (checks)"
        )


def check_rank(name, a, rank, layout):
    """Raise ``ValueError`` unless ``a`` has ``rank`` axes; ``layout`` reads like "(N, H, W, C)"."""
    shape = onp.shape(getval(a))
    if len(shape) != rank:
        raise ValueError(f"{name} must have shape {layout} ({rank} axes), got shape {shape}")
    return shape


def check_same_dtype(**arrays):
    """Raise ``TypeError`` if the given arrays do not share one dtype (no silent up-casting)."""
    dtypes = {name: onp.asarray(getval(a)).dtype for name, a in arrays.items() if a is not None}
    if len(set(dtypes.values())) > 1:
        listed = ", ".join(f"{name}: {dtype}" for name, dtype in dtypes.items())
        raise TypeError(f"arrays must share one dtype, got {listed}")


def check_stride(stride):
    """Raise ``ValueError`` unless ``stride`` is 1 or 2 (the only strides CoAtNet uses)."""
    if isinstance(stride, bool) or not isinstance(stride, numbers.Integral) or stride not in (1, 2):
        raise ValueError(f"stride must be 1 or 2, got {stride!r}")


def check_odd_kernel(name, kh, kw):
    """Raise ``ValueError`` unless the kernel is square with an odd size ("same" padding)."""
    if kh != kw or kh % 2 == 0:
        raise ValueError(
            f"{name} must be a square kernel of odd size (k, k, ...) with k in 1, 3, 5, ...; "
            f"got spatial size ({kh}, {kw})"
        )
