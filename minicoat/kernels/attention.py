"""Attention kernels: the bias gather's VJP by ``bincount``, and an attention core in place.

They register as the ``fast`` ``gather_rel_bias`` and ``attention_core``
(``minicoat/ops/attention.py``). The (N, heads, T, T) matrices are the big arrays of attention
(T^2 per head), so the core works in place on one array of logits and recomputes the weights
in the backward pass instead of storing them. Measured reasons: ``docs/performance.md``.
"""

import math

import numpy as onp
from autograd.extend import defvjp, defvjp_argnums, primitive

from ..ops.switch import register_kernel


@primitive
def gather_rel_bias(rel_bias, index):
    """``(heads, L), (T, T) int -> (heads, T, T)``: ``B[h, i, j] = rel_bias[h, index[i, j]]``.

    The VJP sums the gradient of every pair that shares an offset back into its table entry,
    one ``np.bincount`` per head (instead of the readable ``np.add.at``).
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


register_kernel("gather_rel_bias")(gather_rel_bias)


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
    """``attention_core`` (shapes there), in place on one array of logits; VJP below."""
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


register_kernel("attention_core")(attention_core)
