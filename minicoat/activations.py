"""Activations and softmax, dtype-preserving (float32 stays float32, float64 stays float64).

Every constant below is a Python float: NumPy treats those as "weak" scalars that take the
array's dtype, while a NumPy float64 constant would silently turn a float32 array into float64.
"""

import math

import autograd.numpy as np
import scipy.special
from autograd.extend import defvjp, primitive
from autograd.tracer import getval

from .checks import check_float

_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_TANH_COEF = 0.044715


def gelu_reference(x, approximate="none"):
    """Readable, autograd-traced GELU (see ``gelu``); float64 only for exactness checks."""
    import autograd.scipy.special as aspecial

    if approximate == "tanh":
        return 0.5 * x * (1.0 + np.tanh(_SQRT_2_OVER_PI * (x + _TANH_COEF * x**3)))
    return 0.5 * x * (1.0 + aspecial.erf(x * _INV_SQRT2))


@primitive
def _gelu_exact(x):
    return 0.5 * x * (1.0 + scipy.special.erf(x * _INV_SQRT2))


def _gelu_exact_vjp(y, x):
    def vjp(g):  # d/dx [x * Phi(x)] = Phi(x) + x * phi(x)
        cdf = 0.5 * (1.0 + scipy.special.erf(x * _INV_SQRT2))
        pdf = _INV_SQRT_2PI * np.exp(-0.5 * x * x)
        return g * (cdf + x * pdf)

    return vjp


defvjp(_gelu_exact, _gelu_exact_vjp)


@primitive
def _gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(_SQRT_2_OVER_PI * (x + _TANH_COEF * x * x * x)))


def _gelu_tanh_vjp(y, x):
    def vjp(g):
        t = np.tanh(_SQRT_2_OVER_PI * (x + _TANH_COEF * x * x * x))
        dinner = _SQRT_2_OVER_PI * (1.0 + 3.0 * _TANH_COEF * x * x)
        return g * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * dinner)

    return vjp


defvjp(_gelu_tanh, _gelu_tanh_vjp)


def gelu(x, approximate="none"):
    """Gaussian error linear unit, ``x * Phi(x)`` (PyTorch ``F.gelu``).

    ``approximate="none"``: exact, ``0.5 x (1 + erf(x / sqrt 2))`` (scipy's erf).
    ``approximate="tanh"``: ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``, cheaper.
    Both are primitives with hand-written VJPs beside them; ``gelu_reference`` is the traced
    version they are tested against.

    Args:
        x: any shape, float32 or float64. Returns: same shape and dtype.
    """
    check_float("x", x)
    if approximate == "none":
        return _gelu_exact(x)
    if approximate == "tanh":
        return _gelu_tanh(x)
    raise ValueError(f"approximate must be 'none' or 'tanh', got {approximate!r}")


def sigmoid(x):
    """Logistic sigmoid ``1 / (1 + exp(-x))``, computed as ``0.5 (1 + tanh(x / 2))``.

    The tanh form is the same function but never overflows for large ``|x|``.
    Args: x: any shape. Returns: same shape and dtype, values in (0, 1).
    """
    check_float("x", x)
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _shift_by_max(x, axis):
    # Softmax is unchanged by subtracting a constant per row; subtracting the row maximum
    # keeps exp() from overflowing. The maximum is treated as a constant (getval), which is
    # exact for the gradient and avoids np.max's float64 gradient for float32 inputs.
    return x - np.max(getval(x), axis=axis, keepdims=True)


def softmax(x, axis=-1):
    """Numerically stable softmax ``exp(x_i) / sum_j exp(x_j)`` along ``axis``.

    Args: x: any shape, float. Returns: same shape, non-negative, summing to 1 along ``axis``.
    """
    check_float("x", x)
    e = np.exp(_shift_by_max(x, axis))
    return e / np.sum(e, axis=axis, keepdims=True)


def log_softmax(x, axis=-1):
    """Numerically stable ``log(softmax(x))`` along ``axis`` (log-sum-exp with max shift).

    Args: x: any shape, float. Returns: same shape and dtype.
    """
    check_float("x", x)
    shifted = _shift_by_max(x, axis)
    return shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))
