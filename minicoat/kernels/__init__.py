"""The kernel tier: every optimisation, each registered as the ``fast`` implementation of an op.

Importing this package registers the kernels (``minicoat/__init__.py`` does it); each kernel
takes the arguments of its op's traced implementation in ``minicoat/ops/`` and is proven equal
to it by ``tests/test_implementations.py``. Why each kernel is shaped as it is, with the
measurements: ``docs/performance.md``. Nothing here runs while the implementation is
``"traced"`` or ``"readable"``.
"""

from . import activations, attention, autodiff, conv, layers, norm, pooling  # noqa: F401
