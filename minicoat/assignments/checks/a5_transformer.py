"""Checks of A5: LayerNorm and the attention core backward by hand, the Transformer block."""

import autograd.numpy as anp
import numpy as np

import minicoat as mc

from ... import blocks
from ...model import init_from_spec
from ...plans import make_block
from ...tree import flatten, tree_map, unflatten
from .common import (
    ORACLE_TOL,
    _autograd_grad,
    _call,
    _error,
    _guarded,
    _mismatch,
    _normal,
    _one_torch_thread,
    _oracle,
    _pair,
    _plain,
    _require,
    _shape_text,
    _tree_mismatches,
    _vjp_problems,
    _zeros_suspect,
)
from .guard import Forbidden

NUMERIC = (("numerical gradient", "gradcheck.py", r"."),
           ("autodiff", "*/autodiff.py", r"."))
FORBID_LN = Forbidden("layer_norm", ("LayerNorm", "*.py", r"layer_norm|_normalize_rows"))
FORBID_LN_VJP = Forbidden("LayerNorm's VJP", ("LayerNorm", "*.py", r"layer_norm|_normalize_rows"),
                          *NUMERIC, autodiff=True)
FORBID_CORE_VJP = Forbidden(
    "the attention core's VJP", ("attention", "*.py", r"attention|softmax_backward"), *NUMERIC,
    autodiff=True)
FORBID_BLOCK = Forbidden("the Transformer block",
                         ("Transformer block", "blocks.py", r"transformer_forward|_shortcut|_pool"))


def _ln_case(shape, seed):
    rng = np.random.default_rng(seed)
    c = shape[-1]
    return (_normal(rng, shape) * 2.0 + 0.5, 1.0 + _normal(rng, (c,), 0.3), _normal(rng, (c,), 0.3),
            rng)


def check_layer_norm(student_fn, shape=(2, 3, 5), seed=0):
    """Grade ``student_fn(x, gamma, beta) -> y``, LayerNorm over the last axis (eps 1e-5).

    Against PyTorch's ``F.layer_norm`` and ``mc.layer_norm``.
    """
    x, gamma, beta, _ = _ln_case(shape, seed)
    context = f"layer_norm({_shape_text(x=x, gamma=gamma)})"
    got = _call(context, _guarded(context, FORBID_LN, student_fn), x, gamma, beta)
    torch, ops, _ = _oracle()
    with _one_torch_thread():
        theirs = ops.layer_norm(torch.tensor(x), torch.tensor(gamma), torch.tensor(beta))
    theirs = ops.to_numpy(theirs)
    rows = x.reshape(-1, x.shape[-1])
    suspects = {
        "the normalisation over the batch axis (BatchNorm) instead of each row's channels":
            ((x - x.mean(0)) / np.sqrt(x.var(0) + 1e-5)) * gamma + beta,
        "the unbiased variance (ddof=1): LayerNorm divides by C":
            (((rows - rows.mean(-1, keepdims=True)) / np.sqrt(rows.var(-1, ddof=1, keepdims=True)
                                                             + 1e-5)).reshape(x.shape) * gamma
             + beta),
    }
    refs = [("PyTorch", theirs, ORACLE_TOL), ("minicoat", mc.layer_norm(x, gamma, beta),
                                              ORACLE_TOL)]
    _require(context, [_mismatch("output", got, refs, suspects)])
    return f"{context}: forward OK (error {_error(_plain(got), theirs):.0e} vs PyTorch)"


def check_layer_norm_vjp(student_vjp_fn, shape=(2, 3, 5), seed=0):
    """Grade ``student_vjp_fn(x, gamma, beta, g) -> (dx, dgamma, dbeta)``, written by hand.

    Against the gradients of ``sum(mc.layer_norm(x, gamma, beta) * g)`` (autograd) and finite
    differences.
    """
    x, gamma, beta, rng = _ln_case(shape, seed)
    g = _normal(rng, shape)
    context = f"layer_norm_vjp({_shape_text(x=x, gamma=gamma, g=g)})"
    result = _call(context, _guarded(context, FORBID_LN_VJP, student_vjp_fn), x, gamma, beta, g)
    got = _pair(context, result, ("dx", "dgamma", "dbeta"))
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    x_hat = (x - mean) / np.sqrt(var + 1e-5)
    suspects = {"x": {
        "the gradient as if mean and variance were constants, g * gamma / sigma: they depend on "
        "x too": g * gamma / np.sqrt(var + 1e-5),
        "the gradient without the variance's term (- x_hat * mean(dx_hat * x_hat))":
            (g * gamma - (g * gamma).mean(-1, keepdims=True)) / np.sqrt(var + 1e-5)},
        "gamma": {"dgamma without the sum over rows (the first row only)": (g * x_hat)[
            (0,) * (x.ndim - 1)]}}
    _require(context, _vjp_problems(("x", "gamma", "beta"), got, mc.layer_norm,
                                    (x, gamma, beta), g, suspects))
    return f"{context}: backward OK against autograd of mc.layer_norm and finite differences"


def check_attention_core_vjp(student_vjp_fn, shape=(2, 2, 5, 4), seed=0):
    """Grade ``student_vjp_fn(q, k, v, bias, g) -> (dq, dk, dv, dbias)`` for the "pre" core
    ``softmax(q k^T / sqrt(d) + bias) v``, written by hand.

    Against autograd of ``mc.ops.attention_core(..., "pre")`` and finite differences.
    """
    rng = np.random.default_rng(seed)
    n, heads, t, d = shape
    q, k, v = (_normal(rng, shape) for _ in range(3))
    bias, g = _normal(rng, (heads, t, t), 0.5), _normal(rng, shape)
    context = f"attention_core_vjp({_shape_text(q=q, bias=bias, g=g)})"
    result = _call(context, _guarded(context, FORBID_CORE_VJP, student_vjp_fn), q, k, v, bias, g)
    got = _pair(context, result, ("dq", "dk", "dv", "dbias"))

    def core(q_, k_, v_, b_):
        return mc.attention_core(q_, k_, v_, b_, "pre")

    logits = q @ np.swapaxes(k, -1, -2) / np.sqrt(d) + bias
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    d_probs = g @ np.swapaxes(v, -1, -2)
    suspects = {"bias": {"dbias without the sum over the batch (image 0 only): the bias is "
                         "shared by every image": (probs * (d_probs - np.sum(
                             d_probs * probs, -1, keepdims=True)))[0]},
                "v": {"dv = P g instead of P^T g": probs @ g}}
    _require(context, _vjp_problems(("q", "k", "v", "bias"), got, core, (q, k, v, bias), g,
                                    suspects))
    return f"{context}: backward OK against autograd of mc.attention_core and finite differences"


def _transformer_case(rng, block, cfg):
    params = init_from_spec(blocks.transformer_spec(block), rng, np.float64)
    return unflatten({k: v + 0.1 * rng.standard_normal(v.shape) for k, v in
                      flatten(params).items()})  # no hiding zeros and ones


@_one_torch_thread()
def _torch_transformer(params, x, block, cfg, g):
    _, ops, network = _oracle()
    module = network.copy_into(network.Transformer(block, cfg).double(), params)
    x_t = ops.nhwc_to_nchw(x).requires_grad_()
    y_t = module(x_t)
    y_t.backward(ops.nhwc_to_nchw(g))
    return (ops.nchw_to_nhwc(y_t), ops.nchw_to_nhwc(x_t.grad),
            network.torch_grads_as_params(module, params))


def check_transformer_block(student_fn, stride=1, c_in=8, c_out=8, pool="max", variant="pre",
                            shape=(2, 4, 4), seed=0):
    """Grade ``student_fn(p, x, stride, heads, cfg) -> y``, a pre-norm Transformer block.

    Output and the gradients (autograd through the student's code) w.r.t. x and every
    parameter, against PyTorch's twin block and ``minicoat.blocks.transformer_forward``.
    """
    rng = np.random.default_rng(seed)
    cfg = mc.config("coatnet-digits", pool=pool, variant=variant, head_dim=4)
    block = make_block(cfg, "T", c_in, c_out, stride, shape[1:])
    params = _transformer_case(rng, block, cfg)
    x = _normal(rng, (*shape, c_in))
    context = (f"transformer_block(x {x.shape}, C_out={c_out}, stride={stride}, "
               f"heads={block.heads}, pool={pool!r}, variant={variant!r})")
    student_fn = _guarded(context, FORBID_BLOCK, student_fn)
    y = _call(context, student_fn, params, x, stride, block.heads, cfg)
    y_mc = blocks.transformer_forward(params, x, block, cfg)
    g = _normal(rng, y_mc.shape)
    y_torch, dx_torch, dp_torch = _torch_transformer(params, x, block, cfg, g)
    h = mc.layer_norm(x, **params["norm1"])
    h = blocks._pool(h, pool) if stride == 2 else h
    attended = blocks._shortcut(params, x, stride, pool) + mc.relative_attention(
        h, params["attn"], block.heads, variant)
    shortcut = blocks._shortcut(params, x, stride, pool)
    suspects = {"the block without its FFN half (x + FFN(LN(x)))": attended,
                "the block without the attention's residual (the shortcut)": y_mc - shortcut}
    refs = [("PyTorch", y_torch, ORACLE_TOL), ("minicoat", y_mc, ORACLE_TOL)]
    _require(context, [_mismatch("output", y, refs, suspects)])
    dx, dp = _autograd_grad(context, lambda xp: anp.sum(
        student_fn(xp[1], xp[0], stride, block.heads, cfg) * g), (x, params))
    problems = [_mismatch("gradient w.r.t. x", dx, [("PyTorch", dx_torch, ORACLE_TOL)],
                          _zeros_suspect(np.zeros_like(x)))]
    problems += _tree_mismatches("gradient w.r.t. p.", dp, [("PyTorch", dp_torch, ORACLE_TOL)],
                                 _zeros_suspect(tree_map(np.zeros_like, params)))
    _require(context, problems)
    return f"{context}: output and gradients OK (error {_error(_plain(y), y_torch):.0e})"
