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

import autograd.numpy as np
import numpy as onp

from .activations import softmax, softmax_traced
from .checks import check_attention_args
from .conv import linear
from .switch import dispatch, with_vjp

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
    return cached_relative_position_index(int(h), int(w)).copy()


@functools.lru_cache(maxsize=64)
def cached_relative_position_index(h, w):
    """Read-only ``relative_position_index``, computed once per grid (every layer call needs it)."""
    ys, xs = onp.divmod(onp.arange(h * w), w)  # (T,), (T,): row and column of each token
    dy = ys[:, None] - ys[None, :] + (h - 1)  # (T, T) in [0, 2h-2]
    dx = xs[:, None] - xs[None, :] + (w - 1)  # (T, T) in [0, 2w-2]
    index = (dy * (2 * w - 1) + dx).astype(onp.int64)
    index.flags.writeable = False
    return index


# -- the bias table gathered into a (heads, T, T) matrix ------------------------------------


def gather_rel_bias_traced(rel_bias, index):
    """``B[h, i, j] = rel_bias[h, index[i, j]]``: ``(heads, L), (T, T) -> (heads, T, T)``."""
    return rel_bias[:, index]


def gather_rel_bias_backward(g, rel_bias, index):
    """Every pair ``(i, j)`` read entry ``index[i, j]``, so its gradient is added back there:
    ``g`` (heads, T, T) -> ``(d_rel_bias (heads, L), None)``."""
    d_table = onp.zeros_like(rel_bias)
    onp.add.at(d_table, (slice(None), index), g)  # unbuffered: repeated indices all add up
    return d_table, None


_gather_rel_bias = dispatch(
    "gather_rel_bias",
    traced=gather_rel_bias_traced,
    readable=with_vjp(gather_rel_bias_traced, gather_rel_bias_backward),
)


def gather_rel_bias(rel_bias, index):
    """The bias matrix of every head: ``(heads, L), (T, T) int -> (heads, T, T)``.

    ``B[h, i, j] = rel_bias[h, index[i, j]]`` with ``index = relative_position_index(H, W)``.
    """
    return _gather_rel_bias(rel_bias, index)


# -- the attention core: q, k, v and the bias matrix -> weighted values ----------------------


def attention_core_traced(q, k, v, bias, variant):
    """Attention with an additive bias, pre or post (shapes as ``attention_core``)."""
    logits = q @ np.swapaxes(k, -1, -2) * (1.0 / math.sqrt(q.shape[-1]))  # (N, h, T, T)
    if variant == "pre":
        weights = softmax(logits + bias, axis=-1)  # eq. (3): sum, then softmax
    else:
        weights = softmax(logits, axis=-1) + bias  # softmax, then sum
    return weights @ v  # (N, h, T, d)


def attention_core_backward(g, q, k, v, bias, variant):
    """Gradients for ``g`` (N, h, T, d): ``(d_q, d_k, d_v, d_bias, None)``.

    Forward: ``S = q k^T / sqrt(d)``, ``P = softmax(S + B)`` (pre) or ``softmax(S)`` (post),
    weights ``A = P`` (pre) or ``P + B`` (post), ``y = A v``.
    """
    scale = 1.0 / math.sqrt(q.shape[-1])
    logits = q @ onp.swapaxes(k, -1, -2) * scale  # S: (N, h, T, T)
    probs = softmax_traced(logits + bias if variant == "pre" else logits, axis=-1)  # P
    weights = probs if variant == "pre" else probs + bias  # A
    d_weights = g @ onp.swapaxes(v, -1, -2)  # y = A v: dA = g v^T
    d_v = onp.swapaxes(weights, -1, -2) @ g  # dv = A^T g
    # softmax backward, row by row: dS = P * (dP - sum_j dP_j P_j), where dP = dA
    d_logits = probs * (d_weights - onp.sum(d_weights * probs, axis=-1, keepdims=True))
    # the bias is shared by every image: its gradient sums over the batch axis.
    # pre: B sits inside the softmax, like S; post: it is added to the weights, like P
    d_bias = onp.sum(d_logits if variant == "pre" else d_weights, axis=0)  # (h, T, T)
    d_q = d_logits @ k * scale  # S = q k^T scale: dq = dS k scale
    d_k = onp.swapaxes(d_logits, -1, -2) @ q * scale  # dk = dS^T q scale
    return d_q, d_k, d_v, d_bias, None


_attention_core = dispatch(
    "attention_core",
    traced=attention_core_traced,
    readable=with_vjp(attention_core_traced, attention_core_backward),
)


def attention_core(q, k, v, bias, variant):
    """Multi-head attention with an additive relative bias, ``A v`` (pre or post).

    Args:
        q, k, v: ``(N, heads, T, d)``.
        bias: ``(heads, T, T)``, the gathered relative bias ``B[h, i, j]``.
        variant: ``"pre"`` (``softmax(qk^T/sqrt d + B) v``) or ``"post"``
            (``(softmax(qk^T/sqrt d) + B) v``).

    Returns:
        ``(N, heads, T, d)``.
    """
    return _attention_core(q, k, v, bias, variant)


# -- the full layer -------------------------------------------------------------------------


def _split_heads(t, heads):
    """(N, T, D) -> (N, heads, T, D / heads): head h takes columns h*d .. (h+1)*d - 1."""
    n, tokens, dim = t.shape
    return np.transpose(np.reshape(t, (n, tokens, heads, dim // heads)), (0, 2, 1, 3))


def relative_attention(x, p, heads, variant="pre"):
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

    Returns:
        ``(N, H, W, C_out)``.
    """
    check_attention_args(x, p, heads, variant)
    n, h, w, c = x.shape
    tokens = np.reshape(x, (n, h * w, c))  # (N, T, C)
    qkv = linear(tokens, p["w_qkv"], p["b_qkv"])  # (N, T, 3D)
    heads = int(heads)
    q, k, v = (_split_heads(t, heads) for t in np.split(qkv, 3, axis=-1))  # each (N, heads, T, d)
    bias = gather_rel_bias(p["rel_bias"], cached_relative_position_index(h, w))  # (heads, T, T)
    out = attention_core(q, k, v, bias, variant)  # (N, heads, T, d)
    out = np.reshape(np.transpose(out, (0, 2, 1, 3)), (n, h * w, -1))  # (N, T, D)
    y = linear(out, p["w_out"], p["b_out"])  # (N, T, C_out)
    return np.reshape(y, (n, h, w, -1))  # (N, H, W, C_out)
