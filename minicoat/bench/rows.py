"""The rows of ``minicoat bench``: each op, block and training step in NumPy and in the twin.

An ``Item`` holds argument-free callables per mode (``fwd``, ``fwd+bwd``, ``step``) for both
frameworks; ``hot_items`` lists the op rows at the shapes they have in coatnet-cifar.
"""

from typing import NamedTuple

import numpy as onp

from .. import blocks, model
from ..configs import config as preset
from ..ops import (
    conv2d,
    cross_entropy,
    depthwise_conv2d,
    make_vjp,
    relative_attention,
    value_and_grad,
)
from ..optim import adamw_init, adamw_update
from ..plans import make_block

PRESET = "coatnet-cifar"
LR, WEIGHT_DECAY = 1e-3, 0.05  # AdamW in both frameworks, decay on every leaf (torch's default)


class Item(NamedTuple):
    """Something to time: ``numpy[mode]`` and ``torch[mode]`` are argument-free callables."""

    name: str
    shape: str
    flops: float  # forward FLOPs (2 x multiply-adds); 0 when not counted
    numpy: dict  # mode ("fwd", "fwd+bwd" or "step") -> callable
    torch: dict
    rebuild: tuple = None  # (builder, args) that make this item again in a fresh process


def _torch():
    try:
        import torch
    except ImportError as err:
        raise SystemExit(
            "minicoat bench compares against the PyTorch twin and needs torch: "
            "pip install -e '.[test]' (the CPU build, see the README)"
        ) from err
    return torch


def _nchw(torch, x, grad=False):
    return torch.from_numpy(onp.ascontiguousarray(x.transpose(0, 3, 1, 2))).requires_grad_(grad)


def _op_item(name, shape, flops, f, inputs, f_torch, torch_inputs):
    """An op given as ``f(*inputs)`` (NumPy, differentiated w.r.t. every input) and its twin
    ``f_torch(*torch_inputs)`` (tensors with ``requires_grad``)."""
    torch = _torch()
    y = f(*inputs)
    rng = onp.random.default_rng(1)
    g = rng.standard_normal(onp.shape(y)).astype(onp.asarray(y).dtype)
    with torch.no_grad():
        g_torch = torch.from_numpy(g.copy()).reshape(f_torch(*torch_inputs).shape)

    def numpy_fwd_bwd():
        vjp, _ = make_vjp(lambda args: f(*args), tuple(inputs))
        return vjp(g)

    def torch_fwd():
        with torch.no_grad():
            return f_torch(*torch_inputs)

    def torch_fwd_bwd():
        for t in torch_inputs:
            t.grad = None
        f_torch(*torch_inputs).backward(g_torch)

    return Item(
        name, shape, flops,
        {"fwd": lambda: f(*inputs), "fwd+bwd": numpy_fwd_bwd},
        {"fwd": torch_fwd, "fwd+bwd": torch_fwd_bwd},
    )


def _module_item(name, shape, flops, f, x, params, module, x_torch):
    """A block: ``f(x, params)`` in NumPy (grads w.r.t. x and every parameter) and ``module``."""
    torch = _torch()
    y = f(x, params)
    g = onp.random.default_rng(1).standard_normal(y.shape).astype(y.dtype)
    g_torch = _nchw(torch, g)

    def numpy_fwd_bwd():
        vjp, _ = make_vjp(lambda args: f(*args), (x, params))
        return vjp(g)

    def torch_fwd():
        with torch.no_grad():
            return module(x_torch)

    def torch_fwd_bwd():
        module.zero_grad(set_to_none=True)
        x_torch.grad = None
        module(x_torch).backward(g_torch)

    return Item(
        name, shape, flops,
        {"fwd": lambda: f(x, params), "fwd+bwd": numpy_fwd_bwd},
        {"fwd": torch_fwd, "fwd+bwd": torch_fwd_bwd},
    )


def matmul_item(size=1024):
    """float32 ``size x size`` matrix product: the reference rate for GFLOP/s."""
    torch = _torch()
    rng = onp.random.default_rng(0)
    a, b = (rng.standard_normal((size, size)).astype(onp.float32) for _ in range(2))
    at, bt = torch.from_numpy(a), torch.from_numpy(b)
    return Item(
        "matmul", f"{size}x{size} @ {size}x{size}", 2.0 * size**3,
        {"fwd": lambda: a @ b}, {"fwd": lambda: at @ bt},
    )


def depthwise_item(n, h, c):
    torch = _torch()
    rng = onp.random.default_rng(0)
    x = rng.standard_normal((n, h, h, c)).astype(onp.float32)
    w = (rng.standard_normal((3, 3, c)) / 3).astype(onp.float32)
    w_t = torch.from_numpy(onp.ascontiguousarray(w.transpose(2, 0, 1)[:, None])).requires_grad_()
    return _op_item(
        "depthwise_conv2d 3x3", f"({n},{h},{h},{c})", 2.0 * n * h * h * 9 * c,
        depthwise_conv2d, (x, w),
        lambda xt, wt: torch.nn.functional.conv2d(xt, wt, padding=1, groups=c),
        (_nchw(torch, x, True), w_t),
    )


def conv2d_item(n, h, c_in, c_out):
    torch = _torch()
    rng = onp.random.default_rng(0)
    x = rng.standard_normal((n, h, h, c_in)).astype(onp.float32)
    w = (rng.standard_normal((3, 3, c_in, c_out)) / onp.sqrt(9 * c_in)).astype(onp.float32)
    b = onp.zeros(c_out, onp.float32)
    w_t = torch.from_numpy(onp.ascontiguousarray(w.transpose(3, 2, 0, 1))).requires_grad_()
    b_t = torch.from_numpy(b.copy()).requires_grad_()
    return _op_item(
        "conv2d 3x3", f"({n},{h},{h},{c_in})->{c_out}", 2.0 * n * h * h * 9 * c_in * c_out,
        conv2d, (x, w, b),
        lambda xt, wt, bt: torch.nn.functional.conv2d(xt, wt, bt, padding=1),
        (_nchw(torch, x, True), w_t, b_t),
    )


def attention_params(c, dim, heads, h, w, rng):
    """Random relative-attention parameters (minicoat layout), float32."""
    return {
        "w_qkv": (rng.standard_normal((c, 3 * dim)) / onp.sqrt(c)).astype(onp.float32),
        "b_qkv": (0.1 * rng.standard_normal(3 * dim)).astype(onp.float32),
        "w_out": (rng.standard_normal((dim, dim)) / onp.sqrt(dim)).astype(onp.float32),
        "b_out": (0.1 * rng.standard_normal(dim)).astype(onp.float32),
        "rel_bias": (0.02 * rng.standard_normal((heads, (2 * h - 1) * (2 * w - 1)))).astype(
            onp.float32
        ),
    }


def attention_macs(n, tokens, c, dim):
    """Multiply-adds of relative attention: q/k/v and output projections, q k^T and A v."""
    return n * (tokens * c * 3 * dim + 2 * tokens * tokens * dim + tokens * dim * dim)


def attention_item(n, h, c, heads, variant):
    torch = _torch()
    from ..oracle import ops as twin

    p = attention_params(c, c, heads, h, h, onp.random.default_rng(0))
    x = onp.random.default_rng(1).standard_normal((n, h, h, c)).astype(onp.float32)
    p_t = {
        k: torch.from_numpy(onp.ascontiguousarray(v.T if k.startswith("w") else v))
        .requires_grad_()
        for k, v in p.items()
    }
    names = tuple(p)

    def twin_attention(xt, *ps):
        return twin.relative_attention(xt, dict(zip(names, ps, strict=True)), heads, variant)

    return _op_item(
        f"relative_attention {variant}", f"({n},{h},{h},{c}) heads {heads}",
        2.0 * attention_macs(n, h * h, c, c),
        lambda x, p: relative_attention(x, p, heads, variant), (x, p),
        twin_attention,
        (_nchw(torch, x, True), *(p_t[k] for k in names)),
    )


def mbconv_macs(n, block):
    """Multiply-adds of a stride-1 MBConv block without shortcut projection (``count_flops``)."""
    h, w = block.grid_out
    mid, c_in, c_out = block.expanded, block.c_in, block.c_out
    return n * (h * w * (c_in * mid + 9 * mid + mid * c_out) + 2 * mid * block.se)


def mbconv_item(n, h, c, cfg):
    torch = _torch()
    from ..oracle.network import MBConv, copy_into

    block = make_block(cfg, "C", c, c, 1, (h, h))
    params = model.init_from_spec(blocks.mbconv_spec(block), onp.random.default_rng(0))
    state = model.init_state(blocks.mbconv_state(block))
    x = onp.random.default_rng(1).standard_normal((n, h, h, c)).astype(onp.float32)
    module = copy_into(MBConv(block, cfg), params, state).train()
    return _module_item(
        "MBConv block", f"({n},{h},{h},{c}) expand {cfg.mbconv_expand}",
        2.0 * mbconv_macs(n, block),
        lambda x, p: blocks.mbconv_forward(p, state, x, block, cfg, train=True)[0],
        x, params, module, _nchw(torch, x, True),
    )


def transformer_macs(n, h, c, cfg):
    """Multiply-adds of a stride-1 Transformer block of width ``c`` on an ``h x h`` grid."""
    tokens = h * h
    return attention_macs(n, tokens, c, c) + n * 2 * tokens * c * c * cfg.ffn_expand


def transformer_item(n, h, c, cfg):
    torch = _torch()
    from ..oracle.network import Transformer, copy_into

    block = make_block(cfg, "T", c, c, 1, (h, h))
    params = model.init_from_spec(blocks.transformer_spec(block), onp.random.default_rng(0))
    x = onp.random.default_rng(1).standard_normal((n, h, h, c)).astype(onp.float32)
    module = copy_into(Transformer(block, cfg), params).train()
    return _module_item(
        "Transformer block", f"({n},{h},{h},{c}) heads {block.heads}",
        2.0 * transformer_macs(n, h, c, cfg),
        lambda x, p: blocks.transformer_forward(p, x, block, cfg),
        x, params, module, _nchw(torch, x, True),
    )


def step_item(cfg, n, name=None):
    """One training step: forward (train mode), cross-entropy, backward, AdamW update."""
    torch = _torch()
    from ..oracle.network import to_torch

    params, state = model.init_params(cfg, seed=0)
    rng = onp.random.default_rng(1)
    x = rng.standard_normal((n, *cfg.image_size, cfg.in_channels)).astype(onp.float32)
    labels = rng.integers(0, cfg.num_classes, n)
    net = to_torch(params, state, cfg).train()
    x_t, labels_t = _nchw(torch, x), torch.from_numpy(labels)
    optimizer = torch.optim.AdamW(net.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)

    def loss(p):
        logits, _ = model.forward(p, state, x, cfg, train=True, check=False)
        return cross_entropy(logits, labels)

    current = {"params": params, "opt": adamw_init(params)}

    def numpy_step():
        _, grads = value_and_grad(loss)(current["params"])
        current["params"], current["opt"] = adamw_update(
            current["params"], grads, current["opt"], LR, weight_decay=WEIGHT_DECAY, mask=None
        )

    def torch_step():
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(net(x_t), labels_t).backward()
        optimizer.step()

    h, w = cfg.image_size
    return Item(
        name or f"train step {cfg.name}", f"batch {n}, {h}x{w}x{cfg.in_channels}",
        2.0 * model.count_flops(cfg) * n, {"step": numpy_step}, {"step": torch_step},
        rebuild=("step_item", (cfg, n)),
    )



def hot_items(quick):
    """The op rows: shapes as they occur in coatnet-cifar at batch 32 (tiny for --quick)."""
    cfg = preset(PRESET)
    if quick:
        n, small = 2, preset(PRESET, mbconv_expand=2, ffn_expand=2)
        return [
            depthwise_item(n, 8, 16),
            conv2d_item(n, 8, 8, 8),
            attention_item(n, 4, 64, 2, "pre"),
            attention_item(n, 4, 64, 2, "post"),
            mbconv_item(n, 8, 16, small),
            transformer_item(n, 4, 64, small),
        ]
    n = 32
    return [
        depthwise_item(n, 16, 64 * cfg.mbconv_expand),  # S1's expanded depthwise
        conv2d_item(n, 32, 32, 32),  # the stem's second convolution
        attention_item(n, 4, 192, 192 // cfg.head_dim, "pre"),  # S3
        attention_item(n, 4, 192, 192 // cfg.head_dim, "post"),
        mbconv_item(n, 16, 64, cfg),  # S1, second block
        transformer_item(n, 4, 192, cfg),  # S3, second block
    ]

