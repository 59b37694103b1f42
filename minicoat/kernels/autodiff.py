"""``value_and_grad`` and ``make_vjp``: autograd's reverse mode, with two changes that save memory.

The ``fast`` implementation of ``minicoat.ops.value_and_grad`` (``traced`` and ``readable`` use
autograd's own).

How autograd's reverse mode works: while ``loss(params)`` runs on boxed arrays, every primitive
op records a *node* whose ``vjp`` closure holds what the op's gradient will need (its inputs,
often its output: the "saved activations"). The backward pass then visits the nodes from the
loss back to the inputs, each turning the gradient of its output into gradients of its inputs
(``autograd.core.backward_pass``). This module is that pass with two changes:

1. **Free as you go.** autograd keeps every node, and so every saved activation, until the
   whole backward pass is over: the peak memory of a step is then all the activations *plus*
   all the gradients plus the pass's temporaries. PyTorch frees a node's saved tensors as soon
   as its backward has run; here, too, a node drops its closure (``node.vjp = None``) once its
   gradient has been taken, so the activations of the last layers are gone before the
   gradients of the first layers are made.
2. **One root per leaf.** autograd boxes the whole parameter tree as *one* input, and every
   ``params["s1"]["block0"]...`` becomes a traced ``container_take``; in the backward pass each
   dict level then builds a zero-filled copy of all its leaves and adds the gradients of its
   children into it, level by level (a second copy of all the gradients, and much
   bookkeeping). Here every leaf array of the input tree gets its
   own box and root node, the function receives a plain dict of boxed arrays, and each leaf's
   gradient is read off its root.

And where one value feeds two ops (a residual's input), the two gradients reaching it are
added on the kernel threads (``blockwise``) rather than in one NumPy pass on one core.

The gradients are the same, bit for bit (``tests/test_autodiff.py``); what the two changes buy
in memory and time is measured in ``docs/performance.md``. It relies on
autograd's internals ``trace_stack``, ``new_box``, ``VJPNode`` and ``toposort`` (autograd 1.9.1
here; the tests compare against ``autograd.value_and_grad`` and would catch a change).
"""

import warnings

import numpy as onp
from autograd.core import VJPNode, add_outgrads, vspace
from autograd.tracer import isbox, new_box, toposort, trace_stack

from ..ops.switch import register_kernel
from . import threads
from .blocking import blockwise
from .threads import owned_cores


def _map_leaves(f, tree):
    """``f`` applied to every leaf of nested dicts, lists and tuples, keeping the structure."""
    if isinstance(tree, dict):
        return {key: _map_leaves(f, value) for key, value in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_map_leaves(f, value) for value in tree)
    return f(tree)


@register_kernel("make_vjp")
def make_vjp(fun, x):
    """``(vjp, fun(x))`` like ``autograd.make_vjp(fun)(x)``: ``vjp(g)`` is ``g`` times the Jacobian.

    ``x`` is an array or nested dicts / lists / tuples of arrays (None leaves pass through and
    get None); ``g`` has the shape of ``fun(x)``; ``vjp(g)`` has the structure of ``x``. The
    backward pass frees what the forward pass saved, so ``vjp`` can be called only once.
    """
    with trace_stack.new_trace() as trace:
        roots = []

        def root_box(leaf):  # each leaf: its own box, recorded by its own root node
            if leaf is None:  # an optional input left out: nothing to differentiate
                return None
            roots.append((VJPNode.new_root(), leaf))
            return new_box(leaf, trace, roots[-1][0])

        with owned_cores():  # both cores for the kernel threads (threads.py)
            end_box = fun(_map_leaves(root_box, x))
        if not (isbox(end_box) and end_box._trace == trace):
            warnings.warn("Output seems independent of input.", stacklevel=2)
            value, end_node = end_box, None
        else:
            value, end_node = end_box._value, end_box._node

    def vjp(g):
        if end_node is None:  # fun(x) does not depend on x
            grads = [None] * len(roots)
        else:
            with owned_cores():
                grads = _backward_pass(g, end_node, [node for node, _ in roots])
        leaf_grads = iter(
            vspace(leaf).zeros() if grad is None else grad
            for (_, leaf), grad in zip(roots, grads, strict=True)
        )
        return _map_leaves(lambda leaf: None if leaf is None else next(leaf_grads), x)

    return vjp, value


@register_kernel("value_and_grad")
def value_and_grad(fun):
    """``fun(x) -> (fun(x), d fun / d x)`` for a scalar ``fun`` of one argument ``x``.

    Like ``autograd.value_and_grad(fun)``: ``x`` may be an array or a tree of arrays (the
    gradient has the same structure); the loss comes back as a plain value.
    """

    def loss_and_grad(x):
        vjp, loss = make_vjp(fun, x)
        if vspace(loss).size != 1:
            raise TypeError(
                f"value_and_grad needs a scalar loss, got a value of shape {vspace(loss).shape}"
            )
        return loss, vjp(vspace(loss).ones())

    return loss_and_grad


def _backward_pass(g, end_node, roots):
    """``autograd.core.backward_pass``, freeing each node's saved arrays once it has run.

    Returns the gradient reaching each node of ``roots`` (None where none does).
    """
    if end_node.vjp is None:
        raise RuntimeError(
            "this vjp has already run and freed the arrays its forward pass saved; "
            "call make_vjp again for another backward pass"
        )
    wanted = set(roots)
    found = {}
    outgrads = {end_node: (g, False)}  # node -> (gradient of its output, may add in place)
    for node in toposort(end_node):  # every node after all the nodes that use its output
        outgrad = outgrads.pop(node)
        if node in wanted:
            found[node] = outgrad[0]
        ingrads = node.vjp(outgrad[0])
        node.vjp = None  # drop the closure, and the activations it saved
        for parent, ingrad in zip(node.parents, ingrads, strict=True):
            outgrads[parent] = _add_outgrads(outgrads.get(parent), ingrad)
    return [found.get(node) for node in roots]


def _add_outgrads(previous, g):
    """``autograd.core.add_outgrads``: the gradient so far (``(array, may add in place)`` or
    None) plus ``g``. Two large dense arrays of one shape and dtype are added in blocks on the
    kernel threads (elementwise, so the same sums), in place where autograd would add in place."""
    if previous is not None and _blocked_add(previous[0], g):
        total, mutable = previous
        out = total if mutable and total.flags.c_contiguous else None
        return blockwise(onp.add, total, g, out=out), True
    return add_outgrads(previous, g)


def _blocked_add(a, b):
    return (type(a) is onp.ndarray and type(b) is onp.ndarray and a.shape == b.shape
            and a.dtype == b.dtype and a.dtype.kind == "f" and a.size >= threads.MIN_PARALLEL)
