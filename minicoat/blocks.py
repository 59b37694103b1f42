"""CoAtNet's two blocks, pre-activation (paper appendix A.1): MBConv and Transformer.

Both are residual, ``x <- x + Module(Norm(x))``. The first block of a stage may change the
resolution (stride 2) and the width; then the shortcut cannot be the identity and becomes
``Proj(Pool(x))``, a stride-2 pool followed by a 1x1 projection:

* MBConv:      ``x <- Proj(Pool(x)) + Conv1x1(SE(DepthConv(Conv1x1(BN(x), stride=2))))``
* Transformer: ``x <- Proj(Pool(x)) + Attention(Pool(LN(x)))``, then ``x <- x + FFN(LN(x))``

The paper puts the MBConv stride in the first 1x1 convolution; timm puts it in the depthwise
3x3 (``stride_at="depthwise"``). Pool is max pooling in the paper, average pooling in timm.

Each block comes as a pair of functions: ``*_spec`` lists its parameters (shape and how to
initialise them, see ``model.init_params``) and ``*_forward`` runs it. Both take the block's
record from the network's plan (``plan.Block``: widths, stride, grid, heads), so no width is
computed here. Parameters are nested dicts; BatchNorm running statistics are a separate
``state`` dict passed in and returned.

MBConv follows the usual inverted bottleneck (MobileNetV2, EfficientNet, timm's CoAtNet):
BN + GELU after the expansion and after the depthwise convolution, squeeze-excitation on the
expanded features, and a linear (no activation) projection back down.
"""

from .ops import (
    avg_pool2d,
    batch_norm,
    batch_norm_gelu,
    conv1x1,
    depthwise_conv2d,
    gelu,
    layer_norm,
    linear,
    max_pool2d,
    relative_attention,
    squeeze_excitation,
)

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


def _shortcut_spec(block):
    """Projection on the shortcut when the block changes width or resolution, else nothing."""
    return {"proj": dense(block.c_in, block.c_out)} if block.proj else {}


def _pool(x, pool):
    """The downsampling pool, ``"max"`` (paper) or ``"avg"`` (timm): (N,H,W,C) -> (N,H/2,W/2,C)."""
    return max_pool2d(x) if pool == "max" else avg_pool2d(x)


def _shortcut(p, x, stride, pool):
    """Identity, or ``Proj(Pool(x))`` (pool only when stride 2): (N,H,W,Ci) -> (N,H',W',Co)."""
    if stride == 2:
        x = _pool(x, pool)
    if "proj" in p:
        x = conv1x1(x, p["proj"]["w"], p["proj"]["b"])
    return x


# -- MBConv ---------------------------------------------------------------------------------


def mbconv_spec(block):
    """Parameters of an MBConv block (``block``: its record in the plan)."""
    c_in, mid, se, c_out = block.c_in, block.expanded, block.se, block.c_out
    return {
        "pre_norm": norm_spec(c_in),
        "expand": dense(c_in, mid, bias=False),  # followed by BN: no bias needed
        "norm1": norm_spec(mid),
        "dw": {"w": ("normal", (3, 3, mid), 1.0 / 3.0)},  # fan-in 9
        "norm2": norm_spec(mid),
        "se": {
            "w_reduce": ("normal", (mid, se), mid**-0.5),
            "b_reduce": ("zeros", (se,)),
            "w_expand": ("normal", (se, mid), se**-0.5),
            "b_expand": ("zeros", (mid,)),
        },
        "project": dense(mid, c_out),
        **_shortcut_spec(block),
    }


def mbconv_state(block):
    """BatchNorm running statistics of an MBConv block, as channel counts."""
    return {"pre_norm": block.c_in, "norm1": block.expanded, "norm2": block.expanded}


def mbconv_forward(p, state, x, block, cfg, train):
    """MBConv block: ``(N, H, W, C_in) -> (N, H / stride, W / stride, C_out)``.

    ``y = shortcut(x) + Proj(SE(GELU(BN(DW(GELU(BN(Expand(BN(x)))))))))``, the stride either in
    ``Expand`` (``cfg.stride_at == "expand"``, paper) or in ``DW`` ("depthwise", timm).

    Returns ``(y, new_state)``.
    """
    expand_stride = block.stride if cfg.stride_at == "expand" else 1
    dw_stride = block.stride if cfg.stride_at == "depthwise" else 1
    new_state = {}
    h, new_state["pre_norm"] = batch_norm(
        x, **p["pre_norm"], running=state["pre_norm"], train=train
    )
    h = conv1x1(h, p["expand"]["w"], stride=expand_stride)  # (N, H', W', mid)
    h, new_state["norm1"] = batch_norm_gelu(
        h, **p["norm1"], running=state["norm1"], train=train, approximate=cfg.gelu
    )
    h = depthwise_conv2d(h, p["dw"]["w"], stride=dw_stride)  # (N, H', W', mid)
    h, new_state["norm2"] = batch_norm_gelu(
        h, **p["norm2"], running=state["norm2"], train=train, approximate=cfg.gelu
    )
    h = squeeze_excitation(h, p["se"], cfg.gelu, cfg.se_act)
    h = conv1x1(h, p["project"]["w"], p["project"]["b"])  # (N, H', W', C_out)
    return _shortcut(p, x, block.stride, cfg.pool) + h, new_state


# -- Transformer ----------------------------------------------------------------------------


def transformer_spec(block):
    """Parameters of a Transformer block (``block``: its record in the plan)."""
    c_in, c_out, (h, w) = block.c_in, block.c_out, block.grid_out
    attn = {
        "w_qkv": ("normal", (c_in, 3 * c_out), c_in**-0.5),
        "b_qkv": ("zeros", (3 * c_out,)),
        "w_out": ("normal", (c_out, c_out), c_out**-0.5),
        "b_out": ("zeros", (c_out,)),
        "rel_bias": ("normal", (block.heads, (2 * h - 1) * (2 * w - 1)), 0.02),
    }
    return {
        "norm1": norm_spec(c_in),
        "attn": attn,
        "norm2": norm_spec(c_out),
        "ffn": {"fc1": dense(c_out, block.expanded), "fc2": dense(block.expanded, c_out)},
        **_shortcut_spec(block),
    }


def transformer_forward(p, x, block, cfg):
    """Transformer block with relative attention: ``(N, H, W, C_in) -> (N, H', W', C_out)``.

    ``x <- shortcut(x) + Attention(Pool(LN(x)))`` (pool only when stride 2), then
    ``x <- x + FFN(LN(x))`` with ``FFN(z) = GELU(z W1 + b1) W2 + b2``.
    """
    h = layer_norm(x, **p["norm1"], eps=cfg.ln_eps)
    if block.stride == 2:
        h = _pool(h, cfg.pool)
    attention = relative_attention(h, p["attn"], block.heads, cfg.variant)
    x = _shortcut(p, x, block.stride, cfg.pool) + attention
    h = layer_norm(x, **p["norm2"], eps=cfg.ln_eps)
    h = gelu(linear(h, p["ffn"]["fc1"]["w"], p["ffn"]["fc1"]["b"]), cfg.gelu)
    return x + linear(h, p["ffn"]["fc2"]["w"], p["ffn"]["fc2"]["b"])
