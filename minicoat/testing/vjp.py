"""Checks of a backward pass on its own: a hand-written VJP, a primitive, the implementations.

* ``vjpcheck(f, vjp, *args)``: a VJP written by hand (what a student writes in an assignment,
  what ``minicoat/ops`` calls ``*_backward``) against centred differences of
  ``sum(f(*args) * upstream)``, and optionally against autograd's VJP of ``f``.
* ``primitivecheck(primitive, traced, *args)``: an autograd ``@primitive`` with its
  ``defvjp`` against the plain forward it stands for, traced by autograd: the same value and
  the same VJP, to 1e-12.
* ``implementationcheck(f, *args)``: ``f`` and its VJP under ``mc.implementation("readable")``
  and ``("fast")`` against ``("traced")``, to 1e-12.

The VJP convention is the teaching tier's: ``vjp(upstream, *args)`` returns one cotangent per
argument, ``None`` for one that is not differentiable (a stride), e.g.
``depthwise_conv2d_backward(g, x, w, stride) -> (dx, dw, None)``. A VJP that returns only the
checked arguments' cotangents (``(dx, dw)``) is accepted too. The assignments' order,
``student_vjp(x, w, g, stride) -> (dx, dw)``, fits with a lambda:
``vjpcheck(mc.depthwise_conv2d, lambda g, x, w, s: student_vjp(x, w, g, s), x, w, 1)``.
"""

import time

import numpy as onp
from autograd.tracer import getval

from ..gradcheck import rel_error
from ..ops.autodiff import make_vjp
from ..ops.switch import implementation
from .budget import EPS
from .check import Prober, _chosen, run_probes
from .report import AgreementReport
from .trees import Leaves, _paths


def float_argnums(args):
    """Positions of the arguments that are float arrays or pytrees of them (the
    differentiable ones); ints, strings and ``None`` are not."""
    found = []
    for i, arg in enumerate(args):
        leaves = [leaf for _, leaf in _paths(arg)]
        if leaves and all(isinstance(getval(leaf), onp.ndarray)
                          and onp.issubdtype(getval(leaf).dtype, onp.floating) for leaf in leaves):
            found.append(i)
    if not found:
        raise ValueError("no argument is a float array or a pytree of float arrays")
    return tuple(found)


def _upstream(y, upstream, seed):
    """The output's cotangent: the given one (its shape checked) or a seeded random one."""
    shape = onp.shape(y)
    if upstream is None:
        return onp.random.default_rng(seed).standard_normal(shape)
    upstream = onp.asarray(upstream, dtype=onp.float64)
    if upstream.shape != shape:
        raise ValueError(
            f"upstream must have the shape of f's output {shape}, got {upstream.shape}")
    return upstream


def vjpcheck(f, vjp, *args, argnums=None, upstream=None, mode="directional", directions=3,
             eps=EPS, atol=None, rtol=None, upcast=False, seed=0, leaves=None, per_leaf=False,
             autograd_tol=None, raises=True):
    """Check a hand-written VJP of ``f`` against centred differences (and autograd).

    Args:
        f: the forward function, ``f(*args) -> y`` (any shape, e.g. ``(N, H, W, C)``).
        vjp: ``vjp(upstream, *args)``: the cotangents of the arguments for the output
            cotangent ``upstream`` (shaped like ``y``): one per argument (``None`` where not
            differentiable) or one per checked argument.
        *args: the arguments of ``f``; float64 arrays or pytrees of them are checked.
        argnums: the arguments to check (default: every float array or float pytree).
        upstream: the output cotangent (default: standard normal, seeded by ``seed``).
        mode, directions, eps, atol, rtol, upcast, seed, leaves, per_leaf, raises: as in
            ``gradcheck``; the numeric side is the gradient of ``sum(f(*args) * upstream)``,
            whose round-off is counted from ``sum(|f(*args) * upstream|)``.
        autograd_tol: also compare with autograd's VJP of ``f`` (``f`` must be traceable), each
            cotangent normwise within this (e.g. 1e-10); default: not compared.

    Returns:
        ``GradcheckReport`` (its ``agreement`` holds the comparison with autograd, if any).

    Raises:
        GradcheckError: naming the argument (or leaf) and probe that is off, ours against
            numeric and the budget; or, against autograd, the worst cotangent.
    """
    start = time.perf_counter()
    args = tuple(args)
    argnums = float_argnums(args) if argnums is None else argnums
    tree = Leaves(args, argnums, upcast)
    args = tree.with_values(tree.values)  # float64 copies
    upstream = _upstream(getval(f(*args)), upstream, seed)
    given = vjp(upstream, *args)
    given = list(given) if isinstance(given, (tuple, list)) else [given]
    while len(given) > len(args) and given[-1] is None:
        given.pop()  # the None of an argument left at its default (a norm's eps)
    if len(given) == len(args) and len(args) != len(tree.argnums):
        given = [given[i] for i in tree.argnums]
    elif len(given) != len(tree.argnums):
        raise ValueError(
            f"vjp returned {len(given)} cotangent(s); expected one per argument ({len(args)}) "
            f"or one per checked argument ({len(tree.argnums)}: argnums {tree.argnums})")
    ours = tree.leaves_of(given[0] if len(tree.argnums) == 1 else tuple(given), "vjp's output")

    def evaluate(values):
        terms = onp.asarray(getval(f(*tree.with_values(values))), onp.float64) * upstream
        return float(onp.sum(terms)), float(onp.sum(onp.abs(terms)))

    prober = Prober(evaluate, tree.values, ours, eps)
    report = run_probes(prober, tree, _chosen(tree, leaves), mode, directions, seed, per_leaf,
                        atol, rtol)
    report.what = f"the VJP {getattr(vjp, '__name__', 'vjp')} of {getattr(f, '__name__', 'f')}"
    if autograd_tol is not None:
        _, theirs = _value_and_vjp(f, tree, upstream, seed)
        report.agreement = AgreementReport(
            report.what, _errors(tree, ours, theirs), autograd_tol, ("ours", "autograd"))
    report.seconds = time.perf_counter() - start
    return report.raise_if_failed() if raises else report


def _value_and_vjp(f, tree, upstream, seed):
    """``f``'s value and the cotangent leaves of its VJP for ``upstream`` (None: random,
    seeded), in the selected implementation."""
    args = tree.with_values(tree.values)

    def of_checked(selected):
        full = list(args)
        parts = (selected,) if len(tree.argnums) == 1 else selected
        for i, part in zip(tree.argnums, parts, strict=True):
            full[i] = part
        return f(*full)

    vjp, y = make_vjp(of_checked, tree.selected(args))
    return y, tree.leaves_of(vjp(_upstream(y, upstream, seed)), "autograd's VJP")


def _errors(tree, ours, theirs):
    """``{"d/d<leaf>": rel_error}`` for two lists of cotangent leaves."""
    return {f"d/d{name}": rel_error(a, b) for name, a, b in zip(tree.names, ours, theirs,
                                                                 strict=True)}


def primitivecheck(primitive, traced, *args, argnums=None, upstream=None, seed=0, tol=1e-12,
                   raises=True):
    """An autograd primitive (``primitive`` + ``defvjp``) against its plain traced forward.

    Both are called on ``args`` and differentiated by autograd: the primitive through its
    hand-written VJP, ``traced`` through autograd's record of every step. Their values and
    their VJPs for one upstream cotangent must agree normwise within ``tol`` (1e-12: the same
    arithmetic in another order agrees to ~1e-16).

    Args:
        primitive, traced: functions of the same arguments, e.g.
            ``minicoat.ops.conv.depthwise_conv2d_readable`` and ``depthwise_conv2d_traced``.
        *args: their arguments; argnums: the ones to differentiate (default: float ones).
        upstream: the output cotangent (default: standard normal, seeded).

    Returns:
        ``AgreementReport`` with the errors of ``value`` and of each ``d/d<argument>``.
    """
    args = tuple(args)
    tree = Leaves(args, float_argnums(args) if argnums is None else argnums)
    y_p, grads_p = _value_and_vjp(primitive, tree, upstream, seed)
    y_t, grads_t = _value_and_vjp(traced, tree, upstream, seed)
    errors = {"value": rel_error(getval(y_p), getval(y_t)), **_errors(tree, grads_p, grads_t)}
    name = getattr(primitive, "__name__", "primitive")
    report = AgreementReport(f"primitive {name}", errors, tol, (name, "traced"))
    return report.raise_if_failed() if raises else report


def implementationcheck(f, *args, argnums=None, upstream=None, seed=0, tol=1e-12,
                        implementations=("readable", "fast"), raises=True):
    """``f`` and its VJP under each of ``implementations`` against ``"traced"``.

    Args:
        f: a function of ``args`` built from minicoat's ops (a layer, a block, a loss).
        *args, argnums, upstream, seed: as in ``primitivecheck``.
        tol: the pass mark, normwise (1e-12, as ``tests/test_implementations.py``).
        implementations: the ones compared with ``"traced"``.

    Returns:
        ``AgreementReport`` with ``"<implementation> value"`` and
        ``"<implementation> d/d<leaf>"`` per implementation.
    """
    args = tuple(args)
    tree = Leaves(args, float_argnums(args) if argnums is None else argnums)
    with implementation("traced"):
        y_ref, grads_ref = _value_and_vjp(f, tree, upstream, seed)
    errors = {}
    for name in implementations:
        with implementation(name):
            y, grads = _value_and_vjp(f, tree, upstream, seed)
        errors[f"{name} value"] = rel_error(getval(y), getval(y_ref))
        for key, err in _errors(tree, grads, grads_ref).items():
            errors[f"{name} {key}"] = err
    report = AgreementReport(f"implementations of {getattr(f, '__name__', 'f')}", errors, tol,
                             ("implementation", "traced"))
    return report.raise_if_failed() if raises else report
