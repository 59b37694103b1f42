"""Activations and softmax, dtype-preserving (float32 stays float32, float64 stays float64).

GELU (Hendrycks & Gimpel), the activation of every CoAtNet block (paper, appendix A.1)::

    GELU(x) = x Phi(x) = 0.5 x (1 + erf(x / sqrt 2))                  (exact)
            ~ 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3)))       (approximate="tanh")

SiLU (Swish, Ramachandran et al. 2017; Elfwing et al. 2018), ``x sigmoid(x)``, is the activation
timm's CoAtNets use inside squeeze-excitation (the EfficientNet choice); GELU everywhere else.

Softmax turns the attention logits of a row into weights that sum to one. Every constant below
is a Python float: NumPy treats those as "weak" scalars that take the array's dtype, while a
NumPy float64 constant would silently turn a float32 array into float64.
"""

import math

import autograd.numpy as np
import autograd.scipy.special as special
import numpy as onp
import scipy.special
from autograd.tracer import getval

from .checks import check_float
from .switch import dispatch, with_vjp

INV_SQRT2 = 1.0 / math.sqrt(2.0)
INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
TANH_COEF = 0.044715


def check_approximate(approximate):
    """GELU's ``approximate`` must be ``"none"`` (exact) or ``"tanh"``."""
    if approximate not in ("none", "tanh"):
        raise ValueError(f"approximate must be 'none' or 'tanh', got {approximate!r}")


# -- GELU -----------------------------------------------------------------------------------


def gelu_traced(x, approximate="none"):
    """GELU, exact (erf) or with the tanh approximation (shapes as ``gelu``)."""
    if approximate == "tanh":
        return 0.5 * x * (1.0 + np.tanh(SQRT_2_OVER_PI * (x + TANH_COEF * x**3)))
    return 0.5 * x * (1.0 + special.erf(x * INV_SQRT2))


def gelu_backward(g, x, approximate="none"):
    """Gradient of ``gelu``: ``g * GELU'(x)``; returns ``(dx, None)``.

    Exact: ``d/dx [x Phi(x)] = Phi(x) + x phi(x)``, with ``phi(x) = exp(-x^2 / 2) / sqrt(2 pi)``.
    Tanh: with ``u = sqrt(2/pi) (x + 0.044715 x^3)`` and ``t = tanh(u)``,
    ``d/dx [0.5 x (1 + t)] = 0.5 (1 + t) + 0.5 x (1 - t^2) du/dx``.
    """
    if approximate == "tanh":
        t = onp.tanh(SQRT_2_OVER_PI * (x + TANH_COEF * x**3))
        du_dx = SQRT_2_OVER_PI * (1.0 + 3.0 * TANH_COEF * x * x)
        return g * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du_dx), None
    cdf = 0.5 * (1.0 + scipy.special.erf(x * INV_SQRT2))  # Phi(x)
    density = INV_SQRT_2PI * onp.exp(-0.5 * x * x)  # phi(x)
    return g * (cdf + x * density), None


_gelu = dispatch("gelu", traced=gelu_traced, readable=with_vjp(gelu_traced, gelu_backward))


def gelu(x, approximate="none"):
    """Gaussian error linear unit, ``x * Phi(x)`` (PyTorch ``F.gelu``).

    ``approximate="none"``: exact, ``0.5 x (1 + erf(x / sqrt 2))``.
    ``approximate="tanh"``: ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``, cheaper.

    Args:
        x: any shape, float32 or float64. Returns: same shape and dtype.
    """
    check_float("x", x)
    check_approximate(approximate)
    return _gelu(x, approximate)


# -- sigmoid --------------------------------------------------------------------------------


def sigmoid_traced(x):
    """``1 / (1 + exp(-x))`` as ``0.5 (1 + tanh(x / 2))``: the same function, never overflowing."""
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def sigmoid_backward(g, x):
    """``d sigmoid / dx = s (1 - s)`` with ``s = sigmoid(x)``; returns ``(dx,)``."""
    s = sigmoid_traced(x)
    return (g * s * (1.0 - s),)


_sigmoid = dispatch(
    "sigmoid", traced=sigmoid_traced, readable=with_vjp(sigmoid_traced, sigmoid_backward)
)


def sigmoid(x):
    """Logistic sigmoid ``1 / (1 + exp(-x))``, computed as ``0.5 (1 + tanh(x / 2))``.

    Args: x: any shape. Returns: same shape and dtype, values in (0, 1).
    """
    check_float("x", x)
    return _sigmoid(x)


# -- SiLU -----------------------------------------------------------------------------------


def silu_traced(x):
    """``x sigmoid(x)`` (shapes as ``silu``)."""
    return x * sigmoid_traced(x)


def silu_backward(g, x):
    """``d/dx [x s(x)] = s + x s (1 - s)`` with ``s = sigmoid(x)``; returns ``(dx,)``."""
    s = sigmoid_traced(x)
    return (g * (s + x * s * (1.0 - s)),)


_silu = dispatch("silu", traced=silu_traced, readable=with_vjp(silu_traced, silu_backward))


def silu(x):
    """Sigmoid linear unit (Swish), ``x * sigmoid(x)`` (PyTorch ``F.silu``).

    Args: x: any shape, float32 or float64. Returns: same shape and dtype.
    """
    check_float("x", x)
    return _silu(x)


# -- softmax and log-softmax ----------------------------------------------------------------


def _shift_by_max(x, axis):
    # Softmax is unchanged by subtracting a constant per row; subtracting the row maximum
    # keeps exp() from overflowing. The maximum is treated as a constant (getval), which is
    # exact for the gradient and avoids np.max's float64 gradient for float32 inputs.
    return x - np.max(getval(x), axis=axis, keepdims=True)


def softmax_traced(x, axis=-1):
    """``exp(x_i) / sum_j exp(x_j)`` along ``axis``, shifted by the maximum for stability."""
    e = np.exp(_shift_by_max(x, axis))
    return e / np.sum(e, axis=axis, keepdims=True)


def softmax_backward(g, x, axis=-1):
    """With ``y = softmax(x)``, ``dy_i / dx_j = y_i (delta_ij - y_j)``, so
    ``dx = y * (g - sum(g * y))`` along ``axis``. Returns ``(dx, None)``."""
    y = softmax_traced(x, axis)
    return y * (g - onp.sum(g * y, axis=axis, keepdims=True)), None


def log_softmax_traced(x, axis=-1):
    """``x_i - log sum_j exp(x_j)`` along ``axis`` (log-sum-exp, shifted by the maximum)."""
    shifted = _shift_by_max(x, axis)
    return shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))


def log_softmax_backward(g, x, axis=-1):
    """``d log_softmax(x)_i / dx_j = delta_ij - softmax(x)_j``, so
    ``dx = g - softmax(x) * sum(g)`` along ``axis``. Returns ``(dx, None)``."""
    return g - softmax_traced(x, axis) * onp.sum(g, axis=axis, keepdims=True), None


_softmax = dispatch(
    "softmax", traced=softmax_traced, readable=with_vjp(softmax_traced, softmax_backward)
)
_log_softmax = dispatch(
    "log_softmax",
    traced=log_softmax_traced,
    readable=with_vjp(log_softmax_traced, log_softmax_backward),
)


def softmax(x, axis=-1):
    """Numerically stable softmax ``exp(x_i) / sum_j exp(x_j)`` along ``axis``.

    Args: x: any shape, float. Returns: same shape, non-negative, summing to 1 along ``axis``.
    """
    check_float("x", x)
    return _softmax(x, axis)


def log_softmax(x, axis=-1):
    """Numerically stable ``log(softmax(x))`` along ``axis`` (log-sum-exp with max shift).

    Args: x: any shape, float. Returns: same shape and dtype.
    """
    check_float("x", x)
    return _log_softmax(x, axis)
