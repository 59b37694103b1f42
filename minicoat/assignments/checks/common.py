"""What every check shares: calling the student's code, comparing arrays, the oracle.

A check runs the student's function through ``_call`` (a stub's ``NotImplementedError``
becomes "not implemented yet: <hint>"), computes the expected values with minicoat and the
PyTorch oracle, and compares with ``_mismatch`` / ``_tree_mismatches``, naming the classic
mistakes it is given as ``suspects``.
"""

import contextlib

import autograd
import autograd.numpy as anp
import numpy as np
from autograd.tracer import getval

from ...tree import flatten
from .guard import guarded_call

ORACLE_TOL = 1e-10  # against minicoat and PyTorch; expect ~1e-15
# Parameters after AdamW steps: Adam divides each gradient by its own size, so the round-off
# of a gradient that is zero in theory (e.g. the key bias, which softmax ignores) becomes a
# step of ~lr * 1e-17 / eps; measured ~1e-10 relative to the leaf. A mistake gives > 1e-4.
TRAINED_TOL = 1e-8
NUMERIC_TOL = 1e-6  # against finite differences; expect ~1e-9
ADAMW = {"betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.05}  # the notebook's defaults


class CheckFailed(AssertionError):
    """A check found a wrong answer; the message says what, where and by how much."""


# -- calling student code -------------------------------------------------------------------


def _call(what, fn, *args, **kwargs):
    """``fn(*args, **kwargs)``; a stub's ``NotImplementedError`` becomes a clear failure.

    ``fn`` is the student's function wrapped by ``_guarded``.
    """
    try:
        return fn(*args, **kwargs)
    except NotImplementedError as err:
        hint = str(err) or "replace `raise NotImplementedError` with your code"
        raise CheckFailed(f"{what}: not implemented yet: {hint}") from None
    except CheckFailed:
        raise
    except Exception as err:
        raise CheckFailed(f"{what} raised {type(err).__name__}: {err}") from err


def _guarded(what, forbidden, fn):
    """``fn`` with the tripwires of ``forbidden`` armed on each call (see ``guard``): calling
    the library's implementation of what is graded, or changing the library or the checks,
    raises ``CheckFailed`` saying so."""

    def run(*args, **kwargs):
        result, offence = guarded_call(forbidden, fn, *args, **kwargs)
        if offence:
            raise CheckFailed(f"{what}: {offence}")
        return result

    return run


def _autograd_grad(what, objective, arg):
    """The gradient of a scalar function of the student's code, by autograd, or a clear failure."""
    try:
        return autograd.grad(objective)(arg)
    except CheckFailed:
        raise
    except Exception as err:
        raise CheckFailed(
            f"{what}: autograd could not differentiate your code ({type(err).__name__}: {err}). "
            "Write it with autograd.numpy (import autograd.numpy as np), without in-place "
            "assignment (a[i] = ...) and without np.copy"
        ) from err


def _snapshot(**trees):
    """Copies of the leaves of some input trees, to tell whether a function modified them."""
    return {name: {k: np.array(v, copy=True) for k, v in flatten(tree).items()}
            for name, tree in trees.items()}


def _require_unmodified(what, snapshot, **trees):
    """Fail if a student's function changed an input in place (functions here are pure)."""
    for name, tree in trees.items():
        flat = flatten(tree)
        for key, before in snapshot[name].items():
            if key not in flat or not np.array_equal(flat[key], before):
                raise CheckFailed(
                    f"{what} changed its input {name}[{key!r}] in place (p -= ..., d[k] = ..., "
                    f"d[k] += 1); return new arrays and dicts instead (p = p - ...): the caller "
                    f"still needs the old ones")


def _pair(what, result, names):
    """Check that a student's function returned a tuple of ``len(names)`` things."""
    if not isinstance(result, (tuple, list)) or len(result) != len(names):
        raise CheckFailed(
            f"{what} should return a tuple ({', '.join(names)}), got {type(result).__name__}"
        )
    return result


# -- comparing ------------------------------------------------------------------------------


def _plain(a):
    return np.asarray(getval(a))


def _head(a, n=4):
    return np.array2string(np.ravel(a)[:n], precision=5, separator=", ")


def _error(got, expected, floor=0.0):
    """Normwise relative error; a leaf whose true value is ~0 is measured against ``floor``."""
    scale = max(np.linalg.norm(got), np.linalg.norm(expected))
    if scale < 1e-8 * floor:  # e.g. a gradient that is exactly zero in theory
        scale = floor
    return 0.0 if scale == 0.0 else float(np.linalg.norm(got - expected) / scale)


def _mismatch(label, got, refs, suspects=None, floor=0.0):
    """None if ``got`` agrees with every reference, else one line saying how it differs.

    Args:
        label: what is compared, e.g. "output" or "gradient w.r.t. w".
        got: the student's array.
        refs: ``[(source, expected, pass mark), ...]``; the first is quoted for values.
        suspects: description -> the array a classic mistake gives; named if it matches.
        floor: norm of the whole tree ``got`` belongs to (see ``_error``).
    """
    expected = refs[0][1]
    try:
        got = _plain(got)
    except Exception:
        return f"{label}: expected an array, got {type(got).__name__}"
    if got.shape != expected.shape:
        return f"{label}: wrong shape: expected {expected.shape}, got {got.shape}"
    if got.dtype != expected.dtype:
        return f"{label}: wrong dtype: expected {expected.dtype}, got {got.dtype}"
    if not np.all(np.isfinite(got)):
        return f"{label}: {np.sum(~np.isfinite(got))} of {got.size} values are NaN or inf"
    errors = [(source, _error(got, ref, floor), tol) for source, ref, tol in refs]
    failed = [f"{e:.1e} vs {source} (pass mark {tol:.0e})" for source, e, tol in errors if e > tol]
    if not failed:
        return None
    diff = np.abs(got - expected)
    worst = tuple(int(i) for i in np.unravel_index(np.argmax(diff), diff.shape))
    message = (
        f"{label}: error {', '.join(failed)}; largest difference at index {worst}: "
        f"got {got[worst]:.6g}, expected {expected[worst]:.6g}; first values: "
        f"got {_head(got)}, expected {_head(expected)}"
    )
    for description, suspect in (suspects or {}).items():
        if suspect.shape == got.shape and _error(got, suspect) < 1e-8:
            return f"{message}. It matches {description}"
    return message


def _require(context, problems, limit=6):
    """Raise ``CheckFailed`` listing the problems (None entries are passes)."""
    problems = [p for p in problems if p]
    if problems:
        more = len(problems) - limit
        lines = problems[:limit] + ([f"... and {more} more"] if more > 0 else [])
        raise CheckFailed(f"{context}:\n  " + "\n  ".join(lines))


def _tree_mismatches(prefix, got, refs, suspects=None):
    """``_mismatch`` for every leaf of a tree; ``refs`` holds (source, tree, tol)."""
    flat_refs = [(source, flatten(tree), tol) for source, tree, tol in refs]
    expected = flat_refs[0][1]
    try:
        got = flatten(got)
    except Exception:
        return [f"{prefix}: expected a nested dict like the parameters, got {type(got).__name__}"]
    if got.keys() != expected.keys():
        missing, extra = sorted(expected.keys() - got.keys()), sorted(got.keys() - expected.keys())
        return [f"{prefix}: wrong keys: missing {missing[:5]}, unexpected {extra[:5]}"]
    floor = np.sqrt(sum(np.sum(np.asarray(v) ** 2) for v in expected.values()))
    flat_suspects = {d: flatten(tree) for d, tree in (suspects or {}).items()}
    return [
        _mismatch(
            f"{prefix}{key}",
            got[key],
            [(source, np.asarray(tree[key]), tol) for source, tree, tol in flat_refs],
            {d: s[key] for d, s in flat_suspects.items()},
            floor,
        )
        for key in expected
    ]


def _zeros_suspect(tree):
    return {"zero: no gradient flows back (plain NumPy instead of autograd.numpy?)": tree}


# -- the oracle -----------------------------------------------------------------------------


def _oracle():
    """torch, the op twins and the network twins (imported on first use: torch is slow)."""
    import torch

    from ...oracle import network, ops

    return torch, ops, network


@contextlib.contextmanager
def _one_torch_thread():
    """Run torch on one thread, then restore the caller's setting.

    The oracle's tensors are tiny; on a busy machine, OpenMP synchronisation between threads
    was measured to cost up to a second per op (against ~1 ms on one thread).
    """
    torch = _oracle()[0]
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _normal(rng, shape, scale=1.0):
    return rng.standard_normal(shape) * scale


def _shape_text(**arrays):
    return ", ".join(f"{name} {tuple(np.shape(a))}" for name, a in arrays.items())


# -- hand-written VJPs ----------------------------------------------------------------------


def _numeric_problem(label, fn, args, got, g):
    """Finite differences through ``minicoat.testing.vjpcheck``: None, or why ``got`` is off.

    ``got`` holds the student's gradients of ``sum(fn(*args) * g)`` w.r.t. every argument,
    already checked for shape and dtype; the tolerance is vjpcheck's error budget.
    """
    from ...testing import GradcheckError, vjpcheck

    given = tuple(_plain(a) for a in got)
    report = vjpcheck(fn, lambda _upstream, *_args: given, *args, upstream=g, raises=False)
    if report.passed:
        return None
    return f"{label}: against finite differences (minicoat.testing.vjpcheck): " + str(
        GradcheckError(report))


def _vjp_problems(names, got, fn, args, g, suspects=None):
    """Compare a hand-written VJP with the library's (autograd) and finite differences.

    ``fn(*args)`` is the library's forward of the op, ``g`` the upstream gradient and ``got``
    the student's gradients, one per name in ``names`` (w.r.t. ``args`` in order). Returns the
    problems for ``_require``, None for the gradients that pass. Finite differences go through
    ``minicoat.testing.vjpcheck``, with its error budget.
    """
    exact = autograd.grad(lambda xs: anp.sum(fn(*xs) * g))(tuple(args))
    problems = [
        _mismatch(f"gradient w.r.t. {name}", got[i],
                  [("minicoat", np.asarray(exact[i]), ORACLE_TOL)],
                  {**(suspects or {}).get(name, {}),
                   "zero: no gradient at all": np.zeros_like(args[i])})
        for i, name in enumerate(names)]
    if _well_formed(got, exact):
        problems.append(_numeric_problem(", ".join(names), fn, args, got, g))
    return problems


def _well_formed(got, expected):
    """Every array in ``got`` finite, with the shape and dtype of its ``expected``."""
    try:
        got = [_plain(a) for a in got]
    except Exception:
        return False
    return len(got) == len(expected) and all(
        a.shape == np.shape(b) and a.dtype == np.asarray(b).dtype and np.all(np.isfinite(a))
        for a, b in zip(got, expected, strict=True))
