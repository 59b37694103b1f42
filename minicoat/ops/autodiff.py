"""Gradients of whole functions, ``value_and_grad`` and ``make_vjp``, by the implementation.

Under ``"traced"`` and ``"readable"`` it is autograd's own ``value_and_grad``: the forward pass
records every op on a tape, the backward pass walks the tape from the loss to the parameters,
each op turning the gradient of its output into gradients of its inputs (its VJP). Under
``"fast"`` the kernel tier's version runs the same walk but frees what each op saved as soon as
its VJP has run (``minicoat/kernels/autodiff.py``); the gradients are the same, bit for bit.
"""

import autograd

from .switch import dispatch

_value_and_grad = dispatch(
    "value_and_grad", traced=autograd.value_and_grad, readable=autograd.value_and_grad
)


def value_and_grad(fun):
    """``fun(x) -> (fun(x), d fun / d x)`` for a scalar ``fun`` of one argument ``x``.

    ``x`` may be an array or a tree (nested dicts) of arrays; the gradient has its structure.
    """
    return _value_and_grad(fun)


_make_vjp = dispatch(
    "make_vjp",
    traced=lambda fun, x: autograd.make_vjp(fun)(x),
    readable=lambda fun, x: autograd.make_vjp(fun)(x),
)


def make_vjp(fun, x):
    """``(vjp, fun(x))``: ``vjp(g)`` is ``g`` times the Jacobian of ``fun`` at ``x``.

    ``x`` is an array or a tree of arrays; ``g`` has the shape of ``fun(x)``; ``vjp(g)`` the
    structure of ``x``. (The fast implementation's ``vjp`` can be called only once.)
    """
    return _make_vjp(fun, x)
