"""GELU's kernel: cache-sized blocks, a float32 erf of its own, and the slope made in the forward.

``gelu_values``, ``gelu_derivative`` and ``gelu_and_slope`` act on plain blocks of a larger
array (``blockwise``); ``norm.batch_norm_gelu`` shares them. When a gradient will be asked for,
the forward pass computes the derivative ``GELU'(x)`` beside ``GELU(x)`` and keeps it instead of
``x``: the float32 exact GELU then reuses its own ``exp(-x^2 / 2)``, where a backward pass from
``x`` would compute it a second time (``docs/performance.md``, 35). In float64 the exact GELU
uses scipy's erf, so exactness checks see the same values as the teaching tier.
"""

import numpy as onp
import scipy.special
from autograd.extend import defvjp, primitive
from autograd.tracer import Box, getval

from ..ops.activations import INV_SQRT2, INV_SQRT_2PI, SQRT_2_OVER_PI, TANH_COEF
from ..ops.switch import register_kernel
from .blocking import blockwise

# Abramowitz & Stegun 7.1.26: for u >= 0, erfc(u) = t (a1 + a2 t + ... + a5 t^4) exp(-u^2)
# + e(u), t = 1 / (1 + p u), |e(u)| <= 1.5e-7.
_AS_P = 0.3275911
_AS_A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)
# The kernel evaluates the polynomial (with the factor 1/2 of Phi = erfc / 2 folded in) in
# s = lam t, lam = (a5 / 2)^(1/5): there its leading coefficient is 1 and the others are
# a_k lam^-k / 2, so Horner's scheme starts with an addition, one pass fewer. As a function
# of a = |x| = u sqrt 2, t = 1 / (1 + p u) = K / (K + a) with K = sqrt(2) / p: s = lam K / (K + a).
_AS_K = 1.0 / (_AS_P * INV_SQRT2)
_AS_LAM = (0.5 * _AS_A[4]) ** 0.2
_AS_S = tuple(0.5 * c * _AS_LAM ** -(k + 1) for k, c in enumerate(_AS_A[:4]))  # a1..a4


def _lower_tail_float32(a, with_gauss=False):
    """``Phi(-a)`` for float32 ``a >= 0``: ``0.5 erfc(a / sqrt 2)`` by A&S 7.1.26, in float32.

    scipy's erf computes in double precision; this rational approximation runs in float32
    (several times faster, ``docs/performance.md``). The formula is good to 7.5e-8 and float32
    evaluation adds a few ulps (at most 2.6e-7 for ``Phi`` on ``[-12, 12]``, tested): harmless
    for float32 training, so it is used for float32 only and float64 keeps scipy's erf for
    exact checks. 14 passes over ``a``, the ``exp`` one of them (``docs/performance.md``, 27).
    ``with_gauss``: return ``(Phi(-a), exp(-a^2 / 2))``, the Gaussian factor too.
    """
    s = a + _AS_K
    onp.divide(_AS_LAM * _AS_K, s, out=s)  # s = lam t (not np.reciprocal: one pass)
    q = s + _AS_S[3]  # Horner in s, the leading coefficient 1
    q *= s
    for coefficient in reversed(_AS_S[:3]):
        q += coefficient
        q *= s
    with onp.errstate(over="ignore"):  # a > 1.8e19: a * a = inf, and exp(-inf) = 0 as it should
        gauss = a * a
    gauss *= -0.5
    onp.exp(gauss, out=gauss)  # exp(-u^2)
    q *= gauss
    return (q, gauss) if with_gauss else q


def gelu_float32(x, out=None, slope_out=None):
    """``x Phi(x)`` for float32 ``x``, as ``max(x, 0) - |x| Phi(-|x|)`` (A&S 7.1.26 for Phi).

    For ``x >= 0``, ``x Phi(x) = x (1 - Phi(-x)) = x - x Phi(-x)``; for ``x < 0`` it is
    ``x Phi(x) = -|x| Phi(-|x|)``: both are ``max(x, 0) - |x| Phi(-|x|)``, with no sign to
    restore (``Phi(x)`` itself would need 5 more passes for it). ``max(x, 0)`` is one
    ``np.maximum`` (``x / 2 + |x| / 2`` takes three passes, 1.3x its time on a 2026 Xeon).
    18 passes in all, the last one into ``out`` when given (an array of x's shape).
    Far to the left the tiny negative values keep their size (to A&S's relative error, 1.5% at
    ``x = -9``), where ``1 + erf(x / sqrt 2)`` in float32 would round them to 0.
    ``slope_out``: also write ``GELU'(x)`` there (``gelu_and_slope``); returns ``y`` either way.
    """
    a = onp.abs(x)
    tail, gauss = _lower_tail_float32(a, with_gauss=True)
    tail *= a  # |x| Phi(-|x|)
    # against a block of zeros rather than the scalar 0: NumPy 2.4's AVX2 loop for maximum
    # with a scalar operand took 4x a plain pass on a Zen 3 (docs/performance.md, 35)
    y = onp.maximum(x, _ZEROS.like(x), out=out)
    y -= tail
    if slope_out is not None:
        _slope_from_gauss(x, a, y, gauss, slope_out)
    return y


def _slope_from_gauss(x, a, y, gauss, out):
    """``GELU'(x) = Phi(x) + x phi(x)`` into ``out``, from the forward's ``a = |x|``, ``y`` and
    ``gauss = exp(-x^2 / 2)``: the same passes, and values, as ``gelu_derivative`` (which
    computes ``gauss`` again from ``x``), without its ``exp``. Overwrites ``gauss``."""
    with onp.errstate(divide="ignore", invalid="ignore"):
        onp.divide(y, x, out=out)  # Phi(x), read back from the output
    onp.copyto(out, 0.5, where=a < _TINY)
    gauss *= x
    gauss *= INV_SQRT_2PI
    out += gauss


class _Zeros:
    """Read-only zero arrays of any block's shape, views of one buffer per dtype that grows as
    needed (an object, not a module-level dict: see ``threads._State``)."""

    def __init__(self):
        self.buffers = {}

    def like(self, x):
        flat = self.buffers.get(x.dtype)
        if flat is None or flat.size < x.size:
            flat = onp.zeros(max(x.size, 1 << 18), x.dtype)
            flat.flags.writeable = False
            self.buffers[x.dtype] = flat  # a thread racing here makes a buffer of its own
        return flat[: x.size].reshape(x.shape)


_ZEROS = _Zeros()


# GELU and its derivative on a plain block of a larger array (see ``blockwise``), shared by
# the primitive below and by ``kernels/norm.py``.

# Below this |x|, Phi(x) = 1/2 to double precision (|Phi(x) - 1/2| < 0.4 |x| < 1e-18 is below
# half an ulp of 1/2), and x Phi(x) may underflow. Its square, 1e-36, is a normal float32: the
# derivative tests x * x < 1e-36 on the square it computes anyway, one pass instead of |x|'s two.
_TINY = 1e-18


def _tanh_inner(x):
    return SQRT_2_OVER_PI * (x + TANH_COEF * x * x * x)


def gelu_values(x, approximate, out=None):
    """GELU of a plain array: ``x Phi(x)``, or its tanh approximation (into ``out`` if given)."""
    if approximate == "none":
        if x.dtype == onp.float32:
            return gelu_float32(x, out)
        cdf = 0.5 * (1.0 + scipy.special.erf(x * INV_SQRT2))  # float64: scipy's erf
    else:
        cdf = 0.5 * (1.0 + onp.tanh(_tanh_inner(x)))
    return onp.multiply(x, cdf, out=out)


def gelu_derivative(x, y, approximate):
    """``d GELU(x) / dx`` of a plain array, given also its GELU ``y``.

    Exact: ``Phi(x) + x phi(x)``, with ``Phi(x) = y / x`` read back from the forward's output
    instead of a second erf (and ``Phi = 1/2`` where ``|x| < 1e-18``). Tanh approximation,
    with ``t = tanh(u)``, ``u = sqrt(2/pi) (x + 0.044715 x^3)``:
    ``0.5 (1 + t) + 0.5 x (1 - t^2) du/dx``.
    """
    if approximate == "none":
        with onp.errstate(divide="ignore", invalid="ignore", over="ignore"):
            derivative = y / x  # Phi(x)
            density = onp.square(x)  # then x phi(x), in place rather than in new arrays
        onp.copyto(derivative, 0.5, where=density < _TINY * _TINY)  # (a mask index: 10% slower)
        density *= -0.5
        onp.exp(density, out=density)
        density *= x
        density *= INV_SQRT_2PI
        derivative += density
        return derivative
    t = onp.tanh(_tanh_inner(x))
    d_inner = SQRT_2_OVER_PI * (1.0 + 3.0 * TANH_COEF * x * x)
    return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * d_inner


def gelu_and_slope(x, approximate, out=None, slope_out=None):
    """``GELU(x)`` of a plain array into ``out`` (if given) and ``GELU'(x)`` into ``slope_out``.

    Returns ``y``. The float32 exact GELU computes the slope from its own ``exp(-x^2 / 2)``
    (``gelu_float32``); the others compute it from ``x`` and ``y`` (``gelu_derivative``). Either
    way the slope has the bits that ``gelu_derivative(x, y)`` would give it.
    """
    if approximate == "none" and x.dtype == onp.float32:
        return gelu_float32(x, out, slope_out)
    y = gelu_values(x, approximate, out)
    onp.copyto(slope_out, gelu_derivative(x, y, approximate))
    return y


def traced(*values):
    """True when any of ``values`` is being traced by autograd (a gradient may be asked for)."""
    return any(isinstance(v, Box) for v in values)


@primitive
def _gelu_with_slope(x, y, slope):
    """``y = GELU(x)``, computed already with its slope ``GELU'(x)`` (``gelu``); VJP ``g slope``."""
    return y


def _multiply(g, slope, out):
    return onp.multiply(g, slope, out=out)


defvjp(_gelu_with_slope, lambda ans, x, y, slope: lambda g: blockwise(_multiply, g, slope))


@register_kernel("gelu")
def gelu(x, approximate):
    """``gelu`` on cache-sized blocks (float32: the erf of ``gelu_float32``).

    Traced, the forward pass also writes the slope ``GELU'(x)`` and keeps it for the backward
    pass (one array of x's size, as ``x`` itself would be); untraced, it writes ``y`` alone.
    """
    if not traced(x):
        return blockwise(lambda x, out: gelu_values(x, approximate, out), x)
    x_value = onp.asarray(getval(x))
    slope = onp.empty_like(x_value)
    y = blockwise(
        lambda x, slope, out: gelu_and_slope(x, approximate, out, slope), x_value, slope
    )
    return _gelu_with_slope(x, y, slope)
