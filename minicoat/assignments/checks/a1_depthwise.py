"""Checks of A1: the depthwise convolution and its hand-written VJP."""

import autograd
import autograd.numpy as anp
import numpy as np

import minicoat as mc

from .common import (
    ORACLE_TOL,
    _call,
    _error,
    _guarded,
    _mismatch,
    _normal,
    _numeric_problem,
    _one_torch_thread,
    _oracle,
    _pair,
    _plain,
    _require,
    _shape_text,
    _well_formed,
    _zeros_suspect,
)
from .guard import Forbidden

# Any convolution of the library (a depthwise one is a grouped conv2d), in any tier or in
# the oracle; the VJP also may not differentiate numerically or with autograd.
CONVOLUTION = ("convolution", "*.py", r"depthwise|conv|im2col")
FORBID_FORWARD = Forbidden("depthwise_conv2d", CONVOLUTION)
FORBID_VJP = Forbidden("the depthwise convolution's VJP", CONVOLUTION,
                       ("numerical gradient", "gradcheck.py", r"."),
                       ("autodiff", "ops/autodiff.py", r"."), autodiff=True)


@_one_torch_thread()
def _torch_depthwise(x, w, g, stride):
    """PyTorch's output and the gradients of ``sum(y * g)`` w.r.t. x and w, channels-last."""
    torch, ops, _ = _oracle()
    x_t = ops.nhwc_to_nchw(x).requires_grad_()
    w_t = ops.depthwise_kernel_to_torch(w).requires_grad_()
    y_t = ops.depthwise_conv2d(x_t, w_t, stride)
    if g is None:
        return ops.nchw_to_nhwc(y_t)
    y_t.backward(ops.nhwc_to_nchw(g))
    return ops.nchw_to_nhwc(x_t.grad), ops.depthwise_kernel_from_torch(w_t.grad)


def check_depthwise_forward(student_fn, shape=(2, 5, 6, 3), k=3, stride=1, seed=0):
    """Grade ``student_fn(x, w, stride) -> y``, a depthwise k x k convolution, "same" padding.

    Compared with ``mc.depthwise_conv2d`` and PyTorch's ``F.conv2d(groups=C)``.
    """
    rng = np.random.default_rng(seed)
    x, w = _normal(rng, shape), _normal(rng, (k, k, shape[-1]))
    context = f"depthwise_conv2d({_shape_text(x=x, w=w)}, stride={stride})"
    got = _call(context, _guarded(context, FORBID_FORWARD, student_fn), x, w, stride)
    theirs = _torch_depthwise(x, w, None, stride)
    suspects = {}
    if k > 1:
        flipped = mc.depthwise_conv2d(x, np.ascontiguousarray(w[::-1, ::-1]), stride)
        suspects["the convolution with the kernel flipped: like PyTorch's, this layer is a "
                 "cross-correlation, y[i] = sum_d w[d] x_pad[i + d]; do not flip w"] = flipped
    refs = [("PyTorch", theirs, ORACLE_TOL), ("minicoat", mc.depthwise_conv2d(x, w, stride),
                                              ORACLE_TOL)]
    _require(context, [_mismatch("output", got, refs, suspects)])
    return f"{context}: forward OK (error {_error(_plain(got), theirs):.0e} vs PyTorch)"


def check_depthwise_vjp(student_vjp_fn, shape=(2, 5, 6, 3), k=3, stride=1, seed=0):
    """Grade ``student_vjp_fn(x, w, g, stride) -> (dx, dw)``, the hand-written backward pass.

    ``dx`` and ``dw`` are the gradients of ``sum(depthwise_conv2d(x, w, stride) * g)``;
    compared with PyTorch's autograd, minicoat's hand-written VJP and finite differences.
    """
    rng = np.random.default_rng(seed)
    x, w = _normal(rng, shape), _normal(rng, (k, k, shape[-1]))
    g = _normal(rng, mc.depthwise_conv2d(x, w, stride).shape)
    context = f"depthwise_conv2d_vjp({_shape_text(x=x, w=w, g=g)}, stride={stride})"
    dx, dw = _pair(context, _call(context, _guarded(context, FORBID_VJP, student_vjp_fn), x, w,
                                      g, stride), ("dx", "dw"))
    dx_torch, dw_torch = _torch_depthwise(x, w, g, stride)
    dx_mc, dw_mc = autograd.grad(
        lambda xw: anp.sum(mc.depthwise_conv2d(xw[0], xw[1], stride) * g))((x, w))
    suspects_x = {}
    if stride == 1 and k > 1:
        suspects_x["the kernel not flipped: the backward of a cross-correlation is a "
                   "convolution, dx = depthwise_conv2d(g, w[::-1, ::-1]) for stride 1"] = (
            mc.depthwise_conv2d(g, w, 1))
    problems = [
        _mismatch("gradient w.r.t. x", dx, [("PyTorch", dx_torch, ORACLE_TOL),
                                            ("minicoat", dx_mc, ORACLE_TOL)],
                  {**suspects_x, **_zeros_suspect(np.zeros_like(x))}),
        _mismatch("gradient w.r.t. w", dw, [("PyTorch", dw_torch, ORACLE_TOL),
                                            ("minicoat", dw_mc, ORACLE_TOL)],
                  {"the kernel gradient flipped (w[::-1, ::-1])": dw_torch[::-1, ::-1]}),
    ]
    if _well_formed((dx, dw), (dx_mc, dw_mc)):
        problems.append(_numeric_problem(
            "dx, dw", lambda x_, w_: mc.depthwise_conv2d(x_, w_, stride), (x, w), (dx, dw), g))
    _require(context, problems)
    return (f"{context}: backward OK (errors vs PyTorch: dx {_error(_plain(dx), dx_torch):.0e}, "
            f"dw {_error(_plain(dw), dw_torch):.0e}; finite differences within their error "
            f"budget, minicoat.testing.vjpcheck)")
