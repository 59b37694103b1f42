"""PyTorch twins of minicoat's ops, the layout converters, and ``compare``.

An oracle is only worth something if a bug in minicoat cannot leak into it, so every twin
below is written from the definition with torch's own functions (``F.conv2d(groups=C)``,
``F.batch_norm``, ``F.gelu``, ...) and never calls minicoat. The twins take and return torch
tensors in PyTorch's layouts:

===================  ================================  ==================================
what                 minicoat (NumPy)                  twin (torch)
===================  ================================  ==================================
feature map          ``(N, H, W, C)``                  ``(N, C, H, W)``
depthwise kernel     ``(k, k, C)``                     ``(C, 1, k, k)``  (``groups=C``)
dense kernel         ``(k, k, C_in, C_out)``           ``(C_out, C_in, k, k)``
1x1 kernel           ``(C_in, C_out)``                 ``(C_out, C_in, 1, 1)``
linear weight        ``(C_in, C_out)``                 ``(C_out, C_in)`` (as ``nn.Linear``)
tokens, logits, ...  unchanged                         unchanged
===================  ================================  ==================================

Each row is a ``Layout``: a pair of converters NumPy -> torch and torch -> NumPy, which is
all ``compare`` needs to run an op and its twin on the same inputs.
"""

from typing import Callable, NamedTuple

import autograd
import numpy as onp
import torch
import torch.nn.functional as F

from ..gradcheck import rel_error

# ----------------------------------------------------------------------------------------
# Converters (the only place where the two layouts meet)
# ----------------------------------------------------------------------------------------


def to_torch(a):
    """NumPy array (or scalar) -> a new torch tensor with the same shape and dtype (a copy).

    The copy is C-contiguous whatever the array's strides (``torch.tensor`` would keep them,
    and torch's float64 convolution backward refuses a non-contiguous weight).
    """
    return torch.tensor(onp.asarray(a)).contiguous()


def to_numpy(t):
    """torch tensor -> a new NumPy array with the same shape and dtype (detached, a copy)."""
    return t.detach().cpu().numpy().copy()


def _check_ndim(name, a, ndim, layout):
    if a.ndim != ndim:
        raise ValueError(f"{name} must have shape {layout}, got shape {tuple(a.shape)}")


def nhwc_to_nchw(x):
    """Feature map ``(N, H, W, C)`` NumPy -> ``(N, C, H, W)`` torch."""
    _check_ndim("x", onp.asarray(x), 4, "(N, H, W, C)")
    return to_torch(onp.transpose(x, (0, 3, 1, 2)))


def nchw_to_nhwc(t):
    """Feature map ``(N, C, H, W)`` torch -> ``(N, H, W, C)`` NumPy."""
    _check_ndim("t", t, 4, "(N, C, H, W)")
    return onp.ascontiguousarray(onp.transpose(to_numpy(t), (0, 2, 3, 1)))


def depthwise_kernel_to_torch(w):
    """Depthwise kernel ``(k, k, C)`` NumPy -> ``(C, 1, k, k)`` torch (``groups=C``)."""
    _check_ndim("w", onp.asarray(w), 3, "(k, k, C)")
    return to_torch(onp.transpose(w, (2, 0, 1))[:, None])


def depthwise_kernel_from_torch(t):
    """Depthwise kernel ``(C, 1, k, k)`` torch -> ``(k, k, C)`` NumPy."""
    _check_ndim("t", t, 4, "(C, 1, k, k)")
    return onp.ascontiguousarray(onp.transpose(to_numpy(t)[:, 0], (1, 2, 0)))


def conv_kernel_to_torch(w):
    """Dense kernel ``(k, k, C_in, C_out)`` NumPy -> ``(C_out, C_in, k, k)`` torch."""
    _check_ndim("w", onp.asarray(w), 4, "(k, k, C_in, C_out)")
    return to_torch(onp.transpose(w, (3, 2, 0, 1)))


def conv_kernel_from_torch(t):
    """Dense kernel ``(C_out, C_in, k, k)`` torch -> ``(k, k, C_in, C_out)`` NumPy."""
    _check_ndim("t", t, 4, "(C_out, C_in, k, k)")
    return onp.ascontiguousarray(onp.transpose(to_numpy(t), (2, 3, 1, 0)))


def pointwise_kernel_to_torch(w):
    """1x1 kernel ``(C_in, C_out)`` NumPy -> ``(C_out, C_in, 1, 1)`` torch (``nn.Conv2d``)."""
    _check_ndim("w", onp.asarray(w), 2, "(C_in, C_out)")
    return to_torch(onp.transpose(w)[:, :, None, None])


def pointwise_kernel_from_torch(t):
    """1x1 kernel ``(C_out, C_in, 1, 1)`` torch -> ``(C_in, C_out)`` NumPy."""
    _check_ndim("t", t, 4, "(C_out, C_in, 1, 1)")
    return onp.ascontiguousarray(onp.transpose(to_numpy(t)[:, :, 0, 0]))


def linear_to_torch(w):
    """Linear weight ``(C_in, C_out)`` NumPy -> ``(C_out, C_in)`` torch, as ``nn.Linear``."""
    _check_ndim("w", onp.asarray(w), 2, "(C_in, C_out)")
    return to_torch(onp.transpose(w))


def linear_from_torch(t):
    """Linear weight ``(C_out, C_in)`` torch -> ``(C_in, C_out)`` NumPy."""
    _check_ndim("t", t, 2, "(C_out, C_in)")
    return onp.ascontiguousarray(onp.transpose(to_numpy(t)))


class Layout(NamedTuple):
    """How one kind of array travels: NumPy -> torch and back."""

    to_torch: Callable[[onp.ndarray], torch.Tensor]
    to_numpy: Callable[[torch.Tensor], onp.ndarray]


PLAIN = Layout(to_torch, to_numpy)  # same axes on both sides: tokens, vectors, logits, ...
FEATURE_MAP = Layout(nhwc_to_nchw, nchw_to_nhwc)
DEPTHWISE_KERNEL = Layout(depthwise_kernel_to_torch, depthwise_kernel_from_torch)
CONV_KERNEL = Layout(conv_kernel_to_torch, conv_kernel_from_torch)
POINTWISE_KERNEL = Layout(pointwise_kernel_to_torch, pointwise_kernel_from_torch)
LINEAR_WEIGHT = Layout(linear_to_torch, linear_from_torch)

# ----------------------------------------------------------------------------------------
# Twins, NCHW, torch's own ops. Defaults are PyTorch's (BatchNorm2d, LayerNorm), not minicoat's.
# ----------------------------------------------------------------------------------------


def depthwise_conv2d(x, w, stride=1):
    """``(N, C, H, W)``, ``(C, 1, k, k)`` -> ``(N, C, H', W')``: grouped conv, ``groups=C``."""
    return F.conv2d(x, w, stride=stride, padding=w.shape[-1] // 2, groups=x.shape[1])


def conv2d(x, w, b=None, stride=1):
    """``(N, C_in, H, W)``, ``(C_out, C_in, k, k)``, ``(C_out,)`` -> ``(N, C_out, H', W')``."""
    return F.conv2d(x, w, b, stride=stride, padding=w.shape[-1] // 2)


def conv1x1(x, w, b=None, stride=1):
    """``(N, C_in, H, W)``, ``(C_out, C_in, 1, 1)`` -> ``(N, C_out, H', W')``, no padding."""
    return F.conv2d(x, w, b, stride=stride)


def batch_norm(x, gamma, beta, running, train, momentum=0.1, eps=1e-5):
    """``F.batch_norm`` over the channel axis 1 of ``(N, C, H, W)`` or ``(N, C)``.

    ``running`` is ``{"mean": (C,), "var": (C,)}``; it is cloned, never mutated, and the
    clones (updated in place by ``F.batch_norm`` when ``train``) are returned, mirroring
    minicoat's ``(y, new_running)``.
    """
    new_running = {"mean": running["mean"].clone(), "var": running["var"].clone()}
    y = F.batch_norm(
        x,
        new_running["mean"],
        new_running["var"],
        gamma,
        beta,
        training=train,
        momentum=momentum,
        eps=eps,
    )
    return y, new_running


def layer_norm(x, gamma, beta, eps=1e-5):
    """``F.layer_norm`` over the last axis (``nn.LayerNorm(C)`` on tokens ``(N, T, C)``)."""
    return F.layer_norm(x, x.shape[-1:], gamma, beta, eps)


def gelu(x, approximate="none"):
    """``F.gelu``; ``approximate`` is ``"none"`` (erf) or ``"tanh"``."""
    return F.gelu(x, approximate=approximate)


def sigmoid(x):
    """``torch.sigmoid``."""
    return torch.sigmoid(x)


def silu(x):
    """``F.silu``."""
    return F.silu(x)


def softmax(x, axis=-1):
    """``torch.softmax`` along ``axis``."""
    return torch.softmax(x, dim=axis)


def log_softmax(x, axis=-1):
    """``torch.log_softmax`` along ``axis``."""
    return torch.log_softmax(x, dim=axis)


def max_pool2d(x):
    """2x2 stride-2 max pool of ``(N, C, H, W)``; odd sizes: ``ceil_mode=True``."""
    return F.max_pool2d(x, 2, 2, ceil_mode=True)


def avg_pool2d(x):
    """2x2 stride-2 average pool; odd sizes: ``ceil_mode=True, count_include_pad=False``."""
    return F.avg_pool2d(x, 2, 2, ceil_mode=True, count_include_pad=False)


def global_avg_pool(x):
    """``(N, C, H, W)`` -> ``(N, C)``, the mean over H and W."""
    return x.mean(dim=(2, 3))


def linear(x, w, b=None):
    """``F.linear`` with ``w`` of shape ``(C_out, C_in)``: ``x @ w.T + b``."""
    return F.linear(x, w, b)


def scale_channels(x, s):
    """``(N, C, H, W)`` times ``s`` ``(N, C)``, broadcast over the pixels (torch's autograd)."""
    return x * s[:, :, None, None]


def squeeze_excitation(x, p, approximate="none"):
    """Squeeze-excitation of ``(N, C, H, W)`` with ``nn.Linear``-layout weights.

    ``p = {"w_reduce": (R, C), "b_reduce": (R,), "w_expand": (C, R), "b_expand": (C,)}``;
    GELU in the reduction, sigmoid gate.
    """
    squeezed = x.mean(dim=(2, 3))  # (N, C)
    hidden = F.gelu(F.linear(squeezed, p["w_reduce"], p["b_reduce"]), approximate=approximate)
    gate = torch.sigmoid(F.linear(hidden, p["w_expand"], p["b_expand"]))  # (N, C)
    return x * gate[:, :, None, None]


def cross_entropy(logits, labels, label_smoothing=0.0):
    """``F.cross_entropy`` (mean over the batch); ``labels`` may be a NumPy integer array."""
    labels = torch.as_tensor(onp.asarray(labels), dtype=torch.long)
    return F.cross_entropy(logits, labels, label_smoothing=label_smoothing)


def relative_position_index(h, w):
    """``(h*w, h*w)`` long tensor, built from coordinate differences (as in Swin / timm).

    ``index[i, j] = (yi - yj + h - 1) * (2w - 1) + (xi - xj + w - 1)``, tokens row-major.
    """
    grid = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")  # 2 x (h, w)
    coords = torch.stack(grid).flatten(1)  # (2, T): row and column of each token
    offsets = coords[:, :, None] - coords[:, None, :]  # (2, T, T): (yi - yj, xi - xj)
    return (offsets[0] + h - 1) * (2 * w - 1) + (offsets[1] + w - 1)


def gather_rel_bias(rel_bias, index):
    """``(heads, L)``, ``(T, T)`` -> ``(heads, T, T)`` by torch advanced indexing."""
    return rel_bias[:, index]


def attention_core(q, k, v, bias, variant):
    """``q, k, v``: ``(N, heads, T, d)``; ``bias``: ``(heads, T, T)`` -> ``(N, heads, T, d)``.

    ``"pre"``: ``softmax(q k^T / sqrt(d) + bias) v``; ``"post"``:
    ``(softmax(q k^T / sqrt(d)) + bias) v``.
    """
    logits = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5  # (N, heads, T, T)
    if variant == "pre":
        weights = torch.softmax(logits + bias, dim=-1)
    elif variant == "post":
        weights = torch.softmax(logits, dim=-1) + bias
    else:
        raise ValueError(f"variant must be 'pre' or 'post', got {variant!r}")
    return weights @ v


def relative_attention(x, p, heads, variant="pre"):
    """Multi-head 2-D relative self-attention of an ``(N, C, H, W)`` map (paper eq. 3).

    ``p = {"w_qkv": (3D, C), "b_qkv": (3D,), "w_out": (C_out, D), "b_out": (C_out,),
    "rel_bias": (heads, (2H-1)*(2W-1))}``, weights in ``nn.Linear`` layout; the rows of
    ``w_qkv`` are ``[q | k | v]``, each split into ``heads`` consecutive heads.

    Returns:
        ``(N, C_out, H, W)``.
    """
    n, c, h, w = x.shape
    tokens = x.flatten(2).transpose(1, 2)  # (N, T, C), row-major tokens
    q, k, v = F.linear(tokens, p["w_qkv"], p["b_qkv"]).chunk(3, dim=-1)  # 3 x (N, T, D)
    q, k, v = (t.unflatten(-1, (heads, -1)).transpose(1, 2) for t in (q, k, v))  # (N, h, T, d)
    bias = gather_rel_bias(p["rel_bias"], relative_position_index(h, w))  # (heads, T, T)
    out = attention_core(q, k, v, bias, variant)  # (N, heads, T, d)
    out = out.transpose(1, 2).flatten(2)  # (N, T, D)
    y = F.linear(out, p["w_out"], p["b_out"])  # (N, T, C_out)
    return y.transpose(1, 2).unflatten(-1, (h, w))  # (N, C_out, H, W)


# ----------------------------------------------------------------------------------------
# Running an op against its twin
# ----------------------------------------------------------------------------------------


class Comparison(NamedTuple):
    """Normwise relative errors (``minicoat.rel_error``) between an op and its twin."""

    forward: float  # outputs
    grads: dict  # input name -> error of the gradient (VJP) with respect to that input

    @property
    def worst(self):
        return max([self.forward, *self.grads.values()])


def compare(ours, theirs, inputs, layouts=None, output=PLAIN, seed=0):
    """Run a minicoat op and its torch twin on the same inputs and one upstream gradient.

    Both functions receive the inputs as keyword arguments: ``ours`` the NumPy arrays,
    ``theirs`` torch copies converted by ``layouts[name]`` (default ``PLAIN``) that require
    gradients. Everything else an op needs (stride, labels, running statistics) goes in a
    closure. One random upstream gradient ``g`` (``seed``) is pulled back through both,
    ``ours`` by ``autograd`` and ``theirs`` by ``torch.autograd``, so the gradients
    compared are the VJPs ``g . d op / d input`` of every input.

    Example::

        compare(lambda x, w: mc.depthwise_conv2d(x, w, 2),
                lambda x, w: oracle.depthwise_conv2d(x, w, 2),
                {"x": x, "w": w}, {"x": FEATURE_MAP, "w": DEPTHWISE_KERNEL}, FEATURE_MAP)

    Args:
        ours: NumPy function of the inputs, returning one array (or scalar).
        theirs: its torch twin, taking and returning tensors in torch's layout.
        inputs: name -> float array; use float64 to measure the ops, not the round-off.
        layouts: name -> ``Layout`` for inputs whose torch layout differs.
        output: the ``Layout`` of the output (``FEATURE_MAP`` for maps).
        seed: seed of the upstream gradient.

    Returns:
        ``Comparison(forward, grads)``, a named tuple: the relative error of the outputs and a
        dict of the relative error of each input's gradient. Expect ~1e-15 in float64.
    """
    layouts = layouts or {}
    unknown = set(layouts) - set(inputs)
    if unknown:
        raise ValueError(f"layouts names inputs that do not exist: {sorted(unknown)}")
    vjp, y = autograd.make_vjp(lambda values: ours(**values))(dict(inputs))
    y = onp.asarray(y)
    upstream = onp.random.default_rng(seed).standard_normal(y.shape).astype(y.dtype)
    grads = vjp(upstream)

    torch_inputs = {
        name: layouts.get(name, PLAIN).to_torch(a).requires_grad_() for name, a in inputs.items()
    }
    y_torch = theirs(**torch_inputs)
    y_torch.backward(output.to_torch(upstream))
    errors = {}
    for name, t in torch_inputs.items():
        grad_torch = torch.zeros_like(t) if t.grad is None else t.grad
        errors[name] = rel_error(grads[name], layouts.get(name, PLAIN).to_numpy(grad_torch))
    return Comparison(rel_error(y, output.to_numpy(y_torch)), errors)
