"""Checks of A2: the relative position index and relative attention."""

import autograd
import autograd.numpy as anp
import numpy as np

import minicoat as mc

from ...tree import tree_map
from .common import (
    ORACLE_TOL,
    CheckFailed,
    _autograd_grad,
    _call,
    _error,
    _guarded,
    _mismatch,
    _normal,
    _one_torch_thread,
    _oracle,
    _plain,
    _require,
    _tree_mismatches,
    _zeros_suspect,
)
from .guard import Forbidden

FORBID_INDEX = Forbidden("relative_position_index",
                         ("relative position index", "*.py", r"relative_position_index"))
FORBID_ATTENTION = Forbidden(
    "relative attention", ("relative attention", "*.py", r"relative_position_index|attention"))


def check_relative_position_index(student_fn, h=2, w=3):
    """Grade ``student_fn(h, w) -> (h*w, h*w)`` integer relative-position index."""
    _, ops, _ = _oracle()
    context = f"relative_position_index({h}, {w})"
    got = _call(context, _guarded(context, FORBID_INDEX, student_fn), h, w)
    expected = ops.relative_position_index(h, w).numpy()
    if not np.array_equal(mc.relative_position_index(h, w), expected):  # pragma: no cover
        raise RuntimeError("minicoat and the oracle disagree: report this bug")
    got = _plain(got)
    if got.shape != expected.shape:
        raise CheckFailed(f"{context}: wrong shape: expected {expected.shape}, got {got.shape}")
    if not np.issubdtype(got.dtype, np.integer):
        raise CheckFailed(f"{context}: expected an integer array (for indexing), got {got.dtype}")
    wrong = np.argwhere(got != expected)
    if len(wrong):
        i, j = (int(a) for a in wrong[0])
        message = (
            f"{context}: {len(wrong)} of {got.size} entries wrong; first at [{i}, {j}] (token "
            f"{divmod(i, w)} vs token {divmod(j, w)} as (row, col)): got {got[i, j]}, "
            f"expected {expected[i, j]}"
        )
        if np.array_equal(got, expected.T):
            message += ". It matches the transpose: the offset is (token i) - (token j)"
        raise CheckFailed(message)
    return f"{context}: OK ({got.size} entries, values 0..{expected.max()})"


def _attention_variant(x, p, heads, variant, scale=True, axis=-1, transpose_bias=False):
    """Plain NumPy relative attention with one thing changed: recognises classic mistakes."""
    n, h, w, c = x.shape
    qkv = x.reshape(n, h * w, c) @ p["w_qkv"] + p["b_qkv"]  # (N, T, 3D)
    q, k, v = (t.reshape(n, h * w, heads, -1).transpose(0, 2, 1, 3)
               for t in np.split(qkv, 3, axis=-1))  # each (N, heads, T, d)
    index = mc.relative_position_index(h, w)
    bias = p["rel_bias"][:, index.T if transpose_bias else index]  # (heads, T, T)
    logits = q @ k.transpose(0, 1, 3, 2) * (q.shape[-1] ** -0.5 if scale else 1.0)

    def softmax(s):
        e = np.exp(s - s.max(axis=axis, keepdims=True))
        return e / e.sum(axis=axis, keepdims=True)

    weights = softmax(logits + bias) if variant == "pre" else softmax(logits) + bias
    out = (weights @ v).transpose(0, 2, 1, 3).reshape(n, h * w, -1)  # (N, T, D)
    return (out @ p["w_out"] + p["b_out"]).reshape(n, h, w, -1)


@_one_torch_thread()
def _torch_attention(x, p, heads, variant, g):
    """PyTorch's output and gradients of ``sum(y * g)`` w.r.t. x and p, in our layouts."""
    torch, ops, _ = _oracle()
    layouts = {"w_qkv": ops.LINEAR_WEIGHT, "w_out": ops.LINEAR_WEIGHT}
    x_t = ops.nhwc_to_nchw(x).requires_grad_()
    p_t = {k: layouts.get(k, ops.PLAIN).to_torch(v).requires_grad_() for k, v in p.items()}
    y_t = ops.relative_attention(x_t, p_t, heads, variant)
    y_t.backward(ops.nhwc_to_nchw(g))
    grads = {k: layouts.get(k, ops.PLAIN).to_numpy(t.grad) for k, t in p_t.items()}
    return ops.nchw_to_nhwc(y_t), ops.nchw_to_nhwc(x_t.grad), grads


def check_relative_attention(student_fn, variant="pre", shape=(2, 3, 4, 8), heads=2, dim=8,
                             c_out=6, seed=0):
    """Grade ``student_fn(x, p, heads, variant) -> y``, 2-D relative self-attention.

    Forward and the gradients (by autograd through the student's code) w.r.t. x and every
    parameter, compared with PyTorch and ``mc.relative_attention``.
    """
    rng = np.random.default_rng(seed)
    n, h, w, c = shape
    x = _normal(rng, shape)
    p = {
        "w_qkv": _normal(rng, (c, 3 * dim), c**-0.5),
        "b_qkv": _normal(rng, (3 * dim,), 0.1),
        "w_out": _normal(rng, (dim, c_out), dim**-0.5),
        "b_out": _normal(rng, (c_out,), 0.1),
        "rel_bias": _normal(rng, (heads, (2 * h - 1) * (2 * w - 1)), 0.5),
    }
    context = (f"relative_attention(x {shape}, heads={heads}, D={dim}, C_out={c_out}, "
               f"variant={variant!r})")
    student_fn = _guarded(context, FORBID_ATTENTION, student_fn)
    got = _call(context, student_fn, x, p, heads, variant)
    g = _normal(rng, (n, h, w, c_out))
    y_torch, dx_torch, dp_torch = _torch_attention(x, p, heads, variant, g)
    other = "post" if variant == "pre" else "pre"
    suspects = {
        f"the {other!r} variant (pre: softmax(qk^T/sqrt(d) + B); post: softmax(qk^T/sqrt(d)) + B)":
            _attention_variant(x, p, heads, other),
        "attention without the 1/sqrt(d) scale of the logits":
            _attention_variant(x, p, heads, variant, scale=False),
        "the softmax over the queries (axis -2) instead of over the keys (axis -1)":
            _attention_variant(x, p, heads, variant, axis=-2),
        "the bias transposed (B[j, i] instead of B[i, j])":
            _attention_variant(x, p, heads, variant, transpose_bias=True),
    }
    refs = [("PyTorch", y_torch, ORACLE_TOL),
            ("minicoat", mc.relative_attention(x, p, heads, variant), ORACLE_TOL)]
    _require(context, [_mismatch("output", got, refs, suspects)])

    dx, dp = _autograd_grad(
        context, lambda xp: anp.sum(student_fn(xp[0], xp[1], heads, variant) * g), (x, p))
    dx_mc, dp_mc = autograd.grad(
        lambda xp: anp.sum(mc.relative_attention(xp[0], xp[1], heads, variant) * g))((x, p))
    problems = [_mismatch("gradient w.r.t. x", dx, [("PyTorch", dx_torch, ORACLE_TOL),
                                                   ("minicoat", dx_mc, ORACLE_TOL)],
                          _zeros_suspect(np.zeros_like(x)))]
    refs = [("PyTorch", dp_torch, ORACLE_TOL), ("minicoat", dp_mc, ORACLE_TOL)]
    problems += _tree_mismatches("gradient w.r.t. p.", dp, refs,
                                 _zeros_suspect(tree_map(np.zeros_like, p)))
    _require(context, problems)
    return (f"{context}: forward and gradients OK (error {_error(_plain(got), y_torch):.0e} vs "
            "PyTorch)")
