"""CoAtNet's two blocks, pre-activation (paper appendix A.1): MBConv and Transformer.

Both are residual, ``x <- x + Module(Norm(x))``. The first block of a stage may change the
resolution (stride 2) and the width; then the shortcut cannot be the identity and becomes
``Proj(Pool(x))``, a stride-2 pool followed by a 1x1 projection:

* MBConv:      ``x <- Proj(Pool(x)) + Conv1x1(SE(DepthConv(Conv1x1(BN(x), stride=2))))``
* Transformer: ``x <- Proj(Pool(x)) + Attention(Pool(LN(x)))``, then ``x <- x + FFN(LN(x))``

The paper puts the MBConv stride in the first 1x1 convolution; timm puts it in the depthwise
3x3 (``stride_at="depthwise"``). Pool is max pooling in the paper, average pooling in timm.

Each block comes as a pair of functions: ``*_spec`` lists its parameters (shape and how to
initialise them, see ``model.init_params``) and ``*_forward`` runs it. Parameters are nested
dicts; BatchNorm running statistics are a separate ``state`` dict passed in and returned.

MBConv follows the usual inverted bottleneck (MobileNetV2, EfficientNet, timm's CoAtNet):
BN + GELU after the expansion and after the depthwise convolution, squeeze-excitation on the
expanded features, and a linear (no activation) projection back down.
"""

from .activations import gelu
from .attention import relative_attention
from .conv import conv1x1, depthwise_conv2d
from .layers import linear, squeeze_excitation
from .norm import batch_norm, batch_norm_gelu, layer_norm
from .pooling import avg_pool2d, max_pool2d

# -- parameter specs: ("normal", shape, std) | ("zeros", shape) | ("ones", shape) ---------


def dense(c_in, c_out, bias=True):
    """Spec of a 1x1 convolution / linear layer: ``w`` (c_in, c_out) with std 1/sqrt(c_in)."""
    spec = {"w": ("normal", (c_in, c_out), c_in**-0.5)}
    if bias:
        spec["b"] = ("zeros", (c_out,))
    return spec


def norm_spec(c):
    """Spec of a BatchNorm / LayerNorm affine: gamma = 1, beta = 0."""
    return {"gamma": ("ones", (c,)), "beta": ("zeros", (c,))}


def _shortcut_spec(c_in, c_out, stride):
    """Projection on the shortcut when the block changes width or resolution, else nothing."""
    return {"proj": dense(c_in, c_out)} if (stride != 1 or c_in != c_out) else {}


def _shortcut(p, x, stride, pool):
    """Identity, or ``Proj(Pool(x))`` (pool only when stride 2): (N,H,W,Ci) -> (N,H',W',Co)."""
    if stride == 2:
        x = max_pool2d(x) if pool == "max" else avg_pool2d(x)
    if "proj" in p:
        x = conv1x1(x, p["proj"]["w"], p["proj"]["b"])
    return x


# -- MBConv ---------------------------------------------------------------------------------


def mbconv_spec(c_in, c_out, stride, cfg):
    """Parameters of an MBConv block from width ``c_in`` to ``c_out``."""
    mid = c_out * cfg.mbconv_expand  # expansion of the output width, as timm's CoAtNet
    reduced = max(1, int(c_in * cfg.se_ratio))  # SE bottleneck, of the input width
    return {
        "pre_norm": norm_spec(c_in),
        "expand": dense(c_in, mid, bias=False),  # followed by BN: no bias needed
        "norm1": norm_spec(mid),
        "dw": {"w": ("normal", (3, 3, mid), 1.0 / 3.0)},  # fan-in 9
        "norm2": norm_spec(mid),
        "se": {
            "w_reduce": ("normal", (mid, reduced), mid**-0.5),
            "b_reduce": ("zeros", (reduced,)),
            "w_expand": ("normal", (reduced, mid), reduced**-0.5),
            "b_expand": ("zeros", (mid,)),
        },
        "project": dense(mid, c_out),
        **_shortcut_spec(c_in, c_out, stride),
    }


def mbconv_state(c_in, c_out, cfg):
    """BatchNorm running statistics of an MBConv block, as shapes of (mean, var) pairs."""
    mid = c_out * cfg.mbconv_expand
    return {"pre_norm": c_in, "norm1": mid, "norm2": mid}


def mbconv_forward(p, state, x, stride, cfg, train):
    """MBConv block: ``(N, H, W, C_in) -> (N, H / stride, W / stride, C_out)``.

    ``y = shortcut(x) + Proj(SE(GELU(BN(DW(GELU(BN(Expand(BN(x)))))))))``, the stride either in
    ``Expand`` (``cfg.stride_at == "expand"``, paper) or in ``DW`` ("depthwise", timm).

    Returns ``(y, new_state)``.
    """
    expand_stride = stride if cfg.stride_at == "expand" else 1
    dw_stride = stride if cfg.stride_at == "depthwise" else 1
    new_state = {}
    h, new_state["pre_norm"] = batch_norm(
        x, **p["pre_norm"], running=state["pre_norm"], train=train
    )
    h = conv1x1(h, p["expand"]["w"], stride=expand_stride)  # (N, H', W', mid)
    # GELU(BN(h)) in one op that stores less for the backward pass (see norm.batch_norm_gelu)
    h, new_state["norm1"] = batch_norm_gelu(
        h, **p["norm1"], running=state["norm1"], train=train, approximate=cfg.gelu
    )
    h = depthwise_conv2d(h, p["dw"]["w"], stride=dw_stride)  # (N, H', W', mid)
    h, new_state["norm2"] = batch_norm_gelu(
        h, **p["norm2"], running=state["norm2"], train=train, approximate=cfg.gelu
    )
    h = squeeze_excitation(h, p["se"], cfg.gelu)
    h = conv1x1(h, p["project"]["w"], p["project"]["b"])  # (N, H', W', C_out)
    return _shortcut(p, x, stride, cfg.pool) + h, new_state


# -- Transformer ----------------------------------------------------------------------------


def transformer_spec(c_in, c_out, stride, grid, cfg):
    """Parameters of a Transformer block from ``c_in`` to ``c_out`` on an output ``grid`` (h, w)."""
    heads = c_out // cfg.head_dim
    hidden = c_out * cfg.ffn_expand
    attn = {
        "w_qkv": ("normal", (c_in, 3 * c_out), c_in**-0.5),
        "b_qkv": ("zeros", (3 * c_out,)),
        "w_out": ("normal", (c_out, c_out), c_out**-0.5),
        "b_out": ("zeros", (c_out,)),
        "rel_bias": ("normal", (heads, (2 * grid[0] - 1) * (2 * grid[1] - 1)), 0.02),
    }
    return {
        "norm1": norm_spec(c_in),
        "attn": attn,
        "norm2": norm_spec(c_out),
        "ffn": {"fc1": dense(c_out, hidden), "fc2": dense(hidden, c_out)},
        **_shortcut_spec(c_in, c_out, stride),
    }


def transformer_forward(p, x, stride, cfg):
    """Transformer block with relative attention: ``(N, H, W, C_in) -> (N, H', W', C_out)``.

    ``x <- shortcut(x) + Attention(Pool(LN(x)))`` (pool only when stride 2), then
    ``x <- x + FFN(LN(x))`` with ``FFN(z) = GELU(z W1 + b1) W2 + b2``.
    """
    h = layer_norm(x, **p["norm1"])
    if stride == 2:
        h = max_pool2d(h) if cfg.pool == "max" else avg_pool2d(h)
    heads = p["attn"]["w_out"].shape[0] // cfg.head_dim
    x = _shortcut(p, x, stride, cfg.pool) + relative_attention(h, p["attn"], heads, cfg.variant)
    h = layer_norm(x, **p["norm2"])
    h = gelu(linear(h, p["ffn"]["fc1"]["w"], p["ffn"]["fc1"]["b"]), cfg.gelu)
    return x + linear(h, p["ffn"]["fc2"]["w"], p["ffn"]["fc2"]["b"])
