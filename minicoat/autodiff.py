"""``value_and_grad`` for the training step: autograd's, with a backward pass that frees memory.

How autograd's reverse mode works: while ``loss(params)`` runs on boxed arrays, every primitive
op records a *node* whose ``vjp`` closure holds what the op's gradient will need (its inputs,
often its output: the "saved activations"). The backward pass then visits the nodes from the
loss back to the parameters, each turning the gradient of its output into gradients of its
inputs (``autograd.core.backward_pass``).

autograd keeps every node, and so every saved activation, until the whole backward pass is
over. The peak memory of a step is then all the activations *plus* all the gradients plus the
backward pass's temporaries. PyTorch instead frees a node's saved tensors as soon as its
backward has run; the activations of the last layers are gone before the gradients of the
first layers are made.

``value_and_grad`` below is autograd's, with that one change: after a node's VJP has run, the
node drops its closure (``node.vjp = None``). The gradients are the same, bit for bit
(``tests/test_autodiff.py``); the peak memory of a ``coatnet-cifar`` training step falls by
10% at batch 32 and 15% at batch 128 (``docs/performance.md``). It uses autograd's internal
``trace``, ``VJPNode`` and ``toposort``, which have kept their form since autograd 1.2 (2017).
"""

from autograd.core import VJPNode, add_outgrads, vspace
from autograd.tracer import toposort, trace


def make_vjp(fun, x):
    """``(vjp, fun(x))`` like ``autograd.make_vjp``: ``vjp(g)`` is ``g`` times the Jacobian.

    ``g`` has the shape of ``fun(x)``; ``vjp(g)`` has the structure of ``x`` (an array or a
    tree of arrays). The backward pass frees what the forward pass saved, so ``vjp`` can be
    called only once.
    """
    value, end_node = trace(VJPNode.new_root(), fun, x)

    def vjp(g):
        if end_node is None:  # fun(x) does not depend on x
            return vspace(x).zeros()
        return _backward_pass(g, end_node)

    return vjp, value


def value_and_grad(fun):
    """``fun(x) -> (fun(x), d fun / d x)`` for a scalar ``fun`` of one argument ``x``.

    Like ``autograd.value_and_grad(fun)``: ``x`` may be an array or a tree of arrays (the
    gradient has the same structure); the loss comes back as a plain value. Each node's saved
    arrays are released as soon as its gradient has been taken.
    """

    def loss_and_grad(x):
        vjp, loss = make_vjp(fun, x)
        if vspace(loss).size != 1:
            raise TypeError(
                f"value_and_grad needs a scalar loss, got a value of shape {vspace(loss).shape}"
            )
        return loss, vjp(vspace(loss).ones())

    return loss_and_grad


def _backward_pass(g, end_node):
    """``autograd.core.backward_pass``, releasing each node's saved arrays once it has run."""
    if end_node.vjp is None:
        raise RuntimeError(
            "this vjp has already run and freed the arrays its forward pass saved; "
            "call make_vjp again for another backward pass"
        )
    outgrads = {end_node: (g, False)}  # node -> (gradient of its output, may add in place)
    for node in toposort(end_node):  # every node after all the nodes that use its output
        outgrad = outgrads.pop(node)
        ingrads = node.vjp(outgrad[0])
        node.vjp = None  # the one change: drop the closure, and the activations it saved
        for parent, ingrad in zip(node.parents, ingrads, strict=True):
            outgrads[parent] = add_outgrads(outgrads.get(parent), ingrad)
    return outgrad[0]
