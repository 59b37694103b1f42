"""2-D relative self-attention, the "At" in CoAtNet (paper section 2.1, equations 2-3).

Plain self-attention weighs token j for token i by ``softmax_j(x_i . x_j)``: input-adaptive,
global, but blind to where j sits relative to i. A depthwise convolution weighs by
``w_{i-j}``: static, local, and translation-equivariant. CoAtNet adds a learned scalar per
*relative offset* ``i - j`` (one table per head) to the attention logits, in one of two places:

* ``variant="pre"``, the paper's eq. (3), sum-then-softmax (the paper's choice)::

      y_i = sum_j softmax_j(q_i . k_j / sqrt(d) + w_{i-j}) v_j

* ``variant="post"``, softmax-then-sum, the alternative the paper compares::

      y_i = sum_j (softmax_j(q_i . k_j / sqrt(d)) + w_{i-j}) v_j

On an ``H x W`` grid, offsets range over ``(2H - 1) x (2W - 1)`` values, so each head's table
``rel_bias[h]`` has that many entries and ``relative_position_index`` maps every token pair
to its entry. Because the bias depends only on ``i - j``, shifting the content of the grid
shifts the output the same way (translation equivariance) wherever nothing falls off the edge.
"""

import functools
import math
import numbers

import autograd.numpy as np
import numpy as onp
from autograd.extend import defvjp, defvjp_argnums, primitive
from autograd.tracer import getval

from .activations import softmax
from .checks import check_float, check_rank, check_same_dtype
from .layers import linear

VARIANTS = ("pre", "post")


def relative_position_index(h, w):
    """Index into the relative-bias table for every pair of tokens of an ``h x w`` grid.

    Tokens are numbered row-major, ``i = yi * w + xi``. For tokens ``i = (yi, xi)`` and
    ``j = (yj, xj)``::

        index[i, j] = (yi - yj + h - 1) * (2w - 1) + (xi - xj + w - 1)

    so equal offsets ``(yi - yj, xi - xj)`` share one entry of a ``(2h-1)*(2w-1)`` table.

    Returns:
        int64 array of shape ``(h*w, h*w)`` with values in ``[0, (2h-1)*(2w-1))``.
    """
    if int(h) != h or int(w) != w or h < 1 or w < 1:
        raise ValueError(f"grid size must be two positive integers, got ({h}, {w})")
    return _relative_position_index(int(h), int(w)).copy()


@functools.lru_cache(maxsize=64)
def _relative_position_index(h, w):
    """Cached, read-only ``relative_position_index`` (it is recomputed for every layer call)."""
    ys, xs = onp.divmod(onp.arange(h * w), w)  # (T,), (T,): row and column of each token
    dy = ys[:, None] - ys[None, :] + (h - 1)  # (T, T) in [0, 2h-2]
    dx = xs[:, None] - xs[None, :] + (w - 1)  # (T, T) in [0, 2w-2]
    index = (dy * (2 * w - 1) + dx).astype(onp.int64)
    index.flags.writeable = False
    return index


# ----------------------------------------------------------------------------------------
# Gathering the bias table into a (heads, T, T) matrix
# ----------------------------------------------------------------------------------------


def gather_rel_bias_reference(rel_bias, index):
    """Traced version: ``B[h, i, j] = rel_bias[h, index[i, j]]`` (backward via ``np.add.at``)."""
    return rel_bias[:, index]


@primitive
def gather_rel_bias(rel_bias, index):
    """``(heads, L), (T, T) int -> (heads, T, T)``: ``B[h, i, j] = rel_bias[h, index[i, j]]``.

    The VJP sums the gradient of every pair that shares an offset back into its table entry,
    one ``np.bincount`` per head (much faster than the traced ``np.add.at``).
    """
    return rel_bias[:, index]


def _gather_rel_bias_vjp(b, rel_bias, index):
    def vjp(g):  # g: (heads, T, T) -> (heads, L)
        flat = index.ravel()
        length = rel_bias.shape[1]
        rows = [onp.bincount(flat, weights=g_h.ravel(), minlength=length) for g_h in g]
        return onp.stack(rows).astype(rel_bias.dtype)

    return vjp


defvjp(gather_rel_bias, _gather_rel_bias_vjp, None)


# ----------------------------------------------------------------------------------------
# The attention core: q, k, v and the bias matrix -> weighted values
# ----------------------------------------------------------------------------------------


def attention_core_reference(q, k, v, bias, variant):
    """Readable, traced attention core. Shapes as in ``attention_core``."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    logits = q @ np.swapaxes(k, -1, -2) * scale  # (N, h, T, T)
    if variant == "pre":
        weights = softmax(logits + bias, axis=-1)  # eq. (3): sum, then softmax
    else:
        weights = softmax(logits, axis=-1) + bias  # softmax, then sum
    return weights @ v  # (N, h, T, d)


def _softmax_rows(s):
    """Softmax over the last axis, in place: ``s`` is overwritten with the probabilities."""
    s -= s.max(axis=-1, keepdims=True)
    onp.exp(s, out=s)
    s /= s.sum(axis=-1, keepdims=True)
    return s


def _attention_weights(q, k, bias, variant):
    """Forward pass up to the weights; returns (weights, softmax output).

    The (N, h, T, T) matrices are the big arrays here (T^2 per head), so each step works in
    place on the one array of logits, and the scale goes on q, (T, d), rather than on q k^T.
    """
    scale = 1.0 / math.sqrt(q.shape[-1])
    logits = (q * scale) @ onp.swapaxes(k, -1, -2)  # (N, h, T, T)
    if variant == "pre":
        logits += bias
        probs = _softmax_rows(logits)
        return probs, probs
    probs = _softmax_rows(logits)
    return probs + bias, probs


@primitive
def attention_core(q, k, v, bias, variant):
    """Multi-head attention with an additive relative bias, forward and hand-written VJP.

    Args:
        q, k, v: ``(N, heads, T, d)``.
        bias: ``(heads, T, T)``, the gathered relative bias ``B[h, i, j]``.
        variant: ``"pre"`` (``softmax(qk^T/sqrt d + B) v``) or ``"post"``
            (``(softmax(qk^T/sqrt d) + B) v``).

    Returns:
        ``(N, heads, T, d)``.
    """
    weights, _ = _attention_weights(q, k, bias, variant)
    return weights @ v


def _attention_core_vjp(argnums, out, args, kwargs):
    q, k, v, bias, variant = args
    scale = 1.0 / math.sqrt(q.shape[-1])

    def vjp(g):  # g: (N, h, T, d)
        # Recomputed here, in the backward pass, rather than stored from the forward pass.
        weights, probs = _attention_weights(q, k, bias, variant)
        d_weights = g @ onp.swapaxes(v, -1, -2)  # (N, h, T, T)
        d_v = onp.swapaxes(weights, -1, -2) @ g  # (N, h, T, d)
        # pre: the bias sits inside the softmax; post: it is added to the weights directly
        d_bias_post = onp.sum(d_weights, axis=0) if variant == "post" else None
        # softmax backward, row by row: dS = P * (dP - sum_j dP * P), in place on dP
        d_weights -= onp.einsum("...ij,...ij->...i", d_weights, probs)[..., None]
        d_logits = d_weights
        d_logits *= probs
        d_bias = onp.sum(d_logits, axis=0) if variant == "pre" else d_bias_post  # (h, T, T)
        d_q = d_logits @ (k * scale)  # (N, h, T, d)
        d_k = onp.swapaxes(d_logits, -1, -2) @ (q * scale)  # (N, h, T, d)
        grads = {0: d_q, 1: d_k, 2: d_v, 3: d_bias}
        return tuple(grads[i] for i in argnums)

    return vjp


defvjp_argnums(attention_core, _attention_core_vjp)


# ----------------------------------------------------------------------------------------
# The full layer
# ----------------------------------------------------------------------------------------


def _split_heads(t, heads):
    n, tokens, dim = t.shape
    return np.transpose(np.reshape(t, (n, tokens, heads, dim // heads)), (0, 2, 1, 3))


def _check_attention_args(x, p, heads, variant):
    check_float("x", x)
    n, h, w, c = check_rank("x", x, 4, "(N, H, W, C)")
    if variant not in VARIANTS:
        raise ValueError(f"variant must be 'pre' or 'post', got {variant!r}")
    shapes = {name: onp.shape(getval(p[name])) for name in ("w_qkv", "b_qkv", "w_out", "b_out")}
    if len(shapes["w_qkv"]) != 2 or shapes["w_qkv"][0] != c or shapes["w_qkv"][1] % 3:
        raise ValueError(
            f"p['w_qkv'] must have shape (C, 3*D) with C = {c} to match x of shape {(n, h, w, c)}, "
            f"got {shapes['w_qkv']}"
        )
    dim = shapes["w_qkv"][1] // 3
    if not isinstance(heads, numbers.Integral) or heads < 1 or dim % heads:
        raise ValueError(
            f"heads must be a positive integer dividing the attention width D = {dim}, "
            f"got {heads!r}"
        )
    if shapes["b_qkv"] != (3 * dim,) or len(shapes["w_out"]) != 2 or shapes["w_out"][0] != dim:
        raise ValueError(
            f"expected p['b_qkv'] of shape ({3 * dim},) and p['w_out'] of shape ({dim}, C_out), "
            f"got {shapes['b_qkv']} and {shapes['w_out']}"
        )
    table = (heads, (2 * h - 1) * (2 * w - 1))
    if onp.shape(getval(p["rel_bias"])) != table:
        raise ValueError(
            f"p['rel_bias'] must have shape (heads, (2H-1)*(2W-1)) = {table} for a {h}x{w} grid "
            f"and {heads} heads, got {onp.shape(getval(p['rel_bias']))}"
        )
    check_same_dtype(
        x=x, **{name: p[name] for name in ("w_qkv", "b_qkv", "w_out", "b_out", "rel_bias")}
    )


def relative_attention(x, p, heads, variant="pre", reference=False):
    """Multi-head 2-D relative self-attention over all ``H*W`` positions (paper eq. 3).

    ``tokens = x`` flattened row-major; ``[q | k | v] = tokens @ w_qkv + b_qkv``, each split
    into ``heads`` heads of size ``d = D / heads``; per head, with the relative bias
    ``B[i, j] = rel_bias[h, relative_position_index(H, W)[i, j]]``:

    * ``"pre"``:  ``A = softmax(q k^T / sqrt(d) + B)``
    * ``"post"``: ``A = softmax(q k^T / sqrt(d)) + B``

    ``y = A v``, heads concatenated, then ``y @ w_out + b_out``.

    Args:
        x: ``(N, H, W, C)``.
        p: ``{"w_qkv": (C, 3D), "b_qkv": (3D,), "w_out": (D, C_out), "b_out": (C_out,),
            "rel_bias": (heads, (2H-1)*(2W-1))}``.
        heads: number of heads, dividing ``D``.
        variant: ``"pre"`` (sum-then-softmax, the paper's) or ``"post"`` (softmax-then-sum).
        reference: use the traced reference core instead of the hand-written VJP.

    Returns:
        ``(N, H, W, C_out)``.
    """
    _check_attention_args(x, p, heads, variant)
    n, h, w, c = x.shape
    tokens = np.reshape(x, (n, h * w, c))  # (N, T, C)
    qkv = linear(tokens, p["w_qkv"], p["b_qkv"])  # (N, T, 3D)
    heads = int(heads)
    q, k, v = (_split_heads(t, heads) for t in np.split(qkv, 3, axis=-1))  # each (N, heads, T, d)
    index = _relative_position_index(h, w)  # (T, T)
    if reference:
        bias = gather_rel_bias_reference(p["rel_bias"], index)  # (heads, T, T)
        out = attention_core_reference(q, k, v, bias, variant)
    else:
        bias = gather_rel_bias(p["rel_bias"], index)
        out = attention_core(q, k, v, bias, variant)  # (N, heads, T, d)
    out = np.reshape(np.transpose(out, (0, 2, 1, 3)), (n, h * w, -1))  # (N, T, D)
    y = linear(out, p["w_out"], p["b_out"])  # (N, T, C_out)
    return np.reshape(y, (n, h, w, -1))  # (N, H, W, C_out)
