"""``gradcheck``: a reverse-mode gradient against centred differences, with a stated budget.

Two ways to probe the gradient ``g`` of a scalar ``f`` at ``x`` (arrays or pytrees):

* **directional** (the default): a few random unit directions ``d`` over the whole tree,
  comparing ``<g, d>`` with ``(f(x + eps d) - f(x - eps d)) / (2 eps)``. Four calls of ``f``
  per direction (two more estimate the truncation term of the budget), however many
  parameters there are: a whole network checks in seconds. When a direction fails, the
  check runs the worst one again on each leaf alone (four calls per leaf), to name the leaf
  that is wrong; ``per_leaf=True`` does so for every direction, passed or not.
* **elementwise**: every entry of every leaf, one at a time (four calls of ``f`` per
  entry): for small inputs, or for chosen leaves (``leaves=[...]``) of a larger tree.

Ours is read as ``<g, x+ - x->/(2 eps)`` with the perturbed points as actually rounded, so
that rounding ``x + eps d`` costs nothing; the budget is in ``minicoat.testing.budget``.
"""

import time

import numpy as onp

from ..ops.autodiff import value_and_grad
from .budget import EPS, SAFETY, noise, round_off, truncation, wide_step
from .report import GradcheckReport, LeafResult
from .trees import Leaves

MODES = ("directional", "elementwise")


def gradcheck(f, *args, argnums=0, mode="directional", directions=3, eps=EPS, atol=None,
              rtol=None, upcast=False, seed=0, per_leaf=False, leaves=None, gradient=None,
              raises=True):
    """Check the gradient of a scalar ``f(*args)`` with respect to ``args[argnums]``.

    Args:
        f: a scalar-valued function (a loss); it is differentiated by minicoat's
            ``value_and_grad`` (the selected ``mc.implementation``) unless ``gradient`` is given.
        *args: its arguments; those at ``argnums`` are float64 arrays or pytrees (nested
            dicts, lists, tuples) of float64 arrays, e.g. ``params``. The rest pass through.
        argnums: an int or a tuple of ints, the arguments to check.
        mode: ``"directional"`` (random unit directions over the whole tree) or
            ``"elementwise"`` (every entry).
        directions: how many random directions (directional mode). With the default 3 a real
            mistake is missed with probability below 1e-20 (``budget.miss_probability``).
        eps: the step of the centred differences (default 1e-6).
        atol, rtol: a probe passes when ``|ours - numeric| <= atol + rtol * |numeric|``.
            ``atol=None`` is the error budget, ``SAFETY * (truncation + round-off)``, computed
            for each probe; ``rtol=None`` is 0.
        upcast: check float32 arguments in float64 (copies) instead of refusing them; ``f``
            must accept float64 then (arrays it closes over included).
        seed: seeds the random directions.
        per_leaf: directional mode: also probe every leaf on its own (four calls of ``f`` per
            leaf and direction), for an error and budget per leaf.
        leaves: names of the leaves to check (default: all); the others are held fixed.
        gradient: instead of autograd, a function ``gradient(*args)`` returning ours, shaped
            like ``args[argnums]``: to check a gradient you wrote by hand.
        raises: raise ``GradcheckError`` on failure (default), else return the report.

    Returns:
        ``GradcheckReport``: per leaf the probes, ours, numeric, the budget; ``.passed``.

    Raises:
        GradcheckError: (an ``AssertionError``) a probe over its tolerance: the message names
            the worst leaf and probe, ours against numeric, and the budget.
        TypeError: float32 arguments (without ``upcast``), or ``f`` not scalar-valued.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if not eps > 0:
        raise ValueError(f"eps must be positive, got {eps!r}")
    if not isinstance(directions, int) or directions < 1:
        raise ValueError(f"directions must be a positive integer, got {directions!r}")
    start = time.perf_counter()
    tree = Leaves(args, argnums, upcast)
    chosen = _chosen(tree, leaves)
    what = getattr(f, "__name__", "f")

    def evaluate(values):
        value = onp.asarray(f(*tree.with_values(values)), dtype=onp.float64)
        if value.size != 1:
            raise TypeError(
                f"gradcheck needs a scalar-valued f, got shape {value.shape}: reduce it "
                f"(a loss), or check a vector function's VJP with vjpcheck"
            )
        value = float(value.reshape(()))
        return value, abs(value)

    evaluate(tree.values)  # a scalar? (before autograd's less telling complaint)
    grads = tree.leaves_of(_ours(f, tree, gradient), "the gradient")
    prober = Prober(evaluate, tree.values, grads, eps)
    report = run_probes(prober, tree, chosen, mode, directions, seed, per_leaf, atol, rtol)
    report.what, report.seconds = what, time.perf_counter() - start
    return report.raise_if_failed() if raises else report


def _chosen(tree, leaves):
    """Indices of the leaves to probe (``leaves``: names, or None for all)."""
    if leaves is None:
        return list(range(len(tree.names)))
    unknown = [name for name in leaves if name not in tree.names]
    if unknown:
        raise ValueError(f"no leaves named {unknown}; the leaves are {tree.names[:10]} ...")
    return [tree.names.index(name) for name in leaves]


def _ours(f, tree, gradient):
    """Our gradient, shaped like the checked arguments: autograd's, or the one given."""
    args = tree.with_values(tree.values)
    if gradient is not None:
        return gradient(*args)

    def of_checked(selected):
        full = list(args)
        parts = (selected,) if len(tree.argnums) == 1 else selected
        for i, part in zip(tree.argnums, parts, strict=True):
            full[i] = part
        return f(*full)

    return value_and_grad(of_checked)(tree.selected(args))[1]


class Prober:
    """Centred differences of ``evaluate`` along given directions, and their budget.

    ``evaluate(values) -> (value, magnitude)`` for a list of one array per leaf; ``grads``
    are ours, one array per leaf. ``f(x)`` itself is evaluated once, for the rounding noise.
    """

    def __init__(self, evaluate, values, grads, eps):
        self.evaluate, self.values, self.grads, self.eps = evaluate, values, grads, eps
        self.at_x = evaluate(values)[0]
        self.calls = 1

    def probe(self, direction):
        """``(ours, numeric, truncation, round-off model, measured noise)`` along
        ``direction`` (one array per leaf, ``None`` for a leaf that does not move); the last
        two are already divided by ``eps`` (``budget.round_off``, ``budget.noise``)."""
        eps, h = self.eps, wide_step(self.eps)
        plus, minus = self._moved(direction, eps), self._moved(direction, -eps)
        (f_plus, m_plus), (f_minus, m_minus) = self.evaluate(plus), self.evaluate(minus)
        (w_plus, _), (w_minus, _) = self.evaluate(self._moved(direction, h)), self.evaluate(
            self._moved(direction, -h))
        self.calls += 4
        numeric = (f_plus - f_minus) / (2 * eps)
        ours = sum(
            float(onp.vdot(g, p - m))
            for g, p, m, d in zip(self.grads, plus, minus, direction, strict=True)
            if d is not None
        ) / (2 * eps)
        trunc = float(truncation(eps, numeric, (w_plus - w_minus) / (2 * h)))
        measured = noise(eps, self.at_x, (f_plus, f_minus), (w_plus, w_minus))
        return ours, numeric, trunc, float(round_off(eps, max(m_plus, m_minus))), measured

    def _moved(self, direction, t):
        return [v if d is None else v + t * d for v, d in zip(self.values, direction, strict=True)]


def run_probes(prober, tree, chosen, mode, directions, seed, per_leaf, atol, rtol):
    """Probe the chosen leaves as ``mode`` says; returns the (unnamed) report."""
    def result(name, shape, probes, rows, noise_floor=0.0):
        columns = zip(*rows, strict=True)
        ours, numeric, trunc, model, measured = (onp.array(c, onp.float64) for c in columns)
        rnd = onp.maximum(model, max(measured.max(), noise_floor))  # the noise of f, pooled
        tol = SAFETY * (trunc + rnd) if atol is None else onp.full_like(ours, float(atol))
        tol = tol + (rtol or 0.0) * onp.abs(numeric)
        return LeafResult(name, shape, probes, ours, numeric, trunc, rnd, tol)

    report = GradcheckReport(mode, prober.eps)
    n_leaves = len(tree.values)
    if mode == "elementwise":
        pending = []
        for i in chosen:
            value = tree.values[i]
            rows, probes = [], []
            for flat in range(value.size):
                basis = onp.zeros_like(value)
                basis.reshape(-1)[flat] = 1.0
                rows.append(prober.probe([basis if j == i else None for j in range(n_leaves)]))
                index = onp.unravel_index(flat, value.shape)
                probes.append("[" + ", ".join(str(int(i)) for i in index) + "]")
            pending.append((tree.names[i], value.shape, probes, rows))
        pooled = max(row[4] for *_, rows in pending for row in rows)
        report.leaves = [result(*leaf, noise_floor=pooled) for leaf in pending]
        report.evaluations = prober.calls
        return report

    rng = onp.random.default_rng(seed)
    drawn = []
    for _ in range(directions):
        d = [rng.standard_normal(tree.values[i].shape) if i in chosen else None
             for i in range(n_leaves)]
        norm = onp.sqrt(sum(onp.sum(part**2) for part in d if part is not None))
        drawn.append([None if part is None else part / norm for part in d])
    size = sum(tree.values[i].size for i in chosen)
    whole = result("(tree)" if n_leaves > 1 else tree.names[0], (size,),
                   [f"direction {k}" for k in range(directions)],
                   [prober.probe(d) for d in drawn])
    report.leaves.append(whole)
    whole_noise = float(onp.max(whole.round_off))
    if n_leaves > 1 and (per_leaf or not whole.passed):
        # the same directions leaf by leaf (normalised): all of them, or the worst failed one
        again = range(directions) if per_leaf else [whole.worst]
        for i in chosen:
            rows, probes = [], []
            for k in again:
                part = drawn[k][i]
                alone = [part / onp.linalg.norm(part) if j == i else None for j in range(n_leaves)]
                rows.append(prober.probe(alone))
                probes.append(f"direction {k}")
            report.leaves.append(result(tree.names[i], tree.values[i].shape, probes, rows,
                                        noise_floor=whole_noise))
    report.evaluations = prober.calls
    return report
