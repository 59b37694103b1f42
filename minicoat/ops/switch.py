"""One switch, three implementations of every differentiable op.

Each op of the teaching tier (``minicoat/ops/``) comes in up to three implementations:

* ``"traced"``: the plain forward written with ``autograd.numpy``; autograd records every
  step and differentiates it. The definition everything else is tested against.
* ``"readable"``: the same forward with a hand-written backward pass (a vector-Jacobian
  product, VJP) in plain NumPy, written to be read: vectorised, no blocking, no fusion.
* ``"fast"``: a kernel from ``minicoat/kernels/``, registered there, with the same values and
  gradients (tests prove it). An op that has no kernel runs its readable implementation.

``implementation("readable")`` selects one for every op, globally; used in a ``with``
statement it restores the previous choice on exit::

    with mc.implementation("traced"):
        logits, _ = mc.forward(params, state, x, config)

How an op is wired (``minicoat/ops/conv.py`` is the example to read):
``with_vjp(forward, backward)`` turns a forward and its hand-written backward into an autograd
primitive, and ``dispatch(name, traced=..., readable=...)`` gives the function that the public op
calls, which picks the implementation of the moment. The kernel tier calls ``register_kernel``.
"""

from autograd.extend import defvjp_argnums, primitive

IMPLEMENTATIONS = ("traced", "readable", "fast")

_current = ["fast"]  # the selected implementation (a list, so that it is shared by reference)
_teaching = {}  # op name -> {"traced": function, "readable": function}
_kernels = {}  # op name -> the fast function, from minicoat/kernels/


class _Restore:
    """Returned by ``implementation(name)``: on leaving a ``with`` block, restore the old one."""

    def __init__(self, previous):
        self.previous = previous

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        _current[0] = self.previous
        return False


def implementation(name=None):
    """Select the implementation of every op, or return the current one's name.

    Args:
        name: ``"traced"``, ``"readable"`` or ``"fast"`` (the default at import), or None to
            ask which one is selected.

    Returns:
        With ``name``: an object that restores the previous choice when used as a context
        manager (``with implementation("readable"): ...``); the choice holds globally
        otherwise. Without: the current name.
    """
    if name is None:
        return _current[0]
    if name not in IMPLEMENTATIONS:
        raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {name!r}")
    previous, _current[0] = _current[0], name
    return _Restore(previous)


def with_vjp(forward, backward):
    """An autograd primitive with the values of ``forward`` and the gradients of ``backward``.

    ``forward(*args)`` computes the op on plain arrays; ``backward(g, *args)`` takes the
    gradient ``g`` of the output and the same arguments, and returns one gradient per
    argument (None for an argument that is not differentiable, such as a stride).
    """
    op = primitive(forward)

    def make_vjp(argnums, output, args, kwargs):
        def vjp(g):
            grads = backward(g, *args, **kwargs)
            return tuple(grads[i] for i in argnums)

        return vjp

    defvjp_argnums(op, make_vjp)
    return op


def dispatch(name, traced, readable):
    """Register an op's teaching implementations; returns the function that runs the selected one.

    ``traced`` and ``readable`` take the same arguments. Under ``"fast"`` the registered kernel
    runs, or ``readable`` when the op has none.
    """
    if name in _teaching:
        raise ValueError(f"op {name!r} is already registered")
    _teaching[name] = {"traced": traced, "readable": readable}

    def run(*args, **kwargs):
        mode = _current[0]
        if mode == "fast" and name in _kernels:
            return _kernels[name](*args, **kwargs)
        return _teaching[name]["traced" if mode == "traced" else "readable"](*args, **kwargs)

    run.__name__ = run.__qualname__ = name
    run.__doc__ = f"``{name}`` in the selected implementation (``minicoat.implementation()``)."
    return run


def register_kernel(name):
    """Decorator for the kernel tier: ``@register_kernel("gelu")`` makes a function the op's
    ``fast`` implementation. It takes the arguments of the op's traced implementation."""
    if name not in _teaching:
        raise ValueError(f"no op named {name!r} to register a kernel for; ops: {sorted(_teaching)}")

    def register(kernel):
        _kernels[name] = kernel
        return kernel

    return register


def implementations_of(name):
    """``{"traced": f, "readable": f, "fast": f}`` for one op (fast: readable if no kernel)."""
    found = dict(_teaching[name])
    found["fast"] = _kernels.get(name, found["readable"])
    return found


def ops():
    """Names of the ops that the switch selects an implementation for, and those with a kernel."""
    return sorted(_teaching), sorted(_kernels)
