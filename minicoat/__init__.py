"""minicoat: an educational pure-NumPy CoAtNet (Dai et al. 2021, arXiv 2106.04803).

Channels-last arrays ``(N, H, W, C)``, parameters as nested dicts, gradients from
``autograd``. Two tiers: ``minicoat.ops`` teaches every op (its equation, a traced forward and
a hand-written backward), ``minicoat.kernels`` makes them fast; ``implementation`` switches
between ``"traced"``, ``"readable"`` and ``"fast"`` (the default). See ``docs/`` and
``notebooks/``.
"""

from . import kernels  # noqa: F401  (registers the fast implementations)
from .checkpoint import load_checkpoint, save_checkpoint
from .configs import CoAtNetConfig, config
from .gradcheck import numerical_gradient, numerical_vjp, rel_error
from .model import count_flops, count_params, forward, init_params
from .ops import (
    attention_core,
    avg_pool2d,
    batch_norm,
    batch_norm_gelu,
    conv1x1,
    conv2d,
    cross_entropy,
    depthwise_conv2d,
    gelu,
    global_avg_pool,
    implementation,
    layer_norm,
    linear,
    log_softmax,
    max_pool2d,
    relative_attention,
    relative_position_index,
    scale_channels,
    sigmoid,
    silu,
    softmax,
    squeeze_excitation,
    value_and_grad,
)
from .plans import plan

__version__ = "0.1.0"

__all__ = [
    "CoAtNetConfig",
    "config",
    "count_flops",
    "count_params",
    "forward",
    "implementation",
    "init_params",
    "plan",
    "attention_core",
    "avg_pool2d",
    "batch_norm",
    "batch_norm_gelu",
    "conv1x1",
    "conv2d",
    "cross_entropy",
    "depthwise_conv2d",
    "gelu",
    "global_avg_pool",
    "layer_norm",
    "load_checkpoint",
    "linear",
    "log_softmax",
    "max_pool2d",
    "numerical_gradient",
    "numerical_vjp",
    "rel_error",
    "relative_attention",
    "relative_position_index",
    "save_checkpoint",
    "scale_channels",
    "sigmoid",
    "silu",
    "softmax",
    "squeeze_excitation",
    "value_and_grad",
]
