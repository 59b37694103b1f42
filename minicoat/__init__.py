"""minicoat: an educational pure-NumPy CoAtNet (Dai et al. 2021, arXiv 2106.04803).

Channels-last arrays ``(N, H, W, C)``, parameters as nested dicts, gradients from
``autograd``. See ``docs/`` and ``notebooks/``.
"""

from .activations import gelu, log_softmax, sigmoid, softmax
from .attention import attention_core, relative_attention, relative_position_index
from .checkpoint import load_checkpoint, save_checkpoint
from .config import CoAtNetConfig, config
from .conv import conv1x1, conv2d, depthwise_conv2d
from .gradcheck import numerical_gradient, numerical_vjp, rel_error
from .layers import cross_entropy, linear, squeeze_excitation
from .model import count_flops, count_params, forward, init_params
from .norm import batch_norm, batch_norm_gelu, layer_norm
from .pooling import avg_pool2d, global_avg_pool, max_pool2d

__version__ = "0.1.0"

__all__ = [
    "CoAtNetConfig",
    "config",
    "count_flops",
    "count_params",
    "forward",
    "init_params",
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
    "sigmoid",
    "softmax",
    "squeeze_excitation",
]
