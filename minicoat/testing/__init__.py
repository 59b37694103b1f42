"""Gradient checks for your own tests: ``gradcheck``, ``vjpcheck``, ``primitivecheck``.

For students checking a VJP they derived, instructors writing checks, engineers testing
their own layers::

    from minicoat.testing import gradcheck, vjpcheck

    gradcheck(loss, params)                   # directional: 3 random directions of the tree
    gradcheck(loss, params, mode="elementwise", leaves=["head.b"])   # every entry of a leaf
    vjpcheck(mc.depthwise_conv2d, my_backward, x, w, 1)              # my_backward(g, x, w, s)

Every check compares against centred differences in float64 with a tolerance derived from
the error budget (truncation ``eps^2 |f'''| / 6`` plus round-off ``machine_eps |f| / eps``,
``budget``), refuses float32 (saying why), returns a report (per leaf: error, budget) and
raises ``GradcheckError``, an ``AssertionError`` that names the worst leaf and entry, ours
against numeric and the budget. See ``docs/testing.md`` and ``notebooks/08``.
"""

from ..gradcheck import numerical_gradient, numerical_vjp, rel_error
from .budget import EPS, SAFETY, miss_probability
from .check import gradcheck
from .report import AgreementReport, GradcheckError, GradcheckReport, LeafResult
from .trees import assert_trees_close, tree_errors
from .vjp import implementationcheck, primitivecheck, vjpcheck

__all__ = [
    "EPS",
    "SAFETY",
    "AgreementReport",
    "GradcheckError",
    "GradcheckReport",
    "LeafResult",
    "assert_trees_close",
    "gradcheck",
    "implementationcheck",
    "miss_probability",
    "numerical_gradient",
    "numerical_vjp",
    "primitivecheck",
    "rel_error",
    "tree_errors",
    "vjpcheck",
]
