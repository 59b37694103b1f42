"""A stand-in for torchvision, for the tests only: just what ``import timm`` needs.

timm imports torchvision at import time for ``FrozenBatchNorm2d`` (``torchvision.ops.misc``),
``InterpolationMode`` and the names of its transforms and datasets, none of which the CoAtNet
comparison runs. The torchvision wheels served where minicoat is tested are CUDA-linked and do
not import on the CPU build of torch, so ``tests/conftest.py`` puts this folder on ``sys.path``
only when a real torchvision is missing. Anything not defined here is a placeholder class that
raises if it is ever used.
"""

__version__ = "0.0.0+minicoat-test-stub"


def placeholder(module, name):
    """A class named ``name`` that refuses to be instantiated (the stub has no real code)."""

    def refuse(*args, **kwargs):
        raise RuntimeError(f"{module}.{name} is not available: torchvision here is the test "
                           "stub of minicoat's tests/_stubs (install a real torchvision)")

    return type(name, (), {"__init__": refuse, "__module__": module})


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    return placeholder(__name__, name)
