"""The teaching tier: every differentiable op, its equation, its forward and its backward.

One file per family of ops. Each op has a traced forward (``*_traced``, differentiated by
autograd), a hand-written backward beside it (``*_backward``, plain NumPy) and the public
function, which checks its arguments and runs the implementation selected by
``minicoat.implementation`` (``switch.py``). The fast kernels live in
``minicoat/kernels/``; nothing here imports them.
"""

from .activations import gelu, log_softmax, sigmoid, silu, softmax
from .attention import attention_core, gather_rel_bias, relative_attention, relative_position_index
from .autodiff import make_vjp, value_and_grad
from .conv import conv1x1, conv2d, depthwise_conv2d, linear
from .layers import cross_entropy, scale_channels, squeeze_excitation
from .norm import batch_norm, batch_norm_gelu, layer_norm
from .pooling import avg_pool2d, global_avg_pool, max_pool2d
from .switch import IMPLEMENTATIONS, implementation

__all__ = [
    "IMPLEMENTATIONS",
    "attention_core",
    "avg_pool2d",
    "batch_norm",
    "batch_norm_gelu",
    "conv1x1",
    "conv2d",
    "cross_entropy",
    "depthwise_conv2d",
    "gather_rel_bias",
    "gelu",
    "global_avg_pool",
    "implementation",
    "layer_norm",
    "linear",
    "log_softmax",
    "make_vjp",
    "max_pool2d",
    "relative_attention",
    "relative_position_index",
    "sigmoid",
    "silu",
    "softmax",
    "scale_channels",
    "squeeze_excitation",
    "value_and_grad",
]
