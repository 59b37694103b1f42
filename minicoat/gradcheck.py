"""Gradient-check tools: finite differences and a relative error, for tests and students.

A centred difference ``(f(x + eps) - f(x - eps)) / (2 eps)`` has truncation error
``eps^2 |f'''| / 6`` and round-off error ``~machine_eps |f| / eps``. In float64 with
``eps = 1e-6`` the truncation term is ~1e-12 (for a third derivative of order one) and the
round-off term ``~2e-10 |f|``, so a correct gradient agrees with the numeric one to about 1e-9
relative or better (normwise); ``1e-6`` is a safe pass mark. In float32 the round-off term
is ~1e-1: always check gradients in float64.

For whole functions of arrays or parameter trees, with the tolerance derived from this
budget and a report of what is off, use ``minicoat.testing`` (``gradcheck``, ``vjpcheck``).
"""

import numpy as onp


def numerical_gradient(f, x, eps=1e-6):
    """Centred-difference gradient of a scalar function ``f`` at ``x``.

    Args:
        f: function taking an array shaped like ``x`` and returning a scalar.
        x: float64 array (any shape); it is not modified.
        eps: step size.

    Returns:
        float64 array shaped like ``x``: ``df/dx`` estimated one element at a time
        (``2 * x.size`` calls to ``f``). Expected agreement with an exact gradient: ~1e-9.
    """
    x = onp.array(x, dtype=onp.float64)  # a private copy we may perturb
    if x.dtype != onp.float64:
        raise TypeError("numerical_gradient works in float64")
    grad = onp.zeros_like(x)
    flat_x, flat_grad = x.reshape(-1), grad.reshape(-1)
    for i in range(flat_x.size):
        original = flat_x[i]
        flat_x[i] = original + eps
        f_plus = float(f(x))
        flat_x[i] = original - eps
        f_minus = float(f(x))
        flat_x[i] = original
        flat_grad[i] = (f_plus - f_minus) / (2.0 * eps)
    return grad


def numerical_vjp(f, x, upstream, eps=1e-6):
    """Centred-difference vector-Jacobian product (``upstream`` times ``df/dx``) of ``f``.

    This is the gradient of ``sum(f(x) * upstream)``: what reverse mode computes for a layer
    inside a network, given the gradient ``upstream`` flowing back into its output.

    Args:
        f: function from an array shaped like ``x`` to an array shaped like ``upstream``.
        x: float64 array; upstream: float64 array shaped like ``f(x)``.

    Returns:
        float64 array shaped like ``x``. Expected agreement with an exact VJP: ~1e-9.
    """
    upstream = onp.asarray(upstream, dtype=onp.float64)
    return numerical_gradient(lambda z: onp.sum(onp.asarray(f(z)) * upstream), x, eps)


def rel_error(a, b):
    """Normwise relative error ``||a - b|| / max(||a||, ||b||)`` (0 when both are zero).

    Unlike an element-wise ratio it is not thrown off by entries that happen to be near
    zero. Typical values: ~1e-16 for two float64 computations of the same thing in the same
    order, ~1e-13 in a different order (NumPy vs PyTorch), ~1e-9 against finite differences.
    """
    a = onp.asarray(a, dtype=onp.float64)
    b = onp.asarray(b, dtype=onp.float64)
    if a.shape != b.shape:
        raise ValueError(f"rel_error needs arrays of one shape, got {a.shape} and {b.shape}")
    scale = max(onp.linalg.norm(a), onp.linalg.norm(b))
    return 0.0 if scale == 0.0 else float(onp.linalg.norm(a - b) / scale)
