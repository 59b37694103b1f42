"""The PyTorch oracle: independent torch twins of minicoat's ops, for tests and notebooks.

minicoat's core never imports torch; this subpackage does, and depends on the core, never the
reverse. Everything here is written with PyTorch's own functions in PyTorch's own layouts
(NCHW feature maps, ``(C_out, C_in, k, k)`` kernels, ``(C_out, C_in)`` linear weights); the
converters in ``ops`` are the only place where the two layouts meet. See ``ops.compare`` for
running an op against its twin in one call.
"""

try:
    import torch  # noqa: F401
except ImportError as err:  # pragma: no cover - CI always has torch
    raise ImportError(
        "the PyTorch oracle needs torch: pip install -e '.[test]' (the CPU build; see the "
        "README, 'Installing PyTorch without CUDA'). The minicoat core itself runs without torch."
    ) from err

# Network-level twins. At the package level ``to_torch`` / ``from_torch`` move a whole
# network's weights; ``array_to_torch`` (``ops.to_torch``) converts a single array.
from .network import (
    MBConv,
    RelativeAttention,
    TorchCoAtNet,
    Transformer,
    copy_into,
    from_torch,
    to_torch,
    torch_grads_as_params,
)
from .ops import (
    CONV_KERNEL,
    DEPTHWISE_KERNEL,
    FEATURE_MAP,
    LINEAR_WEIGHT,
    PLAIN,
    POINTWISE_KERNEL,
    Comparison,
    Layout,
    attention_core,
    avg_pool2d,
    batch_norm,
    compare,
    conv1x1,
    conv2d,
    conv_kernel_from_torch,
    conv_kernel_to_torch,
    cross_entropy,
    depthwise_conv2d,
    depthwise_kernel_from_torch,
    depthwise_kernel_to_torch,
    gather_rel_bias,
    gelu,
    global_avg_pool,
    layer_norm,
    linear,
    linear_from_torch,
    linear_to_torch,
    log_softmax,
    max_pool2d,
    nchw_to_nhwc,
    nhwc_to_nchw,
    pointwise_kernel_from_torch,
    pointwise_kernel_to_torch,
    relative_attention,
    relative_position_index,
    scale_channels,
    sigmoid,
    silu,
    softmax,
    squeeze_excitation,
    to_numpy,
)
from .ops import to_torch as array_to_torch

__all__ = [
    "MBConv",
    "RelativeAttention",
    "TorchCoAtNet",
    "Transformer",
    "array_to_torch",
    "copy_into",
    "from_torch",
    "torch_grads_as_params",
    "CONV_KERNEL",
    "DEPTHWISE_KERNEL",
    "FEATURE_MAP",
    "LINEAR_WEIGHT",
    "PLAIN",
    "POINTWISE_KERNEL",
    "Comparison",
    "Layout",
    "attention_core",
    "avg_pool2d",
    "batch_norm",
    "compare",
    "conv1x1",
    "conv2d",
    "conv_kernel_from_torch",
    "conv_kernel_to_torch",
    "cross_entropy",
    "depthwise_conv2d",
    "depthwise_kernel_from_torch",
    "depthwise_kernel_to_torch",
    "gather_rel_bias",
    "gelu",
    "global_avg_pool",
    "layer_norm",
    "linear",
    "linear_from_torch",
    "linear_to_torch",
    "log_softmax",
    "max_pool2d",
    "nchw_to_nhwc",
    "nhwc_to_nchw",
    "pointwise_kernel_from_torch",
    "pointwise_kernel_to_torch",
    "relative_attention",
    "relative_position_index",
    "scale_channels",
    "sigmoid",
    "silu",
    "softmax",
    "squeeze_excitation",
    "to_numpy",
    "to_torch",
]
