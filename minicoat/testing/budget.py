"""The error budget of a centred difference, and the chance that a random direction misses.

Along a unit direction ``d`` let ``phi(t) = f(x + t d)``. The centred difference with step
``eps`` expands (Taylor) as::

    D(eps) = (phi(eps) - phi(-eps)) / (2 eps) = phi'(0) + eps^2 phi'''(0) / 6 + O(eps^4)

so it differs from the derivative ``phi'(0) = <grad f(x), d>`` by two terms:

* **truncation**, ``eps^2 |phi'''| / 6``: ~1e-12 for ``eps = 1e-6`` when the third derivative
  is of order one (exactly zero for a function linear or quadratic along ``d``);
* **round-off**, ``machine_eps |f| / eps``: each evaluation of ``f`` carries a relative error
  of about ``machine_eps`` (2.2e-16 in float64), and the difference divides it by ``eps``:
  ``~2e-10 |f|`` for ``eps = 1e-6``. In float32 (``machine_eps`` = 1.2e-7) it is ``~0.1 |f|``:
  as large as the derivative itself, which is why the checks refuse float32.

Their sum is smallest near ``eps = (3 machine_eps |f| / |phi'''|)^(1/3)`` ~ 1e-5; 1e-6 keeps
the truncation term well below the round-off one, so the budget does not hang on an estimate
of ``phi'''``. That estimate comes from a second, wider difference::

    D(h) - D(eps) = (h^2 - eps^2) phi''' / 6 + O(h^4),   h = sqrt(eps) (1e-3)

two more evaluations of ``f`` per direction; its own round-off, ``machine_eps |f| / eps``
divided by ``h^2``, costs the truncation estimate nothing (times ``eps^2``: ``~1e-16 |f|``).
A kink (ReLU, max) within ``h`` of ``x`` shows up as a large ``phi'''``, so the budget grows
instead of a false alarm.

``machine_eps |f|`` assumes ``f`` is computed to full precision. A function that loses digits
in its own evaluation (GELU's ``1 + erf(x / sqrt 2)`` near ``x = -4`` loses five) is noisier,
and the same five evaluations measure by how much: the even part ``(phi(t) + phi(-t)) / 2 -
phi(0)`` is ``phi'' t^2 / 2`` plus rounding, so its value at ``eps`` less ``eps^2 / h^2`` times its
value at ``h`` is the rounding noise alone (``noise``). The round-off term is the larger of the
two, the noise taken as its largest over all the probes of a check (one sample each): 3,000
random sums ``sum(c * tanh(2 x))``, where ``|f|`` is far below the size of its terms, gave no
false alarm (at worst 0.76 of the tolerance), where ``machine_eps |f| / eps`` alone is exceeded
12-fold (``notebooks/08``).

The tolerance is the budget times ``SAFETY = 10``: the rounding of ``f`` is a sum of many
small errors and the model counts their typical size (measured on ``coatnet-digits`` over 60
directions: the error is a median 0.3 of the unscaled budget, at most 1.4).

**Which mistakes a random direction misses.** Let ``e`` be the error of a gradient (ours minus
the true one) over ``n`` numbers. Along a direction ``d`` drawn uniformly from the unit sphere
the check sees ``<e, d> = |e| t``, where ``t`` is one coordinate of a random unit vector: ``t^2``
follows ``Beta(1/2, (n-1)/2)``. The check passes a wrong gradient only when ``|<e, d>|`` stays
within the tolerance ``tau``, that is ``|t| <= s = tau / |e|``::

    P(miss, one direction) = I_{s^2}(1/2, (n-1)/2)  ~  s sqrt(2 n / pi)   (s small)

(``I`` the regularised incomplete beta function), and ``k`` independent directions all miss
with probability ``P^k``. For a real mistake ``|e|`` is a sizeable part of ``|grad|`` while
``tau`` is ~1e-9 of it: with the default three directions the miss probability of each of
the mistakes in ``tests/test_testing.py`` is below 1e-13. ``miss_probability`` computes it;
the same tests check it against observed miss rates, on errors made just large enough to be
caught about half the time.
"""

import math

import numpy as onp
from scipy.special import betainc

EPS = 1e-6  # the default step: a centred difference's budget is ~2e-10 |f| in float64
SAFETY = 10.0  # tolerance = SAFETY * (truncation + round-off)
MACHINE_EPS = float(onp.finfo(onp.float64).eps)  # 2.2e-16


def wide_step(eps):
    """The step of the second difference that estimates ``phi'''``: ``sqrt(eps)``."""
    return math.sqrt(eps)


def truncation(eps, d_eps, d_wide):
    """``eps^2 |phi'''| / 6`` with ``phi'''`` from the two centred differences.

    ``d_eps`` and ``d_wide`` are ``D(eps)`` and ``D(h)`` for ``h = wide_step(eps)``; arrays
    give one estimate per entry.
    """
    h = wide_step(eps)
    return eps**2 * onp.abs(onp.asarray(d_wide) - onp.asarray(d_eps)) / (h**2 - eps**2)


def round_off(eps, f_scale):
    """``machine_eps * |f| / eps``: the round-off of one centred difference (float64).

    ``f_scale`` is the magnitude of the values of ``f`` (their sum of absolute terms when
    ``f`` is a sum, such as ``sum(y * upstream)`` in a VJP check).
    """
    return MACHINE_EPS * onp.asarray(f_scale) / eps


def noise(eps, at_x, at_eps, at_wide):
    """The rounding noise of ``f`` near ``x``, measured, divided by ``eps``.

    The even part of ``phi`` is smooth, ``(phi(t) + phi(-t)) / 2 - phi(0) = phi'' t^2 / 2 +
    O(t^4)``: its value at ``eps`` predicted from the one at ``h`` (times ``eps^2 / h^2``) leaves
    only the rounding errors of the three evaluations at ``0, +-eps``. For ``f`` computed to
    full precision this is about ``machine_eps |f|``; where ``f`` loses digits in its own
    evaluation (``1 + erf(x)`` for x near -4 loses five) it is what the difference suffers.

    Args:
        at_x: ``phi(0)``; at_eps, at_wide: ``(phi(eps), phi(-eps))``, ``(phi(h), phi(-h))``.
    """
    h = wide_step(eps)
    even_eps = (at_eps[0] + at_eps[1]) / 2 - at_x
    even_wide = (at_wide[0] + at_wide[1]) / 2 - at_x
    return abs(even_eps - even_wide * eps**2 / h**2) / eps


def miss_probability(error_norm, tolerance, n, directions=3):
    """Chance that ``directions`` random unit directions all miss a gradient error.

    Args:
        error_norm: ``|e|``, the norm of the error (ours minus the true gradient).
        tolerance: the tolerance ``tau`` of one directional comparison.
        n: the number of entries the directions span.
        directions: how many independent directions are checked.

    Returns:
        ``I_{s^2}(1/2, (n-1)/2) ** directions`` with ``s = tau / |e|`` (1 when ``s >= 1``).
    """
    if error_norm <= 0:
        return 1.0
    s = tolerance / error_norm
    if s >= 1:
        return 1.0
    if n == 1:
        return 0.0  # the only direction is the axis itself: |t| = 1 > s
    return float(betainc(0.5, (n - 1) / 2.0, s * s)) ** directions
